//! The coordinator itself: its parts, and who may touch which VM. The work lives by idea:
//! `placing` (where a VM goes, with reservations), `clones`, `lifecycle` (power actions,
//! removal, restart resumers), `create` (VMs from specs, bases), `transfers` and `moves`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::auth::{Auth, Caller};
use crate::config::Config;
use crate::db::Db;
use crate::error::{CoordError, Result};
use crate::hosts::{Hosts, Liveness};
use crate::operations::{OpCtx, OpError, Operations, Work, WorkFuture};
use crate::placement::Policy;
use crate::store::{Store, VmRecord};

pub use crate::hosts::AGENT_QUICK_CALL;

pub use crate::names::check_name;
pub use crate::views::{BaseSummary, HostSummary, VmView};

pub struct Coordinator {
    pub cfg: Config,
    pub db: Arc<Db>,
    pub ops: Arc<Operations>,
    pub hosts: Arc<Hosts>,
    pub auth: Arc<Auth>,
    pub(crate) policy: Policy,
    /// Capacity promised to clones, until their hosts report it.
    pub reservations: Arc<crate::reservations::Reservations>,
    /// Size of each base's VMs: (vCPUs, bytes of memory).
    pub(crate) base_sizes: Mutex<HashMap<String, (u32, u64)>>,
    /// Base transfers between hosts in flight.
    pub(crate) transfers: crate::transfers::Transfers,
    /// Bytes of each base's files, learnt from its transfers (the cost of the next copy).
    pub(crate) base_bytes: Mutex<HashMap<String, u64>>,
    /// Where users' attributes also come from, when configured.
    pub(crate) directory: Option<crate::directory::Directory>,
    /// Start slots per host (boot storms wait here).
    pub starts: crate::starts::StartGate,
    /// Wakes the pool manager (after a hand-out or a pool's new size).
    pub(crate) pool_wake: Arc<tokio::sync::Notify>,
    /// One get-or-create at a time (`ensure.rs`).
    pub(crate) ensuring: tokio::sync::Mutex<()>,
    /// What the guest watcher learnt of running guests (`guests.rs`).
    pub(crate) guests: crate::guests::Guests,
    /// Whether this coordinator leads (`leader.rs`).
    pub role: Arc<crate::leader::Role>,
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
        directory: Option<crate::directory::Directory>,
    ) -> Arc<Self> {
        let policy = Policy {
            cpu_overcommit: cfg.cpu_overcommit,
            memory_overcommit: cfg.memory_overcommit,
            disk_reserve: cfg.disk_reserve_bytes,
            ..Policy::default()
        };
        let starts = crate::starts::StartGate::new(cfg.starts_per_host);
        Arc::new(Self {
            starts,
            pool_wake: Arc::default(),
            ensuring: tokio::sync::Mutex::new(()),
            guests: Default::default(),
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
            directory,
            role: Arc::default(),
        })
    }

    /// What the VM's agent knows of it, named as the VM; None while its host is down.
    pub async fn details_of(&self, vm: &VmRecord) -> Option<corral_client::proto::Domain> {
        let door = self.hosts.door(vm.host.as_deref()?).ok()?;
        let mut d = door.get_domain(vm.domain()).await.ok()?;
        d.name.clone_from(&vm.name);
        Some(d)
    }

    /// A start slot on `host`, saying in the operation's progress when it has to wait.
    pub(crate) async fn start_slot(
        &self,
        ctx: &OpCtx,
        host: &str,
    ) -> Result<crate::starts::StartSlot> {
        self.starts
            .enter(host, async |ahead| {
                let msg = format!("waiting for a start slot on host {host} ({ahead} ahead)");
                Ok(ctx.progress("queued-start", None, None, &msg).await?)
            })
            .await
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

    /// The host of a VM that must be shut off for what comes; `why` ends the refusal ("a
    /// running guest changes its disks under the backup").
    pub(crate) fn shut_off_host(vm: &VmRecord, why: &str) -> Result<String> {
        if vm.observed_state
            != crate::states::Observed::Domain(corral_client::proto::DomainState::ShutOff)
        {
            return Err(CoordError::FailedPrecondition(format!(
                "VM {} is {}: shut it off first ({why})",
                vm.name,
                vm.observed_state.describe()
            )));
        }
        vm.host
            .clone()
            .ok_or_else(|| CoordError::FailedPrecondition(format!("VM {} has no host", vm.name)))
    }

    /// A VM as its owner sees it (what its host last said counts only while the host is up).
    pub fn vm_view(&self, vm: &VmRecord) -> VmView {
        let host = vm.host.as_deref().and_then(|h| self.hosts.host_state(h));
        let observed = (host == Some(Liveness::Up)).then_some(vm.observed_state);
        VmView {
            readiness: self.readiness_of(vm, observed),
            observed,
            locked_by: self.ops.locked_by(&vm.name),
            host,
            vm: vm.clone(),
        }
    }

    /// The door to the agent holding a VM the caller may touch (others' look absent), with
    /// its domain's name there.
    pub async fn door_for(&self, caller: &Caller, vm: &str) -> Result<crate::on_host::VmDoor> {
        let vm = self.vm_for(caller, vm).await?;
        let host = vm
            .host
            .as_deref()
            .ok_or_else(|| CoordError::FailedPrecondition(format!("VM {} has no host", vm.name)))?;
        Ok(crate::on_host::VmDoor {
            door: self.hosts.door(host)?,
            domain: vm.domain().to_string(),
            vm: vm.name.clone(),
        })
    }
}
