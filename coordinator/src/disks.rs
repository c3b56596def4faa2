//! A VM's disks as its host's files hold them (formats and sizes), for `corral vm disks`.
//! Changes to disks (add, grow, snapshot, detach, attach again, remove) are lifecycle actions (`lifecycle.rs`); a copy to
//! another VM, on the same host or across hosts, is its own operation here.

use std::sync::Arc;

use corral_client::proto as pb;

use crate::auth::Caller;
use crate::error::{CoordError, Result};
use crate::operations::{OpCtx, OpError, Submit};
use crate::states::Observed;
use crate::store::OpRecord;
use crate::vms::{work, Coordinator};

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
                snapshots: info.snapshots.into_iter().map(|s| s.name).collect(),
                detached: false,
            });
        }
        for volume in d.detached_volumes {
            let info = v.door.volume_info(&volume).await?;
            disks.push(pb::VmDisk {
                volume,
                format: info.format,
                virtual_size: info.virtual_size,
                actual_size: info.allocated_size,
                snapshots: info.snapshots.into_iter().map(|s| s.name).collect(),
                detached: true,
                ..Default::default()
            });
        }
        Ok(pb::ListVmDisksResponse { disks })
    }
}

/// The name of a copy made for `domain`: its name, `-copy-` and a random tag (64 at most).
fn copy_name(domain: &str) -> String {
    use rand::Rng;
    let tag: u32 = rand::thread_rng().gen_range(0..0x0100_0000);
    let keep: String = domain
        .chars()
        .take(64 - "-copy-000000.qcow2".len())
        .collect();
    format!("{keep}-copy-{tag:06x}.qcow2")
}

impl Coordinator {
    /// Copies a swap or data disk of the caller's shut-off VM `name` to their VM `to` (same
    /// host, or across hosts with the agents' volume sync), attached there as a data disk (hot
    /// when `to` runs). An operation on `to`; checked before it is submitted.
    pub async fn copy_vm_disk(
        self: &Arc<Self>,
        caller: &Caller,
        name: &str,
        volume: &str,
        to: &str,
    ) -> Result<OpRecord> {
        crate::names::check_name("VM", name)?;
        crate::names::check_name("VM", to)?;
        crate::names::check_name("volume", volume)?;
        if name == to {
            return Err(CoordError::Invalid(format!(
                "copy a disk of {name} to another VM, not to itself"
            )));
        }
        let src = self.vm_for(caller, name).await?;
        let dst = self.vm_for(caller, to).await?;
        if src.observed_state != Observed::Domain(pb::DomainState::ShutOff) {
            return Err(CoordError::FailedPrecondition(format!(
                "VM {name} is {}: shut it off first (a running guest changes its disks under the copy)",
                src.observed_state.describe()
            )));
        }
        let (Some(src_host), Some(dst_host)) = (src.host.clone(), dst.host.clone()) else {
            return Err(CoordError::FailedPrecondition(format!(
                "VM {name} or {to} has no host"
            )));
        };
        self.hosts.door(&src_host)?;
        self.hosts.door(&dst_host)?;
        let submit = Submit {
            kind: "copy-disk".into(),
            vm: Some(dst.name.clone()),
            host: Some(dst_host.clone()),
            user: Some(caller.name().into()),
            idempotency_key: None,
            request: serde_json::json!({ "from": name, "volume": volume, "to": to }),
        };
        let me = Arc::clone(self);
        let (volume, src_domain, dst_domain) = (
            volume.to_string(),
            src.domain().to_string(),
            dst.domain().to_string(),
        );
        let w = work(move |ctx| async move {
            me.copy_disk(
                &ctx,
                &src_host,
                &src_domain,
                &volume,
                &dst_host,
                &dst_domain,
            )
            .await
            .map_err(OpError::from)
        });
        Ok(self.ops.submit(submit, w).await?)
    }

    async fn copy_disk(
        &self,
        ctx: &OpCtx,
        src_host: &str,
        src_domain: &str,
        volume: &str,
        dst_host: &str,
        dst_domain: &str,
    ) -> Result<serde_json::Value> {
        let src = self.hosts.door(src_host)?;
        let dst = self.hosts.door(dst_host)?;
        let copy = copy_name(dst_domain);
        ctx.progress(
            "copying",
            Some(10.0),
            None,
            &format!("{volume} on {src_host}"),
        )
        .await?;
        let req = pb::CopyDomainVolumeRequest {
            domain: src_domain.into(),
            volume: volume.into(),
            destination: copy.clone(),
        };
        let info = src.copy_domain_volume(req).await?;
        if src_host != dst_host {
            ctx.progress(
                "syncing",
                Some(40.0),
                Some(info.allocated_size),
                &format!("{copy} from {src_host} to {dst_host}"),
            )
            .await?;
            let req = pb::SendVolumeRequest {
                volume: copy.clone(),
                peer: self.hosts.address(dst_host)?,
                bandwidth_limit: 0,
                replace: false,
                peer_tls_name: String::new(),
                ..Default::default()
            };
            let stall = std::time::Duration::from_millis(self.cfg.transfer_stall_ms);
            let sent = src.send_volume(req, stall, &|_| {}).await;
            // The source host's copy was only for the journey.
            if let Err(e) = src.delete_volume(&copy).await {
                tracing::warn!(volume = %copy, host = src_host, error = %e, "copy left behind");
            }
            sent?;
        }
        ctx.progress(
            "attaching",
            Some(90.0),
            None,
            &format!("{copy} to {dst_domain}"),
        )
        .await?;
        match dst.attach_volume(dst_domain, &copy).await {
            Ok(_) => Ok(serde_json::json!({ "volume": copy, "host": dst_host })),
            Err(e) => {
                let _ = dst.delete_volume(&copy).await;
                Err(e)
            }
        }
    }
}
