//! Base upkeep (Ravada's): `base rm` turns a base without clones back into an editable VM
//! (its copies on other hosts go; on one host the agent unlocks it and deletes its base
//! files), a re-prepare of that VM is refused while its disks are unchanged since (Ravada's
//! `_check_disk_modified`), and a clone moves onto another base with the same layout
//! (`vm rebase`). Deleting a base everywhere is `base delete` ([`Coordinator::remove_base`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::auth::Caller;
use crate::error::{CoordError, Result};
use crate::operations::{OpError, Submit};
use crate::states::{Desired, Observed};
use crate::store::{OpRecord, VmRecord};
use crate::vms::{check_name, work, Coordinator};

/// When each of a VM's disks last changed (volume -> ms since the epoch), as its agent says.
async fn disk_times(
    door: &dyn crate::door::AgentDoor,
    domain: &str,
) -> Result<BTreeMap<String, i64>> {
    let d = door.get_domain(domain).await?;
    let mut times = BTreeMap::new();
    for disk in d.disks.iter().filter(|d| !d.volume.is_empty()) {
        let info = door.volume_info(&disk.volume).await?;
        times.insert(disk.volume.clone(), info.modified_unix_ms);
    }
    Ok(times)
}

impl Coordinator {
    /// `base rm`: a base without clones becomes an editable VM again, on one of its hosts.
    pub async fn unprepare_base(self: &Arc<Self>, caller: &Caller, name: &str) -> Result<OpRecord> {
        caller.require_admin()?;
        check_name("base", name)?;
        let n = name.to_string();
        let (hosts, clones) = self.base_and_clones(name).await?;
        let pools = self.blocking(|s| s.base_pools()).await?;
        if pools.get(name).is_some_and(|p| p.clones > 0) {
            return Err(CoordError::FailedPrecondition(format!(
                "base {name} keeps a pool: empty it first (corral base pool {name} --clones 0)"
            )));
        }
        if !clones.is_empty() {
            return Err(CoordError::FailedPrecondition(format!(
                "base {name} has {} clone(s) ({}): remove them before turning it back into a VM",
                clones.len(),
                clones.join(", ")
            )));
        }
        // It stays on a host that is up; its copies elsewhere go.
        let keep = hosts
            .iter()
            .find(|h| self.hosts.door(h).is_ok())
            .cloned()
            .ok_or_else(|| CoordError::Unavailable(format!("no host holding base {name} is up")))?;
        let submit = Submit {
            kind: "unprepare-base".into(),
            vm: Some(name.into()),
            host: Some(keep.clone()),
            user: Some(caller.name().into()),
            request: serde_json::json!({ "base": name, "host": keep }),
            ..Default::default()
        };
        let (me, owner) = (Arc::clone(self), caller.name().to_string());
        let w = work(move |ctx| async move {
            let run = async {
                for h in hosts.iter().filter(|h| **h != keep) {
                    ctx.progress("removing", None, None, &format!("the copy on host {h}"))
                        .await?;
                    me.hosts.door(h)?.remove_domain(&n).await?;
                    let (b, h2) = (n.clone(), h.clone());
                    me.blocking(move |s| s.set_base_host(&b, &h2, false))
                        .await?;
                }
                ctx.progress("unlocking", Some(60.0), None, &format!("on host {keep}"))
                    .await?;
                let door = me.hosts.door(&keep)?;
                door.unprepare_base(&n).await?;
                // What its disks are now: a re-prepare is refused until one of them changes.
                let times = disk_times(door.as_ref(), &n).await?;
                let vm = VmRecord {
                    name: n.clone(),
                    owner,
                    base: None,
                    host: Some(keep.clone()),
                    desired_state: Desired::ShutOff,
                    observed_state: Observed::Domain(corral_client::proto::DomainState::ShutOff),
                    spec: serde_json::json!({ "labels": {}, "unprepared_disks": times }),
                };
                me.blocking(move |s| {
                    s.remove_base(&vm.name)?;
                    s.insert_vm(&vm)
                })
                .await?;
                Ok::<_, CoordError>(serde_json::json!({ "vm": n, "host": keep }))
            };
            run.await.map_err(OpError::from)
        });
        Ok(self.ops.submit(submit, w).await?)
    }

    /// Refuses to prepare again a VM whose disks are as they were when its base was removed.
    pub(crate) async fn refuse_unchanged(&self, vm: &VmRecord) -> Result<()> {
        let Some(then) = vm.spec.get("unprepared_disks") else {
            return Ok(());
        };
        let then: BTreeMap<String, i64> = serde_json::from_value(then.clone()).unwrap_or_default();
        let host = vm.host.as_deref().unwrap_or_default();
        let now = disk_times(self.hosts.door(host)?.as_ref(), vm.domain()).await?;
        if now == then {
            return Err(CoordError::FailedPrecondition(format!(
                "nothing changed in VM {} since its base was removed: change it (start it, \
                 install, shut it down) before preparing it again",
                vm.name
            )));
        }
        Ok(())
    }

    /// What a rebase needs before it is submitted: a clone, a different base the caller may
    /// clone.
    pub(crate) async fn check_rebase(
        &self,
        caller: &Caller,
        vm: &VmRecord,
        base: &str,
    ) -> Result<()> {
        check_name("base", base)?;
        match vm.base.as_deref() {
            None => Err(CoordError::FailedPrecondition(format!(
                "VM {} is no clone: it has no base to change",
                vm.name
            ))),
            Some(b) if b == base => Err(CoordError::FailedPrecondition(format!(
                "VM {} is already a clone of {base}",
                vm.name
            ))),
            Some(_) => {
                let b = base.to_string();
                if self.blocking(move |s| Ok(s.base_spec(&b).is_err())).await? {
                    return Err(CoordError::NotFound(format!("base {base} not found")));
                }
                self.may_clone(caller, base).await
            }
        }
    }
}
