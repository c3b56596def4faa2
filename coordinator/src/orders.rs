//! What callers ask the coordinator to do, as domain types: the gRPC adapters convert the
//! protobuf requests into these (`convert`), so the logic never reads a protobuf request.
//! Empty protobuf strings become `None` here, once.
//!
//! A domain spec stays the agent's protobuf `DomainSpec`: the coordinator checks it with the
//! agent's own rules and hands it on unchanged.

use std::collections::HashMap;

use corral_client::proto::DomainSpec;

/// A clone of a base (`corral vm clone`).
#[derive(Debug, Clone, Default)]
pub struct CloneOrder {
    pub base: String,
    pub name: String,
    pub start: bool,
    pub labels: HashMap<String, String>,
    /// Place it beside the owner's other VMs.
    pub keep_together: bool,
    /// Retrying with the same key returns the same operation.
    pub key: Option<String>,
    /// Another user's (admins only); the caller when `None`.
    pub owner: Option<String>,
    /// Removed when it shuts down or `lifetime` ends (volatile clones start at once).
    pub volatile: bool,
    pub lifetime: Option<std::time::Duration>,
    /// A pool clone, made by the pool manager (its record exists before the operation).
    pub pool: bool,
    /// Overrides of the base's memory (MiB) and vCPUs; 0 keeps the base's.
    pub memory_mib: u64,
    pub vcpus: u32,
    /// Data disks copied from the base instead of made empty.
    pub copy_data: bool,
    /// A plan's sizes instead of the base's (`plans.rs`).
    pub plan: Option<String>,
}

/// A VM defined from a spec (admins).
#[derive(Debug, Clone)]
pub struct CreateOrder {
    pub spec: DomainSpec,
    /// Placed by the scheduler when `None`.
    pub host: Option<String>,
    pub start: bool,
    pub owner: Option<String>,
    pub key: Option<String>,
    /// A plan's memory, vCPUs and system disk size over the spec's.
    pub plan: Option<String>,
}

/// A base defined from a spec on one host (admins).
#[derive(Debug, Clone)]
pub struct BaseOrder {
    pub spec: DomainSpec,
    pub host: String,
    pub key: Option<String>,
}

/// A base's copy on one host: to make (sync) or to remove.
#[derive(Debug, Clone, Default)]
pub struct BaseOnHost {
    pub base: String,
    pub host: String,
    /// Bytes per second between the agents; 0 for no limit.
    pub bandwidth_limit: u64,
}

/// A VM moved to another host (admins).
#[derive(Debug, Clone, Default)]
pub struct MoveOrder {
    pub name: String,
    pub host: String,
    /// Live (a running VM through libvirt's migration) rather than shut off.
    pub live: bool,
    pub bandwidth_limit: u64,
}
