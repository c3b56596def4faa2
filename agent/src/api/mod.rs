//! gRPC services: thin adapters from protobuf requests to [`Agent`] methods.
//!
//! Every RPC runs in its own `rpc` span, and its work runs on a blocking thread.

use std::sync::Arc;

use tonic::{Response, Status};
use tracing::Instrument;

use crate::agent::Agent;

/// Writes a gRPC service's unary RPCs, one line each, in the one shape of [`run`]:
///
/// `method(Request) -> Response = "RpcName" [by target] => body;`
///
/// The header names the agent and the request as the bodies see them (`|a, r|`); `by` gives
/// the span's target (read from the request before the body runs). Streaming and other hand-written
/// methods follow `@more { ... }`.
macro_rules! rpcs {
    (
        $api:ident: $service:path, |$a:ident, $r:ident|;
        $( $method:ident($req:ty) -> $resp:ty = $label:literal $(by $target:expr)? => $body:expr; )*
        $( @more { $($more:tt)* } )?
    ) => {
        #[tonic::async_trait]
        impl $service for $api {
            $(
                async fn $method(
                    &self,
                    req: tonic::Request<$req>,
                ) -> Result<tonic::Response<$resp>, tonic::Status> {
                    let $r = req.into_inner();
                    let target: String = rpcs!(@target $($target)?);
                    $crate::api::run(&self.0, $label, &target, move |$a| {
                        let _ = &$r;
                        $body
                    })
                    .await
                }
            )*
            $( $($more)* )?
        }
    };
    (@target) => { String::new() };
    (@target $target:expr) => { $target.to_string() };
}

mod bases;
mod domains;
mod guest;
mod host;
mod ports;
mod snapshots;
mod transfer;
mod volumes;

pub use bases::BaseApi;
pub use domains::DomainApi;
pub use guest::GuestApi;
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
