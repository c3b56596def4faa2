//! Conversions between the coordinator's records and protobuf, in one place: the gRPC
//! adapters convert at the edge, the logic below works with records and domain types.

use std::collections::HashMap;

use corral_client::proto as pb;

use crate::access::Rule;
use crate::base_access::AccessView;
use crate::error::CoordError;
use crate::hosts::Liveness;
use crate::orders::{BaseOnHost, BaseOrder, CloneOrder, CreateOrder, MoveOrder};
use crate::placing::Placed;
use crate::states::Observed;
use crate::store::{OpEvent, OpRecord, OpState, TokenRecord, UserRecord};
use crate::views::{BaseSummary, HostSummary, VmView};

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

pub fn op_event_to_pb(e: OpEvent) -> pb::OperationEvent {
    pb::OperationEvent {
        operation: e.op_id,
        seq: e.seq,
        at_unix_ms: e.at_ms,
        phase: e.phase,
        percent: e.percent.unwrap_or(-1.0),
        bytes: e.bytes.unwrap_or(0),
        message: e.message,
        state: e.state.map(|s| op_state(s) as i32).unwrap_or(0),
    }
}

/// Where a clone would go, and why each other host would not take it.
pub fn placed_to_pb(p: Placed) -> pb::PlacementExplanation {
    pb::PlacementExplanation {
        chosen: p.host.clone().unwrap_or_default(),
        rejected: p
            .rejected()
            .into_iter()
            .map(|(host, reason)| pb::HostRejection { host, reason })
            .collect(),
    }
}

/// A token as listed: its id and times, never the secret nor its hash.
pub fn token_to_pb(t: &TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        id: t.id().into(),
        user: t.user.clone(),
        created_unix_ms: t.created_ms,
        expires_unix_ms: t.expires_ms.unwrap_or(0),
    }
}

pub fn user_to_pb(u: &UserRecord) -> pb::User {
    let attributes: HashMap<String, String> = u
        .attributes
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    pb::User {
        name: u.name.clone(),
        role: u.role.clone(),
        attributes,
    }
}

/// A host's liveness as the API shows it.
pub fn liveness(l: Option<Liveness>) -> pb::HostState {
    match l {
        None => pb::HostState::Unspecified,
        Some(Liveness::Unknown) => pb::HostState::Unknown,
        Some(Liveness::Up) => pb::HostState::Up,
        Some(Liveness::Down) => pb::HostState::Down,
    }
}

/// A host as the API shows it: its record, last heartbeat and state, and its VM count.
pub fn host_to_pb(h: HostSummary) -> pb::Host {
    let st = h.status;
    pb::Host {
        vms: h.vms,
        address: st
            .record
            .as_ref()
            .map(|r| r.address.clone())
            .unwrap_or_default(),
        enabled: st.record.as_ref().is_some_and(|r| r.enabled),
        state: liveness(Some(h.liveness)) as i32,
        last_seen_unix_ms: st.last_seen_ms,
        info: st.info,
        bases: st.bases.into_iter().collect(),
        last_error: st.last_error,
        name: h.name,
    }
}

pub fn vm_to_pb(v: VmView) -> pb::Vm {
    let volatility = crate::volatile::Volatility::of(&v.vm);
    let vm = v.vm;
    let (domain, pool) = (vm.domain().to_string(), vm.is_pool());
    let run_timeout_seconds = crate::idle::vm_run_timeout(&vm);
    pb::Vm {
        details: None,
        domain,
        pool,
        name: vm.name,
        owner: vm.owner,
        base: vm.base.unwrap_or_default(),
        host: vm.host.unwrap_or_default(),
        desired_state: vm.desired_state.as_str().into(),
        observed_state: v
            .observed
            .map_or(pb::DomainState::Unspecified, Observed::domain_state)
            as i32,
        locked_by: v.locked_by.unwrap_or_default(),
        host_state: liveness(v.host) as i32,
        volatile: volatility.is_some(),
        expires_unix_ms: volatility.and_then(|v| v.expires_ms).unwrap_or(0),
        run_timeout_seconds,
        run_left_seconds: None,
        idle_left_seconds: None,
        readiness: v.readiness.0.to_pb() as i32,
        readiness_detail: v.readiness.1,
    }
}

pub fn base_summary_to_pb(b: BaseSummary) -> pb::BaseSummary {
    pb::BaseSummary {
        name: b.name,
        hosts: b.hosts,
        clones: b.clones,
        public: b.public,
    }
}

/// An empty protobuf string is "not given".
fn given(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn spec_of(spec: Option<pb::DomainSpec>) -> Result<pb::DomainSpec, CoordError> {
    spec.ok_or_else(|| CoordError::Invalid("a domain spec is required".into()))
}

impl TryFrom<pb::CloneVmRequest> for CloneOrder {
    type Error = CoordError;
    fn try_from(r: pb::CloneVmRequest) -> Result<Self, CoordError> {
        let copy_data = match pb::DataVolumeMode::try_from(r.data_volumes) {
            Ok(pb::DataVolumeMode::Copy) => true,
            Ok(_) => false,
            Err(_) => {
                return Err(CoordError::Invalid(format!(
                    "unknown data volume mode {}: use empty or copy",
                    r.data_volumes
                )))
            }
        };
        Ok(Self {
            base: r.base,
            name: r.name,
            start: r.start,
            labels: r.labels,
            keep_together: r.keep_together,
            key: given(r.idempotency_key),
            owner: given(r.owner),
            volatile: r.volatile,
            lifetime: (r.lifetime_seconds > 0)
                .then(|| std::time::Duration::from_secs(r.lifetime_seconds)),
            pool: false,
            memory_mib: r.memory_mib,
            vcpus: r.vcpus,
            copy_data,
            plan: given(r.plan),
        })
    }
}

impl TryFrom<pb::CreateVmRequest> for CreateOrder {
    type Error = CoordError;
    fn try_from(r: pb::CreateVmRequest) -> Result<Self, CoordError> {
        Ok(Self {
            spec: spec_of(r.spec)?,
            host: given(r.host),
            start: r.start,
            owner: given(r.owner),
            key: given(r.idempotency_key),
            plan: given(r.plan),
        })
    }
}

impl TryFrom<pb::CreateBaseRequest> for BaseOrder {
    type Error = CoordError;
    fn try_from(r: pb::CreateBaseRequest) -> Result<Self, CoordError> {
        Ok(Self {
            spec: spec_of(r.spec)?,
            host: r.host,
            key: given(r.idempotency_key),
        })
    }
}

impl From<pb::SyncBaseRequest> for BaseOnHost {
    fn from(r: pb::SyncBaseRequest) -> Self {
        Self {
            base: r.base,
            host: r.host,
            bandwidth_limit: r.bandwidth_limit,
        }
    }
}

impl From<pb::MoveVmRequest> for MoveOrder {
    fn from(r: pb::MoveVmRequest) -> Self {
        Self {
            name: r.name,
            host: r.host,
            live: r.live,
            bandwidth_limit: r.bandwidth_limit,
        }
    }
}

/// A rule from the API (required).
pub fn rule_of(r: Option<pb::AccessRule>) -> Result<Rule, CoordError> {
    let r = r.ok_or_else(|| CoordError::Invalid("a rule is required".into()))?;
    Ok(Rule {
        attribute: r.attribute,
        value: r.value,
        allowed: r.allowed,
        last: r.last,
    })
}

pub fn access_to_pb(v: AccessView) -> pb::BaseAccess {
    let explanation = v.explanation();
    pb::BaseAccess {
        base: v.base,
        public: v.access.public,
        rules: v
            .access
            .rules
            .into_iter()
            .map(|r| pb::AccessRule {
                attribute: r.attribute,
                value: r.value,
                allowed: r.allowed,
                last: r.last,
            })
            .collect(),
        user: v.user,
        allowed: v.decision.allowed,
        explanation,
    }
}

pub fn pool_to_pb(p: crate::pools::PoolStatus) -> pb::BasePool {
    pb::BasePool {
        base: p.base,
        clones: p.size.clones,
        start: p.size.start,
        made: p.made,
        running: p.running,
        making: p.making,
        ready: p.ready,
    }
}

/// A disk snapshot change; an unknown action is refused.
pub fn disk_snapshot_of(
    r: &pb::SnapshotVmDiskRequest,
) -> Result<crate::lifecycle::Action, CoordError> {
    let action = pb::VolumeSnapshotAction::try_from(r.action).map_err(|_| {
        CoordError::Invalid(format!(
            "snapshot action {} is unknown: create, revert or delete",
            r.action
        ))
    })?;
    Ok(crate::lifecycle::Action::DiskSnapshot {
        volume: r.volume.clone(),
        snapshot: r.snapshot.clone(),
        action,
    })
}

/// A disk to add: swap or data only.
pub fn add_disk_of(r: &pb::AddVmDiskRequest) -> Result<crate::lifecycle::Action, CoordError> {
    let swap = match pb::VolumeRole::try_from(r.role) {
        Ok(pb::VolumeRole::Swap) => true,
        Ok(pb::VolumeRole::Data) => false,
        _ => {
            return Err(CoordError::Invalid(format!(
                "role {} cannot be added: give swap or data",
                r.role
            )))
        }
    };
    let raw = match pb::VolumeFormat::try_from(r.format) {
        Ok(pb::VolumeFormat::Unspecified | pb::VolumeFormat::Qcow2) => false,
        Ok(pb::VolumeFormat::Raw) => true,
        Err(_) => {
            return Err(CoordError::Invalid(format!(
                "format {} is unknown: give qcow2 or raw",
                r.format
            )))
        }
    };
    Ok(crate::lifecycle::Action::AddDisk {
        swap,
        size_bytes: r.size_bytes,
        raw,
    })
}

pub fn timeouts_of(r: &pb::BaseTimeouts) -> crate::idle::Timeouts {
    crate::idle::Timeouts {
        run_seconds: r.run_seconds,
        idle_seconds: r.idle_seconds,
        idle_hibernate: r.idle_hibernate,
    }
}

pub fn timeouts_to_pb(base: &str, t: crate::idle::Timeouts) -> pb::BaseTimeouts {
    pb::BaseTimeouts {
        base: base.into(),
        run_seconds: t.run_seconds,
        idle_seconds: t.idle_seconds,
        idle_hibernate: t.idle_hibernate,
    }
}

pub fn plan_of(r: pb::Plan) -> crate::plans::Plan {
    crate::plans::Plan {
        name: r.name,
        memory_mib: r.memory_mib,
        vcpus: r.vcpus,
        disk_bytes: r.disk_bytes,
    }
}

pub fn plan_to_pb(p: crate::plans::Plan) -> pb::Plan {
    pb::Plan {
        name: p.name,
        memory_mib: p.memory_mib,
        vcpus: p.vcpus,
        disk_bytes: p.disk_bytes,
    }
}
