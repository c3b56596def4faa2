//! Names of hosts, bases, VMs, users and snapshots, checked with the agent's own rules
//! ([`corral_proto::rules`]), and the one namespace VMs and bases share.

use corral_proto::rules;

use crate::error::{CoordError, Result};

impl From<rules::Invalid> for CoordError {
    fn from(e: rules::Invalid) -> Self {
        CoordError::Invalid(e.0)
    }
}

/// Names: 1-64 of `[A-Za-z0-9._-]`, not starting with `.`/`-`, without `..`.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    Ok(rules::name(what, name)?)
}

/// How pool clones' names start; no other VM or base may take such a name (a VM handed out
/// from a pool keeps its pool clone's domain on the host).
pub const POOL_PREFIX: &str = "pool-";

/// Refuses a name kept for pool clones.
pub fn not_reserved(name: &str) -> Result<()> {
    if name.starts_with(POOL_PREFIX) {
        return Err(CoordError::Invalid(format!(
            "{name}: names starting with {POOL_PREFIX} are kept for pool clones"
        )));
    }
    Ok(())
}

/// The answer when a VM or base name is taken (by `what`: "VM" or "base").
pub fn taken(what: &str, name: &str) -> CoordError {
    CoordError::AlreadyExists(format!(
        "{name} already exists as a {what}: VMs and bases share one namespace"
    ))
}

/// An agent's address as given to `AddHost`, checked and put in one form (`host:port`, the
/// host in lower case, a `http://`/`https://` prefix and a trailing `/` dropped), so that two
/// spellings of one agent are seen as the same address.
pub fn agent_address(given: &str) -> Result<String> {
    let bad = |why: &str| {
        Err(CoordError::Invalid(format!(
            "invalid agent address {given:?}: {why}"
        )))
    };
    if given.is_empty() {
        return Err(CoordError::Invalid("an agent address is required".into()));
    }
    if given.len() > 300 {
        return bad("it is longer than 300 characters");
    }
    if given
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || rules::is_bidi_control(c))
    {
        return bad("it contains a space or a control character");
    }
    let rest = given
        .strip_prefix("https://")
        .or_else(|| given.strip_prefix("http://"))
        .unwrap_or(given);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains("://") || rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return bad("give host:port (a URL may only be http:// or https:// with no path)");
    }
    if let Ok(sa) = rest.parse::<std::net::SocketAddr>() {
        if sa.port() == 0 {
            return bad("port 0 is out of range: 1 to 65535");
        }
        return Ok(sa.to_string());
    }
    let Some((host, port)) = rest.rsplit_once(':') else {
        return bad("it has no port: give host:port");
    };
    match port.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => {}
        Ok(p) => return bad(&format!("port {p} is out of range: 1 to 65535")),
        Err(_) => return bad(&format!("port {port:?} is not a number")),
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return bad(&format!("{host:?} is not an IP address or a host name"));
    }
    Ok(format!("{}:{port}", host.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_addresses_are_checked_and_normalised() {
        for (given, want) in [
            ("10.0.0.1:7700", "10.0.0.1:7700"),
            ("https://10.0.0.1:7700/", "10.0.0.1:7700"),
            ("http://Agent-1.Lab:7700", "agent-1.lab:7700"),
            ("[::1]:7700", "[::1]:7700"),
        ] {
            assert_eq!(agent_address(given).unwrap(), want, "{given}");
        }
        for (given, why) in [
            ("10.0.0.1:0", "out of range"),
            ("10.0.0.1:99999", "out of range"),
            ("10.0.0.1:7700\n", "control"),
            ("10.0.0.1", "no port"),
            ("h:port", "not a number"),
            ("ftp://h:1", "host:port"),
            ("h/x:1", "host:port"),
            ("a b:1", "space"),
            ("-bad:1", "not an IP address"),
            ("", "required"),
        ] {
            let e = agent_address(given).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.to_string().contains(why), "{given:?}: {e}");
        }
    }
}
