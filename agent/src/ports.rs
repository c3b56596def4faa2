//! Exposed ports and display restrictions: persisted records, rendered into firewall rules.
//!
//! Records live in `state_dir/ports.json` (written atomically). The rules in place are always
//! derived from all records: a record is active when its domain runs and has an address.
//! They are re-derived at start-up, on domain lifecycle events, and after every change.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corral_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::agent::{lock_err, Agent};
use crate::domain_xml::Kind;
use crate::error::{AgentError, Result};
use crate::firewall::Rule;
use crate::storage::write_atomic;
use crate::validate;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRecord {
    pub domain: String,
    pub name: String,
    pub guest_port: u16,
    pub host_port: u16,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PortState {
    pub ports: Vec<PortRecord>,
    /// Domain → the only client address allowed on its display port.
    pub display: BTreeMap<String, Ipv4Addr>,
    #[serde(skip)]
    path: PathBuf,
}

impl PortState {
    pub fn load(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join("ports.json");
        let mut s: PortState = match std::fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data).map_err(|e| {
                AgentError::internal(format!("corrupt port state {}: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PortState::default(),
            Err(e) => return Err(e.into()),
        };
        s.path = path;
        Ok(s)
    }

    pub fn save(&self) -> Result<()> {
        let data = serde_json::to_vec_pretty(self)
            .map_err(|e| AgentError::internal(format!("port state: {e}")))?;
        write_atomic(&self.path, &data)
    }

    /// The lowest free host port in `[first, last]`.
    pub fn free_port(&self, range: [u16; 2]) -> Option<u16> {
        (range[0]..=range[1]).find(|p| !self.ports.iter().any(|r| r.host_port == *p))
    }
}

impl Agent {
    fn host_v4(&self) -> Result<Ipv4Addr> {
        if self.cfg.firewall == crate::config::FirewallKind::None {
            return Err(AgentError::Unsupported(
                "this agent runs without a firewall (firewall = \"none\"): ports cannot be exposed"
                    .into(),
            ));
        }
        match self.cfg.host_address {
            IpAddr::V4(a) => Ok(a),
            IpAddr::V6(_) => Err(AgentError::Unsupported(
                "port exposure needs an IPv4 host_address".into(),
            )),
        }
    }

    /// The domain's first IPv4 address, when it runs and has one.
    fn guest_address(&self, domain: &str) -> Option<Ipv4Addr> {
        if !self.hv.state(domain).ok()?.is_active() {
            return None;
        }
        if let Some((_, ip)) = self.hv.addresses(domain).ok()?.first() {
            return Some(*ip);
        }
        // No DHCP lease here: a guest that came by live migration keeps the address another
        // host's DHCP server gave it, which this host's ARP table knows once it has talked
        // to the guest (libvirt's own ARP source fails on some kernels: read the table).
        let xml = self.read_domain(domain).ok()?;
        let macs: Vec<String> = xml
            .devices
            .interfaces
            .iter()
            .filter_map(|i| i.mac.as_ref().map(|m| m.address.to_lowercase()))
            .collect();
        let table = std::fs::read_to_string("/proc/net/arp").ok()?;
        arp_lookup(&table, &macs)
    }

    /// A running domain's display ports: the plain one and SPICE's TLS one, if any.
    fn display_ports(&self, domain: &str) -> Vec<u16> {
        let running = self.hv.state(domain).is_ok_and(|s| s.is_active());
        let Some(xml) = running.then(|| self.read_domain(domain).ok()).flatten() else {
            return Vec::new();
        };
        let Some(g) = xml.devices.graphics.first() else {
            return Vec::new();
        };
        [g.port, g.tls_port]
            .into_iter()
            .flatten()
            .filter_map(|p| u16::try_from(p).ok().filter(|p| *p > 0))
            .collect()
    }

    /// Rules for every record whose domain runs with an address.
    fn wanted_rules(&self, state: &PortState) -> Result<Vec<Rule>> {
        if state.ports.is_empty() && state.display.is_empty() {
            return Ok(Vec::new());
        }
        let host = self.host_v4()?;
        let mut rules = Vec::new();
        let mut addr_cache: BTreeMap<&str, Option<Ipv4Addr>> = BTreeMap::new();
        let mut waiting = false;
        for r in &state.ports {
            let addr = *addr_cache
                .entry(&r.domain)
                .or_insert_with(|| self.guest_address(&r.domain));
            if addr.is_none() && self.hv.state(&r.domain).is_ok_and(|s| s.is_active()) {
                waiting = true;
            }
            if let Some(guest) = addr {
                rules.push(Rule::Expose {
                    domain: r.domain.clone(),
                    host_address: host,
                    host_port: r.host_port,
                    guest_address: guest,
                    guest_port: r.guest_port,
                });
            }
        }
        self.ports_waiting
            .store(waiting, std::sync::atomic::Ordering::Relaxed);
        for (domain, client) in &state.display {
            for port in self.display_ports(domain) {
                rules.push(Rule::DisplayOnly {
                    domain: domain.clone(),
                    display_port: port,
                    client: *client,
                });
            }
        }
        Ok(rules)
    }

    /// Makes the firewall match the records. Idempotent.
    pub fn apply_ports(&self) -> Result<usize> {
        let state = self.ports.lock().map_err(lock_err)?;
        let rules = self.wanted_rules(&state)?;
        self.firewall.sync(&rules)?;
        Ok(rules.len())
    }

    fn exposed(&self, r: &PortRecord) -> pb::ExposedPort {
        let guest = self.guest_address(&r.domain);
        pb::ExposedPort {
            domain: r.domain.clone(),
            name: r.name.clone(),
            guest_port: r.guest_port.into(),
            host_address: self.cfg.host_address.to_string(),
            host_port: r.host_port.into(),
            guest_address: guest.map(|a| a.to_string()).unwrap_or_default(),
            active: guest.is_some(),
        }
    }

    pub fn expose(&self, req: &pb::ExposePortRequest) -> Result<pb::ExposedPort> {
        validate::name("domain", &req.domain)?;
        let guest_port = validate::port("guest port", req.guest_port)?;
        let wanted_host_port = if req.host_port == 0 {
            None
        } else {
            Some(validate::port("host port", req.host_port)?)
        };
        if !req.name.is_empty() {
            validate::name("port", &req.name)?;
        }
        if let Some(p) = wanted_host_port {
            let [lo, hi] = self.cfg.port_range;
            if !(lo..=hi).contains(&p) {
                return Err(AgentError::invalid(format!(
                    "host port {p} is outside this host's port range {lo}-{hi}"
                )));
            }
        }
        let state = self.hv.state(&req.domain)?;
        if self
            .read_definition(&req.domain)?
            .meta()
            .is_some_and(|m| m.kind == Kind::Base)
        {
            return Err(AgentError::precondition(format!(
                "domain {:?} is a base and bases never run: expose ports on its clones",
                req.domain
            )));
        }
        self.host_v4()?;
        let record = {
            let mut ports = self.ports.lock().map_err(lock_err)?;
            if ports
                .ports
                .iter()
                .any(|r| r.domain == req.domain && r.guest_port == guest_port)
            {
                return Err(AgentError::exists(format!(
                    "port {guest_port} of domain {:?} is already exposed",
                    req.domain
                )));
            }
            let host_port = match wanted_host_port {
                Some(p) => {
                    if let Some(r) = ports.ports.iter().find(|r| r.host_port == p) {
                        return Err(AgentError::exists(format!(
                            "host port {p} is already used by domain {:?}",
                            r.domain
                        )));
                    }
                    p
                }
                None => ports.free_port(self.cfg.port_range).ok_or_else(|| {
                    AgentError::Unavailable(format!(
                        "no free host port left in {:?}",
                        self.cfg.port_range
                    ))
                })?,
            };
            let record = PortRecord {
                domain: req.domain.clone(),
                name: if req.name.is_empty() {
                    format!("port-{guest_port}")
                } else {
                    req.name.clone()
                },
                guest_port,
                host_port,
            };
            ports.ports.push(record.clone());
            record
        };
        // A booting guest gets its address from DHCP a few seconds after start.
        if state.is_active() {
            let wait = Duration::from_secs(if req.wait_seconds == 0 {
                60
            } else {
                req.wait_seconds.into()
            });
            let deadline = Instant::now() + wait;
            while self.guest_address(&req.domain).is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        let applied = self
            .apply_ports()
            .and_then(|_| self.ports.lock().map_err(lock_err)?.save());
        if let Err(e) = applied {
            let mut ports = self.ports.lock().map_err(lock_err)?;
            ports.ports.retain(|r| r != &record);
            drop(ports);
            let _ = self.apply_ports();
            return Err(e);
        }
        tracing::info!(domain = %record.domain, guest_port, host_port = record.host_port, "port exposed");
        Ok(self.exposed(&record))
    }

    pub fn list_ports(&self, domain: &str) -> Result<Vec<pb::ExposedPort>> {
        if !domain.is_empty() {
            validate::name("domain", domain)?;
        }
        let records: Vec<PortRecord> = self
            .ports
            .lock()
            .map_err(lock_err)?
            .ports
            .iter()
            .filter(|r| domain.is_empty() || r.domain == domain)
            .cloned()
            .collect();
        Ok(records.iter().map(|r| self.exposed(r)).collect())
    }

    fn remove_ports_where(&self, f: impl Fn(&PortRecord) -> bool) -> Result<u32> {
        let removed = {
            let mut ports = self.ports.lock().map_err(lock_err)?;
            let before = ports.ports.len();
            ports.ports.retain(|r| !f(r));
            let removed = before - ports.ports.len();
            ports.save()?;
            removed
        };
        self.apply_ports()?;
        Ok(u32::try_from(removed).unwrap_or(u32::MAX))
    }

    pub fn remove_port(&self, domain: &str, guest_port: u32) -> Result<u32> {
        validate::name("domain", domain)?;
        let guest_port = validate::port("guest port", guest_port)?;
        let n = self.remove_ports_where(|r| r.domain == domain && r.guest_port == guest_port)?;
        if n == 0 {
            return Err(AgentError::not_found(format!(
                "port {guest_port} of domain {domain:?} is not exposed"
            )));
        }
        Ok(n)
    }

    pub fn remove_all_ports(&self, domain: &str) -> Result<u32> {
        validate::name("domain", domain)?;
        let n = self.remove_ports_where(|r| r.domain == domain)?;
        if n == 0 && !self.exists(domain)? {
            return Err(AgentError::not_found(format!(
                "domain {domain:?} does not exist"
            )));
        }
        Ok(n)
    }

    /// Drops every record of a domain that is gone (ports and display restriction).
    pub fn forget_ports(&self, domain: &str) -> Result<()> {
        {
            let mut ports = self.ports.lock().map_err(lock_err)?;
            ports.ports.retain(|r| r.domain != domain);
            ports.display.remove(domain);
            ports.save()?;
        }
        self.apply_ports()?;
        Ok(())
    }

    pub fn restrict_display(&self, domain: &str, client_ip: &str) -> Result<()> {
        validate::name("domain", domain)?;
        let client = if client_ip.is_empty() {
            None
        } else {
            Some(client_ip.parse::<Ipv4Addr>().map_err(|_| {
                AgentError::invalid(format!(
                    "client address {client_ip:?} is not an IPv4 address"
                ))
            })?)
        };
        let xml = self.read_domain(domain)?;
        if xml.devices.graphics.is_empty() {
            return Err(AgentError::precondition(format!(
                "domain {domain:?} has no display"
            )));
        }
        self.host_v4()?;
        {
            let mut ports = self.ports.lock().map_err(lock_err)?;
            match client {
                Some(c) => ports.display.insert(domain.to_string(), c),
                None => ports.display.remove(domain),
            };
            ports.save()?;
        }
        self.apply_ports()?;
        Ok(())
    }

    pub fn display_restriction(&self, domain: &str) -> Option<String> {
        let ports = self.ports.lock().ok()?;
        ports.display.get(domain).map(|a| a.to_string())
    }

    /// Drops records of domains libvirt no longer has. Returns how many domains.
    pub fn prune_ports(&self) -> Result<usize> {
        let names = self.hv.names()?;
        let mut ports = self.ports.lock().map_err(lock_err)?;
        let gone: std::collections::BTreeSet<String> = ports
            .ports
            .iter()
            .map(|r| r.domain.clone())
            .chain(ports.display.keys().cloned())
            .filter(|d| !names.contains(d))
            .collect();
        ports.ports.retain(|r| !gone.contains(&r.domain));
        ports.display.retain(|d, _| !gone.contains(d));
        ports.save()?;
        Ok(gone.len())
    }

    /// After a domain starts, waits for its address and puts its rules in place.
    pub fn activate_ports_when_ready(&self, domain: &str, wait: Duration) -> Result<()> {
        let has_records = {
            let ports = self.ports.lock().map_err(lock_err)?;
            ports.ports.iter().any(|r| r.domain == domain) || ports.display.contains_key(domain)
        };
        if !has_records {
            return Ok(());
        }
        let deadline = Instant::now() + wait;
        while self.guest_address(domain).is_none() && Instant::now() < deadline {
            if !self.hv.state(domain)?.is_active() {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        self.apply_ports()?;
        Ok(())
    }
}

/// The address of the first of `macs` in a `/proc/net/arp` table (complete entries only).
fn arp_lookup(table: &str, macs: &[String]) -> Option<Ipv4Addr> {
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (ip, flags, mac) = (f.first()?, f.get(2)?, f.get(3)?);
        let complete = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()? & 0x2 != 0;
        (complete && macs.iter().any(|m| m.eq_ignore_ascii_case(mac)))
            .then(|| ip.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arp_table_gives_a_migrated_guest_its_address() {
        let table = "IP address       HW type     Flags       HW address            Mask     Device
10.213.0.1       0x1         0x2         2a:16:65:25:f8:8a     *        eth0
192.168.122.9    0x1         0x0         52:54:00:00:00:01     *        virbr0
192.168.122.175  0x1         0x2         52:54:00:97:89:ED     *        virbr0
";
        let mac = |m: &str| vec![m.to_string()];
        assert_eq!(
            arp_lookup(table, &mac("52:54:00:97:89:ed")),
            Some(Ipv4Addr::new(192, 168, 122, 175))
        );
        assert_eq!(
            arp_lookup(table, &mac("52:54:00:00:00:01")),
            None,
            "incomplete"
        );
        assert_eq!(arp_lookup(table, &mac("52:54:00:00:00:02")), None);
    }

    #[test]
    fn state_persists_and_allocates_ports() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = PortState::load(dir.path()).unwrap();
        assert_eq!(s.free_port([100, 101]), Some(100));
        s.ports.push(PortRecord {
            domain: "a".into(),
            name: "http".into(),
            guest_port: 80,
            host_port: 100,
        });
        s.display.insert("a".into(), Ipv4Addr::new(10, 0, 0, 1));
        s.save().unwrap();
        let again = PortState::load(dir.path()).unwrap();
        assert_eq!(again.ports, s.ports);
        assert_eq!(again.free_port([100, 101]), Some(101));
        assert_eq!(again.free_port([100, 100]), None);
    }
}
