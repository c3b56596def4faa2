//! gRPC services of the coordinator; every call is authenticated by [`crate::auth`].

use corral_client::proto as pb;

use crate::store::{OpRecord, OpState};

mod access;
mod hosts;
mod operations;
mod snapshots;
mod users;
mod vms;

pub use access::VmAccessApi;
pub use hosts::HostAdminApi;
pub use operations::OperationApi;
pub use snapshots::VmSnapshotApi;
pub use users::UserApi;
pub use vms::VmApi;

pub fn op_state(s: OpState) -> pb::OperationState {
    match s {
        OpState::Queued => pb::OperationState::Queued,
        OpState::Running => pb::OperationState::Running,
        OpState::Succeeded => pb::OperationState::Succeeded,
        OpState::Failed => pb::OperationState::Failed,
        OpState::Cancelled => pb::OperationState::Cancelled,
    }
}

pub fn op_to_pb(op: &OpRecord) -> pb::Operation {
    pb::Operation {
        id: op.id.clone(),
        kind: op.kind.clone(),
        vm: op.vm.clone().unwrap_or_default(),
        host: op.host.clone().unwrap_or_default(),
        user: op.user.clone().unwrap_or_default(),
        state: op_state(op.state) as i32,
        error: op.error.clone().unwrap_or_default(),
        result: op
            .result
            .as_ref()
            .map(|r| r.to_string())
            .unwrap_or_default(),
        created_unix_ms: op.created_ms,
        updated_unix_ms: op.updated_ms,
    }
}
