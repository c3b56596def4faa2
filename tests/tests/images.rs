//! The image repository on the real libvirtd with the tiny guest: a VM captured (shut off)
//! into a flattened, read-only, checksummed image on the repository host, its versions listed,
//! loaded back as a base whose clones boot with the captured disk, and a version removed only
//! once no base uses it. Across hosts, the lab test carries images between hosts.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_types,
    clippy::disallowed_methods
)]

use std::os::unix::fs::PermissionsExt;

use corral_tests::adversarial::host_snapshot;
use corral_tests::coord_cases::store_snapshot;
use corral_tests::*;

fn refused(cli: &Cli, args: &[&str], says: &str) {
    let out = cli.run(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(says), "{args:?}: {err}");
}

#[tokio::test]
async fn vms_are_captured_into_images_and_loaded_back_as_bases() {
    if !real_host_ready() {
        return;
    }
    cleanup_domains("e2e-i-");
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
    tiny_base(&mut admin, "e2e-i-base", "real", false)
        .await
        .unwrap();
    let token = user_token(&mut admin, "student").await.unwrap();
    let cli = Cli {
        addr: &coord.addr,
        token: &token,
        ca: None,
    };

    // The source: a marker written at the start of its system disk by its guest.
    admin_cli.ok(&["vm", "clone", "e2e-i-base", "e2e-i-src", "--start"]);
    wait_readiness(&admin_cli, "e2e-i-src", "READY");
    admin_cli.ok(&[
        "vm",
        "exec",
        "e2e-i-src",
        "--shell",
        "--",
        "echo image-1 | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null",
    ]);
    refused(
        &admin_cli,
        &["image", "capture", "e2e-i-src", "lab"],
        "no repository host",
    );
    refused(&cli, &["image", "repository", "real", "on"], "admin");
    refused(
        &admin_cli,
        &["image", "repository", "nope", "on"],
        "not found",
    );
    admin_cli.ok(&["image", "repository", "real", "on"]);
    assert_eq!(admin_cli.ok(&["image", "repositories"]).trim(), "real");
    refused(
        &admin_cli,
        &["image", "capture", "e2e-i-src", "lab"],
        "shut it off first",
    );
    admin_cli.ok(&["vm", "poweroff", "e2e-i-src"]);
    refused(&cli, &["image", "capture", "e2e-i-src", "lab"], "admin");
    refused(
        &admin_cli,
        &["image", "capture", "e2e-i-src", "a/b"],
        "invalid image name",
    );
    refused(
        &admin_cli,
        &["image", "capture", "e2e-i-nope", "lab"],
        "not found",
    );
    assert_eq!(
        admin_cli.json(&["image", "ls"])["images"],
        serde_json::json!([])
    );

    let t = std::time::Instant::now();
    admin_cli.ok(&[
        "image",
        "capture",
        "e2e-i-src",
        "lab",
        "--description",
        "week 1",
    ]);
    eprintln!("a 64 MiB system disk captured in {:?}", t.elapsed());
    admin_cli.ok(&["image", "capture", "e2e-i-src", "lab"]);
    // Everyone may ask whether an image exists and how big it is.
    let v = cli.json(&["image", "show", "lab", "--version", "1"]);
    assert_eq!(v["version"], 1, "{v}");
    assert_eq!(v["virtual_size"], 64u64 << 20, "{v}");
    assert_eq!(v["source_vm"], "e2e-i-src", "{v}");
    assert_eq!(v["captured_by"], "admin", "{v}");
    assert_eq!(v["description"], "week 1", "{v}");
    assert_eq!(v["hosts"], serde_json::json!(["real"]), "{v}");
    let checksum = v["checksum"].as_str().unwrap().to_string();
    assert!(checksum.starts_with("blake3:"), "{v}");
    assert_eq!(cli.json(&["image", "show", "lab"])["version"], 2);
    refused(&cli, &["image", "show", "nope"], "image nope not found");
    refused(
        &cli,
        &["image", "show", "lab", "--version", "9"],
        "no version 9",
    );
    let l = cli.json(&["image", "ls", "lab"]);
    assert_eq!(l["images"].as_array().unwrap().len(), 2, "{l}");

    // The file: flattened qcow2, read-only, its checksum the recorded one.
    let file = agent.storage().join("image-lab-v1.qcow2");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o444);
    let info = run(
        "qemu-img",
        &["info", "--output=json", file.to_str().unwrap()],
    )
    .unwrap();
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["format"], "qcow2", "{info}");
    assert!(info.get("backing-filename").is_none(), "flattened: {info}");
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(
        checksum,
        format!("blake3:{}", blake3::hash(&bytes).to_hex()),
        "the recorded checksum is the file's"
    );

    // Loaded back as a base: its clone boots with the captured disk under its own name.
    refused(
        &cli,
        &[
            "image",
            "load",
            "lab",
            "--host",
            "real",
            "--base",
            "e2e-i-loaded",
        ],
        "admin",
    );
    refused(
        &admin_cli,
        &[
            "image",
            "load",
            "lab",
            "--host",
            "real",
            "--base",
            "e2e-i-src",
        ],
        "already",
    );
    let t = std::time::Instant::now();
    admin_cli.ok(&[
        "image",
        "load",
        "lab",
        "--version",
        "1",
        "--host",
        "real",
        "--base",
        "e2e-i-loaded",
    ]);
    eprintln!(
        "image loaded as a base on the same host in {:?}",
        t.elapsed()
    );
    publish(&mut admin, "e2e-i-loaded").await.unwrap();
    cli.ok(&["vm", "clone", "e2e-i-loaded", "e2e-i-vm", "--start"]);
    wait_readiness(&cli, "e2e-i-vm", "READY");
    let out = cli.ok(&[
        "vm", "exec", "e2e-i-vm", "--", "head", "-c", "7", "/dev/vda",
    ]);
    assert_eq!(out, "image-1", "the clone has the captured disk");
    let out = cli.ok(&["vm", "exec", "e2e-i-vm", "--", "hostname"]);
    assert_eq!(out.trim(), "e2e-i-vm");
    assert!(file.exists(), "loading only read the image");

    // Dry runs: checked, authorized and placed as the real calls, answered with what would
    // happen; the store, the host's domains, files and rules are left exactly as they were.
    let mut ac = agent.client().await.unwrap();
    let before = (
        store_snapshot(&mut admin).await,
        host_snapshot(&mut ac, &agent.storage(), true).await,
    );
    let out = cli.ok(&[
        "--dry-run",
        "vm",
        "clone",
        "e2e-i-loaded",
        "e2e-i-dry",
        "--start",
    ]);
    assert!(
        out.contains("dry run: would run clone e2e-i-dry on host real"),
        "{out}"
    );
    let v = cli.json(&["--dry-run", "vm", "clone", "e2e-i-loaded", "e2e-i-dry2"]);
    assert_eq!(v["id"], "", "{v}");
    let would: serde_json::Value = serde_json::from_str(v["result"].as_str().unwrap()).unwrap();
    assert_eq!(would["dry_run"], true, "{would}");
    assert_eq!(would["host"], "real", "{would}");
    for args in [
        &["vm", "poweroff", "e2e-i-vm"][..],
        &["vm", "rm", "e2e-i-vm"][..],
        &["vm", "disk-add", "e2e-i-vm", "--size", "16M"][..],
    ] {
        let out = cli.ok(&[&["--dry-run"][..], args].concat());
        assert!(out.starts_with("dry run: would run"), "{args:?}: {out}");
    }
    for args in [
        &["image", "capture", "e2e-i-src", "lab"][..],
        &["image", "rm", "lab", "2"][..],
        &[
            "image",
            "load",
            "lab",
            "--host",
            "real",
            "--base",
            "e2e-i-dry3",
        ][..],
        &["vm", "rm", "e2e-i-src"][..],
    ] {
        let out = admin_cli.ok(&[&["--dry-run"][..], args].concat());
        assert!(out.starts_with("dry run: would run"), "{args:?}: {out}");
    }
    // Changes written straight to the store are made and rolled back: the answer is real.
    admin_cli.ok(&["--dry-run", "plan", "add", "dry-plan", "--memory", "256"]);
    admin_cli.ok(&["--dry-run", "base", "publish", "e2e-i-base"]);
    admin_cli.ok(&["--dry-run", "user", "add", "dry-user"]);
    // Bad input and others' things are refused as in the real call.
    refused(
        &cli,
        &["--dry-run", "vm", "clone", "e2e-i-loaded", "e2e-i-vm"],
        "already exists",
    );
    refused(&cli, &["--dry-run", "image", "rm", "lab", "2"], "admin");
    refused(
        &admin_cli,
        &["--dry-run", "base", "delete", "e2e-i-base"],
        "has 1 clone(s)",
    );
    refused(
        &admin_cli,
        &["--dry-run", "image", "rm", "lab", "1"],
        "used by base(s)",
    );
    refused(
        &cli,
        &["--dry-run", "vm", "exec", "e2e-i-vm", "--", "touch", "/x"],
        "ExecVm has no dry run",
    );
    let after = (
        store_snapshot(&mut admin).await,
        host_snapshot(&mut ac, &agent.storage(), true).await,
    );
    assert_eq!(before.0, after.0, "the dry runs changed the store");
    assert_eq!(before.1, after.1, "the dry runs changed the host");
    assert!(cli.json(&["plan", "ls"])["plans"]
        .as_array()
        .is_none_or(|p| p.is_empty()));

    // A version a base uses stays; unused ones go, from the repository host too.
    let v = cli.json(&["image", "show", "lab", "--version", "1"]);
    assert_eq!(v["bases"], serde_json::json!(["e2e-i-loaded"]), "{v}");
    refused(
        &admin_cli,
        &["image", "rm", "lab", "1"],
        "used by base(s) e2e-i-loaded",
    );
    refused(&cli, &["image", "rm", "lab", "2"], "admin");
    refused(
        &admin_cli,
        &["image", "repository", "real", "off"],
        "holds image version(s)",
    );
    admin_cli.ok(&["image", "rm", "lab", "2"]);
    assert!(!agent.storage().join("image-lab-v2.qcow2").exists());
    cli.ok(&["vm", "rm", "e2e-i-vm"]);
    admin_cli.ok(&["base", "delete", "e2e-i-loaded"]);
    admin_cli.ok(&["image", "rm", "lab", "1"]);
    assert!(!file.exists());
    admin_cli.ok(&["image", "repository", "real", "off"]);
    admin_cli.ok(&["vm", "rm", "e2e-i-src"]);
    cleanup_domains("e2e-i-");
}
