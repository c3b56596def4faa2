//! gRPC services of the coordinator; every call is authenticated by [`crate::auth`].

use std::future::Future;
use std::sync::Arc;

use crate::door::AgentDoor;
use tonic::{Request, Response, Status};

use crate::auth::caller;
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

pub use crate::convert::{op_state, op_to_pb};

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
