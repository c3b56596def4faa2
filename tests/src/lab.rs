//! The multi-host lab (`deploy/lab`) from tests: hosts in network namespaces, each with its
//! own libvirtd, iptables and agent (mutual TLS with the lab's CA).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::{bin, wait_up, Cli, CoordProc, GUEST_DIR};

pub const LAB_DIR: &str = "/var/lib/corral-lab";

pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join("lab")
}

fn lab(args: &[&str]) -> Result<String> {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .env("CORRAL_LAB_DIR", LAB_DIR)
        .env("CORRAL_AGENT_BIN", bin("corral-agent"))
        .env("CORRAL_BIN", bin("corral"))
        .output()?;
    if !out.status.success() {
        bail!(
            "lab {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A lab of `n` hosts, torn down on drop.
#[derive(Debug)]
pub struct Lab {
    pub n: usize,
}

impl Lab {
    /// Tears down whatever a previous run left, then brings up `n` hosts.
    pub fn up(n: usize) -> Result<Self> {
        lab(&["down"])?;
        lab(&["up", &n.to_string()])?;
        Ok(Self { n })
    }

    /// Starts the agents again (those that were killed).
    pub fn restart_agents(&self) -> Result<()> {
        lab(&["up", &self.n.to_string()]).map(|_| ())
    }

    pub fn addr(&self, host: &str) -> String {
        let i: u32 = host.trim_start_matches('h').parse().unwrap_or(0);
        format!("10.213.0.{}:7700", 10 + i)
    }

    pub fn ip(&self, host: &str) -> String {
        self.addr(host).trim_end_matches(":7700").to_string()
    }

    pub fn storage(&self, host: &str) -> PathBuf {
        PathBuf::from(LAB_DIR).join(host).join("storage")
    }

    pub fn pki(&self, file: &str) -> String {
        format!("{LAB_DIR}/pki/{file}")
    }

    pub fn agent_pid(&self, host: &str) -> Result<i32> {
        let p = std::fs::read_to_string(PathBuf::from(LAB_DIR).join(host).join("run/agent.pid"))?;
        Ok(p.trim().parse()?)
    }

    /// Kills a host's agent at once (SIGKILL), as a crash would.
    pub fn kill_agent(&self, host: &str) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.agent_pid(host)?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while nix::sys::signal::kill(pid, None).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Cuts or restores a host's link to the lab's bridge.
    pub fn link(&self, host: &str, up: bool) -> Result<()> {
        lab(&["link", host, if up { "up" } else { "down" }]).map(|_| ())
    }

    /// Runs a command inside a host.
    pub fn exec(&self, host: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["exec", host];
        all.extend_from_slice(args);
        lab(&all)
    }

    /// `corral agent ...` against a host's agent with the coordinator's certificate.
    pub fn agent_cli(&self, host: &str, args: &[&str]) -> std::process::Output {
        Command::new(bin("corral"))
            .env("HOME", "/nonexistent")
            .args(["--ca", &self.pki("ca.pem")])
            .args(["--cert", &self.pki("coordinator.pem")])
            .args(["--key", &self.pki("coordinator.key")])
            .args(["--agent", &self.addr(host), "-o", "json", "agent"])
            .args(args)
            .output()
            .expect("corral runs")
    }

    /// The coordinator's environment for mutual TLS to the lab's agents.
    pub fn coordinator_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CORRAL_COORD_AGENT_CA", self.pki("ca.pem")),
            ("CORRAL_COORD_CLIENT_CERT", self.pki("coordinator.pem")),
            ("CORRAL_COORD_CLIENT_KEY", self.pki("coordinator.key")),
        ]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::env::var_os("CORRAL_LAB_KEEP").is_none() {
            let _ = lab(&["down"]);
        }
    }
}

/// A coordinator for the lab's agents with `hosts` added and up.
pub fn coordinator(lab: &Lab, dir: &Path, hosts: &[&str]) -> Result<CoordProc> {
    let env = lab.coordinator_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let coord = CoordProc::start_with(&dir.join("coord"), 300, 3000, &env)?;
    let cli = Cli {
        addr: &coord.addr,
        token: &coord.admin_token,
        ca: None,
    };
    for h in hosts {
        cli.ok(&["host", "add", h, &lab.addr(h)]);
    }
    wait_up(&cli, hosts.len());
    Ok(coord)
}

/// A base `name` of the tiny guest on `host`.
pub fn tiny_base(cli: &Cli, name: &str, host: &str) {
    let g = Path::new(GUEST_DIR);
    let (kernel, initrd) = (
        g.join("vmlinux").display().to_string(),
        g.join("initrd.gz").display().to_string(),
    );
    let (disk, cmdline) = (
        format!("{name}-vda.qcow2:64M:system"),
        format!("console=ttyS0 quiet corral.hostname={name}"),
    );
    cli.ok(&[
        "base",
        "create",
        name,
        "--host",
        host,
        "--memory",
        "128M",
        "--vcpus",
        "1",
        "--disk",
        &disk,
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--cmdline",
        &cmdline,
    ]);
    cli.ok(&["base", "publish", name]);
}

/// A sparse file of `size` bytes with `chunks` random runs of `len` bytes at block-aligned
/// offsets, which it returns.
pub fn sparse_random(path: &Path, size: u64, chunks: u64, len: usize) -> Result<Vec<u64>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path)?;
    f.set_len(size)?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; len];
    let mut offsets = Vec::new();
    for i in 0..chunks {
        for b in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            for (j, v) in b.iter_mut().enumerate() {
                *v = (x >> (j * 8)) as u8;
            }
        }
        let off = (size / chunks) * i / 65536 * 65536;
        f.write_all_at(&buf, off)?;
        offsets.push(off);
    }
    f.sync_all()?;
    Ok(offsets)
}

/// Bytes a file takes on disk (its allocated blocks).
pub fn on_disk(p: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(p)?.blocks() * 512)
}
