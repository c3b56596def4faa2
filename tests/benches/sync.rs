//! Volume sync between two lab hosts (`deploy/lab`): Corral (agent to agent, gRPC over
//! mutual TLS) against `rsync --sparse` to an rsync daemon (plain TCP) and over ssh
//! (encrypted, as Corral is), between the same two hosts, on the same files, in one run.
//!
//! The file: 4 GiB virtual with 500 MiB of random data, as a qcow2 base (what Corral bases
//! are: the file is as big as its data) and as a sparse raw file (4 GiB long, 500 MiB
//! allocated). First a full sync to a host without the file, then 1% of the file's 64 KiB
//! blocks changed (4 KiB written in each) and synced again (Corral with `--replace`, rsync
//! with its delta transfer against the old copy). Wire bytes are the receiving host's
//! interface counters (TLS, HTTP/2 and TCP included). The order of the tools rotates from
//! run to run. Targets: time ratio <= 1.0 (against each rsync), wire <= 1.05 x allocated,
//! delta bytes <= 3% of allocated.
//! `cargo build --release --bins` first; `CORRAL_BENCH_RUNS` (default 3),
//! `CORRAL_BENCH_FORMATS` (default `qcow2,raw`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use corral_tests::lab::{self, on_disk, Lab, LAB_DIR};
use corral_tests::*;

const SIZE: u64 = 4 << 30;
const CHUNKS: u64 = 125;
const CHUNK: usize = 4 << 20;

/// Bytes through the receiving host's interface, both ways.
fn wire(lab: &Lab) -> Result<u64> {
    let mut total = 0;
    for d in ["rx", "tx"] {
        let v = lab.exec(
            "h2",
            &["cat", &format!("/sys/class/net/eth0/statistics/{d}_bytes")],
        )?;
        total += v.trim().parse::<u64>()?;
    }
    Ok(total)
}

#[derive(Default)]
struct Runs {
    times: Vec<Duration>,
    wire: Vec<u64>,
}

impl Runs {
    fn measure(&mut self, lab: &Lab, f: impl FnOnce() -> Result<()>) -> Result<()> {
        let w = wire(lab)?;
        let t = Instant::now();
        f()?;
        self.times.push(t.elapsed());
        self.wire.push(wire(lab)? - w);
        Ok(())
    }

    fn samples(&self) -> String {
        self.times
            .iter()
            .map(|t| format!("{}", t.as_millis()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn median(&self) -> (Duration, u64) {
        let mut t = self.times.clone();
        let mut w = self.wire.clone();
        w.sort_unstable();
        (median(&mut t), w[w.len() / 2])
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1 << 20)
}

/// One way to sync the file from h1 to h2, and where its copy lands.
struct Tool<'a> {
    name: &'static str,
    dest: std::path::PathBuf,
    run: Box<dyn Fn(bool) -> Result<()> + 'a>,
    full: Runs,
    delta: Runs,
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
    let (h1, h2) = (lab.storage("h1"), lab.storage("h2"));
    let lab_dir = Path::new(LAB_DIR);
    let (rdir, sdir) = (lab_dir.join("h2/rsync"), lab_dir.join("h2/rsync-ssh"));
    std::fs::create_dir_all(&rdir)?;
    std::fs::create_dir_all(&sdir)?;
    // An rsync daemon on h2.
    let conf = lab_dir.join("h2/rsyncd.conf");
    std::fs::write(
        &conf,
        format!(
            "pid file = {LAB_DIR}/h2/run/rsyncd.pid\nuse chroot = no\n[corral]\npath = {}\nread only = false\nuid = root\ngid = root\n",
            rdir.display()
        ),
    )?;
    lab.exec(
        "h2",
        &[
            "rsync",
            "--daemon",
            &format!("--config={}", conf.display()),
            &format!("--address={}", lab.ip("h2")),
        ],
    )?;
    // An sshd on h2 with a key made for this run.
    let ssh = lab_dir.join("ssh");
    std::fs::create_dir_all(&ssh)?;
    for key in ["host", "client"] {
        let path = ssh.join(key).display().to_string();
        run(
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-f", &path],
        )?;
    }
    std::fs::copy(ssh.join("client.pub"), ssh.join("authorized_keys"))?;
    let sshd_conf = ssh.join("sshd_config");
    std::fs::write(
        &sshd_conf,
        format!(
            "ListenAddress {}\nHostKey {d}/host\nAuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile {d}/sshd.pid\n",
            lab.ip("h2"),
            d = ssh.display()
        ),
    )?;
    lab.exec("h2", &["mkdir", "-p", "/run/sshd"])?;
    lab.exec(
        "h2",
        &["/usr/sbin/sshd", "-f", &sshd_conf.display().to_string()],
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let ssh_cmd = format!(
        "ssh -F none -i {}/client -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
        ssh.display()
    );
    println!("volume sync h1 -> h2, {reps} runs each, the tools' order rotating (median)");
    let mut fails = Vec::new();
    let formats = std::env::var("CORRAL_BENCH_FORMATS").unwrap_or_else(|_| "qcow2,raw".into());
    for format in formats.split(',') {
        let name = format!("bench-base.{format}");
        let src = h1.join(&name);
        let raw = h1.join("bench-src.raw");
        let offsets = lab::sparse_random(&raw, SIZE, CHUNKS, CHUNK)?;
        if format == "qcow2" {
            run(
                "qemu-img",
                &[
                    "convert",
                    "-O",
                    "qcow2",
                    &raw.display().to_string(),
                    &src.display().to_string(),
                ],
            )?;
            std::fs::remove_file(&raw)?;
        } else {
            std::fs::rename(&raw, &src)?;
        }
        let src_s = src.display().to_string();
        let allocated = on_disk(&src)?;
        println!(
            "\n{format}: {} GiB virtual, {:.1} MiB allocated, file length {:.1} MiB",
            SIZE >> 30,
            mib(allocated),
            mib(std::fs::metadata(&src)?.len())
        );
        let url = format!("rsync://{}/corral/{name}", lab.ip("h2"));
        let ssh_dest = format!("root@{}:{}", lab.ip("h2"), sdir.join(&name).display());
        let peer = lab.addr("h2");
        let mut tools = vec![
            Tool {
                name: "corral",
                dest: h2.join(&name),
                run: Box::new(|replace: bool| {
                    let mut args = vec!["volume", "send", name.as_str(), "--to", peer.as_str()];
                    if replace {
                        args.push("--replace");
                    }
                    let out = lab.agent_cli("h1", &args);
                    if !out.status.success() {
                        bail!("corral: {}", String::from_utf8_lossy(&out.stderr));
                    }
                    Ok(())
                }),
                full: Runs::default(),
                delta: Runs::default(),
            },
            Tool {
                name: "rsync daemon",
                dest: rdir.join(&name),
                run: Box::new(|_| {
                    lab.exec("h1", &["rsync", "--sparse", &src_s, &url])
                        .map(|_| ())
                }),
                full: Runs::default(),
                delta: Runs::default(),
            },
            Tool {
                name: "rsync ssh",
                dest: sdir.join(&name),
                run: Box::new(|_| {
                    lab.exec(
                        "h1",
                        &["rsync", "--sparse", "-e", &ssh_cmd, &src_s, &ssh_dest],
                    )
                    .map(|_| ())
                }),
                full: Runs::default(),
                delta: Runs::default(),
            },
        ];
        let n = tools.len();
        for i in 0..reps {
            for k in 0..n {
                let t = &mut tools[(i + k) % n];
                let _ = std::fs::remove_file(&t.dest);
                let run = &t.run;
                t.full.measure(&lab, || run(false))?;
            }
        }
        report(&tools, "full sync  ", allocated, false);
        let (ct, cw) = tools[0].full.median();
        for t in &tools[1..] {
            let ratio = ct.as_secs_f64() / t.full.median().0.as_secs_f64();
            if ratio > 1.0 {
                fails.push(format!(
                    "{format} full sync time ratio against {} {ratio:.2} > 1.0",
                    t.name
                ));
            }
        }
        if cw as f64 > 1.05 * allocated as f64 {
            fails.push(format!("{format} full sync wire {cw} > 1.05 x {allocated}"));
        }
        for t in &tools {
            println!(
                "      on disk on h2, {:<13} {:.1} MiB",
                t.name,
                mib(on_disk(&t.dest)?)
            );
        }

        // 1% of the blocks change: 4 KiB written in each, spread over the data.
        let blocks = allocated / 65536;
        let changes = (blocks / 100).max(1);
        let mut places = Vec::new();
        for k in 0..changes {
            let chunk = offsets[(k as usize * offsets.len()) / changes as usize];
            let within = (k * 7919 % (CHUNK as u64 / 65536)) * 65536 + 8192;
            places.push(chunk + within);
        }
        if format == "qcow2" {
            let mut args = vec!["-f".to_string(), "qcow2".to_string()];
            for p in &places {
                args.push("-c".into());
                args.push(format!("write -P 0x5a {p} 4k"));
            }
            args.push(src_s.clone());
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            run("qemu-io", &a)?;
        } else {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&src)?;
            for p in &places {
                f.write_all_at(&[0x5a; 4096], *p)?;
            }
            f.sync_all()?;
        }
        let old = |p: &Path| format!("{}.v1", p.display());
        for t in &tools {
            run(
                "cp",
                &[
                    "--sparse=always",
                    &t.dest.display().to_string(),
                    &old(&t.dest),
                ],
            )?;
        }
        for i in 0..reps {
            for k in 0..n {
                let t = &mut tools[(i + k) % n];
                run(
                    "cp",
                    &[
                        "--sparse=always",
                        &old(&t.dest),
                        &t.dest.display().to_string(),
                    ],
                )?;
                let run = &t.run;
                t.delta.measure(&lab, || run(true))?;
            }
        }
        println!("  {changes} blocks changed (1%):");
        report(&tools, "delta sync ", allocated, true);
        let cw = tools[0].delta.median().1;
        if cw as f64 > 0.03 * allocated as f64 {
            fails.push(format!("{format} delta wire {cw} > 3% of {allocated}"));
        }
        let _ = std::fs::remove_file(&src);
        for t in &tools {
            let _ = std::fs::remove_file(&t.dest);
            let _ = std::fs::remove_file(old(&t.dest));
        }
    }
    if fails.is_empty() {
        println!("\nall targets met");
    } else {
        println!("\ntargets missed: {}", fails.join("; "));
    }
    Ok(())
}

/// One line per tool: median time and wire bytes, Corral's time ratio against it, the runs.
fn report(tools: &[Tool], what: &str, allocated: u64, delta: bool) {
    let runs = |t: &Tool| -> Runs {
        let r = if delta { &t.delta } else { &t.full };
        Runs {
            times: r.times.clone(),
            wire: r.wire.clone(),
        }
    };
    let corral = runs(&tools[0]).median().0.as_secs_f64();
    for t in tools {
        let r = runs(t);
        let (time, wire) = r.median();
        println!(
            "  {what} {:<13} {:>7.0} ms  {:>8.2} MiB on the wire ({:>6.3} x allocated)  corral/this {:.2}  runs (ms): {}",
            t.name,
            time.as_secs_f64() * 1000.0,
            mib(wire),
            wire as f64 / allocated as f64,
            corral / time.as_secs_f64(),
            r.samples()
        );
    }
}
