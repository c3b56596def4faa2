//! The coordinator with a real host: an agent on the real libvirtd beside two agents on
//! private `test:///` drivers, mutual TLS to every agent, TLS on the coordinator's API, and
//! only the `corral` CLI driving it: base → placement → clone and start → expose → a page
//! fetched from another address → snapshots → display access.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use corral_tests::*;

const BOOT: Duration = Duration::from_secs(90);

fn pki(args: &[&str]) {
    corral_pki(args).unwrap();
}

#[test]
fn a_real_host_and_test_hosts_driven_by_the_cli_over_tls() {
    if !real_host_ready() {
        return;
    }
    cleanup_domains("e2e-f-");
    client_ns().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    pki(&["init", "--dir", &d("pki")]);
    pki(&["issue", "--dir", &d("pki"), "agent", "--san", "127.0.0.1"]);
    pki(&[
        "issue",
        "--dir",
        &d("pki"),
        "coordinator",
        "--san",
        "127.0.0.1",
    ]);
    let (ca, agent_cert, agent_key) = (d("pki/ca.pem"), d("pki/agent.pem"), d("pki/agent.key"));
    let (coord_cert, coord_key) = (d("pki/coordinator.pem"), d("pki/coordinator.key"));
    let agent_tls = [
        ("CORRAL_AGENT_TLS_CERT", agent_cert.as_str()),
        ("CORRAL_AGENT_TLS_KEY", agent_key.as_str()),
        ("CORRAL_AGENT_TLS_CLIENT_CA", ca.as_str()),
        ("CORRAL_AGENT_TLS_COORDINATOR_CERT", coord_cert.as_str()),
    ];
    let mut real_env = vec![
        ("CORRAL_AGENT_LIBVIRT_URI", "qemu:///system"),
        ("CORRAL_AGENT_DOMAIN_TYPE", "qemu"),
    ];
    real_env.extend(agent_tls);
    let real = AgentProc::start_with(&dir.path().join("real"), &real_env).unwrap();
    let mut test_env: Vec<(&str, &str)> = TEST_DRIVER.to_vec();
    test_env.extend(agent_tls);
    let t1 = AgentProc::start_with(&dir.path().join("t1"), &test_env).unwrap();
    let t2 = AgentProc::start_with(&dir.path().join("t2"), &test_env).unwrap();
    let coord = CoordProc::start_with(
        &dir.path().join("coord"),
        300,
        3000,
        &[
            ("CORRAL_COORD_AGENT_CA", ca.as_str()),
            ("CORRAL_COORD_CLIENT_CERT", coord_cert.as_str()),
            ("CORRAL_COORD_CLIENT_KEY", coord_key.as_str()),
            ("CORRAL_COORD_API_CERT", coord_cert.as_str()),
            ("CORRAL_COORD_API_KEY", coord_key.as_str()),
        ],
    )
    .unwrap();
    let cli = Cli {
        addr: &coord.addr,
        token: &coord.admin_token,
        ca: Some(&ca),
    };

    // Without the CA the CLI cannot talk to a TLS coordinator, and says so in one line.
    let plain = Cli { ca: None, ..cli };
    let out = plain.run(&["host", "ls"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    cli.ok(&["host", "add", "real", &real.addr]);
    cli.ok(&["host", "add", "t1", &t1.addr]);
    cli.ok(&["host", "add", "t2", &t2.addr]);
    wait_up(&cli, 3);

    let g = Path::new(GUEST_DIR);
    let (kernel, initrd) = (
        g.join("vmlinux").display().to_string(),
        g.join("initrd.gz").display().to_string(),
    );
    cli.ok(&[
        "base",
        "create",
        "e2e-f-base",
        "--host",
        "real",
        "--memory",
        "128M",
        "--vcpus",
        "1",
        "--disk",
        "e2e-f-base-vda.qcow2:64M:system",
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--cmdline",
        "console=ttyS0 quiet corral.hostname=e2e-f-base",
    ]);
    cli.ok(&["base", "publish", "e2e-f-base"]);
    // Only the real host holds the base: the test hosts are rejected, and say why.
    let why = cli.json(&["vm", "explain", "e2e-f-base"]);
    assert_eq!(why["chosen"], "real", "{why}");
    let rejected = why["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2, "{why}");
    assert!(
        rejected
            .iter()
            .all(|r| r["reason"].as_str().unwrap().contains("base")),
        "{why}"
    );

    let op = cli.json(&["vm", "clone", "e2e-f-base", "e2e-f-c1", "--start"]);
    assert_eq!(op["state"], 3, "{op}");
    assert_eq!(op["host"], "real", "{op}");
    let port = cli.json(&["port", "expose", "e2e-f-c1", "80", "--wait", "90"]);
    let url = format!(
        "http://{}:{}/",
        port["host_address"].as_str().unwrap(),
        port["host_port"]
    );
    let body = wait_for_body(&url, "corral tiny guest e2e-f-c1", BOOT).unwrap();
    println!("through the coordinator, from {CLIENT_IP}: {body}");
    let ports = cli.json(&["port", "list"]);
    assert_eq!(ports["ports"].as_array().unwrap().len(), 1, "{ports}");

    // Day-2 power actions through the coordinator: paused, resumed, reset; each as libvirt
    // reports it.
    for (action, state) in [("suspend", 2), ("resume", 1), ("reset", 1)] {
        let op = cli.json(&["vm", action, "e2e-f-c1"]);
        assert_eq!(op["state"], 3, "{action}: {op}");
        let v = cli.json(&["vm", "show", "e2e-f-c1"]);
        assert_eq!(v["observed_state"], state, "{action}: {v}");
    }

    // Snapshots and the display, through the coordinator.
    cli.ok(&[
        "snapshot",
        "create",
        "e2e-f-c1",
        "s1",
        "--description",
        "first",
    ]);
    cli.ok(&["snapshot", "create", "e2e-f-c1", "s2"]);
    let leaves = cli.json(&["snapshot", "list", "e2e-f-c1", "--filter", "leaves"]);
    let leaves = leaves["snapshots"].as_array().unwrap();
    assert_eq!(leaves.len(), 1);
    assert_eq!(leaves[0]["name"], "s2");
    assert_eq!(leaves[0]["parent"], "s1");
    cli.ok(&[
        "snapshot",
        "rm",
        "e2e-f-c1",
        "s1",
        "--mode",
        "with-children",
    ]);
    assert!(cli.json(&["snapshot", "list", "e2e-f-c1"])["snapshots"]
        .as_array()
        .is_none_or(Vec::is_empty));
    let vv = dir.path().join("c1.vv");
    cli.ok(&["vm", "display", "e2e-f-c1", "-f", vv.to_str().unwrap()]);
    let meta = std::fs::metadata(&vv).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&vv).unwrap();
    assert!(
        text.contains("[virt-viewer]") && text.contains("password="),
        "{text}"
    );

    // A volatile clone: started at once; powered off, it goes with its volumes.
    let op = cli.json(&["vm", "clone", "e2e-f-base", "e2e-f-v1", "--volatile"]);
    assert_eq!(op["state"], 3, "{op}");
    let v = cli.json(&["vm", "show", "e2e-f-v1"]);
    assert_eq!(v["volatile"], true, "{v}");
    assert_eq!(v["observed_state"], 1, "running: {v}");
    let owns_files = || {
        std::fs::read_dir(real.storage())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("e2e-f-v1"))
    };
    assert!(owns_files());
    cli.ok(&["vm", "poweroff", "e2e-f-v1"]);
    let gone = Instant::now();
    while cli.json(&["vm", "ls"]).to_string().contains("e2e-f-v1") || owns_files() {
        assert!(
            gone.elapsed() < Duration::from_secs(30),
            "the volatile clone stays"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "volatile clone removed {} ms after power-off",
        gone.elapsed().as_millis()
    );

    // Spun off, the clone outlives its base: the base goes, the clone boots without it.
    cli.ok(&["vm", "poweroff", "e2e-f-c1"]);
    let op = cli.json(&["vm", "spinoff", "e2e-f-c1"]);
    assert_eq!(op["state"], 3, "{op}");
    assert_eq!(cli.json(&["vm", "show", "e2e-f-c1"])["base"], "");
    cli.ok(&["base", "delete", "e2e-f-base"]);
    let op = cli.json(&["vm", "start", "e2e-f-c1"]);
    assert_eq!(op["state"], 3, "{op}");
    assert_eq!(cli.json(&["vm", "show", "e2e-f-c1"])["observed_state"], 1);
    cli.ok(&["vm", "rm", "e2e-f-c1"]);
    assert!(cli.json(&["port", "list"])["ports"]
        .as_array()
        .is_none_or(Vec::is_empty));
}
