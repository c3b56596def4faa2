//! Fencing by term: with several coordinators on one database, each new leader takes a
//! higher term and names it, with the database's id, on every call to an agent
//! ([`TERM_HEADER`]: `CLUSTER:TERM`). An agent remembers the highest term it has seen of each
//! database and refuses calls from a lower one, so a leader that lost its lease (paused, cut
//! off) cannot finish work the new leader may be redoing. Calls without the header (the CLI
//! talking to an agent, peer agents) are not fenced; a coordinator on another database (a
//! fresh one) starts its own terms.

use std::collections::HashMap;
use std::future::Future;
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
    /// Admits a call from a coordinator of `term` of database `cluster`, or returns the newer
    /// term that refuses it.
    pub fn admit(&self, cluster: &str, term: i64) -> Result<(), i64> {
        let n = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Ok(mut highest) = self.highest.lock() else {
            return Ok(());
        };
        if let Some((seen, last)) = highest.get_mut(cluster) {
            *last = n;
            if term < *seen {
                return Err(*seen);
            }
            *seen = term;
            return Ok(());
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
        Ok(())
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
        let refusal = match named {
            None => None,
            Some(None) => Some(tonic::Status::invalid_argument(format!(
                "{TERM_HEADER} must be CLUSTER:TERM (letters, digits or '-', then a positive whole number)"
            ))),
            Some(Some((cluster, term))) => self.fence.admit(cluster, term).err().map(|newer| {
                tracing::warn!(term, newer, "call from a coordinator that no longer leads refused");
                tonic::Status::failed_precondition(format!(
                    "a coordinator of a newer term ({newer}) leads: the caller's term {term} is over"
                ))
            }),
        };
        match refusal {
            Some(status) => Box::pin(async move { Ok(status.into_http()) }),
            None => Box::pin(self.inner.call(req)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lower_term_of_the_same_database_is_refused() {
        let f = Fence::default();
        assert_eq!(f.admit("db1", 2), Ok(()));
        assert_eq!(f.admit("db1", 2), Ok(()), "the same leader again");
        assert_eq!(f.admit("db1", 1), Err(2), "an older leader");
        assert_eq!(
            f.admit("db2", 1),
            Ok(()),
            "another database has its own terms"
        );
        assert_eq!(f.admit("db1", 5), Ok(()));
        assert_eq!(f.admit("db1", 2), Err(5));
        assert_eq!(
            (f.highest("db1"), f.highest("db2"), f.highest("x")),
            (5, 1, 0)
        );
        for i in 0..CLUSTERS + 5 {
            assert_eq!(f.admit(&format!("c{i}"), 1), Ok(()));
        }
        assert!(f.highest.lock().unwrap().len() <= CLUSTERS, "bounded");
    }

    #[test]
    fn headers_are_cluster_and_term() {
        assert_eq!(parse("ab12-cd:7"), Some(("ab12-cd", 7)));
        for bad in ["7", ":7", "ab:0", "ab:-1", "ab:x", "a b:3", "", "ab:"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
