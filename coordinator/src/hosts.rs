//! Hosts: a connection to every agent, capacity by heartbeat, domain events by the agent's
//! event stream, and reconciliation on every (re)connection.
//!
//! A host's state is computed from silence when it is read: up when heard from within
//! `down_after`, down after that, unknown before the first answer. A down host's VMs show
//! an unknown state, not lost; it gets no new VMs; when it answers again its VMs' states are
//! read back from the agent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use corral_client::proto as pb;
use corral_client::AgentClient;

use crate::door::{AgentDoor, GrpcDoor};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use crate::db::Db;
use crate::error::{CoordError, Result};
use crate::observed::ObservedClock;
use crate::store::{now_ms, HostRecord, Store};

/// How long the coordinator waits for a quick agent call (an agent can stall without
/// closing its connection; tonic's per-request timeout is enforced by the server).
pub const AGENT_QUICK_CALL: std::time::Duration = std::time::Duration::from_secs(3);

/// What the coordinator knows about one host right now.
#[derive(Debug, Clone, Default)]
pub struct HostStatus {
    pub record: Option<HostRecord>,
    pub info: Option<pb::HostInfo>,
    /// When the agent last answered (ms since the epoch); 0 = never.
    pub last_seen_ms: i64,
    pub last_error: String,
    pub bases: BTreeSet<String>,
    /// When `info` was received (events also move `last_seen_ms`, not this).
    pub info_ms: i64,
}

/// Whether a host answers, as computed from its silence when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Never heard from since the coordinator started.
    Unknown,
    /// Heard from within `down_after`.
    Up,
    /// Silent for longer than `down_after`.
    Down,
}

/// Capacity promised to a clone; it counts until a heartbeat taken after its end arrives.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub id: u64,
    pub host: String,
    pub vcpus: u32,
    pub memory: u64,
    pub released_ms: Option<i64>,
}

struct Entry {
    status: HostStatus,
    /// The connection the host's own task uses (heartbeats, events, reconciliation).
    client: Option<AgentClient>,
    /// What the rest of the coordinator gets: the door to this host's agent.
    door: Option<Arc<dyn AgentDoor>>,
    task: Option<JoinHandle<()>>,
}

pub struct Hosts {
    db: Arc<Db>,
    observed: Arc<Mutex<ObservedClock>>,
    tls: Option<corral_client::TlsFiles>,
    heartbeat: Duration,
    down_after: Duration,
    /// By name: placement reads every host in this order, its placement ids.
    entries: RwLock<BTreeMap<String, Entry>>,
    /// Placement's compact copy of every host (taken under the entries' write lock, after
    /// every change): a decision reads it alone, not the entries.
    fleet: RwLock<Fleet>,
}

/// What placement reads of every host, in name order (a host's placement id is its index).
#[derive(Default)]
struct Fleet {
    /// A host came or went since it was taken: taken again before the next decision.
    stale: bool,
    names: Arc<Vec<String>>,
    index: HashMap<String, usize>,
    slots: Vec<Slot>,
}

/// One host as placement reads it: a few numbers side by side, so that a decision over ten
/// thousand hosts walks one small array instead of every host's whole status.
#[derive(Debug, Clone, Copy)]
struct Slot {
    last_seen_ms: i64,
    info_ms: i64,
    enabled: bool,
    cpus: u32,
    vcpus_running: u32,
    memory_total: u64,
    memory_running: u64,
    disk_free: u64,
    class: &'static str,
}

impl Slot {
    fn of(st: &HostStatus) -> Self {
        let none = pb::HostInfo::default();
        let info = st.info.as_ref().unwrap_or(&none);
        Self {
            last_seen_ms: st.last_seen_ms,
            info_ms: st.info_ms,
            enabled: st.record.as_ref().is_some_and(|r| r.enabled),
            cpus: info.cpus,
            vcpus_running: info.vcpus_running,
            memory_total: info.memory_total_bytes,
            memory_running: info.memory_running_bytes,
            disk_free: info.storage_free_bytes,
            class: match info.domain_type.as_str() {
                "" => "",
                "test" => "test",
                _ => "qemu",
            },
        }
    }
}

impl std::fmt::Debug for Hosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hosts")
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
}

fn poisoned<T>(_: T) -> CoordError {
    CoordError::Internal("hosts lock poisoned".into())
}

/// An error and its causes in one line ("transport error: ... : certificate unknown").
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

impl Hosts {
    pub fn new(
        db: Arc<Db>,
        heartbeat: Duration,
        down_after: Duration,
        tls: Option<corral_client::TlsFiles>,
    ) -> Arc<Self> {
        Arc::new(Self {
            db,
            observed: Arc::default(),
            tls,
            heartbeat,
            down_after,
            entries: RwLock::new(BTreeMap::new()),
            fleet: RwLock::new(Fleet {
                stale: true,
                ..Fleet::default()
            }),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> crate::store::Result<T> + Send + 'static,
    ) -> Result<T> {
        Ok(self.db.call(f).await?)
    }

    /// Starts watching every host in the store.
    pub async fn load(self: &Arc<Self>) -> Result<()> {
        for h in self.blocking(|s| s.hosts()).await? {
            self.watch(h)?;
        }
        Ok(())
    }

    fn watch(self: &Arc<Self>, record: HostRecord) -> Result<()> {
        let name = record.name.clone();
        let mut entries = self.entries.write().map_err(poisoned)?;
        if let Some(old) = entries.remove(&name) {
            if let Some(t) = old.task {
                t.abort();
            }
        }
        let me = Arc::clone(self);
        let n = name.clone();
        let task = tokio::spawn(async move { me.run(n).await });
        entries.insert(
            name,
            Entry {
                status: HostStatus {
                    record: Some(record),
                    ..Default::default()
                },
                client: None,
                door: None,
                task: Some(task),
            },
        );
        self.hosts_changed();
        Ok(())
    }

    pub async fn add(self: &Arc<Self>, name: &str, address: &str) -> Result<()> {
        crate::names::check_name("host", name)?;
        let address = crate::names::agent_address(address)?;
        if self.entries.read().map_err(poisoned)?.contains_key(name) {
            return Err(CoordError::AlreadyExists(format!(
                "host {name} already exists"
            )));
        }
        let record = HostRecord {
            name: name.into(),
            address,
            enabled: true,
            last_seen_ms: 0,
        };
        let r = record.clone();
        self.blocking(move |s| s.insert_host(&r)).await?;
        self.watch(record)
    }

    pub async fn remove(&self, name: &str) -> Result<()> {
        crate::names::check_name("host", name)?;
        let n = name.to_string();
        let vms = self.blocking(move |s| s.vms_on(&n)).await?;
        let on_it: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
        if !on_it.is_empty() {
            return Err(CoordError::FailedPrecondition(format!(
                "host {name} still has {} VM(s) ({}): move or remove them first",
                on_it.len(),
                on_it.join(", ")
            )));
        }
        let n = name.to_string();
        self.blocking(move |s| s.remove_host(&n)).await?;
        let mut entries = self.entries.write().map_err(poisoned)?;
        if let Some(e) = entries.remove(name) {
            if let Some(t) = e.task {
                t.abort();
            }
        }
        self.hosts_changed();
        Ok(())
    }

    pub async fn set_enabled(&self, name: &str, enabled: bool) -> Result<()> {
        crate::names::check_name("host", name)?;
        let record = {
            let mut entries = self.entries.write().map_err(poisoned)?;
            let e = entries
                .get_mut(name)
                .ok_or_else(|| CoordError::NotFound(format!("host {name} not found")))?;
            let rec = e
                .status
                .record
                .as_mut()
                .ok_or_else(|| CoordError::Internal("host without record".into()))?;
            rec.enabled = enabled;
            let rec = rec.clone();
            self.reslot(name, &e.status);
            rec
        };
        self.blocking(move |s| s.put_host(&record)).await
    }

    /// A host came or went; called with the entries' write lock held.
    fn hosts_changed(&self) {
        self.fleet.write().unwrap_or_else(|p| p.into_inner()).stale = true;
    }

    /// A host's status changed; called with the entries' write lock held.
    fn reslot(&self, name: &str, status: &HostStatus) {
        let mut fleet = self.fleet.write().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = fleet.index.get(name).copied() {
            if let Some(slot) = fleet.slots.get_mut(i) {
                *slot = Slot::of(status);
            }
        }
    }

    /// Reads placement's copy of the fleet, taken again first when a host came or went.
    fn with_fleet<T>(&self, f: impl FnOnce(&Fleet) -> T) -> Result<T> {
        {
            let fleet = self.fleet.read().map_err(poisoned)?;
            if !fleet.stale {
                return Ok(f(&fleet));
            }
        }
        // The same order as every writer: the entries, then the copy.
        let entries = self.entries.read().map_err(poisoned)?;
        let mut fleet = self.fleet.write().map_err(poisoned)?;
        if fleet.stale {
            *fleet = Fleet {
                stale: false,
                names: Arc::new(entries.keys().cloned().collect()),
                index: entries
                    .keys()
                    .enumerate()
                    .map(|(i, n)| (n.clone(), i))
                    .collect(),
                slots: entries.values().map(|e| Slot::of(&e.status)).collect(),
            };
        }
        Ok(f(&fleet))
    }

    /// The host's state computed from its silence.
    pub fn state_of(&self, status: &HostStatus) -> Liveness {
        self.state_at(status, now_ms())
    }

    fn state_at(&self, status: &HostStatus, now: i64) -> Liveness {
        if status.last_seen_ms == 0 {
            Liveness::Unknown
        } else if now - status.last_seen_ms > self.down_after.as_millis() as i64 {
            Liveness::Down
        } else {
            Liveness::Up
        }
    }

    /// The oldest heartbeat answer among the hosts (ms since the epoch; 0 when none).
    pub fn oldest_info_ms(&self) -> Result<i64> {
        self.with_fleet(|f| f.slots.iter().map(|s| s.info_ms).min().unwrap_or(0))
    }

    pub fn statuses(&self) -> Result<Vec<(String, HostStatus, Liveness)>> {
        let entries = self.entries.read().map_err(poisoned)?;
        let mut out: Vec<_> = entries
            .iter()
            .map(|(n, e)| (n.clone(), e.status.clone(), self.state_of(&e.status)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// A host's liveness; `None` for a host the coordinator does not know.
    pub fn host_state(&self, name: &str) -> Option<Liveness> {
        self.entries
            .read()
            .ok()
            .and_then(|e| e.get(name).map(|e| self.state_of(&e.status)))
    }

    /// The address a host's agent was added with (how peers reach it too).
    pub fn address(&self, name: &str) -> Result<String> {
        let entries = self.entries.read().map_err(poisoned)?;
        entries
            .get(name)
            .and_then(|e| e.status.record.as_ref())
            .map(|r| r.address.clone())
            .ok_or_else(|| CoordError::NotFound(format!("host {name} not found")))
    }

    /// The door to an up host's agent.
    pub fn door(&self, name: &str) -> Result<Arc<dyn AgentDoor>> {
        let entries = self.entries.read().map_err(poisoned)?;
        let e = entries
            .get(name)
            .ok_or_else(|| CoordError::NotFound(format!("host {name} not found")))?;
        if self.state_of(&e.status) != Liveness::Up {
            return Err(CoordError::Unavailable(format!("host {name} is down")));
        }
        let door = e
            .door
            .clone()
            .ok_or_else(|| CoordError::Unavailable(format!("host {name} is not connected")))?;
        // A dry run reads hosts and changes none.
        Ok(if crate::dry::now() {
            Arc::new(crate::dry::ReadOnly(door))
        } else {
            door
        })
    }

    /// Waits up to `timeout` for a host to be up.
    pub async fn wait_up(&self, name: &str, timeout: Duration) -> Result<Arc<dyn AgentDoor>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.door(name) {
                Ok(d) => return Ok(d),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Puts a host into the fleet with a door of the caller's (an in-process agent, a
    /// test's fake), up as of now with `info` and holding `bases`; no task watches it.
    pub fn attach(
        &self,
        record: HostRecord,
        info: pb::HostInfo,
        bases: BTreeSet<String>,
        door: Arc<dyn AgentDoor>,
    ) -> Result<()> {
        let now = now_ms();
        let name = record.name.clone();
        let mut entries = self.entries.write().map_err(poisoned)?;
        entries.insert(
            name,
            Entry {
                status: HostStatus {
                    record: Some(record),
                    info: Some(info),
                    last_seen_ms: now,
                    last_error: String::new(),
                    bases,
                    info_ms: now,
                },
                client: None,
                door: Some(door),
                task: None,
            },
        );
        self.hosts_changed();
        Ok(())
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut Entry)) {
        if let Ok(mut entries) = self.entries.write() {
            if let Some(e) = entries.get_mut(name) {
                f(e);
                self.reslot(name, &e.status);
            }
        }
    }

    /// The life of one host: connect, reconcile, follow events, heartbeat.
    async fn run(self: Arc<Self>, name: String) {
        let mut events: Option<JoinHandle<()>> = None;
        // The liveness last written to the events feed.
        let mut told = Liveness::Unknown;
        loop {
            let address = self.entries.read().ok().and_then(|e| {
                e.get(&name)
                    .and_then(|e| e.status.record.as_ref().map(|r| r.address.clone()))
            });
            let Some(address) = address else { return };
            let connected = self
                .entries
                .read()
                .ok()
                .and_then(|e| e.get(&name).and_then(|e| e.client.clone()))
                .map(Box::new);
            let client: Option<Box<AgentClient>> = match connected {
                Some(c) => Some(c),
                // Boxed, as the rare steps below: the task of every host holds only what its
                // heartbeat needs between beats (ten thousand hosts, ten thousand tasks).
                None => match Box::pin(tokio::time::timeout(
                    self.heartbeat,
                    AgentClient::connect_with(&address, self.tls.as_ref()),
                ))
                .await
                {
                    Ok(Ok(c)) => {
                        let door = GrpcDoor::open(&name, c.clone());
                        self.update(&name, |e| {
                            e.client = Some(c.clone());
                            e.door = Some(door);
                        });
                        Some(Box::new(c))
                    }
                    Ok(Err(err)) => {
                        self.update(&name, |e| e.status.last_error = err.to_string());
                        None
                    }
                    Err(_) => {
                        self.update(&name, |e| {
                            e.status.last_error = format!("no answer from {address}")
                        });
                        None
                    }
                },
            };
            if let Some(mut c) = client {
                let asked_ms = now_ms();
                let call = c.host.get_host_info(pb::GetHostInfoRequest {});
                // A busy agent may answer slowly; silence (not one slow answer) marks it down.
                let answer = match Box::pin(tokio::time::timeout(self.down_after, call)).await {
                    Ok(r) => r,
                    Err(_) => Err(tonic::Status::deadline_exceeded(
                        "no heartbeat answer in time",
                    )),
                };
                match answer {
                    Ok(info) => {
                        // Decided when the answer arrives: a host back from silence reconciles.
                        let was_up = self.host_state(&name) == Some(Liveness::Up);
                        let info = info.into_inner();
                        self.update(&name, |e| {
                            e.status.info = Some(info);
                            e.status.last_seen_ms = now_ms();
                            e.status.info_ms = asked_ms;
                            e.status.last_error.clear();
                        });
                        let events_dead =
                            events.as_ref().map(JoinHandle::is_finished).unwrap_or(true);
                        // Events first, then the snapshot: no change falls between the two.
                        // A stream that still works is kept (a silent host may come back on
                        // the same connection).
                        if events_dead {
                            events = Some(self.follow_events(name.clone(), (*c).clone()));
                        }
                        if !was_up || events_dead {
                            if let Err(err) = Box::pin(self.reconcile(&name, &mut c)).await {
                                tracing::warn!(host = %name, error = %err, "reconcile failed");
                            }
                        }
                    }
                    Err(status) => {
                        self.update(&name, |e| {
                            e.status.last_error = with_causes(&status);
                            // Reconnect only when the connection itself failed.
                            if matches!(
                                status.code(),
                                tonic::Code::Unavailable | tonic::Code::Unknown
                            ) {
                                e.client = None;
                                e.door = None;
                            }
                        });
                    }
                }
            }
            if let Some(now) = self.host_state(&name).filter(|l| *l != told) {
                let event = match now {
                    Liveness::Up => "up",
                    Liveness::Down => "down",
                    Liveness::Unknown => "unknown",
                };
                let h = name.clone();
                let body = serde_json::json!({ "event": event });
                match Box::pin(self.blocking(move |s| s.append_feed("host", &h, None, &body))).await
                {
                    Ok(_) => told = now,
                    Err(e) => {
                        tracing::warn!(host = %name, error = %e, "cannot record the host's state")
                    }
                }
            }
            tokio::time::sleep(self.heartbeat).await;
        }
    }

    /// Reads back the host's domains and bases into the store.
    async fn reconcile(&self, name: &str, c: &mut AgentClient) -> Result<()> {
        let limit = AGENT_QUICK_CALL * 4;
        tokio::time::timeout(limit, self.reconcile_now(name, c))
            .await
            .map_err(|_| {
                CoordError::Unavailable(format!(
                    "host {name} did not answer the reconciliation in time"
                ))
            })?
    }

    async fn reconcile_now(&self, name: &str, c: &mut AgentClient) -> Result<()> {
        // Events written after this point are newer than the list read below.
        let read_at = self
            .observed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read_at();
        let domains = c
            .domains
            .list_domains(pb::ListDomainsRequest::default())
            .await
            .map_err(|s| CoordError::from_agent(name, &s))?
            .into_inner()
            .domains;
        let bases: BTreeSet<String> = c
            .bases
            .list_bases(pb::ListBasesRequest {})
            .await
            .map_err(|s| CoordError::from_agent(name, &s))?
            .into_inner()
            .bases
            .into_iter()
            .map(|b| b.name)
            .collect();
        self.update(name, |e| e.status.bases = bases.clone());
        let host = name.to_string();
        let clock = Arc::clone(&self.observed);
        let changed = self
            .blocking(move |s| {
                // A poisoned clock is still a valid clock: it only holds counters.
                let mut clock = clock.lock().unwrap_or_else(|p| p.into_inner());
                let domains: Vec<(String, i32)> =
                    domains.into_iter().map(|d| (d.name, d.state)).collect();
                let changed = clock.apply_snapshot(s, &host, read_at, &domains)?;
                let known = s.base_names()?;
                for b in known {
                    s.set_base_host(&b, &host, bases.contains(&b))?;
                }
                Ok(changed)
            })
            .await?;
        tracing::info!(host = %name, changed, "reconciled with the agent");
        Ok(())
    }

    /// Follows the agent's lifecycle events into the VMs' observed states.
    fn follow_events(self: &Arc<Self>, name: String, mut c: AgentClient) -> JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let Ok(stream) = c
                .host
                .watch_domain_events(pb::WatchDomainEventsRequest::default())
                .await
            else {
                return;
            };
            let mut stream = stream.into_inner();
            while let Some(Ok(ev)) = stream.next().await {
                if ev.state == pb::DomainState::Unspecified as i32 {
                    continue;
                }
                me.update(&name, |e| e.status.last_seen_ms = now_ms());
                let host = name.clone();
                let clock = Arc::clone(&me.observed);
                let _ = me
                    .blocking(move |s| {
                        // Held across the write so reconciliation sees it in order.
                        let mut clock = clock.lock().unwrap_or_else(|p| p.into_inner());
                        clock.apply_event(s, &host, &ev.domain, ev.state)
                    })
                    .await;
            }
        })
    }

    /// Placement's view of the fleet, in name order, and the host names by placement id.
    /// Used capacity is what the agent last reported plus the reservations its report cannot
    /// include yet; `user_vms` counts the requesting user's (`user`) VMs per host; `base` is
    /// the requested base's placement id and the hosts holding it.
    pub fn views(
        &self,
        user_vms: &HashMap<String, u32>,
        user: u32,
        base: Option<(crate::placement::BaseId, &[String])>,
        reservations: &[Reservation],
    ) -> Result<(Vec<crate::placement::HostView>, Arc<Vec<String>>)> {
        use crate::placement::{Bases, HostView};
        let now = now_ms();
        let down_after = self.down_after.as_millis() as i64;
        self.with_fleet(|fleet| {
            // Per host: its slot, and a mark for what few hosts hold the base, have the
            // user's VMs or reservations (looked up by name once each, not per host).
            let mut holds = vec![false; fleet.slots.len()];
            for h in base.map_or(&[][..], |(_, h)| h) {
                if let Some(i) = fleet.index.get(h) {
                    holds[*i] = true;
                }
            }
            let mut views: Vec<HostView> = fleet
                .slots
                .iter()
                .zip(&holds)
                .enumerate()
                .map(|(i, (slot, holds))| {
                    let mut bases = Bases::new();
                    if let (true, Some((id, _))) = (*holds, base) {
                        bases.push(id);
                    }
                    HostView {
                        id: i as u32,
                        up: slot.last_seen_ms != 0 && now - slot.last_seen_ms <= down_after,
                        enabled: slot.enabled,
                        vcpus_total: slot.cpus,
                        vcpus_used: slot.vcpus_running,
                        memory_total: slot.memory_total,
                        memory_used: slot.memory_running,
                        disk_free: slot.disk_free,
                        bases,
                        class: slot.class,
                        vms_by_user: HashMap::new(),
                    }
                })
                .collect();
            for (host, n) in user_vms {
                if let Some(v) = fleet.index.get(host).and_then(|i| views.get_mut(*i)) {
                    v.vms_by_user.insert(user, *n);
                }
            }
            for r in reservations {
                let Some(i) = fleet.index.get(&r.host).copied() else {
                    continue;
                };
                let (Some(v), Some(slot)) = (views.get_mut(i), fleet.slots.get(i)) else {
                    continue;
                };
                if r.released_ms.is_none_or(|t| t >= slot.info_ms) {
                    v.vcpus_used += r.vcpus;
                    v.memory_used += r.memory;
                }
            }
            (views, Arc::clone(&fleet.names))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Sqlite;

    fn info(cpus: u32, vcpus_running: u32, domain_type: &str) -> pb::HostInfo {
        pb::HostInfo {
            cpus,
            vcpus_running,
            memory_total_bytes: 64 << 30,
            memory_running_bytes: 4 << 30,
            storage_free_bytes: 100 << 30,
            domain_type: domain_type.into(),
            ..Default::default()
        }
    }

    fn record(name: &str, enabled: bool) -> HostRecord {
        HostRecord {
            name: name.into(),
            address: format!("{name}.lab:7700"),
            enabled,
            last_seen_ms: 0,
        }
    }

    /// Every host has a task for its whole life: it must stay small (measured: 7.5 KB each
    /// before its connection and the rare steps were boxed, 520 bytes after).
    #[test]
    fn a_hosts_task_is_small() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let db = rt
            .block_on(async {
                Db::start(Arc::new(Sqlite::open(&dir.path().join("c.db")).unwrap()))
            })
            .unwrap();
        let hosts = Hosts::new(db, Duration::from_secs(1), Duration::from_secs(10), None);
        let task = Arc::clone(&hosts).run("h".into());
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1024, "a host's task takes {size} bytes");
    }

    /// Placement's copy follows hosts coming and going and every status change, and a view
    /// adds the base's holders, the user's VMs and the reservations a report cannot include.
    #[tokio::test]
    async fn placement_views_follow_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::start(Arc::new(Sqlite::open(&dir.path().join("c.db")).unwrap())).unwrap();
        let hosts = Hosts::new(db, Duration::from_secs(1), Duration::from_secs(10), None);
        let journal = crate::fake::Journal::default();
        for (name, enabled, kind) in [
            ("c", true, "kvm"),
            ("a", true, "test"),
            ("b", false, "qemu"),
        ] {
            let door = crate::fake::FakeAgent::new(name, &journal);
            hosts
                .attach(
                    record(name, enabled),
                    info(8, 2, kind),
                    BTreeSet::new(),
                    door,
                )
                .unwrap();
        }
        let holders = ["c".to_string(), "nowhere".to_string()];
        let mine = HashMap::from([("a".to_string(), 3)]);
        let reservations = [
            Reservation {
                id: 1,
                host: "c".into(),
                vcpus: 2,
                memory: 1 << 30,
                released_ms: None,
            },
            Reservation {
                id: 2,
                host: "c".into(),
                vcpus: 5,
                memory: 0,
                // Released before the last report: the report counts it already.
                released_ms: Some(0),
            },
        ];
        let (views, names) = hosts
            .views(&mine, 7, Some((0, &holders)), &reservations)
            .unwrap();
        assert_eq!(*names, ["a", "b", "c"], "name order is placement order");
        let ids: Vec<u32> = views.iter().map(|v| v.id).collect();
        assert_eq!(ids, [0, 1, 2]);
        let [a, b, c] = &views[..] else {
            panic!("three views")
        };
        assert!(a.up && a.enabled && !b.enabled);
        assert_eq!((a.class, b.class, c.class), ("test", "qemu", "qemu"));
        assert_eq!(a.vms_by_user, HashMap::from([(7, 3)]));
        assert!(c.vms_by_user.is_empty());
        assert_eq!((a.bases.len(), c.bases.as_slice()), (0, &[0][..]));
        assert_eq!((c.vcpus_used, c.memory_used), (4, 5 << 30));
        assert_eq!((a.vcpus_used, a.memory_used), (2, 4 << 30));

        // A heartbeat, a maintenance switch and a host gone all show in the next view.
        hosts.update("a", |e| {
            e.status.info = Some(info(16, 9, "test"));
        });
        hosts.set_enabled("b", true).await.unwrap_or(());
        hosts.entries.write().unwrap().remove("c");
        hosts.hosts_changed();
        let (views, names) = hosts.views(&HashMap::new(), 7, None, &[]).unwrap();
        assert_eq!(*names, ["a", "b"]);
        assert_eq!((views[0].vcpus_total, views[0].vcpus_used), (16, 9));
        assert!(views[1].enabled, "enabled again");
        assert!(views.iter().all(|v| v.bases.is_empty()));
    }
}
