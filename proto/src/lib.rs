//! Corral's protobuf API, versioned by package. Generated code lives in `v1`.

/// `corral.v1`: the agent's services and messages.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("corral.v1");
}

/// Encoded `FileDescriptorSet` of every Corral proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/corral_descriptor.bin"));

pub mod env;

/// The request header naming the operation a call works for (set by the coordinator on its
/// calls to agents): its log lines on every process carry `op=ID`.
pub const OPERATION_HEADER: &str = "corral-operation";
/// The request header naming the leading coordinator's term (set on its calls to agents):
/// agents refuse calls from a lower term than they have seen ([`fence`]).
pub const TERM_HEADER: &str = "corral-term";
#[cfg(feature = "metrics")]
pub mod fence;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "metrics")]
pub mod observe;
#[cfg(feature = "process")]
pub mod process;
pub mod rules;

/// The gRPC services the agent serves (what its reflection advertises).
pub const AGENT_SERVICES: &[&str] = &[
    v1::host_service_server::SERVICE_NAME,
    v1::domain_service_server::SERVICE_NAME,
    v1::volume_service_server::SERVICE_NAME,
    v1::base_service_server::SERVICE_NAME,
    v1::snapshot_service_server::SERVICE_NAME,
    v1::port_service_server::SERVICE_NAME,
    v1::volume_sync_service_server::SERVICE_NAME,
    v1::peer_transfer_service_server::SERVICE_NAME,
    v1::guest_service_server::SERVICE_NAME,
];

/// The gRPC services the coordinator serves (what its reflection advertises).
pub const COORDINATOR_SERVICES: &[&str] = &[
    v1::host_admin_service_server::SERVICE_NAME,
    v1::vm_service_server::SERVICE_NAME,
    v1::operation_service_server::SERVICE_NAME,
    v1::user_service_server::SERVICE_NAME,
    v1::vm_snapshot_service_server::SERVICE_NAME,
    v1::vm_access_service_server::SERVICE_NAME,
    v1::vm_guest_service_server::SERVICE_NAME,
    v1::image_service_server::SERVICE_NAME,
    v1::backup_service_server::SERVICE_NAME,
    v1::event_service_server::SERVICE_NAME,
];

/// gRPC reflection (build it with `build_v1()` and again with `build_v1alpha()`: grpcurl and
/// older clients speak v1alpha) advertising exactly `services` and health.
pub fn reflection(services: &[&str]) -> tonic_reflection::server::Builder<'static> {
    services.iter().chain(&["grpc.health.v1.Health"]).fold(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
        |b, s| b.with_service_name(s.to_string()),
    )
}

/// Health (every one of `services` serving) and reflection in both versions, added to a
/// server that serves `services`: what the agent and the coordinator both serve beside
/// their own services.
pub async fn standard_router<L: Clone>(
    mut builder: tonic::transport::Server<L>,
    services: &[&str],
) -> Result<tonic::transport::server::Router<L>, tonic_reflection::server::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for s in services {
        reporter
            .set_service_status(*s, tonic_health::ServingStatus::Serving)
            .await;
    }
    Ok(builder
        .add_service(health)
        .add_service(reflection(services).build_v1()?)
        .add_service(reflection(services).build_v1alpha()?))
}

/// Adds gRPC services to a tonic router, each behind a clone of one interceptor:
///
/// `add_checked! { router, check; Server<_> => api, ... }`
#[macro_export]
macro_rules! add_checked {
    ($b:expr, $check:expr; $( $server:ty => $api:expr ),+ $(,)?) => {
        $b $( .add_service(<$server>::with_interceptor($api, $check.clone())) )+
    };
}
