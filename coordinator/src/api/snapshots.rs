use std::sync::Arc;

use corral_client::proto as pb;
use pb::vm_snapshot_service_server::VmSnapshotService;

use crate::convert::op_to_pb;
use crate::snapshots::SnapshotChange as Change;
use crate::vms::Coordinator;

#[derive(Debug, Clone)]
pub struct VmSnapshotApi(pub Arc<Coordinator>);

rpcs! { VmSnapshotApi: VmSnapshotService, |c, who, r|;
    create_vm_snapshot(pb::CreateSnapshotRequest) -> pb::Operation = "CreateVmSnapshot"
        => op_to_pb(&c.snapshot_change(&who, Change::Create(r)).await?);
    revert_vm_snapshot(pb::RevertSnapshotRequest) -> pb::Operation = "RevertVmSnapshot"
        => op_to_pb(&c.snapshot_change(&who, Change::Revert(r)).await?);
    delete_vm_snapshot(pb::DeleteSnapshotRequest) -> pb::Operation = "DeleteVmSnapshot"
        => op_to_pb(&c.snapshot_change(&who, Change::Delete(r)).await?);
    list_vm_snapshots(pb::ListSnapshotsRequest) -> pb::ListSnapshotsResponse = "ListVmSnapshots"
        => { let v = c.door_for(&who, &r.domain).await?; let mut l = v.door.list_snapshots(v.out(r)).await?; l.snapshots = v.back_all(l.snapshots); l };
    get_vm_snapshot(pb::SnapshotRef) -> pb::Snapshot = "GetVmSnapshot"
        => { let v = c.door_for(&who, &r.domain).await?; v.back(v.door.get_snapshot(&v.domain, &r.name).await?) };
    list_vm_snapshot_children(pb::ListChildrenRequest) -> pb::ListSnapshotsResponse = "ListVmSnapshotChildren"
        => { let v = c.door_for(&who, &r.domain).await?; let mut l = v.door.list_children(v.out(r)).await?; l.snapshots = v.back_all(l.snapshots); l };
}
