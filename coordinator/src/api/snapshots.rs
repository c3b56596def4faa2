use std::sync::Arc;

use corral_client::proto as pb;
use pb::vm_snapshot_service_server::VmSnapshotService;
use tonic::{Request, Response, Status};

use super::{op_to_pb, pass};
use crate::auth::caller;
use crate::snapshots::SnapshotChange;
use crate::vms::Coordinator;

#[derive(Debug, Clone)]
pub struct VmSnapshotApi(pub Arc<Coordinator>);

type R<T> = Result<Response<T>, Status>;

impl VmSnapshotApi {
    async fn change<T>(
        &self,
        req: Request<T>,
        f: impl FnOnce(T) -> SnapshotChange,
    ) -> R<pb::Operation> {
        let who = caller(&req)?;
        let op = self.0.snapshot_change(&who, f(req.into_inner())).await?;
        Ok(Response::new(op_to_pb(&op)))
    }
}

#[tonic::async_trait]
impl VmSnapshotService for VmSnapshotApi {
    #[tracing::instrument(skip_all, fields(rpc = "CreateVmSnapshot"))]
    async fn create_vm_snapshot(
        &self,
        req: Request<pb::CreateSnapshotRequest>,
    ) -> R<pb::Operation> {
        self.change(req, SnapshotChange::Create).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "RevertVmSnapshot"))]
    async fn revert_vm_snapshot(
        &self,
        req: Request<pb::RevertSnapshotRequest>,
    ) -> R<pb::Operation> {
        self.change(req, SnapshotChange::Revert).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "DeleteVmSnapshot"))]
    async fn delete_vm_snapshot(
        &self,
        req: Request<pb::DeleteSnapshotRequest>,
    ) -> R<pb::Operation> {
        self.change(req, SnapshotChange::Delete).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListVmSnapshots"))]
    async fn list_vm_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> R<pb::ListSnapshotsResponse> {
        pass(
            &self.0,
            req,
            |r| &r.domain,
            |d, r| async move { d.list_snapshots(r).await },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetVmSnapshot"))]
    async fn get_vm_snapshot(&self, req: Request<pb::SnapshotRef>) -> R<pb::Snapshot> {
        pass(
            &self.0,
            req,
            |r| &r.domain,
            |d, r| async move { d.get_snapshot(&r.domain, &r.name).await },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListVmSnapshotChildren"))]
    async fn list_vm_snapshot_children(
        &self,
        req: Request<pb::ListChildrenRequest>,
    ) -> R<pb::ListSnapshotsResponse> {
        pass(
            &self.0,
            req,
            |r| &r.domain,
            |d, r| async move { d.list_children(r).await },
        )
        .await
    }
}
