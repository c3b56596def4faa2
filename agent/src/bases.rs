//! Bases and clones, Ravada's model.
//!
//! Preparing a base turns each system/tmp/swap volume of a shut-off domain into a read-only,
//! flattened base file and locks the domain. A clone gets a qcow2 overlay on every base file
//! (copy-on-write), fresh or copied data volumes, and its own name, UUID, MACs and display
//! password. Restore recreates the overlays (data kept); spinoff flattens them.

use std::path::{Path, PathBuf};

use corral_proto::v1 as pb;

use crate::agent::{now_unix, Agent};
use crate::convert::{role_from_pb, role_to_pb};
use crate::domain_xml::{BaseFile, CorralMeta, DomainXml, MetaDisk, MetaLabel, PreparedBase};
use crate::domain_xml::{Kind, Role};
use crate::domains::{disk_xml, random_mac, random_password, target_name};
use crate::error::{AgentError, Result};
use crate::hypervisor::DomState;
use crate::images::Format;
use crate::storage::write_atomic;
use crate::validate;

/// A fingerprint of a volume's content: size and modification time.
fn fingerprint(path: &Path) -> Result<String> {
    let m = crate::fsx::metadata(path)?;
    let mtime = m
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok(format!("{}:{mtime}", m.len()))
}

/// Volumes a base needs on a host: its base files, and the data volumes its clones copy.
fn base_volumes(p: &PreparedBase) -> Vec<String> {
    p.files
        .iter()
        .map(|f| {
            if f.file.is_empty() {
                f.source.clone()
            } else {
                f.file.clone()
            }
        })
        .filter(|v| !v.is_empty())
        .collect()
}

/// Removes files on drop unless disarmed: undoes a half-made clone or base.
pub(crate) struct Undo(pub(crate) Vec<PathBuf>);

impl Undo {
    pub(crate) fn disarm(mut self) {
        self.0.clear();
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The first free disk target of a definition (a removed disk leaves a gap).
pub(crate) fn free_target(xml: &DomainXml) -> Result<String> {
    let used: Vec<&str> = xml
        .devices
        .disks
        .iter()
        .map(|d| d.target.dev.as_str())
        .collect();
    (0..26)
        .map(target_name)
        .find(|t| t.as_ref().is_ok_and(|t| !used.contains(&t.as_str())))
        .unwrap_or_else(|| target_name(26))
}

/// A definition made another domain's: its name (and the guest's hostname), no UUID (libvirt
/// gives one), new MACs and a new display password on a free port.
pub(crate) fn renamed(xml: &mut DomainXml, name: &str) {
    let old = std::mem::replace(&mut xml.name, name.to_string());
    xml.uuid = None;
    for i in &mut xml.devices.interfaces {
        i.mac = Some(crate::domain_xml::MacAddress {
            address: random_mac(),
        });
    }
    for g in &mut xml.devices.graphics {
        g.port = Some(-1);
        g.autoport = Some("yes".into());
        g.passwd = Some(random_password());
    }
    if let Some(cmdline) = &mut xml.os.cmdline {
        *cmdline = cmdline.replace(
            &format!("corral.hostname={old}"),
            &format!("corral.hostname={name}"),
        );
    }
}

/// The definition's disks replaced by `disks`, keeping its read-only media (shared ISOs).
pub(crate) fn with_disks(xml: &mut DomainXml, mut disks: Vec<crate::domain_xml::Disk>) {
    disks.extend(
        xml.devices
            .disks
            .iter()
            .filter(|d| d.readonly.is_some())
            .cloned(),
    );
    xml.devices.disks = disks;
}

pub(crate) fn meta_of(xml: &DomainXml) -> CorralMeta {
    xml.meta()
        .cloned()
        .unwrap_or_else(|| CorralMeta::new(Kind::Plain))
}

fn disk_path(xml: &DomainXml, target: &str) -> Option<PathBuf> {
    xml.devices
        .disks
        .iter()
        .find(|d| d.target.dev == target)
        .and_then(|d| d.source.as_ref()?.file.as_ref())
        .map(PathBuf::from)
}

impl Agent {
    pub fn template_path(&self, base: &str) -> PathBuf {
        self.cfg.state_dir.join("bases").join(format!("{base}.xml"))
    }

    /// Names of the clones of a base.
    pub fn clones_of(&self, base: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for name in self.hv.names()? {
            let Ok(xml) = self.read_definition(&name) else {
                continue;
            };
            if let Some(m) = xml.meta() {
                if m.kind == Kind::Clone && m.base.as_deref() == Some(base) {
                    out.push(name);
                }
            }
        }
        Ok(out)
    }

    /// Volumes of a domain with their roles: (target, role, path), from its metadata,
    /// or every disk as `system` for domains Corral did not define.
    pub(crate) fn volumes_of(&self, xml: &DomainXml) -> Vec<(String, Role, PathBuf)> {
        let meta = meta_of(xml);
        xml.devices
            .disks
            .iter()
            .filter(|d| d.device == "disk" && d.readonly.is_none())
            .filter_map(|d| {
                let path = PathBuf::from(d.source.as_ref()?.file.as_ref()?);
                let role = meta
                    .disks
                    .iter()
                    .find(|m| m.target == d.target.dev)
                    .map(|m| m.role)
                    .unwrap_or_default();
                Some((d.target.dev.clone(), role, path))
            })
            .collect()
    }

    pub fn prepare_base(&self, name: &str) -> Result<pb::Base> {
        let _busy = self.busy(name)?;
        let xml = self.read_definition(name)?;
        let state = self.hv.state(name)?;
        if state != DomState::ShutOff {
            return Err(AgentError::precondition(format!(
                "cannot prepare domain {name:?} as a base: it is {}; shut it down first",
                state.as_str()
            )));
        }
        let mut meta = meta_of(&xml);
        if meta.kind == Kind::Clone {
            // A clone becomes a base of its own; its parent is remembered.
            meta.kind = Kind::Plain;
        }
        let volumes = self.volumes_of(&xml);
        if volumes.is_empty() {
            return Err(AgentError::precondition(format!(
                "domain {name:?} has no volumes to make a base from"
            )));
        }
        for (_, _, path) in &volumes {
            if self.storage.name_of(path).is_none() {
                return Err(AgentError::precondition(format!(
                    "volume {} is outside the storage root {}",
                    path.display(),
                    self.storage.root().display()
                )));
            }
        }
        if let Some(prev) = &meta.prepared {
            let unchanged = volumes.iter().all(|(t, _, p)| {
                prev.files.iter().any(|f| {
                    &f.target == t && fingerprint(p).ok().as_deref() == Some(&f.fingerprint)
                })
            }) && prev.files.len() == volumes.len();
            if unchanged {
                return Err(AgentError::exists(format!(
                    "base {name:?} is already prepared and none of its disks changed"
                )));
            }
            let clones = self.clones_of(name)?;
            if !clones.is_empty() {
                return Err(AgentError::precondition(format!(
                    "base {name:?} changed but has {} clone(s) ({}): remove them before preparing it again",
                    clones.len(),
                    clones.join(", ")
                )));
            }
        }
        let mut undo = Undo(Vec::new());
        let mut files = Vec::new();
        for (target, role, path) in &volumes {
            let source = self.storage.name_of(path).unwrap_or_default();
            let size = self
                .images
                .info(path)?
                .first()
                .map(|i| i.virtual_size)
                .unwrap_or(0);
            let mut file = String::new();
            if role.from_base() {
                file = format!("{name}-{target}.base.qcow2");
                let dest = self.storage.path(&file)?;
                let tmp = self.storage.tmp_path(&file)?;
                undo.0.push(tmp.clone());
                self.images.convert(path, &tmp, Format::Qcow2, None)?;
                crate::fsx::set_mode(&tmp, 0o444)?;
                if dest.exists() {
                    crate::fsx::remove_file(&dest)?;
                }
                crate::fsx::rename(&tmp, &dest)?;
                undo.0.push(dest);
            }
            files.push(BaseFile {
                target: target.clone(),
                role: *role,
                file,
                source,
                fingerprint: fingerprint(path)?,
                size,
            });
        }
        meta.kind = Kind::Base;
        meta.locked = true;
        meta.prepared = Some(PreparedBase {
            at_unix: now_unix(),
            files,
        });
        self.write_meta(name, &meta)?;
        undo.disarm();
        write_atomic(
            &self.template_path(name),
            self.hv.xml(name, true, true)?.as_bytes(),
        )?;
        tracing::info!(base = %name, "base prepared");
        self.base(name)
    }

    pub fn base(&self, name: &str) -> Result<pb::Base> {
        let xml = self.read_definition(name)?;
        let meta = meta_of(&xml);
        let prepared = match (meta.kind, &meta.prepared) {
            (Kind::Base, Some(p)) => p.clone(),
            _ => {
                return Err(AgentError::not_found(format!(
                    "domain {name:?} is not a base"
                )))
            }
        };
        Ok(pb::Base {
            name: name.into(),
            volumes: prepared
                .files
                .iter()
                .map(|f| pb::BaseVolume {
                    target: f.target.clone(),
                    role: role_to_pb(f.role) as i32,
                    base_volume: f.file.clone(),
                    size_bytes: f.size,
                })
                .collect(),
            prepared_at_unix: prepared.at_unix,
            clones: u32::try_from(self.clones_of(name)?.len()).unwrap_or(u32::MAX),
            parent: meta.base.clone().unwrap_or_default(),
        })
    }

    /// The definition of a base and the volumes another host needs to hold it.
    pub fn export_base(&self, name: &str) -> Result<pb::BaseExport> {
        let xml = self.read_definition(name)?;
        let meta = meta_of(&xml);
        let Some(prepared) = meta.prepared.as_ref().filter(|_| meta.kind == Kind::Base) else {
            return Err(AgentError::not_found(format!(
                "domain {name:?} is not a base"
            )));
        };
        Ok(pb::BaseExport {
            definition_xml: self.hv.xml(name, true, true)?,
            volumes: base_volumes(prepared),
            parent: meta.base.clone().unwrap_or_default(),
            layouts: Vec::new(),
        })
    }

    /// Defines a base whose volumes were synced here from another host. Its disks point at
    /// this host's copies, its domain type is this host's, libvirt gives it a new UUID.
    pub fn import_base(&self, definition: &str) -> Result<pb::Base> {
        let mut def = DomainXml::parse_given(definition)?;
        let name = def.name.clone();
        validate::name("domain", &name)?;
        let meta = meta_of(&def);
        let Some(prepared) = meta.prepared.clone().filter(|_| meta.kind == Kind::Base) else {
            return Err(AgentError::invalid(format!(
                "the definition of {name:?} is not a prepared base"
            )));
        };
        let _busy = self.busy(&name)?;
        if self.exists(&name)? {
            return match self.base(&name) {
                Ok(b) => Ok(b),
                Err(_) => Err(AgentError::exists(format!(
                    "domain {name:?} exists on this host and is not that base"
                ))),
            };
        }
        for v in base_volumes(&prepared) {
            if self.storage.existing(&v).is_err() {
                return Err(AgentError::precondition(format!(
                    "volume {v:?} of base {name:?} is not on this host: sync it first"
                )));
            }
        }
        for d in def.devices.disks.iter_mut() {
            let Some(f) = prepared.files.iter().find(|f| f.target == d.target.dev) else {
                continue;
            };
            let local = if f.file.is_empty() {
                &f.source
            } else {
                &f.file
            };
            if let Some(src) = d.source.as_mut() {
                if src.file.is_some() {
                    src.file = Some(self.storage.path(local)?.display().to_string());
                }
            }
        }
        self.localise(&mut def);
        self.check_definition_disks(&name, &def)?;
        self.forget_definition(&name);
        self.hv.define(&def.to_xml()?)?;
        write_atomic(
            &self.template_path(&name),
            self.hv.xml(&name, true, true)?.as_bytes(),
        )?;
        tracing::info!(base = %name, "base imported");
        self.base(&name)
    }

    /// The definition and volumes of a shut-off domain that moves to another host.
    pub fn export_domain(&self, name: &str) -> Result<pb::BaseExport> {
        let xml = self.read_definition(name)?;
        if meta_of(&xml).kind == Kind::Base {
            return self.export_base(name);
        }
        let state = self.hv.state(name)?;
        if state != DomState::ShutOff {
            return Err(AgentError::precondition(format!(
                "domain {name:?} is {}: shut it down before it moves",
                state.as_str()
            )));
        }
        let mut volumes = Vec::new();
        for (_, _, path) in self.volumes_of(&xml) {
            let v = self.storage.name_of(&path).ok_or_else(|| {
                AgentError::precondition(format!(
                    "volume {} is outside the storage root: it cannot move",
                    path.display()
                ))
            })?;
            volumes.push(v);
        }
        Ok(pb::BaseExport {
            definition_xml: self.hv.xml(name, true, true)?,
            volumes,
            parent: meta_of(&xml).base.unwrap_or_default(),
            layouts: Vec::new(),
        })
    }

    /// Defines a domain whose volumes were synced here; its disks point at this host's copies.
    pub fn import_domain(&self, definition: &str) -> Result<pb::Domain> {
        let mut def = DomainXml::parse_given(definition)?;
        let name = def.name.clone();
        validate::name("domain", &name)?;
        if meta_of(&def).kind == Kind::Base {
            self.import_base(definition)?;
            return self.view(&name);
        }
        let _busy = self.busy(&name)?;
        if self.exists(&name)? {
            return Err(AgentError::exists(format!(
                "domain {name:?} already exists on this host"
            )));
        }
        for d in def.devices.disks.iter_mut() {
            if d.device != "disk" || d.readonly.is_some() {
                continue;
            }
            let Some(src) = d.source.as_mut() else {
                continue;
            };
            let Some(file) = src.file.as_ref() else {
                continue;
            };
            let v = crate::migration::file_name(file).unwrap_or_default();
            let local = self.storage.existing(&v).map_err(|_| {
                AgentError::precondition(format!(
                    "volume {v:?} of {name:?} is not on this host: sync it first"
                ))
            })?;
            src.file = Some(local.display().to_string());
        }
        self.localise(&mut def);
        self.check_definition_disks(&name, &def)?;
        self.forget_definition(&name);
        self.hv.define(&def.to_xml()?)?;
        tracing::info!(domain = %name, "domain imported");
        self.view(&name)
    }

    /// What a definition from another host must say about this one: libvirt's new UUID,
    /// this host's domain type, displays on this host's address (unless they listen on
    /// every address or only on loopback).
    pub(crate) fn localise(&self, def: &mut DomainXml) {
        def.uuid = None;
        def.domain_type = self.cfg.domain_type.as_str().into();
        for g in def.devices.graphics.iter_mut() {
            if let Some(l) = crate::relocate::moved_listen(
                g.listen.as_deref(),
                &self.cfg.host_address.to_string(),
            ) {
                g.listen = Some(l);
            }
            g.port = Some(-1);
            g.autoport = Some("yes".into());
        }
    }

    pub fn bases(&self) -> Result<Vec<pb::Base>> {
        let mut out = Vec::new();
        for name in self.hv.names()? {
            match self.base(&name) {
                Ok(b) => out.push(b),
                Err(AgentError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Unlocks the domain and deletes its base files; refused while clones exist.
    pub fn remove_base(&self, name: &str) -> Result<()> {
        let _busy = self.busy(name)?;
        let xml = self.read_definition(name)?;
        let mut meta = meta_of(&xml);
        let Some(prepared) = meta.prepared.take().filter(|_| meta.kind == Kind::Base) else {
            return Err(AgentError::not_found(format!(
                "domain {name:?} is not a base"
            )));
        };
        let clones = self.clones_of(name)?;
        if !clones.is_empty() {
            return Err(AgentError::precondition(format!(
                "base {name:?} has {} clone(s) ({}): remove them first",
                clones.len(),
                clones.join(", ")
            )));
        }
        meta.kind = Kind::Plain;
        meta.locked = false;
        self.write_meta(name, &meta)?;
        for f in prepared.files.iter().filter(|f| !f.file.is_empty()) {
            let p = self.storage.path(&f.file)?;
            if let Err(e) = std::fs::remove_file(&p) {
                tracing::warn!(file = %p.display(), error = %e, "could not delete base file");
            }
        }
        let _ = std::fs::remove_file(self.template_path(name));
        tracing::info!(base = %name, "base removed");
        Ok(())
    }

    pub fn clone_base(&self, req: &pb::CloneBaseRequest) -> Result<pb::Domain> {
        corral_proto::rules::clone_base(req)?;
        let copy_data = match pb::DataVolumeMode::try_from(req.data_volumes) {
            Ok(pb::DataVolumeMode::Copy) => true,
            Ok(_) => false,
            Err(_) => {
                return Err(AgentError::invalid(format!(
                    "unknown data volume mode {}",
                    req.data_volumes
                )))
            }
        };
        let _busy = self.busy(&req.name)?;
        let base_xml = self.read_definition(&req.base)?;
        let base_meta = meta_of(&base_xml);
        let Some(prepared) = base_meta
            .prepared
            .clone()
            .filter(|_| base_meta.kind == Kind::Base)
        else {
            return Err(AgentError::precondition(format!(
                "domain {:?} is not a base: prepare it first",
                req.base
            )));
        };
        if self.exists(&req.name)? {
            return Err(AgentError::exists(format!(
                "domain {:?} already exists",
                req.name
            )));
        }
        let mut xml = base_xml.clone();
        renamed(&mut xml, &req.name);
        if req.memory_mib != 0 {
            xml.memory = crate::domain_xml::Memory::mib(req.memory_mib);
            xml.current_memory = None;
        }
        if req.vcpus != 0 {
            xml.vcpu.count = req.vcpus;
        }
        let mut meta = CorralMeta::new(Kind::Clone);
        meta.base = Some(req.base.clone());
        meta.owner = (!req.owner.is_empty())
            .then(|| req.owner.clone())
            .or(base_meta.owner.clone());
        meta.created_unix = now_unix();
        meta.labels = if req.labels.is_empty() {
            base_meta.labels.clone()
        } else {
            let mut l: Vec<_> = req.labels.iter().collect();
            l.sort();
            l.into_iter()
                .map(|(k, v)| MetaLabel {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect()
        };
        let mut undo = Undo(Vec::new());
        let mut disks = Vec::new();
        for f in &prepared.files {
            let vol = format!("{}-{}.qcow2", req.name, f.target);
            let dest = self.storage.fresh(&vol)?;
            let tmp = self.storage.tmp_path(&vol)?;
            undo.0.push(tmp.clone());
            if f.role.from_base() {
                let backing = self.storage.existing(&f.file)?;
                self.images.create_overlay(&tmp, &backing, Format::Qcow2)?;
            } else if copy_data {
                let src = self.storage.existing(&f.source)?;
                self.images.convert(&src, &tmp, Format::Qcow2, None)?;
            } else {
                self.images
                    .create(&tmp, Format::Qcow2, f.size.max(validate::MIN_VOLUME_BYTES))?;
            }
            crate::fsx::rename(&tmp, &dest)?;
            undo.0.push(dest.clone());
            disks.push(disk_xml(&dest, &f.target, "qcow2", false));
            meta.disks.push(MetaDisk {
                target: f.target.clone(),
                role: f.role,
                volume: vol,
            });
        }
        with_disks(&mut xml, disks);
        xml.metadata = Some(crate::domain_xml::Metadata { corral: Some(meta) });
        self.hv.define(&xml.to_xml()?)?;
        undo.disarm();
        tracing::info!(clone = %req.name, base = %req.base, "cloned");
        if req.start {
            if let Err(e) = self.hv.start(&req.name) {
                tracing::warn!(clone = %req.name, error = %e, "clone defined but did not start");
                return Err(e);
            }
            self.note_started(&req.name, Some(now_unix()));
        }
        self.view(&req.name)
    }

    pub fn list_clones(&self, base: &str) -> Result<Vec<pb::Domain>> {
        self.base(base)?;
        self.clones_of(base)?.iter().map(|c| self.view(c)).collect()
    }

    fn clone_parts(
        &self,
        name: &str,
        action: &str,
    ) -> Result<(DomainXml, CorralMeta, PreparedBase)> {
        let xml = self.read_definition(name)?;
        let meta = meta_of(&xml);
        let base = match (meta.kind, &meta.base) {
            (Kind::Clone, Some(b)) => b.clone(),
            _ => {
                return Err(AgentError::precondition(format!(
                    "cannot {action} domain {name:?}: it is not a clone"
                )))
            }
        };
        let state = self.hv.state(name)?;
        if state != DomState::ShutOff {
            return Err(AgentError::precondition(format!(
                "cannot {action} domain {name:?}: it is {}; shut it down first",
                state.as_str()
            )));
        }
        let prepared = meta_of(&self.read_definition(&base)?)
            .prepared
            .ok_or_else(|| AgentError::precondition(format!("base {base:?} is not prepared")))?;
        Ok((xml, meta, prepared))
    }

    /// System, tmp and swap volumes back to the base's state; data volumes kept.
    pub fn restore_clone(&self, name: &str) -> Result<pb::Domain> {
        let _busy = self.busy(name)?;
        let (xml, meta, prepared) = self.clone_parts(name, "restore")?;
        // Internal snapshots live in the overlays being replaced: their metadata goes too.
        for snap in self.hv.snapshot_names(name, 0)? {
            let _ = self.hv.snapshot_delete(
                name,
                &snap,
                virt::sys::VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY,
            );
        }
        for d in meta.disks.iter().filter(|d| d.role.from_base()) {
            let Some(f) = prepared.files.iter().find(|f| f.target == d.target) else {
                continue;
            };
            let path = disk_path(&xml, &d.target).ok_or_else(|| {
                AgentError::internal(format!("domain {name:?} has no disk {}", d.target))
            })?;
            let vol = self.storage.name_of(&path).ok_or_else(|| {
                AgentError::precondition(format!("{} is outside the storage root", path.display()))
            })?;
            let tmp = self.storage.tmp_path(&vol)?;
            self.images
                .create_overlay(&tmp, &self.storage.existing(&f.file)?, Format::Qcow2)?;
            crate::fsx::rename(&tmp, &path)?;
        }
        tracing::info!(clone = %name, "restored");
        self.view(name)
    }

    /// Moves a shut-off clone onto another base with the same layout: the disks that come
    /// from a base are made again from the new one's files (data disks are kept).
    pub fn rebase_clone(&self, name: &str, base: &str) -> Result<pb::Domain> {
        validate::name("domain", name)?;
        validate::name("base", base)?;
        let _busy = self.busy(name)?;
        let (xml, mut meta, _) = self.clone_parts(name, "rebase")?;
        if meta.base.as_deref() == Some(base) {
            return Err(AgentError::precondition(format!(
                "domain {name:?} is already a clone of {base:?}"
            )));
        }
        let base_meta = meta_of(&self.read_definition(base)?);
        let prepared = base_meta
            .prepared
            .filter(|_| base_meta.kind == Kind::Base)
            .ok_or_else(|| AgentError::precondition(format!("domain {base:?} is not a base")))?;
        // Every disk that comes from a base needs one of the new base's, on the same target.
        let mut plan = Vec::new();
        for d in meta.disks.iter().filter(|d| d.role.from_base()) {
            let f = prepared.files.iter().find(|f| f.target == d.target).ok_or_else(|| {
                AgentError::precondition(format!(
                    "base {base:?} has no disk on {} for the {} disk of {name:?}: their layouts differ",
                    d.target, d.role
                ))
            })?;
            let path = disk_path(&xml, &d.target).ok_or_else(|| {
                AgentError::internal(format!("domain {name:?} has no disk {}", d.target))
            })?;
            plan.push((path, self.storage.existing(&f.file)?));
        }
        for snap in self.hv.snapshot_names(name, 0)? {
            let _ = self.hv.snapshot_delete(
                name,
                &snap,
                virt::sys::VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY,
            );
        }
        for (path, backing) in plan {
            let vol = self.storage.name_of(&path).ok_or_else(|| {
                AgentError::precondition(format!("{} is outside the storage root", path.display()))
            })?;
            let tmp = self.storage.tmp_path(&vol)?;
            self.images.create_overlay(&tmp, &backing, Format::Qcow2)?;
            crate::fsx::rename(&tmp, &path)?;
        }
        meta.base = Some(base.to_string());
        self.write_meta(name, &meta)?;
        tracing::info!(clone = %name, %base, "rebased");
        self.view(name)
    }

    /// Flattens a clone's volumes into standalone files: it no longer needs its base.
    pub fn spinoff(&self, name: &str) -> Result<pb::Domain> {
        let _busy = self.busy(name)?;
        let (xml, mut meta, _) = self.clone_parts(name, "spin off")?;
        for (_, _, path) in self.volumes_of(&xml) {
            let chain = self.images.info(&path)?;
            if chain.len() < 2 {
                continue;
            }
            let vol = self.storage.name_of(&path).ok_or_else(|| {
                AgentError::precondition(format!("{} is outside the storage root", path.display()))
            })?;
            let tmp = self.storage.tmp_path(&vol)?;
            let undo = Undo(vec![tmp.clone()]);
            self.images.convert(&path, &tmp, Format::Qcow2, None)?;
            crate::fsx::rename(&tmp, &path)?;
            undo.disarm();
        }
        meta.kind = Kind::Plain;
        meta.base = None;
        self.write_meta(name, &meta)?;
        tracing::info!(domain = %name, "spun off");
        self.view(name)
    }

    /// Adds a new swap or data volume to a domain: shut off, or running (hot plug).
    pub fn add_volume(&self, req: &pb::AddVolumeRequest) -> Result<pb::Domain> {
        validate::name("domain", &req.domain)?;
        let role = role_from_pb(req.role)?;
        if role != Role::Swap && role != Role::Data {
            return Err(AgentError::invalid(format!(
                "only swap and data volumes can be added, not {role}"
            )));
        }
        validate::volume_size(req.size_bytes)?;
        let _busy = self.busy(&req.domain)?;
        let xml = self.read_definition(&req.domain)?;
        let mut meta = meta_of(&xml);
        if meta.locked {
            return Err(AgentError::precondition(format!(
                "domain {:?} is a base: remove the base before changing its volumes",
                req.domain
            )));
        }
        let format = crate::convert::format_from_pb(req.format)?.unwrap_or(Format::Qcow2);
        let live = self.hot(&req.domain, "add a volume to")?;
        let dest_name = |target: &str| {
            if req.name.is_empty() {
                format!("{}-{target}.{}", req.domain, format.as_str())
            } else {
                req.name.clone()
            }
        };
        let target = free_target(&xml)?;
        let vol = dest_name(&target);
        let dest = self.storage.fresh(&vol)?;
        let tmp = self.storage.tmp_path(&vol)?;
        let undo = Undo(vec![tmp.clone(), dest.clone()]);
        self.images.create(&tmp, format, req.size_bytes)?;
        crate::fsx::rename(&tmp, &dest)?;
        let view = self.attach_file(
            &req.domain,
            &mut meta,
            &vol,
            &dest,
            &target,
            role,
            format,
            live,
        )?;
        undo.disarm();
        Ok(view)
    }

    /// Attaches a volume file to a domain as `target` (live too when `live`) and records it
    /// in the domain's metadata with its role. Called with the domain busy.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attach_file(
        &self,
        domain: &str,
        meta: &mut CorralMeta,
        vol: &str,
        dest: &Path,
        target: &str,
        role: Role,
        format: Format,
        live: bool,
    ) -> Result<pb::Domain> {
        let disk = disk_xml(dest, target, format.as_str(), false);
        let disk_text = quick_xml::se::to_string_with_root("disk", &disk)
            .map_err(|e| AgentError::internal(format!("disk XML: {e}")))?;
        self.forget_definition(domain);
        match self.hv.attach_device(domain, &disk_text, live) {
            Ok(()) => {}
            // Drivers without device attach (libvirt's test driver): redefine with the disk.
            Err(AgentError::Unsupported(_)) => {
                let mut def = self.read_definition(domain)?;
                def.devices.disks.push(disk);
                self.hv.define(&def.to_xml()?)?;
            }
            Err(e) => return Err(e),
        }
        meta.disks.push(MetaDisk {
            target: target.to_string(),
            role,
            volume: vol.to_string(),
        });
        self.write_meta(domain, meta)?;
        tracing::info!(%domain, volume = %vol, %target, live, "volume attached");
        self.view(domain)
    }

    /// Detaches a swap or data volume from a shut-off domain and deletes it (the domain owns
    /// it). The system disk stays, and nothing a base or another domain holds is touched.
    pub fn remove_volume(&self, domain: &str, volume: &str) -> Result<pb::Domain> {
        validate::name("domain", domain)?;
        validate::name("volume", volume)?;
        let _busy = self.busy(domain)?;
        let mut xml = self.read_definition(domain)?;
        let mut meta = meta_of(&xml);
        if meta.locked {
            return Err(AgentError::precondition(format!(
                "domain {domain:?} is a base: remove the base before changing its volumes"
            )));
        }
        let state = self.hv.state(domain)?;
        if state != DomState::ShutOff {
            return Err(AgentError::precondition(format!(
                "cannot remove a volume of domain {domain:?}: it is {}; shut it down first",
                state.as_str()
            )));
        }
        let Some(entry) = meta.disks.iter().position(|m| m.volume == volume) else {
            return Err(AgentError::NotFound(format!(
                "domain {domain:?} has no volume {volume:?}"
            )));
        };
        let role = meta.disks[entry].role;
        if role != Role::Swap && role != Role::Data {
            return Err(AgentError::precondition(format!(
                "volume {volume:?} is the {role} disk of domain {domain:?}: only swap and data volumes are removed"
            )));
        }
        let target = meta.disks[entry].target.clone();
        xml.devices.disks.retain(|d| d.target.dev != target);
        meta.disks.remove(entry);
        self.forget_definition(domain);
        self.hv.define(&xml.to_xml()?)?;
        self.write_meta(domain, &meta)?;
        let path = self.storage.path(volume)?;
        if path.exists() {
            crate::fsx::remove_file(&path)?;
        }
        tracing::info!(%domain, %volume, "volume removed");
        self.view(domain)
    }
}
