use std::sync::Arc;

use corral_proto::v1 as pb;
use pb::snapshot_service_server::SnapshotService;
use tonic::{Request, Response, Status};

use super::run;
use crate::agent::Agent;

#[derive(Debug, Clone)]
pub struct SnapshotApi(pub Arc<Agent>);

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl SnapshotService for SnapshotApi {
    async fn create_snapshot(&self, req: Request<pb::CreateSnapshotRequest>) -> R<pb::Snapshot> {
        let r = req.into_inner();
        run(&self.0, "CreateSnapshot", &r.domain.clone(), move |a| {
            a.create_snapshot(&r)
        })
        .await
    }
    async fn list_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> R<pb::ListSnapshotsResponse> {
        let r = req.into_inner();
        run(&self.0, "ListSnapshots", &r.domain.clone(), move |a| {
            Ok(pb::ListSnapshotsResponse {
                snapshots: a.list_snapshots(&r.domain, &r.filters)?,
            })
        })
        .await
    }
    async fn get_snapshot(&self, req: Request<pb::SnapshotRef>) -> R<pb::Snapshot> {
        let r = req.into_inner();
        run(&self.0, "GetSnapshot", &r.domain.clone(), move |a| {
            a.snapshot(&r.domain, &r.name)
        })
        .await
    }
    async fn list_children(
        &self,
        req: Request<pb::ListChildrenRequest>,
    ) -> R<pb::ListSnapshotsResponse> {
        let r = req.into_inner();
        run(&self.0, "ListChildren", &r.domain.clone(), move |a| {
            Ok(pb::ListSnapshotsResponse {
                snapshots: a.snapshot_children(&r.domain, &r.name, r.recursive)?,
            })
        })
        .await
    }
    async fn revert_snapshot(&self, req: Request<pb::RevertSnapshotRequest>) -> R<pb::Snapshot> {
        let r = req.into_inner();
        run(&self.0, "RevertSnapshot", &r.domain.clone(), move |a| {
            a.revert_snapshot(&r)
        })
        .await
    }
    async fn delete_snapshot(
        &self,
        req: Request<pb::DeleteSnapshotRequest>,
    ) -> R<pb::DeleteSnapshotResponse> {
        let r = req.into_inner();
        run(&self.0, "DeleteSnapshot", &r.domain.clone(), move |a| {
            Ok(pb::DeleteSnapshotResponse {
                deleted: a.delete_snapshot(&r)?,
            })
        })
        .await
    }
}
