//! Several coordinators on one PostgreSQL (issue 12, item 5). One leads: it holds a lease in
//! the database (`leader` row: holder, address, term, expiry on the database's clock), renews
//! it every [`RENEW_EVERY`], talks to the agents and runs every operation. The others answer
//! reads from the database and refuse writes with UNAVAILABLE, naming the leader (the
//! [`LEADER_HEADER`]); they try for the lease every [`TRY_EVERY`] and, once it expired
//! ([`LEASE`] after the leader's last renewal), one takes it with the next term and does what
//! a restarted coordinator does: every unfinished operation is resumed or failed, once.
//!
//! Exactly once: every store batch of a leader first checks, with the lease row locked, that
//! its term still holds ([`crate::store::Store::set_fence`]), so a leader that lost the lease
//! (paused, cut off) writes nothing more; it then exits, to come back as a follower.
//! With SQLite there is one coordinator and it always leads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::error::Result;
use crate::vms::Coordinator;

/// How long a lease lasts without renewal.
pub const LEASE: Duration = Duration::from_millis(3000);
/// How often the leader renews.
pub const RENEW_EVERY: Duration = Duration::from_millis(1000);
/// How often a follower tries for the lease.
pub const TRY_EVERY: Duration = Duration::from_millis(500);
/// The response header naming the leader's address on a refused write.
pub const LEADER_HEADER: &str = "corral-leader";

/// This coordinator's part.
#[derive(Debug)]
pub struct Role {
    /// This process's id in the lease.
    pub id: String,
    leader: AtomicBool,
    /// What the lease says: the leader's address and term.
    known: RwLock<(String, i64)>,
    /// The database's id, from the lease row (empty with SQLite).
    cluster: RwLock<String>,
    /// When this coordinator last held the lease.
    renewed: RwLock<Option<std::time::Instant>>,
}

impl Default for Role {
    /// The only coordinator (SQLite): it leads.
    fn default() -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            leader: AtomicBool::new(true),
            known: RwLock::new((String::new(), 0)),
            cluster: RwLock::new(String::new()),
            renewed: RwLock::new(None),
        }
    }
}

impl Role {
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    /// The leader's address and the lease's term, as last read.
    pub fn known(&self) -> (String, i64) {
        self.known.read().map(|k| k.clone()).unwrap_or_default()
    }

    /// The database's id, as the lease row says.
    pub fn cluster(&self) -> String {
        self.cluster.read().map(|c| c.clone()).unwrap_or_default()
    }

    fn set(&self, leader: bool, address: String, term: i64, cluster: &str) {
        if let Ok(mut c) = self.cluster.write() {
            if *c != cluster {
                *c = cluster.to_string();
            }
        }
        self.leader.store(leader, Ordering::SeqCst);
        if let Ok(mut k) = self.known.write() {
            *k = (address, term);
        }
    }
}

/// An RPC that only reads (answered by any coordinator).
pub fn reads(method: &str) -> bool {
    ["Get", "List", "Watch", "Check", "ServerReflectionInfo"]
        .iter()
        .any(|p| method.starts_with(p))
        && method != "GetVmDisplay"
}

impl Coordinator {
    /// Claims the lease once: whether this coordinator leads now.
    async fn claim(&self, address: &str) -> Result<bool> {
        let (me, addr) = (self.role.id.clone(), address.to_string());
        let lease = LEASE.as_millis() as i64;
        let lead = self.blocking(move |s| s.lead(&me, &addr, lease)).await?;
        if lead.mine && !self.role.is_leader() {
            // The fence first: no batch of this term writes unless the lease still holds.
            let fence = (self.role.id.clone(), lead.term);
            self.blocking(move |s| s.set_fence(Some(fence))).await?;
        }
        if lead.mine {
            // Named on every call to agents: they refuse older leaders' calls from then on.
            corral_client::set_term(&lead.cluster, lead.term);
        }
        self.role
            .set(lead.mine, lead.address, lead.term, &lead.cluster);
        Ok(lead.mine)
    }

    /// Several coordinators on one database: follows until it can lead, then leads
    /// (`start_leading` runs once, when it first does) and renews; a lease lost is the end of
    /// this process's leading (it exits: a leader that was paused must not go on acting). The
    /// first claim is made before this returns, so the process starts knowing its part.
    pub async fn lead_or_follow<F, Fut>(self: &Arc<Self>, address: String, start_leading: F)
    where
        F: FnOnce(Arc<Self>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        self.role.leader.store(false, Ordering::SeqCst);
        let mut start = Some(start_leading);
        self.lease_step(&address, &mut start).await;
        let me = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let wait = if me.role.is_leader() {
                    RENEW_EVERY
                } else {
                    TRY_EVERY
                };
                tokio::time::sleep(wait).await;
                me.lease_step(&address, &mut start).await;
            }
        });
    }

    /// One claim or renewal, and what follows from it.
    async fn lease_step<F, Fut>(self: &Arc<Self>, address: &str, start: &mut Option<F>)
    where
        F: FnOnce(Arc<Self>) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let was = self.role.is_leader();
        match self.claim(address).await {
            Ok(true) => {
                if let Ok(mut r) = self.role.renewed.write() {
                    *r = Some(std::time::Instant::now());
                }
                if let Some(f) = start.take() {
                    let (_, term) = self.role.known();
                    tracing::info!(term, "leading");
                    if let Err(e) = f(Arc::clone(self)).await {
                        tracing::error!(error = %e, "could not start leading");
                        std::process::exit(1);
                    }
                }
            }
            Ok(false) if was => {
                tracing::error!("the lease was taken over: exiting");
                std::process::exit(1);
            }
            Ok(false) => {
                // Tokens made on the leader work here too.
                let m = Arc::clone(self);
                match self.blocking(move |s| Ok(m.auth.reload(s))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) | Err(e) => tracing::warn!(error = %e, "cannot read the tokens"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew or claim the lease");
                // A leader that cannot renew (the database unreachable, or its batches fenced
                // off because another took over) has lost the lease once it would have expired.
                let renewed = self.role.renewed.read().ok().and_then(|r| *r);
                if was && renewed.is_none_or(|t| t.elapsed() >= LEASE) {
                    tracing::error!("the lease is lost: exiting");
                    std::process::exit(1);
                }
            }
        }
    }
}

/// Refuses writes on a coordinator that does not lead, naming the leader.
#[derive(Clone)]
pub struct GateLayer(pub Arc<Role>);

impl<S> tower_layer::Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            role: Arc::clone(&self.0),
        }
    }
}

#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    role: Arc<Role>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for Gate<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<std::result::Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = corral_proto::observe::method_of(req.uri().path());
        if self.role.is_leader() || reads(method) {
            return Box::pin(self.inner.call(req));
        }
        let (address, _) = self.role.known();
        let mut status = tonic::Status::unavailable(if address.is_empty() {
            "not the leader, and no coordinator leads right now: try again shortly".to_string()
        } else {
            format!("not the leader: the coordinator at {address} leads and takes writes")
        });
        if let Ok(v) = address.parse() {
            status.metadata_mut().insert(LEADER_HEADER, v);
        }
        Box::pin(async move { Ok(status.into_http()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_gets_lists_and_watches() {
        for m in [
            "GetVm",
            "ListVms",
            "WatchEvents",
            "WatchOperation",
            "Check",
            "GetCoordinator",
        ] {
            assert!(reads(m), "{m}");
        }
        for m in [
            "CloneVm",
            "CreateUser",
            "CancelOperation",
            "GetVmDisplay",
            "ExecVm",
        ] {
            assert!(!reads(m), "{m}");
        }
    }
}
