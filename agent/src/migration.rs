//! Live migration between hosts through libvirt (peer to peer): the target makes empty
//! volumes for the incoming domain (overlays on its own copies of the base files, which the
//! coordinator synced first), libvirt moves memory and the top layer of the disks, and the
//! source deletes its volumes afterwards.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use corral_proto::v1 as pb;

use crate::agent::Agent;
use crate::error::{AgentError, Result};
use crate::hypervisor::DomState;
use crate::images::Format;
use crate::validate;

/// The last component of a path, as a volume name candidate.
pub(crate) fn file_name(p: &str) -> Option<String> {
    Path::new(p)
        .file_name()
        .and_then(|n| n.to_str())
        .map(String::from)
}

impl Agent {
    /// On the source: a running domain's live definition and how to make its volumes.
    pub fn export_for_migration(&self, name: &str) -> Result<pb::BaseExport> {
        validate::name("domain", name)?;
        let state = self.hv.state(name)?;
        if state != DomState::Running {
            return Err(AgentError::precondition(format!(
                "domain {name:?} is {}: live migration moves running domains",
                state.as_str()
            )));
        }
        let def = self.read_definition(name)?;
        let mut out = pb::BaseExport {
            definition_xml: self.hv.migratable_xml(name)?,
            parent: def.meta().and_then(|m| m.base.clone()).unwrap_or_default(),
            ..Default::default()
        };
        for (_, _, path) in self.volumes_of(&def) {
            let volume = self.storage.name_of(&path).ok_or_else(|| {
                AgentError::precondition(format!(
                    "volume {} is outside the storage root: it cannot move",
                    path.display()
                ))
            })?;
            let chain = self.images.info(&path)?;
            let top = chain
                .first()
                .ok_or_else(|| AgentError::internal(format!("no image info for {volume}")))?;
            out.layouts.push(pb::VolumeLayout {
                volume: volume.clone(),
                virtual_size: top.virtual_size,
                backing: top
                    .backing_filename
                    .as_deref()
                    .and_then(file_name)
                    .unwrap_or_default(),
                format: top.format.clone(),
            });
            out.volumes.push(volume);
        }
        Ok(out)
    }

    /// On the target: empty volumes for the incoming domain and its definition with this
    /// host's paths and display address. Nothing is left behind when it fails.
    pub fn prepare_migration(&self, req: &pb::ImportBaseRequest) -> Result<pb::MigrationTarget> {
        if self.cfg.migration_uri.is_empty() {
            return Err(AgentError::Unsupported(
                "this host accepts no live migration (migration_uri is not configured)".into(),
            ));
        }
        let def = crate::domain_xml::DomainXml::parse_given(&req.definition_xml)?;
        let name = def.name.clone();
        validate::name("domain", &name)?;
        let _busy = self.busy(&name)?;
        if self.exists(&name)? {
            return Err(AgentError::exists(format!(
                "domain {name:?} already exists on this host"
            )));
        }
        let mut local: HashMap<String, PathBuf> = HashMap::new();
        // Everything made here goes again if a later step fails.
        let mut made = crate::bases::Undo(Vec::new());
        for l in &req.layouts {
            let path = self.storage.fresh(&l.volume)?;
            if l.backing.is_empty() {
                let format = Format::parse(&l.format).unwrap_or(Format::Qcow2);
                self.images.create(&path, format, l.virtual_size)?;
                made.0.push(path.clone());
            } else {
                let backing = self.storage.existing(&l.backing).map_err(|_| {
                    AgentError::precondition(format!(
                        "backing volume {:?} is not on this host: sync the base first",
                        l.backing
                    ))
                })?;
                self.images.create_overlay(&path, &backing, Format::Qcow2)?;
                made.0.push(path.clone());
                let size = self.images.info(&path)?.first().map(|i| i.virtual_size);
                if size != Some(l.virtual_size) {
                    self.images.resize(&path, l.virtual_size, false)?;
                }
                local.insert(l.backing.clone(), backing);
            }
            local.insert(l.volume.clone(), path);
        }
        let path = |p: &str| -> Option<String> {
            let n = file_name(p)?;
            local.get(&n).map(|l| l.display().to_string())
        };
        let dest_xml = crate::relocate::relocate(
            &req.definition_xml,
            &path,
            &self.cfg.host_address.to_string(),
        )?;
        tracing::info!(domain = %name, volumes = made.0.len(), "ready for an incoming migration");
        made.disarm();
        Ok(pb::MigrationTarget {
            dest_xml,
            uri: self.cfg.migration_uri.clone(),
        })
    }

    /// On the target after a migration: the persistent definition (the source's, as libvirt
    /// brought it) moved to this host's volumes and display address.
    pub fn finish_migration(&self, name: &str) -> Result<pb::Domain> {
        validate::name("domain", name)?;
        let _busy = self.busy(name)?;
        let persistent = self.hv.xml(name, true, true)?;
        let path = |p: &str| -> Option<String> {
            let local = self.storage.path(&file_name(p)?).ok()?;
            local.exists().then(|| local.display().to_string())
        };
        let fixed =
            crate::relocate::relocate(&persistent, &path, &self.cfg.host_address.to_string())?;
        self.forget_definition(name);
        self.hv.define(&fixed)?;
        self.view(name)
    }

    /// On the source: libvirt migrates the running domain; then its volumes here go.
    pub fn migrate_domain(&self, req: &pb::MigrateDomainRequest) -> Result<()> {
        let _busy = self.busy(&req.name)?;
        let def = self.read_definition(&req.name)?;
        let files: Vec<PathBuf> = self
            .volumes_of(&def)
            .into_iter()
            .map(|(_, _, p)| p)
            .filter(|p| self.storage.name_of(p).is_some())
            .collect();
        self.forget_definition(&req.name);
        let started = std::time::Instant::now();
        self.hv
            .migrate(&req.name, &req.dest_uri, &req.dest_xml, req.bandwidth_mib)?;
        for f in files {
            if let Err(e) = std::fs::remove_file(&f) {
                tracing::warn!(file = %f.display(), error = %e, "could not delete a migrated volume");
            }
        }
        tracing::info!(domain = %req.name, to = %req.dest_uri, ms = started.elapsed().as_millis() as u64, "domain migrated live");
        Ok(())
    }
}
