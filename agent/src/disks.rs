//! A domain's own swap and data volumes after it was made: grown in place (block resize in
//! the running guest, or the file when shut off). Adding and removing them live in
//! `bases.rs` with the rest of a domain's volume layout.

use corral_proto::v1 as pb;

use crate::agent::Agent;
use crate::domain_xml::{CorralMeta, Kind, Role};
use crate::error::{AgentError, Result};
use crate::hypervisor::DomState;
use crate::images::Format;
use crate::validate;

impl Agent {
    /// Whether a disk change to `domain` is made live too (it runs) or only in its definition
    /// (shut off); any other state is refused. `what` says the change ("add a volume to").
    pub(crate) fn hot(&self, domain: &str, what: &str) -> Result<bool> {
        match self.hv.state(domain)? {
            DomState::ShutOff => Ok(false),
            DomState::Running => Ok(true),
            other => Err(AgentError::precondition(format!(
                "cannot {what} domain {domain:?}: it is {}; start it or shut it down",
                other.as_str()
            ))),
        }
    }

    /// The domain's own swap or data volume `volume` (NotFound otherwise), and its role.
    fn own_volume(&self, domain: &str, volume: &str) -> Result<(CorralMeta, Role)> {
        let xml = self.read_definition(domain)?;
        let meta = crate::bases::meta_of(&xml);
        let Some(disk) = meta.disks.iter().find(|d| d.volume == volume) else {
            return Err(AgentError::NotFound(format!(
                "domain {domain:?} has no volume {volume:?}"
            )));
        };
        let role = disk.role;
        Ok((meta, role))
    }

    /// A flattened copy of a shut-off domain's swap or data volume under a new name.
    pub fn copy_domain_volume(&self, r: &pb::CopyDomainVolumeRequest) -> Result<pb::VolumeInfo> {
        validate::name("domain", &r.domain)?;
        validate::name("volume", &r.volume)?;
        validate::name("volume", &r.destination)?;
        let _busy = self.busy(&r.domain)?;
        let (_, role) = self.own_volume(&r.domain, &r.volume)?;
        if role != Role::Data && role != Role::Swap {
            return Err(AgentError::precondition(format!(
                "volume {:?} is the {role} disk of domain {:?}: only swap and data volumes are copied",
                r.volume, r.domain
            )));
        }
        let state = self.hv.state(&r.domain)?;
        if state != DomState::ShutOff {
            return Err(AgentError::precondition(format!(
                "domain {:?} is {}: its volumes are copied only while it is shut off (a running \
                 guest changes them under the copy)",
                r.domain,
                state.as_str()
            )));
        }
        let src = self.storage.existing(&r.volume)?;
        let dest = self.storage.fresh(&r.destination)?;
        let tmp = self.storage.tmp_path(&r.destination)?;
        if let Err(e) = self.images.convert(&src, &tmp, Format::Qcow2, None) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        crate::fsx::rename(&tmp, &dest)?;
        tracing::info!(domain = %r.domain, volume = %r.volume, copy = %r.destination, "volume copied");
        self.volume_info(&r.destination)
    }

    /// Makes, reverts to or deletes an internal snapshot of a shut-off domain's qcow2 swap or
    /// data volume.
    pub fn snapshot_volume(&self, r: &pb::SnapshotVolumeRequest) -> Result<pb::VolumeInfo> {
        use crate::images::SnapshotAction;
        validate::name("domain", &r.domain)?;
        validate::name("volume", &r.volume)?;
        validate::name("snapshot", &r.snapshot)?;
        let action = match pb::VolumeSnapshotAction::try_from(r.action) {
            Ok(pb::VolumeSnapshotAction::Create) => SnapshotAction::Create,
            Ok(pb::VolumeSnapshotAction::Revert) => SnapshotAction::Apply,
            Ok(pb::VolumeSnapshotAction::Delete) => SnapshotAction::Delete,
            _ => {
                return Err(AgentError::invalid(format!(
                    "snapshot action {} is unknown: create, revert or delete",
                    r.action
                )))
            }
        };
        let _busy = self.busy(&r.domain)?;
        let (_, role) = self.own_volume(&r.domain, &r.volume)?;
        if role != Role::Data && role != Role::Swap {
            return Err(AgentError::precondition(format!(
                "volume {:?} is the {role} disk of domain {:?}: only swap and data volumes have \
                 their own snapshots (snapshot the VM for the rest)",
                r.volume, r.domain
            )));
        }
        let state = self.hv.state(&r.domain)?;
        if state != DomState::ShutOff {
            return Err(AgentError::precondition(format!(
                "domain {:?} is {}: shut it off first (its guest has the volume open)",
                r.domain,
                state.as_str()
            )));
        }
        let info = self.volume_info(&r.volume)?;
        if info.format != "qcow2" {
            return Err(AgentError::precondition(format!(
                "volume {:?} is {}: only qcow2 volumes hold snapshots",
                r.volume, info.format
            )));
        }
        let exists = info.snapshots.iter().any(|s| s.name == r.snapshot);
        match (action, exists) {
            (SnapshotAction::Create, true) => {
                return Err(AgentError::AlreadyExists(format!(
                    "volume {:?} has a snapshot {:?} already",
                    r.volume, r.snapshot
                )))
            }
            (SnapshotAction::Apply | SnapshotAction::Delete, false) => {
                return Err(AgentError::NotFound(format!(
                    "volume {:?} has no snapshot {:?}",
                    r.volume, r.snapshot
                )))
            }
            _ => {}
        }
        let path = self.storage.existing(&r.volume)?;
        self.images.snapshot(&path, action, &r.snapshot)?;
        tracing::info!(domain = %r.domain, volume = %r.volume, snapshot = %r.snapshot, ?action, "volume snapshot");
        self.volume_info(&r.volume)
    }

    /// Detaches a swap or data volume from a domain (hot when it runs); the volume stays the
    /// domain's own, recorded in its metadata, until it is attached again or the domain goes.
    pub fn detach_volume(&self, r: &pb::AttachVolumeRequest) -> Result<pb::Domain> {
        validate::name("domain", &r.domain)?;
        validate::name("volume", &r.volume)?;
        let _busy = self.busy(&r.domain)?;
        let xml = self.read_definition(&r.domain)?;
        let mut meta = crate::bases::meta_of(&xml);
        if meta.locked {
            return Err(AgentError::precondition(format!(
                "domain {:?} is a base: its volumes do not change",
                r.domain
            )));
        }
        let Some(entry) = meta.disks.iter().position(|d| d.volume == r.volume) else {
            if meta.detached.iter().any(|d| d.volume == r.volume) {
                return Err(AgentError::precondition(format!(
                    "volume {:?} is detached from domain {:?} already",
                    r.volume, r.domain
                )));
            }
            return Err(AgentError::NotFound(format!(
                "domain {:?} has no volume {:?}",
                r.domain, r.volume
            )));
        };
        let role = meta.disks[entry].role;
        if role != Role::Data && role != Role::Swap {
            return Err(AgentError::precondition(format!(
                "volume {:?} is the {role} disk of domain {:?}: only swap and data volumes are \
                 detached",
                r.volume, r.domain
            )));
        }
        let live = self.hot(&r.domain, "detach a volume from")?;
        let target = meta.disks[entry].target.clone();
        let Some(disk) = xml.devices.disks.iter().find(|d| d.target.dev == target) else {
            return Err(AgentError::internal(format!(
                "domain {:?} records volume {:?} at {target}, which its definition lacks",
                r.domain, r.volume
            )));
        };
        let disk_text = quick_xml::se::to_string_with_root("disk", disk)
            .map_err(|e| AgentError::internal(format!("disk XML: {e}")))?;
        self.forget_definition(&r.domain);
        match self.hv.detach_device(&r.domain, &disk_text, live) {
            Ok(()) => {}
            // Drivers without device detach (libvirt's test driver): redefine without it.
            Err(AgentError::Unsupported(_)) if !live => {
                let mut def = xml.clone();
                def.devices.disks.retain(|d| d.target.dev != target);
                self.hv.define(&def.to_xml()?)?;
            }
            Err(e) => return Err(e),
        }
        let mut gone = meta.disks.remove(entry);
        gone.target = String::new();
        meta.detached.push(gone);
        self.write_meta(&r.domain, &meta)?;
        tracing::info!(domain = %r.domain, volume = %r.volume, live, "volume detached");
        self.view(&r.domain)
    }

    /// Attaches a volume to a domain as a data disk (hot when it runs): one nobody owns, or
    /// one detached from this same domain (with its role).
    pub fn attach_volume(&self, r: &pb::AttachVolumeRequest) -> Result<pb::Domain> {
        validate::name("domain", &r.domain)?;
        validate::name("volume", &r.volume)?;
        let _busy = self.busy(&r.domain)?;
        let xml = self.read_definition(&r.domain)?;
        let mut meta = crate::bases::meta_of(&xml);
        if meta.locked {
            return Err(AgentError::precondition(format!(
                "domain {:?} is a base: remove the base before changing its volumes",
                r.domain
            )));
        }
        let path = self.storage.existing(&r.volume)?;
        if let Some(i) = meta.detached.iter().position(|d| d.volume == r.volume) {
            let role = meta.detached.remove(i).role;
            return self.attach_existing(&r.domain, &xml, &mut meta, &r.volume, &path, role);
        }
        if crate::fsx::metadata(&path)?.permissions().readonly() {
            return Err(AgentError::precondition(format!(
                "volume {:?} is read-only (an image or a base file): only a writable volume no \
                 domain owns is attached",
                r.volume
            )));
        }
        let claims = self.claims()?;
        let owners = claims.users(&path);
        if !owners.is_empty() {
            return Err(AgentError::precondition(format!(
                "volume {:?} belongs to domain(s) {}: only a volume no domain owns is attached",
                r.volume,
                owners.join(", ")
            )));
        }
        self.may_change(
            &claims,
            &r.volume,
            &path,
            crate::ownership::Actor::Domain(&r.domain),
            crate::ownership::Change::AttachWritable,
        )?;
        self.attach_existing(&r.domain, &xml, &mut meta, &r.volume, &path, Role::Data)
    }

    /// Attaches an existing volume file to a domain with `role` (hot when it runs): one
    /// detached from it before, or one nobody owns.
    fn attach_existing(
        &self,
        domain: &str,
        xml: &crate::domain_xml::DomainXml,
        meta: &mut CorralMeta,
        volume: &str,
        path: &std::path::Path,
        role: Role,
    ) -> Result<pb::Domain> {
        let live = self.hot(domain, "attach a volume to")?;
        let format = self
            .images
            .info(path)?
            .first()
            .and_then(|i| Format::parse(&i.format))
            .unwrap_or(Format::Qcow2);
        let target = crate::bases::free_target(xml)?;
        self.attach_file(domain, meta, volume, path, &target, role, format, live)
    }

    /// Grows a swap or data volume the domain owns to `size_bytes` (never shrinks).
    pub fn resize_domain_volume(
        &self,
        r: &pb::ResizeDomainVolumeRequest,
    ) -> Result<pb::VolumeInfo> {
        validate::name("domain", &r.domain)?;
        validate::name("volume", &r.volume)?;
        validate::volume_size(r.size_bytes)?;
        let _busy = self.busy(&r.domain)?;
        let xml = self.read_definition(&r.domain)?;
        let meta = xml
            .meta()
            .cloned()
            .unwrap_or_else(|| CorralMeta::new(Kind::Plain));
        if meta.locked {
            return Err(AgentError::precondition(format!(
                "domain {:?} is a base: its volumes do not change",
                r.domain
            )));
        }
        let Some(disk) = meta.disks.iter().find(|d| d.volume == r.volume) else {
            return Err(AgentError::NotFound(format!(
                "domain {:?} has no volume {:?}",
                r.domain, r.volume
            )));
        };
        if disk.role != Role::Data && disk.role != Role::Swap {
            return Err(AgentError::precondition(format!(
                "volume {:?} is the {} disk of domain {:?}: only swap and data volumes are resized",
                r.volume, disk.role, r.domain
            )));
        }
        let current = self.volume_info(&r.volume)?.virtual_size;
        if r.size_bytes < current {
            return Err(AgentError::invalid(format!(
                "{} bytes is smaller than volume {:?} ({current} bytes): volumes only grow (a \
                 shrink would cut the guest's file system)",
                r.size_bytes, r.volume
            )));
        }
        if r.size_bytes == current {
            return self.volume_info(&r.volume);
        }
        match self.hv.state(&r.domain)? {
            DomState::ShutOff => {
                let path = self.storage.existing(&r.volume)?;
                self.images.resize(&path, r.size_bytes, false)?;
            }
            DomState::Running | DomState::Paused => {
                self.hv
                    .block_resize(&r.domain, &disk.target, r.size_bytes)?
            }
            other => {
                return Err(AgentError::precondition(format!(
                    "cannot resize a volume of domain {:?}: it is {}",
                    r.domain,
                    other.as_str()
                )))
            }
        }
        tracing::info!(domain = %r.domain, volume = %r.volume, bytes = r.size_bytes, "volume grown");
        self.volume_info(&r.volume)
    }
}
