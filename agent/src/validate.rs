//! Validation of everything a request carries, before anything on the host changes.
//!
//! The rules themselves live in [`corral_proto::rules`], shared with the coordinator (which
//! applies them before it submits an operation); this module maps them to [`AgentError`].

use corral_proto::rules;
pub use corral_proto::rules::{
    MAX_MEMORY_MIB, MAX_NAME_LEN, MAX_VCPUS, MAX_VOLUME_BYTES, MIN_MEMORY_MIB, MIN_VOLUME_BYTES,
    NIC_MODELS, VIDEO_MODELS,
};

use crate::error::{AgentError, Result};

impl From<rules::Invalid> for AgentError {
    fn from(e: rules::Invalid) -> Self {
        AgentError::InvalidArgument(e.0)
    }
}

/// Checks a name used for a domain, volume, snapshot or port (`what` names it in messages).
pub fn name(what: &str, value: &str) -> Result<()> {
    Ok(rules::name(what, value)?)
}

/// Checks a volume size in bytes.
pub fn volume_size(bytes: u64) -> Result<()> {
    Ok(rules::volume_size(bytes)?)
}

pub fn memory_mib(mib: u64) -> Result<()> {
    Ok(rules::memory_mib(mib)?)
}

pub fn vcpus(n: u32) -> Result<()> {
    Ok(rules::vcpus(n)?)
}

/// Checks a TCP port number (1 to 65535) carried as u32 in protobuf.
pub fn port(what: &str, value: u32) -> Result<u16> {
    Ok(rules::port(what, value)?)
}

/// Checks a MAC address given by a user (unicast, `xx:xx:xx:xx:xx:xx`).
pub fn mac(value: &str) -> Result<()> {
    Ok(rules::mac(value)?)
}

/// Checks a label key or value (free-form but printable, bounded).
pub fn label(key: &str, value: &str) -> Result<()> {
    Ok(rules::label(key, value)?)
}

/// Checks free text such as a snapshot description.
pub fn text(what: &str, value: &str) -> Result<()> {
    Ok(rules::text(what, value)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_become_invalid_argument() {
        let e = name("domain", "a/b").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.to_string().contains("'/'"));
        assert_eq!(port("guest port", 80).unwrap(), 80);
    }
}
