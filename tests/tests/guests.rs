//! Guests through the coordinator on the real libvirtd with the tiny guest (which runs
//! Debian's qemu-ga): a clone is READY only once its guest agent answers, it has an address
//! and its base's post-load command ran; `corral vm exec` runs programs (arguments passed one
//! by one, a shell only when asked, exit codes, stdin, a time limit); `corral vm cp` copies
//! files both ways; a guest without an agent and another user's VM are refused.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_types,
    clippy::disallowed_methods
)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_tests::*;

#[tokio::test]
async fn ready_guests_exec_and_copy_through_the_guest_agent() {
    if !real_host_ready() {
        return;
    }
    cleanup_domains("e2e-g-");
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
    tiny_base(&mut admin, "e2e-g-base", "real", false)
        .await
        .unwrap();
    tiny_base(&mut admin, "e2e-g-bare", "real", true)
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

    // Post-load commands are the admin's; a student is refused and nothing changes.
    let out = cli.run(&["base", "post-load", "e2e-g-base", "--", "touch", "/x"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin"),
        "{out:?}"
    );
    let shown = admin_cli.ok(&[
        "base",
        "post-load",
        "e2e-g-base",
        "--shell",
        "--",
        "echo loaded-$(hostname) > /tmp/post-loaded",
    ]);
    assert!(shown.contains("1. sh -c"), "{shown}");

    // A clone is BOOTING, then READY once its guest answers and the post-load ran.
    let t = Instant::now();
    cli.ok(&["vm", "clone", "e2e-g-base", "e2e-g-vm", "--start"]);
    let (seen, took) = wait_readiness(&cli, "e2e-g-vm", "READY");
    eprintln!(
        "readiness of e2e-g-vm: {seen:?}; READY {:.1} s after the clone was asked for",
        (t.elapsed()).as_secs_f64()
    );
    let _ = took;
    assert!(seen.contains(&"BOOTING".to_string()), "{seen:?}");
    let ls = cli.ok(&["vm", "ls"]);
    assert!(ls.contains("READY"), "{ls}");
    let out = cli.ok(&["vm", "exec", "e2e-g-vm", "--", "cat", "/tmp/post-loaded"]);
    assert_eq!(out.trim(), "loaded-e2e-g-vm");
    let g = cli.json(&["vm", "guest", "e2e-g-vm"]);
    assert_eq!(g["answers"], true, "{g}");
    assert!(!g["addresses"].as_array().unwrap().is_empty(), "{g}");

    // Arguments go one by one, with no shell: nothing is expanded.
    let out = cli.ok(&["vm", "exec", "e2e-g-vm", "--", "echo", "$(id)", "a  b"]);
    assert_eq!(out, "$(id) a  b\n");
    // A shell when asked; the exit code and stderr come back.
    let out = cli.run(&[
        "vm",
        "exec",
        "e2e-g-vm",
        "--shell",
        "--",
        "echo out-$0; echo err >&2; exit 3",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out-x\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    // Standard input.
    let mut child = Command::new(bin("corral"))
        .args(["vm", "exec", "e2e-g-vm", "--stdin", "--", "cat"])
        .env("CORRAL_COORDINATOR", &coord.addr)
        .env("CORRAL_TOKEN", &token)
        .env("HOME", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n");
    // A time limit kills the program.
    let t = Instant::now();
    let out = cli.run(&[
        "vm",
        "exec",
        "e2e-g-vm",
        "--timeout",
        "2",
        "--",
        "sleep",
        "60",
    ]);
    let killed_after = t.elapsed();
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert!(killed_after < Duration::from_secs(15), "{killed_after:?}");
    eprintln!("a 2 s time limit ended `sleep 60` after {killed_after:?}");
    let ps = cli.ok(&["vm", "exec", "e2e-g-vm", "--", "ps"]);
    assert!(!ps.contains("sleep 60"), "{ps}");
    // A program the guest does not have: a clear refusal.
    let out = cli.run(&["vm", "exec", "e2e-g-vm", "--", "/no/such/program"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/program"), "{err}");

    // Files both ways, byte for byte (1 MiB of varied bytes).
    let data: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let local = dir.path().join("in.bin");
    std::fs::write(&local, &data).unwrap();
    let t = Instant::now();
    cli.ok(&["vm", "cp", local.to_str().unwrap(), "e2e-g-vm:/tmp/in.bin"]);
    let up = t.elapsed();
    let back = dir.path().join("back.bin");
    let t = Instant::now();
    cli.ok(&["vm", "cp", "e2e-g-vm:/tmp/in.bin", back.to_str().unwrap()]);
    let down = t.elapsed();
    assert!(std::fs::read(&back).unwrap() == data, "the copy differs");
    eprintln!("1 MiB into the guest in {up:?}, out in {down:?}");
    let out = cli.ok(&["vm", "exec", "e2e-g-vm", "--", "wc", "-c", "/tmp/in.bin"]);
    assert!(out.contains("1048576"), "{out}");
    let out = cli.run(&["vm", "cp", "e2e-g-vm:/no/such/file", back.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        std::fs::read(&back).unwrap() == data,
        "a failed copy left the file alone"
    );
    let out = cli.run(&["vm", "cp", "e2e-g-vm:relative", back.to_str().unwrap()]);
    assert!(!out.status.success());

    // Data disks, hot: added to the running guest, written, grown live, listed.
    // The guest's 512-byte sectors of `dev`, once they are `want` (hot plug and a live resize
    // reach the guest a moment after libvirt returns).
    let sectors = |dev: &str, want: u64| -> u64 {
        let path = format!("/sys/block/{dev}/size");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = cli.run(&["vm", "exec", "e2e-g-vm", "--", "cat", &path]);
            let n = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0);
            if n == want || Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    cli.ok(&["vm", "disk-add", "e2e-g-vm", "--size", "16M"]);
    assert_eq!(sectors("vdb", 32768), 32768, "the guest sees a 16 MiB vdb");
    cli.ok(&[
        "vm",
        "exec",
        "e2e-g-vm",
        "--shell",
        "--",
        "echo marker-1 | dd of=/dev/vdb bs=512 count=1 conv=sync,fsync 2>/dev/null",
    ]);
    cli.ok(&["vm", "disk-resize", "e2e-g-vm", "e2e-g-vm-vdb.qcow2", "32M"]);
    assert_eq!(sectors("vdb", 65536), 65536, "grown live to 32 MiB");
    let out = cli.ok(&[
        "vm", "exec", "e2e-g-vm", "--", "head", "-c", "8", "/dev/vdb",
    ]);
    assert_eq!(out, "marker-1", "the data survived the growth");
    cli.ok(&[
        "vm", "disk-add", "e2e-g-vm", "--size", "8M", "--format", "raw",
    ]);
    assert_eq!(sectors("vdc", 16384), 16384);
    let disks = cli.json(&["vm", "disks", "e2e-g-vm"]);
    let list = disks["disks"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{disks}");
    assert_eq!(list[1]["volume"], "e2e-g-vm-vdb.qcow2", "{disks}");
    assert_eq!(list[1]["virtual_size"], 32u64 << 20, "{disks}");
    assert_eq!(list[2]["format"], "raw", "{disks}");
    for (args, says) in [
        (
            &["vm", "disk-resize", "e2e-g-vm", "e2e-g-vm-vdb.qcow2", "8M"][..],
            "only grow",
        ),
        (
            &["vm", "disk-resize", "e2e-g-vm", "e2e-g-vm-vda.qcow2", "1G"][..],
            "only swap and data",
        ),
        (
            &[
                "vm",
                "disk-resize",
                "e2e-g-vm",
                "e2e-g-bare-vda.qcow2",
                "1G",
            ][..],
            "has no volume",
        ),
    ] {
        let out = cli.run(args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(sectors("vdb", 65536), 65536, "refusals changed nothing");
    let out = other.run(&["vm", "disk-resize", "e2e-g-vm", "e2e-g-vm-vdb.qcow2", "64M"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{out:?}"
    );
    let out = other.run(&["vm", "disks", "e2e-g-vm"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{out:?}"
    );

    // A data disk copied to another VM: refused while its VM runs, then copied shut off and
    // hot-plugged into the running receiver, marker included.
    cli.ok(&["vm", "clone", "e2e-g-base", "e2e-g-vm2", "--start"]);
    // Booted first: a disk hot-plugged while the guest kernel is still coming up may take
    // another name in the guest (seen once: vdb read as the blank system disk).
    wait_readiness(&cli, "e2e-g-vm2", "READY");
    let out = cli.run(&[
        "vm",
        "disk-copy",
        "e2e-g-vm",
        "e2e-g-vm-vdb.qcow2",
        "e2e-g-vm2",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shut it off first"),
        "{out:?}"
    );
    let out = other.run(&[
        "vm",
        "disk-copy",
        "e2e-g-vm",
        "e2e-g-vm-vdb.qcow2",
        "e2e-g-vm2",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{out:?}"
    );
    cli.ok(&["vm", "poweroff", "e2e-g-vm"]);
    let out = cli.run(&[
        "vm",
        "disk-copy",
        "e2e-g-vm",
        "e2e-g-vm-vda.qcow2",
        "e2e-g-vm2",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only swap and data"),
        "{out:?}"
    );
    let t = Instant::now();
    cli.ok(&[
        "vm",
        "disk-copy",
        "e2e-g-vm",
        "e2e-g-vm-vdb.qcow2",
        "e2e-g-vm2",
    ]);
    eprintln!(
        "a 32 MiB data disk copied to a running VM on the same host in {:?}",
        t.elapsed()
    );
    wait_readiness(&cli, "e2e-g-vm2", "READY");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cli.run(&[
            "vm",
            "exec",
            "e2e-g-vm2",
            "--",
            "head",
            "-c",
            "8",
            "/dev/vdb",
        ]);
        if String::from_utf8_lossy(&out.stdout) == "marker-1" {
            break;
        }
        if Instant::now() >= deadline {
            let seen = cli.run(&[
                "vm",
                "exec",
                "e2e-g-vm2",
                "--shell",
                "--",
                "for d in /sys/block/vd*; do echo $d $(cat $d/size) $(head -c 8 /dev/${d##*/} | od -An -c | head -1); done; ls -l /dev/vd*; dmesg | grep -iE 'virtio_blk|vd[a-z]|pci.*1af4'",
            ]);
            panic!(
                "the copy never showed in e2e-g-vm2: {out:?}; the guest's disks: {}",
                String::from_utf8_lossy(&seen.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let disks = cli.json(&["vm", "disks", "e2e-g-vm2"]);
    let list = disks["disks"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{disks}");
    assert!(
        list[1]["volume"]
            .as_str()
            .unwrap()
            .starts_with("e2e-g-vm2-copy-"),
        "{disks}"
    );
    assert_eq!(list[1]["virtual_size"], 32u64 << 20, "{disks}");
    let disks = cli.json(&["vm", "disks", "e2e-g-vm"]);
    assert_eq!(
        disks["disks"].as_array().unwrap().len(),
        3,
        "the source kept its disks"
    );
    // A data disk's own snapshot: taken shut off, reverted after the guest overwrote it.
    cli.ok(&[
        "vm",
        "disk-snapshot",
        "e2e-g-vm",
        "e2e-g-vm-vdb.qcow2",
        "before",
    ]);
    for (args, says) in [
        (
            &[
                "vm",
                "disk-snapshot",
                "e2e-g-vm",
                "e2e-g-vm-vdb.qcow2",
                "before",
            ][..],
            "already",
        ),
        (
            &["vm", "disk-snapshot", "e2e-g-vm", "e2e-g-vm-vdc.raw", "s1"][..],
            "only qcow2",
        ),
        (
            &[
                "vm",
                "disk-snapshot",
                "e2e-g-vm",
                "e2e-g-vm-vdb.qcow2",
                "nope",
                "--revert",
            ][..],
            "no snapshot",
        ),
    ] {
        let out = cli.run(args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let disks = cli.json(&["vm", "disks", "e2e-g-vm"]);
    assert_eq!(disks["disks"][1]["snapshots"][0], "before", "{disks}");
    let out = other.run(&[
        "vm",
        "disk-snapshot",
        "e2e-g-vm",
        "e2e-g-vm-vdb.qcow2",
        "before",
        "--delete",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{out:?}"
    );
    cli.ok(&["vm", "start", "e2e-g-vm"]);
    wait_readiness(&cli, "e2e-g-vm", "READY");
    let out = cli.run(&[
        "vm",
        "disk-snapshot",
        "e2e-g-vm",
        "e2e-g-vm-vdb.qcow2",
        "before",
        "--revert",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shut it off first"),
        "{out:?}"
    );
    cli.ok(&[
        "vm",
        "exec",
        "e2e-g-vm",
        "--shell",
        "--",
        "echo marker-2 | dd of=/dev/vdb bs=512 count=1 conv=sync,fsync 2>/dev/null",
    ]);
    let out = cli.ok(&[
        "vm", "exec", "e2e-g-vm", "--", "head", "-c", "8", "/dev/vdb",
    ]);
    assert_eq!(out, "marker-2");
    cli.ok(&["vm", "poweroff", "e2e-g-vm"]);
    cli.ok(&[
        "vm",
        "disk-snapshot",
        "e2e-g-vm",
        "e2e-g-vm-vdb.qcow2",
        "before",
        "--revert",
    ]);
    cli.ok(&["vm", "start", "e2e-g-vm"]);
    wait_readiness(&cli, "e2e-g-vm", "READY");
    let out = cli.ok(&[
        "vm", "exec", "e2e-g-vm", "--", "head", "-c", "8", "/dev/vdb",
    ]);
    assert_eq!(out, "marker-1", "reverted to the snapshot");

    // A data disk detached from the running guest stays the VM's own and comes back.
    cli.ok(&["vm", "disk-detach", "e2e-g-vm", "e2e-g-vm-vdc.raw"]);
    assert_eq!(sectors("vdc", 0), 0, "vdc left the running guest");
    let disks = cli.json(&["vm", "disks", "e2e-g-vm"]);
    let list = disks["disks"].as_array().unwrap();
    let gone = list
        .iter()
        .find(|d| d["volume"] == "e2e-g-vm-vdc.raw")
        .unwrap();
    assert_eq!(gone["detached"], true, "{disks}");
    for (who, args, says) in [
        (
            &cli,
            &["vm", "disk-detach", "e2e-g-vm", "e2e-g-vm-vdc.raw"][..],
            "already",
        ),
        (
            &cli,
            &["vm", "disk-detach", "e2e-g-vm", "e2e-g-vm-vda.qcow2"][..],
            "only swap and data",
        ),
        (
            &cli,
            &["vm", "disk-attach", "e2e-g-vm2", "e2e-g-vm-vdc.raw"][..],
            "belongs to domain",
        ),
        (
            &other,
            &["vm", "disk-attach", "e2e-g-vm", "e2e-g-vm-vdc.raw"][..],
            "not found",
        ),
    ] {
        let out = who.run(args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    cli.ok(&["vm", "disk-attach", "e2e-g-vm", "e2e-g-vm-vdc.raw"]);
    assert_eq!(sectors("vdc", 16384), 16384, "vdc is back in the guest");

    // Another user's VM looks absent; nothing runs there.
    for args in [
        &["vm", "exec", "e2e-g-vm", "--", "touch", "/tmp/other"][..],
        &["vm", "cp", local.to_str().unwrap(), "e2e-g-vm:/tmp/other"][..],
        &["vm", "guest", "e2e-g-vm"][..],
    ] {
        let out = other.run(args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not found"), "{args:?}: {err}");
    }
    let out = cli.run(&["vm", "exec", "e2e-g-vm", "--", "ls", "/tmp/other"]);
    assert!(!out.status.success(), "nothing was made by the other user");

    // A guest without an agent: never READY, and exec is refused with a clear message.
    cli.ok(&["vm", "clone", "e2e-g-bare", "e2e-g-bare-vm", "--start"]);
    std::thread::sleep(Duration::from_secs(12));
    let v = cli.json(&["vm", "show", "e2e-g-bare-vm"]);
    assert_eq!(readiness(&v), "BOOTING", "{v}");
    let out = cli.run(&["vm", "exec", "e2e-g-bare-vm", "--", "true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("guest agent") && err.contains("not connected"),
        "{err}"
    );
    // A shut-off VM: OFF, and refused.
    cli.ok(&["vm", "poweroff", "e2e-g-bare-vm"]);
    let (_, _) = wait_readiness(&cli, "e2e-g-bare-vm", "OFF");
    let out = cli.run(&["vm", "exec", "e2e-g-bare-vm", "--", "true"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not running"),
        "{out:?}"
    );

    cli.ok(&["vm", "rm", "e2e-g-vm"]);
    cli.ok(&["vm", "rm", "e2e-g-vm2"]);
    cli.ok(&["vm", "rm", "e2e-g-bare-vm"]);
    cleanup_domains("e2e-g-");
}
