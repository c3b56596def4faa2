//! Corral's protobuf API, versioned by package. Generated code lives in `v1`.

/// `corral.v1`: the agent's services and messages.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("corral.v1");
}

/// Encoded `FileDescriptorSet` of every Corral proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/corral_descriptor.bin"));
