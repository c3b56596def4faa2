//! `backup` commands: backups of VMs to the repository hosts (a hosting API's backups).
//! Owners back up, list, restore and remove their VMs' backups and make new VMs from them.

use corral_client::{ClientError, CoordinatorClient};
use corral_proto::v1 as pb;

use crate::cli::{human, lines, Out};

#[derive(clap::Subcommand, Debug)]
pub enum BackupCmd {
    /// Back up a shut-off VM's data volumes (and its system overlay with --system) to the
    /// repository hosts; after the first, only changed blocks travel.
    Create {
        vm: String,
        #[arg(long)]
        system: bool,
    },
    /// Your backups (every VM's, or one VM's), oldest first.
    Ls { vm: Option<String> },
    /// One backup (the newest unless --number).
    Show {
        vm: String,
        #[arg(long, default_value_t = 0)]
        number: u32,
    },
    /// Put a backup's volumes back into its shut-off VM (the newest unless --number).
    Restore {
        vm: String,
        #[arg(long, default_value_t = 0)]
        number: u32,
    },
    /// A new VM NAME from a backup of VM: a clone of its base with the backup's volumes,
    /// sized by --plan (or as the backed-up VM was).
    NewVm {
        vm: String,
        name: String,
        #[arg(long, default_value_t = 0)]
        number: u32,
        #[arg(long, default_value = "")]
        plan: String,
        /// Another user's VM (admins); the backup's owner when empty.
        #[arg(long, default_value = "")]
        owner: String,
    },
    /// Remove one backup's files from the repository hosts.
    Rm { vm: String, number: u32 },
}

fn backup_line(b: &pb::Backup) -> String {
    let vols: Vec<String> = b
        .volumes
        .iter()
        .map(|v| format!("{}:{}", v.role, v.volume))
        .collect();
    format!(
        "{:<20} #{:<3} {} sent {} of {} in {} ms, on {} ({})",
        b.vm,
        b.number,
        vols.join(","),
        human(b.sent_bytes),
        human(b.total_bytes),
        b.elapsed_ms,
        b.hosts.join(","),
        b.owner
    )
}

pub(crate) async fn backup(
    c: &mut CoordinatorClient,
    out: &Out,
    no_wait: bool,
    cmd: BackupCmd,
) -> Result<(), ClientError> {
    use crate::coord_cli::follow;
    match cmd {
        BackupCmd::Create { vm, system } => {
            let req = pb::BackupVmRequest { vm, system };
            let op = c.backups.backup_vm(req).await?.into_inner();
            follow(c, out, no_wait, op).await?;
        }
        BackupCmd::Ls { vm } => {
            let req = pb::ListBackupsRequest {
                vm: vm.unwrap_or_default(),
            };
            let l = c.backups.list_backups(req).await?.into_inner();
            out.show(&l, |l| lines(&l.backups, backup_line));
        }
        BackupCmd::Show { vm, number } => {
            let req = pb::ListBackupsRequest { vm: vm.clone() };
            let l = c.backups.list_backups(req).await?.into_inner();
            let found = if number == 0 {
                l.backups.into_iter().max_by_key(|b| b.number)
            } else {
                l.backups.into_iter().find(|b| b.number == number)
            };
            let Some(b) = found else {
                return Err(ClientError::Rpc(tonic::Status::not_found(if number == 0 {
                    format!("VM {vm} has no backup")
                } else {
                    format!("VM {vm} has no backup {number}")
                })));
            };
            out.show(&b, backup_line);
        }
        BackupCmd::Restore { vm, number } => {
            let op = c
                .backups
                .restore_backup(pb::BackupRef { vm, number })
                .await?
                .into_inner();
            follow(c, out, no_wait, op).await?;
        }
        BackupCmd::NewVm {
            vm,
            name,
            number,
            plan,
            owner,
        } => {
            let req = pb::CreateVmFromBackupRequest {
                backup: Some(pb::BackupRef { vm, number }),
                name,
                plan,
                owner,
            };
            let op = c.backups.create_vm_from_backup(req).await?.into_inner();
            follow(c, out, no_wait, op).await?;
        }
        BackupCmd::Rm { vm, number } => {
            if number == 0 {
                return Err(ClientError::Config(
                    "name the backup to remove (see `corral backup ls`)".into(),
                ));
            }
            let op = c
                .backups
                .remove_backup(pb::BackupRef { vm, number })
                .await?
                .into_inner();
            follow(c, out, no_wait, op).await?;
        }
    }
    Ok(())
}
