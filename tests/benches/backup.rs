//! Backups between two lab hosts (`deploy/lab`), through the coordinator and the CLI: a VM on
//! h2 with a 1 GiB data volume full of random data, backed up to the repository on h1.
//!
//! Full backups (each after the previous one is removed, so nothing is reused) against
//! `rsync --sparse` of the same file to an rsync daemon on h1 (plain TCP: the fastest rsync),
//! and against `rsync --sparse --fsync` (a backup is on disk before it is recorded; plain
//! rsync ends with the file still in the page cache), in the same run, the order rotating. Then incremental backups, each after 1% of the
//! volume's 64 KiB blocks changed (4 KiB written in each): the data bytes the backup sent
//! and the bytes through h1's interface. Targets: full backup time / rsync time <= 1.0;
//! incremental backup sends <= 3% of the volume.
//! `cargo build --release --bins` first (or the debug binaries are used); `CORRAL_BENCH_RUNS`
//! (default 3).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use corral_tests::lab::{self, on_disk, Lab, LAB_DIR};
use corral_tests::*;

const SIZE: u64 = 1 << 30;
const CHUNK: usize = 4 << 20;

/// Bytes through h1's interface, both ways.
fn wire(lab: &Lab) -> Result<u64> {
    let mut total = 0;
    for d in ["rx", "tx"] {
        let v = lab.exec(
            "h1",
            &["cat", &format!("/sys/class/net/eth0/statistics/{d}_bytes")],
        )?;
        total += v.trim().parse::<u64>()?;
    }
    Ok(total)
}

fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1 << 20)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> Result<()> {
    if !real_host_ready() {
        return Ok(());
    }
    let reps: usize = std::env::var("CORRAL_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let lab = Lab::up(2)?;
    let dir = tempfile::tempdir()?;
    let coord = lab::coordinator(&lab, dir.path(), &["h1", "h2"])?;
    let cli = Cli {
        addr: &coord.addr,
        token: &coord.admin_token,
        ca: None,
    };
    lab::tiny_base(&cli, "bk-base", "h2");
    cli.ok(&["image", "repository", "h1", "on"]);
    cli.ok(&["host", "disable", "h1"]);
    cli.ok(&["vm", "clone", "bk-base", "bk-vm"]);
    cli.ok(&["host", "enable", "h1"]);
    cli.ok(&["vm", "disk-add", "bk-vm", "--size", "1G"]);
    let data = lab.storage("h2").join("bk-vm-vdb.qcow2");
    let raw = lab.storage("h2").join("bk-random.raw");
    let offsets = lab::sparse_random(&raw, SIZE, SIZE / CHUNK as u64, CHUNK)?;
    run(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "qcow2",
            &raw.display().to_string(),
            &data.display().to_string(),
        ],
    )?;
    std::fs::remove_file(&raw)?;
    let allocated = on_disk(&data)?;
    println!(
        "backup of a 1 GiB data volume (qcow2, {:.1} MiB allocated) from h2 to h1, {reps} runs (median)",
        mib(allocated)
    );

    // An rsync daemon on h1.
    let lab_dir = Path::new(LAB_DIR);
    let rdir = lab_dir.join("h1/rsync-backup");
    std::fs::create_dir_all(&rdir)?;
    let conf = lab_dir.join("h1/rsyncd-backup.conf");
    std::fs::write(
        &conf,
        format!(
            "pid file = {LAB_DIR}/h1/run/rsyncd-backup.pid\nuse chroot = no\n[backup]\npath = {}\nread only = false\nuid = root\ngid = root\n",
            rdir.display()
        ),
    )?;
    lab.exec(
        "h1",
        &[
            "rsync",
            "--daemon",
            &format!("--config={}", conf.display()),
            &format!("--address={}", lab.ip("h1")),
        ],
    )?;
    let url = format!("rsync://{}/backup/bk-vm-vdb.qcow2", lab.ip("h1"));
    let data_s = data.display().to_string();

    // Three ways, the order rotating: Corral's backup, rsync --sparse as asked, and rsync
    // --sparse --fsync (as durable as a backup: Corral syncs the file before it records it).
    let names = ["corral backup", "rsync --sparse", "rsync --sparse --fsync"];
    let mut times: Vec<Vec<Duration>> = vec![vec![]; 3];
    let mut wires: Vec<Vec<u64>> = vec![vec![]; 3];
    for i in 0..reps {
        for k in 0..3 {
            let tool = (i + k) % 3;
            if tool == 0 {
                // The previous full backup goes first: nothing to reuse.
                let out = cli.run(&["-o", "json", "backup", "show", "bk-vm"]);
                if out.status.success() {
                    let b: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                    cli.ok(&["backup", "rm", "bk-vm", &b["number"].to_string()]);
                }
            } else {
                let _ = std::fs::remove_file(rdir.join("bk-vm-vdb.qcow2"));
            }
            // Every run starts with the same clean page cache of the receiver.
            lab.exec("h1", &["sync"])?;
            let w = wire(&lab)?;
            let t = Instant::now();
            match tool {
                0 => {
                    cli.ok(&["backup", "create", "bk-vm"]);
                }
                1 => {
                    lab.exec("h2", &["rsync", "--sparse", &data_s, &url])?;
                }
                _ => {
                    lab.exec("h2", &["rsync", "--sparse", "--fsync", &data_s, &url])?;
                }
            }
            times[tool].push(t.elapsed());
            wires[tool].push(wire(&lab)? - w);
        }
    }
    let b = cli.json(&["backup", "show", "bk-vm"]);
    let corral = median(&mut times[0].clone());
    let mut ratios = Vec::new();
    for t in 0..3 {
        let mut w = wires[t].clone();
        w.sort_unstable();
        let m = median(&mut times[t].clone());
        let ratio = corral.as_secs_f64() / m.as_secs_f64();
        ratios.push(ratio);
        println!(
            "  full {:<24} {:>7.0} ms  {:>8.1} MiB on the wire  corral/this {ratio:.2}  runs (ms): {:?}",
            names[t],
            ms(m),
            mib(w[w.len() / 2]),
            times[t].iter().map(|d| ms(*d) as u64).collect::<Vec<_>>()
        );
    }
    println!(
        "    (the last backup's own operation: {} ms, from its record)",
        b["elapsed_ms"]
    );
    let ratio = ratios[1];
    // Incremental: 1% of the 64 KiB blocks changed before each backup.
    let blocks = SIZE / 65536;
    let changes = blocks / 100;
    let (mut sent, mut wires, mut times) = (vec![], vec![], vec![]);
    for r in 0..reps as u64 {
        let mut args = vec!["-f".to_string(), "qcow2".to_string()];
        for k in 0..changes {
            let chunk = offsets[(k as usize * offsets.len()) / changes as usize];
            let within = ((k * 7919 + r * 104_729) % (CHUNK as u64 / 65536)) * 65536 + 8192;
            args.push("-c".into());
            args.push(format!("write -P 0x{:02x} {} 4k", 0x40 + r, chunk + within));
        }
        args.push(data_s.clone());
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run("qemu-io", &a)?;
        let w = wire(&lab)?;
        let t = Instant::now();
        cli.ok(&["backup", "create", "bk-vm"]);
        times.push(t.elapsed());
        wires.push(wire(&lab)? - w);
        let b = cli.json(&["backup", "show", "bk-vm"]);
        sent.push(b["sent_bytes"].as_u64().unwrap_or(u64::MAX));
    }
    sent.sort_unstable();
    wires.sort_unstable();
    let (s, w) = (sent[sent.len() / 2], wires[wires.len() / 2]);
    let share = s as f64 / SIZE as f64;
    println!(
        "  incremental   {changes} of {blocks} blocks changed (1%): sent {:.2} MiB = {:.2}% of the volume ({:.2} MiB on the wire) in {:.0} ms",
        mib(s),
        share * 100.0,
        mib(w),
        ms(median(&mut times))
    );
    let mut fails = Vec::new();
    if ratio > 1.0 {
        fails.push(format!(
            "full backup time / rsync --sparse {ratio:.2} > 1.0 (against rsync --sparse --fsync: {:.2})",
            ratios[2]
        ));
    }
    if share > 0.03 {
        fails.push(format!(
            "incremental backup sent {:.2}% > 3%",
            share * 100.0
        ));
    }
    if fails.is_empty() {
        println!("\nall targets met (full ratio <= 1.0, incremental <= 3%)");
    } else {
        println!("\ntargets missed: {}", fails.join("; "));
    }
    let _ = std::fs::remove_dir_all(&rdir);
    Ok(())
}
