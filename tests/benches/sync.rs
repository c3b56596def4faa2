//! Volume sync between two lab hosts (`deploy/lab`): Corral (agent to agent, gRPC over
//! mutual TLS) against `rsync --sparse` to an rsync daemon, between the same two hosts, on
//! the same files, in one run.
//!
//! The file: 4 GiB virtual with 500 MiB of random data, as a qcow2 base (what Corral bases
//! are: the file is as big as its data) and as a sparse raw file (4 GiB long, 500 MiB
//! allocated). First a full sync to a host without the file, then 1% of the file's 64 KiB
//! blocks changed (4 KiB written in each) and synced again (Corral with `--replace`, rsync
//! with its delta transfer against the old copy). Wire bytes are the receiving host's
//! interface counters (TLS, HTTP/2 and TCP included). Runs alternate between the tools.
//! Targets: time ratio <= 1.0, wire <= 1.05 x allocated, delta bytes <= 3% of allocated.
//! `cargo build --release --bins` first; `CORRAL_BENCH_RUNS` (default 3).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use corral_tests::lab::{self, Lab, LAB_DIR};
use corral_tests::*;

const SIZE: u64 = 4 << 30;
const CHUNKS: u64 = 125;
const CHUNK: usize = 4 << 20;

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| program.to_string())?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

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

fn on_disk(p: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(p)?.blocks() * 512)
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
    let rdir = Path::new(LAB_DIR).join("h2/rsync");
    std::fs::create_dir_all(&rdir)?;
    let conf = Path::new(LAB_DIR).join("h2/rsyncd.conf");
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
    std::thread::sleep(Duration::from_millis(300));
    let corral = |args: &[&str]| -> Result<()> {
        let out = lab.agent_cli("h1", args);
        if !out.status.success() {
            bail!("corral: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    println!("volume sync h1 -> h2, {reps} runs each, alternating (median)");
    let mut fails = Vec::new();
    for format in ["qcow2", "raw"] {
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
        let rsync = |lab: &Lab| -> Result<()> {
            lab.exec("h1", &["rsync", "--sparse", &src_s, &url])
                .map(|_| ())
        };
        let send = ["volume", "send", name.as_str(), "--to", &lab.addr("h2")];
        let (mut c_full, mut r_full) = (Runs::default(), Runs::default());
        for i in 0..reps {
            let _ = std::fs::remove_file(h2.join(&name));
            let _ = std::fs::remove_file(rdir.join(&name));
            if i % 2 == 0 {
                c_full.measure(&lab, || corral(&send))?;
                r_full.measure(&lab, || rsync(&lab))?;
            } else {
                r_full.measure(&lab, || rsync(&lab))?;
                c_full.measure(&lab, || corral(&send))?;
            }
        }
        let (ct, cw) = c_full.median();
        let (rt, rw) = r_full.median();
        let ratio = ct.as_secs_f64() / rt.as_secs_f64();
        println!(
            "  full sync   corral {:>7.0} ms, {:>7.1} MiB on the wire ({:.3} x allocated); rsync {:>7.0} ms, {:>7.1} MiB; time ratio {ratio:.2}",
            ct.as_secs_f64() * 1000.0,
            mib(cw),
            cw as f64 / allocated as f64,
            rt.as_secs_f64() * 1000.0,
            mib(rw)
        );
        println!(
            "              on disk on h2: corral {:.1} MiB, rsync {:.1} MiB",
            mib(on_disk(&h2.join(&name))?),
            mib(on_disk(&rdir.join(&name))?)
        );
        if ratio > 1.0 {
            fails.push(format!("{format} full sync time ratio {ratio:.2} > 1.0"));
        }
        if cw as f64 > 1.05 * allocated as f64 {
            fails.push(format!("{format} full sync wire {cw} > 1.05 x {allocated}"));
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
        let keep = |p: &Path| -> Result<()> {
            run(
                "cp",
                &[
                    "--sparse=always",
                    &p.display().to_string(),
                    &format!("{}.v1", p.display()),
                ],
            )
            .map(|_| ())
        };
        let restore = |p: &Path| -> Result<()> {
            run(
                "cp",
                &[
                    "--sparse=always",
                    &format!("{}.v1", p.display()),
                    &p.display().to_string(),
                ],
            )
            .map(|_| ())
        };
        keep(&h2.join(&name))?;
        keep(&rdir.join(&name))?;
        let replace = [
            "volume",
            "send",
            name.as_str(),
            "--to",
            &lab.addr("h2"),
            "--replace",
        ];
        let (mut c_delta, mut r_delta) = (Runs::default(), Runs::default());
        for i in 0..reps {
            restore(&h2.join(&name))?;
            restore(&rdir.join(&name))?;
            if i % 2 == 0 {
                c_delta.measure(&lab, || corral(&replace))?;
                r_delta.measure(&lab, || rsync(&lab))?;
            } else {
                r_delta.measure(&lab, || rsync(&lab))?;
                c_delta.measure(&lab, || corral(&replace))?;
            }
        }
        let (ct, cw) = c_delta.median();
        let (rt, rw) = r_delta.median();
        let ratio = ct.as_secs_f64() / rt.as_secs_f64();
        println!(
            "  1% changed  ({changes} blocks) corral {:>7.0} ms, {:>6.2} MiB on the wire ({:.2}% of allocated); rsync {:>7.0} ms, {:>6.2} MiB ({:.2}%); time ratio {ratio:.2}",
            ct.as_secs_f64() * 1000.0,
            mib(cw),
            cw as f64 / allocated as f64 * 100.0,
            rt.as_secs_f64() * 1000.0,
            mib(rw),
            rw as f64 / allocated as f64 * 100.0
        );
        if cw as f64 > 0.03 * allocated as f64 {
            fails.push(format!("{format} delta wire {cw} > 3% of {allocated}"));
        }
        for p in [src.clone(), h2.join(&name), rdir.join(&name)] {
            let _ = std::fs::remove_file(&p);
            let _ = std::fs::remove_file(format!("{}.v1", p.display()));
        }
    }
    if fails.is_empty() {
        println!("\nall targets met");
    } else {
        println!("\ntargets missed: {}", fails.join("; "));
    }
    Ok(())
}
