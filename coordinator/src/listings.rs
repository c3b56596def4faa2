//! What callers may see: listings filtered to the caller, and the operations they may
//! watch or cancel (others' look absent).

use corral_client::proto as pb;
use tokio_stream::Stream;

use crate::auth::Caller;
use crate::error::{CoordError, Result};
use crate::store::{OpEvent, OpRecord, VmRecord};
use crate::views::{BaseSummary, HostSummary};
use crate::vms::Coordinator;

impl Coordinator {
    /// An operation the caller may see.
    pub async fn op_for(&self, caller: &Caller, id: &str) -> Result<OpRecord> {
        let op = self.ops.get(id).await?;
        if !caller.may_touch(op.user.as_deref().unwrap_or_default()) {
            return Err(CoordError::NotFound(format!("operation {id} not found")));
        }
        Ok(op)
    }

    /// The operations the caller may see.
    pub async fn ops_of(&self, caller: &Caller, unfinished_only: bool) -> Result<Vec<OpRecord>> {
        let ops = self.ops.list(unfinished_only).await?;
        Ok(ops
            .into_iter()
            .filter(|o| caller.may_touch(o.user.as_deref().unwrap_or_default()))
            .collect())
    }

    /// Cancels an operation the caller may see; returns it as it is after.
    pub async fn cancel_op(&self, caller: &Caller, id: &str) -> Result<OpRecord> {
        self.op_for(caller, id).await?;
        self.ops.cancel(id).await?;
        Ok(self.ops.get(id).await?)
    }

    /// The events of an operation the caller may see: those so far, then live ones.
    pub async fn watch_op(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<impl Stream<Item = OpEvent> + Send + 'static> {
        self.op_for(caller, id).await?;
        Ok(self.ops.watch(id).await?)
    }
}

impl Coordinator {
    /// The VMs `caller` may touch.
    pub async fn vms_of(&self, caller: &Caller) -> Result<Vec<VmRecord>> {
        // A user's own, from the owner's index; admins see every VM.
        let owner = (!caller.is_admin()).then(|| caller.name().to_string());
        let vms = self
            .blocking(move |s| match owner {
                Some(o) => s.vms_of_owner(&o),
                None => s.vms(),
            })
            .await?;
        Ok(vms
            .into_iter()
            .filter(|v| caller.may_touch(&v.owner))
            .collect())
    }

    /// The bases the caller may clone (admins: every base) with the hosts that hold them
    /// and their clone counts.
    pub async fn base_summaries(&self, caller: &Caller) -> Result<Vec<BaseSummary>> {
        let (bases, clones, accesses) = self
            .blocking(|s| Ok((s.bases()?, s.clones_per_base()?, s.base_accesses()?)))
            .await?;
        let visible = self.clonable_by(caller, &accesses).await?;
        Ok(bases
            .into_iter()
            .filter(|(name, _)| visible.contains(name))
            .map(|(name, hosts)| BaseSummary {
                clones: clones.get(&name).copied().unwrap_or(0),
                public: accesses.get(&name).is_some_and(|a| a.public),
                name,
                hosts,
            })
            .collect())
    }

    /// Every host with its state and VM count.
    pub async fn host_list(&self) -> Result<Vec<HostSummary>> {
        // Counted by the store (not every VM read and searched for every host).
        let (vms, records) = self
            .blocking(|s| Ok((s.vms_per_host()?, s.hosts()?)))
            .await?;
        let mut statuses = self.hosts.statuses()?;
        // Only the leader talks to agents: another coordinator lists the hosts it stores, with
        // their state unknown (it has heard from none).
        if !self.role.is_leader() && statuses.is_empty() {
            statuses = records
                .into_iter()
                .map(|r| {
                    let status = crate::hosts::HostStatus {
                        last_seen_ms: r.last_seen_ms,
                        record: Some(r.clone()),
                        ..Default::default()
                    };
                    (r.name, status, crate::hosts::Liveness::Unknown)
                })
                .collect();
        }
        Ok(statuses
            .into_iter()
            .map(|(name, status, liveness)| HostSummary {
                vms: vms.get(&name).copied().unwrap_or(0),
                name,
                status,
                liveness,
            })
            .collect())
    }

    /// The exposed ports of every VM `caller` may touch, asked host by host (a host that is
    /// down is skipped).
    pub async fn ports_of(&self, caller: &Caller) -> Result<Vec<pb::ExposedPort>> {
        // Host -> (domain -> VM): a VM handed out from a pool has its pool clone's domain.
        let mut by_host: std::collections::BTreeMap<
            String,
            std::collections::HashMap<String, String>,
        > = Default::default();
        for v in self.vms_of(caller).await? {
            if let Some(h) = &v.host {
                by_host
                    .entry(h.clone())
                    .or_default()
                    .insert(v.domain().to_string(), v.name.clone());
            }
        }
        let mut ports = Vec::new();
        for (host, names) in by_host {
            let Ok(door) = self.hosts.door(&host) else {
                continue;
            };
            if let Ok(l) = door.list_ports("").await {
                ports.extend(l.into_iter().filter_map(|mut p| {
                    p.domain = names.get(&p.domain)?.clone();
                    Some(p)
                }));
            }
        }
        Ok(ports)
    }
}
