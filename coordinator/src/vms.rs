//! The coordinator itself: its parts, and who may touch which VM. The work lives by idea:
//! `placing` (where a VM goes, with reservations), `clones`, `lifecycle` (power actions,
//! removal, restart resumers), `create` (VMs from specs, bases), `transfers` and `moves`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use corral_client::proto as pb;

use crate::auth::{Auth, Caller};
use crate::config::Config;
use crate::db::Db;
use crate::error::{CoordError, Result};
use crate::hosts::Hosts;
use crate::operations::{OpCtx, OpError, Operations, Work, WorkFuture};
use crate::placement::Policy;
use crate::store::{Store, VmRecord};

pub use crate::hosts::AGENT_QUICK_CALL;

pub use crate::names::check_name;

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
            vm.observed_state.domain_state()
        } else {
            pb::DomainState::Unspecified
        };
        pb::Vm {
            name: vm.name.clone(),
            owner: vm.owner.clone(),
            base: vm.base.clone().unwrap_or_default(),
            host: vm.host.clone().unwrap_or_default(),
            desired_state: vm.desired_state.as_str().into(),
            observed_state: observed as i32,
            locked_by: self.ops.locked_by(&vm.name).unwrap_or_default(),
            host_state: host_state as i32,
        }
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

/// Listings, each filtered to what the caller may see.
impl Coordinator {
    /// The VMs `caller` may touch.
    pub async fn vms_of(&self, caller: &Caller) -> Result<Vec<VmRecord>> {
        let vms = self.blocking(|s| s.vms()).await?;
        Ok(vms
            .into_iter()
            .filter(|v| caller.may_touch(&v.owner))
            .collect())
    }

    /// Every base with the hosts that hold it and its clone count.
    pub async fn base_summaries(&self) -> Result<Vec<pb::BaseSummary>> {
        let (bases, vms) = self.blocking(|s| Ok((s.bases()?, s.vms()?))).await?;
        Ok(bases
            .into_iter()
            .map(|(name, hosts)| pb::BaseSummary {
                clones: vms
                    .iter()
                    .filter(|v| v.base.as_deref() == Some(&name))
                    .count() as u32,
                name,
                hosts,
            })
            .collect())
    }

    /// Every host with its state and VM count.
    pub async fn host_list(&self) -> Result<Vec<pb::Host>> {
        let vms = self.blocking(|s| s.vms()).await?;
        Ok(self
            .hosts
            .statuses()?
            .into_iter()
            .map(|(name, st, state)| {
                let n = vms
                    .iter()
                    .filter(|v| v.host.as_deref() == Some(&name))
                    .count();
                crate::convert::host_to_pb(name, &st, state, n as u32)
            })
            .collect())
    }

    /// The exposed ports of every VM `caller` may touch, asked host by host (a host that is
    /// down is skipped).
    pub async fn ports_of(&self, caller: &Caller) -> Result<Vec<pb::ExposedPort>> {
        let mut by_host: std::collections::BTreeMap<String, std::collections::HashSet<String>> =
            Default::default();
        for v in self.vms_of(caller).await? {
            if let Some(h) = v.host {
                by_host.entry(h).or_default().insert(v.name);
            }
        }
        let mut ports = Vec::new();
        for (host, names) in by_host {
            let Ok(door) = self.hosts.door(&host) else {
                continue;
            };
            if let Ok(l) = door.list_ports("").await {
                ports.extend(l.into_iter().filter(|p| names.contains(&p.domain)));
            }
        }
        Ok(ports)
    }
}
