//! The coordinator's core: who may do what, where a clone goes, and the work of each
//! operation (clone, start, shutdown, hibernate, restore, remove, create/remove base).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_client::proto as pb;

use crate::auth::{Auth, Caller};
use crate::config::Config;
use crate::db::Db;
use crate::door::Power;
use crate::error::{CoordError, Result};
use crate::hosts::{state_name, Hosts};
use crate::operations::{OpCtx, OpError, Operations, Resumer, Submit, Work, WorkFuture};
use crate::placement::{self, Policy};
use crate::store::{OpRecord, Store, VmRecord};

pub use crate::hosts::AGENT_QUICK_CALL;

pub use crate::names::check_name;

/// A VM action that becomes an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Shutdown,
    PowerOff,
    Hibernate,
    Restore,
    Remove,
}

impl Action {
    pub fn kind(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Shutdown => "shutdown",
            Self::PowerOff => "poweroff",
            Self::Hibernate => "hibernate",
            Self::Restore => "restore",
            Self::Remove => "remove",
        }
    }
}

/// A placement: the chosen host, every rejected host with its reason, and the VM's size.
pub type Placed = (Option<String>, Vec<(String, String)>, (u32, u64));

pub struct Coordinator {
    pub cfg: Config,
    pub db: Arc<Db>,
    pub ops: Arc<Operations>,
    pub hosts: Arc<Hosts>,
    pub auth: Arc<Auth>,
    policy: Policy,
    /// Capacity promised to clones, until their hosts report it.
    pub reservations: Arc<crate::reservations::Reservations>,
    /// Size of each base's VMs: (vCPUs, bytes of memory).
    base_sizes: Mutex<HashMap<String, (u32, u64)>>,
    /// Base transfers between hosts in flight.
    pub(crate) transfers: crate::migrate::Transfers,
    /// Bytes of each base's files, learnt from its transfers (the cost of the next copy).
    pub(crate) base_bytes: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator").finish()
    }
}

pub(crate) fn work<F, Fut>(f: F) -> Work
where
    F: FnOnce(OpCtx) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::result::Result<serde_json::Value, OpError>>
        + Send
        + 'static,
{
    Box::new(move |ctx| Box::pin(f(ctx)) as WorkFuture)
}

impl Coordinator {
    pub fn new(
        cfg: Config,
        db: Arc<Db>,
        ops: Arc<Operations>,
        hosts: Arc<Hosts>,
        auth: Arc<Auth>,
    ) -> Arc<Self> {
        let policy = Policy {
            cpu_overcommit: cfg.cpu_overcommit,
            memory_overcommit: cfg.memory_overcommit,
            disk_reserve: cfg.disk_reserve_bytes,
            ..Policy::default()
        };
        Arc::new(Self {
            cfg,
            db,
            ops,
            hosts,
            auth,
            policy,
            reservations: Arc::default(),
            base_sizes: Mutex::new(HashMap::new()),
            transfers: Default::default(),
            base_bytes: Mutex::new(HashMap::new()),
        })
    }

    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> crate::store::Result<T> + Send + 'static,
    ) -> Result<T> {
        Ok(self.db.call(f).await?)
    }

    /// Refuses an owner who is not a user.
    pub async fn user_exists(&self, name: &str) -> Result<()> {
        let n = name.to_string();
        if self
            .blocking(move |s| Ok(s.users()?.iter().any(|u| u.name == n)))
            .await?
        {
            Ok(())
        } else {
            Err(CoordError::NotFound(format!("user {name} not found")))
        }
    }

    /// Refuses a name a VM or a base already has (one namespace; the insert checks again).
    pub async fn name_free(&self, name: &str) -> Result<()> {
        let n = name.to_string();
        match self.blocking(move |s| s.name_taken(&n)).await? {
            Some(what) => Err(crate::names::taken(what, name)),
            None => Ok(()),
        }
    }

    /// A VM the caller may touch (others' VMs look absent).
    pub async fn vm_for(&self, caller: &Caller, name: &str) -> Result<VmRecord> {
        check_name("VM", name)?;
        let n = name.to_string();
        let vm = self.blocking(move |s| s.vm(&n)).await?;
        if !caller.may_touch(&vm.owner) {
            return Err(CoordError::NotFound(format!("VM {name} not found")));
        }
        Ok(vm)
    }

    pub fn vm_view(&self, vm: &VmRecord) -> pb::Vm {
        let host_state = vm
            .host
            .as_deref()
            .map(|h| self.hosts.host_state(h))
            .unwrap_or(pb::HostState::Unspecified);
        let observed = if host_state == pb::HostState::Up {
            pb::DomainState::from_str_name(&vm.observed_state)
                .unwrap_or(pb::DomainState::Unspecified)
        } else {
            pb::DomainState::Unspecified
        };
        pb::Vm {
            name: vm.name.clone(),
            owner: vm.owner.clone(),
            base: vm.base.clone().unwrap_or_default(),
            host: vm.host.clone().unwrap_or_default(),
            desired_state: vm.desired_state.clone(),
            observed_state: observed as i32,
            locked_by: self.ops.locked_by(&vm.name).unwrap_or_default(),
            host_state: host_state as i32,
        }
    }

    /// The size of a base's VMs, asked once from a host that has it.
    async fn base_size(&self, base: &str, hosts: &[String]) -> Result<(u32, u64)> {
        if let Some(s) = self
            .base_sizes
            .lock()
            .ok()
            .and_then(|m| m.get(base).copied())
        {
            return Ok(s);
        }
        let b = base.to_string();
        let spec = self.blocking(move |s| s.base_spec(&b)).await?;
        let size = match (spec["vcpus"].as_u64(), spec["memory"].as_u64()) {
            (Some(v), Some(m)) => Some((u32::try_from(v).unwrap_or(u32::MAX), m)),
            _ => None,
        };
        let size = match size {
            Some(s) => s,
            None => self.ask_base_size(base, hosts).await?,
        };
        if let Ok(mut cache) = self.base_sizes.lock() {
            cache.insert(base.into(), size);
        }
        Ok(size)
    }

    /// Asks a host that has the base (for bases recorded without their size).
    async fn ask_base_size(&self, base: &str, hosts: &[String]) -> Result<(u32, u64)> {
        for h in hosts {
            let Ok(door) = self.hosts.door(h) else {
                continue;
            };
            if let Ok(d) = door.get_domain(base).await {
                return Ok((d.vcpus, d.memory_mib << 20));
            }
        }
        Err(CoordError::Unavailable(format!(
            "no host holding base {base} answers"
        )))
    }

    /// Where a clone of `base` goes: (chosen host, every rejected host with its reason, the
    /// clone's size), and the hosts that hold the base now.
    pub async fn place(
        &self,
        base: &str,
        owner: &str,
        keep_together: bool,
    ) -> Result<(Placed, Vec<String>)> {
        let (mine, bases) = self.fleet_of(owner).await?;
        let holders = bases
            .iter()
            .find(|(b, _)| b == base)
            .map(|(_, h)| h.clone())
            .ok_or_else(|| CoordError::NotFound(format!("base {base} not found")))?;
        let size = self.base_size(base, &holders).await?;
        let placed = self.decide(mine, &bases, Some(base), size, keep_together)?;
        Ok((placed, holders))
    }

    /// Where a VM of `size` (vCPUs, bytes) goes.
    pub async fn place_sized(&self, size: (u32, u64), owner: &str) -> Result<Placed> {
        let (mine, bases) = self.fleet_of(owner).await?;
        self.decide(mine, &bases, None, size, false)
    }

    /// What placement reads from the store: `owner`'s VM count per host, and the bases.
    async fn fleet_of(
        &self,
        owner: &str,
    ) -> Result<(Vec<(String, u32)>, Vec<(String, Vec<String>)>)> {
        let who = owner.to_string();
        self.blocking(move |s| Ok((s.vm_counts_of(&who)?, s.bases()?)))
            .await
    }

    /// Places on the hosts' last heartbeats plus reservations; on a host holding `base` when
    /// given.
    fn decide(
        &self,
        mine: Vec<(String, u32)>,
        bases: &[(String, Vec<String>)],
        base: Option<&str>,
        size: (u32, u64),
        keep_together: bool,
    ) -> Result<Placed> {
        let base_ids: HashMap<String, u32> = bases
            .iter()
            .enumerate()
            .map(|(i, (b, _))| (b.clone(), i as u32))
            .collect();
        // Reservations every heartbeat has since covered are dropped.
        let oldest_info = self
            .hosts
            .statuses()?
            .iter()
            .map(|(_, st, _)| st.info_ms)
            .min()
            .unwrap_or(0);
        let pending = self.reservations.counted(oldest_info)?;
        // Placement sees only the requesting user's VMs (user 0): all keep-together needs.
        let user = 0;
        let mine: HashMap<String, u32> = mine.into_iter().collect();
        let (views, names) = self.hosts.views(&mine, user, bases, &base_ids, &pending)?;
        // Hosts without the base can take the clone when a host of their class holding it is
        // up; the copy costs score in proportion to the base's size.
        let copy = base
            .and_then(|b| base_ids.get(b).map(|id| (b, id)))
            .map(|(b, id)| {
                let classes: std::collections::HashSet<String> = views
                    .iter()
                    .filter(|v| v.up && v.bases.contains(id))
                    .map(|v| v.class.clone())
                    .collect();
                let bytes = self
                    .base_bytes
                    .lock()
                    .ok()
                    .and_then(|m| m.get(b).copied())
                    .unwrap_or(self.policy.copy_scale);
                placement::Copy {
                    classes,
                    penalty: self.policy.copy_penalty(bytes),
                }
            });
        let req = placement::Request {
            copy: copy.filter(|c| !c.classes.is_empty()),
            base: base.and_then(|b| base_ids.get(b).copied()),
            vcpus: size.0,
            memory: size.1,
            disk: 0,
            user,
            keep_together,
        };
        let d = placement::place(&views, &req, &self.policy, true);
        let name = |id: u32| names.get(id as usize).cloned().unwrap_or_default();
        let rejected = d
            .rejected
            .iter()
            .map(|(id, why)| {
                let base_name = |b: u32| bases.get(b as usize).map(|(n, _)| n.clone());
                (name(*id), why.render(base_name))
            })
            .collect();
        Ok((d.chosen.map(name), rejected, size))
    }

    pub async fn clone_vm(
        self: &Arc<Self>,
        caller: &Caller,
        req: pb::CloneVmRequest,
    ) -> Result<OpRecord> {
        // The agent's own rules, before anything is submitted.
        corral_proto::rules::clone_base(&pb::CloneBaseRequest {
            base: req.base.clone(),
            name: req.name.clone(),
            labels: req.labels.clone(),
            owner: req.owner.clone(),
            ..Default::default()
        })?;
        let owner = if req.owner.is_empty() || req.owner == caller.name() {
            caller.name().to_string()
        } else {
            caller.require_admin()?;
            self.user_exists(&req.owner).await?;
            req.owner.clone()
        };
        let key = (!req.idempotency_key.is_empty()).then(|| req.idempotency_key.clone());
        if key.is_none() {
            self.name_free(&req.name).await?;
        }
        let ((host, rejected, size), holders) =
            self.place(&req.base, &owner, req.keep_together).await?;
        let Some(host) = host else {
            let why: Vec<String> = rejected.iter().map(|(h, r)| format!("{h}: {r}")).collect();
            return Err(CoordError::FailedPrecondition(format!(
                "no host can take a clone of {}: {}",
                req.base,
                if why.is_empty() {
                    "no hosts".to_string()
                } else {
                    why.join("; ")
                }
            )));
        };
        let submit = Submit {
            kind: "clone".into(),
            vm: Some(req.name.clone()),
            host: Some(host.clone()),
            user: Some(owner.clone()),
            idempotency_key: key,
            request: serde_json::json!({
                "base": req.base, "name": req.name, "start": req.start, "labels": req.labels, "owner": owner,
            }),
        };
        let reserved = self.reserve(&host, size);
        let me = Arc::clone(self);
        let copy = !holders.contains(&host);
        let (h2, req2) = (host.clone(), req.clone());
        let w = work(move |ctx| async move {
            // Placement chose a host without the base: copy it there first.
            let copied = if copy {
                me.ensure_base(&ctx, &req2.base, &h2, 0).await.map(|_| ())
            } else {
                Ok(())
            };
            let r = match copied {
                Ok(()) => me.do_clone(&ctx, &h2, &req2, &owner).await,
                Err(e) => Err(e),
            };
            drop(reserved);
            r.map_err(OpError::from)
        });
        Ok(self.ops.submit(submit, w).await?)
    }

    /// Promises `size` on `host` to a VM being made, until the guard is dropped.
    pub(crate) fn reserve(&self, host: &str, size: (u32, u64)) -> crate::reservations::Reserved {
        self.reservations.reserve(host, size)
    }

    async fn do_clone(
        &self,
        ctx: &OpCtx,
        host: &str,
        req: &pb::CloneVmRequest,
        owner: &str,
    ) -> Result<serde_json::Value> {
        let door = self.hosts.door(host)?;
        // The VM is recorded before it is made, so that a crash leaves a trace to clean up.
        let vm = VmRecord {
            name: req.name.clone(),
            owner: owner.into(),
            base: Some(req.base.clone()),
            host: Some(host.into()),
            desired_state: "shut-off".into(),
            observed_state: "CREATING".into(),
            spec: serde_json::json!({ "labels": req.labels }),
        };
        let v = vm.clone();
        self.blocking(move |s| s.insert_vm(&v))
            .await
            .map_err(|e| match e {
                CoordError::AlreadyExists(_) => crate::names::taken("VM or base", &req.name),
                e => e,
            })?;
        // Cancelled (or failed on the way) while the agent may still be making it: cleaned.
        let unmade = Unmade {
            db: Arc::clone(&self.db),
            door: Arc::clone(&door),
            name: req.name.clone(),
            owner: owner.into(),
            base: req.base.clone(),
            armed: true,
        };
        let what = if req.start {
            "clone and start"
        } else {
            "clone"
        };
        ctx.progress(
            "cloning",
            Some(10.0),
            None,
            &format!("{what} of {} on host {host}", req.base),
        )
        .await?;
        // One agent call does both (the agent records the start time and state itself).
        let made = door
            .clone_base(pb::CloneBaseRequest {
                base: req.base.clone(),
                name: req.name.clone(),
                labels: req.labels.clone(),
                owner: owner.into(),
                start: req.start,
                ..Default::default()
            })
            .await;
        let domain = match made {
            Ok(d) => d,
            Err(e) => {
                // The agent removes what it made when the clone fails; a start failure leaves
                // a defined, shut-off clone, which the agent reports by its state. The record
                // stays only for a domain this clone made: a name taken on the host (another
                // domain, a base) leaves no record, so nothing can later remove that domain.
                let ours = e.code() != tonic::Code::AlreadyExists
                    && door.get_domain(&req.name).await.is_ok_and(|d| {
                        d.owner == owner
                            && d.base == req.base
                            && d.kind == pb::DomainKind::Clone as i32
                    });
                if !ours {
                    let n = req.name.clone();
                    let _ = self.blocking(move |st| st.remove_vm(&n)).await;
                }
                unmade.keep();
                return Err(e);
            }
        };
        let mut vm = vm;
        vm.observed_state = state_name(domain.state);
        if req.start {
            vm.desired_state = "running".into();
        }
        ctx.progress(
            if req.start { "running" } else { "defined" },
            Some(90.0),
            None,
            "",
        )
        .await?;
        let v = vm.clone();
        self.blocking(move |s| s.put_vm(&v)).await?;
        unmade.keep();
        Ok(serde_json::json!({ "vm": req.name, "host": host, "state": vm.observed_state }))
    }

    pub async fn vm_action(
        self: &Arc<Self>,
        caller: &Caller,
        name: &str,
        action: Action,
    ) -> Result<OpRecord> {
        let vm = self.vm_for(caller, name).await?;
        let host = vm
            .host
            .clone()
            .ok_or_else(|| CoordError::FailedPrecondition(format!("VM {name} has no host")))?;
        let submit = Submit {
            kind: action.kind().into(),
            vm: Some(vm.name.clone()),
            host: Some(host.clone()),
            user: Some(caller.name().into()),
            idempotency_key: None,
            request: serde_json::json!({ "vm": vm.name }),
        };
        let me = Arc::clone(self);
        let w = work(move |ctx| async move {
            me.do_action(&ctx, &host, vm, action)
                .await
                .map_err(OpError::from)
        });
        Ok(self.ops.submit(submit, w).await?)
    }

    async fn do_action(
        &self,
        ctx: &OpCtx,
        host: &str,
        mut vm: VmRecord,
        action: Action,
    ) -> Result<serde_json::Value> {
        let door = self.hosts.door(host)?;
        let name = vm.name.clone();
        ctx.progress(action.kind(), Some(10.0), None, &format!("on host {host}"))
            .await?;
        let shutdown = Power::Shutdown {
            timeout: Duration::from_secs(60),
        };
        let domain = match action {
            Action::Start => Some(door.power(&name, Power::Start).await?),
            Action::Shutdown => Some(door.power(&name, shutdown).await?),
            Action::PowerOff => Some(door.power(&name, Power::PowerOff).await?),
            Action::Hibernate => Some(door.power(&name, Power::Hibernate).await?),
            Action::Restore => Some(door.restore_clone(&name).await?),
            Action::Remove => {
                door.remove_domain(&name).await?;
                self.blocking(move |s| s.remove_vm(&name)).await?;
                None
            }
        };
        if let Some(d) = domain {
            vm.observed_state = state_name(d.state);
            vm.desired_state = match action {
                Action::Start => "running",
                Action::Hibernate => "hibernated",
                _ => "shut-off",
            }
            .into();
            let v = vm.clone();
            self.blocking(move |s| s.put_vm(&v)).await?;
        }
        Ok(serde_json::json!({ "vm": vm.name, "state": vm.observed_state }))
    }

    /// Defines a VM from a spec on a host and prepares it as a base (admin).
    pub async fn create_base(
        self: &Arc<Self>,
        caller: &Caller,
        req: pb::CreateBaseRequest,
    ) -> Result<OpRecord> {
        caller.require_admin()?;
        let spec = req
            .spec
            .ok_or_else(|| CoordError::Invalid("a domain spec is required".into()))?;
        corral_proto::rules::domain_spec(&spec)?;
        check_name("host", &req.host)?;
        // A base may be created on several hosts (the same template on each); a VM's name
        // is never taken.
        let n = spec.name.clone();
        if self.blocking(move |s| s.name_taken(&n)).await? == Some("VM") {
            return Err(crate::names::taken("VM", &spec.name));
        }
        // A host just added answers within a heartbeat or two.
        self.hosts
            .wait_up(&req.host, Duration::from_secs(10))
            .await?;
        let submit = Submit {
            kind: "create-base".into(),
            vm: Some(spec.name.clone()),
            host: Some(req.host.clone()),
            user: Some(caller.name().into()),
            idempotency_key: (!req.idempotency_key.is_empty()).then(|| req.idempotency_key.clone()),
            request: serde_json::json!({ "base": spec.name, "host": req.host }),
        };
        let me = Arc::clone(self);
        let host = req.host.clone();
        let w = work(move |ctx| async move {
            let run = async {
                let door = me.hosts.door(&host)?;
                let name = spec.name.clone();
                let (vcpus, memory) = crate::create::size_of(&spec);
                let size = serde_json::json!({ "vcpus": vcpus, "memory": memory });
                ctx.progress("defining", Some(10.0), None, &format!("on host {host}"))
                    .await?;
                door.define(spec).await?;
                ctx.progress("preparing", Some(40.0), None, "read-only base files")
                    .await?;
                door.prepare_base(&name).await?;
                let (n, h) = (name.clone(), host.clone());
                me.blocking(move |s| {
                    s.put_base(&n, None, &size)?;
                    s.set_base_host(&n, &h, true)
                })
                .await?;
                Ok::<_, CoordError>(serde_json::json!({ "base": name, "host": host }))
            };
            run.await.map_err(OpError::from)
        });
        Ok(self.ops.submit(submit, w).await?)
    }

    pub async fn remove_base(self: &Arc<Self>, caller: &Caller, name: &str) -> Result<OpRecord> {
        caller.require_admin()?;
        check_name("base", name)?;
        let n = name.to_string();
        let (bases, vms) = self.blocking(|s| Ok((s.bases()?, s.vms()?))).await?;
        let hosts = bases
            .into_iter()
            .find(|(b, _)| b == &n)
            .map(|(_, h)| h)
            .ok_or_else(|| CoordError::NotFound(format!("base {name} not found")))?;
        let clones: Vec<String> = vms
            .into_iter()
            .filter(|v| v.base.as_deref() == Some(name))
            .map(|v| v.name)
            .collect();
        if !clones.is_empty() {
            return Err(CoordError::FailedPrecondition(format!(
                "base {name} has {} clone(s) ({}): remove them first",
                clones.len(),
                clones.join(", ")
            )));
        }
        let submit = Submit {
            kind: "remove-base".into(),
            vm: Some(name.into()),
            user: Some(caller.name().into()),
            request: serde_json::json!({ "base": name }),
            ..Default::default()
        };
        let me = Arc::clone(self);
        let w = work(move |ctx| async move {
            let run = async {
                for h in &hosts {
                    ctx.progress("removing", None, None, &format!("on host {h}"))
                        .await?;
                    me.hosts.door(h)?.remove_domain(&n).await?;
                }
                let n2 = n.clone();
                me.blocking(move |s| s.remove_base(&n2)).await?;
                Ok::<_, CoordError>(serde_json::json!({ "base": n }))
            };
            run.await.map_err(OpError::from)
        });
        Ok(self.ops.submit(submit, w).await?)
    }

    /// After a restart: a clone or VM that was being made is cleaned away (the VM and its files),
    /// then the operation ends failed with that reason. Other kinds end failed as they are.
    pub fn resumers(self: &Arc<Self>) -> HashMap<String, Resumer> {
        let me = Arc::clone(self);
        let cleanup: Resumer = Arc::new(move |op: &OpRecord| {
            let (me, vm, host) = (Arc::clone(&me), op.vm.clone()?, op.host.clone()?);
            let kind = op.kind.clone();
            Some(work(move |ctx| async move {
                ctx.progress(
                    "cleaning",
                    None,
                    None,
                    &format!("removing the half-made {vm} from {host}"),
                )
                .await?;
                let door = me.hosts.wait_up(&host, Duration::from_secs(30)).await;
                if let Ok(door) = door {
                    if let Err(e) = door.remove_domain(&vm).await {
                        return Err(OpError::Failed(format!("cleanup: {e}")));
                    }
                } else {
                    return Err(OpError::Failed(format!(
                        "the coordinator restarted during the {kind} and host {host} is down: {vm} may be left there"
                    )));
                }
                let v = vm.clone();
                let _ = me.blocking(move |s| s.remove_vm(&v)).await;
                Err(OpError::Failed(format!(
                    "the coordinator restarted during the {kind}; the half-made {vm} was removed from {host}"
                )))
            }))
        });
        HashMap::from([
            ("clone".to_string(), Arc::clone(&cleanup)),
            ("create".to_string(), cleanup),
        ])
    }

    /// The door to the agent holding a VM the caller may touch (others' look absent).
    pub async fn door_for(
        &self,
        caller: &Caller,
        vm: &str,
    ) -> Result<std::sync::Arc<dyn crate::door::AgentDoor>> {
        let vm = self.vm_for(caller, vm).await?;
        let host = vm
            .host
            .ok_or_else(|| CoordError::FailedPrecondition(format!("VM {} has no host", vm.name)))?;
        self.hosts.door(&host)
    }
}

/// A clone being made. Dropped armed (its operation was cancelled, or failed before the
/// agent answered), it removes the domain the agent may still be making, once it shows up
/// as this clone's (never another's), then the VM's record.
struct Unmade {
    db: Arc<Db>,
    door: Arc<dyn crate::door::AgentDoor>,
    name: String,
    owner: String,
    base: String,
    armed: bool,
}

impl Unmade {
    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Unmade {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (db, door) = (Arc::clone(&self.db), Arc::clone(&self.door));
        let (name, owner, base) = (self.name.clone(), self.owner.clone(), self.base.clone());
        rt.spawn(async move {
            let mut absent = 0;
            // About a minute in all: long enough for an agent's clone (well under a second)
            // to show up or end.
            for _ in 0..300 {
                match door.get_domain(&name).await {
                    Ok(d)
                        if d.owner == owner
                            && d.base == base
                            && d.kind == pb::DomainKind::Clone as i32 =>
                    {
                        // Busy while the agent still makes it: tried again.
                        if door.remove_domain(&name).await.is_ok() {
                            break;
                        }
                    }
                    Ok(_) => break,
                    Err(e) if e.code() == tonic::Code::NotFound => {
                        // Not made, or not yet: a clone takes the agent well under this.
                        absent += 1;
                        if absent >= 25 {
                            break;
                        }
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let n = name.clone();
            let _ = db.call(move |s| s.remove_vm(&n)).await;
            tracing::info!(vm = %name, "an unfinished clone was cleaned away");
        });
    }
}
