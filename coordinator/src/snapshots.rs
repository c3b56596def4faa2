//! Snapshot trees of VMs through the coordinator. Changes (create, revert, delete) are
//! operations serialised with the VM's other work; reads go to the VM's host at once. The
//! requests are the agent's own messages, with the VM's name in `domain`.

use std::sync::Arc;

use corral_client::proto as pb;

use crate::auth::Caller;
use crate::error::{CoordError, Result};
use crate::hosts::state_name;
use crate::operations::{OpError, Submit};
use crate::store::OpRecord;
use crate::vms::{agent_err, check_name, work, Coordinator};

/// A change to a VM's snapshot tree.
#[derive(Debug, Clone)]
pub enum SnapshotChange {
    Create(pb::CreateSnapshotRequest),
    Revert(pb::RevertSnapshotRequest),
    Delete(pb::DeleteSnapshotRequest),
}

impl SnapshotChange {
    fn target(&self) -> (&str, &str) {
        match self {
            Self::Create(r) => (&r.domain, &r.name),
            Self::Revert(r) => (&r.domain, &r.name),
            Self::Delete(r) => (&r.domain, &r.name),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Create(_) => "snapshot-create",
            Self::Revert(_) => "snapshot-revert",
            Self::Delete(_) => "snapshot-delete",
        }
    }

    /// Bad enum values are refused before anything is queued.
    fn check(&self) -> Result<()> {
        let (vm, name) = self.target();
        check_name("VM", vm)?;
        check_name("snapshot", name)?;
        match self {
            Self::Create(r) => Ok(corral_proto::rules::snapshot(
                &r.domain,
                &r.name,
                &r.description,
            )?),
            Self::Revert(r) => pb::RevertMode::try_from(r.mode)
                .map(|_| ())
                .map_err(|_| CoordError::Invalid(format!("unknown revert mode {}", r.mode))),
            Self::Delete(r) => pb::DeleteSnapshotMode::try_from(r.mode)
                .map(|_| ())
                .map_err(|_| CoordError::Invalid(format!("unknown delete mode {}", r.mode))),
        }
    }
}

impl Coordinator {
    /// Asks the VM's host, before anything is queued, whether the snapshot to revert to or
    /// delete exists and the one to create does not: the same refusal the operation would
    /// end with, given at once.
    async fn check_snapshot_target(&self, host: &str, change: &SnapshotChange) -> Result<()> {
        let (vm, snap) = change.target();
        let mut c = self.hosts.client(host)?;
        let asked = tokio::time::timeout(
            crate::hosts::AGENT_QUICK_CALL,
            c.snapshots.get_snapshot(pb::SnapshotRef {
                domain: vm.into(),
                name: snap.into(),
            }),
        )
        .await
        .map_err(|_| CoordError::Unavailable(format!("host {host} did not answer in time")))?;
        match (change, asked) {
            (SnapshotChange::Create(_), Ok(_)) => Err(CoordError::AlreadyExists(format!(
                "host {host}: domain {vm:?} already has a snapshot {snap:?}"
            ))),
            (SnapshotChange::Create(_), Err(s)) if s.code() == tonic::Code::NotFound => Ok(()),
            (_, Ok(_)) => Ok(()),
            (_, Err(s)) => Err(CoordError::from_agent(host, &s)),
        }
    }

    /// Creates, reverts to or deletes a snapshot of a VM the caller may touch, as an operation.
    pub async fn snapshot_change(
        self: &Arc<Self>,
        caller: &Caller,
        change: SnapshotChange,
    ) -> Result<OpRecord> {
        change.check()?;
        let (vm_name, snap) = change.target();
        let vm = self.vm_for(caller, vm_name).await?;
        let host = vm
            .host
            .clone()
            .ok_or_else(|| CoordError::FailedPrecondition(format!("VM {} has no host", vm.name)))?;
        self.check_snapshot_target(&host, &change).await?;
        let kind = change.kind();
        let submit = Submit {
            kind: kind.into(),
            vm: Some(vm.name.clone()),
            host: Some(host.clone()),
            user: Some(caller.name().into()),
            idempotency_key: None,
            request: serde_json::json!({ "vm": vm.name, "snapshot": snap }),
        };
        let result = serde_json::json!({ "vm": vm.name, "snapshot": snap });
        let me = Arc::clone(self);
        let w = work(move |ctx| async move {
            let run = async {
                let mut c = me.hosts.client(&host)?;
                let (vm_name, snap) = change.target();
                ctx.progress(
                    kind,
                    Some(10.0),
                    None,
                    &format!("{snap} of {vm_name} on host {host}"),
                )
                .await?;
                let mut result = result;
                match change.clone() {
                    SnapshotChange::Create(r) => {
                        c.snapshots
                            .create_snapshot(r)
                            .await
                            .map_err(agent_err(&host))?;
                    }
                    SnapshotChange::Revert(r) => {
                        c.snapshots
                            .revert_snapshot(r)
                            .await
                            .map_err(agent_err(&host))?;
                    }
                    SnapshotChange::Delete(r) => {
                        let d = c
                            .snapshots
                            .delete_snapshot(r)
                            .await
                            .map_err(agent_err(&host))?
                            .into_inner();
                        result["deleted"] = serde_json::json!(d.deleted);
                    }
                }
                // Creating with halt and reverting change the VM's state.
                let d = c
                    .domains
                    .get_domain(pb::DomainRef {
                        name: vm.name.clone(),
                    })
                    .await
                    .map_err(agent_err(&host))?
                    .into_inner();
                let mut vm = vm;
                vm.observed_state = state_name(d.state);
                me.blocking(move |s| s.put_vm(&vm)).await?;
                Ok::<_, CoordError>(result)
            };
            run.await.map_err(OpError::from)
        });
        Ok(self.ops.submit(submit, w).await?)
    }
}
