//! Domains: typed specs to XML, views of what libvirt holds, and lifecycle operations.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use corral_proto::v1 as pb;
use rand::Rng;

use crate::agent::{now_unix, Agent};
use crate::convert::{display_type, role_from_pb, role_to_pb, state_to_pb};
use crate::domain_xml::Kind;
use crate::domain_xml::{
    CharDev, CorralMeta, Disk, DiskDriver, DiskSource, DiskTarget, DomainXml, Empty, Features,
    Graphics, Interface, MacAddress, MetaDisk, MetaLabel, Metadata, NetSource, Os, OsType,
    TypeAttr, Video,
};
use crate::error::{AgentError, Result};
use crate::hypervisor::DomState;
use crate::images::Format;
use crate::ownership::{Actor, Change, Claims};
use crate::validate;

/// A random locally administered MAC in QEMU's 52:54:00 range.
pub fn random_mac() -> String {
    let mut r = rand::thread_rng();
    format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        r.gen::<u8>(),
        r.gen::<u8>(),
        r.gen::<u8>()
    )
}

/// A random display password (VNC uses at most 8 characters).
pub fn random_password() -> String {
    const CHARS: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut r = rand::thread_rng();
    (0..8)
        .map(|_| CHARS[r.gen_range(0..CHARS.len())] as char)
        .collect()
}

/// Disk target name for the n-th disk: vda, vdb, ...
pub fn target_name(index: usize) -> Result<String> {
    let letter = u8::try_from(index)
        .ok()
        .filter(|i| *i < 26)
        .ok_or_else(|| AgentError::invalid("at most 26 disks per domain"))?;
    Ok(format!("vd{}", (b'a' + letter) as char))
}

/// The XML of a disk backed by a file in the storage root.
pub fn disk_xml(path: &Path, target: &str, format: &str, readonly: bool) -> Disk {
    Disk {
        disk_type: "file".into(),
        device: "disk".into(),
        driver: Some(DiskDriver {
            name: "qemu".into(),
            format: format.into(),
        }),
        source: Some(DiskSource {
            file: Some(path.display().to_string()),
        }),
        target: DiskTarget {
            dev: target.into(),
            bus: Some("virtio".into()),
        },
        readonly: readonly.then_some(Empty {}),
    }
}

/// Builds the graphics element for a display spec.
fn graphics_for(agent: &Agent, display: Option<&pb::DisplaySpec>) -> Result<Vec<Graphics>> {
    let (kind, listen) = match display {
        None => (pb::DisplayType::Vnc, String::new()),
        Some(d) => (
            pb::DisplayType::try_from(d.r#type).map_err(|_| {
                AgentError::invalid(format!(
                    "unknown display type {}: use spice or vnc",
                    d.r#type
                ))
            })?,
            d.listen.clone(),
        ),
    };
    let kind = match kind {
        pb::DisplayType::None => return Ok(Vec::new()),
        pb::DisplayType::Spice => "spice",
        pb::DisplayType::Vnc | pb::DisplayType::Unspecified => "vnc",
    };
    let listen = if listen.is_empty() {
        agent.cfg.host_address.to_string()
    } else {
        listen
            .parse::<std::net::IpAddr>()
            .map_err(|_| {
                AgentError::invalid(format!(
                    "display listen address {listen:?} is not an IP address"
                ))
            })?
            .to_string()
    };
    Ok(vec![Graphics {
        kind: kind.into(),
        port: Some(-1),
        tls_port: None,
        autoport: Some("yes".into()),
        listen: Some(listen),
        passwd: Some(random_password()),
    }])
}

/// A volume the define step must create, removed again if the define fails.
struct Created(Vec<std::path::PathBuf>);

impl Created {
    fn rollback(self) {
        for p in self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Agent {
    /// Reads a domain's current (live when running) definition.
    pub fn read_domain(&self, name: &str) -> Result<DomainXml> {
        validate::name("domain", name)?;
        DomainXml::parse(&self.hv.xml(name, false, false)?)
    }

    /// Reads the persistent definition, passwords included (for cloning and redefining).
    /// Bases' definitions are cached (clones read theirs each time).
    pub fn read_definition(&self, name: &str) -> Result<DomainXml> {
        validate::name("domain", name)?;
        if let Some(x) = self.cached_definition(name) {
            return Ok(x);
        }
        let xml = DomainXml::parse(&self.hv.xml(name, true, true)?)?;
        if xml.meta().is_some_and(|m| m.kind == Kind::Base) {
            self.cache_definition(name, &xml);
        }
        Ok(xml)
    }

    pub fn exists(&self, name: &str) -> Result<bool> {
        match self.hv.state(name) {
            Ok(_) => Ok(true),
            Err(AgentError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives a domain to `owner`: recorded in its metadata, and a new display password in
    /// the running guest and in the definition (the old one no longer lets anyone in).
    pub fn assign(&self, name: &str, owner: &str) -> Result<pb::Domain> {
        validate::name("domain", name)?;
        corral_proto::rules::name("owner", owner)?;
        let _busy = self.busy(name)?;
        let definition = self.read_definition(name)?;
        let mut meta = definition
            .meta()
            .cloned()
            .ok_or_else(|| AgentError::precondition(format!("domain {name:?} is not Corral's")))?;
        if meta.kind == Kind::Base {
            return Err(AgentError::precondition(format!(
                "domain {name:?} is a base: bases have no owner to change"
            )));
        }
        let password = random_password();
        let with_password = |g: &Graphics| -> Result<String> {
            let g = Graphics {
                passwd: Some(password.clone()),
                ..g.clone()
            };
            quick_xml::se::to_string_with_root("graphics", &g)
                .map_err(|e| AgentError::internal(format!("cannot write graphics: {e}")))
        };
        if self.hv.state(name)?.is_active() {
            let live = DomainXml::parse(&self.hv.xml(name, true, false)?)?;
            for g in &live.devices.graphics {
                self.hv.update_device(name, &with_password(g)?, true)?;
            }
        }
        for g in &definition.devices.graphics {
            self.hv.update_device(name, &with_password(g)?, false)?;
        }
        meta.owner = Some(owner.to_string());
        self.write_meta(name, &meta)?;
        tracing::info!(domain = %name, %owner, "assigned");
        self.view(name)
    }

    /// Replaces Corral's metadata of a domain.
    pub fn write_meta(&self, name: &str, meta: &CorralMeta) -> Result<()> {
        let meta = CorralMeta {
            xmlns: None,
            ..meta.clone()
        };
        let xml = quick_xml::se::to_string_with_root("instance", &meta)
            .map_err(|e| AgentError::internal(format!("cannot write metadata: {e}")))?;
        self.forget_definition(name);
        self.hv.set_meta(name, &xml)
    }

    /// Defines a domain from a typed spec. Nothing is left behind when it fails.
    pub fn define(&self, spec: &pb::DomainSpec) -> Result<pb::Domain> {
        corral_proto::rules::domain_spec(spec)?;
        let vcpus = if spec.vcpus == 0 { 1 } else { spec.vcpus };
        let memory = if spec.memory_mib == 0 {
            512
        } else {
            spec.memory_mib
        };
        let video = if spec.video_model.is_empty() {
            "vga"
        } else {
            &spec.video_model
        };
        // Check every disk before creating any: an existing volume must be free (or, read
        // only, not written by another domain); a base file is never writable.
        let claims = self.claims()?;
        let mut plan = Vec::new();
        for (i, d) in spec.disks.iter().enumerate() {
            let role = role_from_pb(d.role)?;
            let target = target_name(i)?;
            let path = self.storage.path(&d.volume)?;
            let create = if path.is_file() {
                let change = if d.readonly {
                    Change::AttachReadOnly
                } else {
                    Change::AttachWritable
                };
                self.may_change(&claims, &d.volume, &path, Actor::Domain(&spec.name), change)?;
                false
            } else if d.create_size_bytes > 0 {
                true
            } else {
                return Err(AgentError::not_found(format!(
                    "volume {:?} does not exist (give create_size_bytes to create it)",
                    d.volume
                )));
            };
            plan.push((d, role, target, path, create));
        }
        let mut interfaces = Vec::new();
        for n in &spec.nics {
            let mac = if n.mac.is_empty() {
                random_mac()
            } else {
                n.mac.to_lowercase()
            };
            let model = if n.model.is_empty() {
                "virtio"
            } else {
                &n.model
            };
            let network = if n.network.is_empty() {
                self.cfg.default_network.clone()
            } else {
                n.network.clone()
            };
            interfaces.push(Interface {
                iface_type: "network".into(),
                mac: Some(MacAddress { address: mac }),
                source: Some(NetSource {
                    network: Some(network),
                }),
                model: Some(TypeAttr { kind: model.into() }),
            });
        }
        let graphics = graphics_for(self, spec.display.as_ref())?;
        let os = self.os_for(spec.kernel_boot.as_ref())?;
        if self.exists(&spec.name)? {
            return Err(AgentError::exists(format!(
                "domain {:?} already exists",
                spec.name
            )));
        }

        let mut meta = CorralMeta::new(Kind::Plain);
        meta.owner = (!spec.owner.is_empty()).then(|| spec.owner.clone());
        meta.created_unix = now_unix();
        let mut labels: Vec<_> = spec.labels.iter().collect();
        labels.sort();
        meta.labels = labels
            .into_iter()
            .map(|(k, v)| MetaLabel {
                key: k.clone(),
                value: v.clone(),
            })
            .collect();
        let mut created = Created(Vec::new());
        let mut disks = Vec::new();
        for (d, role, target, path, create) in plan {
            if create {
                if let Err(e) = self
                    .images
                    .create(&path, Format::Qcow2, d.create_size_bytes)
                {
                    created.rollback();
                    return Err(e);
                }
                created.0.push(path.clone());
            }
            let format = match self.images.info(&path) {
                Ok(chain) => chain
                    .first()
                    .map(|i| i.format.clone())
                    .unwrap_or_else(|| "qcow2".into()),
                Err(e) => {
                    created.rollback();
                    return Err(e);
                }
            };
            disks.push(disk_xml(&path, &target, &format, d.readonly));
            meta.disks.push(MetaDisk {
                target,
                role,
                volume: d.volume.clone(),
            });
        }
        let xml = DomainXml {
            domain_type: self.cfg.domain_type.as_str().into(),
            name: spec.name.clone(),
            uuid: None,
            metadata: Some(Metadata { corral: Some(meta) }),
            memory: crate::domain_xml::Memory::mib(memory),
            current_memory: None,
            vcpu: crate::domain_xml::Vcpu { count: vcpus },
            os,
            features: Some(Features {
                acpi: Some(Empty {}),
                apic: Some(Empty {}),
            }),
            devices: crate::domain_xml::Devices {
                disks,
                interfaces,
                serials: vec![CharDev { kind: "pty".into() }],
                consoles: vec![CharDev { kind: "pty".into() }],
                // The QEMU guest agent's channel (libvirt's test driver has no such devices).
                channels: if self.cfg.domain_type == crate::config::DomainType::Test {
                    vec![]
                } else {
                    vec![crate::domain_xml::Channel::guest_agent()]
                },
                graphics,
                videos: vec![Video {
                    model: TypeAttr { kind: video.into() },
                }],
            },
        };
        self.forget_definition(&xml.name);
        let result = xml.to_xml().and_then(|x| self.hv.define(&x));
        if let Err(e) = result {
            created.rollback();
            return Err(e);
        }
        tracing::info!(domain = %spec.name, "defined");
        self.view(&spec.name)
    }

    fn os_for(&self, boot: Option<&pb::KernelBoot>) -> Result<Os> {
        let mut os = Os {
            os_type: OsType {
                arch: Some("x86_64".into()),
                machine: (self.cfg.domain_type != crate::config::DomainType::Test)
                    .then(|| self.cfg.machine.clone()),
                value: "hvm".into(),
            },
            ..Os::default()
        };
        match boot {
            Some(b) if !b.kernel.is_empty() => {
                let check = |what: &str, p: &str| -> Result<String> {
                    let path = Path::new(p);
                    if !path.is_absolute() || p.contains("..") {
                        return Err(AgentError::invalid(format!(
                            "{what} path {p:?} must be absolute, without '..'"
                        )));
                    }
                    if !path.is_file() {
                        return Err(AgentError::not_found(format!(
                            "{what} {p:?} does not exist"
                        )));
                    }
                    Ok(p.to_string())
                };
                os.kernel = Some(check("kernel", &b.kernel)?);
                if !b.initrd.is_empty() {
                    os.initrd = Some(check("initrd", &b.initrd)?);
                }
                if b.cmdline.chars().any(char::is_control) || b.cmdline.len() > 2048 {
                    return Err(AgentError::invalid(
                        "kernel command line must be printable and at most 2048 characters",
                    ));
                }
                if !b.cmdline.is_empty() {
                    os.cmdline = Some(b.cmdline.clone());
                }
            }
            Some(b) if !b.initrd.is_empty() || !b.cmdline.is_empty() => {
                return Err(AgentError::invalid("initrd and cmdline need a kernel"));
            }
            _ => os.boot.push(crate::domain_xml::Boot { dev: "hd".into() }),
        }
        Ok(os)
    }

    /// A disk as Corral shows it: its volume by Corral's record, else by its path.
    fn disk_view(&self, d: &crate::domain_xml::Disk, meta: &CorralMeta) -> pb::Disk {
        let path = d
            .source
            .as_ref()
            .and_then(|s| s.file.clone())
            .unwrap_or_default();
        let md = meta.disks.iter().find(|m| m.target == d.target.dev);
        pb::Disk {
            volume: md
                .map(|m| m.volume.clone())
                .or_else(|| self.storage.name_of(Path::new(&path)))
                .unwrap_or_default(),
            path,
            role: role_to_pb(md.map(|m| m.role).unwrap_or_default()) as i32,
            target: d.target.dev.clone(),
            readonly: d.readonly.is_some(),
        }
    }

    /// Everything Corral shows about a domain.
    pub fn view(&self, name: &str) -> Result<pb::Domain> {
        let xml = self.read_domain(name)?;
        let state = self.hv.state(name)?;
        let meta = xml
            .meta()
            .cloned()
            .unwrap_or_else(|| CorralMeta::new(Kind::Plain));
        let addresses: HashMap<String, Vec<String>> = if state.is_active() {
            let mut m: HashMap<String, Vec<String>> = HashMap::new();
            for (mac, ip) in self.hv.addresses(name).unwrap_or_default() {
                m.entry(mac).or_default().push(ip.to_string());
            }
            m
        } else {
            HashMap::new()
        };
        let disks = xml
            .devices
            .disks
            .iter()
            .map(|d| self.disk_view(d, &meta))
            .collect();
        let nics = xml
            .devices
            .interfaces
            .iter()
            .map(|i| nic_view(i, &addresses))
            .collect();
        let display = xml.devices.graphics.first().map(|g| pb::Display {
            r#type: display_type(&g.kind) as i32,
            listen: g.listen.clone().unwrap_or_default(),
            port: if state.is_active() {
                g.port.unwrap_or(0).max(0)
            } else {
                0
            },
            restricted_to: self.display_restriction(name).unwrap_or_default(),
        });
        let kind = pb::DomainKind::from(meta.kind);
        let needs_restart = state.is_active() && self.needs_restart(name, &xml)?;
        let seen = self.hv.display_seen(name);
        let guest_agent = crate::guest::channel_state(&xml, state.is_active());
        Ok(pb::Domain {
            detached_volumes: meta.detached.iter().map(|d| d.volume.clone()).collect(),
            guest_agent: guest_agent as i32,
            display_clients: seen.clients,
            display_last_seen_unix_ms: seen.last_seen_unix_ms,
            needs_restart,
            autostart: self.hv.autostart(name).unwrap_or(false),
            name: xml.name.clone(),
            uuid: xml.uuid.clone().unwrap_or_default(),
            state: state_to_pb(state) as i32,
            started_at_unix: if state.is_active() {
                self.started_at(name)
            } else {
                0
            },
            vcpus: xml.vcpu.count,
            memory_mib: xml.memory.as_mib(),
            disks,
            nics,
            display,
            video_model: xml
                .devices
                .videos
                .first()
                .map(|v| v.model.kind.clone())
                .unwrap_or_default(),
            labels: meta
                .labels
                .iter()
                .map(|l| (l.key.clone(), l.value.clone()))
                .collect(),
            kind: kind as i32,
            base: meta.base.clone().unwrap_or_default(),
            locked: meta.locked,
            has_managed_save: state == DomState::Hibernated,
            owner: meta.owner.clone().unwrap_or_default(),
            kernel_boot: xml.os.kernel.as_ref().map(|k| pb::KernelBoot {
                kernel: k.clone(),
                initrd: xml.os.initrd.clone().unwrap_or_default(),
                cmdline: xml.os.cmdline.clone().unwrap_or_default(),
            }),
        })
    }

    /// Whether a running domain's definition asks for other memory or vCPUs than it has.
    fn needs_restart(&self, name: &str, live: &DomainXml) -> Result<bool> {
        let config = self.read_definition(name)?;
        let has = |x: &DomainXml| x.current_memory.as_ref().unwrap_or(&x.memory).as_mib();
        Ok(config.vcpu.count != live.vcpu.count || has(&config) != has(live))
    }

    pub fn list(&self, labels: &HashMap<String, String>) -> Result<Vec<pb::Domain>> {
        for (k, v) in labels {
            validate::label(k, v)?;
        }
        let mut out = Vec::new();
        for name in self.hv.names()? {
            match self.view(&name) {
                Ok(d) if labels.iter().all(|(k, v)| d.labels.get(k) == Some(v)) => out.push(d),
                Ok(_) | Err(AgentError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn require_state(&self, name: &str, ok: &[DomState], action: &str) -> Result<DomState> {
        validate::name("domain", name)?;
        let s = self.hv.state(name)?;
        if ok.contains(&s) {
            return Ok(s);
        }
        Err(AgentError::precondition(format!(
            "cannot {action} domain {name:?}: it is {}",
            s.as_str()
        )))
    }

    pub fn start(&self, name: &str) -> Result<pb::Domain> {
        let _busy = self.busy(name)?;
        self.require_state(
            name,
            &[DomState::ShutOff, DomState::Hibernated, DomState::Crashed],
            "start",
        )?;
        let xml = self.read_domain(name)?;
        if xml.meta().is_some_and(|m| m.locked) {
            return Err(AgentError::precondition(format!(
                "domain {name:?} is a base and bases are locked: clone it, or remove the base to start it"
            )));
        }
        self.hv.start(name)?;
        self.note_started(name, Some(now_unix()));
        tracing::info!(domain = %name, "started");
        self.view(name)
    }

    /// ACPI shutdown; forced power-off after `timeout`.
    pub fn shutdown(&self, name: &str, timeout: Duration) -> Result<pb::Domain> {
        let _busy = self.busy(name)?;
        self.require_state(name, &[DomState::Running, DomState::Blocked], "shut down")?;
        self.hv.shutdown(name)?;
        let deadline = Instant::now() + timeout;
        loop {
            if !self.hv.state(name)?.is_active() {
                tracing::info!(domain = %name, "shut down by the guest");
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(domain = %name, ?timeout, "guest did not shut down in time, powering off");
                match self.hv.destroy(name) {
                    Ok(()) | Err(AgentError::FailedPrecondition(_)) => {}
                    Err(e) => return Err(e),
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.note_started(name, None);
        self.view(name)
    }

    pub fn power_off(&self, name: &str) -> Result<pb::Domain> {
        let _busy = self.busy(name)?;
        self.require_state(
            name,
            &[
                DomState::Running,
                DomState::Paused,
                DomState::Blocked,
                DomState::ShuttingDown,
                DomState::PmSuspended,
            ],
            "power off",
        )?;
        self.hv.destroy(name)?;
        self.note_started(name, None);
        self.view(name)
    }

    pub fn reset(&self, name: &str) -> Result<pb::Domain> {
        let _busy = self.busy(name)?;
        self.require_state(name, &[DomState::Running, DomState::Blocked], "reset")?;
        self.hv.reset(name)?;
        self.view(name)
    }

    pub fn reboot(&self, name: &str) -> Result<pb::Domain> {
        let _busy = self.busy(name)?;
        self.require_state(name, &[DomState::Running, DomState::Blocked], "reboot")?;
        self.hv.reboot(name)?;
        self.view(name)
    }

    /// Started with the host, or not. Bases never start.
    pub fn set_autostart(&self, name: &str, on: bool) -> Result<pb::Domain> {
        validate::name("domain", name)?;
        let _busy = self.busy(name)?;
        if on && self.read_definition(name)?.meta().is_some_and(|m| m.locked) {
            return Err(AgentError::precondition(format!(
                "domain {name:?} is a base: bases never start"
            )));
        }
        self.hv.set_autostart(name, on)?;
        self.view(name)
    }

    /// New memory and vCPUs in the definition; applied to a running guest where libvirt can
    /// (the view says `needs_restart` where it could not).
    pub fn set_resources(&self, name: &str, memory_mib: u64, vcpus: u32) -> Result<pb::Domain> {
        validate::name("domain", name)?;
        if memory_mib == 0 && vcpus == 0 {
            return Err(AgentError::invalid(
                "give new memory or vCPUs (0 keeps a value)",
            ));
        }
        // The same bounds as a definition's.
        if memory_mib > 0 {
            corral_proto::rules::memory_mib(memory_mib)?;
        }
        if vcpus > 0 {
            corral_proto::rules::vcpus(vcpus)?;
        }
        let _busy = self.busy(name)?;
        let mut xml = self.read_definition(name)?;
        if xml.meta().is_some_and(|m| m.locked) {
            return Err(AgentError::precondition(format!(
                "domain {name:?} is a base: its clones take memory and vCPU overrides instead"
            )));
        }
        if memory_mib > 0 {
            xml.memory = crate::domain_xml::Memory::mib(memory_mib);
            xml.current_memory = None;
        }
        if vcpus > 0 {
            xml.vcpu.count = vcpus;
        }
        self.forget_definition(name);
        self.hv.define(&xml.to_xml()?)?;
        if self.hv.state(name)?.is_active() {
            // Best effort: what QEMU refuses waits for the next boot (needs_restart).
            if memory_mib > 0 {
                if let Err(e) = self.hv.set_live_memory(name, memory_mib * 1024) {
                    tracing::info!(domain = %name, error = %e, "memory applies at the next boot");
                }
            }
            if vcpus > 0 {
                if let Err(e) = self.hv.set_live_vcpus(name, vcpus) {
                    tracing::info!(domain = %name, error = %e, "vCPUs apply at the next boot");
                }
            }
        }
        tracing::info!(domain = %name, memory_mib, vcpus, "resources changed");
        self.view(name)
    }

    pub fn suspend(&self, name: &str) -> Result<pb::Domain> {
        let _busy = self.busy(name)?;
        self.require_state(name, &[DomState::Running, DomState::Blocked], "suspend")?;
        self.hv.suspend(name)?;
        self.view(name)
    }

    pub fn resume(&self, name: &str) -> Result<pb::Domain> {
        let _busy = self.busy(name)?;
        self.require_state(name, &[DomState::Paused], "resume")?;
        self.hv.resume(name)?;
        self.view(name)
    }

    pub fn hibernate(&self, name: &str) -> Result<pb::Domain> {
        let _busy = self.busy(name)?;
        self.require_state(
            name,
            &[DomState::Running, DomState::Paused, DomState::Blocked],
            "hibernate",
        )?;
        self.hv.managed_save(name)?;
        self.note_started(name, None);
        self.view(name)
    }

    /// A PNG of the domain's screen.
    pub fn screenshot(&self, name: &str) -> Result<pb::Screenshot> {
        self.require_state(
            name,
            &[DomState::Running, DomState::Paused, DomState::Blocked],
            "take a screenshot of",
        )?;
        let (mime, data) = self.hv.screenshot(name)?;
        let (png, width, height) = crate::screenshot::to_png(&mime, &data)?;
        Ok(pb::Screenshot { png, width, height })
    }

    pub fn display(&self, name: &str) -> Result<pb::DisplayInfo> {
        validate::name("domain", name)?;
        let xml = DomainXml::parse(&self.hv.xml(name, true, false)?)?;
        let state = self.hv.state(name)?;
        let g =
            xml.devices.graphics.first().ok_or_else(|| {
                AgentError::precondition(format!("domain {name:?} has no display"))
            })?;
        if !state.is_active() {
            return Err(AgentError::precondition(format!(
                "domain {name:?} is {}: its display exists only while it runs",
                state.as_str()
            )));
        }
        let host = match g.listen.as_deref() {
            None | Some("0.0.0.0") | Some("::") | Some("") => self.cfg.host_address.to_string(),
            Some(l) => l.to_string(),
        };
        let port = g.port.unwrap_or(0);
        let tls_port = g.tls_port.unwrap_or(0).max(0);
        let password = g.passwd.clone().unwrap_or_default();
        let tls = self.spice.get_or_init(|| {
            crate::spice::load(&self.cfg.spice_tls_dir).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "SPICE displays without TLS");
                None
            })
        });
        let vv = crate::spice::Vv {
            kind: &g.kind,
            host: &host,
            port,
            tls_port: if tls.is_some() { tls_port } else { 0 },
            password: &password,
            title: name,
        };
        Ok(pb::DisplayInfo {
            r#type: display_type(&g.kind) as i32,
            remote_viewer_file: crate::spice::vv_file(&vv, tls.as_ref()),
            tls_port: vv.tls_port,
            host,
            port,
            password,
        })
    }

    pub fn domain_xml(&self, name: &str) -> Result<String> {
        validate::name("domain", name)?;
        self.hv.xml(name, false, false)
    }

    /// Removes a domain (stopping it first), its ports, and optionally its volumes.
    pub fn remove(&self, name: &str, remove_volumes: bool) -> Result<Vec<String>> {
        let _busy = self.busy(name)?;
        let xml = self.read_definition(name)?;
        let meta = xml
            .meta()
            .cloned()
            .unwrap_or_else(|| CorralMeta::new(Kind::Plain));
        if meta.kind == Kind::Base {
            let clones = self.clones_of(name)?;
            if !clones.is_empty() {
                return Err(AgentError::precondition(format!(
                    "domain {name:?} is a base with {} clone(s) ({}): remove them first",
                    clones.len(),
                    clones.join(", ")
                )));
            }
        }
        if self.hv.state(name)?.is_active() {
            self.hv.destroy(name)?;
        }
        self.forget_definition(name);
        self.hv.undefine(name)?;
        self.note_started(name, None);
        self.forget_ports(name)?;
        // The definition is gone: what other domains and bases still claim is kept. The
        // claims are read only when a file may be deleted.
        let deletes = remove_volumes || (meta.kind == Kind::Base && meta.prepared.is_some());
        let claims = if deletes {
            self.claims()?
        } else {
            Claims::default()
        };
        let mut removed = Vec::new();
        if let Some(prepared) = meta.prepared.as_ref().filter(|_| meta.kind == Kind::Base) {
            for f in prepared.files.iter().filter(|f| !f.file.is_empty()) {
                let Ok(p) = self.storage.path(&f.file) else {
                    continue;
                };
                match self.may_change(&claims, &f.file, &p, Actor::Base(name), Change::Delete) {
                    Ok(()) if std::fs::remove_file(&p).is_ok() => removed.push(f.file.clone()),
                    Ok(()) => {}
                    Err(e) => tracing::warn!(domain = %name, error = %e, "base file kept"),
                }
            }
            let _ = std::fs::remove_file(self.template_path(name));
        }
        if remove_volumes {
            for d in xml.devices.disks.iter().filter(|d| d.readonly.is_none()) {
                let Some(top) = d.source.as_ref().and_then(|s| s.file.as_ref()) else {
                    continue;
                };
                removed.extend(self.remove_chain(&claims, name, Path::new(top))?);
            }
            for d in &meta.detached {
                let Ok(top) = self.storage.path(&d.volume) else {
                    continue;
                };
                removed.extend(self.remove_chain(&claims, name, &top)?);
            }
        }
        tracing::info!(domain = %name, removed = ?removed, "removed");
        Ok(removed)
    }
}

impl Agent {
    /// Deletes a removed domain's volume and the files below it that are its own (left by
    /// external snapshots): inside the storage root, named after the domain for the files
    /// below the top, and owned by it (not a base file, used by no other domain, backing no
    /// other volume). What it does not own is kept, with a warning.
    fn remove_chain(&self, claims: &Claims, domain: &str, top: &Path) -> Result<Vec<String>> {
        let chain: Vec<std::path::PathBuf> = match self.images.info(top) {
            Ok(c) => c
                .iter()
                .map(|i| std::path::PathBuf::from(&i.filename))
                .collect(),
            Err(_) => vec![top.to_path_buf()],
        };
        let mut removed = Vec::new();
        for (depth, path) in chain.iter().enumerate() {
            let Some(vol) = self.storage.name_of(path) else {
                continue;
            };
            if depth > 0 {
                let own = vol.starts_with(&format!("{domain}-"));
                let readonly = std::fs::metadata(path).map_or(true, |m| m.permissions().readonly());
                if !own || readonly {
                    continue;
                }
            }
            if let Err(e) =
                self.may_change(claims, &vol, path, Actor::Domain(domain), Change::Delete)
            {
                tracing::warn!(%domain, error = %e, "volume kept");
                // Nothing below a kept file is this domain's to delete either.
                break;
            }
            if std::fs::remove_file(path).is_ok() {
                removed.push(vol);
            }
        }
        Ok(removed)
    }
}

/// A network card as Corral shows it, with the addresses the guest holds (by MAC).
fn nic_view(i: &crate::domain_xml::Interface, addresses: &HashMap<String, Vec<String>>) -> pb::Nic {
    let mac = i
        .mac
        .as_ref()
        .map(|m| m.address.to_lowercase())
        .unwrap_or_default();
    pb::Nic {
        network: i
            .source
            .as_ref()
            .and_then(|s| s.network.clone())
            .unwrap_or_default(),
        addresses: addresses.get(&mac).cloned().unwrap_or_default(),
        mac,
        model: i.model.as_ref().map(|m| m.kind.clone()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_targets() {
        assert_eq!(role_from_pb(0).unwrap(), crate::domain_xml::Role::System);
        assert_eq!(role_from_pb(4).unwrap(), crate::domain_xml::Role::Data);
        assert!(role_from_pb(42)
            .unwrap_err()
            .to_string()
            .contains("unknown volume role"));
        assert_eq!(target_name(0).unwrap(), "vda");
        assert_eq!(target_name(25).unwrap(), "vdz");
        assert!(target_name(26).is_err());
        let mac = random_mac();
        validate::mac(&mac).unwrap();
        assert_eq!(random_password().len(), 8);
    }
}
