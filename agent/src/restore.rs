//! Restoring a backup in place: the coordinator syncs the backed-up file here under a name of
//! its own (only the blocks that differ from the domain's volume travel), then this puts it
//! where the domain's volume was. The file must be free (no domain, no base), the volume the
//! domain's own, the domain shut off and without snapshots (they live in its files), and a
//! system overlay must keep its backing file: a restore never points a domain at a file it
//! does not already read.

use corral_proto::v1 as pb;

use crate::agent::Agent;
use crate::error::{AgentError, Result};
use crate::hypervisor::DomState;
use crate::ownership::{Actor, Change};
use crate::validate;

impl Agent {
    pub fn restore_volume(&self, r: &pb::RestoreVolumeRequest) -> Result<pb::VolumeInfo> {
        validate::name("domain", &r.domain)?;
        validate::name("volume", &r.volume)?;
        validate::name("volume", &r.from)?;
        if r.from == r.volume {
            return Err(AgentError::invalid(
                "restore a volume from another file, not from itself",
            ));
        }
        let _busy = self.busy(&r.domain)?;
        let xml = self.read_definition(&r.domain)?;
        let meta = crate::bases::meta_of(&xml);
        if meta.locked {
            return Err(AgentError::precondition(format!(
                "domain {:?} is a base: its files do not change",
                r.domain
            )));
        }
        let own = meta
            .disks
            .iter()
            .chain(meta.detached.iter())
            .any(|d| d.volume == r.volume);
        if !own {
            return Err(AgentError::NotFound(format!(
                "domain {:?} has no volume {:?}",
                r.domain, r.volume
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
        let snaps = self.hv.snapshot_names(&r.domain, 0)?;
        if !snaps.is_empty() {
            return Err(AgentError::precondition(format!(
                "domain {:?} has snapshots ({}): delete them first; they live in the files a \
                 restore replaces",
                r.domain,
                snaps.join(", ")
            )));
        }
        let target = self.storage.existing(&r.volume)?;
        let from = self.storage.existing(&r.from)?;
        // The file is free: nobody's volume, no base's file, backing nothing.
        let claims = self.claims()?;
        let owners = claims.users(&from);
        if !owners.is_empty() {
            return Err(AgentError::precondition(format!(
                "file {:?} belongs to domain(s) {}: only a file no domain owns is restored",
                r.from,
                owners.join(", ")
            )));
        }
        self.may_change(&claims, &r.from, &from, Actor::Admin, Change::Delete)?;
        let backing = |p: &std::path::Path| {
            crate::qcow2::backing_of(p)
                .map_err(|e| AgentError::internal(format!("reading {}: {e}", p.display())))
        };
        let (old, new) = (backing(&target)?, backing(&from)?);
        if old != new {
            return Err(AgentError::precondition(format!(
                "file {:?} is backed by {} but volume {:?} by {}: a restore keeps the backing \
                 file",
                r.from,
                new.as_deref()
                    .map_or("nothing".into(), |p| p.display().to_string()),
                r.volume,
                old.as_deref()
                    .map_or("nothing".into(), |p| p.display().to_string()),
            )));
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = crate::fsx::metadata(&target)?.permissions().mode() & 0o777;
        crate::fsx::set_mode(&from, mode)?;
        crate::fsx::rename(&from, &target)?;
        tracing::info!(domain = %r.domain, volume = %r.volume, from = %r.from, "volume restored");
        self.volume_info(&r.volume)
    }
}
