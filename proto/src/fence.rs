//! Fencing by term: with several coordinators on one database, each new leader takes a
//! higher term and names it, with the database's id, on every call to an agent
//! ([`TERM_HEADER`]: `CLUSTER:TERM`). An agent remembers the highest term it has seen of each
//! database and refuses calls from a lower one, so a leader that lost its lease (paused, cut
//! off) cannot finish work the new leader may be redoing. Calls without the header (the CLI
//! talking to an agent, peer agents) are not fenced; a coordinator on another database (a
//! fresh one) starts its own terms.
//!
//! An agent keeps what it has seen in a file ([`Fence::load`]), written before the first call
//! of a new term goes on: a restart or a crash does not let an old leader back in.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

pub use crate::TERM_HEADER;

/// Databases remembered at most (the oldest seen is forgotten first).
const CLUSTERS: usize = 64;

/// The highest term an agent has seen, by database.
#[derive(Debug, Default)]
pub struct Fence {
    highest: Mutex<HashMap<String, (i64, u64)>>,
    calls: std::sync::atomic::AtomicU64,
    /// Where the terms are kept (None: in memory only); the lock orders the writes.
    file: Option<Mutex<PathBuf>>,
}

/// A header's `CLUSTER:TERM`; None when malformed.
pub fn parse(value: &str) -> Option<(&str, i64)> {
    let (cluster, term) = value.rsplit_once(':')?;
    let term = term.parse::<i64>().ok().filter(|t| *t > 0)?;
    let ok = !cluster.is_empty()
        && cluster.len() <= 64
        && cluster
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    ok.then_some((cluster, term))
}

impl Fence {
    /// A fence kept in `file`: the terms it holds (none when there is no file yet), and every
    /// new one written there (a line `CLUSTER TERM` each; a new file renamed over the old).
    /// A file that is not such lines is an error: a fence that silently forgot would let an
    /// old leader in.
    pub fn load(file: PathBuf) -> std::io::Result<Fence> {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut highest = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let entry = line
                .split_once(' ')
                .and_then(|(c, t)| parse(&format!("{c}:{t}")).map(|(c, t)| (c.to_string(), t)));
            let Some((cluster, term)) = entry else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} line {}: not CLUSTER TERM: {line:?}",
                        file.display(),
                        n + 1
                    ),
                ));
            };
            highest.insert(cluster, (term, 0));
        }
        Ok(Fence {
            highest: Mutex::new(highest),
            calls: Default::default(),
            file: Some(Mutex::new(file)),
        })
    }

    /// Admits a call from a coordinator of `term` of database `cluster` (true when the term is
    /// new to this fence: [`Fence::save`] it), or returns the newer term that refuses it.
    pub fn admit(&self, cluster: &str, term: i64) -> Result<bool, i64> {
        let n = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Ok(mut highest) = self.highest.lock() else {
            return Ok(false);
        };
        if let Some((seen, last)) = highest.get_mut(cluster) {
            *last = n;
            if term < *seen {
                return Err(*seen);
            }
            let raised = term > *seen;
            *seen = term;
            return Ok(raised);
        }
        if highest.len() >= CLUSTERS {
            let oldest = highest
                .iter()
                .min_by_key(|(_, (_, last))| *last)
                .map(|(c, _)| c.clone());
            if let Some(c) = oldest {
                highest.remove(&c);
            }
        }
        highest.insert(cluster.to_string(), (term, n));
        Ok(true)
    }

    /// Writes the terms held now to the fence's file (nothing without one): blocking, so from
    /// a blocking thread. Concurrent saves take turns, and each writes what is held when its
    /// turn comes, so the file never goes back to an older state.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let file = file.lock().map_err(|_| std::io::Error::other("poisoned"))?;
        let text = {
            let highest = self
                .highest
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?;
            let mut lines: Vec<String> = highest
                .iter()
                .map(|(c, (t, _))| format!("{c} {t}\n"))
                .collect();
            lines.sort();
            lines.concat()
        };
        write_atomically(&file, text.as_bytes())
    }

    fn kept(&self) -> bool {
        self.file.is_some()
    }

    /// The highest term seen of a database (0: none).
    pub fn highest(&self, cluster: &str) -> i64 {
        self.highest
            .lock()
            .ok()
            .and_then(|h| h.get(cluster).map(|(t, _)| *t))
            .unwrap_or(0)
    }
}

/// `bytes` in `path`: a new file, synced, renamed over the old, the directory synced.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("new");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The layer; `Server::builder().layer(FenceLayer(fence))`.
#[derive(Debug, Clone, Default)]
pub struct FenceLayer(pub Arc<Fence>);

impl<S> tower_layer::Layer<S> for FenceLayer {
    type Service = Fenced<S>;

    fn layer(&self, inner: S) -> Fenced<S> {
        Fenced {
            inner,
            fence: Arc::clone(&self.0),
        }
    }
}

/// [`FenceLayer`] around a service.
#[derive(Debug, Clone)]
pub struct Fenced<S> {
    inner: S,
    fence: Arc<Fence>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for Fenced<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let named = req
            .headers()
            .get(TERM_HEADER)
            .map(|v| v.to_str().ok().and_then(parse));
        let admitted = match named {
            None => Ok(false),
            Some(None) => Err(tonic::Status::invalid_argument(format!(
                "{TERM_HEADER} must be CLUSTER:TERM (letters, digits or '-', then a positive whole number)"
            ))),
            Some(Some((cluster, term))) => self.fence.admit(cluster, term).map_err(|newer| {
                tracing::warn!(term, newer, "call from a coordinator that no longer leads refused");
                tonic::Status::failed_precondition(format!(
                    "a coordinator of a newer term ({newer}) leads: the caller's term {term} is over"
                ))
            }),
        };
        match admitted {
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
            // A new term is written down before its first call goes on. A fence that cannot
            // write says so and lets the call on: refusing the new leader would stop the
            // host, and only a restart in this state would forget the term.
            Ok(true) if self.fence.kept() => {
                let fence = Arc::clone(&self.fence);
                let call = self.inner.call(req);
                Box::pin(async move {
                    let saved = tokio::task::spawn_blocking(move || fence.save())
                        .await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                    if let Err(e) = saved {
                        tracing::error!(error = %e, "the fence's terms not written");
                    }
                    call.await
                })
            }
            Ok(_) => Box::pin(self.inner.call(req)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lower_term_of_the_same_database_is_refused() {
        let f = Fence::default();
        assert_eq!(f.admit("db1", 2), Ok(true), "new");
        assert_eq!(f.admit("db1", 2), Ok(false), "the same leader again");
        assert_eq!(f.admit("db1", 1), Err(2), "an older leader");
        assert_eq!(
            f.admit("db2", 1),
            Ok(true),
            "another database has its own terms"
        );
        assert_eq!(f.admit("db1", 5), Ok(true));
        assert_eq!(f.admit("db1", 2), Err(5));
        assert_eq!(
            (f.highest("db1"), f.highest("db2"), f.highest("x")),
            (5, 1, 0)
        );
        for i in 0..CLUSTERS + 5 {
            assert_eq!(f.admit(&format!("c{i}"), 1), Ok(true));
        }
        assert!(f.highest.lock().unwrap().len() <= CLUSTERS, "bounded");
    }

    #[test]
    fn a_kept_fence_remembers_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fence");
        let f = Fence::load(path.clone()).unwrap();
        assert_eq!(f.highest("db1"), 0, "no file yet: nothing seen");
        assert_eq!(f.admit("db1", 4), Ok(true));
        assert_eq!(f.admit("db2", 9), Ok(true));
        f.save().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "db1 4\ndb2 9\n");
        let again = Fence::load(path.clone()).unwrap();
        assert_eq!(
            again.admit("db1", 3),
            Err(4),
            "an old leader after a restart"
        );
        assert_eq!(again.admit("db2", 9), Ok(false));
        assert!(
            Fence::default().save().is_ok(),
            "in memory: nothing to write"
        );
        for bad in ["db1", "db1 x", "db1 0", "a b 3", "db1:4"] {
            std::fs::write(&path, format!("{bad}\n")).unwrap();
            let e = Fence::load(path.clone()).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{bad}");
            assert!(e.to_string().contains("line 1"), "{e}");
        }
    }

    #[test]
    fn headers_are_cluster_and_term() {
        assert_eq!(parse("ab12-cd:7"), Some(("ab12-cd", 7)));
        for bad in ["7", ":7", "ab:0", "ab:-1", "ab:x", "a b:3", "", "ab:"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
