//! gRPC services of the coordinator; every call is authenticated by [`crate::auth`].

use std::future::Future;
use std::sync::Arc;

use crate::door::AgentDoor;
use corral_client::proto as pb;
use tonic::{Request, Response, Status};

use crate::auth::caller;
use crate::store::{OpRecord, OpState};
use crate::vms::Coordinator;

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

/// Passes a request naming a VM (`vm` reads the name) through the door of the agent
/// holding it, when the caller may touch that VM (others' VMs look absent).
pub(crate) async fn pass<Req, T, Fut>(
    coord: &Coordinator,
    req: Request<Req>,
    vm: fn(&Req) -> &str,
    call: impl FnOnce(Arc<dyn AgentDoor>, Req) -> Fut,
) -> Result<Response<T>, Status>
where
    Fut: Future<Output = crate::error::Result<T>>,
{
    let who = caller(&req)?;
    let r = req.into_inner();
    let door = coord.door_for(&who, vm(&r)).await?;
    Ok(Response::new(call(door, r).await?))
}
