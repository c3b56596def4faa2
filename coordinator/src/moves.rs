//! VMs moved between hosts: shut off (volumes synced agent to agent and verified, defined
//! on the target, removed from the source) or live (the target prepares empty overlays on
//! its copy of the base, the source's libvirt migrates memory and the disks' top layer).
//! The base goes first; exposed ports follow the VM; a move that does not complete removes
//! what it made on the target, and a cancelled live move aborts libvirt's job.

use std::sync::Arc;

use corral_proto::v1 as pb;
use tokio::sync::watch;

use crate::auth::Caller;
use crate::door::AgentDoor;
use crate::error::{CoordError, Result};
use crate::operations::{OpCtx, OpError, Submit};
use crate::store::OpRecord;
use crate::transfers::TransferState;
use crate::vms::{check_name, work, Coordinator};

/// Where a VM goes: its name, from and to which host, at what bandwidth (0: no limit).
#[derive(Debug, Clone, Copy)]
struct Route<'a> {
    /// The VM's name (its record), and its domain's on the hosts.
    name: &'a str,
    domain: &'a str,
    source: &'a str,
    target: &'a str,
    limit: u64,
}

/// A move under way: the VM's record, the doors to its source and target, its ports.
struct Moving {
    vm: crate::store::VmRecord,
    src: Arc<dyn AgentDoor>,
    dst: Arc<dyn AgentDoor>,
    ports: Vec<pb::ExposedPort>,
}

impl Coordinator {
    /// Moves a shut-off VM to another host.
    pub async fn move_vm(
        self: &Arc<Self>,
        caller: &Caller,
        req: crate::orders::MoveOrder,
    ) -> Result<OpRecord> {
        check_name("VM", &req.name)?;
        check_name("host", &req.host)?;
        // Users do not choose hosts: moving is the admins' (as choosing a host port is).
        caller.require_admin()?;
        let vm = self.vm_for(caller, &req.name).await?;
        crate::volatile::refuse_keeping(&vm, "moved")?;
        let source = vm
            .host
            .clone()
            .ok_or_else(|| CoordError::FailedPrecondition(format!("VM {} has no host", vm.name)))?;
        if source == req.host {
            return Err(CoordError::FailedPrecondition(format!(
                "VM {} is already on host {}",
                vm.name, req.host
            )));
        }
        self.hosts.address(&req.host)?;
        let submit = Submit {
            kind: "move".into(),
            vm: Some(vm.name.clone()),
            host: Some(req.host.clone()),
            user: Some(caller.name().into()),
            request: serde_json::json!({ "vm": vm.name, "from": source, "to": req.host }),
            ..Default::default()
        };
        let me = Arc::clone(self);
        let domain = vm.domain().to_string();
        let w = work(move |ctx| async move {
            let route = Route {
                name: &req.name,
                domain: &domain,
                source: &source,
                target: &req.host,
                limit: req.bandwidth_limit,
            };
            let moved = async {
                let moving = me.move_start(&ctx, &route).await?;
                if req.live {
                    me.do_live_move(&ctx, &route, moving).await
                } else {
                    me.do_move(&ctx, &route, moving).await
                }
            };
            moved.await.map_err(OpError::from)
        });
        Ok(self.ops.submit(submit, w).await?)
    }

    /// Exposes the same guest ports on the target (host ports from its range); returns
    /// them. A port that cannot be exposed there is reported, not fatal: the VM has moved.
    async fn carry_ports(
        &self,
        dst: &dyn AgentDoor,
        ports: &[pb::ExposedPort],
    ) -> Vec<serde_json::Value> {
        let host = dst.host();
        let mut out = Vec::new();
        for p in ports {
            let r = dst
                .expose_port(pb::ExposePortRequest {
                    domain: p.domain.clone(),
                    guest_port: p.guest_port,
                    host_port: 0,
                    name: p.name.clone(),
                    wait_seconds: 1,
                })
                .await;
            out.push(match r {
                Ok(e) => {
                    serde_json::json!({ "guest_port": e.guest_port, "host": format!("{}:{}", e.host_address, e.host_port) })
                }
                Err(e) => {
                    tracing::warn!(%host, port = p.guest_port, error = %e, "port not exposed after the move");
                    serde_json::json!({ "guest_port": p.guest_port, "error": e.to_string() })
                }
            });
        }
        out
    }

    /// What both kinds of move start with: the VM's record, its base on the target, clients
    /// for both hosts, and the VM's exposed ports on the source.
    async fn move_start(self: &Arc<Self>, ctx: &OpCtx, r: &Route<'_>) -> Result<Moving> {
        let Route {
            name,
            source,
            target,
            limit,
            ..
        } = *r;
        let n = name.to_string();
        let vm = self.blocking(move |s| s.vm(&n)).await?;
        if let Some(base) = vm.base.clone() {
            self.ensure_base(ctx, &base, target, limit).await?;
        }
        let src = self.hosts.door(source)?;
        let ports = src.list_ports(r.domain).await?;
        Ok(Moving {
            vm,
            src,
            dst: self.hosts.door(target)?,
            ports,
        })
    }

    /// Live migration through libvirt: the base first, empty volumes on the target, then
    /// libvirt moves memory and the disks' top layer; the target cleans up if it fails.
    async fn do_live_move(
        self: &Arc<Self>,
        ctx: &OpCtx,
        r: &Route<'_>,
        moving: Moving,
    ) -> Result<serde_json::Value> {
        let (name, source, target, limit) = (r.domain, r.source, r.target, r.limit);
        let (mut vm, src, dst, ports) = (moving.vm, moving.src, moving.dst, moving.ports);
        let export = src.export_for_migration(name).await?;
        let incoming = dst
            .prepare_migration(pb::ImportBaseRequest {
                definition_xml: export.definition_xml,
                layouts: export.layouts.clone(),
            })
            .await?;
        // Failed or cancelled from here on: the target's new volumes go again.
        let made = MadeOn::new(
            &self.hosts,
            target,
            export.layouts.iter().map(|l| l.volume.clone()).collect(),
        );
        ctx.progress(
            "migrating",
            Some(20.0),
            None,
            &format!("live, to host {target}"),
        )
        .await?;
        src.migrate(pb::MigrateDomainRequest {
            name: name.into(),
            dest_uri: incoming.uri.clone(),
            dest_xml: incoming.dest_xml,
            bandwidth_mib: limit >> 20,
        })
        .await?;
        made.keep();
        // It runs there now: record that first, then fix its persistent definition.
        vm.host = Some(target.into());
        vm.observed_state = crate::states::Observed::Domain(pb::DomainState::Running);
        self.blocking(move |s| s.put_vm(&vm)).await?;
        dst.finish_migration(name).await?;
        let ports = self.carry_ports(dst.as_ref(), &ports).await;
        Ok(
            serde_json::json!({ "vm": r.name, "from": source, "to": target, "live": true, "ports": ports }),
        )
    }

    async fn do_move(
        self: &Arc<Self>,
        ctx: &OpCtx,
        r: &Route<'_>,
        moving: Moving,
    ) -> Result<serde_json::Value> {
        let (name, source, target, limit) = (r.domain, r.source, r.target, r.limit);
        let (mut vm, src, dst, ports) = (moving.vm, moving.src, moving.dst, moving.ports);
        let export = src.export_domain(name).await?;
        ctx.progress(
            "syncing",
            Some(0.0),
            None,
            &format!("volumes to host {target}"),
        )
        .await?;
        let (tx, mut rx) = watch::channel(TransferState::Running {
            volume: String::new(),
            done_bytes: 0,
            total_bytes: 0,
        });
        let made = MadeOn::new(&self.hosts, target, export.volumes.clone());
        let send = self.send_volumes(source, target, &export.volumes, limit, &tx);
        tokio::pin!(send);
        let sent = loop {
            tokio::select! {
                r = &mut send => break r?,
                Ok(()) = rx.changed() => {
                    let state = rx.borrow_and_update().clone();
                    if let TransferState::Running { volume, done_bytes, total_bytes } = state {
                        let pct = if total_bytes > 0 { done_bytes as f32 / total_bytes as f32 * 100.0 } else { 0.0 };
                        ctx.progress("syncing", Some(pct), Some(done_bytes), &volume).await?;
                    }
                }
            }
        };
        // The target verified every volume's checksum before it appeared; define it there.
        ctx.progress("defining", Some(95.0), None, &format!("on host {target}"))
            .await?;
        let d = dst.import_domain(export.definition_xml).await?;
        made.keep();
        vm.host = Some(target.into());
        vm.observed_state = crate::states::Observed::from_pb(d.state);
        let v = vm.clone();
        self.blocking(move |s| s.put_vm(&v)).await?;
        ctx.progress("removing", Some(98.0), None, &format!("from host {source}"))
            .await?;
        src.remove_domain(name).await?;
        let ports = self.carry_ports(dst.as_ref(), &ports).await;
        Ok(serde_json::json!({
            "vm": r.name, "from": source, "to": target, "ports": ports,
            "bytes_sent": sent.iter().map(|p| p.sent_bytes).sum::<u64>(),
            "checksums": sent.iter().map(|p| p.checksum.clone()).collect::<Vec<_>>(),
        }))
    }
}

/// Volumes a move made on its target: deleted again (in the background, retried while the
/// target still holds them, e.g. until libvirt has dropped an aborted incoming migration)
/// unless the move completed, whether it failed or was cancelled.
struct MadeOn {
    hosts: Arc<crate::hosts::Hosts>,
    host: String,
    volumes: Vec<String>,
}

impl MadeOn {
    fn new(hosts: &Arc<crate::hosts::Hosts>, host: &str, volumes: Vec<String>) -> Self {
        Self {
            hosts: Arc::clone(hosts),
            host: host.to_string(),
            volumes,
        }
    }

    fn keep(mut self) {
        self.volumes.clear();
    }
}

impl Drop for MadeOn {
    fn drop(&mut self) {
        let mut volumes = std::mem::take(&mut self.volumes);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if volumes.is_empty() {
            return;
        }
        let (hosts, host) = (Arc::clone(&self.hosts), self.host.clone());
        rt.spawn(async move {
            for _ in 0..20 {
                if let Ok(door) = hosts.door(&host) {
                    let mut left = Vec::new();
                    for v in volumes {
                        if door.delete_volume(&v).await.is_err() {
                            left.push(v);
                        }
                    }
                    volumes = left;
                }
                if volumes.is_empty() {
                    tracing::info!(%host, "volumes of an unfinished move removed");
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            tracing::warn!(%host, ?volumes, "volumes of an unfinished move are left on the target");
        });
    }
}
