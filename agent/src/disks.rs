//! A domain's own swap and data volumes after it was made: grown in place (block resize in
//! the running guest, or the file when shut off). Adding and removing them live in
//! `bases.rs` with the rest of a domain's volume layout.

use corral_proto::v1 as pb;

use crate::agent::Agent;
use crate::domain_xml::{CorralMeta, Kind, Role};
use crate::error::{AgentError, Result};
use crate::hypervisor::DomState;
use crate::validate;

impl Agent {
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
