//! Corral across hosts, in the lab (`deploy/lab`): three hosts in network namespaces, each
//! with its own libvirtd, iptables and agent; the coordinator and the CLI outside them.

// The end-to-end tests drive real processes (agents, virsh, iptables, the CLI).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use corral_tests::lab::{self, Lab};
use corral_tests::*;

/// One lab at a time: the tests of this file take turns.
static LAB: Mutex<()> = Mutex::new(());

const BOOT: Duration = Duration::from_secs(120);

fn lab_ready() -> bool {
    real_host_ready()
}

fn agent_json(lab: &Lab, host: &str, args: &[&str]) -> serde_json::Value {
    let out = lab.agent_cli(host, args);
    assert!(
        out.status.success(),
        "corral agent {} on {host}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn fetch_in(lab: &Lab, host: &str, url: &str, want: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match lab.exec(host, &["curl", "-s", "--fail", "--max-time", "3", url]) {
            Ok(b) if b.contains(want) => return b,
            Ok(b) => last = b,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{url} from {host}: no {want:?} within {timeout:?}; last: {last}");
}

fn vm(cli: &Cli, name: &str) -> serde_json::Value {
    cli.json(&["vm", "show", name])
}

/// The VM's one exposed port, which must be on `address` (it followed the VM).
fn moved_port(cli: &Cli, name: &str, address: &str) -> serde_json::Value {
    let ports = cli.json(&["port", "list", name]);
    let list = ports["ports"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{ports}");
    assert_eq!(list[0]["host_address"], address, "{ports}");
    assert_eq!(list[0]["guest_port"], 80, "{ports}");
    list[0].clone()
}

fn host_state(cli: &Cli, host: &str) -> i64 {
    let hosts = cli.json(&["host", "ls"]);
    hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == host)
        .map(|h| h["state"].as_i64().unwrap_or(0))
        .unwrap()
}

fn received(host: &str, volume: &str) -> usize {
    let log = std::fs::read_to_string(format!("{}/{host}/agent.log", lab::LAB_DIR)).unwrap();
    log.lines()
        .filter(|l| l.contains("volume received and verified") && l.contains(volume))
        .count()
}

#[test]
fn a_base_follows_its_clones_across_hosts_and_a_cut_link_is_survived() {
    if !lab_ready() {
        return;
    }
    let _turn = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::up(3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let coord = lab::coordinator(&lab, dir.path(), &["h1", "h2", "h3"]).unwrap();
    let cli = Cli {
        addr: &coord.addr,
        token: &coord.admin_token,
        ca: None,
    };
    lab::tiny_base(&cli, "lab-web", "h1");

    // Bad input: clear errors, nothing changes.
    for (args, want) in [
        (
            vec!["base", "sync", "lab-web", "--host", "nohost"],
            "not found",
        ),
        (vec!["base", "sync", "nobase", "--host", "h2"], "not found"),
        (vec!["base", "sync", "../x", "--host", "h2"], "invalid"),
    ] {
        let out = cli.run(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert_eq!(
        cli.json(&["base", "ls"])["bases"][0]["hosts"],
        serde_json::json!(["h1"])
    );

    // h1 is in maintenance: the clone goes to a host without the base, which gets it first.
    cli.ok(&["host", "disable", "h1"]);
    let op = cli.json(&["vm", "clone", "lab-web", "lab-c1", "--start"]);
    assert_eq!(op["state"], 3, "{op}");
    assert_eq!(op["host"], "h2", "{op}");
    assert_eq!(
        cli.json(&["base", "ls"])["bases"][0]["hosts"],
        serde_json::json!(["h1", "h2"])
    );
    let file = "lab-web-vda.base.qcow2";
    let (a, b) = (
        agent_json(&lab, "h1", &["volume", "checksum", file]),
        agent_json(&lab, "h2", &["volume", "checksum", file]),
    );
    assert_eq!(a["checksum"], b["checksum"]);
    assert_eq!(a["size"], b["size"]);
    let (da, db) = (
        lab::on_disk(&lab.storage("h1").join(file)).unwrap(),
        lab::on_disk(&lab.storage("h2").join(file)).unwrap(),
    );
    println!("base file on disk: {da} bytes on h1, {db} on h2; {a}");
    assert!(db <= da + (1 << 20), "holes stay holes: {db} vs {da}");

    // The clone boots on h2 and answers through a port exposed on h2's address, from h3.
    let port = cli.json(&["port", "expose", "lab-c1", "80", "--wait", "120"]);
    assert_eq!(port["host_address"], lab.ip("h2"), "{port}");
    let url = format!("http://{}:{}/", lab.ip("h2"), port["host_port"]);
    let body = fetch_in(&lab, "h3", &url, "corral tiny guest lab-c1", BOOT);
    println!("from h3: {body}");

    // Two syncs of the same base to the same host at once share one transfer.
    let first = cli.json(&[
        "--no-wait",
        "base",
        "sync",
        "lab-web",
        "--host",
        "h3",
        "--limit",
        "256K",
    ]);
    let second = cli.json(&["--no-wait", "base", "sync", "lab-web", "--host", "h3"]);
    for op in [&first, &second] {
        let id = op["id"].as_str().unwrap();
        let done = cli.json(&["op", "watch", id]);
        assert_eq!(done["state"], 3, "{done}");
    }
    assert_eq!(received("h3", file), 1, "one transfer for both requests");
    assert_eq!(
        cli.json(&["base", "ls"])["bases"][0]["hosts"],
        serde_json::json!(["h1", "h2", "h3"])
    );

    // The copy on h2 cannot go while lab-c1 uses it.
    let out = cli.run(&["base", "rm", "lab-web", "--host", "h2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lab-c1"));

    // h2's link is cut: it is marked down in time, its VM is unknown (not lost), new clones
    // go elsewhere; the link comes back and the state is reconciled.
    cli.ok(&["host", "enable", "h1"]);
    lab.link("h2", false).unwrap();
    let cut = Instant::now();
    while host_state(&cli, "h2") == 1 {
        assert!(cut.elapsed() < Duration::from_secs(8), "h2 not marked down");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "h2 marked down {} ms after its link was cut (down_after 3000 ms)",
        cut.elapsed().as_millis()
    );
    let v = vm(&cli, "lab-c1");
    assert_eq!(v["observed_state"], 0, "unknown while h2 is down: {v}");
    assert_eq!(v["host"], "h2");
    let op = cli.json(&["vm", "clone", "lab-web", "lab-c2"]);
    assert_eq!(op["state"], 3, "{op}");
    assert_ne!(op["host"], "h2", "{op}");
    lab.link("h2", true).unwrap();
    let back = Instant::now();
    loop {
        let v = vm(&cli, "lab-c1");
        if host_state(&cli, "h2") == 1 && v["observed_state"] == 1 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "not reconciled: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Live migration of the running lab-c1 from h2 to h1 through libvirt: what the guest
    // wrote before is there after.
    let before = format!(
        "http://{}:{}/cgi-bin/write?dev=vda&v=LIVE1",
        lab.ip("h2"),
        port["host_port"]
    );
    fetch_in(&lab, "h3", &before, "", BOOT);
    let guest_ip = port["guest_address"].as_str().unwrap().to_string();
    let t = Instant::now();
    let op = cli.json(&["vm", "move", "lab-c1", "--host", "h1", "--live"]);
    assert_eq!(op["state"], 3, "{op}");
    println!("live migration h2 -> h1: {} ms", t.elapsed().as_millis());
    let v = vm(&cli, "lab-c1");
    assert_eq!(v["host"], "h1", "{v}");
    assert_eq!(v["observed_state"], 1, "{v}");
    // The guest runs on h1 with its address and its disk: read the marker from h1 itself.
    let direct = format!("http://{guest_ip}/cgi-bin/read?dev=vda");
    fetch_in(&lab, "h1", &direct, "LIVE1", Duration::from_secs(30));
    // Its port came along, exposed on h1 (the address comes from h1's ARP table: h1's DHCP
    // server never gave it a lease).
    let port = moved_port(&cli, "lab-c1", &lab.ip("h1"));
    let after = format!(
        "http://{}:{}/cgi-bin/read?dev=vda",
        lab.ip("h1"),
        port["host_port"]
    );
    fetch_in(&lab, "h3", &after, "LIVE1", BOOT);
    assert!(
        !lab.storage("h2").join("lab-c1-vda.qcow2").exists(),
        "source volumes gone"
    );

    // Moving lab-c1 (shut off) to h3: volumes synced and verified, defined there, gone from h1.
    let out = cli.run(&["vm", "move", "lab-c1", "--host", "h3"]);
    assert!(!out.status.success(), "a running VM does not move");
    cli.ok(&["vm", "poweroff", "lab-c1"]);
    let op = cli.json(&["vm", "move", "lab-c1", "--host", "h3"]);
    assert_eq!(op["state"], 3, "{op}");
    let v = vm(&cli, "lab-c1");
    assert_eq!(v["host"], "h3", "{v}");
    let on_h1 = agent_json(&lab, "h1", &["vm", "list"]);
    assert!(!on_h1.to_string().contains("lab-c1"), "{on_h1}");
    cli.ok(&["vm", "start", "lab-c1"]);
    let port = moved_port(&cli, "lab-c1", &lab.ip("h3"));
    let url = format!("http://{}:{}/", lab.ip("h3"), port["host_port"]);
    fetch_in(&lab, "h1", &url, "corral tiny guest lab-c1", BOOT);

    // A data disk copied across hosts: added to lab-c1 (h3) while it runs, written by its
    // guest, copied shut off to a VM on another host; the copy there has the same content and
    // the source host keeps no journey copy.
    cli.ok(&["vm", "disk-add", "lab-c1", "--size", "16M"]);
    let write = format!(
        "http://{}:{}/cgi-bin/write?dev=vdb&v=COPY1",
        lab.ip("h3"),
        port["host_port"]
    );
    fetch_in(&lab, "h1", &write, "ok COPY1", BOOT);
    cli.ok(&["vm", "poweroff", "lab-c1"]);
    cli.ok(&["host", "disable", "h3"]);
    cli.ok(&["vm", "clone", "lab-web", "lab-c9"]);
    cli.ok(&["host", "enable", "h3"]);
    let c9_host = vm(&cli, "lab-c9")["host"].as_str().unwrap().to_string();
    assert_ne!(c9_host, "h3");
    let t = Instant::now();
    cli.ok(&["vm", "disk-copy", "lab-c1", "lab-c1-vdb.qcow2", "lab-c9"]);
    eprintln!(
        "a data disk copied from h3 to {c9_host} in {:?}",
        t.elapsed()
    );
    let disks = cli.json(&["vm", "disks", "lab-c9"]);
    let copy = disks["disks"][1]["volume"].as_str().unwrap().to_string();
    assert!(copy.starts_with("lab-c9-copy-"), "{disks}");
    let from = lab.storage("h3").join("lab-c1-vdb.qcow2");
    let to = lab.storage(&c9_host).join(&copy);
    let same = std::process::Command::new("qemu-img")
        .args(["compare", "-q"])
        .arg(&from)
        .arg(&to)
        .status()
        .unwrap();
    assert!(
        same.success(),
        "the copy on {c9_host} differs from lab-c1's disk"
    );
    assert!(
        !lab.storage("h3").join(&copy).exists(),
        "no journey copy left on h3"
    );
    cli.ok(&["vm", "rm", "lab-c9"]);

    // An image across hosts: lab-c1 (h3) captured into the repository on h1, then loaded onto
    // h2 as a base; no host keeps a journey copy.
    cli.ok(&["image", "repository", "h1", "on"]);
    let t = Instant::now();
    cli.ok(&["image", "capture", "lab-c1", "lab-img"]);
    eprintln!(
        "a VM on h3 captured into the repository on h1 in {:?}",
        t.elapsed()
    );
    let img = lab.storage("h1").join("image-lab-img-v1.qcow2");
    let same = std::process::Command::new("qemu-img")
        .args(["compare", "-q"])
        .arg(lab.storage("h3").join("lab-c1-vda.qcow2"))
        .arg(&img)
        .status()
        .unwrap();
    assert!(same.success(), "the image on h1 differs from lab-c1's disk");
    assert!(!lab.storage("h3").join("image-lab-img-v1.qcow2").exists());
    let t = Instant::now();
    cli.ok(&[
        "image",
        "load",
        "lab-img",
        "--host",
        "h2",
        "--base",
        "lab-from-img",
    ]);
    eprintln!("the image loaded onto h2 as a base in {:?}", t.elapsed());
    assert!(!lab.storage("h2").join("image-lab-img-v1.qcow2").exists());
    let v = cli.json(&["image", "show", "lab-img"]);
    assert_eq!(v["hosts"], serde_json::json!(["h1"]), "{v}");
    assert_eq!(v["bases"], serde_json::json!(["lab-from-img"]), "{v}");
    let b = agent_json(&lab, "h2", &["base", "show", "lab-from-img"]);
    assert_eq!(b["name"], "lab-from-img", "{b}");
    cli.ok(&["base", "delete", "lab-from-img"]);
    cli.ok(&["image", "rm", "lab-img", "1"]);
    assert!(!img.exists());

    // Backups across hosts: lab-c1 (h3) backed up into the repository on h1, twice (the second
    // sends about the 1 MiB that changed), restored in place from h1, and a new VM made from
    // the second on another host.
    let data = lab.storage("h3").join("lab-c1-vdb.qcow2");
    let t = Instant::now();
    cli.ok(&["backup", "create", "lab-c1", "--system"]);
    eprintln!("lab-c1 (h3) backed up to h1 in {:?}", t.elapsed());
    let b1 = cli.json(&["backup", "show", "lab-c1"]);
    let file1 = b1["volumes"][1]["file"].as_str().unwrap().to_string();
    assert!(!lab.storage("h3").join(&file1).exists(), "{b1}");
    let on_h1 = |f: &str| lab.storage("h1").join(f);
    let same = |a: &Path, b: &Path| {
        std::process::Command::new("qemu-img")
            .args(["compare", "-q"])
            .arg(a)
            .arg(b)
            .status()
            .unwrap()
            .success()
    };
    assert!(same(&data, &on_h1(&file1)), "{b1}");
    // The receiving agent's metrics count what it received.
    let metrics = lab
        .exec(
            "h1",
            &[
                "curl",
                "-s",
                "--fail",
                &format!("http://{}:9700/metrics", lab.ip("h1")),
            ],
        )
        .unwrap();
    let received: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("corral_agent_sync_bytes_total{what=\"received\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(received > 0.0, "{metrics}");
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 1M 1M",
            data.to_str().unwrap(),
        ],
    )
    .unwrap();
    cli.ok(&["backup", "create", "lab-c1"]);
    let b2 = cli.json(&["backup", "show", "lab-c1"]);
    let v2 = &b2["volumes"][0];
    eprintln!(
        "the backup after 1 MiB changed sent {} bytes",
        v2["sent_bytes"]
    );
    assert!(v2["sent_bytes"].as_u64().unwrap() <= 2 << 20, "{b2}");
    assert_eq!(v2["basis"].as_str().unwrap(), file1, "{b2}");
    let file2 = v2["file"].as_str().unwrap().to_string();
    cli.ok(&["backup", "restore", "lab-c1", "--number", "1"]);
    assert!(
        same(&data, &on_h1(&file1)),
        "lab-c1's data is backup 1's again"
    );
    cli.ok(&["host", "disable", "h3"]);
    cli.ok(&["backup", "new-vm", "lab-c1", "lab-c8", "--number", "2"]);
    cli.ok(&["host", "enable", "h3"]);
    let c8_host = vm(&cli, "lab-c8")["host"].as_str().unwrap().to_string();
    assert_ne!(c8_host, "h3");
    let disks = cli.json(&["vm", "disks", "lab-c8"]);
    let c8_data = lab
        .storage(&c8_host)
        .join(disks["disks"][1]["volume"].as_str().unwrap());
    assert!(same(&c8_data, &on_h1(&file2)), "{disks}");
    cli.ok(&["vm", "rm", "lab-c8"]);
    cli.ok(&["backup", "rm", "lab-c1", "1"]);
    cli.ok(&["backup", "rm", "lab-c1", "2"]);
    assert!(!on_h1(&file2).exists());
    cli.ok(&["image", "repository", "h1", "off"]);

    // Now no clone uses h2's copy: it may go.
    cli.ok(&["base", "rm", "lab-web", "--host", "h2"]);
    assert_eq!(
        cli.json(&["base", "ls"])["bases"][0]["hosts"],
        serde_json::json!(["h1", "h3"])
    );
    assert!(!lab.storage("h2").join(file).exists());
}

#[test]
fn volume_sync_is_sparse_resumes_after_a_crash_and_refuses_strangers() {
    if !lab_ready() {
        return;
    }
    let _turn = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::up(3).unwrap();
    let src = lab.storage("h1").join("big.raw");
    let chunks = lab::sparse_random(&src, 2 << 30, 40, 4 << 20).unwrap();
    let total = 40u64 * (4 << 20);

    // The sender is killed mid-transfer (bandwidth-limited so that it is mid-way).
    let mut send = std::process::Command::new(bin("corral"))
        .env("HOME", "/nonexistent")
        .args([
            "--ca",
            &lab.pki("ca.pem"),
            "--cert",
            &lab.pki("coordinator.pem"),
        ])
        .args([
            "--key",
            &lab.pki("coordinator.key"),
            "--agent",
            &lab.addr("h1"),
        ])
        .args([
            "agent",
            "volume",
            "send",
            "big.raw",
            "--to",
            &lab.addr("h3"),
            "--limit",
            "40M",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let partial = lab.storage("h3").join(".big.raw.corral-partial");
    let t = Instant::now();
    while !partial.exists() || lab::on_disk(&partial).unwrap() < 48 << 20 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no partial file grows on h3"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // 48 MiB at 40 MB/s take about 1.2 s: the bandwidth limit holds.
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "limit ignored: {took:?}"
    );
    lab.kill_agent("h1").unwrap();
    assert!(!send.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(500));
    let arrived = lab::on_disk(&partial).unwrap();
    assert!(arrived < total, "killed mid-way: {arrived} of {total}");
    assert!(
        !lab.storage("h3").join("big.raw").exists(),
        "no file before it is verified"
    );

    // The agent comes back; the sync resumes without resending what arrived.
    lab.restart_agents().unwrap();
    let r = agent_json(
        &lab,
        "h1",
        &["volume", "send", "big.raw", "--to", &lab.addr("h3")],
    );
    println!("resumed: {r} (arrived before the crash: {arrived} bytes)");
    let (sent, skipped) = (
        r["sent_bytes"].as_u64().unwrap(),
        r["skipped_bytes"].as_u64().unwrap(),
    );
    assert_eq!(sent + skipped, total, "{r}");
    assert!(skipped >= arrived.saturating_sub(8 << 20), "{r}");
    assert!(sent <= total - arrived + (8 << 20), "{r}");
    assert!(!partial.exists());
    let dst = lab.storage("h3").join("big.raw");
    let (a, b) = (
        agent_json(&lab, "h1", &["volume", "checksum", "big.raw"]),
        agent_json(&lab, "h3", &["volume", "checksum", "big.raw"]),
    );
    assert_eq!(a["checksum"], b["checksum"]);
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), 2 << 30);
    assert!(
        lab::on_disk(&dst).unwrap() <= lab::on_disk(&src).unwrap() + (1 << 20),
        "holes stay holes"
    );
    assert!(
        r["wire_bytes"].as_u64().unwrap() <= sent + sent / 50 + (1 << 20),
        "only data on the wire: {r}"
    );

    // The same content again: nothing to send.
    let again = agent_json(
        &lab,
        "h1",
        &["volume", "send", "big.raw", "--to", &lab.addr("h3")],
    );
    assert_eq!(again["sent_bytes"], 0, "{again}");
    // Delta: ten changed blocks send ten blocks.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
        for off in chunks.iter().take(10) {
            f.write_all_at(b"changed!", off + 4096).unwrap();
        }
    }
    let out = lab.agent_cli(
        "h1",
        &["volume", "send", "big.raw", "--to", &lab.addr("h3")],
    );
    assert!(
        !out.status.success(),
        "a different copy is not replaced unless asked"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("replace"));
    let r = agent_json(
        &lab,
        "h1",
        &[
            "volume",
            "send",
            "big.raw",
            "--to",
            &lab.addr("h3"),
            "--replace",
        ],
    );
    assert_eq!(r["sent_bytes"], 10 * 65536, "{r}");
    assert_eq!(
        agent_json(&lab, "h3", &["volume", "checksum", "big.raw"])["checksum"],
        agent_json(&lab, "h1", &["volume", "checksum", "big.raw"])["checksum"]
    );

    // Bad input: a path outside the storage root, a volume that does not exist, a peer that
    // is not an agent, a peer certificate from another CA.
    for (args, want) in [
        (
            vec![
                "volume",
                "send",
                "../../etc/passwd",
                "--to",
                &lab.addr("h3"),
            ],
            "invalid",
        ),
        (
            vec!["volume", "send", "nope.raw", "--to", &lab.addr("h3")],
            "not found",
        ),
        (
            vec!["volume", "send", "big.raw", "--to", "10.213.0.99:7700"],
            "unavailable",
        ),
    ] {
        let out = lab.agent_cli("h1", &args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    corral_pki(&["init", "--dir", &d("pki")]).unwrap();
    corral_pki(&["issue", "--dir", &d("pki"), "stranger"]).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let before: Vec<_> = std::fs::read_dir(lab.storage("h3"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    rt.block_on(async {
        use corral_client::proto as pb;
        let upload = |name: &str| {
            tokio_stream::iter(vec![pb::SyncUpload {
                msg: Some(pb::sync_upload::Msg::Header(pb::SyncHeader {
                    volume: name.into(),
                    size: 1 << 20,
                    block_size: 65536,
                    mode: 0o644,
                    replace: false,
                    ..Default::default()
                })),
            }])
        };
        // A certificate from another CA: the TLS handshake fails.
        let foreign = corral_client::TlsFiles {
            ca: lab.pki("ca.pem").into(),
            cert: d("pki/stranger.pem").into(),
            key: d("pki/stranger.key").into(),
        };
        let r = async {
            let ch = corral_client::channel_with(&lab.addr("h3"), Some(&foreign)).await?;
            let mut c = pb::peer_transfer_service_client::PeerTransferServiceClient::new(ch);
            let mut s = c.receive_volume(upload("stranger.raw")).await?.into_inner();
            s.message().await?;
            Ok::<_, anyhow::Error>(())
        };
        // With TLS 1.3 the refusal comes after the handshake, and the client does not
        // always see it: no answer within the limit is a refusal too (never a service).
        match tokio::time::timeout(Duration::from_secs(20), r).await {
            Ok(r) => {
                assert!(r.is_err(), "a stranger's certificate is refused");
                println!("stranger: {}", r.unwrap_err());
            }
            Err(_) => {
                println!("stranger: no answer (the connection was refused after the handshake)")
            }
        }
        // The lab's own certificate, with a name outside the storage root.
        let own = corral_client::TlsFiles {
            ca: lab.pki("ca.pem").into(),
            cert: lab.pki("h1.pem").into(),
            key: lab.pki("h1.key").into(),
        };
        let ch = corral_client::channel_with(&lab.addr("h3"), Some(&own))
            .await
            .unwrap();
        let mut c = pb::peer_transfer_service_client::PeerTransferServiceClient::new(ch);
        let r = async {
            c.receive_volume(upload("../escape.raw"))
                .await?
                .into_inner()
                .message()
                .await
        };
        let e = tokio::time::timeout(Duration::from_secs(20), r)
            .await
            .expect("the agent answers a bad header at once")
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    });
    let after: Vec<_> = std::fs::read_dir(lab.storage("h3"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "nothing written");
    assert!(!lab.storage("h3").join("../escape.raw").exists());

    // Down leaves nothing behind: no namespaces, links, daemons or files of the lab.
    drop(lab);
    if std::env::var_os("CORRAL_LAB_KEEP").is_some() {
        return;
    }
    let agents = std::process::Command::new("pgrep")
        .args(["-f", lab::LAB_DIR])
        .output()
        .unwrap();
    assert!(
        agents.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&agents.stdout)
    );
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&netns.stdout).contains("crl-h"));
    let links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains("crl-br0") && !links.contains("crl-h"),
        "{links}"
    );
    assert!(!Path::new(lab::LAB_DIR).exists());
}

/// Issue 8, item 10, for live moves: cancelling the move aborts libvirt's migration job on
/// the source (the guest keeps running there) and removes what the target prepared.
#[test]
fn a_cancelled_live_move_leaves_the_guest_running_where_it_was() {
    if !lab_ready() {
        return;
    }
    let _turn = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::up(2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let coord = lab::coordinator(&lab, dir.path(), &["h1", "h2"]).unwrap();
    let cli = Cli {
        addr: &coord.addr,
        token: &coord.admin_token,
        ca: None,
    };
    lab::tiny_base(&cli, "labx-web", "h1");
    cli.ok(&["base", "sync", "labx-web", "--host", "h2"]);
    let op = cli.json(&["vm", "clone", "labx-web", "labx-c1", "--start"]);
    assert_eq!(op["state"], 3, "{op}");
    let from = vm(&cli, "labx-c1")["host"].as_str().unwrap().to_string();
    let to = if from == "h1" { "h2" } else { "h1" };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = coord.client(&coord.admin_token).await.unwrap();
        // 1 MiB/s: the guest's memory alone takes minutes; cancel once libvirt is at it.
        let op = c
            .vms
            .move_vm(corral_client::proto::MoveVmRequest {
                name: "labx-c1".into(),
                host: to.into(),
                live: true,
                bandwidth_limit: 1 << 20,
            })
            .await
            .unwrap()
            .into_inner();
        let mut events = c
            .ops
            .watch_operation(corral_client::proto::OperationRef { id: op.id.clone() })
            .await
            .unwrap()
            .into_inner();
        while let Some(e) = events.message().await.unwrap() {
            if e.phase == "migrating" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.ops
            .cancel_operation(corral_client::proto::OperationRef { id: op.id.clone() })
            .await
            .unwrap();
        let ended = finish(&mut c, op).await.unwrap();
        assert_eq!(ended.state, 5, "{ended:?}");
    });
    // The guest runs on its host still, libvirt's job gone; the target holds none of it.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let on_from = lab.exec(
            &from,
            &["virsh", "-c", "qemu:///system", "domstate", "labx-c1"],
        );
        let on_to = lab.exec(
            to,
            &["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
        );
        let files: Vec<String> = std::fs::read_dir(lab.storage(to))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("labx-c1"))
            .collect();
        let running = on_from.as_deref().is_ok_and(|s| s.trim() == "running");
        let gone = on_to.as_ref().is_ok_and(|l| !l.contains("labx-c1")) && files.is_empty();
        if running && gone {
            break;
        }
        assert!(
            Instant::now() < end,
            "source: {on_from:?}; target: {on_to:?} with files {files:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let v = vm(&cli, "labx-c1");
    assert_eq!(v["host"], from.as_str(), "{v}");
    // A later move still works: nothing is left busy on either side.
    let op = cli.json(&["vm", "move", "labx-c1", "--host", to, "--live"]);
    assert_eq!(op["state"], 3, "{op}");
}
