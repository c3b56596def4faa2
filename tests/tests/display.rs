//! Display through the coordinator on the real libvirtd with the tiny guest: a SPICE clone's
//! display file carries the host's CA and TLS port, and a TLS client that trusts only that CA
//! completes a handshake on the port; with its base's restrict-to-client policy, asking for
//! the file restricts the display (both ports) to the address that asked: the client
//! namespace first, then the host when the student asks from there.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_types,
    clippy::disallowed_methods
)]

use std::process::{Command, Output, Stdio};

use corral_client::proto as pb;
use corral_tests::*;

/// The `corral` CLI run inside the client namespace (its own address, CLIENT_IP).
fn ns_cli(addr: &str, token: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", CLIENT_NS])
        .arg(bin("corral"))
        .args(["-o", "json"])
        .args(args)
        .env("CORRAL_COORDINATOR", addr)
        .env("CORRAL_TOKEN", token)
        .env("HOME", "/nonexistent")
        .output()
        .unwrap()
}

/// Whether a TCP connection from the client namespace reaches `port`.
fn tcp_from_client(port: i64) -> bool {
    Command::new("ip")
        .args(["netns", "exec", CLIENT_NS, "timeout", "3", "bash", "-c"])
        .arg(format!("exec 3<>/dev/tcp/{HOST_SIDE_IP}/{port}"))
        .status()
        .is_ok_and(|s| s.success())
}

/// A TLS handshake from the client namespace that trusts only `ca`; openssl's verdict.
fn tls_from_client(port: i64, ca: &std::path::Path) -> String {
    let out = Command::new("ip")
        .args([
            "netns", "exec", CLIENT_NS, "timeout", "10", "openssl", "s_client",
        ])
        .arg("-connect")
        .arg(format!("{HOST_SIDE_IP}:{port}"))
        .arg("-CAfile")
        .arg(ca)
        .arg("-verify_return_error")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[tokio::test]
async fn spice_over_tls_and_a_display_restricted_to_who_asks() {
    if !real_host_ready() {
        return;
    }
    assert!(
        std::path::Path::new("/etc/pki/libvirt-spice/ca-cert.pem").is_file(),
        "no SPICE TLS certificates: run deploy/setup-host.sh"
    );
    cleanup_domains("e2e-s-");
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(&dir.path().join("agent")).unwrap();
    // Reached over the client namespace's link, so the coordinator sees the client's address.
    let listen = format!("{HOST_SIDE_IP}:0");
    let coord = CoordProc::start_with(
        &dir.path().join("coord"),
        300,
        3000,
        &[("CORRAL_COORD_LISTEN", listen.as_str())],
    )
    .unwrap();
    let mut admin = coord.client(&coord.admin_token).await.unwrap();
    let admin_cli = Cli {
        addr: &coord.addr,
        token: &coord.admin_token,
        ca: None,
    };
    add_host(&mut admin, "real", &agent.addr).await.unwrap();
    wait_up(&admin_cli, 1);
    let mut spec = tiny_spec("e2e-s-base", false);
    spec.display = Some(pb::DisplaySpec {
        r#type: pb::DisplayType::Spice as i32,
        listen: String::new(),
    });
    let op = admin
        .vms
        .create_base(pb::CreateBaseRequest {
            spec: Some(spec),
            host: "real".into(),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    finish(&mut admin, op).await.unwrap();
    publish(&mut admin, "e2e-s-base").await.unwrap();
    let token = user_token(&mut admin, "student").await.unwrap();
    let cli = Cli {
        addr: &coord.addr,
        token: &token,
        ca: None,
    };
    let out = cli.run(&[
        "base",
        "display",
        "e2e-s-base",
        "--restrict-to-client",
        "on",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin"),
        "{out:?}"
    );
    admin_cli.ok(&[
        "base",
        "display",
        "e2e-s-base",
        "--restrict-to-client",
        "on",
    ]);
    let shown = admin_cli.ok(&["base", "show", "e2e-s-base"]);
    assert!(
        shown.contains("restricted to the address that asks"),
        "{shown}"
    );
    cli.ok(&["vm", "clone", "e2e-s-base", "e2e-s-vm", "--start"]);
    assert!(
        rules_of("e2e-s-vm").is_empty(),
        "nothing restricted before anyone asks"
    );

    // The student asks from their machine: a SPICE file with TLS, restricted to them.
    let out = ns_cli(&coord.addr, &token, &["vm", "display", "e2e-s-vm"]);
    assert!(out.status.success(), "{out:?}");
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let file = d["remote_viewer_file"].as_str().unwrap();
    let (port, tls_port) = (d["port"].as_i64().unwrap(), d["tls_port"].as_i64().unwrap());
    assert!(tls_port > 0 && tls_port != port, "{d}");
    assert!(file.contains("type=spice\n"), "{file}");
    assert!(file.contains(&format!("\ntls-port={tls_port}\n")), "{file}");
    assert!(file.contains("\nhost-subject=CN=corral-spice-"), "{file}");
    assert!(file.contains("\nsecure-channels=all\n"), "{file}");
    let ca = file
        .lines()
        .find_map(|l| l.strip_prefix("ca="))
        .unwrap_or_else(|| panic!("no CA in {file}"))
        .replace("\\n", "\n");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca + "\n").unwrap();
    let verdict = tls_from_client(tls_port, &ca_file);
    assert!(verdict.contains("Verify return code: 0 (ok)"), "{verdict}");
    eprintln!(
        "SPICE TLS port {tls_port}: {}",
        verdict
            .lines()
            .find(|l| l.contains("subject="))
            .unwrap_or("")
    );
    let rules = rules_of("e2e-s-vm");
    assert_eq!(rules.len(), 2, "the plain and the TLS port: {rules:?}");
    assert!(
        rules
            .iter()
            .all(|r| r.contains(&format!("! -s {CLIENT_IP}/32"))),
        "{rules:?}"
    );
    assert!(tcp_from_client(port) && tcp_from_client(tls_port));

    // Asked again from the host, the display follows the student there.
    let d = cli.json(&["vm", "display", "e2e-s-vm"]);
    assert_eq!(d["tls_port"].as_i64(), Some(tls_port));
    let rules = rules_of("e2e-s-vm");
    assert!(
        rules
            .iter()
            .all(|r| r.contains(&format!("! -s {HOST_SIDE_IP}/32"))),
        "{rules:?}"
    );
    assert!(!tcp_from_client(port) && !tcp_from_client(tls_port));

    // Without the policy, asking changes nothing.
    admin_cli.ok(&[
        "base",
        "display",
        "e2e-s-base",
        "--restrict-to-client",
        "off",
    ]);
    let out = ns_cli(&coord.addr, &token, &["vm", "display", "e2e-s-vm"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(rules_of("e2e-s-vm"), rules);

    cli.ok(&["vm", "rm", "e2e-s-vm"]);
    assert!(rules_of("e2e-s-vm").is_empty());
    admin_cli.ok(&["base", "delete", "e2e-s-base"]);
}
