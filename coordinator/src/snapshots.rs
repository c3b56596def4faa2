//! Snapshot trees of VMs through the coordinator. Changes (create, revert, delete) are
//! operations serialised with the VM's other work; reads go to the VM's host at once. The
//! requests are the agent's own messages, with the VM's name in `domain`.

use std::sync::Arc;

use corral_client::proto as pb;

use crate::auth::Caller;
use crate::error::{CoordError, Result};
use crate::operations::{OpError, Submit};
use crate::store::OpRecord;
use crate::vms::{check_name, work, Coordinator};

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

    /// The same change, addressed to the VM's domain on its host.
    fn on(self, domain: &str) -> Self {
        let d = domain.to_string();
        match self {
            Self::Create(r) => Self::Create(pb::CreateSnapshotRequest { domain: d, ..r }),
            Self::Revert(r) => Self::Revert(pb::RevertSnapshotRequest { domain: d, ..r }),
            Self::Delete(r) => Self::Delete(pb::DeleteSnapshotRequest { domain: d, ..r }),
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
        let asked = self.hosts.door(host)?.get_snapshot(vm, snap).await;
        match (change, asked) {
            (SnapshotChange::Create(_), Ok(_)) => Err(CoordError::AlreadyExists(format!(
                "host {host}: domain {vm:?} already has a snapshot {snap:?}"
            ))),
            (SnapshotChange::Create(_), Err(e)) if e.code() == tonic::Code::NotFound => Ok(()),
            (_, Ok(_)) => Ok(()),
            (_, Err(e)) => Err(e),
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
        let snap = snap.to_string();
        let vm = self.vm_for(caller, vm_name).await?;
        let host = vm
            .host
            .clone()
            .ok_or_else(|| CoordError::FailedPrecondition(format!("VM {} has no host", vm.name)))?;
        let change = change.on(vm.domain());
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
                let door = me.hosts.door(&host)?;
                let (_, snap) = change.target();
                ctx.progress(
                    kind,
                    Some(10.0),
                    None,
                    &format!("{snap} of {} on host {host}", vm.name),
                )
                .await?;
                let mut result = result;
                match change.clone() {
                    SnapshotChange::Create(r) => {
                        door.create_snapshot(r).await?;
                    }
                    SnapshotChange::Revert(r) => {
                        door.revert_snapshot(r).await?;
                    }
                    SnapshotChange::Delete(r) => {
                        result["deleted"] = serde_json::json!(door.delete_snapshot(r).await?);
                    }
                }
                // Creating with halt and reverting change the VM's state.
                let d = door.get_domain(vm.domain()).await?;
                let mut vm = vm;
                vm.observed_state = crate::states::Observed::from_pb(d.state);
                me.blocking(move |s| s.put_vm(&vm)).await?;
                Ok::<_, CoordError>(result)
            };
            run.await.map_err(OpError::from)
        });
        Ok(self.ops.submit(submit, w).await?)
    }
}
