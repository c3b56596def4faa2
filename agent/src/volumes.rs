//! Volumes in the storage root, through the [`crate::images::ImageTool`].

use std::path::Path;

use corral_proto::v1 as pb;

use crate::agent::Agent;
use crate::convert::format_from_pb;
use crate::error::{AgentError, Result};
use crate::images::Format;
use crate::ownership::{Actor, Change};
use crate::validate;

impl Agent {
    pub fn volume_info(&self, name: &str) -> Result<pb::VolumeInfo> {
        let path = self.storage.existing(name)?;
        let chain = self.images.info(&path)?;
        let top = chain
            .first()
            .ok_or_else(|| AgentError::internal(format!("qemu-img said nothing about {name:?}")))?;
        let modified_unix_ms = crate::fsx::metadata(&path)?
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Ok(pb::VolumeInfo {
            modified_unix_ms,
            name: name.into(),
            path: path.display().to_string(),
            format: top.format.clone(),
            virtual_size: top.virtual_size,
            allocated_size: top.actual_size,
            backing_chain: chain[1..]
                .iter()
                .map(|i| pb::BackingFile {
                    path: i.filename.clone(),
                    format: i.format.clone(),
                    virtual_size: i.virtual_size,
                })
                .collect(),
            snapshots: top
                .snapshots
                .iter()
                .map(|s| pb::InternalSnapshot {
                    id: s.id.clone(),
                    name: s.name.clone(),
                    vm_state_size: s.vm_state_size,
                    date_unix: s.date_sec,
                })
                .collect(),
        })
    }

    pub fn list_volumes(&self) -> Result<Vec<pb::VolumeInfo>> {
        self.storage
            .list()?
            .iter()
            .map(|n| self.volume_info(n))
            .collect()
    }

    /// Builds a volume under its temporary name and renames it into place.
    fn build_volume(
        &self,
        name: &str,
        make: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<pb::VolumeInfo> {
        let dest = self.storage.fresh(name)?;
        let tmp = self.storage.tmp_path(name)?;
        if let Err(e) = make(&tmp) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        crate::fsx::rename(&tmp, &dest)?;
        tracing::info!(volume = %name, "volume created");
        self.volume_info(name)
    }

    pub fn create_volume(&self, req: &pb::CreateVolumeRequest) -> Result<pb::VolumeInfo> {
        validate::name("volume", &req.name)?;
        validate::volume_size(req.size_bytes)?;
        let format = format_from_pb(req.format)?.unwrap_or(Format::Qcow2);
        self.build_volume(&req.name, |tmp| {
            self.images.create(tmp, format, req.size_bytes)
        })
    }

    pub fn create_overlay(&self, req: &pb::CreateOverlayRequest) -> Result<pb::VolumeInfo> {
        validate::name("volume", &req.name)?;
        let backing = self.storage.existing(&req.backing)?;
        let fmt = self
            .images
            .info(&backing)?
            .first()
            .and_then(|i| Format::parse(&i.format));
        let fmt = fmt.ok_or_else(|| {
            AgentError::invalid(format!(
                "backing volume {:?} has an unsupported format",
                req.backing
            ))
        })?;
        self.build_volume(&req.name, |tmp| {
            self.images.create_overlay(tmp, &backing, fmt)
        })
    }

    pub fn copy_volume(&self, req: &pb::CopyVolumeRequest) -> Result<pb::VolumeInfo> {
        let src = self.storage.existing(&req.source)?;
        validate::name("volume", &req.destination)?;
        let chain = self.images.info(&src)?;
        let format = match format_from_pb(req.format)? {
            Some(f) => f,
            None => chain
                .first()
                .and_then(|i| Format::parse(&i.format))
                .unwrap_or(Format::Qcow2),
        };
        let backing = if req.keep_backing {
            chain.get(1).map(|b| std::path::PathBuf::from(&b.filename))
        } else {
            None
        };
        if backing.is_some() && format != Format::Qcow2 {
            return Err(AgentError::invalid(
                "keeping the backing file needs the qcow2 format",
            ));
        }
        self.build_volume(&req.destination, |tmp| {
            self.images.convert(&src, tmp, format, backing.as_deref())
        })
    }

    pub fn rebase_volume(&self, req: &pb::RebaseVolumeRequest) -> Result<pb::VolumeInfo> {
        let path = self.storage.existing(&req.name)?;
        let backing = if req.backing.is_empty() {
            None
        } else {
            Some(self.storage.existing(&req.backing)?)
        };
        if backing.as_deref() == Some(path.as_path()) {
            return Err(AgentError::invalid(
                "a volume cannot be its own backing file",
            ));
        }
        self.check_change(&req.name, &path, Actor::Admin, Change::Rebase)?;
        self.images
            .rebase(&path, backing.as_deref(), req.r#unsafe)?;
        self.volume_info(&req.name)
    }

    pub fn resize_volume(&self, req: &pb::ResizeVolumeRequest) -> Result<pb::VolumeInfo> {
        let path = self.storage.existing(&req.name)?;
        validate::volume_size(req.size_bytes)?;
        let current = self.volume_info(&req.name)?.virtual_size;
        if req.size_bytes < current && !req.allow_shrink {
            return Err(AgentError::invalid(format!(
                "{} bytes is smaller than the volume ({current} bytes): set allow_shrink to shrink it",
                req.size_bytes
            )));
        }
        self.check_change(&req.name, &path, Actor::Admin, Change::Resize)?;
        self.images
            .resize(&path, req.size_bytes, req.allow_shrink)?;
        self.volume_info(&req.name)
    }

    /// Deletes a volume no domain uses, that is no base file and backs no other volume.
    pub fn delete_volume(&self, name: &str) -> Result<()> {
        let path = self.storage.existing(name)?;
        let claims = self.claims()?;
        let users = claims.users(&path);
        if !users.is_empty() && claims.base_of(&path).is_none() {
            return Err(AgentError::precondition(format!(
                "cannot delete volume {name:?}: it belongs to domain(s) {}",
                users.join(", ")
            )));
        }
        self.may_change(&claims, name, &path, Actor::Admin, Change::Delete)?;
        std::fs::remove_file(&path).map_err(|e| crate::error::io_at(&path, e))?;
        tracing::info!(volume = %name, "volume deleted");
        Ok(())
    }
}
