//! `BackupService`: backups of VMs, their restore, new VMs from them.

use std::sync::Arc;

use corral_client::proto as pb;
use pb::backup_service_server::BackupService;

use crate::api::op_to_pb;
use crate::backups::BackupRecord;
use crate::vms::Coordinator;

#[derive(Debug, Clone)]
pub struct BackupApi(pub Arc<Coordinator>);

fn backup_to_pb(b: BackupRecord) -> pb::Backup {
    pb::Backup {
        sent_bytes: b.sent_bytes(),
        total_bytes: b.total_bytes(),
        vm: b.vm,
        number: b.number,
        owner: b.owner,
        base: b.base.unwrap_or_default(),
        created_unix_ms: b.created_ms,
        made_by: b.made_by,
        volumes: b
            .volumes
            .into_iter()
            .map(|v| pb::BackupVolume {
                role: v.role,
                volume: v.volume,
                target: v.target,
                file: v.file,
                format: v.format,
                virtual_size: v.virtual_size,
                file_size: v.file_size,
                checksum: v.checksum,
                sent_bytes: v.sent_bytes,
                basis: v.basis,
            })
            .collect(),
        hosts: b.hosts,
        vcpus: b.vcpus,
        memory_mib: b.memory_mib,
        elapsed_ms: b.elapsed_ms,
    }
}

fn some(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

rpcs! { BackupApi: BackupService, |c, who, r|;
    backup_vm(pb::BackupVmRequest) -> pb::Operation = "BackupVm"
        => op_to_pb(&c.backup_vm(&who, &r.vm, r.system).await?);
    list_backups(pb::ListBackupsRequest) -> pb::ListBackupsResponse = "ListBackups"
        => pb::ListBackupsResponse {
            backups: c
                .backups(&who, some(&r.vm).as_deref())
                .await?
                .into_iter()
                .map(backup_to_pb)
                .collect(),
        };
    restore_backup(pb::BackupRef) -> pb::Operation = "RestoreBackup"
        => op_to_pb(&c.restore_backup(&who, &r.vm, r.number).await?);
    create_vm_from_backup(pb::CreateVmFromBackupRequest) -> pb::Operation = "CreateVmFromBackup"
        => {
            let b = r.backup.clone().unwrap_or_default();
            op_to_pb(
                &c.create_from_backup(&who, &b.vm, b.number, &r.name, some(&r.plan), some(&r.owner))
                    .await?,
            )
        };
    remove_backup(pb::BackupRef) -> pb::Operation = "RemoveBackup"
        => op_to_pb(&c.remove_backup(&who, &r.vm, r.number).await?);
}
