//! gRPC services: thin adapters from protobuf requests to [`Agent`] methods.
//!
//! Every RPC runs in its own `rpc` span, and its work runs on a blocking thread.

use std::sync::Arc;

use tonic::{Response, Status};
use tracing::Instrument;

use crate::agent::Agent;

mod bases;
mod domains;
mod host;
mod ports;
mod snapshots;
mod transfer;
mod volumes;

pub use bases::BaseApi;
pub use domains::DomainApi;
pub use host::HostApi;
pub use ports::PortApi;
pub use snapshots::SnapshotApi;
pub use transfer::{PeerApi, SyncApi};
pub use volumes::VolumeApi;

/// Runs `f` on a blocking thread inside an `rpc` span and maps its error to a Status.
pub(crate) async fn run<T, F>(
    agent: &Arc<Agent>,
    rpc: &'static str,
    target: &str,
    f: F,
) -> Result<Response<T>, Status>
where
    T: Send + 'static,
    F: FnOnce(&Agent) -> crate::error::Result<T> + Send + 'static,
{
    let span = tracing::info_span!("rpc", rpc, target);
    let started = std::time::Instant::now();
    let result = agent.blocking(f).instrument(span.clone()).await;
    let _e = span.enter();
    match result {
        Ok(v) => {
            tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "ok");
            Ok(Response::new(v))
        }
        Err(e) => {
            tracing::info!(code = ?e.code(), error = %e, "failed");
            Err(e.into())
        }
    }
}
