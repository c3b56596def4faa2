//! Day-2 changes through the coordinator on the real libvirtd with the tiny guest, driven by
//! a student's CLI: a clone with memory, vCPU and data-disk overrides; `vm show` with what the
//! agent knows; a vCPU change QEMU cannot make live (needs_restart until the next boot);
//! autostart; reboot.

#![allow(clippy::unwrap_used)]

use corral_client::proto as pb;
use corral_tests::*;

fn details(cli: &Cli, vm: &str) -> serde_json::Value {
    cli.json(&["vm", "show", vm])["details"].clone()
}

#[tokio::test]
async fn day_two_changes_reach_the_guest() {
    if !real_host_ready() {
        return;
    }
    cleanup_domains("e2e-d-");
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
            spec: Some(tiny_spec("e2e-d-base", true)),
            host: "real".into(),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    finish(&mut admin, op).await.unwrap();
    publish(&mut admin, "e2e-d-base").await.unwrap();
    let token = user_token(&mut admin, "student").await.unwrap();
    let cli = Cli {
        addr: &coord.addr,
        token: &token,
        ca: None,
    };

    // A clone with the agent's options: more memory, two vCPUs, the data disk copied.
    cli.ok(&[
        "vm",
        "clone",
        "e2e-d-base",
        "e2e-d-vm",
        "--start",
        "--memory",
        "192",
        "--vcpus",
        "2",
        "--copy-data",
    ]);
    let d = details(&cli, "e2e-d-vm");
    assert_eq!(
        (d["vcpus"].as_u64(), d["memory_mib"].as_u64()),
        (Some(2), Some(192)),
        "{d}"
    );
    let roles: Vec<i64> = d["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["role"].as_i64().unwrap())
        .collect();
    assert!(roles.contains(&(pb::VolumeRole::Data as i64)), "{d}");
    assert!(d["started_at_unix"].as_i64().unwrap() > 0, "{d}");
    assert_eq!(d["needs_restart"], false);
    let text = cli.ok(&["vm", "show", "e2e-d-vm"]);
    assert!(text.contains("vcpus=2 memory=192MiB"), "{text}");
    assert!(text.contains(" data "), "{text}");

    // One vCPU fewer: QEMU cannot unplug it live, so it waits for the next boot.
    cli.ok(&["vm", "resize", "e2e-d-vm", "--vcpus", "1"]);
    let d = details(&cli, "e2e-d-vm");
    assert_eq!(d["needs_restart"], true, "{d}");
    assert!(cli
        .ok(&["vm", "show", "e2e-d-vm"])
        .contains("needs_restart"));
    cli.ok(&["vm", "poweroff", "e2e-d-vm"]);
    // A swap disk added while it is off, then removed with its file.
    cli.ok(&["vm", "disk-add", "e2e-d-vm", "--size", "32M", "--swap"]);
    let disks = details(&cli, "e2e-d-vm")["disks"].clone();
    let swap = disks
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["role"] == pb::VolumeRole::Swap as i32)
        .unwrap_or_else(|| panic!("no swap disk: {disks}"))
        .clone();
    let file = std::path::PathBuf::from(swap["path"].as_str().unwrap());
    assert!(file.is_file());
    // The system disk stays.
    let system = disks[0]["volume"].as_str().unwrap().to_string();
    let out = cli.run(&["vm", "disk-rm", "e2e-d-vm", &system]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only swap and data"),
        "{out:?}"
    );
    cli.ok(&[
        "vm",
        "disk-rm",
        "e2e-d-vm",
        swap["volume"].as_str().unwrap(),
    ]);
    assert!(!file.exists());
    assert_eq!(
        details(&cli, "e2e-d-vm")["disks"].as_array().unwrap().len(),
        2
    );
    cli.ok(&["vm", "start", "e2e-d-vm"]);
    let d = details(&cli, "e2e-d-vm");
    assert_eq!(
        (d["vcpus"].as_u64(), d["needs_restart"].as_bool()),
        (Some(1), Some(false)),
        "{d}"
    );
    // Bad numbers change nothing.
    let out = cli.run(&["vm", "resize", "e2e-d-vm", "--memory", "1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("out of range"));
    assert_eq!(details(&cli, "e2e-d-vm")["memory_mib"].as_u64(), Some(192));

    // Autostart, as libvirt records it.
    cli.ok(&["vm", "autostart", "e2e-d-vm", "on"]);
    assert!(virsh(&["dominfo", "e2e-d-vm"])
        .unwrap()
        .contains("Autostart:      enable"));
    assert_eq!(details(&cli, "e2e-d-vm")["autostart"], true);
    cli.ok(&["vm", "autostart", "e2e-d-vm", "off"]);
    assert!(virsh(&["dominfo", "e2e-d-vm"])
        .unwrap()
        .contains("Autostart:      disable"));

    // Reboot asks the guest; it keeps running.
    cli.ok(&["vm", "reboot", "e2e-d-vm"]);
    assert_eq!(virsh(&["domstate", "e2e-d-vm"]).unwrap().trim(), "running");
    cli.ok(&["vm", "rm", "e2e-d-vm"]);

    // A named machine, get or create (issue 11, item 4): two at once make one VM.
    let ensure = ["vm", "ensure", "e2e-d-named", "--base", "e2e-d-base"];
    let said: Vec<String> = std::thread::scope(|s| {
        let a = s.spawn(|| cli.ok(&ensure));
        let b = s.spawn(|| cli.ok(&ensure));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    let made = said.iter().filter(|s| s.contains("(made)")).count();
    assert_eq!(made, 1, "{said:?}");
    assert!(said.iter().all(|s| s.contains("e2e-d-named")), "{said:?}");
    let again = cli.json(&ensure);
    assert_eq!(again["created"], false, "{again}");
    assert_eq!(again["vm"]["base"], "e2e-d-base", "{again}");
    let l = cli.json(&["vm", "ls"]);
    let named = l["vms"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["name"] == "e2e-d-named");
    assert_eq!(named.count(), 1, "{l}");
    let out = cli.run(&["vm", "ensure", "e2e-d-named", "--base", "e2e-d-other"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a clone of e2e-d-other"),
        "{out:?}"
    );
    cli.ok(&["vm", "rm", "e2e-d-named"]);

    // Plans (issue 11, item 7): a clone takes a plan's sizes; a plan whose disk cannot hold
    // the base's system disk (64 MiB) is refused before anything is made.
    let out = cli.run(&[
        "plan",
        "add",
        "e2e-small",
        "--memory",
        "160",
        "--vcpus",
        "2",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin"),
        "{out:?}"
    );
    admin_cli.ok(&[
        "plan",
        "add",
        "e2e-small",
        "--memory",
        "160",
        "--vcpus",
        "2",
    ]);
    admin_cli.ok(&[
        "plan",
        "add",
        "e2e-tinydisk",
        "--memory",
        "128",
        "--disk",
        "16M",
    ]);
    assert!(cli
        .ok(&["plan", "ls"])
        .contains("e2e-small        memory=160MiB vcpus=2"));
    cli.ok(&[
        "vm",
        "clone",
        "e2e-d-base",
        "e2e-d-plan",
        "--plan",
        "e2e-small",
    ]);
    let d = details(&cli, "e2e-d-plan");
    assert_eq!(
        (d["memory_mib"].as_u64(), d["vcpus"].as_u64()),
        (Some(160), Some(2)),
        "{d}"
    );
    let out = cli.run(&[
        "vm",
        "clone",
        "e2e-d-base",
        "e2e-d-plan2",
        "--plan",
        "e2e-tinydisk",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("system disk is 64 MiB"),
        "{out:?}"
    );
    assert!(virsh(&["domstate", "e2e-d-plan2"]).is_err(), "nothing made");
    cli.ok(&["vm", "rm", "e2e-d-plan"]);
    for p in ["e2e-small", "e2e-tinydisk"] {
        admin_cli.ok(&["plan", "rm", p]);
    }
    admin_cli.ok(&["base", "delete", "e2e-d-base"]);
}
