//! The `corral` command line: argument parsing and output. `main.rs` only calls [`run`].

use std::collections::HashMap;

use clap::{Args, Parser, Subcommand, ValueEnum};
use corral_proto::v1 as pb;
use tokio_stream::StreamExt;

use corral_client::{enum_name, parse_size, state_name, AgentClient, ClientError};

#[derive(Parser, Debug)]
#[command(
    name = "corral",
    version,
    about = "Corral: fleets of KVM virtual machines"
)]
pub struct Cli {
    /// Coordinator endpoint (host:port); else CORRAL_COORDINATOR, else the config file
    /// (~/.config/corral/config.toml), else 127.0.0.1:7800.
    #[arg(long, global = true, env = "CORRAL_COORDINATOR")]
    pub coordinator: Option<String>,
    /// API token; else CORRAL_TOKEN, else the config file.
    #[arg(long, global = true, env = "CORRAL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) of the coordinator's TLS certificate; else CORRAL_CA, else `ca`
    /// in the config file. Without one the connection is plain gRPC.
    #[arg(long, global = true, env = "CORRAL_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate and key (PEM) for `corral agent ...` against an agent with mutual
    /// TLS; the agent's CA is `--ca`.
    #[arg(long, global = true, env = "CORRAL_CERT", requires = "key")]
    pub cert: Option<std::path::PathBuf>,
    #[arg(long, global = true, env = "CORRAL_KEY", requires = "cert")]
    pub key: Option<std::path::PathBuf>,
    /// Agent endpoint for `corral agent ...` (host:port).
    #[arg(
        long,
        global = true,
        env = "CORRAL_AGENT",
        default_value = "127.0.0.1:7700"
    )]
    pub agent: String,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Return the operation id at once instead of following it.
    #[arg(long, global = true)]
    pub no_wait: bool,
    /// Check, authorize and place as the real call would, say what would happen, change
    /// nothing (the coordinator's dry run).
    #[arg(long, global = true)]
    pub dry_run: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Hosts of the fleet (admin).
    #[command(subcommand)]
    Host(crate::coord_cli::HostCmd),
    /// Bases.
    #[command(subcommand)]
    Base(crate::coord_cli::BaseCmd),
    /// Virtual machines, placed by the coordinator.
    #[command(subcommand)]
    Vm(crate::coord_cli::VmCmd),
    /// Snapshot trees of VMs.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Exposed ports and display access of VMs.
    #[command(subcommand)]
    Port(PortCmd),
    /// Long operations.
    #[command(subcommand)]
    Op(crate::coord_cli::OpCmd),
    /// Users and tokens.
    #[command(subcommand)]
    User(crate::coord_cli::UserCmd),
    /// Plans: named sizes for clones and VMs.
    #[command(subcommand)]
    Plan(crate::plans::PlanCmd),
    /// The image repository: capture, load, list and remove image versions.
    #[command(subcommand)]
    Image(crate::images::ImageCmd),
    /// Backups of VMs: make, list, restore, remove, and new VMs from them.
    #[command(subcommand)]
    Backup(crate::backups::BackupCmd),
    /// The events feed: VMs, operations and hosts changing, as you may see them; followed
    /// until interrupted, resumable with --after.
    Events(crate::events::EventsArgs),
    /// Talk to one agent directly (no coordinator).
    #[command(subcommand)]
    Agent(AgentCommand),
    /// A lab certificate authority and certificates for agents and the coordinator.
    #[command(subcommand)]
    Pki(PkiCmd),
    /// Shell completions.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
pub enum PkiCmd {
    /// Create the CA (DIR/ca.pem, DIR/ca.key with mode 0600).
    Init {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long, default_value = "Corral lab CA")]
        name: String,
    },
    /// Issue DIR/NAME.pem and DIR/NAME.key, valid for the given names and addresses.
    Issue {
        #[arg(long)]
        dir: std::path::PathBuf,
        name: String,
        /// DNS name or IP address (repeat); NAME when none.
        #[arg(long = "san")]
        sans: Vec<String>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Lines for people.
    Text,
    /// JSON for scripts.
    Json,
}

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// The host: capacity, versions, lifecycle events.
    #[command(subcommand)]
    Host(HostCmd),
    /// Virtual machines.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Bases and clones.
    #[command(subcommand)]
    Base(BaseCmd),
    /// Volumes in the storage root.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Snapshot trees.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Guest ports exposed on the host's address.
    #[command(subcommand)]
    Port(PortCmd),
}

#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// The host's capacity and what the agent runs on (libvirt, domain type).
    Info,
    /// Follow lifecycle events (Ctrl-C to stop).
    Events {
        #[arg(long)]
        vm: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct DefineArgs {
    pub name: String,
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Memory, e.g. 128M or 2G.
    #[arg(long, default_value = "512M")]
    pub memory: String,
    /// VOLUME[:SIZE[:ROLE]] — an existing volume, or a new one of SIZE; role system|tmp|swap|data.
    #[arg(long = "disk")]
    pub disks: Vec<String>,
    /// libvirt networks, one NIC each ("default" when none given; "none" for no NIC).
    #[arg(long = "net")]
    pub nets: Vec<String>,
    #[arg(long, value_parser = ["vnc", "spice", "none"], default_value = "vnc")]
    pub display: String,
    #[arg(long, default_value = "vga")]
    pub video: String,
    #[arg(long)]
    pub kernel: Option<String>,
    #[arg(long)]
    pub initrd: Option<String>,
    #[arg(long)]
    pub cmdline: Option<String>,
    /// KEY=VALUE labels.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    #[arg(long)]
    pub owner: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum VmCmd {
    /// Define a domain from a spec (disks created when given a size).
    Define(DefineArgs),
    /// The host's domains, optionally those with given labels.
    List {
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Everything the agent knows of a domain.
    Show { name: String },
    /// Start a domain (a hibernated one resumes where it was).
    Start { name: String },
    /// ACPI shutdown, forced power-off after the timeout.
    Shutdown {
        name: String,
        #[arg(long, default_value_t = 60)]
        timeout: u32,
    },
    /// Stop a domain at once, like pulling the plug.
    Poweroff { name: String },
    /// Reset a running domain, like the reset button.
    Reset { name: String },
    /// Pause a running domain in memory.
    Suspend { name: String },
    /// Continue a paused domain.
    Resume { name: String },
    /// Save a domain's memory to disk and stop it; `start` resumes it.
    Hibernate { name: String },
    /// The domain's libvirt XML.
    Xml { name: String },
    /// Display connection: a remote-viewer file.
    Display { name: String },
    /// A PNG of the domain's screen.
    Screenshot {
        name: String,
        #[arg(long, short = 'f', default_value = "screenshot.png")]
        file: String,
    },
    /// System, tmp and swap volumes back to the base; data kept.
    Restore { name: String },
    /// Flatten a clone so it no longer needs its base.
    Spinoff { name: String },
    /// Add a new data or swap volume to a shut-off domain.
    AddVolume {
        name: String,
        #[arg(long, value_parser = ["swap", "data"])]
        role: String,
        #[arg(long)]
        size: String,
        #[arg(long)]
        volume: Option<String>,
    },
    /// Remove a domain, and with --volumes the volumes it owns.
    Rm {
        name: String,
        /// Also delete its volumes.
        #[arg(long)]
        volumes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum BaseCmd {
    /// Turn a shut-off domain into a base: read-only base files, locked.
    Prepare { vm: String },
    /// Turn a base without clones back into an editable domain.
    Rm { base: String },
    /// A base's volumes and when it was prepared.
    Show { base: String },
    /// The host's bases.
    List,
    /// A copy-on-write clone of a base.
    Clone {
        base: String,
        name: String,
        #[arg(long)]
        start: bool,
        /// Copy data volumes instead of giving the clone empty ones.
        #[arg(long)]
        copy_data: bool,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long = "label")]
        labels: Vec<String>,
        #[arg(long)]
        memory: Option<String>,
        #[arg(long)]
        vcpus: Option<u32>,
    },
    /// The clones of a base.
    Clones { base: String },
}

#[derive(Subcommand, Debug)]
pub enum VolumeCmd {
    /// Create an empty volume in the storage root.
    Create {
        name: String,
        size: String,
        #[arg(long, value_parser = ["qcow2", "raw"], default_value = "qcow2")]
        format: String,
    },
    /// Create a qcow2 overlay on a backing volume.
    Overlay { name: String, backing: String },
    /// A volume's format, sizes, backing chain and internal snapshots.
    Info { name: String },
    /// The volumes of the storage root.
    List,
    /// Copy a volume (converted, or keeping its backing file).
    Copy {
        source: String,
        destination: String,
        #[arg(long, value_parser = ["qcow2", "raw"])]
        format: Option<String>,
    },
    /// New backing volume, or none to flatten.
    Rebase {
        name: String,
        backing: Option<String>,
        #[arg(long)]
        r#unsafe: bool,
    },
    /// Resize a volume nobody running uses (never a base file).
    Resize {
        name: String,
        size: String,
        #[arg(long)]
        shrink: bool,
    },
    /// Delete a volume nobody owns.
    Rm { name: String },
    /// Send a volume to another agent (sparse, delta against what it has, verified).
    Send {
        name: String,
        /// The peer agent's address (host:port).
        #[arg(long)]
        to: String,
        /// Bandwidth limit in bytes per second (suffixes K, M, G).
        #[arg(long)]
        limit: Option<String>,
        /// Replace the peer's copy if it differs (delta against it).
        #[arg(long)]
        replace: bool,
    },
    /// Content checksum of a volume, as the sync computes it.
    Checksum { name: String },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Take a snapshot (memory too while the VM runs, unless --disk-only).
    Create {
        vm: String,
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long)]
        disk_only: bool,
        #[arg(long)]
        halt: bool,
        #[arg(long)]
        live: bool,
    },
    /// Snapshots, filtered (roots, leaves, current...).
    List {
        vm: String,
        /// roots, leaves, no-leaves, descendants-of-current, active, inactive, disk-only,
        /// internal, external, metadata, no-metadata
        #[arg(long = "filter")]
        filters: Vec<String>,
    },
    /// One snapshot: parent, state, time, description.
    Show { vm: String, name: String },
    /// The children of a snapshot (--recursive: all descendants).
    Children {
        vm: String,
        name: String,
        #[arg(long)]
        recursive: bool,
    },
    /// Go back to a snapshot.
    Revert {
        vm: String,
        name: String,
        #[arg(long, value_parser = ["as-snapshot", "running", "paused"], default_value = "as-snapshot")]
        mode: String,
        #[arg(long)]
        force: bool,
    },
    /// Delete a snapshot (--mode: with its children, or only them).
    Rm {
        vm: String,
        name: String,
        #[arg(long, value_parser = ["just-it", "with-children", "children-only", "metadata-only"], default_value = "just-it")]
        mode: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum PortCmd {
    /// Reach a guest port from outside through a host port.
    Expose {
        vm: String,
        guest_port: u32,
        #[arg(long, default_value_t = 0)]
        host_port: u32,
        #[arg(long, default_value = "")]
        name: String,
        /// Seconds to wait for a booting guest's address.
        #[arg(long, default_value_t = 60)]
        wait: u32,
    },
    /// Exposed ports (of one VM, or all).
    List { vm: Option<String> },
    /// Stop exposing one guest port.
    Rm { vm: String, guest_port: u32 },
    /// Stop exposing every port of a VM.
    RmAll { vm: String },
    /// Only CLIENT_IP may reach the VM's display (empty lifts the restriction).
    RestrictDisplay {
        vm: String,
        #[arg(default_value = "")]
        client_ip: String,
    },
}

/// A port command as the request it sends (the agent and the coordinator take the same).
pub(crate) enum PortCall {
    Expose(pb::ExposePortRequest),
    List(pb::ListPortsRequest),
    Rm(pb::RemovePortRequest),
    RmAll(pb::RemoveAllPortsRequest),
    RestrictDisplay(pb::RestrictDisplayRequest),
}

impl PortCmd {
    pub(crate) fn into_call(self) -> PortCall {
        match self {
            Self::Expose {
                vm,
                guest_port,
                host_port,
                name,
                wait,
            } => PortCall::Expose(pb::ExposePortRequest {
                domain: vm,
                guest_port,
                host_port,
                name,
                wait_seconds: wait,
            }),
            Self::List { vm } => PortCall::List(pb::ListPortsRequest {
                domain: vm.unwrap_or_default(),
            }),
            Self::Rm { vm, guest_port } => PortCall::Rm(pb::RemovePortRequest {
                domain: vm,
                guest_port,
            }),
            Self::RmAll { vm } => PortCall::RmAll(pb::RemoveAllPortsRequest { domain: vm }),
            Self::RestrictDisplay { vm, client_ip } => {
                PortCall::RestrictDisplay(pb::RestrictDisplayRequest {
                    domain: vm,
                    client_ip,
                })
            }
        }
    }
}

pub(crate) fn removed_text(r: &pb::RemovePortResponse) -> String {
    format!("{} port(s) removed", r.removed)
}

pub(crate) fn restrict_text(r: &pb::RestrictDisplayRequest) -> String {
    if r.client_ip.is_empty() {
        format!("display of {} open to all", r.domain)
    } else {
        format!("display of {} restricted to {}", r.domain, r.client_ip)
    }
}

pub(crate) fn labels(items: &[String]) -> Result<HashMap<String, String>, ClientError> {
    items
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| invalid(format!("label {l:?} is not KEY=VALUE")))
        })
        .collect()
}

pub(crate) fn invalid(msg: String) -> ClientError {
    ClientError::Rpc(tonic::Status::invalid_argument(msg))
}

fn size(s: &str) -> Result<u64, ClientError> {
    parse_size(s).map_err(invalid)
}

fn role(s: &str) -> Result<pb::VolumeRole, ClientError> {
    match s {
        "system" => Ok(pb::VolumeRole::System),
        "tmp" => Ok(pb::VolumeRole::Tmp),
        "swap" => Ok(pb::VolumeRole::Swap),
        "data" => Ok(pb::VolumeRole::Data),
        _ => Err(invalid(format!(
            "unknown role {s:?}: use system, tmp, swap or data"
        ))),
    }
}

fn format(s: &str) -> pb::VolumeFormat {
    match s {
        "raw" => pb::VolumeFormat::Raw,
        _ => pb::VolumeFormat::Qcow2,
    }
}

pub(crate) fn spec(a: &DefineArgs) -> Result<pb::DomainSpec, ClientError> {
    let mut disks = Vec::new();
    for d in &a.disks {
        let mut parts = d.split(':');
        let volume = parts.next().unwrap_or_default().to_string();
        let create = match parts.next() {
            Some(s) if !s.is_empty() => size(s)?,
            _ => 0,
        };
        let r = role(parts.next().unwrap_or("system"))?;
        disks.push(pb::DiskSpec {
            volume,
            role: r as i32,
            create_size_bytes: create,
            readonly: false,
        });
    }
    let nics = if a.nets.iter().any(|n| n == "none") {
        Vec::new()
    } else if a.nets.is_empty() {
        vec![pb::NicSpec::default()]
    } else {
        a.nets
            .iter()
            .map(|n| pb::NicSpec {
                network: n.clone(),
                ..Default::default()
            })
            .collect()
    };
    let display = match a.display.as_str() {
        "spice" => pb::DisplayType::Spice,
        "none" => pb::DisplayType::None,
        _ => pb::DisplayType::Vnc,
    };
    Ok(pb::DomainSpec {
        name: a.name.clone(),
        vcpus: a.vcpus,
        memory_mib: size(&a.memory)? >> 20,
        disks,
        nics,
        display: Some(pb::DisplaySpec {
            r#type: display as i32,
            listen: String::new(),
        }),
        video_model: a.video.clone(),
        kernel_boot: a.kernel.as_ref().map(|k| pb::KernelBoot {
            kernel: k.clone(),
            initrd: a.initrd.clone().unwrap_or_default(),
            cmdline: a.cmdline.clone().unwrap_or_default(),
        }),
        labels: labels(&a.labels)?,
        owner: a.owner.clone().unwrap_or_default(),
    })
}

/// One line per item.
pub(crate) fn lines<T>(items: &[T], line: impl Fn(&T) -> String) -> String {
    items.iter().map(line).collect::<Vec<_>>().join("\n")
}

pub(crate) struct Out(pub(crate) Output);

/// Bytes for people: 1.5 GiB, 320.0 MiB, 12 B.
pub(crate) fn human(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

impl Out {
    pub(crate) fn is_text(&self) -> bool {
        matches!(self.0, Output::Text)
    }

    pub(crate) fn show<T: serde::Serialize>(&self, v: &T, text: impl FnOnce(&T) -> String) {
        match self.0 {
            Output::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
            Output::Text => println!("{}", text(v)),
        }
    }
}

fn domain_line(d: &pb::Domain) -> String {
    let kind = pb::DomainKind::try_from(d.kind)
        .map(|k| enum_name(k.as_str_name(), "DOMAIN_KIND_"))
        .unwrap_or_default();
    let addrs: Vec<&str> = d
        .nics
        .iter()
        .flat_map(|n| n.addresses.iter().map(String::as_str))
        .collect();
    let base = if d.base.is_empty() {
        String::new()
    } else {
        format!(" base={}", d.base)
    };
    format!(
        "{:<24} {:<10} {:<6} {}vcpu {}MiB{}{}{}",
        d.name,
        state_name(d.state),
        kind,
        d.vcpus,
        d.memory_mib,
        base,
        if d.locked { " locked" } else { "" },
        if addrs.is_empty() {
            String::new()
        } else {
            format!(" ip={}", addrs.join(","))
        }
    )
}

fn domain_text(d: &pb::Domain) -> String {
    let mut s = domain_line(d);
    for disk in &d.disks {
        let role = pb::VolumeRole::try_from(disk.role)
            .map(|r| enum_name(r.as_str_name(), "VOLUME_ROLE_"))
            .unwrap_or_default();
        s.push_str(&format!(
            "\n  disk {} {} ({role})",
            disk.target, disk.volume
        ));
    }
    if let Some(g) = &d.display {
        if g.port > 0 {
            s.push_str(&format!("\n  display {}:{}", g.listen, g.port));
        }
    }
    s
}

pub(crate) fn snapshot_line(s: &pb::Snapshot) -> String {
    format!(
        "{:<20} parent={:<16} state={:<10} {}{}",
        s.name,
        if s.parent.is_empty() { "-" } else { &s.parent },
        s.state,
        if s.is_current { "current " } else { "" },
        s.description
    )
}

fn volume_line(v: &pb::VolumeInfo) -> String {
    format!(
        "{:<32} {:<6} virtual={} allocated={}{}",
        v.name,
        v.format,
        v.virtual_size,
        v.allocated_size,
        v.backing_chain
            .first()
            .map(|b| format!(" backing={}", b.path))
            .unwrap_or_default()
    )
}

pub(crate) fn port_line(p: &pb::ExposedPort) -> String {
    format!(
        "{}:{} -> {} {}:{} {}",
        p.host_address,
        p.host_port,
        p.domain,
        if p.guest_address.is_empty() {
            "-"
        } else {
            &p.guest_address
        },
        p.guest_port,
        if p.active { "active" } else { "inactive" }
    )
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<(), ClientError> {
    match cli.command {
        Command::Agent(cmd) => {
            let tls = match (&cli.ca, &cli.cert, &cli.key) {
                (Some(ca), Some(cert), Some(key)) => Some(corral_client::TlsFiles {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                (None, Some(_), _) => {
                    return Err(ClientError::Config(
                        "--cert and --key need --ca (the agents' CA)".into(),
                    ))
                }
                _ => None,
            };
            run_agent(&cli.agent, tls.as_ref(), cli.output, cmd).await
        }
        Command::Pki(PkiCmd::Init { dir, name }) => {
            let ca = crate::pki::init_ca(&dir, &name)?;
            println!("CA written to {}", ca.display());
            Ok(())
        }
        Command::Pki(PkiCmd::Issue { dir, name, sans }) => {
            let (cert, key) = crate::pki::issue(&dir, &name, &sans)?;
            println!("{} and {} written", cert.display(), key.display());
            Ok(())
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "corral", &mut std::io::stdout());
            Ok(())
        }
        command => {
            let settings = crate::coord_cli::Settings::resolve(cli.coordinator, cli.token, cli.ca)?;
            crate::coord_cli::run(settings, cli.output, cli.no_wait, cli.dry_run, command).await
        }
    }
}

/// Runs one command against an agent directly.
pub async fn run_agent(
    agent: &str,
    tls: Option<&corral_client::TlsFiles>,
    output: Output,
    command: AgentCommand,
) -> Result<(), ClientError> {
    let mut c = AgentClient::connect_with(agent, tls).await?;
    let out = Out(output);
    match command {
        AgentCommand::Host(HostCmd::Info) => {
            let h = c
                .host
                .get_host_info(pb::GetHostInfoRequest {})
                .await?
                .into_inner();
            out.show(&h, |h| {
                format!(
                    "{} ({}): {} cpus, memory {}/{} MiB free, storage {}/{} GiB free, libvirt {}, qemu {}, {} running of {}",
                    h.hostname, h.domain_type, h.cpus, h.memory_free_bytes >> 20, h.memory_total_bytes >> 20,
                    h.storage_free_bytes >> 30, h.storage_total_bytes >> 30, h.libvirt_version, h.qemu_version,
                    h.domains_running, h.domains_defined
                )
            });
        }
        AgentCommand::Host(HostCmd::Events { vm }) => {
            let mut s = c
                .host
                .watch_domain_events(pb::WatchDomainEventsRequest {
                    domain: vm.unwrap_or_default(),
                })
                .await?
                .into_inner();
            while let Some(e) = s.next().await {
                let e = e?;
                out.show(&e, |e| {
                    let kind = pb::DomainEventKind::try_from(e.kind)
                        .map(|k| enum_name(k.as_str_name(), "DOMAIN_EVENT_KIND_"))
                        .unwrap_or_default();
                    format!("{} {} {} ({})", e.at_unix_ms, e.domain, kind, e.detail_text)
                });
            }
        }
        AgentCommand::Vm(cmd) => vm(&mut c, &out, cmd).await?,
        AgentCommand::Base(cmd) => agent_base(&mut c, &out, cmd).await?,
        AgentCommand::Volume(cmd) => agent_volume(&mut c, &out, cmd).await?,
        AgentCommand::Snapshot(cmd) => snapshot(&mut c, &out, cmd).await?,
        AgentCommand::Port(cmd) => crate::ports::port(&mut c, &out, cmd).await?,
    }
    Ok(())
}

async fn vm(c: &mut AgentClient, out: &Out, cmd: VmCmd) -> Result<(), ClientError> {
    let dref = |name: &str| pb::DomainRef {
        name: name.to_string(),
    };
    let d = match cmd {
        VmCmd::Define(a) => {
            c.domains
                .define_domain(pb::DefineDomainRequest {
                    spec: Some(spec(&a)?),
                })
                .await?
        }
        VmCmd::List { labels: l } => {
            let list = c
                .domains
                .list_domains(pb::ListDomainsRequest {
                    labels: labels(&l)?,
                })
                .await?
                .into_inner();
            out.show(&list, |l| lines(&l.domains, domain_line));
            return Ok(());
        }
        VmCmd::Show { name } => c.domains.get_domain(dref(&name)).await?,
        VmCmd::Start { name } => c.domains.start_domain(dref(&name)).await?,
        VmCmd::Shutdown { name, timeout } => {
            c.domains
                .shutdown_domain(pb::ShutdownDomainRequest {
                    name,
                    timeout_seconds: timeout,
                })
                .await?
        }
        VmCmd::Poweroff { name } => c.domains.power_off_domain(dref(&name)).await?,
        VmCmd::Reset { name } => c.domains.reset_domain(dref(&name)).await?,
        VmCmd::Suspend { name } => c.domains.suspend_domain(dref(&name)).await?,
        VmCmd::Resume { name } => c.domains.resume_domain(dref(&name)).await?,
        VmCmd::Hibernate { name } => c.domains.hibernate_domain(dref(&name)).await?,
        VmCmd::Restore { name } => c.bases.restore_clone(dref(&name)).await?,
        VmCmd::Spinoff { name } => c.bases.spinoff_clone(dref(&name)).await?,
        VmCmd::AddVolume {
            name,
            role: r,
            size: s,
            volume,
        } => {
            c.bases
                .add_volume(pb::AddVolumeRequest {
                    domain: name,
                    role: role(&r)? as i32,
                    size_bytes: size(&s)?,
                    name: volume.unwrap_or_default(),
                    format: pb::VolumeFormat::Qcow2 as i32,
                })
                .await?
        }
        VmCmd::Xml { name } => {
            let x = c.domains.get_domain_xml(dref(&name)).await?.into_inner();
            out.show(&x, |x| x.xml.clone());
            return Ok(());
        }
        VmCmd::Display { name } => {
            let x = c.domains.get_display(dref(&name)).await?.into_inner();
            out.show(&x, |x| x.remote_viewer_file.clone());
            return Ok(());
        }
        VmCmd::Screenshot { name, file } => return vm_screenshot(c, out, name, file).await,
        VmCmd::Rm { name, volumes } => return vm_rm(c, out, name, volumes).await,
    };
    out.show(&d.into_inner(), domain_text);
    Ok(())
}

/// A snapshot command as the request it sends (the agent and the coordinator take the same).
pub(crate) enum SnapshotCall {
    Create(pb::CreateSnapshotRequest),
    List(pb::ListSnapshotsRequest),
    Show(pb::SnapshotRef),
    Children(pb::ListChildrenRequest),
    Revert(pb::RevertSnapshotRequest),
    Rm(pb::DeleteSnapshotRequest),
}

fn enum_value(
    prefix: &str,
    what: &str,
    name: &str,
    parse: fn(&str) -> Option<i32>,
) -> Result<i32, ClientError> {
    let full = format!("{prefix}{}", name.to_ascii_uppercase().replace('-', "_"));
    parse(&full).ok_or_else(|| invalid(format!("unknown {what} {name:?}")))
}

impl SnapshotCmd {
    pub(crate) fn into_call(self) -> Result<SnapshotCall, ClientError> {
        Ok(match self {
            Self::Create {
                vm,
                name,
                description,
                disk_only,
                halt,
                live,
            } => SnapshotCall::Create(pb::CreateSnapshotRequest {
                domain: vm,
                name,
                description,
                disk_only,
                halt,
                live,
            }),
            Self::List { vm, filters } => SnapshotCall::List(pb::ListSnapshotsRequest {
                domain: vm,
                filters: filters
                    .iter()
                    .map(|f| {
                        enum_value("SNAPSHOT_FILTER_", "filter", f, |s| {
                            pb::SnapshotFilter::from_str_name(s).map(|v| v as i32)
                        })
                    })
                    .collect::<Result<_, _>>()?,
            }),
            Self::Show { vm, name } => SnapshotCall::Show(pb::SnapshotRef { domain: vm, name }),
            Self::Children {
                vm,
                name,
                recursive,
            } => SnapshotCall::Children(pb::ListChildrenRequest {
                domain: vm,
                name,
                recursive,
            }),
            Self::Revert {
                vm,
                name,
                mode,
                force,
            } => SnapshotCall::Revert(pb::RevertSnapshotRequest {
                domain: vm,
                name,
                mode: enum_value("REVERT_MODE_", "revert mode", &mode, |s| {
                    pb::RevertMode::from_str_name(s).map(|v| v as i32)
                })?,
                force,
            }),
            Self::Rm { vm, name, mode } => SnapshotCall::Rm(pb::DeleteSnapshotRequest {
                domain: vm,
                name,
                mode: enum_value("DELETE_SNAPSHOT_MODE_", "delete mode", &mode, |s| {
                    pb::DeleteSnapshotMode::from_str_name(s).map(|v| v as i32)
                })?,
            }),
        })
    }
}

pub(crate) fn snapshot_text(s: &pb::Snapshot) -> String {
    format!(
        "{}\n  children: {}",
        snapshot_line(s),
        s.children.join(", ")
    )
}

async fn snapshot(c: &mut AgentClient, out: &Out, cmd: SnapshotCmd) -> Result<(), ClientError> {
    match cmd.into_call()? {
        SnapshotCall::Create(r) => {
            let s = c.snapshots.create_snapshot(r).await?.into_inner();
            out.show(&s, snapshot_line);
        }
        SnapshotCall::List(r) => {
            let l = c.snapshots.list_snapshots(r).await?.into_inner();
            out.show(&l, |l| lines(&l.snapshots, snapshot_line));
        }
        SnapshotCall::Show(r) => {
            let s = c.snapshots.get_snapshot(r).await?.into_inner();
            out.show(&s, snapshot_text);
        }
        SnapshotCall::Children(r) => {
            let l = c.snapshots.list_children(r).await?.into_inner();
            out.show(&l, |l| lines(&l.snapshots, snapshot_line));
        }
        SnapshotCall::Revert(r) => {
            let s = c.snapshots.revert_snapshot(r).await?.into_inner();
            out.show(&s, |s| format!("reverted to {}", s.name));
        }
        SnapshotCall::Rm(r) => {
            let r = c.snapshots.delete_snapshot(r).await?.into_inner();
            out.show(&r, |r| format!("deleted: {}", r.deleted.join(", ")));
        }
    }
    Ok(())
}

async fn agent_base(c: &mut AgentClient, out: &Out, cmd: BaseCmd) -> Result<(), ClientError> {
    let dref = |name: &str| pb::DomainRef {
        name: name.to_string(),
    };
    match cmd {
        BaseCmd::Prepare { vm } => {
            let b = c.bases.prepare_base(dref(&vm)).await?.into_inner();
            out.show(&b, |b| {
                format!("base {} prepared ({} volumes)", b.name, b.volumes.len())
            });
        }
        BaseCmd::Rm { base } => {
            c.bases.remove_base(dref(&base)).await?;
            out.show(&base, |b| format!("base {b} removed"));
        }
        BaseCmd::Show { base } => {
            let b = c.bases.get_base(dref(&base)).await?.into_inner();
            out.show(&b, |b| {
                let vols: Vec<String> = b
                    .volumes
                    .iter()
                    .map(|v| format!("{}={}", v.target, v.base_volume))
                    .collect();
                format!("{} clones={} {}", b.name, b.clones, vols.join(" "))
            });
        }
        BaseCmd::List => {
            let l = c
                .bases
                .list_bases(pb::ListBasesRequest {})
                .await?
                .into_inner();
            out.show(&l, |l| {
                lines(&l.bases, |b| format!("{} clones={}", b.name, b.clones))
            });
        }
        BaseCmd::Clone {
            base,
            name,
            start,
            copy_data,
            owner,
            labels: l,
            memory,
            vcpus,
        } => {
            let req = pb::CloneBaseRequest {
                base,
                name,
                data_volumes: if copy_data {
                    pb::DataVolumeMode::Copy
                } else {
                    pb::DataVolumeMode::Empty
                } as i32,
                start,
                labels: labels(&l)?,
                owner: owner.unwrap_or_default(),
                memory_mib: memory.map(|m| size(&m)).transpose()?.unwrap_or(0) >> 20,
                vcpus: vcpus.unwrap_or(0),
            };
            let d = c.bases.clone_base(req).await?.into_inner();
            out.show(&d, domain_text);
        }
        BaseCmd::Clones { base } => {
            let l = c.bases.list_clones(dref(&base)).await?.into_inner();
            out.show(&l, |l| lines(&l.clones, domain_line));
        }
    }
    Ok(())
}

async fn agent_volume(c: &mut AgentClient, out: &Out, cmd: VolumeCmd) -> Result<(), ClientError> {
    let vols = &mut c.volumes;
    // The commands that answer with the volume they made or changed.
    let v = match cmd {
        VolumeCmd::Create {
            name,
            size: s,
            format: f,
        } => {
            let (size_bytes, format) = (size(&s)?, format(&f) as i32);
            let req = pb::CreateVolumeRequest {
                name,
                size_bytes,
                format,
            };
            vols.create_volume(req).await?
        }
        VolumeCmd::Overlay { name, backing } => {
            vols.create_overlay(pb::CreateOverlayRequest { name, backing })
                .await?
        }
        VolumeCmd::Info { name } => vols.get_volume_info(pb::VolumeRef { name }).await?,
        VolumeCmd::Copy {
            source,
            destination,
            format: f,
        } => {
            let format = f.map(|f| format(&f) as i32).unwrap_or(0);
            let keep_backing = false;
            let req = pb::CopyVolumeRequest {
                source,
                destination,
                format,
                keep_backing,
            };
            vols.copy_volume(req).await?
        }
        VolumeCmd::Rebase {
            name,
            backing,
            r#unsafe,
        } => {
            let backing = backing.unwrap_or_default();
            let req = pb::RebaseVolumeRequest {
                name,
                backing,
                r#unsafe,
            };
            vols.rebase_volume(req).await?
        }
        VolumeCmd::Resize {
            name,
            size: s,
            shrink,
        } => {
            let req = pb::ResizeVolumeRequest {
                name,
                size_bytes: size(&s)?,
                allow_shrink: shrink,
            };
            vols.resize_volume(req).await?
        }
        other => return agent_volume_other(c, out, other).await,
    };
    out.show(&v.into_inner(), volume_line);
    Ok(())
}

/// The volume commands that answer with something else than a volume.
async fn agent_volume_other(
    c: &mut AgentClient,
    out: &Out,
    cmd: VolumeCmd,
) -> Result<(), ClientError> {
    match cmd {
        VolumeCmd::List => {
            let l = c
                .volumes
                .list_volumes(pb::ListVolumesRequest {})
                .await?
                .into_inner();
            out.show(&l, |l| lines(&l.volumes, volume_line));
        }
        VolumeCmd::Rm { name } => {
            c.volumes
                .delete_volume(pb::VolumeRef { name: name.clone() })
                .await?;
            out.show(&name, |n| format!("volume {n} deleted"));
        }
        VolumeCmd::Send {
            name,
            to,
            limit,
            replace,
        } => volume_send(c, out, name, to, limit, replace).await?,
        VolumeCmd::Checksum { name } => {
            let r = c
                .sync
                .volume_checksum(pb::VolumeChecksumRequest { volume: name })
                .await?
                .into_inner();
            out.show(&r, |r| {
                format!(
                    "{} size {} allocated {} blocks {}",
                    r.checksum, r.size, r.allocated, r.data_blocks
                )
            });
        }
        // Answered by `agent_volume` itself.
        made => {
            return Err(ClientError::Config(format!(
                "{made:?} answers with a volume"
            )))
        }
    }
    Ok(())
}

/// `agent volume send`: agent to agent, progress on stderr.
async fn volume_send(
    c: &mut AgentClient,
    out: &Out,
    name: String,
    to: String,
    limit: Option<String>,
    replace: bool,
) -> Result<(), ClientError> {
    let bandwidth_limit = match limit {
        Some(l) => corral_client::parse_size(&l).map_err(ClientError::Config)?,
        None => 0,
    };
    let mut stream = c
        .sync
        .send_volume(pb::SendVolumeRequest {
            volume: name,
            peer: to,
            bandwidth_limit,
            replace,
            peer_tls_name: String::new(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut last = None;
    while let Some(p) = stream.message().await? {
        if !p.done && out.is_text() {
            eprint!(
                "\r{}: {} of {} looked at, {} sent, {} already there   ",
                p.volume,
                human(p.scanned_bytes),
                human(p.total_bytes),
                human(p.sent_bytes),
                human(p.skipped_bytes)
            );
        }
        if p.done {
            last = Some(p);
        }
    }
    if out.is_text() {
        eprintln!();
    }
    let p = last
        .ok_or_else(|| ClientError::Config("the agent ended the send without a result".into()))?;
    out.show(&p, |p| {
        format!(
            "{} sent in {} ms: {} data, {} already there, {} on the wire, checksum {}",
            p.volume,
            p.elapsed_ms,
            human(p.sent_bytes),
            human(p.skipped_bytes),
            human(p.wire_bytes),
            p.checksum
        )
    });
    Ok(())
}

/// `agent vm screenshot`: a PNG of the screen, written to a file.
async fn vm_screenshot(
    c: &mut AgentClient,
    out: &Out,
    name: String,
    file: String,
) -> Result<(), ClientError> {
    let s = c
        .domains
        .get_screenshot(pb::DomainRef { name: name.clone() })
        .await?
        .into_inner();
    std::fs::write(&file, &s.png).map_err(|e| invalid(format!("cannot write {file}: {e}")))?;
    out.show(&file, |f| {
        format!("{}x{} screenshot written to {f}", s.width, s.height)
    });
    Ok(())
}

/// `agent vm rm`: the domain, and with --volumes the volumes it owns.
async fn vm_rm(
    c: &mut AgentClient,
    out: &Out,
    name: String,
    volumes: bool,
) -> Result<(), ClientError> {
    let r = c
        .domains
        .remove_domain(pb::RemoveDomainRequest {
            name: name.clone(),
            remove_volumes: volumes,
        })
        .await?
        .into_inner();
    out.show(&r, |r| {
        format!(
            "{name} removed; volumes deleted: {}",
            r.removed_volumes.join(", ")
        )
    });
    Ok(())
}
