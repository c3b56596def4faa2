//! A VM's life after it is made: power actions, restore and removal as operations, and the
//! resumers that clean up what a coordinator stopped mid-way left half made.

use std::sync::Arc;

use corral_client::proto as pb;

use crate::auth::Caller;
use crate::door::Power;
use crate::error::{CoordError, Result};
use crate::operations::Resumer;
use crate::operations::{OpCtx, OpError, Submit};
use crate::states::{Desired, Observed};
use crate::store::{OpRecord, VmRecord};
use crate::vms::{work, Coordinator};
use std::collections::HashMap;
use std::time::Duration;

/// A VM action that becomes an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Start,
    Shutdown,
    PowerOff,
    Hibernate,
    Restore,
    Remove,
    Suspend,
    Resume,
    Reset,
    /// A clone's volumes made independent of its base; the VM keeps no base after.
    Spinoff,
    /// The guest asked to reboot.
    Reboot,
    /// Started with its host, or not.
    Autostart(bool),
    /// New memory (MiB) and vCPUs (0 keeps a value).
    Resources {
        memory_mib: u64,
        vcpus: u32,
    },
    /// A new empty swap or data disk (hot-plugged into a running VM).
    AddDisk {
        swap: bool,
        size_bytes: u64,
        raw: bool,
    },
    /// An internal snapshot of a swap or data disk (shut-off VMs): made, reverted, deleted.
    DiskSnapshot {
        volume: String,
        snapshot: String,
        action: pb::VolumeSnapshotAction,
    },
    /// A swap or data disk grown (live in a running VM).
    ResizeDisk {
        volume: String,
        size_bytes: u64,
    },
    /// A swap or data disk detached and deleted (shut-off VMs).
    RemoveDisk(String),
    /// A swap or data disk detached (hot in a running VM), kept as the VM's own.
    DetachDisk(String),
    /// A disk detached before attached again (hot in a running VM).
    AttachDisk(String),
    /// A clone moved onto another base with the same layout (shut-off clones).
    Rebase(String),
    /// The VM's own run timeout (seconds; 0: its base's), admin only.
    RunTimeout(u64),
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Shutdown => "shutdown",
            Self::PowerOff => "poweroff",
            Self::Hibernate => "hibernate",
            Self::Restore => "restore",
            Self::Remove => "remove",
            Self::Suspend => "suspend",
            Self::Resume => "resume",
            Self::Reset => "reset",
            Self::Spinoff => "spinoff",
            Self::Reboot => "reboot",
            Self::Autostart(_) => "autostart",
            Self::Resources { .. } => "resources",
            Self::AddDisk { .. } => "add-disk",
            Self::RemoveDisk(_) => "remove-disk",
            Self::DetachDisk(_) => "detach-disk",
            Self::AttachDisk(_) => "attach-disk",
            Self::ResizeDisk { .. } => "resize-disk",
            Self::DiskSnapshot { .. } => "disk-snapshot",
            Self::Rebase(_) => "rebase",
            Self::RunTimeout(_) => "run-timeout",
        }
    }

    /// Bad numbers are refused before anything is submitted.
    fn check(&self) -> Result<()> {
        if let Self::AddDisk { size_bytes, .. } | Self::ResizeDisk { size_bytes, .. } = *self {
            if !(1 << 20..=16 << 40).contains(&size_bytes) {
                return Err(CoordError::Invalid(format!(
                    "a disk of {size_bytes} bytes is out of range: 1 MiB to 16 TiB"
                )));
            }
        }
        if let Self::RunTimeout(s) = *self {
            crate::idle::Timeouts {
                run_seconds: s,
                ..Default::default()
            }
            .check()?;
        }
        if let Self::RemoveDisk(v)
        | Self::DetachDisk(v)
        | Self::AttachDisk(v)
        | Self::ResizeDisk { volume: v, .. }
        | Self::DiskSnapshot { volume: v, .. } = self
        {
            crate::names::check_name("volume", v)?;
        }
        if let Self::DiskSnapshot {
            snapshot, action, ..
        } = self
        {
            crate::names::check_name("snapshot", snapshot)?;
            if *action == pb::VolumeSnapshotAction::Unspecified {
                return Err(CoordError::Invalid(
                    "say what to do with the snapshot: create, revert or delete".into(),
                ));
            }
        }
        if let Self::Resources { memory_mib, vcpus } = *self {
            if memory_mib == 0 && vcpus == 0 {
                return Err(CoordError::Invalid(
                    "give new memory or vCPUs (0 keeps a value)".into(),
                ));
            }
            if memory_mib > 0 {
                corral_proto::rules::memory_mib(memory_mib)?;
            }
            if vcpus > 0 {
                corral_proto::rules::vcpus(vcpus)?;
            }
        }
        Ok(())
    }
}

impl Coordinator {
    pub async fn vm_action(
        self: &Arc<Self>,
        caller: &Caller,
        name: &str,
        action: Action,
    ) -> Result<OpRecord> {
        action.check()?;
        if let Action::RunTimeout(_) = action {
            // A student does not lift their own VM's limit.
            caller.require_admin()?;
        }
        let vm = self.vm_for(caller, name).await?;
        if let Action::Rebase(base) = &action {
            self.check_rebase(caller, &vm, base).await?;
        }
        if action == Action::Spinoff && vm.base.is_none() {
            return Err(CoordError::FailedPrecondition(format!(
                "VM {name} is no clone: it has no base to spin off from"
            )));
        }
        let host = vm
            .host
            .clone()
            .ok_or_else(|| CoordError::FailedPrecondition(format!("VM {name} has no host")))?;
        let submit = Submit {
            kind: action.kind().into(),
            vm: Some(vm.name.clone()),
            host: Some(host.clone()),
            user: Some(caller.name().into()),
            idempotency_key: None,
            request: serde_json::json!({ "vm": vm.name }),
        };
        let me = Arc::clone(self);
        let w = work(move |ctx| async move {
            me.do_action(&ctx, &host, vm, action)
                .await
                .map_err(OpError::from)
        });
        Ok(self.ops.submit(submit, w).await?)
    }

    pub(crate) async fn do_action(
        self: &Arc<Self>,
        ctx: &OpCtx,
        host: &str,
        mut vm: VmRecord,
        action: Action,
    ) -> Result<serde_json::Value> {
        let door = self.hosts.door(host)?;
        // The agent knows the VM by its domain's name (a pool clone's, once handed out).
        let name = vm.domain().to_string();
        ctx.progress(action.kind(), Some(10.0), None, &format!("on host {host}"))
            .await?;
        let shutdown = Power::Shutdown {
            timeout: Duration::from_secs(self.cfg.shutdown_grace_s),
        };
        let domain = match action {
            Action::Start => {
                let _slot = self.start_slot(ctx, host).await?;
                Some(door.power(&name, Power::Start).await?)
            }
            Action::Shutdown => Some(door.power(&name, shutdown).await?),
            Action::PowerOff => Some(door.power(&name, Power::PowerOff).await?),
            Action::Hibernate => Some(door.power(&name, Power::Hibernate).await?),
            Action::Suspend => Some(door.power(&name, Power::Suspend).await?),
            Action::Resume => Some(door.power(&name, Power::Resume).await?),
            Action::Reset => Some(door.power(&name, Power::Reset).await?),
            Action::Reboot => Some(door.power(&name, Power::Reboot).await?),
            Action::Autostart(on) => Some(door.set_autostart(&name, on).await?),
            Action::Resources { memory_mib, vcpus } => {
                Some(door.set_resources(&name, memory_mib, vcpus).await?)
            }
            Action::AddDisk {
                swap,
                size_bytes,
                raw,
            } => {
                let role = if swap {
                    pb::VolumeRole::Swap
                } else {
                    pb::VolumeRole::Data
                };
                let req = pb::AddVolumeRequest {
                    domain: name.clone(),
                    role: role as i32,
                    size_bytes,
                    name: String::new(),
                    format: if raw {
                        pb::VolumeFormat::Raw
                    } else {
                        pb::VolumeFormat::Qcow2
                    } as i32,
                };
                Some(door.add_volume(req).await?)
            }
            Action::DiskSnapshot {
                ref volume,
                ref snapshot,
                action,
            } => {
                let req = pb::SnapshotVolumeRequest {
                    domain: name.clone(),
                    volume: volume.clone(),
                    snapshot: snapshot.clone(),
                    action: action as i32,
                };
                door.snapshot_volume(req).await?;
                None
            }
            Action::ResizeDisk {
                ref volume,
                size_bytes,
            } => {
                let req = pb::ResizeDomainVolumeRequest {
                    domain: name.clone(),
                    volume: volume.clone(),
                    size_bytes,
                };
                door.resize_domain_volume(req).await?;
                None
            }
            Action::RemoveDisk(ref volume) => Some(door.remove_volume(&name, volume).await?),
            Action::DetachDisk(ref volume) => Some(door.detach_volume(&name, volume).await?),
            Action::AttachDisk(ref volume) => Some(door.attach_volume(&name, volume).await?),
            Action::Rebase(ref base) => {
                // The new base comes to the VM's host first when it is not there.
                self.ensure_base(ctx, base, host, 0).await?;
                let d = door.rebase_clone(&name, base).await?;
                vm.base = Some(base.clone());
                Some(d)
            }
            Action::Spinoff => {
                let d = door.spinoff_clone(&name).await?;
                // The record follows the agent: no base any more, so the base may go.
                vm.base = None;
                Some(d)
            }
            Action::Restore => Some(door.restore_clone(&name).await?),
            Action::RunTimeout(s) => {
                // Read again: an operation before this one may have changed the record.
                let n = vm.name.clone();
                let mut fresh = self.blocking(move |st| st.vm(&n)).await?;
                fresh.spec["run_timeout_s"] = s.into();
                let v = fresh.clone();
                self.blocking(move |st| st.put_vm(&v)).await?;
                vm = fresh;
                None
            }
            Action::Remove => {
                door.remove_domain(&name).await?;
                let n = vm.name.clone();
                self.blocking(move |s| s.remove_vm(&n)).await?;
                None
            }
        };
        if let Some(d) = domain {
            vm.observed_state = Observed::from_pb(d.state);
            vm.desired_state = match action {
                // A paused guest is still meant to run; it is resumed, not restarted.
                Action::Start
                | Action::Suspend
                | Action::Resume
                | Action::Reset
                | Action::Reboot => Desired::Running,
                Action::Hibernate => Desired::Hibernated,
                Action::Spinoff
                | Action::Autostart(_)
                | Action::Resources { .. }
                | Action::AddDisk { .. }
                | Action::RemoveDisk(_)
                | Action::DetachDisk(_)
                | Action::AttachDisk(_)
                | Action::Rebase(_)
                | Action::RunTimeout(_) => vm.desired_state,
                _ => Desired::ShutOff,
            };
            let v = vm.clone();
            self.blocking(move |s| s.put_vm(&v)).await?;
        }
        Ok(serde_json::json!({ "vm": vm.name, "state": vm.observed_state.as_str() }))
    }

    /// After a restart: a clone or VM that was being made is cleaned away (the VM and its files),
    /// then the operation ends failed with that reason. Other kinds end failed as they are.
    pub fn resumers(self: &Arc<Self>) -> HashMap<String, Resumer> {
        let me = Arc::clone(self);
        let cleanup: Resumer = Arc::new(move |op: &OpRecord| {
            let (me, vm, host) = (Arc::clone(&me), op.vm.clone()?, op.host.clone()?);
            let kind = op.kind.clone();
            Some(work(move |ctx| async move {
                ctx.progress(
                    "cleaning",
                    None,
                    None,
                    &format!("removing the half-made {vm} from {host}"),
                )
                .await?;
                let door = me.hosts.wait_up(&host, Duration::from_secs(30)).await;
                if let Ok(door) = door {
                    if let Err(e) = door.remove_domain(&vm).await {
                        return Err(OpError::Failed(format!("cleanup: {e}")));
                    }
                } else {
                    return Err(OpError::Failed(format!(
                        "the coordinator restarted during the {kind} and host {host} is down: {vm} may be left there"
                    )));
                }
                let v = vm.clone();
                let _ = me.blocking(move |s| s.remove_vm(&v)).await;
                Err(OpError::Failed(format!(
                    "the coordinator restarted during the {kind}; the half-made {vm} was removed from {host}"
                )))
            }))
        });
        HashMap::from([
            ("clone".to_string(), Arc::clone(&cleanup)),
            ("create".to_string(), cleanup),
            ("post-load".to_string(), self.post_load_resumer()),
        ])
    }
}
