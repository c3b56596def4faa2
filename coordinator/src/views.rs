//! What the coordinator's listings return: domain types, converted to protobuf at the API's
//! edge (`convert`).

use crate::hosts::{HostStatus, Liveness};
use crate::states::Observed;
use crate::store::VmRecord;

/// A VM as its owner sees it.
#[derive(Debug, Clone)]
pub struct VmView {
    pub vm: VmRecord,
    /// Its host's liveness; `None` without a host, or for a host no longer known.
    pub host: Option<Liveness>,
    /// What its host last said, while that host is up.
    pub observed: Option<Observed>,
    /// The operation that holds the VM now.
    pub locked_by: Option<String>,
    /// Whether its guest is ready, and why not.
    pub readiness: (crate::guests::Readiness, String),
}

/// A base with the hosts holding it and its clone count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseSummary {
    pub name: String,
    pub hosts: Vec<String>,
    pub clones: u32,
    pub public: bool,
}

/// A host with what the coordinator knows of it and its VM count.
#[derive(Debug, Clone)]
pub struct HostSummary {
    pub name: String,
    pub status: HostStatus,
    pub liveness: Liveness,
    pub vms: u32,
}
