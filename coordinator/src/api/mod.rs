//! gRPC services of the coordinator; every call is authenticated by [`crate::auth`].

//!
//! Each RPC is one line of [`rpcs!`]: authenticate, convert the request, call the
//! coordinator, convert the answer; errors map to a Status by `From<CoordError>`.

/// Writes a gRPC service's unary RPCs, one line each:
///
/// `method(Request) -> Response = "RpcName" => body;`
///
/// The header names what the bodies see (`|c, who, r|`): the coordinator, the authenticated
/// caller and the request. A body is an expression of the response's type; it may `.await`
/// and use `?`. Each RPC runs in a span named after it, as a dry run when the request asks
/// for one ([`crate::dry`]). Streaming and other hand-written
/// methods follow `@more { ... }`.
macro_rules! rpcs {
    (
        $api:ident: $service:path, |$c:ident, $who:ident, $r:ident|;
        $( $method:ident($req:ty) -> $resp:ty = $label:literal => $body:expr; )*
        $( @more { $($more:tt)* } )?
    ) => {
        #[tonic::async_trait]
        impl $service for $api {
            $(
                #[tracing::instrument(skip_all, fields(rpc = $label))]
                async fn $method(
                    &self,
                    req: tonic::Request<$req>,
                ) -> Result<tonic::Response<$resp>, tonic::Status> {
                    let dry = $crate::dry::asked($label, &req)?;
                    let $who = $crate::auth::caller(&req)?;
                    let $r = req.into_inner();
                    let $c = &self.0;
                    let _ = (&$c, &$who, &$r);
                    $crate::dry::scope(dry, async move {
                        Ok::<_, tonic::Status>(tonic::Response::new($body))
                    })
                    .await
                }
            )*
            $( $($more)* )?
        }
    };
}

mod access;
mod backups;
mod events;
mod guest;
mod hosts;
mod images;
mod operations;
mod snapshots;
mod users;
mod vms;

pub use access::VmAccessApi;
pub use backups::BackupApi;
pub use events::EventApi;
pub use guest::VmGuestApi;
pub use hosts::HostAdminApi;
pub use images::ImageApi;
pub use operations::OperationApi;
pub use snapshots::VmSnapshotApi;
pub use users::UserApi;
pub use vms::VmApi;

pub use crate::convert::{op_state, op_to_pb};
