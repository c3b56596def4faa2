//! Conversions between the coordinator's records and protobuf, in one place: the gRPC
//! adapters convert at the edge, the logic below works with records and domain types.

use std::collections::HashMap;

use corral_client::proto as pb;

use crate::hosts::HostStatus;
use crate::store::{OpRecord, OpState, UserRecord};

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

/// A host as the API shows it: its record, last heartbeat and state, and its VM count.
pub fn host_to_pb(name: String, st: &HostStatus, state: pb::HostState, vms: u32) -> pb::Host {
    pb::Host {
        vms,
        address: st
            .record
            .as_ref()
            .map(|r| r.address.clone())
            .unwrap_or_default(),
        enabled: st.record.as_ref().is_some_and(|r| r.enabled),
        state: state as i32,
        last_seen_unix_ms: st.last_seen_ms,
        info: st.info.clone(),
        bases: st.bases.iter().cloned().collect(),
        last_error: st.last_error.clone(),
        name,
    }
}
