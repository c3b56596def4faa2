//! Helpers shared by the end-to-end tests and benchmarks: real processes (the agent binary),
//! the real libvirtd (`qemu:///system`), the tiny guest, and a client network namespace that
//! reaches exposed ports from another address.

// The end-to-end tests drive real processes (agents, virsh, iptables, the CLI).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use corral_client::proto as pb;

pub mod adversarial;
pub mod agent_cases;
pub mod coord_cases;
pub mod lab;
pub mod ldap;
pub mod postgres;
pub mod sim;

/// Where `deploy/build-guest-image.sh` puts the tiny guest.
pub const GUEST_DIR: &str = "/var/lib/corral/guest";
/// The client namespace and its link to the host; these addresses exist only on this machine.
pub const CLIENT_NS: &str = "corral-e2e";
pub const HOST_SIDE_IP: &str = "172.31.254.1";
pub const CLIENT_IP: &str = "172.31.254.2";

/// The build's binary directory (`target/debug` or `target/release`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// Runs a program with its arguments one by one; its stdout, or an error with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn virsh(args: &[&str]) -> Result<String> {
    let mut a = vec!["-c", "qemu:///system"];
    a.extend_from_slice(args);
    run("virsh", &a)
}

/// True when this machine can run the real-host tests; with `CORRAL_E2E_REQUIRED=1`
/// (as CI sets) a missing piece is a failure instead of a skip.
pub fn real_host_ready() -> bool {
    let missing = if !nix::unistd::Uid::effective().is_root() {
        Some("not root".to_string())
    } else if !Path::new(GUEST_DIR).join("vmlinux").is_file() {
        Some(format!(
            "no tiny guest in {GUEST_DIR} (run deploy/build-guest-image.sh)"
        ))
    } else if virsh(&["version"]).is_err() {
        Some("libvirtd is not answering on qemu:///system (run deploy/setup-host.sh)".into())
    } else if !bin("corral-agent").is_file() {
        Some(format!("{} is not built", bin("corral-agent").display()))
    } else {
        None
    };
    match missing {
        None => true,
        Some(why) if std::env::var("CORRAL_E2E_REQUIRED").as_deref() == Ok("1") => {
            panic!("real-host test cannot run: {why}")
        }
        Some(why) => {
            eprintln!("skipping real-host test: {why}");
            false
        }
    }
}

/// Removes every domain whose name starts with `prefix` (left by an earlier failed run).
pub fn cleanup_domains(prefix: &str) {
    let Ok(list) = virsh(&["list", "--all", "--name"]) else {
        return;
    };
    for name in list
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with(prefix))
    {
        let _ = virsh(&["destroy", name]);
        let _ = virsh(&["undefine", name, "--snapshots-metadata", "--managed-save"]);
    }
}

/// Starts `cmd` and reads its first line, "<program> listening on ADDR"; returns the address.
/// The environment variable of a test's process (not read by Corral): its stderr goes to this
/// file instead of the test's.
pub const STDERR_TO: &str = "CORRAL_TEST_STDERR";

fn spawn_listening(mut cmd: Command, program: &str) -> Result<(Child, String)> {
    let to = cmd
        .get_envs()
        .find(|(k, _)| *k == STDERR_TO)
        .and_then(|(_, v)| v.map(PathBuf::from));
    let stderr = match to {
        Some(path) => Stdio::from(
            std::fs::File::create(&path).with_context(|| format!("{}", path.display()))?,
        ),
        None => Stdio::inherit(),
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix(&format!("{program} listening on "))
        .with_context(|| format!("{program} did not start: {line:?}"))?
        .to_string();
    Ok((child, addr))
}

/// Environment of an agent on libvirt's test driver.
pub const TEST_DRIVER: &[(&str, &str)] = &[
    ("CORRAL_AGENT_LIBVIRT_URI", "test:///default"),
    ("CORRAL_AGENT_DOMAIN_TYPE", "test"),
    ("CORRAL_AGENT_FIREWALL", "none"),
];

/// A running `corral-agent` process.
pub struct AgentProc {
    child: Child,
    pub addr: String,
    pub root: PathBuf,
}

/// CPU time (user + system) a process has used so far, from /proc.
pub fn cpu_time(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name, which may contain spaces: utime is the 12th, stime the 13th.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return Duration::ZERO;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Duration::from_micros((ticks(11) + ticks(12)) * 1_000_000 / hz.max(1))
}

impl AgentProc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts the agent on `qemu:///system` with its storage and state under `root`.
    /// Its display and ports listen on the host side of the client namespace's link, which
    /// is made first when this process has not made it yet.
    pub fn start(root: &Path) -> Result<Self> {
        static NS: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
        {
            let mut made = NS.lock().unwrap_or_else(|p| p.into_inner());
            if !*made {
                client_ns()?;
                *made = true;
            }
        }
        Self::start_with(
            root,
            &[
                ("CORRAL_AGENT_LIBVIRT_URI", "qemu:///system"),
                ("CORRAL_AGENT_DOMAIN_TYPE", "qemu"),
            ],
        )
    }

    /// An agent on libvirt's test driver: its own private state, no firewall, no guests.
    pub fn start_test_driver(root: &Path) -> Result<Self> {
        Self::start_with(root, TEST_DRIVER)
    }

    pub fn start_with(root: &Path, env: &[(&str, &str)]) -> Result<Self> {
        let mut cmd = Command::new(bin("corral-agent"));
        cmd.env("CORRAL_AGENT_STORAGE_ROOT", root.join("storage"))
            .env("CORRAL_AGENT_STATE_DIR", root.join("state"))
            .env("CORRAL_AGENT_LISTEN", "127.0.0.1:0")
            .env("CORRAL_AGENT_HOST_ADDRESS", HOST_SIDE_IP)
            // Agent logs go to the test's stderr; CORRAL_TEST_AGENT_LOG=info shows more.
            .env(
                "RUST_LOG",
                std::env::var("CORRAL_TEST_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
            )
            // The caller's own environment wins.
            .envs(env.iter().copied());
        let (child, addr) = spawn_listening(cmd, "corral-agent")?;
        Ok(Self {
            child,
            addr,
            root: root.to_path_buf(),
        })
    }

    pub async fn client(&self) -> Result<corral_client::AgentClient> {
        Ok(corral_client::AgentClient::connect(&self.addr).await?)
    }

    pub fn storage(&self) -> PathBuf {
        self.root.join("storage")
    }

    /// SIGTERM, then wait for the process to end.
    pub fn stop(&mut self) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.child.wait()?;
        Ok(())
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGSTOP / SIGCONT: the agent goes silent without closing its connections.
    pub fn pause(&self, paused: bool) -> Result<()> {
        pause(&self.child, paused)
    }
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) -> Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    nix::sys::signal::kill(pid, sig)?;
    Ok(())
}

/// SIGSTOP (`paused`) or SIGCONT.
fn pause(child: &Child, paused: bool) -> Result<()> {
    use nix::sys::signal::Signal;
    signal(
        child,
        if paused {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        },
    )
}

/// Whether the end-to-end tests can run: these binaries built and `more` true. Otherwise
/// they skip, unless `CORRAL_E2E_REQUIRED=1`, when it is a failure (`why` says what to do).
pub fn e2e_ready(binaries: &[&str], more: bool, why: &str) -> bool {
    let ok = binaries.iter().all(|b| bin(b).is_file()) && more;
    if !ok {
        assert!(
            std::env::var("CORRAL_E2E_REQUIRED").as_deref() != Ok("1"),
            "{why}"
        );
        eprintln!("skipping: {why}");
    }
    ok
}

/// A running `corral-coordinator` process with its database under `root`.
pub struct CoordProc {
    child: Child,
    pub addr: String,
    pub admin_token: String,
}

impl CoordProc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start(root: &Path, heartbeat_ms: u64, down_after_ms: u64) -> Result<Self> {
        Self::start_with(root, heartbeat_ms, down_after_ms, &[])
    }

    pub fn start_with(
        root: &Path,
        heartbeat_ms: u64,
        down_after_ms: u64,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let mut cmd = Command::new(bin("corral-coordinator"));
        cmd.env("CORRAL_COORD_LISTEN", "127.0.0.1:0")
            .env("CORRAL_COORD_DATABASE", root.join("corral.db"))
            .env(
                "CORRAL_COORD_BOOTSTRAP_TOKEN_FILE",
                root.join("admin.token"),
            )
            .env("CORRAL_COORD_HEARTBEAT_MS", heartbeat_ms.to_string())
            .env("CORRAL_COORD_DOWN_AFTER_MS", down_after_ms.to_string())
            // libvirt's test driver promises its built-in domain more memory than its fake
            // node has; overcommit lets placement use such hosts.
            .env(
                "CORRAL_COORD_MEMORY_OVERCOMMIT",
                std::env::var("CORRAL_TEST_MEMORY_OVERCOMMIT").unwrap_or_else(|_| "64".into()),
            )
            .env(
                "RUST_LOG",
                std::env::var("CORRAL_TEST_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
            )
            // The caller's settings go over these defaults.
            .envs(env.iter().copied());
        let (child, addr) = spawn_listening(cmd, "corral-coordinator")?;
        let admin_token = std::fs::read_to_string(root.join("admin.token"))?
            .trim()
            .to_string();
        Ok(Self {
            child,
            addr,
            admin_token,
        })
    }

    pub async fn client(&self, token: &str) -> Result<corral_client::CoordinatorClient> {
        Ok(corral_client::CoordinatorClient::connect(&self.addr, token).await?)
    }

    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGSTOP / SIGCONT: the coordinator goes silent without closing its connections.
    pub fn pause(&self, paused: bool) -> Result<()> {
        pause(&self.child, paused)
    }

    /// Its exit status, once it has ended.
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }
}

impl Drop for CoordProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same ordered list of `corral` CLI arguments, run as a process.
pub fn corral_cli(coordinator: &str, token: &str, args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(bin("corral"))
        .env("CORRAL_COORDINATOR", coordinator)
        .env("CORRAL_TOKEN", token)
        .env("HOME", "/nonexistent")
        .args(args)
        .output()?)
}

/// `corral pki ARGS...`, which must succeed.
pub fn corral_pki(args: &[&str]) -> Result<()> {
    let out = Command::new(bin("corral")).arg("pki").args(args).output()?;
    if !out.status.success() {
        bail!(
            "corral pki {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A small spec for libvirt's test driver (no kernel, one system disk).
pub fn test_spec(name: &str) -> pb::DomainSpec {
    pb::DomainSpec {
        name: name.into(),
        vcpus: 1,
        memory_mib: 256,
        disks: vec![pb::DiskSpec {
            volume: format!("{name}-vda.qcow2"),
            role: pb::VolumeRole::System as i32,
            create_size_bytes: 16 << 20,
            readonly: false,
        }],
        nics: vec![pb::NicSpec::default()],
        ..Default::default()
    }
}

/// Follows an operation to its end and returns it.
/// A new user (role `user`) and a token for them, made by an admin.
pub async fn user_token(c: &mut corral_client::CoordinatorClient, name: &str) -> Result<String> {
    let user = pb::CreateUserRequest {
        name: name.into(),
        role: "user".into(),
        attributes: Default::default(),
    };
    c.users.create_user(user).await?;
    let req = pb::CreateTokenRequest {
        user: name.into(),
        expires_in_seconds: 0,
    };
    Ok(c.users.create_token(req).await?.into_inner().token)
}

/// Adds an agent to the coordinator as host `name`.
pub async fn add_host(
    c: &mut corral_client::CoordinatorClient,
    name: &str,
    addr: &str,
) -> Result<()> {
    let req = pb::AddHostRequest {
        name: name.into(),
        address: addr.into(),
    };
    c.hosts.add_host(req).await?;
    Ok(())
}

/// A base of [`test_spec`] made on `host` (the operation must succeed), not yet published.
pub async fn test_base(
    c: &mut corral_client::CoordinatorClient,
    name: &str,
    host: &str,
) -> Result<()> {
    let req = pb::CreateBaseRequest {
        spec: Some(test_spec(name)),
        host: host.into(),
        idempotency_key: String::new(),
    };
    let op = c.vms.create_base(req).await?.into_inner();
    let done = finish(c, op).await?;
    if done.state != pb::OperationState::Succeeded as i32 {
        anyhow::bail!("base {name} not made: {done:?}");
    }
    Ok(())
}

/// Opens a base to users (bases start private; admins publish them).
pub async fn publish(c: &mut corral_client::CoordinatorClient, base: &str) -> Result<()> {
    let req = pb::SetBasePublicRequest {
        base: base.into(),
        public: true,
    };
    c.vms.set_base_public(req).await?;
    Ok(())
}

pub async fn finish(
    c: &mut corral_client::CoordinatorClient,
    op: pb::Operation,
) -> Result<pb::Operation> {
    Ok(c.wait(&op.id, |_| {}).await?)
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates (idempotently) the client namespace with a veth link to the host.
pub fn client_ns() -> Result<()> {
    let have = run("ip", &["netns", "list"])?;
    if !have
        .lines()
        .any(|l| l.split_whitespace().next() == Some(CLIENT_NS))
    {
        run("ip", &["netns", "add", CLIENT_NS])?;
    }
    if run("ip", &["link", "show", "crl-e2e-h"]).is_err() {
        run(
            "ip",
            &[
                "link",
                "add",
                "crl-e2e-h",
                "type",
                "veth",
                "peer",
                "name",
                "crl-e2e-n",
            ],
        )?;
        run("ip", &["link", "set", "crl-e2e-n", "netns", CLIENT_NS])?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{HOST_SIDE_IP}/30"),
                "dev",
                "crl-e2e-h",
            ],
        )?;
        run("ip", &["link", "set", "crl-e2e-h", "up"])?;
        let ns = |args: &[&str]| {
            let mut a = vec!["netns", "exec", CLIENT_NS, "ip"];
            a.extend_from_slice(args);
            run("ip", &a)
        };
        ns(&[
            "addr",
            "add",
            &format!("{CLIENT_IP}/30"),
            "dev",
            "crl-e2e-n",
        ])?;
        ns(&["link", "set", "crl-e2e-n", "up"])?;
        ns(&["link", "set", "lo", "up"])?;
    }
    Ok(())
}

/// GET from inside the client namespace (another address than the host's).
pub fn fetch_from_client(url: &str) -> Result<String> {
    run(
        "ip",
        &[
            "netns",
            "exec",
            CLIENT_NS,
            "curl",
            "-s",
            "--fail",
            "--max-time",
            "3",
            url,
        ],
    )
}

/// Retries a GET from the client namespace until the body contains `want`.
pub fn wait_for_body(url: &str, want: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match fetch_from_client(url) {
            Ok(body) if body.contains(want) => return Ok(body),
            Ok(body) => last = body,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("{url} did not answer with {want:?} within {timeout:?}; last: {last}")
}

/// Lines of Corral's iptables chains that carry `corral:<domain>`.
pub fn rules_of(domain: &str) -> Vec<String> {
    let tag = format!("\"corral:{domain}\"");
    let mut out = Vec::new();
    for (table, chain) in [
        ("nat", "CORRAL-DNAT"),
        ("filter", "CORRAL-FORWARD"),
        ("filter", "CORRAL-INPUT"),
    ] {
        if let Ok(s) = run("iptables", &["-w", "-t", table, "-S", chain]) {
            out.extend(s.lines().filter(|l| l.contains(&tag)).map(String::from));
        }
    }
    out
}

/// The tiny guest: vda (system) and optionally vdb (data), direct kernel boot.
pub fn tiny_spec(name: &str, data: bool) -> pb::DomainSpec {
    let mut disks = vec![pb::DiskSpec {
        volume: format!("{name}-vda.qcow2"),
        role: pb::VolumeRole::System as i32,
        create_size_bytes: 64 << 20,
        readonly: false,
    }];
    if data {
        disks.push(pb::DiskSpec {
            volume: format!("{name}-vdb.qcow2"),
            role: pb::VolumeRole::Data as i32,
            create_size_bytes: 16 << 20,
            readonly: false,
        });
    }
    pb::DomainSpec {
        name: name.into(),
        vcpus: 1,
        memory_mib: 128,
        disks,
        nics: vec![pb::NicSpec::default()],
        display: Some(pb::DisplaySpec {
            r#type: pb::DisplayType::Vnc as i32,
            listen: String::new(),
        }),
        video_model: "vga".into(),
        kernel_boot: Some(pb::KernelBoot {
            kernel: format!("{GUEST_DIR}/vmlinux"),
            initrd: format!("{GUEST_DIR}/initrd.gz"),
            cmdline: format!("console=ttyS0 quiet corral.hostname={name}"),
        }),
        labels: Default::default(),
        owner: String::new(),
    }
}

/// A prepared base made of the tiny guest.
pub async fn prepared_base(
    c: &mut corral_client::AgentClient,
    name: &str,
    data: bool,
) -> Result<pb::Base> {
    c.domains
        .define_domain(pb::DefineDomainRequest {
            spec: Some(tiny_spec(name, data)),
        })
        .await?;
    Ok(c.bases
        .prepare_base(pb::DomainRef { name: name.into() })
        .await?
        .into_inner())
}

pub fn clone_req(base: &str, name: &str, start: bool) -> pb::CloneBaseRequest {
    pb::CloneBaseRequest {
        base: base.into(),
        name: name.into(),
        start,
        ..Default::default()
    }
}

/// The median of some durations (sorts them).
pub fn median(v: &mut [std::time::Duration]) -> std::time::Duration {
    v.sort();
    v[v.len() / 2]
}

/// The `corral` CLI against a coordinator, as a process.
#[derive(Debug, Clone, Copy)]
pub struct Cli<'a> {
    pub addr: &'a str,
    pub token: &'a str,
    pub ca: Option<&'a str>,
}

impl Cli<'_> {
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = std::process::Command::new(bin("corral"));
        cmd.env("CORRAL_COORDINATOR", self.addr)
            .env("CORRAL_TOKEN", self.token)
            .env("HOME", "/nonexistent")
            .env_remove("CORRAL_CA");
        if let Some(ca) = self.ca {
            cmd.args(["--ca", ca]);
        }
        cmd.args(args).output().expect("corral runs")
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "corral {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).expect("JSON output")
    }
}

/// Waits until `n` hosts are up.
pub fn wait_up(cli: &Cli, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let hosts = cli.json(&["host", "ls"]);
        let up = hosts["hosts"]
            .as_array()
            .map(|h| h.iter().filter(|h| h["state"] == 1).count())
            .unwrap_or(0);
        if up == n {
            return;
        }
        assert!(Instant::now() < deadline, "hosts not up: {hosts}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A VM's readiness as `vm show --output json` gives it (OFF, BOOTING, READY...).
pub fn readiness(v: &serde_json::Value) -> String {
    pb::Readiness::try_from(v["readiness"].as_i64().unwrap_or(0) as i32)
        .map(|r| r.as_str_name().trim_start_matches("READINESS_").to_string())
        .unwrap_or_default()
}

/// Waits (90 s at most) until `vm show` says `want`; returns every readiness seen on the way and the time.
pub fn wait_readiness(cli: &Cli, vm: &str, want: &str) -> (Vec<String>, Duration) {
    let started = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    loop {
        let v = cli.json(&["vm", "show", vm]);
        let r = readiness(&v);
        if seen.last() != Some(&r) {
            seen.push(r.clone());
        }
        if r == want {
            return (seen, started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{vm} never {want}: {seen:?} {}",
            v["readiness_detail"]
        );
        std::thread::sleep(Duration::from_millis(150));
    }
}

/// A published base of the tiny guest on `host` (with its guest agent unless `noagent`).
pub async fn tiny_base(
    admin: &mut corral_client::CoordinatorClient,
    name: &str,
    host: &str,
    noagent: bool,
) -> Result<()> {
    let mut spec = tiny_spec(name, false);
    if noagent {
        if let Some(k) = spec.kernel_boot.as_mut() {
            k.cmdline.push_str(" corral.noagent");
        }
    }
    let op = admin
        .vms
        .create_base(pb::CreateBaseRequest {
            spec: Some(spec),
            host: host.into(),
            idempotency_key: String::new(),
        })
        .await?
        .into_inner();
    let done = finish(admin, op).await?;
    if done.state != pb::OperationState::Succeeded as i32 {
        bail!("base {name} not made: {done:?}");
    }
    publish(admin, name).await
}
