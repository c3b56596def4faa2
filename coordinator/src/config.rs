//! The coordinator's configuration: a TOML file, then `CORRAL_COORD_*` environment overrides.

use std::net::SocketAddr;
use std::path::PathBuf;

pub use corral_proto::env::Settings;
use serde::Deserialize;

use crate::error::{CoordError, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: SocketAddr,
    /// The SQLite database file (the embedded store, used unless `database_url` is set).
    pub database: PathBuf,
    /// PostgreSQL instead of SQLite: a connection string (`postgres://USER@HOST/DB` or
    /// `host=/var/run/postgresql user=corral dbname=corral`).
    pub database_url: Option<String>,
    /// Where clients reach this coordinator (told to clients of the others when it leads);
    /// the listening address when unset.
    pub advertise: Option<String>,
    /// The PostgreSQL schema to keep Corral's tables in (created if missing); the
    /// connection's search path when unset.
    pub database_schema: Option<String>,
    /// fsync every commit (survives power loss); otherwise commits survive process crashes.
    pub database_full_sync: bool,
    /// How often each agent is asked for its capacity.
    pub heartbeat_ms: u64,
    /// A host silent for this long is marked down.
    pub down_after_ms: u64,
    /// Operations running at once on one host.
    pub per_host_limit: usize,
    /// Guests starting at once on one host (boot storms queue behind this).
    pub starts_per_host: usize,
    /// A shutdown (asked for, or a run or idle timeout) powers the guest off after this long.
    pub shutdown_grace_s: u64,
    /// A transfer between agents whose source reports no progress for this long is stopped.
    pub transfer_stall_ms: u64,
    /// When no user exists yet, an admin is created and its token written here (mode 0600).
    pub bootstrap_token_file: PathBuf,
    pub cpu_overcommit: f64,
    pub memory_overcommit: f64,
    pub disk_reserve_bytes: u64,
    /// Mutual TLS to the agents: the CA that signed them, and the coordinator's own
    /// certificate and key. All three or none.
    pub agent_ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// TLS on the coordinator's own API (users, the CLI): its certificate and key. Both or
    /// none; clients then need the CA that signed it (`ca` in their config).
    pub api_cert: Option<PathBuf>,
    pub api_key: Option<PathBuf>,
    /// An LDAP directory whose entries add to users' attributes for access rules.
    pub ldap: Option<LdapConfig>,
    /// Where Prometheus metrics are served (`/metrics`); off when unset.
    pub metrics_listen: Option<SocketAddr>,
}

/// Where users' directory entries are, and how to read them (`[ldap]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldap://host:389` (plain LDAP; TLS to the directory is not built in yet).
    pub url: String,
    /// Whom to bind as to search; anonymous when absent.
    pub bind_dn: Option<String>,
    /// A file holding the bind password (kept out of the configuration).
    pub bind_password_file: Option<PathBuf>,
    /// Where users' entries are searched (subtree).
    pub base_dn: String,
    /// The search filter; `{user}` is replaced by the escaped user name.
    #[serde(default = "default_user_filter")]
    pub user_filter: String,
    /// How long a user's entry is reused before it is read again.
    #[serde(default = "default_cache_seconds")]
    pub cache_seconds: u64,
}

fn default_user_filter() -> String {
    "(uid={user})".into()
}

fn default_cache_seconds() -> u64 {
    60
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7800)),
            database: "/var/lib/corral/coordinator/corral.db".into(),
            database_full_sync: false,
            database_url: None,
            advertise: None,
            database_schema: None,
            heartbeat_ms: 2000,
            down_after_ms: 6000,
            per_host_limit: 32,
            starts_per_host: 20,
            shutdown_grace_s: 60,
            transfer_stall_ms: 60_000,
            bootstrap_token_file: "/var/lib/corral/coordinator/admin.token".into(),
            cpu_overcommit: 4.0,
            memory_overcommit: 1.0,
            disk_reserve_bytes: 1 << 30,
            agent_ca: None,
            client_cert: None,
            client_key: None,
            api_cert: None,
            api_key: None,
            ldap: None,
            metrics_listen: None,
        }
    }
}

impl Config {
    /// TLS to the agents when all three files are set.
    pub fn agent_tls(&self) -> Result<Option<corral_client::TlsFiles>> {
        match (&self.agent_ca, &self.client_cert, &self.client_key) {
            (Some(ca), Some(cert), Some(key)) => Ok(Some(corral_client::TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            })),
            (None, None, None) => Ok(None),
            _ => Err(CoordError::Invalid(
                "agent_ca, client_cert and client_key go together: set all three or none".into(),
            )),
        }
    }

    /// The API's certificate and key files when both are set.
    pub fn api_tls(&self) -> Result<Option<(PathBuf, PathBuf)>> {
        match (&self.api_cert, &self.api_key) {
            (Some(c), Some(k)) => Ok(Some((c.clone(), k.clone()))),
            (None, None) => Ok(None),
            _ => Err(CoordError::Invalid(
                "api_cert and api_key go together: set both or none".into(),
            )),
        }
    }
}

impl Settings for Config {
    type Error = CoordError;

    fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        let env = corral_proto::env::Env::new("CORRAL_COORD", get);
        env.set("LISTEN", &mut self.listen)?;
        env.set("DATABASE", &mut self.database)?;
        env.set("DATABASE_FULL_SYNC", &mut self.database_full_sync)?;
        env.set_some("DATABASE_URL", &mut self.database_url)?;
        env.set_some("DATABASE_SCHEMA", &mut self.database_schema)?;
        env.set_some("ADVERTISE", &mut self.advertise)?;
        env.set("HEARTBEAT_MS", &mut self.heartbeat_ms)?;
        env.set("TRANSFER_STALL_MS", &mut self.transfer_stall_ms)?;
        env.set("DOWN_AFTER_MS", &mut self.down_after_ms)?;
        env.set("PER_HOST_LIMIT", &mut self.per_host_limit)?;
        env.set("STARTS_PER_HOST", &mut self.starts_per_host)?;
        env.set("SHUTDOWN_GRACE_S", &mut self.shutdown_grace_s)?;
        env.set("CPU_OVERCOMMIT", &mut self.cpu_overcommit)?;
        env.set("MEMORY_OVERCOMMIT", &mut self.memory_overcommit)?;
        env.set_some("AGENT_CA", &mut self.agent_ca)?;
        env.set_some("CLIENT_CERT", &mut self.client_cert)?;
        env.set_some("CLIENT_KEY", &mut self.client_key)?;
        env.set_some("API_CERT", &mut self.api_cert)?;
        env.set_some("API_KEY", &mut self.api_key)?;
        env.set("BOOTSTRAP_TOKEN_FILE", &mut self.bootstrap_token_file)?;
        env.set_some("METRICS_LISTEN", &mut self.metrics_listen)?;
        Ok(())
    }

    /// Settings that only make sense together.
    fn check(&self) -> Result<()> {
        self.agent_tls()?;
        self.api_tls()?;
        if self.transfer_stall_ms == 0 {
            return Err(CoordError::Invalid(
                "transfer_stall_ms must be greater than 0".into(),
            ));
        }
        if self.per_host_limit == 0 || self.starts_per_host == 0 {
            return Err(CoordError::Invalid(
                "per_host_limit and starts_per_host must be at least 1".into(),
            ));
        }
        if !(1..=3600).contains(&self.shutdown_grace_s) {
            return Err(CoordError::Invalid(
                "shutdown_grace_s must be 1 to 3600 seconds".into(),
            ));
        }
        if self.heartbeat_ms == 0 || self.down_after_ms <= self.heartbeat_ms {
            return Err(CoordError::Invalid(
                "down_after_ms must be greater than heartbeat_ms > 0".into(),
            ));
        }
        if let Some(l) = &self.ldap {
            if !l.url.starts_with("ldap://") {
                return Err(CoordError::Invalid(format!(
                    "ldap.url {:?} must start with ldap:// (ldaps is not built in yet)",
                    l.url
                )));
            }
            if !l.user_filter.contains("{user}") || l.base_dn.is_empty() {
                return Err(CoordError::Invalid(
                    "ldap needs a base_dn and a user_filter with {user}".into(),
                ));
            }
            if l.bind_dn.is_some() != l.bind_password_file.is_some() {
                return Err(CoordError::Invalid(
                    "ldap.bind_dn and ldap.bind_password_file go together".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_is_valid() {
        let c: Config =
            toml::from_str(include_str!("../../deploy/coordinator.example.toml")).unwrap();
        assert_eq!(c.listen.port(), 7800);
        assert!(c.agent_tls().unwrap().is_none());
    }

    #[test]
    fn env_overrides_toml() {
        let mut c: Config = toml::from_str("heartbeat_ms = 500\ndown_after_ms = 1500").unwrap();
        c.apply_env(|k| (k == "CORRAL_COORD_PER_HOST_LIMIT").then(|| "3".into()))
            .unwrap();
        assert_eq!(
            (c.heartbeat_ms, c.down_after_ms, c.per_host_limit),
            (500, 1500, 3)
        );
        assert!(toml::from_str::<Config>("nope = 1").is_err());
    }
}
