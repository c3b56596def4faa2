//! Clones of bases through the coordinator: checked, placed, reserved, copied to the chosen
//! host when it lacks the base, made by the agent, recorded; a clone that does not finish
//! leaves nothing behind.

use std::sync::Arc;

use corral_client::proto as pb;

use crate::auth::Caller;
use crate::db::Db;
use crate::error::{CoordError, Result};
use crate::operations::{OpCtx, OpError, Submit};
use crate::orders::CloneOrder;
use crate::states::{Desired, Observed};
use crate::store::{OpRecord, VmRecord};
use crate::vms::{work, Coordinator};
use std::time::Duration;

/// What a clone's record keeps of its order: labels, and volatility with its end.
pub(crate) fn clone_spec(req: &CloneOrder) -> serde_json::Value {
    let mut spec = serde_json::json!({ "labels": req.labels });
    if req.pool {
        spec["pool"] = true.into();
    }
    if let Some(p) = &req.plan {
        spec["plan"] = p.clone().into();
    }
    if req.volatile {
        spec["volatile"] = true.into();
        if let Some(l) = req.lifetime {
            spec["expires_ms"] = (crate::store::now_ms() + l.as_millis() as i64).into();
        }
    }
    spec
}

/// What the agent is asked to make for a clone order.
pub(crate) fn agent_request(req: &CloneOrder, owner: &str) -> pb::CloneBaseRequest {
    pb::CloneBaseRequest {
        base: req.base.clone(),
        name: req.name.clone(),
        labels: req.labels.clone(),
        owner: owner.into(),
        start: req.start,
        memory_mib: req.memory_mib,
        vcpus: req.vcpus,
        data_volumes: if req.copy_data {
            pb::DataVolumeMode::Copy
        } else {
            pb::DataVolumeMode::Unspecified
        } as i32,
    }
}

impl Coordinator {
    /// Bytes the files of `base` hold on the first up host of `holders` (0 when none says).
    async fn base_bytes(&self, base: &str, holders: &[String]) -> u64 {
        for h in holders {
            let Ok(door) = self.hosts.door(h) else {
                continue;
            };
            let Ok(export) = door.export_base(base).await else {
                continue;
            };
            let mut total = 0;
            for v in &export.volumes {
                total += door.volume_info(v).await.map_or(0, |i| i.allocated_size);
            }
            return total;
        }
        0
    }

    pub async fn clone_vm(self: &Arc<Self>, caller: &Caller, req: CloneOrder) -> Result<OpRecord> {
        self.clone_order(caller, req, None).await
    }

    /// A clone, then (in the same operation) a backup's volumes put into it when given.
    pub(crate) async fn clone_order(
        self: &Arc<Self>,
        caller: &Caller,
        mut req: CloneOrder,
        backup: Option<crate::backups::BackupRecord>,
    ) -> Result<OpRecord> {
        self.apply_clone_plan(&mut req).await?;
        if let Some(l) = req.lifetime {
            if !req.volatile {
                return Err(CoordError::Invalid(
                    "a lifetime is for volatile clones (--volatile)".into(),
                ));
            }
            if l > crate::volatile::MAX_LIFETIME {
                return Err(CoordError::Invalid(
                    "a volatile clone lives at most 366 days".into(),
                ));
            }
        }
        // A volatile clone is made to be used now: it starts with its clone.
        req.start |= req.volatile;
        // The agent's own rules, before anything is submitted.
        corral_proto::rules::clone_base(&agent_request(&req, req.owner.as_deref().unwrap_or("")))?;
        crate::names::not_reserved(&req.name)?;
        let owner = match &req.owner {
            Some(o) if o != caller.name() => {
                caller.require_admin()?;
                self.user_exists(o).await?;
                o.clone()
            }
            _ => caller.name().to_string(),
        };
        self.may_clone(caller, &req.base).await?;
        let key = req.key.clone();
        if key.is_none() {
            self.name_free(&req.name).await?;
        }
        // A free pool clone is handed out at once (not for volatile clones, which go when
        // they stop, nor for requests that must land beside the owner's VMs or be retried).
        let resized = req.memory_mib > 0 || req.vcpus > 0 || req.copy_data;
        let plain = backup.is_none();
        if plain && !req.volatile && !req.keep_together && key.is_none() && !resized {
            if let Some(op) = self.hand_out(&req, &owner).await? {
                return Ok(op);
            }
        }
        let over = (req.vcpus, req.memory_mib << 20);
        let (placed, holders) = self
            .place_resized(&req.base, &owner, req.keep_together, over)
            .await?;
        let host = placed.host_or_refusal(&format!("a clone of {}", req.base))?;
        let size = placed.size;
        let copy = !holders.contains(&host);
        let mut request = serde_json::json!({
            "base": req.base, "name": req.name, "start": req.start, "labels": req.labels, "owner": owner,
        });
        if copy {
            request["sync_base_first"] = true.into();
            // What a dry run answers: the bytes the base's files hold on a host that has them.
            if crate::dry::now() {
                request["sync_bytes"] = self.base_bytes(&req.base, &holders).await.into();
            }
        }
        if let Some(b) = &backup {
            request["backup"] = b.tag().into();
            request["volumes"] = b.volumes.len().into();
        }
        let submit = Submit {
            kind: if plain { "clone" } else { "create-from-backup" }.into(),
            vm: Some(req.name.clone()),
            host: Some(host.clone()),
            user: Some(owner.clone()),
            idempotency_key: key,
            request,
        };
        let reserved = self.reserve(&host, size);
        let me = Arc::clone(self);
        let (h2, req2) = (host.clone(), req.clone());
        let w = work(move |ctx| async move {
            // Placement chose a host without the base: copy it there first.
            let copied = if copy {
                me.ensure_base(&ctx, &req2.base, &h2, 0).await.map(|_| ())
            } else {
                Ok(())
            };
            let mut r = match copied {
                Ok(()) => me.do_clone(&ctx, &h2, &req2, &owner).await,
                Err(e) => Err(e),
            };
            if let (Ok(made), Some(b)) = (&r, &backup) {
                // A new VM without its backup's data is not what was asked: failed or
                // cancelled on the way, it goes.
                let unfilled = match me.hosts.door(&h2) {
                    Ok(door) => Some(Unmade {
                        db: Arc::clone(&me.db),
                        door,
                        name: req2.name.clone(),
                        owner: owner.clone(),
                        base: req2.base.clone(),
                        armed: true,
                    }),
                    Err(_) => None,
                };
                r = me
                    .fill_from_backup(&ctx, &h2, &req2.name, b)
                    .await
                    .map(|filled| serde_json::json!({ "vm": made, "filled": filled }));
                if let (Ok(_), Some(u)) = (&r, unfilled) {
                    u.keep();
                }
            }
            drop(reserved);
            r.map_err(OpError::from)
        });
        Ok(self.ops.submit(submit, w).await?)
    }

    pub(crate) async fn do_clone(
        &self,
        ctx: &OpCtx,
        host: &str,
        req: &CloneOrder,
        owner: &str,
    ) -> Result<serde_json::Value> {
        let door = self.hosts.door(host)?;
        // The VM is recorded before it is made, so that a crash leaves a trace to clean up.
        let vm = VmRecord {
            name: req.name.clone(),
            owner: owner.into(),
            base: Some(req.base.clone()),
            host: Some(host.into()),
            desired_state: Desired::ShutOff,
            observed_state: Observed::Creating,
            spec: clone_spec(req),
        };
        let v = vm.clone();
        // A pool clone's record was made with its order (the pool counts it from then on).
        if !req.pool {
            self.blocking(move |s| s.insert_vm(&v))
                .await
                .map_err(|e| match e {
                    CoordError::AlreadyExists(_) => crate::names::taken("VM or base", &req.name),
                    e => e,
                })?;
        }
        // Cancelled (or failed on the way) while the agent may still be making it: cleaned.
        let unmade = Unmade {
            db: Arc::clone(&self.db),
            door: Arc::clone(&door),
            name: req.name.clone(),
            owner: owner.into(),
            base: req.base.clone(),
            armed: true,
        };
        let what = if req.start {
            "clone and start"
        } else {
            "clone"
        };
        ctx.progress(
            "cloning",
            Some(10.0),
            None,
            &format!("{what} of {} on host {host}", req.base),
        )
        .await?;
        // A start takes one of the host's start slots (boot storms queue here).
        let slot = if req.start {
            Some(self.start_slot(ctx, host).await?)
        } else {
            None
        };
        // One agent call does both (the agent records the start time and state itself).
        let made = door.clone_base(agent_request(req, owner)).await;
        drop(slot);
        let domain = match made {
            Ok(d) => d,
            Err(e) => {
                // The agent removes what it made when the clone fails; a start failure leaves
                // a defined, shut-off clone, which the agent reports by its state. The record
                // stays only for a domain this clone made: a name taken on the host (another
                // domain, a base) leaves no record, so nothing can later remove that domain.
                let ours = e.code() != tonic::Code::AlreadyExists
                    && door.get_domain(&req.name).await.is_ok_and(|d| {
                        d.owner == owner
                            && d.base == req.base
                            && d.kind == pb::DomainKind::Clone as i32
                    });
                if !ours {
                    let n = req.name.clone();
                    let _ = self.blocking(move |st| st.remove_vm(&n)).await;
                }
                unmade.keep();
                return Err(e);
            }
        };
        let mut vm = vm;
        vm.observed_state = Observed::from_pb(domain.state);
        if req.start {
            vm.desired_state = Desired::Running;
        }
        ctx.progress(
            if req.start { "running" } else { "defined" },
            Some(90.0),
            None,
            "",
        )
        .await?;
        let v = vm.clone();
        self.blocking(move |s| s.put_vm(&v)).await?;
        unmade.keep();
        Ok(serde_json::json!({ "vm": req.name, "host": host, "state": vm.observed_state.as_str() }))
    }
}

/// A clone being made (or filled from a backup). Dropped armed (its operation was cancelled,
/// or failed before it was done), it removes the domain the agent may still be making, once
/// it shows up as this clone's (never another's), then the VM's record.
struct Unmade {
    db: Arc<Db>,
    door: Arc<dyn crate::door::AgentDoor>,
    name: String,
    owner: String,
    base: String,
    armed: bool,
}

impl Unmade {
    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Unmade {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (db, door) = (Arc::clone(&self.db), Arc::clone(&self.door));
        let (name, owner, base) = (self.name.clone(), self.owner.clone(), self.base.clone());
        rt.spawn(async move {
            let mut absent = 0;
            // About a minute in all: long enough for an agent's clone (well under a second)
            // to show up or end.
            for _ in 0..300 {
                match door.get_domain(&name).await {
                    Ok(d)
                        if d.owner == owner
                            && d.base == base
                            && d.kind == pb::DomainKind::Clone as i32 =>
                    {
                        // Busy while the agent still makes it: tried again.
                        if door.remove_domain(&name).await.is_ok() {
                            break;
                        }
                    }
                    Ok(_) => break,
                    Err(e) if e.code() == tonic::Code::NotFound => {
                        // Not made, or not yet: a clone takes the agent well under this.
                        absent += 1;
                        if absent >= 25 {
                            break;
                        }
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let n = name.clone();
            let _ = db.call(move |s| s.remove_vm(&n)).await;
            tracing::info!(vm = %name, "an unfinished clone was cleaned away");
        });
    }
}
