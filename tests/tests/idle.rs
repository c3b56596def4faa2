//! Idle reclaim through the coordinator on the real libvirtd with the tiny guest: a VM's own
//! run timeout shuts it down (the time left shown by `vm show`); a base's idle timeout leaves
//! a VM alone while a display client is connected (libvirt's graphics events, from a real TCP
//! client on its VNC port) and shuts it down once the client has been gone that long.

#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::time::{Duration, Instant};

use corral_client::proto as pb;
use corral_tests::*;

fn show(cli: &Cli, vm: &str) -> serde_json::Value {
    cli.json(&["vm", "show", vm])
}

fn domstate(vm: &str) -> String {
    virsh(&["domstate", vm]).unwrap().trim().to_string()
}

/// Waits until libvirt says `vm` is shut off; returns how long it took.
fn wait_off(vm: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    while domstate(vm) != "shut off" {
        assert!(t0.elapsed() < within, "{vm} still {}", domstate(vm));
        std::thread::sleep(Duration::from_millis(250));
    }
    t0.elapsed()
}

#[tokio::test]
async fn run_and_idle_timeouts_reclaim_real_guests() {
    if !real_host_ready() {
        return;
    }
    cleanup_domains("e2e-i-");
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(&dir.path().join("agent")).unwrap();
    let coord = CoordProc::start_with(
        &dir.path().join("coord"),
        300,
        3000,
        &[("CORRAL_COORD_SHUTDOWN_GRACE_S", "20")],
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
    let op = admin
        .vms
        .create_base(pb::CreateBaseRequest {
            spec: Some(tiny_spec("e2e-i-base", false)),
            host: "real".into(),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    finish(&mut admin, op).await.unwrap();
    publish(&mut admin, "e2e-i-base").await.unwrap();
    let token = user_token(&mut admin, "student").await.unwrap();
    let cli = Cli {
        addr: &coord.addr,
        token: &token,
        ca: None,
    };

    // A run timeout of the VM's own: shut down when it is up, the time left shown meanwhile.
    cli.ok(&["vm", "clone", "e2e-i-base", "e2e-i-run", "--start"]);
    let out = cli.run(&["vm", "timeout", "e2e-i-run", "off"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin"),
        "a student does not set their own limit: {out:?}"
    );
    admin_cli.ok(&["vm", "timeout", "e2e-i-run", "20s"]);
    let v = show(&cli, "e2e-i-run");
    assert_eq!(v["run_timeout_seconds"], 20, "{v}");
    let left = v["run_left_seconds"].as_i64().unwrap();
    assert!((0..=20).contains(&left), "{v}");
    assert!(v["idle_left_seconds"].is_null(), "no idle timeout: {v}");
    let text = cli.ok(&["vm", "show", "e2e-i-run"]);
    assert!(text.contains("run timeout: shut down in"), "{text}");
    // The keeper looks every 5 s; the tiny guest powers off on ACPI at once.
    let took = wait_off("e2e-i-run", Duration::from_secs(60));
    eprintln!("run timeout: shut off {took:?} after a show that said {left} s left");
    let ops = admin_cli.json(&["op", "ls"]);
    assert!(
        ops.to_string().contains("\"kind\":\"shutdown\""),
        "the reclaim is an operation: {ops}"
    );

    // An idle timeout of the base's, for clones with no display client for 20 s.
    cli.ok(&["vm", "clone", "e2e-i-base", "e2e-i-idle", "--start"]);
    let d = show(&cli, "e2e-i-idle")["details"].clone();
    let port = d["display"]["port"].as_i64().unwrap();
    let listen = match d["display"]["listen"].as_str().unwrap() {
        "" | "0.0.0.0" => "127.0.0.1".to_string(),
        l => l.to_string(),
    };
    // A viewer connects (QEMU's VNC server counts it at once, libvirt tells the agent).
    let viewer = TcpStream::connect((listen.as_str(), u16::try_from(port).unwrap())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while show(&cli, "e2e-i-idle")["details"]["display_clients"] != 1 {
        assert!(Instant::now() < deadline, "the client is not seen");
        std::thread::sleep(Duration::from_millis(200));
    }
    let t = admin_cli.json(&["base", "timeouts", "e2e-i-base", "--idle", "20s"]);
    assert_eq!(
        (t["idle_seconds"].as_u64(), t["run_seconds"].as_u64()),
        (Some(20), Some(0))
    );
    let shown = admin_cli.ok(&["base", "show", "e2e-i-base"]);
    assert!(shown.contains("run=off idle=20s then shutdown"), "{shown}");
    // Connected for longer than the idle time: it stays.
    std::thread::sleep(Duration::from_secs(30));
    assert_eq!(domstate("e2e-i-idle"), "running");
    let v = show(&cli, "e2e-i-idle");
    assert_eq!(v["idle_left_seconds"], 20, "a client is connected: {v}");
    // The viewer goes: 20 s later (and a keeper round) it is shut down.
    drop(viewer);
    let deadline = Instant::now() + Duration::from_secs(10);
    while show(&cli, "e2e-i-idle")["details"]["display_clients"] != 0 {
        assert!(Instant::now() < deadline, "the client is still counted");
        std::thread::sleep(Duration::from_millis(200));
    }
    let gone = Instant::now();
    let left = show(&cli, "e2e-i-idle")["idle_left_seconds"]
        .as_i64()
        .unwrap();
    assert!((15..=20).contains(&left), "{left}");
    wait_off("e2e-i-idle", Duration::from_secs(60));
    let idle_for = gone.elapsed();
    eprintln!("idle timeout 20 s: shut off {idle_for:?} after the viewer left");
    assert!(idle_for >= Duration::from_secs(15), "{idle_for:?}");

    // Reclaimed VMs stay the student's, shut off; nothing reclaims them again.
    let l = cli.json(&["vm", "ls"]);
    assert_eq!(l["vms"].as_array().unwrap().len(), 2, "{l}");
    admin_cli.ok(&["base", "timeouts", "e2e-i-base", "--idle", "off"]);
    for vm in ["e2e-i-run", "e2e-i-idle"] {
        cli.ok(&["vm", "rm", vm]);
    }
    admin_cli.ok(&["base", "delete", "e2e-i-base"]);
}
