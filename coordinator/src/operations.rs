//! Long operations: durable, streamed, serialised per VM.
//!
//! [`Operations::submit`] stores the operation and returns it at once; its work runs on a
//! task. Every event (queued, started, progress, the final result) is appended to the
//! operation's log in the [`Store`] before it is broadcast, so a watcher attaching at any time
//! gets the whole log and then the live events, each exactly once, in order.
//! Work on one VM runs in submission order, one at a time (the VM reports itself locked);
//! work on different VMs runs concurrently, at most `per_host_limit` at a time per host.
//! After a restart, [`Operations::recover`] resumes what a resumer knows how to resume and
//! ends everything else as failed, with the reason.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, Semaphore};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::store::{now_ms, OpEvent, OpRecord, OpState, Store, StoreError};

/// Why an operation or a call about one failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum OpError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Exists(String),
    #[error("store: {0}")]
    Store(String),
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => Self::NotFound(m),
            StoreError::Conflict(m) => Self::Invalid(m),
            e @ StoreError::AlreadyExists(_) => Self::Exists(e.to_string()),
            e @ (StoreError::Database(_) | StoreError::NotLeader(_)) => Self::Store(e.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for OpError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Store(format!("store thread: {e}"))
    }
}

/// What a caller asks for.
#[derive(Debug, Clone, Default)]
pub struct Submit {
    pub kind: String,
    pub vm: Option<String>,
    pub host: Option<String>,
    pub user: Option<String>,
    pub idempotency_key: Option<String>,
    pub request: serde_json::Value,
}

pub type WorkFuture = Pin<Box<dyn Future<Output = Result<serde_json::Value, OpError>> + Send>>;
/// The work of an operation; it reports progress through its [`OpCtx`].
pub type Work = Box<dyn FnOnce(OpCtx) -> WorkFuture + Send>;
/// Rebuilds the work of an unfinished operation after a restart (None: it cannot resume).
pub type Resumer = Arc<dyn Fn(&OpRecord) -> Option<Work> + Send + Sync>;

/// Handed to an operation's work.
#[derive(Clone)]
pub struct OpCtx {
    pub id: String,
    ops: Arc<Operations>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for OpCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpCtx").field("id", &self.id).finish()
    }
}

impl OpCtx {
    /// Records and broadcasts a progress event.
    pub async fn progress(
        &self,
        phase: &str,
        percent: Option<f32>,
        bytes: Option<u64>,
        message: &str,
    ) -> Result<(), OpError> {
        self.ops
            .emit(&self.id, phase, percent, bytes, message, None)
            .await
    }

    /// Completes when the operation is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// The operations of one coordinator.
pub struct Operations {
    db: Arc<Db>,
    per_host_limit: usize,
    live: Mutex<HashMap<String, broadcast::Sender<OpEvent>>>,
    cancels: Mutex<HashMap<String, CancellationToken>>,
    vm_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The operation working on each VM now: (id, kind).
    running_on_vm: Mutex<HashMap<String, (String, String)>>,
    /// How many operations on each VM have ended (since this coordinator started).
    ended_on_vm: Mutex<HashMap<String, u64>>,
    host_slots: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl std::fmt::Debug for Operations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operations")
            .field("per_host_limit", &self.per_host_limit)
            .finish()
    }
}

fn event(
    id: &str,
    phase: &str,
    percent: Option<f32>,
    bytes: Option<u64>,
    message: &str,
    state: Option<OpState>,
) -> OpEvent {
    OpEvent {
        op_id: id.to_string(),
        seq: 0,
        at_ms: now_ms(),
        phase: phase.to_string(),
        percent,
        bytes,
        message: message.to_string(),
        state,
    }
}

/// "clone of vm1", or the kind alone.
fn first_message(op: &OpRecord) -> String {
    match &op.vm {
        Some(vm) => format!("{} of {vm}", op.kind),
        None => op.kind.clone(),
    }
}

fn poisoned<T>(_: T) -> OpError {
    OpError::Store("operations lock poisoned".into())
}

impl Operations {
    pub fn new(db: Arc<Db>, per_host_limit: usize) -> Arc<Self> {
        Arc::new(Self {
            db,
            per_host_limit: per_host_limit.max(1),
            live: Mutex::new(HashMap::new()),
            cancels: Mutex::new(HashMap::new()),
            vm_locks: Mutex::new(HashMap::new()),
            running_on_vm: Mutex::new(HashMap::new()),
            ended_on_vm: Mutex::new(HashMap::new()),
            host_slots: Mutex::new(HashMap::new()),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, OpError> {
        Ok(self.db.call(f).await?)
    }

    /// Broadcasts a stored event to the operation's live watchers.
    fn broadcast(&self, stored: OpEvent) -> Result<(), OpError> {
        if let Some(tx) = self.live.lock().map_err(poisoned)?.get(&stored.op_id) {
            let _ = tx.send(stored);
        }
        Ok(())
    }

    /// Moves an operation to `state` and logs its event in one store call.
    async fn transition(
        &self,
        id: &str,
        state: OpState,
        result: Option<serde_json::Value>,
        error: Option<String>,
        event: OpEvent,
    ) -> Result<(), OpError> {
        let id2 = id.to_string();
        let stored = self
            .blocking(move |s| {
                s.set_operation_state(&id2, state, result.as_ref(), error.as_deref())?;
                s.append_event(&event)
            })
            .await?;
        self.broadcast(stored)
    }

    /// Appends an event to the log, then broadcasts it to live watchers.
    async fn emit(
        &self,
        id: &str,
        phase: &str,
        percent: Option<f32>,
        bytes: Option<u64>,
        message: &str,
        state: Option<OpState>,
    ) -> Result<(), OpError> {
        let event = event(id, phase, percent, bytes, message, state);
        let stored = self.blocking(move |s| s.append_event(&event)).await?;
        self.broadcast(stored)
    }

    /// The operation holding a VM, if work on it is running.
    pub fn locked_by(&self, vm: &str) -> Option<String> {
        self.running_on_vm
            .lock()
            .ok()?
            .get(vm)
            .map(|(id, _)| id.clone())
    }

    /// The kind of the operation working on a VM now.
    pub fn locked_kind(&self, vm: &str) -> Option<String> {
        self.running_on_vm
            .lock()
            .ok()?
            .get(vm)
            .map(|(_, k)| k.clone())
    }

    /// Changes whenever an operation on the VM ends: what was learnt of it before may be stale.
    pub fn generation(&self, vm: &str) -> u64 {
        self.ended_on_vm
            .lock()
            .ok()
            .and_then(|m| m.get(vm).copied())
            .unwrap_or(0)
    }

    /// Stores the operation and starts its work; returns at once. With an idempotency key
    /// already used, returns that operation and runs nothing.
    pub async fn submit(self: &Arc<Self>, s: Submit, work: Work) -> Result<OpRecord, OpError> {
        if s.kind.is_empty() {
            return Err(OpError::Invalid("an operation needs a kind".into()));
        }
        let now = now_ms();
        // Each user's keys are their own: the same key from another user is another key (it
        // must neither find nor reveal their operation).
        let key = s
            .idempotency_key
            .map(|k| format!("{}\u{1f}{k}", s.user.as_deref().unwrap_or("")));
        let record = OpRecord {
            id: uuid::Uuid::new_v4().to_string(),
            kind: s.kind,
            vm: s.vm,
            host: s.host,
            user: s.user,
            state: OpState::Queued,
            // Each user's keys are their own: the same key from another user is another key
            // (it must neither find nor reveal their operation).
            idempotency_key: key,
            request: s.request,
            result: None,
            error: None,
            created_ms: now,
            updated_ms: now,
        };
        let r = record.clone();
        let queued = event(
            &record.id,
            "queued",
            Some(0.0),
            None,
            &first_message(&record),
            None,
        );
        let (stored, created) = self
            .blocking(move |st| {
                let (stored, created) = st.create_operation(&r)?;
                if created {
                    st.append_event(&queued)?;
                }
                Ok((stored, created))
            })
            .await?;
        if !created {
            tracing::info!(op = %stored.id, "idempotent retry: returning the existing operation");
            return Ok(stored);
        }
        if crate::dry::now() {
            // Not stored (the store call was rolled back) and not run: what would run.
            drop(work);
            return Ok(crate::dry::would_run(stored));
        }
        self.start(stored.clone(), work, None).await?;
        Ok(stored)
    }

    /// Registers the live channel and runs the work on a task.
    async fn start(
        self: &Arc<Self>,
        op: OpRecord,
        work: Work,
        first_phase: Option<&str>,
    ) -> Result<(), OpError> {
        let (tx, _) = broadcast::channel(256);
        self.live
            .lock()
            .map_err(poisoned)?
            .insert(op.id.clone(), tx);
        let cancel = CancellationToken::new();
        self.cancels
            .lock()
            .map_err(poisoned)?
            .insert(op.id.clone(), cancel.clone());
        if let Some(phase) = first_phase {
            self.emit(&op.id, phase, Some(0.0), None, &first_message(&op), None)
                .await?;
        }
        let me = Arc::clone(self);
        let span = tracing::info_span!("operation", op = %op.id, kind = %op.kind, vm = ?op.vm);
        let id = op.id.clone();
        tokio::spawn(tracing::Instrument::instrument(
            corral_client::OPERATION.scope(id, async move {
                let outcome = me.run(&op, work, cancel).await;
                if let Err(e) = me.finish(&op, outcome).await {
                    tracing::error!(error = %e, "could not record the end of the operation");
                }
            }),
            span,
        ));
        Ok(())
    }

    async fn run(
        self: &Arc<Self>,
        op: &OpRecord,
        work: Work,
        cancel: CancellationToken,
    ) -> Result<serde_json::Value, OpError> {
        // One operation at a time per VM, in submission order (tokio's Mutex is fair).
        let vm_lock = match &op.vm {
            Some(vm) => Some(Arc::clone(
                self.vm_locks
                    .lock()
                    .map_err(poisoned)?
                    .entry(vm.clone())
                    .or_default(),
            )),
            None => None,
        };
        let _vm_guard = match vm_lock {
            Some(l) => tokio::select! {
                g = l.lock_owned() => Some(g),
                _ = cancel.cancelled() => return Err(OpError::Cancelled),
            },
            None => None,
        };
        let slots = match &op.host {
            Some(h) => Some(Arc::clone(
                self.host_slots
                    .lock()
                    .map_err(poisoned)?
                    .entry(h.clone())
                    .or_insert_with(|| Arc::new(Semaphore::new(self.per_host_limit))),
            )),
            None => None,
        };
        let _slot = match slots {
            Some(s) => tokio::select! {
                p = s.acquire_owned() => Some(p.map_err(|e| OpError::Failed(e.to_string()))?),
                _ = cancel.cancelled() => return Err(OpError::Cancelled),
            },
            None => None,
        };
        if let Some(vm) = &op.vm {
            self.running_on_vm
                .lock()
                .map_err(poisoned)?
                .insert(vm.clone(), (op.id.clone(), op.kind.clone()));
        }
        // Queued -> running (a resumed operation is running already), and its event, at once.
        let (id, started) = (
            op.id.clone(),
            event(&op.id, "started", Some(0.0), None, "", None),
        );
        let stored = self
            .blocking(move |s| {
                if s.operation(&id)?.state == OpState::Queued {
                    s.set_operation_state(&id, OpState::Running, None, None)?;
                }
                s.append_event(&started)
            })
            .await?;
        self.broadcast(stored)?;
        let ctx = OpCtx {
            id: op.id.clone(),
            ops: Arc::clone(self),
            cancel: cancel.clone(),
        };
        let result = tokio::select! {
            r = work(ctx) => r,
            _ = cancel.cancelled() => Err(OpError::Cancelled),
        };
        if let Some(vm) = &op.vm {
            self.running_on_vm.lock().map_err(poisoned)?.remove(vm);
            *self
                .ended_on_vm
                .lock()
                .map_err(poisoned)?
                .entry(vm.clone())
                .or_default() += 1;
        }
        result
    }

    async fn finish(
        &self,
        op: &OpRecord,
        outcome: Result<serde_json::Value, OpError>,
    ) -> Result<(), OpError> {
        let (state, result, error) = match outcome {
            Ok(v) => (OpState::Succeeded, Some(v), None),
            Err(OpError::Cancelled) => (OpState::Cancelled, None, Some("cancelled".to_string())),
            Err(e) => (OpState::Failed, None, Some(e.to_string())),
        };
        let percent = (state == OpState::Succeeded).then_some(100.0);
        let last = event(
            &op.id,
            state.as_str(),
            percent,
            None,
            error.as_deref().unwrap_or(""),
            Some(state),
        );
        self.transition(&op.id, state, result, error.clone(), last)
            .await?;
        tracing::info!(state = state.as_str(), error = ?error, "operation ended");
        crate::metrics::operation(&op.kind, state.as_str(), op.created_ms);
        self.live.lock().map_err(poisoned)?.remove(&op.id);
        self.cancels.lock().map_err(poisoned)?.remove(&op.id);
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<OpRecord, OpError> {
        let id = id.to_string();
        self.blocking(move |s| s.operation(&id)).await
    }

    pub async fn list(&self, unfinished_only: bool) -> Result<Vec<OpRecord>, OpError> {
        self.blocking(move |s| s.operations(unfinished_only)).await
    }

    /// Asks an operation to stop; it ends as cancelled.
    pub async fn cancel(&self, id: &str) -> Result<(), OpError> {
        let op = self.get(id).await?;
        if op.state.is_terminal() {
            return Err(OpError::Invalid(format!(
                "operation {id} already ended ({})",
                op.state.as_str()
            )));
        }
        if let Some(t) = self.cancels.lock().map_err(poisoned)?.get(id) {
            t.cancel();
        }
        Ok(())
    }

    /// Every event of an operation from the first, then live ones until it ends.
    pub async fn watch(
        &self,
        id: &str,
    ) -> Result<impl Stream<Item = OpEvent> + Send + 'static, OpError> {
        // Subscribe before reading the log, so nothing falls between the two.
        let mut rx = self
            .live
            .lock()
            .map_err(poisoned)?
            .get(id)
            .map(broadcast::Sender::subscribe);
        let logged = {
            let id = id.to_string();
            // Not found is the answer for an unknown id.
            self.blocking(move |s| {
                s.operation(&id)?;
                s.events(&id, 0)
            })
            .await?
        };
        let db = Arc::clone(&self.db);
        let id = id.to_string();
        let (tx, out) = tokio::sync::mpsc::channel::<OpEvent>(64);
        // Sends one event; false when the operation ended or the watcher went away.
        async fn pass(tx: &tokio::sync::mpsc::Sender<OpEvent>, last: &mut u64, e: OpEvent) -> bool {
            *last = e.seq;
            let end = e.state.is_some();
            tx.send(e).await.is_ok() && !end
        }
        tokio::spawn(async move {
            let mut last = 0;
            for e in logged {
                if !pass(&tx, &mut last, e).await {
                    return;
                }
            }
            let Some(rx) = rx.as_mut() else { return };
            loop {
                match rx.recv().await {
                    Ok(e) if e.seq <= last => {}
                    Ok(e) => {
                        if !pass(&tx, &mut last, e).await {
                            return;
                        }
                    }
                    // Fell behind, or the operation ended: catch up from the log.
                    Err(_) => {
                        let (id2, after) = (id.clone(), last);
                        let Ok(missed) = db.call(move |s| s.events(&id2, after)).await else {
                            return;
                        };
                        if missed.is_empty() {
                            return;
                        }
                        for e in missed {
                            if !pass(&tx, &mut last, e).await {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(out))
    }

    /// After a restart: resumes unfinished operations a resumer can rebuild; ends the others
    /// as failed with the reason. Returns (resumed, failed) operation ids.
    pub async fn recover(
        self: &Arc<Self>,
        resumers: &HashMap<String, Resumer>,
    ) -> Result<(Vec<String>, Vec<String>), OpError> {
        let (mut resumed, mut failed) = (Vec::new(), Vec::new());
        for op in self.list(true).await? {
            let work = resumers.get(&op.kind).and_then(|r| r(&op));
            match work {
                Some(work) => {
                    tracing::info!(op = %op.id, kind = %op.kind, "resuming after restart");
                    resumed.push(op.id.clone());
                    self.start(op, work, Some("resumed")).await?;
                }
                None => {
                    let reason = format!(
                        "the coordinator restarted while this operation was {}; it was stopped and must be submitted again",
                        op.state.as_str()
                    );
                    let last = event(&op.id, "failed", None, None, &reason, Some(OpState::Failed));
                    self.transition(&op.id, OpState::Failed, None, Some(reason), last)
                        .await?;
                    failed.push(op.id);
                }
            }
        }
        Ok((resumed, failed))
    }
}
