//! Bases across hosts: a base's volumes synced from a host that holds it to one that does
//! not (parents first; one transfer per base and host however many operations ask for it),
//! and a base's copy removed from one host.
//!
//! The volumes go agent to agent (`VolumeSyncService.SendVolume` on the source, which
//! streams them to the target's `PeerTransferService` over the agents' mutual TLS); the
//! coordinator only asks, follows the progress and records where each base is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use corral_proto::v1 as pb;
use tokio::sync::watch;

use crate::auth::Caller;
use crate::error::{CoordError, Result};
use crate::operations::{OpCtx, OpError, Submit};
use crate::store::OpRecord;
use crate::vms::{check_name, work, Coordinator};

/// Where one transfer of a base to a host stands.
#[derive(Debug, Clone)]
pub enum TransferState {
    Running {
        volume: String,
        done_bytes: u64,
        total_bytes: u64,
    },
    Done(std::result::Result<(), CoordError>),
}

/// Transfers in flight, by (base, host): everyone who needs the same copy watches the same one.
/// A transfer runs while someone watches it: when every operation waiting for it has been
/// cancelled, it is cancelled on both agents (the receiver discards its partial file).
#[derive(Debug, Default)]
pub struct Transfers(Mutex<HashMap<(String, String), Shared>>);

/// One transfer's progress, shared by every operation that waits for it.
type Shared = Arc<watch::Sender<TransferState>>;

impl Coordinator {
    /// The base and its ancestors, the oldest first.
    async fn base_chain(&self, base: &str) -> Result<Vec<String>> {
        let mut chain = vec![base.to_string()];
        while let Some(last) = chain.last().cloned() {
            let parent = self.blocking(move |s| s.base_parent(&last)).await?;
            match parent {
                Some(p) if !chain.contains(&p) => chain.push(p),
                _ => break,
            }
        }
        chain.reverse();
        Ok(chain)
    }

    async fn holders(&self, base: &str) -> Result<Vec<String>> {
        let b = base.to_string();
        let bases = self.blocking(|s| s.bases()).await?;
        bases
            .into_iter()
            .find(|(n, _)| n == &b)
            .map(|(_, h)| h)
            .ok_or_else(|| CoordError::NotFound(format!("base {b} not found")))
    }

    /// Makes sure `host` holds `base` and its parents, syncing what is missing; progress goes
    /// to `ctx`.
    pub async fn ensure_base(
        self: &Arc<Self>,
        ctx: &OpCtx,
        base: &str,
        host: &str,
        limit: u64,
    ) -> Result<bool> {
        if self.holders(base).await?.iter().any(|h| h == host) {
            return Ok(false);
        }
        let mut copied = false;
        for b in self.base_chain(base).await? {
            if self.holders(&b).await?.iter().any(|h| h == host) {
                continue;
            }
            copied = true;
            let mut rx = self.transfer(&b, host, limit)?;
            loop {
                let state = rx.borrow_and_update().clone();
                match state {
                    TransferState::Done(r) => {
                        r?;
                        break;
                    }
                    TransferState::Running {
                        volume,
                        done_bytes,
                        total_bytes,
                    } => {
                        let pct = if total_bytes > 0 {
                            (done_bytes as f64 / total_bytes as f64 * 100.0) as f32
                        } else {
                            0.0
                        };
                        ctx.progress(
                            "syncing",
                            Some(pct.min(100.0)),
                            Some(done_bytes),
                            &format!("base {b} to host {host}: {volume}"),
                        )
                        .await
                        .map_err(|e| CoordError::Internal(e.to_string()))?;
                    }
                }
                if rx.changed().await.is_err() {
                    return Err(CoordError::Internal(format!(
                        "the transfer of base {b} to {host} ended without a result"
                    )));
                }
            }
        }
        Ok(copied)
    }

    /// The running transfer of `base` to `host`, or a new one.
    fn transfer(
        self: &Arc<Self>,
        base: &str,
        host: &str,
        limit: u64,
    ) -> Result<watch::Receiver<TransferState>> {
        let key = (base.to_string(), host.to_string());
        let mut map = self
            .transfers
            .0
            .lock()
            .map_err(|_| CoordError::Internal("transfers lock".into()))?;
        if let Some(tx) = map.get(&key) {
            tracing::info!(base, host, "joining the transfer in flight");
            return Ok(tx.subscribe());
        }
        let (tx, rx) = watch::channel(TransferState::Running {
            volume: String::new(),
            done_bytes: 0,
            total_bytes: 0,
        });
        let tx = Arc::new(tx);
        map.insert(key.clone(), Arc::clone(&tx));
        let me = Arc::clone(self);
        // The operation that asked first names the transfer's calls.
        let op = corral_client::current_operation();
        let span = tracing::info_span!("base_transfer", base, host, op);
        tokio::spawn(tracing::Instrument::instrument(
            corral_client::for_operation(op, async move {
                // Dropping the copy cancels its gRPC stream: the source agent tells the
                // target to discard what it received.
                let r = tokio::select! {
                    r = me.copy_base(&key.0, &key.1, limit, &tx) => r,
                    _ = tx.closed() => Err(CoordError::FailedPrecondition(format!(
                        "the transfer of base {} to {} was cancelled: no operation waits for it",
                        key.0, key.1
                    ))),
                };
                if let Err(e) = &r {
                    tracing::warn!(error = %e, "base transfer failed");
                }
                if let Ok(mut m) = me.transfers.0.lock() {
                    m.remove(&key);
                }
                let _ = tx.send(TransferState::Done(r));
            }),
            span,
        ));
        Ok(rx)
    }

    /// Copies one base (not its parents) to `target` from a host that holds it.
    async fn copy_base(
        &self,
        base: &str,
        target: &str,
        limit: u64,
        tx: &watch::Sender<TransferState>,
    ) -> Result<()> {
        let holders = self.holders(base).await?;
        let source = holders
            .iter()
            .find(|h| *h != target && self.hosts.door(h).is_ok())
            .cloned()
            .ok_or_else(|| {
                CoordError::Unavailable(format!(
                    "no host holding base {base} is up (holders: {})",
                    holders.join(", ")
                ))
            })?;
        let src = self.hosts.door(&source)?;
        let dst = self.hosts.door(target)?;
        let export = src.export_base(base).await?;
        tracing::info!(%source, volumes = ?export.volumes, "syncing base");
        let sent = self
            .send_volumes(&source, target, &export.volumes, limit, tx)
            .await?;
        if let Ok(mut m) = self.base_bytes.lock() {
            m.insert(base.into(), sent.iter().map(|p| p.total_bytes).sum());
        }
        dst.import_base(export.definition_xml).await?;
        let (b, h) = (base.to_string(), target.to_string());
        self.blocking(move |s| s.set_base_host(&b, &h, true))
            .await?;
        tracing::info!(%source, "base synced");
        Ok(())
    }

    /// Has `source` send each volume to `target`, reporting progress on `tx`.
    pub(crate) async fn send_volumes(
        &self,
        source: &str,
        target: &str,
        volumes: &[String],
        limit: u64,
        tx: &watch::Sender<TransferState>,
    ) -> Result<Vec<pb::SyncProgress>> {
        let src = self.hosts.door(source)?;
        let peer = self.hosts.address(target)?;
        let stall = std::time::Duration::from_millis(self.cfg.transfer_stall_ms);
        let mut done = Vec::new();
        let mut before = 0u64;
        for v in volumes {
            let report = |p: &pb::SyncProgress| {
                let _ = tx.send(TransferState::Running {
                    volume: v.clone(),
                    done_bytes: before + p.scanned_bytes,
                    total_bytes: before + p.total_bytes,
                });
            };
            let req = pb::SendVolumeRequest {
                volume: v.clone(),
                peer: peer.clone(),
                bandwidth_limit: limit,
                replace: false,
                peer_tls_name: String::new(),
                ..Default::default()
            };
            let p = src.send_volume(req, stall, &report).await?;
            before += p.total_bytes;
            done.push(p);
        }
        Ok(done)
    }

    /// `corral base sync BASE --host H` (admin).
    pub async fn sync_base(
        self: &Arc<Self>,
        caller: &Caller,
        req: crate::orders::BaseOnHost,
    ) -> Result<OpRecord> {
        caller.require_admin()?;
        check_name("base", &req.base)?;
        check_name("host", &req.host)?;
        self.hosts.address(&req.host)?;
        self.holders(&req.base).await?;
        let submit = Submit {
            kind: "sync-base".into(),
            host: Some(req.host.clone()),
            user: Some(caller.name().into()),
            request: serde_json::json!({ "base": req.base, "host": req.host }),
            ..Default::default()
        };
        let me = Arc::clone(self);
        let w = work(move |ctx| async move {
            let copied = me
                .ensure_base(&ctx, &req.base, &req.host, req.bandwidth_limit)
                .await?;
            Ok::<_, OpError>(serde_json::json!({
                "base": req.base, "host": req.host, "copied": copied,
            }))
        });
        Ok(self.ops.submit(submit, w).await?)
    }

    /// Removes a base's copy from one host (admin).
    pub async fn remove_base_from_host(
        self: &Arc<Self>,
        caller: &Caller,
        req: crate::orders::BaseOnHost,
    ) -> Result<OpRecord> {
        caller.require_admin()?;
        check_name("base", &req.base)?;
        check_name("host", &req.host)?;
        let holders = self.holders(&req.base).await?;
        if !holders.contains(&req.host) {
            return Err(CoordError::NotFound(format!(
                "base {} is not on host {}",
                req.base, req.host
            )));
        }
        let (b, h) = (req.base.clone(), req.host.clone());
        let on_host = h.clone();
        let clones: Vec<String> = self
            .blocking(move |s| s.vms_on(&on_host))
            .await?
            .into_iter()
            .filter(|v| v.base.as_deref() == Some(&b))
            .map(|v| v.name)
            .collect();
        if !clones.is_empty() {
            return Err(CoordError::FailedPrecondition(format!(
                "base {b} has {} clone(s) on host {h} ({}): remove or move them first",
                clones.len(),
                clones.join(", ")
            )));
        }
        if holders.len() == 1 {
            return Err(CoordError::FailedPrecondition(format!(
                "host {h} holds the only copy of base {b}: remove the base instead"
            )));
        }
        let submit = Submit {
            kind: "remove-base-copy".into(),
            host: Some(h.clone()),
            user: Some(caller.name().into()),
            request: serde_json::json!({ "base": b, "host": h }),
            ..Default::default()
        };
        let me = Arc::clone(self);
        let w = work(move |ctx| async move {
            let run = async {
                let door = me.hosts.door(&h)?;
                // The agent's own view too: clones the coordinator does not know of.
                let there = door.list_clones(&b).await?;
                if !there.is_empty() {
                    return Err(CoordError::FailedPrecondition(format!(
                        "base {b} has {} clone(s) on host {h}",
                        there.len()
                    )));
                }
                ctx.progress("removing", None, None, &format!("base {b} from host {h}"))
                    .await?;
                door.remove_domain(&b).await?;
                let (b2, h2) = (b.clone(), h.clone());
                me.blocking(move |s| s.set_base_host(&b2, &h2, false))
                    .await?;
                Ok::<_, CoordError>(serde_json::json!({ "base": b, "host": h }))
            };
            run.await.map_err(OpError::from)
        });
        Ok(self.ops.submit(submit, w).await?)
    }
}
