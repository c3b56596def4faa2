//! The store's own thread. Every store call of the coordinator runs there, one after another,
//! instead of on the blocking pool: no lock contention on the connection, no thread wake-up
//! per call. Calls that queue up while one batch runs are run together in one transaction
//! (group commit): each call is still atomic on its own (a savepoint), and its caller hears
//! back only once the batch's commit has succeeded, so an answer always means durable.

use std::sync::mpsc;
use std::sync::Arc;

use crate::store::{Result, Store, StoreError};

/// Called after the batch ends: `None` when it committed, else why it did not.
type Deliver = Box<dyn FnOnce(Option<StoreError>) + Send>;
/// Runs one call (or, without a store, refuses it); says whether it succeeded (its changes are
/// kept) and how to answer it.
type Job = Box<dyn FnOnce(Option<&dyn Store>) -> (bool, Deliver) + Send>;

/// Most calls committed together.
const MAX_BATCH: usize = 256;

/// A handle to the store thread; cheap to clone through its `Arc`.
pub struct Db {
    tx: mpsc::Sender<Job>,
    /// Batches ended so far: readers of the feed wait on it for new rows.
    batches: tokio::sync::watch::Receiver<u64>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Db")
    }
}

impl Db {
    /// Starts the thread. It ends when the last handle is dropped.
    pub fn start(store: Arc<dyn Store>) -> Result<Arc<Self>> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ended, batches) = tokio::sync::watch::channel(0u64);
        std::thread::Builder::new()
            .name("corral-store".into())
            .spawn(move || run(store.as_ref(), &rx, &ended))
            .map_err(|e| StoreError::Database(format!("cannot start the store thread: {e}")))?;
        Ok(Arc::new(Self { tx, batches }))
    }

    /// Changes each time a batch has ended (committed or not).
    pub fn batches(&self) -> tokio::sync::watch::Receiver<u64> {
        self.batches.clone()
    }

    /// Runs `f` on the store thread; answers after its batch has committed.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        // A dry run's changes are rolled back with its savepoint; its answer is kept.
        let dry = crate::dry::now();
        let job: Job = Box::new(move |s| {
            let out = match s {
                Some(s) => f(s),
                None => Err(StoreError::NotLeader(
                    "this coordinator no longer leads".into(),
                )),
            };
            let ok = out.is_ok() && !dry;
            let deliver: Deliver = Box::new(move |failed| {
                let _ = reply.send(match (failed, out) {
                    (Some(e), Ok(_)) => Err(e),
                    (_, out) => out,
                });
            });
            (ok, deliver)
        });
        self.tx
            .send(job)
            .map_err(|_| StoreError::Database("the store thread has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Database("the store thread dropped a call".into()))?
    }
}

fn run(store: &dyn Store, rx: &mpsc::Receiver<Job>, ended: &tokio::sync::watch::Sender<u64>) {
    let span = tracing::info_span!("store-thread");
    let _e = span.enter();
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let count = jobs.len();
        let failed = match store.begin_batch() {
            // The lease is gone: this coordinator writes nothing more, not even alone.
            Err(e @ StoreError::NotLeader(_)) => {
                tracing::error!(error = %e, "a batch was refused");
                let delivers: Vec<Deliver> = jobs.into_iter().map(|j| j(None).1).collect();
                for d in delivers {
                    d(Some(e.clone()));
                }
                continue;
            }
            Err(e) => {
                // Without a batch every call still commits on its own.
                tracing::error!(error = %e, "cannot begin a batch");
                let delivers: Vec<Deliver> = jobs.into_iter().map(|j| j(Some(store)).1).collect();
                for d in delivers {
                    d(None);
                }
                continue;
            }
            Ok(()) => {
                let mut delivers = Vec::with_capacity(count);
                let mut broken = None;
                for j in jobs {
                    if let Err(e) = store.begin_call() {
                        broken = Some(e);
                    }
                    // A call that panics loses its own changes and answers with an error;
                    // the thread and the other calls of the batch go on.
                    let (ok, deliver) =
                        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            j(Some(store))
                        })) {
                            Ok(r) => r,
                            Err(_) => {
                                tracing::error!("a store call panicked");
                                (false, Box::new(|_| {}) as Deliver)
                            }
                        };
                    if let Err(e) = store.end_call(ok) {
                        broken = Some(e);
                    }
                    delivers.push(deliver);
                }
                let failed = match broken {
                    Some(e) => {
                        let _ = store.abort_batch();
                        Some(e)
                    }
                    None => store.end_batch().err(),
                };
                if let Some(e) = &failed {
                    tracing::error!(error = %e, calls = count, "a batch did not commit");
                }
                (delivers, failed)
            }
        };
        let (delivers, failed) = failed;
        for d in delivers {
            d(failed.clone());
        }
        ended.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Sqlite, VmRecord};

    fn vm(name: &str) -> VmRecord {
        VmRecord {
            name: name.into(),
            owner: "alice".into(),
            base: None,
            host: Some("h1".into()),
            desired_state: crate::states::Desired::Running,
            observed_state: crate::states::Observed::Domain(
                corral_client::proto::DomainState::Running,
            ),
            spec: serde_json::json!({}),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_calls_commit_together_and_a_failed_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let db = Db::start(Arc::new(Sqlite::open(&path).unwrap())).unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let db = Arc::clone(&db);
            tasks.spawn(async move { db.call(move |s| s.put_vm(&vm(&format!("vm{i}")))).await });
        }
        // One call fails half-way (the second insert of the same operation id).
        let op = crate::store::OpRecord {
            id: "o1".into(),
            kind: "clone".into(),
            vm: None,
            host: None,
            user: None,
            state: crate::store::OpState::Queued,
            idempotency_key: None,
            request: serde_json::json!({}),
            result: None,
            error: None,
            created_ms: 1,
            updated_ms: 1,
        };
        let (o1, o2) = (op.clone(), op);
        let failed = db
            .call(move |s| {
                s.create_operation(&o1)?;
                s.create_operation(&o2)
            })
            .await;
        assert!(failed.is_err(), "{failed:?}");
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
        }
        // Everything answered is in the file, seen from another connection.
        let other = Sqlite::open(&path).unwrap();
        assert_eq!(other.vms().unwrap().len(), 200);
        assert!(
            other.operation("o1").is_err(),
            "the failed call left nothing"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    #[allow(clippy::panic)]
    async fn a_call_that_panics_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::start(Arc::new(Sqlite::open(&dir.path().join("c.db")).unwrap())).unwrap();
        let bad = db
            .call(|s| -> Result<()> {
                s.put_vm(&vm("lost"))?;
                panic!("a bug in a store call")
            })
            .await;
        assert!(bad.is_err());
        db.call(|s| s.put_vm(&vm("kept"))).await.unwrap();
        let names: Vec<String> = db
            .call(|s| s.vms())
            .await
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(names, vec!["kept".to_string()]);
    }
}
