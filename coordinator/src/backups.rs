//! Backups of VMs, as a hosting API keeps them: a shut-off VM's data volumes (and, asked for,
//! its system overlay) copied to every repository host as read-only archive files. A backup
//! after the first is a delta against the previous one's file (the sync offers that file's
//! block hashes, so only changed blocks travel), yet every backup's files are whole: any one
//! can be restored or removed alone. A backup belongs to its VM's owner and outlives the VM.
//! Restoring one syncs its files back to the VM's host against the VM's volumes (again, only
//! what differs travels) and the agent puts them in place; a new VM from a backup is a clone
//! of its base (placed, with a plan's sizes) whose volumes are then those of the backup.

use std::sync::Arc;

use corral_client::proto as pb;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{CoordError, Result};
use crate::names::check_name;
use crate::operations::{OpCtx, OpError, Submit};
use crate::store::OpRecord;
use crate::vms::{work, Coordinator};

/// One volume of a backup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupVolume {
    /// "system" or "data".
    pub role: String,
    pub volume: String,
    pub target: String,
    /// The archive file on every repository host of the backup.
    pub file: String,
    pub format: String,
    pub virtual_size: u64,
    pub file_size: u64,
    pub checksum: String,
    pub sent_bytes: u64,
    /// The previous backup's file the delta was against.
    #[serde(default)]
    pub basis: String,
}

/// One backup, as the store keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    pub vm: String,
    pub number: u32,
    pub owner: String,
    pub base: Option<String>,
    pub created_ms: i64,
    pub made_by: String,
    pub volumes: Vec<BackupVolume>,
    pub hosts: Vec<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub elapsed_ms: u64,
}

impl BackupRecord {
    pub fn sent_bytes(&self) -> u64 {
        self.volumes.iter().map(|v| v.sent_bytes).sum()
    }

    pub fn total_bytes(&self) -> u64 {
        self.volumes.iter().map(|v| v.file_size).sum()
    }

    pub fn tag(&self) -> String {
        format!("backup {} of VM {}", self.number, self.vm)
    }
}

/// The archive file of volume `i` of backup `number` of `vm`: the VM's name (cut), the
/// number and a random tag keep it unique and a valid volume name.
pub fn file_name(vm: &str, number: u32, i: usize, format: &str) -> String {
    use rand::Rng;
    let tag: u32 = rand::thread_rng().gen_range(0..0x0100_0000);
    let vm: String = vm.chars().take(24).collect();
    let ext = if format == "raw" { "img" } else { "qcow2" };
    format!("backup-{vm}-{number}-{tag:06x}-{i}.{ext}")
}

/// A file the sync writes on a VM's host before the agent puts it in place.
fn restore_name(i: usize, format: &str) -> String {
    use rand::Rng;
    let tag: u32 = rand::thread_rng().gen_range(0..0x0100_0000);
    let ext = if format == "raw" { "img" } else { "qcow2" };
    format!("restore-{tag:06x}-{i}.{ext}")
}

/// A backed-up data volume's name in the new VM `domain` (cut to stay a volume name).
fn data_name(domain: &str, i: usize, format: &str) -> String {
    let keep: String = domain.chars().take(40).collect();
    restore_name(i, format).replacen("restore-", &format!("{keep}-data-"), 1)
}

/// The backup asked for (the newest for 0) among `all` (pure).
pub fn pick(all: &[BackupRecord], vm: &str, number: u32) -> Result<BackupRecord> {
    let of: Vec<&BackupRecord> = all.iter().filter(|b| b.vm == vm).collect();
    let found = if number == 0 {
        of.iter().max_by_key(|b| b.number).copied()
    } else {
        of.iter().find(|b| b.number == number).copied()
    };
    found.cloned().ok_or_else(|| {
        CoordError::NotFound(if number == 0 || of.is_empty() {
            format!("VM {vm} has no backup")
        } else {
            format!(
                "VM {vm} has no backup {number} (it has {})",
                of.iter()
                    .map(|b| b.number.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    })
}

/// The number the next backup of `vm` gets (pure).
pub fn next_number(all: &[BackupRecord], vm: &str) -> u32 {
    all.iter()
        .filter(|b| b.vm == vm)
        .map(|b| b.number)
        .max()
        .unwrap_or(0)
        + 1
}

/// Which of a VM's disks a backup takes (pure): data volumes, and the system overlay when
/// asked; never swap, temporary or read-only media.
pub fn chosen(disks: &[pb::Disk], system: bool) -> Vec<(String, pb::Disk)> {
    disks
        .iter()
        .filter(|d| !d.readonly)
        .filter_map(|d| match pb::VolumeRole::try_from(d.role) {
            Ok(pb::VolumeRole::Data) => Some(("data".to_string(), d.clone())),
            Ok(pb::VolumeRole::System) if system => Some(("system".to_string(), d.clone())),
            _ => None,
        })
        .collect()
}

impl Coordinator {
    /// The backups the caller may see (their own; an admin's: all), of one VM when given.
    pub async fn backups(&self, caller: &Caller, vm: Option<&str>) -> Result<Vec<BackupRecord>> {
        if let Some(v) = vm {
            check_name("VM", v)?;
        }
        let all = self.blocking(|s| s.backups()).await?;
        Ok(all
            .into_iter()
            .filter(|b| caller.is_admin() || b.owner == caller.name())
            .filter(|b| vm.is_none_or(|v| b.vm == v))
            .collect())
    }

    /// One backup the caller may see (another's is answered as absent).
    pub async fn backup(&self, caller: &Caller, vm: &str, number: u32) -> Result<BackupRecord> {
        check_name("VM", vm)?;
        pick(&self.backups(caller, Some(vm)).await?, vm, number)
    }

    /// Backs up a shut-off VM of the caller to every repository host.
    pub async fn backup_vm(
        self: &Arc<Self>,
        caller: &Caller,
        vm: &str,
        system: bool,
    ) -> Result<OpRecord> {
        check_name("VM", vm)?;
        let rec = self.vm_for(caller, vm).await?;
        let repo = self.repository_doors().await?;
        let host = Self::shut_off_host(&rec, "a running guest changes its disks under the backup")?;
        let door = self.hosts.door(&host)?;
        let d = door.get_domain(rec.domain()).await?;
        let disks = chosen(&d.disks, system);
        if disks.is_empty() {
            return Err(CoordError::FailedPrecondition(format!(
                "VM {vm} has no data volume to back up{}",
                if system {
                    ""
                } else {
                    " (back up its system overlay with --system)"
                }
            )));
        }
        let submit = Submit {
            kind: "backup".into(),
            vm: Some(vm.into()),
            host: Some(host.clone()),
            user: Some(caller.name().into()),
            idempotency_key: None,
            request: serde_json::json!({
                "vm": vm, "system": system, "to": repo,
                "volumes": disks.iter().map(|(_, d)| d.volume.clone()).collect::<Vec<_>>(),
            }),
        };
        let me = Arc::clone(self);
        let b = BackupRecord {
            vm: vm.into(),
            owner: rec.owner.clone(),
            base: rec.base.clone(),
            made_by: caller.name().into(),
            hosts: repo,
            vcpus: d.vcpus,
            memory_mib: d.memory_mib,
            ..Default::default()
        };
        let domain = rec.domain().to_string();
        let w = work(move |ctx| async move {
            me.do_backup(&ctx, &host, &domain, disks, b)
                .await
                .map_err(OpError::from)
        });
        Ok(self.ops.submit(submit, w).await?)
    }

    async fn do_backup(
        &self,
        ctx: &OpCtx,
        host: &str,
        domain: &str,
        disks: Vec<(String, pb::Disk)>,
        mut b: BackupRecord,
    ) -> Result<serde_json::Value> {
        let started = std::time::Instant::now();
        let door = self.hosts.door(host)?;
        let vm = b.vm.clone();
        let all = self.blocking(|s| s.backups()).await?;
        b.number = next_number(&all, &vm);
        // The previous backup of the VM: its files are the bases of the deltas.
        let prev = pick(&all, &vm, 0).ok();
        let mut made: Vec<(String, String)> = Vec::new();
        let copied = async {
            let count = disks.len();
            for (i, (role, disk)) in disks.iter().enumerate() {
                let info = door.volume_info(&disk.volume).await?;
                let file = file_name(&vm, b.number, i, &info.format);
                let basis = prev
                    .as_ref()
                    .and_then(|p| p.volumes.iter().find(|v| v.volume == disk.volume))
                    .map(|v| v.file.clone())
                    .unwrap_or_default();
                let mut v = BackupVolume {
                    role: role.clone(),
                    volume: disk.volume.clone(),
                    target: disk.target.clone(),
                    file: file.clone(),
                    format: info.format.clone(),
                    virtual_size: info.virtual_size,
                    basis: basis.clone(),
                    ..Default::default()
                };
                for (k, h) in b.hosts.iter().enumerate() {
                    let pct = 5.0
                        + 90.0 * (i * b.hosts.len() + k) as f32 / (count * b.hosts.len()) as f32;
                    ctx.progress(
                        "copying",
                        Some(pct),
                        Some(info.allocated_size),
                        &format!(
                            "{} to {h} as {file}{}",
                            disk.volume,
                            if basis.is_empty() {
                                String::new()
                            } else {
                                format!(" (changes since {basis})")
                            }
                        ),
                    )
                    .await?;
                    let req = pb::SendVolumeRequest {
                        volume: disk.volume.clone(),
                        peer: self.hosts.address(h)?,
                        dest: file.clone(),
                        basis: basis.clone(),
                        archive: true,
                        ..Default::default()
                    };
                    made.push((h.clone(), file.clone()));
                    let sent = self.send_copy(&*door, req).await?;
                    if k == 0 {
                        v.sent_bytes = sent.sent_bytes;
                        v.file_size = sent.total_bytes;
                        v.checksum = sent.checksum;
                    }
                }
                b.volumes.push(v);
            }
            b.created_ms = crate::store::now_ms();
            b.elapsed_ms = started.elapsed().as_millis() as u64;
            let r = b.clone();
            self.blocking(move |s| s.insert_backup(&r)).await
        };
        if let Err(e) = copied.await {
            for (h, f) in &made {
                if let Ok(d) = self.hosts.door(h) {
                    if let Err(e) = d.delete_volume(f).await {
                        tracing::warn!(host = %h, file = %f, error = %e, "backup file left behind");
                    }
                }
            }
            return Err(e);
        }
        tracing::info!(vm = %b.vm, domain, number = b.number, sent = b.sent_bytes(), total = b.total_bytes(), ms = b.elapsed_ms, "VM backed up");
        Ok(serde_json::json!({
            "vm": b.vm,
            "number": b.number,
            "volumes": b.volumes.len(),
            "sent_bytes": b.sent_bytes(),
            "total_bytes": b.total_bytes(),
            "elapsed_ms": b.elapsed_ms,
            "hosts": b.hosts,
        }))
    }

    /// One copy between agents, with the configured stall limit; its last report.
    pub(crate) async fn send_copy(
        &self,
        src: &dyn crate::door::AgentDoor,
        req: pb::SendVolumeRequest,
    ) -> Result<pb::SyncProgress> {
        let stall = std::time::Duration::from_millis(self.cfg.transfer_stall_ms);
        src.send_volume(req, stall, &|_| {}).await
    }

    /// A repository host of the backup that is up: `prefer` when it holds it.
    fn backup_source(&self, b: &BackupRecord, prefer: &str) -> Result<String> {
        if b.hosts.iter().any(|h| h == prefer) && self.hosts.door(prefer).is_ok() {
            return Ok(prefer.to_string());
        }
        b.hosts
            .iter()
            .find(|h| self.hosts.door(h).is_ok())
            .cloned()
            .ok_or_else(|| {
                CoordError::Unavailable(format!(
                    "no repository host holding {} is up ({})",
                    b.tag(),
                    b.hosts.join(", ")
                ))
            })
    }

    /// Puts a backup's volumes back into its shut-off VM.
    pub async fn restore_backup(
        self: &Arc<Self>,
        caller: &Caller,
        vm: &str,
        number: u32,
    ) -> Result<OpRecord> {
        check_name("VM", vm)?;
        let rec = self.vm_for(caller, vm).await?;
        let b = self.backup(caller, vm, number).await?;
        if b.owner != rec.owner {
            return Err(CoordError::FailedPrecondition(format!(
                "{} was made of user {}'s VM; VM {vm} is {}'s now",
                b.tag(),
                b.owner,
                rec.owner
            )));
        }
        let host = Self::shut_off_host(&rec, "its guest has the disks open")?;
        if b.volumes.iter().any(|v| v.role == "system") && b.base != rec.base {
            return Err(CoordError::FailedPrecondition(format!(
                "{} holds a system overlay of base {}; VM {vm} is a clone of {} now",
                b.tag(),
                b.base.as_deref().unwrap_or("none"),
                rec.base.as_deref().unwrap_or("none")
            )));
        }
        let door = self.hosts.door(&host)?;
        let d = door.get_domain(rec.domain()).await?;
        for v in &b.volumes {
            let has = d.disks.iter().any(|k| k.volume == v.volume)
                || d.detached_volumes.contains(&v.volume);
            if !has {
                return Err(CoordError::FailedPrecondition(format!(
                    "VM {vm} no longer has volume {} of {}: make a new VM from the backup \
                     instead",
                    v.volume,
                    b.tag()
                )));
            }
        }
        let from = self.backup_source(&b, &host)?;
        let submit = Submit {
            kind: "restore-backup".into(),
            vm: Some(vm.into()),
            host: Some(host.clone()),
            user: Some(caller.name().into()),
            idempotency_key: None,
            request: serde_json::json!({ "vm": vm, "number": b.number, "from": from }),
        };
        let me = Arc::clone(self);
        let domain = rec.domain().to_string();
        let w = work(move |ctx| async move {
            let pairs: Vec<(BackupVolume, String)> = b
                .volumes
                .iter()
                .map(|v| (v.clone(), v.volume.clone()))
                .collect();
            me.put_back(&ctx, &from, &host, &domain, &pairs)
                .await
                .map(|sent| serde_json::json!({ "vm": b.vm, "number": b.number, "sent_bytes": sent }))
                .map_err(OpError::from)
        });
        Ok(self.ops.submit(submit, w).await?)
    }

    /// Syncs each backed-up file to `host` against the volume it replaces (only what differs
    /// travels), then has the agent put them all in place; the bytes sent.
    async fn put_back(
        &self,
        ctx: &OpCtx,
        from: &str,
        host: &str,
        domain: &str,
        pairs: &[(BackupVolume, String)],
    ) -> Result<u64> {
        let src = self.hosts.door(from)?;
        let dst = self.hosts.door(host)?;
        let mut temps = Vec::new();
        let mut sent = 0;
        let synced = async {
            for (i, (v, volume)) in pairs.iter().enumerate() {
                let tmp = restore_name(i, &v.format);
                ctx.progress(
                    "copying",
                    Some(10.0 + 70.0 * i as f32 / pairs.len() as f32),
                    Some(v.file_size),
                    &format!("{} from {from} to {host}, against {volume}", v.file),
                )
                .await?;
                let req = pb::SendVolumeRequest {
                    volume: v.file.clone(),
                    peer: self.hosts.address(host)?,
                    dest: tmp.clone(),
                    basis: volume.clone(),
                    ..Default::default()
                };
                temps.push(tmp.clone());
                sent += self.send_copy(&*src, req).await?.sent_bytes;
            }
            ctx.progress("restoring", Some(90.0), None, domain).await?;
            for ((_, volume), tmp) in pairs.iter().zip(&temps) {
                let req = pb::RestoreVolumeRequest {
                    domain: domain.into(),
                    volume: volume.clone(),
                    from: tmp.clone(),
                };
                dst.restore_volume(req).await?;
            }
            Ok::<_, CoordError>(())
        };
        if let Err(e) = synced.await {
            for t in &temps {
                let _ = dst.delete_volume(t).await;
            }
            return Err(e);
        }
        Ok(sent)
    }

    /// Removes a backup's files from its repository hosts, then its record (its owner or an
    /// admin).
    pub async fn remove_backup(
        self: &Arc<Self>,
        caller: &Caller,
        vm: &str,
        number: u32,
    ) -> Result<OpRecord> {
        let b = self.backup(caller, vm, number).await?;
        let submit = Submit {
            kind: "remove-backup".into(),
            vm: None,
            user: Some(caller.name().into()),
            request: serde_json::json!({ "vm": b.vm, "number": b.number }),
            ..Default::default()
        };
        let me = Arc::clone(self);
        let w = work(move |ctx| async move {
            let run = async {
                for h in &b.hosts {
                    let door = me.hosts.door(h)?;
                    for v in &b.volumes {
                        ctx.progress("removing", None, None, &format!("{} on {h}", v.file))
                            .await?;
                        match door.delete_volume(&v.file).await {
                            Err(e) if e.code() != tonic::Code::NotFound => return Err(e),
                            _ => {}
                        }
                    }
                }
                let (n, k) = (b.vm.clone(), b.number);
                me.blocking(move |s| s.remove_backup(&n, k)).await?;
                Ok::<_, CoordError>(serde_json::json!({ "vm": b.vm, "number": b.number }))
            };
            run.await.map_err(OpError::from)
        });
        Ok(self.ops.submit(submit, w).await?)
    }

    /// A new VM from a backup: a clone of its base (with a plan's sizes, or the backed-up
    /// VM's), shut off, whose volumes are then the backup's.
    pub async fn create_from_backup(
        self: &Arc<Self>,
        caller: &Caller,
        vm: &str,
        number: u32,
        name: &str,
        plan: Option<String>,
        owner: Option<String>,
    ) -> Result<OpRecord> {
        check_name("VM", name)?;
        let b = self.backup(caller, vm, number).await?;
        let Some(base) = b.base.clone() else {
            return Err(CoordError::FailedPrecondition(format!(
                "{} is of a VM that is not a clone of a base: only clones' backups make new VMs",
                b.tag()
            )));
        };
        let resized = plan.is_none();
        let order = crate::orders::CloneOrder {
            base,
            name: name.into(),
            start: false,
            labels: Default::default(),
            keep_together: false,
            key: None,
            owner: Some(owner.unwrap_or_else(|| b.owner.clone())),
            volatile: false,
            lifetime: None,
            pool: false,
            memory_mib: if resized { b.memory_mib } else { 0 },
            vcpus: if resized { b.vcpus } else { 0 },
            copy_data: false,
            plan,
        };
        self.clone_order(caller, order, Some(b)).await
    }

    /// After the clone `domain` was made on `host`: the backup's volumes in it.
    pub(crate) async fn fill_from_backup(
        &self,
        ctx: &OpCtx,
        host: &str,
        domain: &str,
        b: &BackupRecord,
    ) -> Result<serde_json::Value> {
        let from = self.backup_source(b, host)?;
        let src = self.hosts.door(from.as_str())?;
        let dst = self.hosts.door(host)?;
        let d = dst.get_domain(domain).await?;
        // A disk of the clone at the backed-up disk's place is replaced; others are added.
        let mut replace = Vec::new();
        let mut add = Vec::new();
        for v in &b.volumes {
            let same = d.disks.iter().find(|k| {
                if v.role == "system" {
                    k.role == pb::VolumeRole::System as i32
                } else {
                    k.target == v.target && k.role == pb::VolumeRole::Data as i32
                }
            });
            match same {
                Some(k) => replace.push((v.clone(), k.volume.clone())),
                None => add.push(v.clone()),
            }
        }
        let mut sent = self.put_back(ctx, &from, host, domain, &replace).await?;
        for (i, v) in add.iter().enumerate() {
            let file = data_name(domain, i, &v.format);
            ctx.progress(
                "copying",
                Some(92.0),
                Some(v.file_size),
                &format!("{} from {from} to {host} as {file}", v.file),
            )
            .await?;
            let req = pb::SendVolumeRequest {
                volume: v.file.clone(),
                peer: self.hosts.address(host)?,
                dest: file.clone(),
                mode: 0o644,
                ..Default::default()
            };
            sent += self.send_copy(&*src, req).await?.sent_bytes;
            if let Err(e) = dst.attach_volume(domain, &file).await {
                let _ = dst.delete_volume(&file).await;
                return Err(e);
            }
        }
        Ok(serde_json::json!({ "backup": b.tag(), "sent_bytes": sent }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(vm: &str, number: u32) -> BackupRecord {
        BackupRecord {
            vm: vm.into(),
            number,
            ..Default::default()
        }
    }

    #[test]
    fn backups_are_picked_and_numbered() {
        let all = vec![rec("web", 1), rec("web", 3), rec("db", 1)];
        assert_eq!(pick(&all, "web", 0).unwrap().number, 3);
        assert_eq!(pick(&all, "web", 1).unwrap().number, 1);
        let e = pick(&all, "web", 2).unwrap_err().to_string();
        assert!(e.contains("VM web has no backup 2 (it has 1, 3)"), "{e}");
        let e = pick(&all, "nope", 0).unwrap_err().to_string();
        assert!(e.contains("VM nope has no backup"), "{e}");
        assert_eq!(next_number(&all, "web"), 4);
        assert_eq!(next_number(&all, "new"), 1);
    }

    #[test]
    fn file_names_are_volume_names() {
        let long = "v".repeat(64);
        for (vm, f) in [(long.as_str(), "qcow2"), ("web", "raw")] {
            let n = file_name(vm, u32::MAX, 99, f);
            assert!(corral_proto::rules::name("volume", &n).is_ok(), "{n}");
            let r = data_name(&long, 99, f);
            assert!(corral_proto::rules::name("volume", &r).is_ok(), "{r}");
        }
    }

    #[test]
    fn data_volumes_and_the_system_overlay_when_asked() {
        let disk = |v: &str, role: pb::VolumeRole, ro: bool| pb::Disk {
            volume: v.into(),
            role: role as i32,
            readonly: ro,
            ..Default::default()
        };
        let disks = vec![
            disk("sys", pb::VolumeRole::System, false),
            disk("swap", pb::VolumeRole::Swap, false),
            disk("data", pb::VolumeRole::Data, false),
            disk("iso", pb::VolumeRole::Data, true),
        ];
        let names = |s| {
            chosen(&disks, s)
                .into_iter()
                .map(|(r, d)| format!("{r}:{}", d.volume))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(false), ["data:data"]);
        assert_eq!(names(true), ["system:sys", "data:data"]);
    }
}
