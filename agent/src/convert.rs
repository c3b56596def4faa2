//! Conversions between protobuf messages and the agent's own types, in one place: the
//! gRPC edge converts, the logic below works with domain types.

use corral_proto::v1 as pb;

use crate::domain_xml::{Kind, Role};
use crate::error::{AgentError, Result};
use crate::hypervisor::DomState;
use crate::images::Format;

impl From<Kind> for pb::DomainKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Plain => Self::Plain,
            Kind::Base => Self::Base,
            Kind::Clone => Self::Clone,
        }
    }
}

/// Reads a protobuf role; unspecified means `system`, unknown values are refused.
pub fn role_from_pb(value: i32) -> Result<Role> {
    match pb::VolumeRole::try_from(value) {
        Ok(pb::VolumeRole::Unspecified | pb::VolumeRole::System) => Ok(Role::System),
        Ok(pb::VolumeRole::Tmp) => Ok(Role::Tmp),
        Ok(pb::VolumeRole::Swap) => Ok(Role::Swap),
        Ok(pb::VolumeRole::Data) => Ok(Role::Data),
        Err(_) => Err(AgentError::invalid(format!(
            "unknown volume role {value}: use system, tmp, swap or data"
        ))),
    }
}

pub fn role_to_pb(role: Role) -> pb::VolumeRole {
    match role {
        Role::System => pb::VolumeRole::System,
        Role::Tmp => pb::VolumeRole::Tmp,
        Role::Swap => pb::VolumeRole::Swap,
        Role::Data => pb::VolumeRole::Data,
    }
}

pub fn state_to_pb(s: DomState) -> pb::DomainState {
    match s {
        DomState::Running => pb::DomainState::Running,
        DomState::Paused => pb::DomainState::Paused,
        DomState::ShutOff => pb::DomainState::ShutOff,
        DomState::Hibernated => pb::DomainState::Hibernated,
        DomState::Crashed => pb::DomainState::Crashed,
        DomState::ShuttingDown => pb::DomainState::ShuttingDown,
        DomState::Blocked => pb::DomainState::Blocked,
        DomState::PmSuspended => pb::DomainState::PmSuspended,
    }
}

pub fn display_type(kind: &str) -> pb::DisplayType {
    match kind {
        "spice" => pb::DisplayType::Spice,
        "vnc" => pb::DisplayType::Vnc,
        _ => pb::DisplayType::Unspecified,
    }
}

pub fn format_from_pb(v: i32) -> Result<Option<Format>> {
    match pb::VolumeFormat::try_from(v) {
        Ok(pb::VolumeFormat::Unspecified) => Ok(None),
        Ok(pb::VolumeFormat::Qcow2) => Ok(Some(Format::Qcow2)),
        Ok(pb::VolumeFormat::Raw) => Ok(Some(Format::Raw)),
        Err(_) => Err(AgentError::invalid(format!(
            "unknown volume format {v}: use qcow2 or raw"
        ))),
    }
}
