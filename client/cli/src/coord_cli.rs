//! `corral` commands that go through the coordinator: hosts, bases, VMs, operations, users.

use std::path::PathBuf;

use clap::Subcommand;
use corral_proto::v1 as pb;
use serde::Deserialize;

use crate::cli::{
    invalid, labels, lines, snapshot_line, snapshot_text, spec, Command, DefineArgs, Out, Output,
    SnapshotCall, SnapshotCmd,
};
use corral_client::{enum_name, state_name, ClientError, CoordinatorClient};

#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// Add an agent: NAME and its gRPC address host:port.
    Add { name: String, address: String },
    /// Remove a host (refused while it has VMs).
    Rm { name: String },
    /// Back in service.
    Enable { name: String },
    /// Maintenance: no new VMs.
    Disable { name: String },
    /// Hosts with their state, capacity and bases.
    Ls,
}

#[derive(Subcommand, Debug)]
pub enum BaseCmd {
    /// Define a VM on a host and prepare it as a base.
    Create {
        #[command(flatten)]
        define: Box<DefineArgs>,
        #[arg(long)]
        host: String,
    },
    /// Turn a shut-off VM into a base (read-only base files, locked, clonable).
    Prepare { vm: String },
    /// Turn a base without clones back into an editable VM (its copies on other hosts and its
    /// base files go); with --host, only remove its copy there.
    Rm {
        name: String,
        #[arg(long)]
        host: Option<String>,
    },
    /// Delete the base from every host (refused while it has clones).
    Delete { name: String },
    /// Copy the base (its parents first) to a host, agent to agent.
    Sync {
        name: String,
        #[arg(long)]
        host: String,
        /// Bandwidth limit in bytes per second (suffixes K, M, G).
        #[arg(long)]
        limit: Option<String>,
    },
    /// Bases with the hosts that hold them and their clones (users: the bases they may clone).
    Ls,
    /// Open the base to users (as its access rules decide).
    Publish { name: String },
    /// Close the base to users (admins still clone it).
    Unpublish { name: String },
    /// Who may clone the base: public or not, its rules, and the decision for a user.
    Access {
        name: String,
        /// Explain the decision for this user (admins); yourself by default.
        #[arg(long)]
        user: Option<String>,
    },
    /// Access rules, read in order: users whose attribute has the value are allowed or denied.
    #[command(subcommand)]
    Rule(RuleCmd),
    /// Keep CLONES clones of the base made, START of them running, handed out to users'
    /// clone requests at once (admin); --clones 0 empties the pool.
    Pool {
        name: String,
        #[arg(long)]
        clones: u32,
        #[arg(long, default_value_t = 0)]
        start: u32,
    },
    /// A base's pool and timeouts (admin): its sizes, its clones made, running and being made.
    Show { name: String },
    /// Reclaim the base's running clones (admin): shut down after --run, shut down (or with
    /// --hibernate hibernated) after --idle without a display client. Durations as 90s, 10m,
    /// 2h; `off` turns one off; what is not given stays. Without options: show them.
    Timeouts {
        name: String,
        #[arg(long)]
        run: Option<String>,
        #[arg(long)]
        idle: Option<String>,
        /// Idle clones are hibernated (`on`) or shut down (`off`).
        #[arg(long, value_parser = ["on", "off"])]
        hibernate: Option<String>,
    },
    /// Whether asking for a clone's display file restricts its display to the asker's
    /// address (admin). Without an option: show it.
    Display {
        name: String,
        #[arg(long, value_parser = ["on", "off"])]
        restrict_to_client: Option<String>,
    },
    /// Commands run in every clone's guest after it boots, before it counts as READY
    /// (admin): `corral base post-load web -- touch /run/ready`. Without a command: show them.
    PostLoad(crate::guest::PostLoadArgs),
}

#[derive(Subcommand, Debug)]
pub enum RuleCmd {
    /// Insert a rule (last unless --at): ATTRIBUTE VALUE, VALUE '*' for every user.
    Add {
        base: String,
        attribute: String,
        value: String,
        /// Deny instead of allow.
        #[arg(long)]
        deny: bool,
        /// Stop reading the rules when this one matches.
        #[arg(long)]
        last: bool,
        /// Its place, 1 for the first.
        #[arg(long)]
        at: Option<u32>,
    },
    /// Remove the rule at a place (1 for the first).
    Rm { base: String, position: u32 },
}

fn limit_of(l: Option<String>) -> Result<u64, ClientError> {
    l.map(|l| corral_client::parse_size(&l).map_err(ClientError::Config))
        .transpose()
        .map(Option::unwrap_or_default)
}

/// A clone's options (`vm clone`, `vm ensure`).
#[derive(clap::Args, Debug)]
pub struct CloneOpts {
    #[arg(long)]
    start: bool,
    /// Beside your other VMs.
    #[arg(long)]
    keep_together: bool,
    #[arg(long = "label")]
    labels: Vec<String>,
    /// For another user (admin).
    #[arg(long)]
    owner: Option<String>,
    /// Retrying with the same key returns the same operation.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Volatile: started now, removed with its volumes when it shuts down.
    #[arg(long)]
    volatile: bool,
    /// A volatile clone's lifetime (seconds, or with m, h or d): removed when it ends.
    #[arg(long, requires = "volatile")]
    lifetime: Option<String>,
    /// Memory in MiB instead of the base's (such a clone is made, not taken from a pool).
    #[arg(long)]
    memory: Option<u64>,
    /// vCPUs instead of the base's.
    #[arg(long)]
    vcpus: Option<u32>,
    /// Copy the base's data disks instead of making them empty.
    #[arg(long)]
    copy_data: bool,
    /// A plan's memory and vCPUs (`corral plan ls`), not with --memory/--vcpus.
    #[arg(long)]
    plan: Option<String>,
}

fn clone_request(
    base: String,
    name: String,
    o: CloneOpts,
) -> Result<pb::CloneVmRequest, ClientError> {
    Ok(pb::CloneVmRequest {
        base,
        name,
        start: o.start,
        labels: labels(&o.labels)?,
        keep_together: o.keep_together,
        idempotency_key: o.idempotency_key.unwrap_or_default(),
        owner: o.owner.unwrap_or_default(),
        volatile: o.volatile,
        lifetime_seconds: o
            .lifetime
            .as_deref()
            .map(lifetime)
            .transpose()?
            .unwrap_or(0),
        memory_mib: o.memory.unwrap_or(0),
        vcpus: o.vcpus.unwrap_or(0),
        data_volumes: if o.copy_data {
            pb::DataVolumeMode::Copy as i32
        } else {
            0
        },
        plan: o.plan.unwrap_or_default(),
    })
}

#[derive(Subcommand, Debug)]
pub enum VmCmd {
    /// Define a VM from a spec (admin), placed unless --host is given. Customise it, shut it
    /// down, then `corral base prepare` it.
    Create {
        #[command(flatten)]
        define: Box<DefineArgs>,
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        start: bool,
        /// A plan's memory, vCPUs and system disk size, over --memory/--vcpus and the
        /// system disk's SIZE.
        #[arg(long)]
        plan: Option<String>,
    },
    /// A clone of a base, placed by the scheduler.
    Clone {
        base: String,
        name: String,
        #[command(flatten)]
        opts: Box<CloneOpts>,
    },
    /// Your VM NAME if it exists (from --base), else a clone of --base made now: one call
    /// that is safe to repeat (EC2 staging's get_server). Takes the clone's options.
    Ensure {
        name: String,
        #[arg(long)]
        base: String,
        #[command(flatten)]
        opts: Box<CloneOpts>,
    },
    /// Where a clone of BASE would go and why not elsewhere.
    Explain {
        base: String,
        #[arg(long)]
        keep_together: bool,
    },
    /// Start a VM (a hibernated one resumes where it was).
    Start { name: String },
    /// Ask the guest to shut down (ACPI); powered off after the grace time (60 s by default).
    Shutdown { name: String },
    /// Stop a VM at once, like pulling the plug.
    Poweroff { name: String },
    /// Save the VM's memory to disk and stop it; `start` resumes it.
    Hibernate { name: String },
    /// Put a clone's system, tmp and swap disks back to its base's (data disks are kept).
    Restore { name: String },
    /// Pause a running VM in memory.
    Suspend { name: String },
    /// Resume a paused VM.
    Resume { name: String },
    /// Hard-reset a running VM (no clean shutdown).
    Reset { name: String },
    /// Ask the guest to reboot (ACPI).
    Reboot { name: String },
    /// Move a shut-off clone onto another base with the same disk layout (its system disk is
    /// made again from BASE; data disks are kept).
    Rebase { name: String, base: String },
    /// Add a new empty data (or --swap) disk; hot-plugged into a running VM.
    DiskAdd {
        name: String,
        /// Size, e.g. 512M or 2G.
        #[arg(long)]
        size: String,
        #[arg(long)]
        swap: bool,
        /// The file's format.
        #[arg(long, value_parser = ["qcow2", "raw"], default_value = "qcow2")]
        format: String,
    },
    /// Grow a data or swap disk (live while the VM runs; disks never shrink).
    DiskResize {
        name: String,
        volume: String,
        /// The new size, e.g. 2G.
        size: String,
    },
    /// The VM's disks with their formats and sizes.
    Disks { name: String },
    /// Snapshot a data or swap disk of a shut-off VM (qcow2), or --revert to / --delete one.
    DiskSnapshot {
        name: String,
        volume: String,
        snapshot: String,
        #[arg(long, conflicts_with = "delete")]
        revert: bool,
        #[arg(long)]
        delete: bool,
    },
    /// Copy a data or swap disk of a shut-off VM to another of your VMs (any host), attached
    /// there as a data disk.
    DiskCopy {
        name: String,
        volume: String,
        to: String,
    },
    /// Remove a data or swap disk of a shut-off VM (its volume, as `vm show` lists it).
    DiskRm { name: String, volume: String },
    /// Detach a swap or data disk (hot in a running VM); it stays yours, listed as detached.
    DiskDetach { name: String, volume: String },
    /// Attach a detached disk again (hot in a running VM).
    DiskAttach { name: String, volume: String },
    /// Start the VM with its host (`on`), or not (`off`).
    Autostart {
        name: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// New memory (MiB) and vCPUs: applied at once where libvirt can, else at the next boot
    /// (`vm show` says needs_restart meanwhile).
    Resize {
        name: String,
        #[arg(long)]
        memory: Option<u64>,
        #[arg(long)]
        vcpus: Option<u32>,
    },
    /// The VM's own run timeout (admin): shut down after running this long (90s, 10m, 2h);
    /// `off` goes back to its base's.
    Timeout { name: String, run: String },
    /// Make a shut-off clone independent of its base (copies what it reads from the base).
    Spinoff { name: String },
    /// Remove a VM and its volumes.
    Rm { name: String },
    /// Move a VM to another host (admin): its base first, then its volumes, verified.
    Move {
        name: String,
        #[arg(long)]
        host: String,
        /// While it runs, through libvirt (memory and the disks' top layer); else shut off.
        #[arg(long)]
        live: bool,
        /// Bandwidth limit, e.g. 50M (bytes per second).
        #[arg(long)]
        limit: Option<String>,
    },
    /// Everything the coordinator knows of a VM: owner, base, host, states, lock.
    Show { name: String },
    /// Your VMs (every VM for an admin).
    Ls,
    /// Display connection: a remote-viewer file (`remote-viewer FILE`).
    Display {
        name: String,
        /// Write the remote-viewer file here instead of printing it.
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
    },
    /// A PNG of the VM's screen.
    Screenshot {
        name: String,
        #[arg(long, short = 'f', default_value = "screenshot.png")]
        file: PathBuf,
    },
    /// Run a program in the VM's guest (its guest agent): `corral vm exec web-1 -- ls -l /`.
    /// Output streams back; the program's exit code becomes this command's (124: time limit).
    Exec(crate::guest::ExecArgs),
    /// Copy a file into or out of the VM's guest: `cp notes.txt web-1:/root/notes.txt`.
    Cp { src: String, dst: String },
    /// Whether the VM's guest agent answers, and the addresses it reports.
    Guest { name: String },
}

#[derive(Subcommand, Debug)]
pub enum OpCmd {
    /// Operations (--unfinished: those still queued or running).
    Ls {
        #[arg(long)]
        unfinished: bool,
    },
    /// One operation: kind, state, result or error.
    Show { id: String },
    /// Follow an operation (from its first event) to its end.
    Watch { id: String },
    /// Cancel an operation that has not ended.
    Cancel { id: String },
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Add a user (--role admin or user), with attributes (--attr course=net101).
    Add {
        name: String,
        #[arg(long, value_parser = ["admin", "user"], default_value = "user")]
        role: String,
        /// KEY=VALUE attributes.
        #[arg(long = "attr")]
        attributes: Vec<String>,
    },
    /// A new token for a user (shown once), for ever or for a while (--expires 30d).
    Token {
        user: String,
        /// How long it works: seconds, or with a suffix m, h or d.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Users with their roles and attributes.
    Ls,
    /// Who the token belongs to.
    Whoami,
    /// Change a user's role or attributes (--attr k=v; k= removes k); their tokens follow at once.
    Set {
        name: String,
        #[arg(long, value_parser = ["admin", "user"])]
        role: Option<String>,
        /// KEY=VALUE attributes to set (KEY= removes one).
        #[arg(long = "attr")]
        attributes: Vec<String>,
        /// Replace every attribute with the given ones.
        #[arg(long)]
        replace_attrs: bool,
    },
    /// Remove a user and their tokens; refused while they own VMs, unless --remove-vms.
    Rm {
        name: String,
        /// Remove the user's VMs too.
        #[arg(long)]
        remove_vms: bool,
    },
    /// A user's tokens: id, created, expires (never the secret).
    Tokens { user: String },
    /// Revoke a token by the id `user tokens` shows.
    Revoke { id: String },
}

/// A lifetime: seconds, or a number with s, m, h or d.
fn lifetime(s: &str) -> Result<u64, ClientError> {
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => 0,
    };
    match n.parse::<u64>() {
        Ok(v) if v > 0 && mult > 0 => v
            .checked_mul(mult)
            .ok_or_else(|| ClientError::Config(format!("lifetime {s:?} is too long"))),
        _ => Err(ClientError::Config(format!(
            "invalid lifetime {s:?}: a positive number with s, m, h or d (30d)"
        ))),
    }
}

fn when(ms: i64) -> String {
    if ms == 0 {
        return "never".into();
    }
    let secs = ms / 1000;
    format!("{secs} (unix seconds)")
}

/// `~/.config/corral/config.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub endpoint: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) of the coordinator's TLS certificate.
    pub ca: Option<PathBuf>,
}

/// Where and who: flags, then environment (both through clap), then the config file.
#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoint: String,
    pub token: String,
    /// The CA of the coordinator's certificate: TLS when set.
    pub ca: Option<PathBuf>,
}

impl Settings {
    /// Flags and environment first, then `~/.config/corral/config.toml`.
    pub fn resolve(
        endpoint: Option<String>,
        token: Option<String>,
        ca: Option<PathBuf>,
    ) -> Result<Self, ClientError> {
        let path =
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/corral/config.toml"));
        let file = match path.as_ref().filter(|p| p.is_file()) {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ClientError::Config(format!("{}: {e}", p.display())))?;
                toml::from_str::<ConfigFile>(&text)
                    .map_err(|e| ClientError::Config(format!("{}: {e}", p.display())))?
            }
            None => ConfigFile::default(),
        };
        let token = match token.or(file.token) {
            Some(t) => t,
            None => match file.token_file {
                Some(f) => std::fs::read_to_string(&f)
                    .map_err(|e| ClientError::Config(format!("token file {}: {e}", f.display())))?
                    .trim()
                    .to_string(),
                None => return Err(ClientError::Config(
                    "no token: use --token, CORRAL_TOKEN or token in ~/.config/corral/config.toml"
                        .into(),
                )),
            },
        };
        Ok(Self {
            endpoint: endpoint
                .or(file.endpoint)
                .unwrap_or_else(|| "127.0.0.1:7800".into()),
            token,
            ca: ca.or(file.ca),
        })
    }
}

fn op_state_name(v: i32) -> String {
    pb::OperationState::try_from(v)
        .map(|s| enum_name(s.as_str_name(), "OPERATION_STATE_"))
        .unwrap_or_default()
}

fn op_line(o: &pb::Operation) -> String {
    format!(
        "{}  {:<10} {:<12} {:<20} {}{}",
        o.id,
        op_state_name(o.state),
        o.kind,
        o.vm,
        o.host,
        unless_empty("  error: ", &o.error)
    )
}

/// `label` and `value`, or nothing when `value` is empty.
fn unless_empty(label: &str, value: &str) -> String {
    if value.is_empty() {
        String::new()
    } else {
        format!("{label}{value}")
    }
}

fn vm_line(v: &pb::Vm) -> String {
    let host_state = pb::HostState::try_from(v.host_state)
        .map(|s| enum_name(s.as_str_name(), "HOST_STATE_"))
        .unwrap_or_default();
    let observed = if v.observed_state == 0 {
        "unknown".to_string()
    } else {
        state_name(v.observed_state)
    };
    format!(
        "{:<24} {:<10} {:<9} owner={} base={} host={} ({host_state}){}",
        v.name,
        observed,
        crate::guest::readiness(v),
        v.owner,
        v.base,
        v.host,
        unless_empty(" locked by ", &v.locked_by)
    ) + if v.volatile { " volatile" } else { "" }
        + if v.pool { " pool" } else { "" }
        + &if v.domain != v.name && !v.domain.is_empty() {
            format!(" domain={}", v.domain)
        } else {
            String::new()
        }
}

fn disk_line(d: &pb::VmDisk) -> String {
    let role = pb::VolumeRole::try_from(d.role)
        .map(|r| enum_name(r.as_str_name(), "VOLUME_ROLE_"))
        .unwrap_or_default();
    format!(
        "{:<5} {:<7} {:<32} {:<6} size {} (file {}){}{}",
        d.target,
        role,
        d.volume,
        d.format,
        crate::cli::human(d.virtual_size),
        crate::cli::human(d.actual_size),
        if d.readonly {
            " read-only"
        } else if d.detached {
            " detached"
        } else {
            ""
        },
        if d.snapshots.is_empty() {
            String::new()
        } else {
            format!(" snapshots: {}", d.snapshots.join(", "))
        }
    )
}

/// What the agent knows of a VM, for `vm show`.
fn details(d: Option<&pb::Domain>) -> String {
    let Some(d) = d else {
        return "\n  (its host is down: nothing more is known now)".into();
    };
    let mut s = format!(
        "\n  vcpus={} memory={}MiB autostart={}{}",
        d.vcpus,
        d.memory_mib,
        if d.autostart { "on" } else { "off" },
        if d.needs_restart {
            " needs_restart (memory or vCPUs change at the next boot)"
        } else {
            ""
        }
    );
    if d.started_at_unix > 0 {
        s.push_str(&format!(
            "\n  started at {} (unix seconds)",
            d.started_at_unix
        ));
    }
    for disk in &d.disks {
        let role = pb::VolumeRole::try_from(disk.role)
            .map(|r| enum_name(r.as_str_name(), "VOLUME_ROLE_"))
            .unwrap_or_default();
        s.push_str(&format!(
            "\n  disk {} {role} {}{}",
            disk.target,
            disk.volume,
            if disk.readonly { " read-only" } else { "" }
        ));
    }
    for nic in &d.nics {
        s.push_str(&format!(
            "\n  nic {} {}",
            nic.mac,
            if nic.addresses.is_empty() {
                "(no address yet)".to_string()
            } else {
                nic.addresses.join(",")
            }
        ));
    }
    if let Some(disp) = &d.display {
        let kind = pb::DisplayType::try_from(disp.r#type)
            .map(|t| enum_name(t.as_str_name(), "DISPLAY_TYPE_"))
            .unwrap_or_default();
        s.push_str(&format!("\n  display {kind} {}:{}", disp.listen, disp.port));
        if !disp.restricted_to.is_empty() {
            s.push_str(&format!(" (only from {})", disp.restricted_to));
        }
        s.push_str(&format!(
            "; clients={}, last came or went: {}",
            d.display_clients,
            when(d.display_last_seen_unix_ms)
        ));
    }
    s
}

/// When a running VM is reclaimed, for `vm show`.
fn reclaim(v: &pb::Vm) -> String {
    let mut s = String::new();
    if v.run_timeout_seconds > 0 {
        let own = i64::try_from(v.run_timeout_seconds).unwrap_or(i64::MAX);
        s.push_str(&format!("\n  own run timeout {}", duration(own)));
    }
    if let Some(l) = v.run_left_seconds {
        s.push_str(&format!(
            "\n  run timeout: shut down in {}",
            duration(l.max(0))
        ));
    }
    if let Some(l) = v.idle_left_seconds {
        s.push_str(&format!(
            "\n  idle timeout: reclaimed in {}",
            duration(l.max(0))
        ));
    }
    s
}

fn host_line(h: &pb::Host) -> String {
    let state = pb::HostState::try_from(h.state)
        .map(|s| enum_name(s.as_str_name(), "HOST_STATE_"))
        .unwrap_or_default();
    let cap = h
        .info
        .as_ref()
        .map(|i| {
            format!(
                " cpus={} mem_free={}MiB running={}",
                i.cpus,
                i.memory_free_bytes >> 20,
                i.domains_running
            )
        })
        .unwrap_or_default();
    format!(
        "{:<16} {:<22} {:<8} {}{cap} vms={} bases={}",
        h.name,
        h.address,
        state,
        if h.enabled { "enabled" } else { "disabled" },
        h.vms,
        h.bases.join(",")
    )
}

/// Follows an operation with a progress bar, or returns it at once with `no_wait`.
pub(crate) async fn follow(
    c: &mut CoordinatorClient,
    out: &Out,
    no_wait: bool,
    op: pb::Operation,
) -> Result<(), ClientError> {
    // A dry run's answer: no operation exists, the result says what would run.
    if op.id.is_empty() {
        out.show(&op, |o| {
            format!(
                "dry run: would run {} {} on host {} (nothing changed): {}",
                o.kind, o.vm, o.host, o.result
            )
        });
        return Ok(());
    }
    if no_wait {
        out.show(&op, |o| o.id.clone());
        return Ok(());
    }
    // Drawn only on a terminal: a hidden bar has no ticker thread to wait for at the end.
    let draw = out.0 == Output::Text && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = if draw {
        indicatif::ProgressBar::new(100)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {pos:>3}% {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    if draw {
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
    }
    let title = format!("{} {}", op.kind, op.vm);
    let done = c
        .wait(&op.id, |e| {
            if e.percent >= 0.0 {
                bar.set_position(e.percent as u64);
            }
            let msg = if e.message.is_empty() {
                e.phase.clone()
            } else {
                format!("{}: {}", e.phase, e.message)
            };
            bar.set_message(format!("{title} — {msg}"));
        })
        .await;
    bar.finish_and_clear();
    let done = done?;
    if done.state != pb::OperationState::Succeeded as i32 {
        return Err(ClientError::Operation(
            done.id,
            op_state_name(done.state),
            done.error,
        ));
    }
    out.show(&done, |o| {
        format!("{} {} succeeded: {}", o.kind, o.vm, o.result)
    });
    Ok(())
}

pub async fn run(
    settings: Settings,
    output: Output,
    no_wait: bool,
    dry_run: bool,
    command: Command,
) -> Result<(), ClientError> {
    let mut c = CoordinatorClient::connect_with(
        &settings.endpoint,
        &settings.token,
        settings.ca.as_deref(),
    )
    .await?;
    c.set_dry_run(dry_run);
    let out = Out(output);
    match command {
        Command::Host(cmd) => host(&mut c, &out, cmd).await?,
        Command::Base(cmd) => base(&mut c, &out, no_wait, cmd).await?,
        Command::Vm(cmd) => vm(&mut c, &out, no_wait, cmd).await?,
        Command::Snapshot(cmd) => snapshot(&mut c, &out, no_wait, cmd).await?,
        Command::Port(cmd) => crate::ports::port(&mut c, &out, cmd).await?,
        Command::Op(cmd) => op(&mut c, &out, cmd).await?,
        Command::User(cmd) => user(&mut c, &out, cmd).await?,
        Command::Plan(cmd) => crate::plans::plan(&mut c, &out, cmd).await?,
        Command::Image(cmd) => crate::images::image(&mut c, &out, no_wait, cmd).await?,
        Command::Backup(cmd) => crate::backups::backup(&mut c, &out, no_wait, cmd).await?,
        Command::Events(args) => crate::events::events(&mut c, &out, args).await?,
        Command::Agent(_) | Command::Pki(_) | Command::Completions { .. } => {
            return Err(invalid("not a coordinator command".into()));
        }
    }
    Ok(())
}

/// Writes a file only its owner can read (it holds a display password).
fn write_private(path: &std::path::Path, data: &[u8]) -> Result<(), ClientError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| invalid(format!("cannot write {}: {e}", path.display())))?;
    // An existing file keeps its mode when opened: narrow it too.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| invalid(format!("cannot restrict {}: {e}", path.display())))?;
    f.write_all(data)
        .map_err(|e| invalid(format!("cannot write {}: {e}", path.display())))
}

async fn host(c: &mut CoordinatorClient, out: &Out, cmd: HostCmd) -> Result<(), ClientError> {
    match cmd {
        HostCmd::Add { name, address } => {
            let h = c
                .hosts
                .add_host(pb::AddHostRequest { name, address })
                .await?
                .into_inner();
            out.show(&h, host_line);
        }
        HostCmd::Rm { name } => {
            c.hosts
                .remove_host(pb::HostRef { name: name.clone() })
                .await?;
            out.show(&name, |n| format!("host {n} removed"));
        }
        HostCmd::Enable { name } => {
            let h = c
                .hosts
                .set_host_enabled(pb::SetHostEnabledRequest {
                    name,
                    enabled: true,
                })
                .await?
                .into_inner();
            out.show(&h, host_line);
        }
        HostCmd::Disable { name } => {
            let h = c
                .hosts
                .set_host_enabled(pb::SetHostEnabledRequest {
                    name,
                    enabled: false,
                })
                .await?
                .into_inner();
            out.show(&h, host_line);
        }
        HostCmd::Ls => {
            let l = c
                .hosts
                .list_hosts(pb::ListHostsRequest {})
                .await?
                .into_inner();
            out.show(&l, |l| lines(&l.hosts, host_line));
        }
    }
    Ok(())
}

async fn base(
    c: &mut CoordinatorClient,
    out: &Out,
    no_wait: bool,
    cmd: BaseCmd,
) -> Result<(), ClientError> {
    match cmd {
        BaseCmd::Create { define, host } => {
            let op = c
                .vms
                .create_base(pb::CreateBaseRequest {
                    spec: Some(spec(&define)?),
                    host,
                    idempotency_key: String::new(),
                })
                .await?
                .into_inner();
            follow(c, out, no_wait, op).await?;
        }
        BaseCmd::Prepare { vm } => {
            let op = c.vms.prepare_base(vref(vm)).await?.into_inner();
            follow(c, out, no_wait, op).await?;
        }
        BaseCmd::Rm { name, host: None } => {
            let op = c
                .vms
                .unprepare_base(pb::BaseRef { name })
                .await?
                .into_inner();
            follow(c, out, no_wait, op).await?;
        }
        BaseCmd::Delete { name } => {
            let op = c.vms.remove_base(pb::BaseRef { name }).await?.into_inner();
            follow(c, out, no_wait, op).await?;
        }
        BaseCmd::Rm {
            name,
            host: Some(host),
        } => {
            let op = c
                .vms
                .remove_base_from_host(pb::SyncBaseRequest {
                    base: name,
                    host,
                    bandwidth_limit: 0,
                })
                .await?
                .into_inner();
            follow(c, out, no_wait, op).await?;
        }
        BaseCmd::Sync { name, host, limit } => {
            let op = c
                .vms
                .sync_base(pb::SyncBaseRequest {
                    base: name,
                    host,
                    bandwidth_limit: limit_of(limit)?,
                })
                .await?
                .into_inner();
            follow(c, out, no_wait, op).await?;
        }
        BaseCmd::Ls => {
            let l = c
                .vms
                .list_bases(pb::ListBaseSummariesRequest {})
                .await?
                .into_inner();
            out.show(&l, |l| {
                lines(&l.bases, |b| {
                    let public = if b.public { "public" } else { "private" };
                    let hosts = b.hosts.join(",");
                    format!(
                        "{:<24} {public:<8} clones={} hosts={hosts}",
                        b.name, b.clones
                    )
                })
            });
        }
        BaseCmd::Pool {
            name,
            clones,
            start,
        } => {
            let req = pb::SetBasePoolRequest {
                base: name,
                clones,
                start,
            };
            let p = c.vms.set_base_pool(req).await?.into_inner();
            out.show(&p, pool_line);
        }
        BaseCmd::Show { name } => {
            let pool = c
                .vms
                .get_base_pool(pb::BaseRef { name: name.clone() })
                .await?
                .into_inner();
            let timeouts = c
                .vms
                .get_base_timeouts(pb::BaseRef { name: name.clone() })
                .await?
                .into_inner();
            let display = c
                .vms
                .get_base_display(pb::BaseRef { name })
                .await?
                .into_inner();
            let shown =
                serde_json::json!({ "pool": pool, "timeouts": timeouts, "display": display });
            out.show(&shown, |_| {
                format!(
                    "{}\n{}\n{}",
                    pool_line(&pool),
                    timeouts_line(&timeouts),
                    display_policy_line(&display)
                )
            });
        }
        BaseCmd::PostLoad(a) => crate::guest::post_load(c, out, a).await?,
        BaseCmd::Display {
            name,
            restrict_to_client,
        } => {
            let d = match restrict_to_client {
                Some(on) => {
                    let req = pb::BaseDisplay {
                        base: name,
                        restrict_to_client: on == "on",
                    };
                    c.vms.set_base_display(req).await?.into_inner()
                }
                None => c
                    .vms
                    .get_base_display(pb::BaseRef { name })
                    .await?
                    .into_inner(),
            };
            out.show(&d, display_policy_line);
        }
        BaseCmd::Timeouts {
            name,
            run,
            idle,
            hibernate,
        } => {
            let mut t = c
                .vms
                .get_base_timeouts(pb::BaseRef { name })
                .await?
                .into_inner();
            if run.is_some() || idle.is_some() || hibernate.is_some() {
                if let Some(r) = run {
                    t.run_seconds = timeout(&r)?;
                }
                if let Some(i) = idle {
                    t.idle_seconds = timeout(&i)?;
                }
                if let Some(h) = hibernate {
                    t.idle_hibernate = h == "on";
                }
                t = c.vms.set_base_timeouts(t).await?.into_inner();
            }
            out.show(&t, timeouts_line);
        }
        other => base_access(c, out, other).await?,
    }
    Ok(())
}

fn display_policy_line(d: &pb::BaseDisplay) -> String {
    format!(
        "{} display: {}",
        d.base,
        if d.restrict_to_client {
            "restricted to the address that asks for it"
        } else {
            "open to any address (with its password)"
        }
    )
}

fn timeouts_line(t: &pb::BaseTimeouts) -> String {
    let d = |s: u64| {
        if s == 0 {
            "off".to_string()
        } else {
            duration(i64::try_from(s).unwrap_or(i64::MAX))
        }
    };
    format!(
        "{} timeouts: run={} idle={} then {}",
        t.base,
        d(t.run_seconds),
        d(t.idle_seconds),
        if t.idle_hibernate {
            "hibernate"
        } else {
            "shutdown"
        }
    )
}

/// Seconds as `1h02m03s` (negative: `-`).
fn duration(s: i64) -> String {
    let sign = if s < 0 { "-" } else { "" };
    let s = s.unsigned_abs();
    let (h, m, sec) = (s / 3600, s / 60 % 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{sign}{sec}s"),
        (0, _) => format!("{sign}{m}m{sec:02}s"),
        _ => format!("{sign}{h}h{m:02}m{sec:02}s"),
    }
}

/// A timeout: a lifetime, or `off` (0).
fn timeout(s: &str) -> Result<u64, ClientError> {
    if s == "off" || s == "0" {
        Ok(0)
    } else {
        lifetime(s)
    }
}

fn pool_line(p: &pb::BasePool) -> String {
    format!(
        "{} pool: clones={} start={}; made={} running={} ready={} making={}",
        p.base, p.clones, p.start, p.made, p.running, p.ready, p.making
    )
}

/// `base publish|unpublish|access|rule`.
async fn base_access(
    c: &mut CoordinatorClient,
    out: &Out,
    cmd: BaseCmd,
) -> Result<(), ClientError> {
    let vms = &mut c.vms;
    let a = match cmd {
        BaseCmd::Publish { name } => {
            vms.set_base_public(pb::SetBasePublicRequest {
                base: name,
                public: true,
            })
            .await?
        }
        BaseCmd::Unpublish { name } => {
            vms.set_base_public(pb::SetBasePublicRequest {
                base: name,
                public: false,
            })
            .await?
        }
        BaseCmd::Access { name, user } => {
            let user = user.unwrap_or_default();
            vms.get_base_access(pb::BaseAccessRequest { base: name, user })
                .await?
        }
        BaseCmd::Rule(RuleCmd::Add {
            base,
            attribute,
            value,
            deny,
            last,
            at,
        }) => {
            let rule = Some(pb::AccessRule {
                attribute,
                value,
                allowed: !deny,
                last,
            });
            let position = at.unwrap_or(0);
            vms.add_access_rule(pb::AddAccessRuleRequest {
                base,
                rule,
                position,
            })
            .await?
        }
        BaseCmd::Rule(RuleCmd::Rm { base, position }) => {
            vms.remove_access_rule(pb::RemoveAccessRuleRequest { base, position })
                .await?
        }
        other => {
            return Err(ClientError::Config(format!(
                "{other:?} is no access command"
            )))
        }
    };
    out.show(&a.into_inner(), access_text);
    Ok(())
}

/// A base's access: public or not, its rules numbered, and the decision for one user.
fn access_text(a: &pb::BaseAccess) -> String {
    let mut s = format!(
        "base {}: {}\n",
        a.base,
        if a.public {
            "public"
        } else {
            "private (admins only)"
        }
    );
    for (i, r) in a.rules.iter().enumerate() {
        let verdict = if r.allowed { "allow" } else { "deny" };
        let last = if r.last { " last" } else { "" };
        s.push_str(&format!(
            "  {}. {}={} {verdict}{last}\n",
            i + 1,
            r.attribute,
            r.value
        ));
    }
    s.push_str(&format!("{}: {}", a.user, a.explanation));
    s
}

async fn op(c: &mut CoordinatorClient, out: &Out, cmd: OpCmd) -> Result<(), ClientError> {
    match cmd {
        OpCmd::Ls { unfinished } => {
            let l = c
                .ops
                .list_operations(pb::ListOperationsRequest {
                    unfinished_only: unfinished,
                })
                .await?
                .into_inner();
            out.show(&l, |l| lines(&l.operations, op_line));
        }
        OpCmd::Show { id } => {
            let o = c
                .ops
                .get_operation(pb::OperationRef { id })
                .await?
                .into_inner();
            out.show(&o, op_line);
        }
        OpCmd::Watch { id } => {
            let o = c
                .ops
                .get_operation(pb::OperationRef { id })
                .await?
                .into_inner();
            follow(c, out, false, o).await?;
        }
        OpCmd::Cancel { id } => {
            let o = c
                .ops
                .cancel_operation(pb::OperationRef { id })
                .await?
                .into_inner();
            out.show(&o, op_line);
        }
    }
    Ok(())
}

async fn user(c: &mut CoordinatorClient, out: &Out, cmd: UserCmd) -> Result<(), ClientError> {
    match cmd {
        UserCmd::Add {
            name,
            role,
            attributes,
        } => {
            let u = c
                .users
                .create_user(pb::CreateUserRequest {
                    name,
                    role,
                    attributes: labels(&attributes)?,
                })
                .await?
                .into_inner();
            out.show(&u, |u| format!("user {} ({})", u.name, u.role));
        }
        UserCmd::Token { user, expires } => {
            let expires_in_seconds = expires.as_deref().map(lifetime).transpose()?.unwrap_or(0);
            let req = pb::CreateTokenRequest {
                user,
                expires_in_seconds,
            };
            let t = c.users.create_token(req).await?.into_inner();
            out.show(&t, |t| t.token.clone());
        }
        UserCmd::Ls => {
            let l = c
                .users
                .list_users(pb::ListUsersRequest {})
                .await?
                .into_inner();
            out.show(&l, |l| {
                lines(&l.users, |u| format!("{} ({})", u.name, u.role))
            });
        }
        UserCmd::Whoami => {
            let u = c.users.who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
            out.show(&u, |u| format!("{} ({})", u.name, u.role));
        }
        other => user_change(c, out, other).await?,
    }
    Ok(())
}

/// `user set|rm|tokens|revoke`.
async fn user_change(
    c: &mut CoordinatorClient,
    out: &Out,
    cmd: UserCmd,
) -> Result<(), ClientError> {
    let users = &mut c.users;
    match cmd {
        UserCmd::Set {
            name,
            role,
            attributes,
            replace_attrs,
        } => {
            let attributes = attributes
                .iter()
                .map(|a| match a.split_once('=') {
                    Some((k, v)) => Ok((k.to_string(), v.to_string())),
                    None => Err(ClientError::Config(format!(
                        "invalid attribute {a:?}: KEY=VALUE"
                    ))),
                })
                .collect::<Result<_, _>>()?;
            let role = role.unwrap_or_default();
            let req = pb::UpdateUserRequest {
                name,
                role,
                attributes,
                replace_attributes: replace_attrs,
            };
            let u = users.update_user(req).await?.into_inner();
            out.show(&u, |u| {
                format!("user {} ({}) {:?}", u.name, u.role, u.attributes)
            });
        }
        UserCmd::Rm { name, remove_vms } => {
            let r = users
                .remove_user(pb::RemoveUserRequest { name, remove_vms })
                .await?
                .into_inner();
            out.show(&r, |r| {
                let ops: Vec<String> = r
                    .vm_removals
                    .iter()
                    .map(|o| format!("{} ({})", o.vm, o.id))
                    .collect();
                format!(
                    "user {} removed; VMs being removed: {}",
                    r.name,
                    if ops.is_empty() {
                        "none".into()
                    } else {
                        ops.join(", ")
                    }
                )
            });
        }
        UserCmd::Tokens { user } => {
            let l = users
                .list_tokens(pb::ListTokensRequest { user })
                .await?
                .into_inner();
            out.show(&l, |l| {
                lines(&l.tokens, |t| {
                    format!(
                        "{}  {}  created {}  expires {}",
                        t.id,
                        t.user,
                        when(t.created_unix_ms),
                        when(t.expires_unix_ms)
                    )
                })
            });
        }
        UserCmd::Revoke { id } => {
            let t = users
                .revoke_token(pb::RevokeTokenRequest { id })
                .await?
                .into_inner();
            out.show(&t, |t| format!("token {} of {} revoked", t.id, t.user));
        }
        other => return Err(ClientError::Config(format!("{other:?} is no change"))),
    }
    Ok(())
}

fn vref(name: String) -> pb::VmRef {
    pb::VmRef { name }
}

/// `vm ...`: changes become operations (followed unless --no-wait); reads answer at once.
async fn vm(
    c: &mut CoordinatorClient,
    out: &Out,
    no_wait: bool,
    cmd: VmCmd,
) -> Result<(), ClientError> {
    let op = match cmd {
        VmCmd::Explain {
            base,
            keep_together,
        } => {
            let req = pb::CloneVmRequest {
                base,
                keep_together,
                ..Default::default()
            };
            return explain(c, out, req).await;
        }
        VmCmd::Display { name, file } => return display(c, out, name, file).await,
        VmCmd::Exec(a) => return crate::guest::exec(c, a).await,
        VmCmd::Cp { src, dst } => return crate::guest::cp(c, out, src, dst).await,
        VmCmd::Guest { name } => return crate::guest::status(c, out, name).await,
        VmCmd::Screenshot { name, file } => return screenshot(c, out, name, file).await,
        VmCmd::Create {
            define,
            host,
            start,
            plan,
        } => create(c, *define, host, start, plan).await?,
        VmCmd::Clone { base, name, opts } => {
            c.vms.clone_vm(clone_request(base, name, *opts)?).await?
        }
        VmCmd::Ensure { name, base, opts } => {
            let e = c
                .vms
                .ensure_vm(clone_request(base, name.clone(), *opts)?)
                .await?
                .into_inner();
            let op = e.operation.map(|o| o.id).unwrap_or_default();
            if !op.is_empty() && no_wait {
                out.show(&op, |o| o.clone());
                return Ok(());
            }
            if !op.is_empty() {
                let done = c.wait(&op, |_| {}).await?;
                if done.state != pb::OperationState::Succeeded as i32 {
                    let state = op_state_name(done.state);
                    return Err(ClientError::Operation(done.id, state, done.error));
                }
            }
            let vm = c.vms.get_vm(vref(name)).await?.into_inner();
            let shown = serde_json::json!({ "created": e.created, "operation": op, "vm": vm });
            let said = if e.created { "made" } else { "exists" };
            out.show(&shown, |_| format!("{} ({said})", vm_line(&vm)));
            return Ok(());
        }
        VmCmd::Start { name } => c.vms.start_vm(vref(name)).await?,
        VmCmd::Shutdown { name } => c.vms.shutdown_vm(vref(name)).await?,
        VmCmd::Poweroff { name } => c.vms.power_off_vm(vref(name)).await?,
        VmCmd::Hibernate { name } => c.vms.hibernate_vm(vref(name)).await?,
        VmCmd::Restore { name } => c.vms.restore_vm(vref(name)).await?,
        VmCmd::Suspend { name } => c.vms.suspend_vm(vref(name)).await?,
        VmCmd::Resume { name } => c.vms.resume_vm(vref(name)).await?,
        VmCmd::Reset { name } => c.vms.reset_vm(vref(name)).await?,
        VmCmd::Reboot { name } => c.vms.reboot_vm(vref(name)).await?,
        VmCmd::DiskAdd {
            name,
            size,
            swap,
            format,
        } => {
            let req = pb::AddVmDiskRequest {
                name,
                role: if swap {
                    pb::VolumeRole::Swap
                } else {
                    pb::VolumeRole::Data
                } as i32,
                size_bytes: corral_client::parse_size(&size).map_err(ClientError::Config)?,
                format: if format == "raw" {
                    pb::VolumeFormat::Raw
                } else {
                    pb::VolumeFormat::Qcow2
                } as i32,
            };
            c.vms.add_vm_disk(req).await?
        }
        VmCmd::DiskResize { name, volume, size } => {
            let req = pb::ResizeVmDiskRequest {
                name,
                volume,
                size_bytes: corral_client::parse_size(&size).map_err(ClientError::Config)?,
            };
            c.vms.resize_vm_disk(req).await?
        }
        VmCmd::DiskSnapshot {
            name,
            volume,
            snapshot,
            revert,
            delete,
        } => {
            let action = if revert {
                pb::VolumeSnapshotAction::Revert
            } else if delete {
                pb::VolumeSnapshotAction::Delete
            } else {
                pb::VolumeSnapshotAction::Create
            };
            let req = pb::SnapshotVmDiskRequest {
                name,
                volume,
                snapshot,
                action: action as i32,
            };
            c.vms.snapshot_vm_disk(req).await?
        }
        VmCmd::DiskCopy { name, volume, to } => {
            let req = pb::CopyVmDiskRequest { name, volume, to };
            c.vms.copy_vm_disk(req).await?
        }
        VmCmd::Disks { name } => {
            let l = c.vms.list_vm_disks(vref(name)).await?.into_inner();
            out.show(&l, |l| lines(&l.disks, disk_line));
            return Ok(());
        }
        VmCmd::Rebase { name, base } => c.vms.rebase_vm(pb::RebaseVmRequest { name, base }).await?,
        VmCmd::DiskRm { name, volume } => {
            let req = pb::RemoveVmDiskRequest { name, volume };
            c.vms.remove_vm_disk(req).await?
        }
        VmCmd::DiskDetach { name, volume } => {
            let req = pb::RemoveVmDiskRequest { name, volume };
            c.vms.detach_vm_disk(req).await?
        }
        VmCmd::DiskAttach { name, volume } => {
            let req = pb::RemoveVmDiskRequest { name, volume };
            c.vms.attach_vm_disk(req).await?
        }
        VmCmd::Autostart { name, state } => {
            let req = pb::SetVmAutostartRequest {
                name,
                autostart: state == "on",
            };
            c.vms.set_vm_autostart(req).await?
        }
        VmCmd::Resize {
            name,
            memory,
            vcpus,
        } => {
            let req = pb::SetVmResourcesRequest {
                name,
                memory_mib: memory.unwrap_or(0),
                vcpus: vcpus.unwrap_or(0),
            };
            c.vms.set_vm_resources(req).await?
        }
        VmCmd::Timeout { name, run } => {
            let req = pb::SetVmRunTimeoutRequest {
                name,
                run_seconds: timeout(&run)?,
            };
            c.vms.set_vm_run_timeout(req).await?
        }
        VmCmd::Spinoff { name } => c.vms.spinoff_vm(vref(name)).await?,
        VmCmd::Rm { name } => c.vms.remove_vm(vref(name)).await?,
        VmCmd::Move {
            name,
            host,
            live,
            limit,
        } => {
            c.vms
                .move_vm(pb::MoveVmRequest {
                    name,
                    host,
                    live,
                    bandwidth_limit: limit_of(limit)?,
                })
                .await?
        }
        read @ (VmCmd::Show { .. } | VmCmd::Ls) => return vm_read(c, out, read).await,
    };
    follow(c, out, no_wait, op.into_inner()).await
}

/// `vm show` and `vm ls`: answered at once.
async fn vm_read(c: &mut CoordinatorClient, out: &Out, cmd: VmCmd) -> Result<(), ClientError> {
    if let VmCmd::Show { name } = cmd {
        let v = c.vms.get_vm(vref(name)).await?.into_inner();
        out.show(&v, |v| {
            vm_line(v)
                + &unless_empty("\n  readiness: ", &v.readiness_detail)
                + &details(v.details.as_ref())
                + &reclaim(v)
        });
    } else {
        let l = c.vms.list_vms(pb::ListVmsRequest {}).await?.into_inner();
        out.show(&l, |l| lines(&l.vms, vm_line));
    }
    Ok(())
}

/// Where a clone would go, and why not elsewhere.
async fn explain(
    c: &mut CoordinatorClient,
    out: &Out,
    req: pb::CloneVmRequest,
) -> Result<(), ClientError> {
    let e = c.vms.explain_placement(req).await?.into_inner();
    out.show(&e, |e| {
        let mut s = format!(
            "chosen: {}",
            if e.chosen.is_empty() {
                "none"
            } else {
                &e.chosen
            }
        );
        for r in &e.rejected {
            s.push_str(&format!("\n  {}: {}", r.host, r.reason));
        }
        s
    });
    Ok(())
}

async fn display(
    c: &mut CoordinatorClient,
    out: &Out,
    name: String,
    file: Option<PathBuf>,
) -> Result<(), ClientError> {
    let d = c.access.get_vm_display(vref(name)).await?.into_inner();
    match file {
        Some(f) => {
            write_private(&f, d.remote_viewer_file.as_bytes())?;
            out.show(&d, |d| {
                format!(
                    "{}://{}:{}{} written to {}",
                    pb::DisplayType::try_from(d.r#type)
                        .map(|t| enum_name(t.as_str_name(), "DISPLAY_TYPE_"))
                        .unwrap_or_default(),
                    d.host,
                    d.port,
                    if d.tls_port > 0 {
                        format!(" (TLS port {})", d.tls_port)
                    } else {
                        String::new()
                    },
                    f.display()
                )
            });
        }
        None => out.show(&d, |d| d.remote_viewer_file.clone()),
    }
    Ok(())
}

async fn screenshot(
    c: &mut CoordinatorClient,
    out: &Out,
    name: String,
    file: PathBuf,
) -> Result<(), ClientError> {
    let s = c.access.get_vm_screenshot(vref(name)).await?.into_inner();
    std::fs::write(&file, &s.png)
        .map_err(|e| invalid(format!("cannot write {}: {e}", file.display())))?;
    out.show(&file, |f| {
        format!(
            "{}x{} screenshot written to {}",
            s.width,
            s.height,
            f.display()
        )
    });
    Ok(())
}

/// `snapshot ...` through the coordinator: changes are operations, reads answer at once.
async fn snapshot(
    c: &mut CoordinatorClient,
    out: &Out,
    no_wait: bool,
    cmd: SnapshotCmd,
) -> Result<(), ClientError> {
    let op = match cmd.into_call()? {
        SnapshotCall::Create(r) => c.snapshots.create_vm_snapshot(r).await?,
        SnapshotCall::Revert(r) => c.snapshots.revert_vm_snapshot(r).await?,
        SnapshotCall::Rm(r) => c.snapshots.delete_vm_snapshot(r).await?,
        SnapshotCall::List(r) => {
            let l = c.snapshots.list_vm_snapshots(r).await?.into_inner();
            out.show(&l, |l| lines(&l.snapshots, snapshot_line));
            return Ok(());
        }
        SnapshotCall::Show(r) => {
            let s = c.snapshots.get_vm_snapshot(r).await?.into_inner();
            out.show(&s, snapshot_text);
            return Ok(());
        }
        SnapshotCall::Children(r) => {
            let l = c.snapshots.list_vm_snapshot_children(r).await?.into_inner();
            out.show(&l, |l| lines(&l.snapshots, snapshot_line));
            return Ok(());
        }
    };
    follow(c, out, no_wait, op.into_inner()).await
}

/// `vm create`: a VM from a spec (admin), placed unless a host is given.
async fn create(
    c: &mut CoordinatorClient,
    define: DefineArgs,
    host: Option<String>,
    start: bool,
    plan: Option<String>,
) -> Result<tonic::Response<pb::Operation>, ClientError> {
    let spec = spec(&define)?;
    let owner = spec.owner.clone();
    c.vms
        .create_vm(pb::CreateVmRequest {
            spec: Some(spec),
            host: host.unwrap_or_default(),
            start,
            owner,
            idempotency_key: String::new(),
            plan: plan.unwrap_or_default(),
        })
        .await
        .map_err(ClientError::from)
}
