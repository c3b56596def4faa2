//! An LDAP directory as a source of users' attributes (Ravada's `ldap_entry`): bind, search
//! the user's entry, read its attributes. Entries are kept for `cache_seconds`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};

use crate::access::Attributes;
use crate::config::LdapConfig;
use crate::error::{CoordError, Result};

/// How long one directory round trip (connect, bind, search) may take.
const DIRECTORY_CALL: Duration = Duration::from_secs(5);

pub struct Directory {
    cfg: LdapConfig,
    password: Option<String>,
    cache: Mutex<HashMap<String, (Instant, Attributes)>>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("url", &self.cfg.url)
            .finish()
    }
}

fn unavailable(url: &str, e: impl std::fmt::Display) -> CoordError {
    CoordError::Unavailable(format!("LDAP directory {url}: {e}"))
}

impl Directory {
    /// Reads the bind password file (refused when missing or readable by others).
    pub fn new(cfg: LdapConfig) -> Result<Self> {
        let password = match &cfg.bind_password_file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    CoordError::Invalid(format!("ldap.bind_password_file {}: {e}", p.display()))
                })?;
                Some(text.trim_end_matches(['\r', '\n']).to_string())
            }
            None => None,
        };
        Ok(Self {
            cfg,
            password,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The attributes of `user`'s entry (names lowercased); none when it has no entry.
    pub async fn attributes(&self, user: &str) -> Result<Attributes> {
        let ttl = Duration::from_secs(self.cfg.cache_seconds);
        if let Ok(cache) = self.cache.lock() {
            if let Some((at, attrs)) = cache.get(user) {
                if at.elapsed() < ttl {
                    return Ok(attrs.clone());
                }
            }
        }
        let url = &self.cfg.url;
        let attrs = tokio::time::timeout(DIRECTORY_CALL, self.read(user))
            .await
            .map_err(|_| unavailable(url, "no answer in time"))??;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(user.to_string(), (Instant::now(), attrs.clone()));
        }
        Ok(attrs)
    }

    async fn read(&self, user: &str) -> Result<Attributes> {
        let url = &self.cfg.url;
        let settings = LdapConnSettings::new().set_conn_timeout(DIRECTORY_CALL);
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, url)
            .await
            .map_err(|e| unavailable(url, e))?;
        ldap3::drive!(conn);
        if let (Some(dn), Some(pw)) = (&self.cfg.bind_dn, &self.password) {
            ldap.simple_bind(dn, pw)
                .await
                .and_then(|r| r.success())
                .map_err(|e| unavailable(url, format!("bind as {dn}: {e}")))?;
        }
        let filter = self
            .cfg
            .user_filter
            .replace("{user}", &ldap3::ldap_escape(user));
        let (entries, _) = ldap
            .search(&self.cfg.base_dn, Scope::Subtree, &filter, vec!["*"])
            .await
            .and_then(|r| r.success())
            .map_err(|e| unavailable(url, format!("search {filter}: {e}")))?;
        let _ = ldap.unbind().await;
        let mut attrs = Attributes::new();
        if let Some(e) = entries.into_iter().next() {
            for (k, vs) in SearchEntry::construct(e).attrs {
                attrs.entry(k.to_lowercase()).or_default().extend(vs);
            }
        }
        tracing::debug!(user, attributes = attrs.len(), "directory entry read");
        Ok(attrs)
    }
}
