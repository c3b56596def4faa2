//! Who owns a volume: the one place that decides, asked by every path that deletes, resizes,
//! rebases, overwrites or attaches a volume writable.
//!
//! The invariant: a volume belongs to exactly one domain (its definition names it), or it is
//! a base file (named in a prepared base's metadata: read-only, owned by that base), or it is
//! free. A base file is never written, resized or rebased, and is deleted only by its own
//! base's removal when no clone uses it. A volume that backs another volume (a qcow2 backing
//! file) is neither deleted, resized, rebased nor overwritten while that volume exists.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::agent::Agent;
use crate::domain_xml::Kind;
use crate::error::{AgentError, Result};

/// What is about to happen to a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Delete,
    Resize,
    Rebase,
    /// Replaced by a received copy (volume sync with `replace`).
    Overwrite,
    /// Named writable in a domain's definition.
    AttachWritable,
    /// Named read-only in a domain's definition.
    AttachReadOnly,
}

impl Change {
    fn verb(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Resize => "resize",
            Self::Rebase => "rebase",
            Self::Overwrite => "overwrite",
            Self::AttachWritable => "attach writable",
            Self::AttachReadOnly => "attach",
        }
    }
}

/// Who may do `change` to a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor<'a> {
    /// A domain, acting on its own volumes (remove with volumes, define).
    Domain(&'a str),
    /// A base, acting on its own base files (removing the base).
    Base(&'a str),
    /// A direct volume RPC of the host's admin (the volume API): it may change a free volume,
    /// or one whose domains are all shut off, never a base file.
    Admin,
}

/// Every claim on the volumes of this host, read once from libvirt's definitions.
#[derive(Debug, Default)]
pub struct Claims {
    /// Volume path → (domain, writable) for each domain whose definition names it.
    users: HashMap<PathBuf, Vec<(String, bool)>>,
    /// Base file path → the base it belongs to.
    base_files: HashMap<PathBuf, String>,
}

impl Claims {
    /// Domains whose definition names the volume.
    pub fn users(&self, path: &Path) -> Vec<String> {
        self.users
            .get(path)
            .map(|u| u.iter().map(|(d, _)| d.clone()).collect())
            .unwrap_or_default()
    }

    /// The base a base file belongs to.
    pub fn base_of(&self, path: &Path) -> Option<&str> {
        self.base_files.get(path).map(String::as_str)
    }
}

impl Agent {
    /// Reads every domain's claims on volumes (definitions of bases come from the cache).
    pub fn claims(&self) -> Result<Claims> {
        let mut c = Claims::default();
        for name in self.hv.names()? {
            let Ok(xml) = self.read_definition(&name) else {
                continue;
            };
            for d in &xml.devices.disks {
                if let Some(f) = d.source.as_ref().and_then(|s| s.file.as_deref()) {
                    c.users
                        .entry(PathBuf::from(f))
                        .or_default()
                        .push((name.clone(), d.readonly.is_none()));
                }
            }
            // Detached volumes stay their domain's.
            for d in xml
                .meta()
                .map(|m| m.detached.as_slice())
                .unwrap_or_default()
            {
                if let Ok(path) = self.storage.path(&d.volume) {
                    c.users.entry(path).or_default().push((name.clone(), true));
                }
            }
            if let Some(p) = xml.meta().and_then(|m| m.prepared.as_ref()) {
                if xml.meta().is_some_and(|m| m.kind == Kind::Base) {
                    for f in p.files.iter().filter(|f| !f.file.is_empty()) {
                        if let Ok(path) = self.storage.path(&f.file) {
                            c.base_files.insert(path, name.clone());
                        }
                    }
                }
            }
        }
        Ok(c)
    }

    /// The volumes of the storage root whose qcow2 backing file is `path`.
    pub fn backed_by(&self, path: &Path) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for other in self.storage.list()? {
            let Ok(p) = self.storage.path(&other) else {
                continue;
            };
            if p == path {
                continue;
            }
            if let Ok(Some(b)) = crate::qcow2::backing_of(&p) {
                if b == path || b.canonicalize().ok().as_deref() == Some(path) {
                    out.push(other);
                }
            }
        }
        Ok(out)
    }

    /// Refuses `change` to volume `vol` (at `path`) unless `actor` owns it; the message says
    /// who does.
    pub fn may_change(
        &self,
        claims: &Claims,
        vol: &str,
        path: &Path,
        actor: Actor<'_>,
        change: Change,
    ) -> Result<()> {
        let verb = change.verb();
        if let Some(base) = claims.base_of(path) {
            let own_removal = actor == Actor::Base(base) && change == Change::Delete;
            if !own_removal && change != Change::AttachReadOnly {
                return Err(AgentError::precondition(format!(
                    "cannot {verb} volume {vol:?}: it is a base file of base {base:?}; base files are read-only and belong to their base"
                )));
            }
        }
        let mine = |d: &str| matches!(actor, Actor::Domain(me) | Actor::Base(me) if me == d);
        let others: Vec<(String, bool)> = claims
            .users
            .get(path)
            .map(|u| u.iter().filter(|(d, _)| !mine(d)).cloned().collect())
            .unwrap_or_default();
        let names = |v: &[(String, bool)]| {
            v.iter()
                .map(|(d, _)| d.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (actor, change) {
            // Sharing read-only is fine unless someone writes to it.
            (_, Change::AttachReadOnly) => {
                let writers: Vec<_> = others.iter().filter(|(_, w)| *w).cloned().collect();
                if !writers.is_empty() {
                    return Err(AgentError::precondition(format!(
                        "cannot {verb} volume {vol:?}: domain(s) {} write to it",
                        names(&writers)
                    )));
                }
            }
            // The admin's volume API may change a volume of shut-off domains (growing a
            // disk), never one that a running domain uses.
            (Actor::Admin, Change::Resize | Change::Rebase) => {
                let running: Vec<_> = others
                    .iter()
                    .filter(|(d, _)| self.hv.state(d).is_ok_and(|s| s.is_active()))
                    .cloned()
                    .collect();
                if !running.is_empty() {
                    return Err(AgentError::precondition(format!(
                        "volume {vol:?} is in use by running domain(s) {}",
                        names(&running)
                    )));
                }
            }
            _ if !others.is_empty() => {
                return Err(AgentError::precondition(format!(
                    "cannot {verb} volume {vol:?}: it belongs to domain(s) {}",
                    names(&others)
                )));
            }
            _ => {}
        }
        if change != Change::AttachReadOnly {
            let children = self.backed_by(path)?;
            if !children.is_empty() {
                return Err(AgentError::precondition(format!(
                    "cannot {verb} volume {vol:?}: it is the backing file of volume(s) {}",
                    children.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Shorthand: one volume, claims read now.
    pub fn check_change(
        &self,
        vol: &str,
        path: &Path,
        actor: Actor<'_>,
        change: Change,
    ) -> Result<()> {
        let claims = self.claims()?;
        self.may_change(&claims, vol, path, actor, change)
    }

    /// Checks a definition that came from elsewhere (an import) before it is defined: every
    /// disk file is a volume of the storage root, and the new domain `name` may attach it
    /// as the definition says (writable only what nobody else owns).
    pub fn check_definition_disks(
        &self,
        name: &str,
        def: &crate::domain_xml::DomainXml,
    ) -> Result<()> {
        let claims = self.claims()?;
        for d in &def.devices.disks {
            let Some(file) = d.source.as_ref().and_then(|s| s.file.as_deref()) else {
                continue;
            };
            let path = Path::new(file);
            let vol = self.storage.name_of(path).ok_or_else(|| {
                AgentError::invalid(format!(
                    "disk {} of {name:?} is {file:?}, outside the storage root: only volumes can be attached",
                    d.target.dev
                ))
            })?;
            let change = if d.readonly.is_some() {
                Change::AttachReadOnly
            } else {
                Change::AttachWritable
            };
            self.may_change(&claims, &vol, path, Actor::Domain(name), change)?;
        }
        Ok(())
    }
}
