use std::sync::Arc;

use corral_proto::v1 as pb;
use pb::snapshot_service_server::SnapshotService;

use crate::agent::Agent;

#[derive(Debug, Clone)]
pub struct SnapshotApi(pub Arc<Agent>);

rpcs! { SnapshotApi: SnapshotService, |a, r|;
    create_snapshot(pb::CreateSnapshotRequest) -> pb::Snapshot = "CreateSnapshot" by r.domain => a.create_snapshot(&r);
    list_snapshots(pb::ListSnapshotsRequest) -> pb::ListSnapshotsResponse = "ListSnapshots" by r.domain
        => Ok(pb::ListSnapshotsResponse { snapshots: a.list_snapshots(&r.domain, &r.filters)? });
    get_snapshot(pb::SnapshotRef) -> pb::Snapshot = "GetSnapshot" by r.domain => a.snapshot(&r.domain, &r.name);
    list_children(pb::ListChildrenRequest) -> pb::ListSnapshotsResponse = "ListChildren" by r.domain
        => Ok(pb::ListSnapshotsResponse { snapshots: a.snapshot_children(&r.domain, &r.name, r.recursive)? });
    revert_snapshot(pb::RevertSnapshotRequest) -> pb::Snapshot = "RevertSnapshot" by r.domain => a.revert_snapshot(&r);
    delete_snapshot(pb::DeleteSnapshotRequest) -> pb::DeleteSnapshotResponse = "DeleteSnapshot" by r.domain
        => Ok(pb::DeleteSnapshotResponse { deleted: a.delete_snapshot(&r)? });
}
