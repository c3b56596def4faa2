//! Domains and snapshots through libvirt, behind the [`Hypervisor`] trait.
//!
//! All methods block; the API layer calls them from `spawn_blocking`. libvirt errors are
//! mapped to [`AgentError`] categories by their libvirt error code, keeping libvirt's text.

use std::net::Ipv4Addr;
use std::sync::{Mutex, RwLock};

use tokio::sync::broadcast;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::domain_snapshot::DomainSnapshot;
use virt::enumutil::Enum;
use virt::error::ErrorNumber;
use virt::sys;

use crate::error::{AgentError, Result};
use crate::events::{self, RawEvent};

/// A domain's lifecycle state, as Corral names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomState {
    Running,
    Paused,
    ShutOff,
    Hibernated,
    Crashed,
    ShuttingDown,
    Blocked,
    PmSuspended,
}

impl DomState {
    /// The domain has a running QEMU process.
    pub fn is_active(self) -> bool {
        !matches!(self, Self::ShutOff | Self::Hibernated | Self::Crashed)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::ShutOff => "shut off",
            Self::Hibernated => "hibernated",
            Self::Crashed => "crashed",
            Self::ShuttingDown => "shutting down",
            Self::Blocked => "blocked",
            Self::PmSuspended => "pm-suspended",
        }
    }
}

/// Facts about the host from libvirt.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub hostname: String,
    pub cpus: u32,
    pub memory_total: u64,
    pub memory_free: u64,
    pub libvirt_version: String,
    pub hypervisor_version: String,
}

/// What the domains of a host use: counted from libvirt's domain info, without reading any
/// domain's XML (heartbeats ask for it every few seconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub defined: u32,
    pub running: u32,
    /// vCPUs and memory (bytes) of the running domains.
    pub vcpus: u32,
    pub memory: u64,
}

/// A snapshot and its place in the tree.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFacts {
    pub name: String,
    pub parent: Option<String>,
    pub children: Vec<String>,
    pub is_current: bool,
    pub has_metadata: bool,
    pub xml: String,
}

/// The libvirt operations the agent needs. Blocking: call from a blocking thread.
pub trait Hypervisor: Send + Sync {
    fn uri(&self) -> String;
    fn host(&self) -> Result<HostFacts>;
    fn define(&self, xml: &str) -> Result<()>;
    /// Domain XML; `secure` includes passwords, `inactive` gives the persistent definition.
    fn xml(&self, name: &str, secure: bool, inactive: bool) -> Result<String>;
    fn names(&self) -> Result<Vec<String>>;
    fn usage(&self) -> Result<Usage>;
    fn state(&self, name: &str) -> Result<DomState>;
    fn start(&self, name: &str) -> Result<()>;
    fn shutdown(&self, name: &str) -> Result<()>;
    fn destroy(&self, name: &str) -> Result<()>;
    fn reset(&self, name: &str) -> Result<()>;
    fn suspend(&self, name: &str) -> Result<()>;
    fn resume(&self, name: &str) -> Result<()>;
    fn managed_save(&self, name: &str) -> Result<()>;
    /// Asks the guest to reboot (ACPI).
    fn reboot(&self, name: &str) -> Result<()>;
    /// Sends one QEMU guest agent command (JSON) and returns the agent's JSON answer.
    fn guest_command(&self, name: &str, json: &str, timeout_s: i32) -> Result<String>;
    /// Display clients of a domain now, and when one last came or went.
    fn display_seen(&self, _name: &str) -> events::Seen {
        events::Seen::default()
    }
    fn autostart(&self, name: &str) -> Result<bool>;
    fn set_autostart(&self, name: &str, on: bool) -> Result<()>;
    /// Changes a running guest's memory (balloon, KiB) or vCPUs; fails where QEMU cannot.
    fn set_live_memory(&self, name: &str, kib: u64) -> Result<()>;
    fn set_live_vcpus(&self, name: &str, vcpus: u32) -> Result<()>;
    /// Undefines the domain with its snapshot metadata and managed-save image.
    fn undefine(&self, name: &str) -> Result<()>;
    /// The running definition as a migration target must receive it.
    fn migratable_xml(&self, name: &str) -> Result<String>;
    /// Live-migrates a running domain to the libvirt at `dest_uri` (peer to peer), with
    /// `dest_xml` as its definition there, copying the top layer of its disks; the domain is
    /// persistent there and undefined here afterwards.
    fn migrate(&self, name: &str, dest_uri: &str, dest_xml: &str, bandwidth_mib: u64)
        -> Result<()>;
    /// Aborts the domain's running job (a migration): the domain stays where it was.
    fn abort_job(&self, name: &str) -> Result<()>;
    /// Replaces Corral's metadata element (persistent definition, and live when running).
    fn set_meta(&self, name: &str, element_xml: &str) -> Result<()>;
    /// Adds a device to the persistent definition, and to the running guest when `live`.
    fn attach_device(&self, name: &str, device_xml: &str, live: bool) -> Result<()>;
    /// Detaches a device from the definition (and the running guest when `live`).
    fn detach_device(&self, name: &str, device_xml: &str, live: bool) -> Result<()>;
    /// Grows a running guest's disk (its target, e.g. `vdb`) to `bytes`.
    fn block_resize(&self, name: &str, target: &str, bytes: u64) -> Result<()>;
    /// Changes a device in place: in the running guest (`live`) or in the definition.
    fn update_device(&self, name: &str, device_xml: &str, live: bool) -> Result<()>;
    /// (MIME type, bytes) of the first screen.
    fn screenshot(&self, name: &str) -> Result<(String, Vec<u8>)>;
    /// IPv4 addresses by MAC, from the network's DHCP leases.
    fn addresses(&self, name: &str) -> Result<Vec<(String, Ipv4Addr)>>;
    fn snapshot_create(&self, domain: &str, xml: &str, flags: u32) -> Result<String>;
    fn snapshot_names(&self, domain: &str, flags: u32) -> Result<Vec<String>>;
    fn snapshot(&self, domain: &str, name: &str) -> Result<SnapshotFacts>;
    /// Children of a snapshot; `flags` as for libvirt's list (DESCENDANTS for all levels).
    fn snapshot_children(&self, domain: &str, name: &str, flags: u32) -> Result<Vec<String>>;
    fn snapshot_current(&self, domain: &str) -> Result<Option<String>>;
    fn snapshot_revert(&self, domain: &str, name: &str, flags: u32) -> Result<()>;
    fn snapshot_delete(&self, domain: &str, name: &str, flags: u32) -> Result<()>;
}

fn is_code(e: &virt::error::Error, code: ErrorNumber) -> bool {
    matches!(e.code(), Enum::Known(c) if c == code)
}

/// Maps a libvirt error to the category a caller acts on, with context.
pub fn map_err(context: &str, e: virt::error::Error) -> AgentError {
    let msg = format!("{context}: {}", e.message());
    let Enum::Known(code) = e.code() else {
        return AgentError::Internal(msg);
    };
    // libvirt reports a driver's missing flag support as an invalid argument.
    if e.message().contains("unsupported flags") {
        return AgentError::Unsupported(msg);
    }
    match code {
        ErrorNumber::NoDomain | ErrorNumber::NoDomainSnapshot | ErrorNumber::NoNetwork => {
            AgentError::NotFound(msg)
        }
        ErrorNumber::OperationInvalid => AgentError::FailedPrecondition(msg),
        ErrorNumber::InvalidArg | ErrorNumber::XmlError | ErrorNumber::XmlDetail => {
            AgentError::InvalidArgument(msg)
        }
        ErrorNumber::DomExist => AgentError::AlreadyExists(msg),
        ErrorNumber::NoSupport
        | ErrorNumber::OperationUnsupported
        | ErrorNumber::ConfigUnsupported
        | ErrorNumber::ArgumentUnsupported => AgentError::Unsupported(msg),
        ErrorNumber::NoConnect | ErrorNumber::InvalidConn | ErrorNumber::Rpc => {
            AgentError::Unavailable(msg)
        }
        ErrorNumber::OperationTimeout | ErrorNumber::AgentUnresponsive => {
            AgentError::DeadlineExceeded(msg)
        }
        _ => AgentError::Internal(msg),
    }
}

/// The real libvirt, through the `virt` crate.
pub struct Libvirt {
    uri: String,
    conn: RwLock<Connect>,
    /// Where lifecycle events go; re-registered on every new connection.
    events: Mutex<Option<broadcast::Sender<RawEvent>>>,
    /// Display clients per domain, from graphics events (registered with the events).
    displays: std::sync::Arc<events::Displays>,
}

impl std::fmt::Debug for Libvirt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libvirt").field("uri", &self.uri).finish()
    }
}

fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
}

fn poisoned<T>(_: T) -> AgentError {
    AgentError::internal("libvirt connection lock poisoned")
}

impl Libvirt {
    /// Opens a connection (and starts libvirt's event loop if not yet running).
    pub fn open(uri: &str) -> Result<Self> {
        events::init()?;
        let conn = Connect::open(Some(uri))
            .map_err(|e| map_err(&format!("cannot connect to libvirt at {uri}"), e))?;
        // Keepalive lets libvirt notice a dead daemon (remote drivers only).
        let _ = conn.set_keep_alive(5, 3);
        Ok(Self {
            uri: uri.into(),
            conn: RwLock::new(conn),
            events: Mutex::new(None),
            displays: std::sync::Arc::default(),
        })
    }

    /// Sends lifecycle events to `tx`, now and after every reconnection.
    pub fn watch_events(&self, tx: broadcast::Sender<RawEvent>) -> Result<()> {
        let conn = self.connection()?;
        events::register(&conn, tx.clone())?;
        // Drivers without graphics events (the test driver) have no display clients either.
        if let Err(e) = events::register_graphics(&conn, std::sync::Arc::clone(&self.displays)) {
            tracing::debug!(error = %e, "no graphics events");
        }
        *self.events.lock().map_err(poisoned)? = Some(tx);
        Ok(())
    }

    /// A handle on the connection, reconnecting once if libvirtd went away.
    pub fn connection(&self) -> Result<Connect> {
        {
            let guard = self.conn.read().map_err(poisoned)?;
            if guard.is_alive().unwrap_or(false) {
                return Ok(guard.clone());
            }
        }
        tracing::warn!(uri = %self.uri, "libvirt connection lost, reconnecting");
        let fresh = Connect::open(Some(&self.uri))
            .map_err(|e| map_err(&format!("cannot reconnect to libvirt at {}", self.uri), e))?;
        let _ = fresh.set_keep_alive(5, 3);
        if let Some(tx) = self.events.lock().map_err(poisoned)?.clone() {
            events::register(&fresh, tx)?;
            let _ = events::register_graphics(&fresh, std::sync::Arc::clone(&self.displays));
        }
        *self.conn.write().map_err(poisoned)? = fresh.clone();
        Ok(fresh)
    }

    fn dom(&self, name: &str) -> Result<Domain> {
        let conn = self.connection()?;
        conn.lookup_domain_by_name(name)
            .map_err(|e| map_err(&format!("domain {name:?}"), e))
    }

    fn snap(&self, domain: &str, name: &str) -> Result<DomainSnapshot> {
        let dom = self.dom(domain)?;
        Domain::lookup_snapshot_by_name(&dom, name, 0)
            .map_err(|e| map_err(&format!("snapshot {name:?} of domain {domain:?}"), e))
    }

    fn act(
        &self,
        name: &str,
        what: &str,
        f: impl FnOnce(&Domain) -> std::result::Result<(), virt::error::Error>,
    ) -> Result<()> {
        let dom = self.dom(name)?;
        f(&dom).map_err(|e| map_err(&format!("{what} domain {name:?}"), e))
    }
}

impl Hypervisor for Libvirt {
    fn uri(&self) -> String {
        self.uri.clone()
    }

    fn host(&self) -> Result<HostFacts> {
        let conn = self.connection()?;
        let node = conn.node_info().map_err(|e| map_err("node info", e))?;
        Ok(HostFacts {
            hostname: conn.hostname().unwrap_or_default(),
            cpus: node.cpus,
            memory_total: node.memory << 10,
            memory_free: conn.free_memory().unwrap_or(0),
            libvirt_version: conn.lib_version().map(version_string).unwrap_or_default(),
            hypervisor_version: conn.hyp_version().map(version_string).unwrap_or_default(),
        })
    }

    fn define(&self, xml: &str) -> Result<()> {
        let conn = self.connection()?;
        conn.define_domain_xml(xml)
            .map_err(|e| map_err("define domain", e))?;
        Ok(())
    }

    fn xml(&self, name: &str, secure: bool, inactive: bool) -> Result<String> {
        let mut flags = 0;
        if secure {
            flags |= sys::VIR_DOMAIN_XML_SECURE;
        }
        if inactive {
            flags |= sys::VIR_DOMAIN_XML_INACTIVE;
        }
        self.dom(name)?
            .xml_desc(flags)
            .map_err(|e| map_err(&format!("XML of domain {name:?}"), e))
    }

    fn migratable_xml(&self, name: &str) -> Result<String> {
        self.dom(name)?
            .xml_desc(sys::VIR_DOMAIN_XML_SECURE | sys::VIR_DOMAIN_XML_MIGRATABLE)
            .map_err(|e| map_err(&format!("XML of domain {name:?}"), e))
    }

    fn names(&self) -> Result<Vec<String>> {
        let conn = self.connection()?;
        let doms = conn
            .list_all_domains(0)
            .map_err(|e| map_err("list domains", e))?;
        let mut names: Vec<String> = doms.iter().filter_map(|d| d.name().ok()).collect();
        names.sort();
        Ok(names)
    }

    fn usage(&self) -> Result<Usage> {
        let conn = self.connection()?;
        let all = conn
            .list_all_domains(0)
            .map_err(|e| map_err("list domains", e))?;
        let mut u = Usage {
            defined: u32::try_from(all.len()).unwrap_or(u32::MAX),
            ..Usage::default()
        };
        for d in all.iter().filter(|d| d.is_active().unwrap_or(false)) {
            if let Ok(info) = d.info() {
                u.running += 1;
                u.vcpus += info.nr_virt_cpu;
                u.memory += info.max_mem << 10;
            }
        }
        Ok(u)
    }

    fn state(&self, name: &str) -> Result<DomState> {
        use virt::domain::DomainState as S;
        let dom = self.dom(name)?;
        let (state, _reason) = dom
            .state()
            .map_err(|e| map_err(&format!("state of domain {name:?}"), e))?;
        Ok(match state {
            Enum::Known(S::Running) => DomState::Running,
            Enum::Known(S::Blocked) => DomState::Blocked,
            Enum::Known(S::Paused) => DomState::Paused,
            Enum::Known(S::Shutdown) => DomState::ShuttingDown,
            Enum::Known(S::Crashed) => DomState::Crashed,
            Enum::Known(S::PMSuspended) => DomState::PmSuspended,
            _ => {
                if dom.has_managed_save(0).unwrap_or(false) {
                    DomState::Hibernated
                } else {
                    DomState::ShutOff
                }
            }
        })
    }

    fn start(&self, name: &str) -> Result<()> {
        self.act(name, "start", |d| d.create().map(|_| ()))
    }

    fn shutdown(&self, name: &str) -> Result<()> {
        self.act(name, "shut down", |d| d.shutdown().map(|_| ()))
    }

    fn destroy(&self, name: &str) -> Result<()> {
        self.act(name, "power off", |d| d.destroy().map(|_| ()))
    }

    fn reset(&self, name: &str) -> Result<()> {
        self.act(name, "reset", |d| d.reset().map(|_| ()))
    }

    fn suspend(&self, name: &str) -> Result<()> {
        self.act(name, "suspend", |d| d.suspend().map(|_| ()))
    }

    fn resume(&self, name: &str) -> Result<()> {
        self.act(name, "resume", |d| d.resume().map(|_| ()))
    }

    fn managed_save(&self, name: &str) -> Result<()> {
        self.act(name, "hibernate", |d| d.managed_save(0).map(|_| ()))
    }

    fn display_seen(&self, name: &str) -> events::Seen {
        let seen = self.displays.seen(name);
        // A domain that is not running has no clients, whatever was last heard.
        if self.state(name).is_ok_and(|s| !s.is_active()) {
            self.displays.stopped(name);
            return events::Seen { clients: 0, ..seen };
        }
        seen
    }

    fn reboot(&self, name: &str) -> Result<()> {
        self.act(name, "reboot", |d| d.reboot(0))
    }

    fn guest_command(&self, name: &str, json: &str, timeout_s: i32) -> Result<String> {
        let dom = self.dom(name)?;
        dom.qemu_agent_command(json, timeout_s, 0).map_err(|e| {
            let msg = format!("guest agent of domain {name:?}: {}", e.message());
            match e.code() {
                Enum::Known(
                    ErrorNumber::AgentUnresponsive
                    | ErrorNumber::AgentUnsynced
                    | ErrorNumber::OperationInvalid,
                ) => AgentError::FailedPrecondition(msg),
                Enum::Known(ErrorNumber::AgentCommandTimeout | ErrorNumber::OperationTimeout) => {
                    AgentError::DeadlineExceeded(msg)
                }
                // The command ran and failed in the guest (no such file, ...).
                Enum::Known(ErrorNumber::AgentCommandFailed | ErrorNumber::InternalError) => {
                    AgentError::FailedPrecondition(msg)
                }
                _ => map_err(&format!("guest agent of domain {name:?}"), e),
            }
        })
    }

    fn autostart(&self, name: &str) -> Result<bool> {
        let dom = self.dom(name)?;
        dom.autostart()
            .map_err(|e| map_err(&format!("autostart of domain {name:?}"), e))
    }

    fn set_autostart(&self, name: &str, on: bool) -> Result<()> {
        self.act(name, "set autostart of", |d| d.set_autostart(on))
    }

    fn set_live_memory(&self, name: &str, kib: u64) -> Result<()> {
        self.act(name, "change the memory of", |d| {
            d.set_memory_flags(kib, sys::VIR_DOMAIN_AFFECT_LIVE)
        })
    }

    fn set_live_vcpus(&self, name: &str, vcpus: u32) -> Result<()> {
        self.act(name, "change the vCPUs of", |d| {
            d.set_vcpus_flags(vcpus, sys::VIR_DOMAIN_AFFECT_LIVE)
        })
    }

    fn undefine(&self, name: &str) -> Result<()> {
        let flags =
            sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE;
        self.act(name, "undefine", |d| d.undefine_flags(flags).map(|_| ()))
    }

    fn migrate(
        &self,
        name: &str,
        dest_uri: &str,
        dest_xml: &str,
        bandwidth_mib: u64,
    ) -> Result<()> {
        let flags = sys::VIR_MIGRATE_LIVE
            | sys::VIR_MIGRATE_PEER2PEER
            | sys::VIR_MIGRATE_PERSIST_DEST
            | sys::VIR_MIGRATE_UNDEFINE_SOURCE
            | sys::VIR_MIGRATE_NON_SHARED_INC;
        self.act(name, "migrate", |d| {
            d.migrate_to_uri2(
                Some(dest_uri),
                None,
                Some(dest_xml),
                flags,
                None,
                bandwidth_mib,
            )
        })
    }

    // The `virt` crate does not wrap virDomainAbortJob: one call through its own pointer.
    #[allow(unsafe_code)]
    fn abort_job(&self, name: &str) -> Result<()> {
        let dom = self.dom(name)?;
        // SAFETY: `dom` owns a valid virDomainPtr for the duration of the call.
        let rc = unsafe { sys::virDomainAbortJob(dom.as_ptr()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(map_err(
                &format!("abort the job of domain {name:?}"),
                virt::error::Error::last_error(),
            ))
        }
    }

    fn set_meta(&self, name: &str, element_xml: &str) -> Result<()> {
        let dom = self.dom(name)?;
        let mut flags = sys::VIR_DOMAIN_AFFECT_CONFIG;
        if dom.is_active().unwrap_or(false) {
            flags |= sys::VIR_DOMAIN_AFFECT_LIVE;
        }
        dom.set_metadata(
            sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(element_xml),
            Some("corral"),
            Some(crate::domain_xml::NAMESPACE),
            flags,
        )
        .map_err(|e| map_err(&format!("update metadata of domain {name:?}"), e))?;
        Ok(())
    }

    fn attach_device(&self, name: &str, device_xml: &str, live: bool) -> Result<()> {
        let flags = if live {
            sys::VIR_DOMAIN_AFFECT_CONFIG | sys::VIR_DOMAIN_AFFECT_LIVE
        } else {
            sys::VIR_DOMAIN_AFFECT_CONFIG
        };
        self.act(name, "attach a device to", |d| {
            d.attach_device_flags(device_xml, flags).map(|_| ())
        })
    }

    fn detach_device(&self, name: &str, device_xml: &str, live: bool) -> Result<()> {
        let flags = if live {
            sys::VIR_DOMAIN_AFFECT_CONFIG | sys::VIR_DOMAIN_AFFECT_LIVE
        } else {
            sys::VIR_DOMAIN_AFFECT_CONFIG
        };
        self.act(name, "detach a device from", |d| {
            d.detach_device_flags(device_xml, flags).map(|_| ())
        })
    }

    fn block_resize(&self, name: &str, target: &str, bytes: u64) -> Result<()> {
        self.act(name, "resize a disk of", |d| {
            d.block_resize(target, bytes, sys::VIR_DOMAIN_BLOCK_RESIZE_BYTES)
                .map(|_| ())
        })
    }

    fn update_device(&self, name: &str, device_xml: &str, live: bool) -> Result<()> {
        let flags = if live {
            sys::VIR_DOMAIN_AFFECT_LIVE
        } else {
            sys::VIR_DOMAIN_AFFECT_CONFIG
        };
        self.act(name, "update a device of", |d| {
            d.update_device_flags(device_xml, flags).map(|_| ())
        })
    }

    fn screenshot(&self, name: &str) -> Result<(String, Vec<u8>)> {
        let conn = self.connection()?;
        let dom = self.dom(name)?;
        let stream = virt::stream::Stream::new(&conn, 0).map_err(|e| map_err("stream", e))?;
        let mime = dom
            .screenshot(&stream, 0, 0)
            .map_err(|e| map_err(&format!("screenshot of domain {name:?}"), e))?;
        let mut data = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stream
                .recv(&mut buf)
                .map_err(|e| map_err("read screenshot", e))?;
            let Ok(n) = usize::try_from(n) else { break };
            if n == 0 {
                break;
            }
            data.extend_from_slice(&buf[..n]);
        }
        stream
            .finish()
            .map_err(|e| map_err("finish screenshot", e))?;
        Ok((mime, data))
    }

    fn addresses(&self, name: &str) -> Result<Vec<(String, Ipv4Addr)>> {
        let dom = self.dom(name)?;
        let ifaces = dom
            .interface_addresses(sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0)
            .map_err(|e| map_err(&format!("addresses of domain {name:?}"), e))?;
        let mut out = Vec::new();
        for iface in ifaces {
            let mac = iface.hwaddr.unwrap_or_default().to_lowercase();
            for a in iface.addrs {
                if let Ok(ip) = a.addr.parse::<Ipv4Addr>() {
                    out.push((mac.clone(), ip));
                }
            }
        }
        Ok(out)
    }

    fn snapshot_create(&self, domain: &str, xml: &str, flags: u32) -> Result<String> {
        let dom = self.dom(domain)?;
        let snap = dom
            .create_snapshot_xml(xml, flags)
            .map_err(|e| map_err(&format!("snapshot of domain {domain:?}"), e))?;
        snap.name().map_err(|e| map_err("snapshot name", e))
    }

    fn snapshot_names(&self, domain: &str, flags: u32) -> Result<Vec<String>> {
        let dom = self.dom(domain)?;
        let snaps = dom
            .list_all_snapshots(flags)
            .map_err(|e| map_err(&format!("snapshots of domain {domain:?}"), e))?;
        Ok(snaps.iter().filter_map(|s| s.name().ok()).collect())
    }

    fn snapshot(&self, domain: &str, name: &str) -> Result<SnapshotFacts> {
        let snap = self.snap(domain, name)?;
        let ctx = |what: &str| format!("{what} of snapshot {name:?} of domain {domain:?}");
        let parent = match snap.parent(0) {
            Ok(p) => Some(p.name().map_err(|e| map_err(&ctx("parent"), e))?),
            Err(e) if is_code(&e, ErrorNumber::NoDomainSnapshot) => None,
            Err(e) => return Err(map_err(&ctx("parent"), e)),
        };
        let children = snap
            .list_all_children(0)
            .map_err(|e| map_err(&ctx("children"), e))?
            .iter()
            .filter_map(|c| c.name().ok())
            .collect();
        Ok(SnapshotFacts {
            name: name.into(),
            parent,
            children,
            is_current: snap
                .is_current(0)
                .map_err(|e| map_err(&ctx("current"), e))?,
            has_metadata: snap
                .has_metadata(0)
                .map_err(|e| map_err(&ctx("metadata"), e))?,
            xml: snap.xml_desc(0).map_err(|e| map_err(&ctx("XML"), e))?,
        })
    }

    fn snapshot_children(&self, domain: &str, name: &str, flags: u32) -> Result<Vec<String>> {
        let snap = self.snap(domain, name)?;
        Ok(snap
            .list_all_children(flags)
            .map_err(|e| map_err(&format!("children of snapshot {name:?}"), e))?
            .iter()
            .filter_map(|c| c.name().ok())
            .collect())
    }

    fn snapshot_current(&self, domain: &str) -> Result<Option<String>> {
        let dom = self.dom(domain)?;
        match dom.current_snapshot(0) {
            Ok(s) => Ok(Some(s.name().map_err(|e| map_err("snapshot name", e))?)),
            Err(e) if is_code(&e, ErrorNumber::NoDomainSnapshot) => Ok(None),
            Err(e) => Err(map_err(
                &format!("current snapshot of domain {domain:?}"),
                e,
            )),
        }
    }

    fn snapshot_revert(&self, domain: &str, name: &str, flags: u32) -> Result<()> {
        self.snap(domain, name)?
            .revert(flags)
            .map_err(|e| map_err(&format!("revert domain {domain:?} to snapshot {name:?}"), e))
    }

    fn snapshot_delete(&self, domain: &str, name: &str, flags: u32) -> Result<()> {
        self.snap(domain, name)?
            .delete(flags)
            .map_err(|e| map_err(&format!("delete snapshot {name:?} of domain {domain:?}"), e))
    }
}
