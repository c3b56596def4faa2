//! Backups on the real libvirtd (issue 11, item 6): a VM's data volume (and its system
//! overlay) backed up to the repository host, incrementally (the second backup sends about
//! what changed), listed, restored in place (the volume's content is the backup's again),
//! a new VM made from a backup with a plan (its guest boots and reads the backed-up marker),
//! removed; other users see none of it. Content is written and compared with qemu's own tools
//! on the host's files. Across hosts, the lab test backs up to another host.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_types,
    clippy::disallowed_methods
)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use corral_tests::*;

fn refused(cli: &Cli, args: &[&str], says: &str) {
    let out = cli.run(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(says), "{args:?}: {err}");
}

/// Writes `pattern` over `len` bytes at `offset` of the guest's view of a qcow2 file.
fn write(file: &Path, pattern: u8, offset: u64, len: u64) {
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            &format!("write -P {pattern:#x} {offset} {len}"),
            file.to_str().unwrap(),
        ],
    )
    .unwrap();
}

/// Whether two images show the same content to a guest.
fn same(a: &Path, b: &Path) -> bool {
    std::process::Command::new("qemu-img")
        .args(["compare", "-q"])
        .arg(a)
        .arg(b)
        .status()
        .unwrap()
        .success()
}

fn backup(cli: &Cli, vm: &str, number: u32) -> serde_json::Value {
    cli.json(&["backup", "show", vm, "--number", &number.to_string()])
}

#[tokio::test]
async fn vms_are_backed_up_incrementally_restored_and_made_anew() {
    if !real_host_ready() {
        return;
    }
    cleanup_domains("e2e-b-");
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
    tiny_base(&mut admin, "e2e-b-base", "real", false)
        .await
        .unwrap();
    let token = user_token(&mut admin, "student").await.unwrap();
    let cli = Cli {
        addr: &coord.addr,
        token: &token,
        ca: None,
    };
    let other_token = user_token(&mut admin, "other").await.unwrap();
    let other = Cli {
        addr: &coord.addr,
        token: &other_token,
        ca: None,
    };
    let storage = agent.storage();

    cli.ok(&["vm", "clone", "e2e-b-base", "e2e-b-vm"]);
    refused(
        &cli,
        &["backup", "create", "e2e-b-vm"],
        "no repository host",
    );
    admin_cli.ok(&["image", "repository", "real", "on"]);
    refused(
        &cli,
        &["backup", "create", "e2e-b-vm"],
        "no data volume to back up",
    );
    cli.ok(&["vm", "disk-add", "e2e-b-vm", "--size", "64M"]);
    let data = storage.join("e2e-b-vm-vdb.qcow2");
    let system = storage.join("e2e-b-vm-vda.qcow2");
    write(&data, 0x11, 0, 16 << 20);
    refused(&other, &["backup", "create", "e2e-b-vm"], "not found");
    refused(&cli, &["backup", "create", "e2e-b-nope"], "not found");
    refused(&cli, &["backup", "create", "e2e/b"], "invalid");
    // A dry run says what would happen and makes nothing.
    let out = cli.ok(&["--dry-run", "backup", "create", "e2e-b-vm"]);
    assert!(out.contains("dry run"), "{out}");
    assert_eq!(
        cli.json(&["backup", "ls"])["backups"],
        serde_json::json!([])
    );

    // 1: full. The archive file is read-only, its content the volume's.
    cli.ok(&["backup", "create", "e2e-b-vm"]);
    let b1 = backup(&cli, "e2e-b-vm", 1);
    assert_eq!(b1["owner"], "student", "{b1}");
    assert_eq!(b1["base"], "e2e-b-base", "{b1}");
    assert_eq!(b1["hosts"], serde_json::json!(["real"]), "{b1}");
    let v1 = &b1["volumes"][0];
    assert_eq!(v1["role"], "data", "{b1}");
    assert_eq!(v1["volume"], "e2e-b-vm-vdb.qcow2", "{b1}");
    assert_eq!(v1["basis"], "", "a full copy: {b1}");
    let f1 = storage.join(v1["file"].as_str().unwrap());
    let sent1 = v1["sent_bytes"].as_u64().unwrap();
    assert!(sent1 >= 16 << 20, "{b1}");
    assert_eq!(
        std::fs::metadata(&f1).unwrap().permissions().mode() & 0o777,
        0o444
    );
    assert!(same(&data, &f1));

    // 2: 1 MiB changed; about that much travels.
    write(&data, 0x22, 4 << 20, 1 << 20);
    cli.ok(&["backup", "create", "e2e-b-vm"]);
    let b2 = backup(&cli, "e2e-b-vm", 2);
    let v2 = &b2["volumes"][0];
    assert_eq!(v2["basis"], v1["file"], "{b2}");
    let sent2 = v2["sent_bytes"].as_u64().unwrap();
    eprintln!("full backup sent {sent1} bytes, the one after 1 MiB changed {sent2}");
    assert!((1 << 20..=2 << 20).contains(&sent2), "{b2}");
    let f2 = storage.join(v2["file"].as_str().unwrap());
    assert!(same(&data, &f2));
    assert!(!same(&f1, &f2));

    // 3: with the system overlay (a marker at the start of the guest's disk).
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x42 0 512",
            system.to_str().unwrap(),
        ],
    )
    .unwrap();
    cli.ok(&["backup", "create", "e2e-b-vm", "--system"]);
    let b3 = backup(&cli, "e2e-b-vm", 3);
    let roles: Vec<&str> = b3["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "data"], "{b3}");
    let l = cli.json(&["backup", "ls", "e2e-b-vm"]);
    assert_eq!(l["backups"].as_array().unwrap().len(), 3, "{l}");
    assert_eq!(
        other.json(&["backup", "ls"])["backups"],
        serde_json::json!([]),
        "another user sees no backup"
    );
    refused(&other, &["backup", "restore", "e2e-b-vm"], "not found");
    refused(
        &other,
        &["backup", "new-vm", "e2e-b-vm", "e2e-b-theft"],
        "no backup",
    );
    refused(&other, &["backup", "rm", "e2e-b-vm", "1"], "no backup");
    refused(
        &cli,
        &["backup", "restore", "e2e-b-vm", "--number", "9"],
        "no backup 9 (it has 1, 2, 3)",
    );

    // Restore 2 in place: the data is 2's again (the overlay stays as it is).
    write(&data, 0x33, 0, 32 << 20);
    assert!(!same(&data, &f2));
    admin_cli.ok(&["vm", "start", "e2e-b-vm"]);
    refused(
        &cli,
        &["backup", "restore", "e2e-b-vm", "--number", "2"],
        "shut it off first",
    );
    refused(&cli, &["backup", "create", "e2e-b-vm"], "shut it off first");
    admin_cli.ok(&["vm", "poweroff", "e2e-b-vm"]);
    cli.ok(&["backup", "restore", "e2e-b-vm", "--number", "2"]);
    assert!(same(&data, &f2), "the data volume is backup 2's again");
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_ne!(mode & 0o200, 0, "the restored volume is writable");
    let names: Vec<String> = std::fs::read_dir(&storage)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("restore-")),
        "no file left from the restore: {names:?}"
    );

    // A new VM from backup 3, with a plan: its guest reads the marker, its data is 3's.
    admin_cli.ok(&[
        "plan",
        "add",
        "e2e-b-plan",
        "--memory",
        "320",
        "--vcpus",
        "1",
    ]);
    refused(
        &cli,
        &["backup", "new-vm", "e2e-b-vm", "e2e-b-vm", "--number", "3"],
        "already exists",
    );
    refused(
        &cli,
        &[
            "backup",
            "new-vm",
            "e2e-b-vm",
            "e2e-b-new",
            "--plan",
            "nope",
        ],
        "not found",
    );
    cli.ok(&[
        "backup",
        "new-vm",
        "e2e-b-vm",
        "e2e-b-new",
        "--number",
        "3",
        "--plan",
        "e2e-b-plan",
    ]);
    let new = cli.json(&["vm", "show", "e2e-b-new"]);
    assert_eq!(new["owner"], "student", "{new}");
    let disks = cli.json(&["vm", "disks", "e2e-b-new"]);
    let list = disks["disks"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{disks}");
    let b3_file = |role: &str| {
        let v = b3["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["role"] == role)
            .unwrap();
        storage.join(v["file"].as_str().unwrap())
    };
    let new_data = storage.join(list[1]["volume"].as_str().unwrap());
    assert!(same(&new_data, &b3_file("data")), "{disks}");
    let new_system = storage.join(list[0]["volume"].as_str().unwrap());
    assert!(same(&new_system, &b3_file("system")), "{disks}");
    cli.ok(&["vm", "start", "e2e-b-new"]);
    wait_readiness(&cli, "e2e-b-new", "READY");
    let out = cli.ok(&[
        "vm",
        "exec",
        "e2e-b-new",
        "--shell",
        "--",
        "head -c 4 /dev/vda | od -An -tx1; head -c 4 /dev/vdb | od -An -tx1",
    ]);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["42", "42", "42", "42", "11", "11", "11", "11"],
        "{out}"
    );
    let shown = cli.json(&["vm", "show", "e2e-b-new"]);
    assert!(
        shown.to_string().contains("320"),
        "the plan's memory: {shown}"
    );

    // Removing: one backup's files go, the others stay; the repository host holds backups.
    refused(
        &admin_cli,
        &["image", "repository", "real", "off"],
        "holds backup",
    );
    cli.ok(&["backup", "rm", "e2e-b-vm", "1"]);
    assert!(!f1.exists());
    assert!(f2.exists());
    let l = cli.json(&["backup", "ls", "e2e-b-vm"]);
    let numbers: Vec<u64> = l["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [2, 3], "{l}");
    // Backups outlive their VM.
    admin_cli.ok(&["vm", "poweroff", "e2e-b-new"]);
    cli.ok(&["vm", "rm", "e2e-b-vm"]);
    assert_eq!(
        cli.json(&["backup", "ls"])["backups"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    drop(coord);
    drop(agent);
    cleanup_domains("e2e-b-");
}
