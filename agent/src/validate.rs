//! Validation of everything a request carries, before anything on the host changes.

use crate::error::{AgentError, Result};

/// Longest name accepted for domains, volumes, snapshots and ports.
pub const MAX_NAME_LEN: usize = 64;
/// Largest volume accepted: 64 TiB.
pub const MAX_VOLUME_BYTES: u64 = 64 << 40;
/// Smallest volume accepted: 1 MiB.
pub const MIN_VOLUME_BYTES: u64 = 1 << 20;
pub const MIN_MEMORY_MIB: u64 = 32;
pub const MAX_MEMORY_MIB: u64 = 4 << 20;
pub const MAX_VCPUS: u32 = 512;

/// Checks a name used for a domain, volume, snapshot or port (`what` names it in messages).
///
/// Accepted: 1 to 64 characters of ASCII letters, digits, `.`, `_` and `-`, not starting with
/// `.` or `-`. Everything else gets a message saying what is wrong.
pub fn name(what: &str, value: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(AgentError::invalid(format!(
            "invalid {what} name {value:?}: {why}"
        )))
    };
    if value.is_empty() {
        return Err(AgentError::invalid(format!(
            "{what} name must not be empty"
        )));
    }
    if value.len() > MAX_NAME_LEN {
        return bad(&format!(
            "it is {} characters long, at most {MAX_NAME_LEN} are allowed",
            value.len()
        ));
    }
    if value.contains('\0') {
        return bad("it contains a NUL byte");
    }
    if value.chars().any(char::is_control) {
        return bad("it contains a control character");
    }
    if value.contains('/') {
        return bad("it contains '/'");
    }
    if value.contains("..") {
        return bad("it contains '..'");
    }
    if value.starts_with('.') || value.starts_with('-') {
        return bad("it must not start with '.' or '-'");
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return bad(&format!(
            "character {c:?} is not allowed (use letters, digits, '.', '_' and '-')"
        ));
    }
    Ok(())
}

/// Checks a volume size in bytes.
pub fn volume_size(bytes: u64) -> Result<()> {
    if bytes == 0 {
        return Err(AgentError::invalid("volume size must be greater than zero"));
    }
    if bytes < MIN_VOLUME_BYTES {
        return Err(AgentError::invalid(format!(
            "volume size {bytes} bytes is too small: at least 1 MiB ({MIN_VOLUME_BYTES} bytes)"
        )));
    }
    if bytes > MAX_VOLUME_BYTES {
        return Err(AgentError::invalid(format!(
            "volume size {bytes} bytes is too large: at most 64 TiB ({MAX_VOLUME_BYTES} bytes)"
        )));
    }
    Ok(())
}

pub fn memory_mib(mib: u64) -> Result<()> {
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) {
        return Err(AgentError::invalid(format!(
            "memory of {mib} MiB is out of range: {MIN_MEMORY_MIB} MiB to {MAX_MEMORY_MIB} MiB"
        )));
    }
    Ok(())
}

pub fn vcpus(n: u32) -> Result<()> {
    if n == 0 || n > MAX_VCPUS {
        return Err(AgentError::invalid(format!(
            "{n} vCPUs is out of range: 1 to {MAX_VCPUS}"
        )));
    }
    Ok(())
}

/// Checks a TCP port number (1 to 65535) carried as u32 in protobuf.
pub fn port(what: &str, value: u32) -> Result<u16> {
    match u16::try_from(value) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(AgentError::invalid(format!(
            "{what} {value} is out of range: 1 to 65535"
        ))),
    }
}

/// Checks a MAC address given by a user (unicast, `xx:xx:xx:xx:xx:xx`).
pub fn mac(value: &str) -> Result<()> {
    let parts: Vec<&str> = value.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if !ok {
        return Err(AgentError::invalid(format!(
            "invalid MAC address {value:?}: expected six hex pairs like 52:54:00:12:34:56"
        )));
    }
    let first = u8::from_str_radix(parts[0], 16).map_err(|e| AgentError::invalid(e.to_string()))?;
    if first & 1 == 1 {
        return Err(AgentError::invalid(format!(
            "invalid MAC address {value:?}: it is a multicast address"
        )));
    }
    Ok(())
}

/// Checks a label key or value (free-form but printable, bounded).
pub fn label(key: &str, value: &str) -> Result<()> {
    if key.is_empty() || key.len() > 63 || value.len() > 255 {
        return Err(AgentError::invalid(format!(
            "invalid label {key:?}: keys are 1-63 characters, values at most 255"
        )));
    }
    if key.chars().chain(value.chars()).any(char::is_control) {
        return Err(AgentError::invalid(format!(
            "invalid label {key:?}: control characters are not allowed"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for n in ["web1", "a", "Base_2.qcow2", "lab-01", &"x".repeat(64)] {
            name("domain", n).unwrap();
        }
    }

    #[test]
    fn bad_names_say_why() {
        let cases = [
            ("", "must not be empty"),
            (&"x".repeat(65), "at most 64"),
            ("a/b", "'/'"),
            ("..", "'..'"),
            ("a..b", "'..'"),
            ("a\0b", "NUL"),
            ("a\nb", "control"),
            (".hidden", "start with"),
            ("-opt", "start with"),
            ("a b", "not allowed"),
            ("é", "not allowed"),
        ];
        for (n, why) in cases {
            let msg = name("domain", n).unwrap_err().to_string();
            assert!(msg.contains(why), "{n:?}: {msg}");
        }
    }

    #[test]
    fn sizes_ports_and_macs() {
        assert!(volume_size(0)
            .unwrap_err()
            .to_string()
            .contains("greater than zero"));
        assert!(volume_size(u64::MAX)
            .unwrap_err()
            .to_string()
            .contains("too large"));
        volume_size(1 << 30).unwrap();
        assert!(port("guest port", 0).is_err());
        assert!(port("guest port", 70000).is_err());
        assert_eq!(port("guest port", 80).unwrap(), 80);
        mac("52:54:00:aa:bb:cc").unwrap();
        assert!(mac("01:00:00:00:00:00").is_err());
        assert!(mac("52:54:00:aa:bb").is_err());
        assert!(memory_mib(8).is_err());
        assert!(vcpus(0).is_err());
    }
}
