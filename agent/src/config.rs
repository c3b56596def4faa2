//! The agent's configuration: a TOML file, then `CORRAL_AGENT_*` environment overrides.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

pub use corral_proto::env::Settings;
use serde::Deserialize;

use crate::error::{AgentError, Result};

/// Type of the domains the agent defines: `kvm` on real hardware, `qemu` (TCG) where KVM
/// cannot boot a guest, `test` for libvirt's test driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainType {
    Kvm,
    Qemu,
    Test,
}

impl DomainType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Qemu => "qemu",
            Self::Test => "test",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "kvm" => Ok(Self::Kvm),
            "qemu" => Ok(Self::Qemu),
            "test" => Ok(Self::Test),
            _ => Err(AgentError::invalid(format!(
                "domain_type {s:?} is not one of kvm, qemu, test"
            ))),
        }
    }
}

/// Which firewall backend exposes ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirewallKind {
    /// iptables chains of Corral's own (the real thing).
    Iptables,
    /// No firewall: port exposure is refused (for hosts without iptables, e.g. `test:///`).
    None,
}

/// The agent's TLS material: its certificate and key, and the CA of its peers.
#[derive(Debug, Clone)]
pub struct TlsPem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub ca: Vec<u8>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// libvirt connection URI.
    pub libvirt_uri: String,
    /// Every volume the agent manages lives directly in this directory.
    pub storage_root: PathBuf,
    /// Agent state (exposed ports, base templates).
    pub state_dir: PathBuf,
    pub domain_type: DomainType,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// The host address clients reach exposed ports and displays on.
    pub host_address: IpAddr,
    /// Host ports handed out for exposed guest ports: `[first, last]`.
    pub port_range: [u16; 2],
    /// libvirt network new NICs attach to when a spec names none.
    pub default_network: String,
    pub firewall: FirewallKind,
    /// Machine type for new domains (`pc`, `q35`...).
    pub machine: String,
    /// Mutual TLS: the agent's certificate and key, and the CA whose clients it accepts.
    /// All three or none; without them the agent serves plain gRPC (keep it on a private
    /// address then).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    /// With TLS: accept only this client certificate (the coordinator's), not every
    /// certificate the CA signed.
    pub tls_coordinator_cert: Option<PathBuf>,
    /// libvirt URI peers use to migrate live domains here (e.g. `qemu+tls://h2/system`);
    /// empty: this host accepts no live migration.
    pub migration_uri: String,
    /// libvirt's SPICE TLS certificates (qemu.conf `spice_tls_x509_cert_dir`): when the CA
    /// and server certificate are there, display files carry the TLS port and the CA.
    pub spice_tls_dir: PathBuf,
    /// Where Prometheus metrics are served (`/metrics`); off when unset.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            libvirt_uri: "qemu:///system".into(),
            storage_root: "/var/lib/corral/storage".into(),
            state_dir: "/var/lib/corral/state".into(),
            domain_type: DomainType::Kvm,
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            host_address: IpAddr::from([127, 0, 0, 1]),
            port_range: [20000, 29999],
            default_network: "default".into(),
            firewall: FirewallKind::Iptables,
            machine: "pc".into(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_coordinator_cert: None,
            migration_uri: String::new(),
            spice_tls_dir: "/etc/pki/libvirt-spice".into(),
            metrics_listen: None,
        }
    }
}

impl Config {
    /// The TLS files when all three are set.
    pub fn tls(&self) -> Result<Option<(PathBuf, PathBuf, PathBuf)>> {
        match (&self.tls_cert, &self.tls_key, &self.tls_client_ca) {
            (Some(c), Some(k), Some(ca)) => Ok(Some((c.clone(), k.clone(), ca.clone()))),
            (None, None, None) => Ok(None),
            _ => Err(AgentError::invalid(
                "tls_cert, tls_key and tls_client_ca go together: set all three or none",
            )),
        }
    }

    /// The contents of the TLS files (certificate, key, CA), when TLS is configured. Reads
    /// files: call it off the async workers.
    pub fn tls_pem(&self) -> Result<Option<TlsPem>> {
        let Some((cert, key, ca)) = self.tls()? else {
            return Ok(None);
        };
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| AgentError::invalid(format!("{}: {e}", p.display())))
        };
        Ok(Some(TlsPem {
            cert: read(&cert)?,
            key: read(&key)?,
            ca: read(&ca)?,
        }))
    }
}

impl Settings for Config {
    type Error = AgentError;

    /// Applies `CORRAL_AGENT_<FIELD>` overrides read through `get`.
    fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        let env = corral_proto::env::Env::new("CORRAL_AGENT", get);
        env.set("LIBVIRT_URI", &mut self.libvirt_uri)?;
        env.set("STORAGE_ROOT", &mut self.storage_root)?;
        env.set_some("METRICS_LISTEN", &mut self.metrics_listen)?;
        env.set("STATE_DIR", &mut self.state_dir)?;
        if let Some(v) = env.raw("DOMAIN_TYPE") {
            self.domain_type = DomainType::parse(&v)?;
        }
        env.set("LISTEN", &mut self.listen)?;
        env.set("HOST_ADDRESS", &mut self.host_address)?;
        env.set("DEFAULT_NETWORK", &mut self.default_network)?;
        if let Some(v) = env.raw("FIREWALL") {
            self.firewall = match v.as_str() {
                "iptables" => FirewallKind::Iptables,
                "none" => FirewallKind::None,
                _ => return Err(env.bad("FIREWALL", &v).into()),
            };
        }
        env.set("MIGRATION_URI", &mut self.migration_uri)?;
        env.set("SPICE_TLS_DIR", &mut self.spice_tls_dir)?;
        env.set_some("TLS_CERT", &mut self.tls_cert)?;
        env.set_some("TLS_KEY", &mut self.tls_key)?;
        env.set_some("TLS_CLIENT_CA", &mut self.tls_client_ca)?;
        env.set_some("TLS_COORDINATOR_CERT", &mut self.tls_coordinator_cert)?;
        if let Some(v) = env.raw("PORT_RANGE") {
            let range = v
                .split_once('-')
                .and_then(|(a, b)| Some([a.parse().ok()?, b.parse().ok()?]));
            self.port_range = range.ok_or_else(|| env.bad("PORT_RANGE", &v))?;
        }
        Ok(())
    }

    fn check(&self) -> Result<()> {
        if self.tls()?.is_none() && self.tls_coordinator_cert.is_some() {
            return Err(AgentError::invalid(
                "tls_coordinator_cert needs tls_cert, tls_key and tls_client_ca",
            ));
        }
        let [a, b] = self.port_range;
        if a == 0 || a > b {
            return Err(AgentError::invalid(format!(
                "port_range [{a}, {b}] must be 1..=65535 with first <= last"
            )));
        }
        if !self.storage_root.is_absolute() || !self.state_dir.is_absolute() {
            return Err(AgentError::invalid(
                "storage_root and state_dir must be absolute paths",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_then_env() {
        let mut cfg = Config::from_toml(
            r#"
            libvirt_uri = "test:///default"
            domain_type = "qemu"
            listen = "0.0.0.0:7000"
            port_range = [30000, 30010]
            "#,
        )
        .unwrap();
        assert_eq!(cfg.domain_type, DomainType::Qemu);
        cfg.apply_env(|k| match k {
            "CORRAL_AGENT_DOMAIN_TYPE" => Some("kvm".into()),
            "CORRAL_AGENT_PORT_RANGE" => Some("100-200".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(cfg.domain_type, DomainType::Kvm);
        assert_eq!(cfg.port_range, [100, 200]);
        assert_eq!(cfg.libvirt_uri, "test:///default");
        cfg.check().unwrap();
    }

    #[test]
    fn the_example_config_is_valid() {
        let cfg = Config::from_toml(include_str!("../../deploy/agent.example.toml")).unwrap();
        cfg.check().unwrap();
    }

    #[test]
    fn unknown_keys_and_values_are_refused() {
        assert!(Config::from_toml("nope = 1").is_err());
        assert!(Config::from_toml("domain_type = \"xen\"").is_err());
        let mut cfg = Config::default();
        assert!(cfg
            .apply_env(|k| (k == "CORRAL_AGENT_LISTEN").then(|| "x".into()))
            .is_err());
    }
}
