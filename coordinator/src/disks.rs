//! A VM's disks as its host's files hold them (formats and sizes), for `corral vm disks`.
//! Changes to disks (add, grow, remove) are lifecycle actions (`lifecycle.rs`).

use corral_client::proto as pb;

use crate::auth::Caller;
use crate::error::Result;
use crate::vms::Coordinator;

impl Coordinator {
    /// The disks of a VM the caller may touch, each with its file's format and sizes.
    pub async fn vm_disks(&self, caller: &Caller, name: &str) -> Result<pb::ListVmDisksResponse> {
        crate::names::check_name("VM", name)?;
        let v = self.door_for(caller, name).await?;
        let d = v.door.get_domain(&v.domain).await?;
        let mut disks = Vec::new();
        for disk in d.disks {
            let info = v.door.volume_info(&disk.volume).await?;
            disks.push(pb::VmDisk {
                volume: disk.volume,
                role: disk.role,
                target: disk.target,
                format: info.format,
                virtual_size: info.virtual_size,
                actual_size: info.allocated_size,
                readonly: disk.readonly,
            });
        }
        Ok(pb::ListVmDisksResponse { disks })
    }
}
