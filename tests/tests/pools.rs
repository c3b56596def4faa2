//! Pools of ready clones on the real libvirtd with the tiny guest, driven by the CLI: the pool
//! fills (one clone running), a student's clone is served from it at once (the same QEMU
//! process, a new owner and a new display password), the pool refills, and an emptied pool
//! removes its clones.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use corral_client::proto as pb;
use corral_tests::*;

/// Waits until `corral base show` says `want` (made, running, making), with every running
/// guest ready.
fn wait_pool(cli: &Cli, base: &str, want: (u64, u64, u64)) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = cli.json(&["base", "show", base])["pool"].clone();
        let n = |k: &str| p[k].as_u64().unwrap_or(0);
        if (n("made"), n("running"), n("making")) == want && n("ready") == want.1 {
            return p;
        }
        assert!(Instant::now() < deadline, "pool not at {want:?}: {p}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The pool clones as the admin lists them: (name, running).
fn pool_clones(cli: &Cli) -> Vec<(String, bool)> {
    let l = cli.json(&["vm", "ls"]);
    l["vms"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["pool"] == true)
        .map(|v| {
            let running = v["observed_state"] == pb::DomainState::Running as i32;
            (v["name"].as_str().unwrap().to_string(), running)
        })
        .collect()
}

fn qemu_pid(domain: &str) -> String {
    std::fs::read_to_string(format!("/run/libvirt/qemu/{domain}.pid")).unwrap_or_default()
}

#[tokio::test]
async fn a_pool_fills_hands_out_a_running_clone_and_refills() {
    if !real_host_ready() {
        return;
    }
    cleanup_domains("pool-e2e-p-");
    cleanup_domains("e2e-p-");
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(&dir.path().join("agent")).unwrap();
    let coord = CoordProc::start(&dir.path().join("coord"), 300, 3000).unwrap();
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
            spec: Some(tiny_spec("e2e-p-base", false)),
            host: "real".into(),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    finish(&mut admin, op).await.unwrap();
    publish(&mut admin, "e2e-p-base").await.unwrap();
    let token = user_token(&mut admin, "student").await.unwrap();
    let student = Cli {
        addr: &coord.addr,
        token: &token,
        ca: None,
    };

    // Only admins size pools.
    let out = student.run(&["base", "pool", "e2e-p-base", "--clones", "2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin"));

    admin_cli.ok(&[
        "base",
        "pool",
        "e2e-p-base",
        "--clones",
        "2",
        "--start",
        "1",
    ]);
    wait_pool(&admin_cli, "e2e-p-base", (2, 1, 0));
    let pooled = pool_clones(&admin_cli);
    assert_eq!(pooled.len(), 2, "{pooled:?}");
    let running: Vec<&String> = pooled.iter().filter(|p| p.1).map(|p| &p.0).collect();
    assert_eq!(running.len(), 1, "{pooled:?}");
    let domain = running[0].clone();
    assert_eq!(virsh(&["domstate", &domain]).unwrap().trim(), "running");
    let pid = qemu_pid(&domain);
    assert!(!pid.is_empty());
    let mut ac = agent.client().await.unwrap();
    let dref = || pb::DomainRef {
        name: domain.clone(),
    };
    let old_password = ac
        .domains
        .get_display(dref())
        .await
        .unwrap()
        .into_inner()
        .password;
    // Students do not see pool clones.
    let theirs = student.json(&["vm", "ls"]);
    assert!(
        theirs["vms"].as_array().is_none_or(|v| v.is_empty()),
        "{theirs}"
    );

    // The student's clone comes from the pool: the running one, not remade, not rebooted.
    let t = Instant::now();
    student.ok(&["vm", "clone", "e2e-p-base", "e2e-p-mine", "--start"]);
    let took = t.elapsed();
    let mine = student.json(&["vm", "show", "e2e-p-mine"]);
    assert_eq!(mine["domain"], domain.as_str(), "{mine}");
    assert_eq!(mine["owner"], "student");
    assert_eq!(mine["observed_state"], pb::DomainState::Running as i32);
    assert_eq!(qemu_pid(&domain), pid, "the same QEMU process");
    let d = ac.domains.get_domain(dref()).await.unwrap().into_inner();
    assert_eq!(d.owner, "student");
    let display = ac.domains.get_display(dref()).await.unwrap().into_inner();
    assert_ne!(display.password, old_password, "a new display password");
    // The student's display file carries the new password.
    let vv = dir.path().join("mine.vv");
    student.ok(&[
        "vm",
        "display",
        "e2e-p-mine",
        "--file",
        vv.to_str().unwrap(),
    ]);
    let file = std::fs::read_to_string(&vv).unwrap();
    assert!(
        file.contains(&format!("password={}", display.password)),
        "{file}"
    );
    eprintln!("hand-out through the CLI: {} ms", took.as_millis());

    // The pool refills, and the handed-out VM stays the student's.
    wait_pool(&admin_cli, "e2e-p-base", (2, 1, 0));
    assert!(!pool_clones(&admin_cli).iter().any(|p| p.0 == domain));
    // The student's VM's actions reach its domain.
    student.ok(&["vm", "poweroff", "e2e-p-mine"]);
    assert_eq!(virsh(&["domstate", &domain]).unwrap().trim(), "shut off");
    student.ok(&["vm", "rm", "e2e-p-mine"]);
    assert!(virsh(&["domstate", &domain]).is_err(), "the domain is gone");

    // An emptied pool removes its clones; then the base can go.
    admin_cli.ok(&["base", "pool", "e2e-p-base", "--clones", "0"]);
    wait_pool(&admin_cli, "e2e-p-base", (0, 0, 0));
    assert!(pool_clones(&admin_cli).is_empty());
    admin_cli.ok(&["base", "delete", "e2e-p-base"]);
}
