//! The agent's shared state: configuration, the side-effect layers, and per-domain guards.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::config::Config;
use crate::error::{AgentError, Result};
use crate::events::RawEvent;
use crate::firewall::Firewall;
use crate::hypervisor::Hypervisor;
use crate::images::ImageTool;
use crate::ports::PortState;
use crate::storage::Storage;

/// Everything the agent's logic works with. Its methods block: the gRPC layer calls them
/// through [`Agent::blocking`].
pub struct Agent {
    pub cfg: Config,
    pub hv: Arc<dyn Hypervisor>,
    pub images: Arc<dyn ImageTool>,
    pub firewall: Arc<dyn Firewall>,
    pub storage: Storage,
    pub events: broadcast::Sender<RawEvent>,
    pub(crate) ports: Mutex<PortState>,
    busy: Mutex<HashSet<String>>,
    /// Some exposed port waits for its running guest's address (rules re-applied until it
    /// is known: a guest that came by live migration shows up in the ARP table later).
    pub(crate) ports_waiting: std::sync::atomic::AtomicBool,
    started: Mutex<HashMap<String, i64>>,
    /// Parsed persistent definitions of bases (locked, so they change only through this
    /// agent: every change forgets the entry, and so do libvirt's defined/undefined events).
    base_defs: Mutex<HashMap<String, crate::domain_xml::DomainXml>>,
    /// The host's SPICE TLS certificates, read once when a display is first asked for.
    pub(crate) spice: std::sync::OnceLock<Option<crate::spice::SpiceTls>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("cfg", &self.cfg).finish()
    }
}

/// Held while an operation changes a domain; a second operation on it is refused.
#[derive(Debug)]
pub struct Busy<'a> {
    agent: &'a Agent,
    name: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if let Ok(mut b) = self.agent.busy.lock() {
            b.remove(&self.name);
        }
    }
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) fn lock_err<T>(_: T) -> AgentError {
    AgentError::internal("internal lock poisoned")
}

impl Agent {
    pub fn new(
        cfg: Config,
        hv: Arc<dyn Hypervisor>,
        images: Arc<dyn ImageTool>,
        firewall: Arc<dyn Firewall>,
    ) -> Result<Self> {
        let storage = Storage::open(&cfg.storage_root)?;
        crate::fsx::create_dir_all(&cfg.state_dir)?;
        let ports = PortState::load(&cfg.state_dir)?;
        let (events, _) = broadcast::channel(1024);
        Ok(Self {
            cfg,
            hv,
            images,
            firewall,
            storage,
            events,
            ports: Mutex::new(ports),
            busy: Mutex::new(HashSet::new()),
            ports_waiting: std::sync::atomic::AtomicBool::new(false),
            started: Mutex::new(HashMap::new()),
            base_defs: Mutex::new(HashMap::new()),
            spice: std::sync::OnceLock::new(),
        })
    }

    /// Marks a domain busy for the lifetime of the returned guard.
    pub fn busy(&self, name: &str) -> Result<Busy<'_>> {
        self.claim(name, || {
            format!("domain {name:?} is busy with another operation; try again when it ends")
        })
    }

    /// Marks `key` busy (a domain, or e.g. `sync:VOLUME` for a volume being received) for
    /// the lifetime of the returned guard; `taken` says why not when it already is.
    pub(crate) fn claim(&self, key: &str, taken: impl FnOnce() -> String) -> Result<Busy<'_>> {
        let mut b = self.busy.lock().map_err(lock_err)?;
        if !b.insert(key.to_string()) {
            return Err(AgentError::precondition(taken()));
        }
        Ok(Busy {
            agent: self,
            name: key.to_string(),
        })
    }

    /// Runs blocking work (libvirt, qemu-img, iptables) off the async workers.
    pub async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Agent) -> Result<T> + Send + 'static,
    {
        let me = Arc::clone(self);
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| f(&me))).await?
    }

    /// A cached base definition.
    pub(crate) fn cached_definition(&self, name: &str) -> Option<crate::domain_xml::DomainXml> {
        self.base_defs.lock().ok()?.get(name).cloned()
    }

    pub(crate) fn cache_definition(&self, name: &str, xml: &crate::domain_xml::DomainXml) {
        if let Ok(mut m) = self.base_defs.lock() {
            m.insert(name.to_string(), xml.clone());
        }
    }

    /// Drops what is cached of a domain's definition; call before anything changes it.
    pub fn forget_definition(&self, name: &str) {
        if let Ok(mut m) = self.base_defs.lock() {
            m.remove(name);
        }
    }

    /// Records when a domain started (from lifecycle events or our own starts).
    pub fn note_started(&self, name: &str, at_unix: Option<i64>) {
        if let Ok(mut m) = self.started.lock() {
            match at_unix {
                Some(t) => {
                    m.insert(name.to_string(), t);
                }
                None => {
                    m.remove(name);
                }
            }
        }
    }

    /// When a running domain started: recorded time, else its QEMU pid file's time.
    pub fn started_at(&self, name: &str) -> i64 {
        if let Some(t) = self.started.lock().ok().and_then(|m| m.get(name).copied()) {
            return t;
        }
        let pid = std::path::Path::new("/run/libvirt/qemu").join(format!("{name}.pid"));
        std::fs::metadata(pid)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
}
