//! Port exposure with iptables, behind the [`Firewall`] trait.
//!
//! Corral owns four chains and one jump into each; it never edits any other rule:
//! - nat `CORRAL-DNAT`, jumped to from `PREROUTING` (traffic from other hosts) and `OUTPUT`
//!   (traffic from this host): DNAT of host address:port to guest address:port;
//! - filter `CORRAL-FORWARD`, jumped to from the top of `FORWARD`: accepts DNATed traffic
//!   (libvirt's own FORWARD rules reject new connections into its NAT network otherwise);
//! - filter `CORRAL-INPUT`, jumped to from `INPUT`: display ports restricted to one client.
//!
//! Every rule carries a comment `corral:<domain>`. The whole content of the chains is
//! rendered from the agent's state and loaded with one `iptables-restore --noflush`, which
//! flushes and refills only Corral's chains, atomically. Re-applying is idempotent.

// This module wraps iptables: it may start it (arguments one by one).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::error::{AgentError, Result};

pub const CHAIN_DNAT: &str = "CORRAL-DNAT";
pub const CHAIN_FORWARD: &str = "CORRAL-FORWARD";
pub const CHAIN_INPUT: &str = "CORRAL-INPUT";

/// One rule Corral wants in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// host_address:host_port → guest_address:guest_port (TCP).
    Expose {
        domain: String,
        host_address: Ipv4Addr,
        host_port: u16,
        guest_address: Ipv4Addr,
        guest_port: u16,
    },
    /// Only `client` may open TCP connections to the display port.
    DisplayOnly {
        domain: String,
        display_port: u16,
        client: Ipv4Addr,
    },
}

/// The comment tagging a domain's rules.
pub fn tag(domain: &str) -> String {
    format!("corral:{domain}")
}

/// Renders the complete content of Corral's chains as `iptables-restore` input.
pub fn render(rules: &[Rule]) -> String {
    let mut nat = String::new();
    let mut filter = String::new();
    for rule in rules {
        match rule {
            Rule::Expose {
                domain,
                host_address,
                host_port,
                guest_address,
                guest_port,
            } => {
                let tag = tag(domain);
                nat.push_str(&format!(
                    "-A {CHAIN_DNAT} -d {host_address}/32 -p tcp -m tcp --dport {host_port} \
                     -m comment --comment \"{tag}\" \
                     -j DNAT --to-destination {guest_address}:{guest_port}\n"
                ));
                filter.push_str(&format!(
                    "-A {CHAIN_FORWARD} -d {guest_address}/32 -p tcp -m tcp --dport {guest_port} \
                     -m conntrack --ctstate DNAT -m comment --comment \"{tag}\" -j ACCEPT\n"
                ));
            }
            Rule::DisplayOnly {
                domain,
                display_port,
                client,
            } => {
                let tag = tag(domain);
                filter.push_str(&format!(
                    "-A {CHAIN_INPUT} -p tcp -m tcp --dport {display_port} ! -s {client}/32 \
                     ! -i lo -m comment --comment \"{tag}\" -j REJECT --reject-with tcp-reset\n"
                ));
            }
        }
    }
    format!(
        "*nat\n:{CHAIN_DNAT} - [0:0]\n{nat}COMMIT\n\
         *filter\n:{CHAIN_FORWARD} - [0:0]\n:{CHAIN_INPUT} - [0:0]\n{filter}COMMIT\n"
    )
}

/// Where Corral's jumps go: (table, built-in chain, Corral chain, must be first).
const JUMPS: [(&str, &str, &str, bool); 4] = [
    ("nat", "PREROUTING", CHAIN_DNAT, false),
    ("nat", "OUTPUT", CHAIN_DNAT, false),
    ("filter", "FORWARD", CHAIN_FORWARD, true),
    ("filter", "INPUT", CHAIN_INPUT, true),
];

/// Applies Corral's firewall rules. Blocking: call from a blocking thread.
pub trait Firewall: Send + Sync {
    /// Makes Corral's chains hold exactly `rules` (and their jumps exist, in place).
    fn sync(&self, rules: &[Rule]) -> Result<()>;
    /// The current rules in Corral's chains, as `iptables -S` lines.
    fn dump(&self) -> Result<Vec<String>>;
    /// Removes Corral's jumps and chains.
    fn teardown(&self) -> Result<()>;
}

/// The real iptables.
#[derive(Debug, Default)]
pub struct Iptables;

fn iptables(args: &[&str]) -> Result<String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| AgentError::Unavailable(format!("cannot run iptables: {e}")))?;
    if !out.status.success() {
        return Err(AgentError::internal(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Iptables {
    fn ensure_jumps(&self) -> Result<()> {
        for (table, chain, target, first) in JUMPS {
            let listing = iptables(&["-t", table, "-S", chain])?;
            let jump = format!("-A {chain} -j {target}");
            let rules: Vec<&str> = listing.lines().filter(|l| l.starts_with("-A ")).collect();
            let pos = rules.iter().position(|l| *l == jump);
            let ok = match pos {
                Some(0) => true,
                Some(_) => !first,
                None => false,
            };
            if ok {
                continue;
            }
            // Remove every copy, then put one where it belongs (libvirt inserts its own
            // FORWARD jumps at the top when its network starts).
            for _ in rules.iter().filter(|l| **l == jump) {
                iptables(&["-t", table, "-D", chain, "-j", target])?;
            }
            if first {
                iptables(&["-t", table, "-I", chain, "1", "-j", target])?;
            } else {
                iptables(&["-t", table, "-A", chain, "-j", target])?;
            }
        }
        Ok(())
    }
}

impl Firewall for Iptables {
    fn sync(&self, rules: &[Rule]) -> Result<()> {
        let input = render(rules);
        let _span = tracing::debug_span!("iptables-restore", rules = rules.len()).entered();
        let mut child = Command::new("iptables-restore")
            .args(["-w", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| AgentError::Unavailable(format!("cannot run iptables-restore: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(AgentError::internal(format!(
                "iptables-restore: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        self.ensure_jumps()
    }

    fn dump(&self) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        for (table, chain) in [
            ("nat", CHAIN_DNAT),
            ("filter", CHAIN_FORWARD),
            ("filter", CHAIN_INPUT),
        ] {
            if let Ok(out) = iptables(&["-t", table, "-S", chain]) {
                lines.extend(
                    out.lines()
                        .filter(|l| l.starts_with("-A "))
                        .map(String::from),
                );
            }
        }
        Ok(lines)
    }

    fn teardown(&self) -> Result<()> {
        for (table, chain, target, _) in JUMPS {
            while iptables(&["-t", table, "-D", chain, "-j", target]).is_ok() {}
        }
        for (table, chain) in [
            ("nat", CHAIN_DNAT),
            ("filter", CHAIN_FORWARD),
            ("filter", CHAIN_INPUT),
        ] {
            let _ = iptables(&["-t", table, "-F", chain]);
            let _ = iptables(&["-t", table, "-X", chain]);
        }
        Ok(())
    }
}

/// No firewall: exposing ports is refused (hosts without iptables, `test:///` drivers).
#[derive(Debug, Default)]
pub struct NoFirewall;

impl Firewall for NoFirewall {
    fn sync(&self, rules: &[Rule]) -> Result<()> {
        if rules.is_empty() {
            Ok(())
        } else {
            Err(AgentError::Unsupported(
                "this agent runs without a firewall (firewall = \"none\"): ports cannot be exposed"
                    .into(),
            ))
        }
    }
    fn dump(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    fn teardown(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_dnat_forward_and_display_rules() {
        let rules = vec![
            Rule::Expose {
                domain: "web1".into(),
                host_address: Ipv4Addr::new(10, 0, 0, 1),
                host_port: 20000,
                guest_address: Ipv4Addr::new(192, 168, 122, 5),
                guest_port: 80,
            },
            Rule::DisplayOnly {
                domain: "web1".into(),
                display_port: 5900,
                client: Ipv4Addr::new(10, 0, 0, 9),
            },
        ];
        let text = render(&rules);
        let expected = "*nat\n:CORRAL-DNAT - [0:0]\n\
            -A CORRAL-DNAT -d 10.0.0.1/32 -p tcp -m tcp --dport 20000 -m comment --comment \"corral:web1\" -j DNAT --to-destination 192.168.122.5:80\n\
            COMMIT\n*filter\n:CORRAL-FORWARD - [0:0]\n:CORRAL-INPUT - [0:0]\n\
            -A CORRAL-FORWARD -d 192.168.122.5/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT -m comment --comment \"corral:web1\" -j ACCEPT\n\
            -A CORRAL-INPUT -p tcp -m tcp --dport 5900 ! -s 10.0.0.9/32 ! -i lo -m comment --comment \"corral:web1\" -j REJECT --reject-with tcp-reset\n\
            COMMIT\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn empty_state_still_declares_the_chains() {
        let text = render(&[]);
        assert!(text.contains(":CORRAL-DNAT - [0:0]\nCOMMIT"));
        assert!(text.contains(":CORRAL-INPUT - [0:0]\nCOMMIT"));
    }

    #[test]
    fn no_firewall_refuses_rules() {
        assert!(NoFirewall.sync(&[]).is_ok());
        let r = Rule::DisplayOnly {
            domain: "a".into(),
            display_port: 1,
            client: Ipv4Addr::LOCALHOST,
        };
        assert!(matches!(
            NoFirewall.sync(&[r]),
            Err(AgentError::Unsupported(_))
        ));
    }
}
