//! The operations engine over the real SQLite store.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_coordinator::db::Db;
use corral_coordinator::operations::{
    OpCtx, OpError, Operations, Resumer, Submit, Work, WorkFuture,
};
use corral_coordinator::store::{OpRecord, OpState, Sqlite, Store};
use tokio::sync::Notify;
use tokio_stream::StreamExt;

fn store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(Sqlite::open(&dir.path().join("corral.db")).unwrap())
}

fn submit(kind: &str, vm: Option<&str>, host: Option<&str>) -> Submit {
    Submit {
        kind: kind.into(),
        vm: vm.map(String::from),
        host: host.map(String::from),
        request: serde_json::json!({}),
        ..Default::default()
    }
}

fn work<F, Fut>(f: F) -> Work
where
    F: FnOnce(OpCtx) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<serde_json::Value, OpError>> + Send + 'static,
{
    Box::new(move |ctx| Box::pin(f(ctx)) as WorkFuture)
}

/// Work that reports three steps, waiting for `gate` before the last two.
fn stepped(gate: Arc<Notify>) -> Work {
    work(move |ctx| async move {
        ctx.progress("copy", Some(10.0), Some(100), "first").await?;
        gate.notified().await;
        ctx.progress("copy", Some(60.0), Some(600), "second")
            .await?;
        ctx.progress("define", Some(90.0), None, "third").await?;
        Ok(serde_json::json!({"ok": true}))
    })
}

async fn collect(ops: &Operations, id: &str) -> Vec<(u64, String, Option<OpState>)> {
    let s = ops.watch(id).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        s.map(|e| (e.seq, e.phase, e.state)).collect::<Vec<_>>(),
    )
    .await
    .expect("the stream ends with the operation")
}

async fn wait_end(ops: &Operations, id: &str) -> OpRecord {
    for _ in 0..500 {
        let op = ops.get(id).await.unwrap();
        if op.state.is_terminal() {
            return op;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("operation {id} did not end");
}

#[tokio::test]
async fn watchers_early_and_late_see_every_event_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let ops = Operations::new(Db::start(store(&dir)).unwrap(), 4);
    let gate = Arc::new(Notify::new());
    let op = ops
        .submit(submit("clone", Some("vm1"), None), stepped(gate.clone()))
        .await
        .unwrap();
    assert_eq!(op.state, OpState::Queued, "submit returns at once");
    let early = tokio::spawn({
        let ops = Arc::clone(&ops);
        let id = op.id.clone();
        async move { collect(&ops, &id).await }
    });
    // A second watcher attaches in the middle of the work.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let middle = tokio::spawn({
        let ops = Arc::clone(&ops);
        let id = op.id.clone();
        async move { collect(&ops, &id).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.notify_one();
    let early = early.await.unwrap();
    let middle = middle.await.unwrap();
    let late = collect(&ops, &op.id).await;
    let phases: Vec<&str> = early.iter().map(|(_, p, _)| p.as_str()).collect();
    assert_eq!(
        phases,
        ["queued", "started", "copy", "copy", "define", "succeeded"]
    );
    assert_eq!(
        early.iter().map(|e| e.0).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(early.last().unwrap().2, Some(OpState::Succeeded));
    assert_eq!(
        middle, early,
        "a watcher attached mid-way sees the same log"
    );
    assert_eq!(
        late, early,
        "a watcher attached after the end sees the same log"
    );
    let done = ops.get(&op.id).await.unwrap();
    assert_eq!(done.result.unwrap()["ok"], true);
}

#[tokio::test]
async fn work_on_one_vm_is_serialised_and_other_vms_run_alongside() {
    let dir = tempfile::tempdir().unwrap();
    let ops = Operations::new(Db::start(store(&dir)).unwrap(), 8);
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let timed = |name: &'static str, log: Arc<Mutex<Vec<String>>>| {
        work(move |_ctx| async move {
            log.lock().unwrap().push(format!("{name} start"));
            tokio::time::sleep(Duration::from_millis(150)).await;
            log.lock().unwrap().push(format!("{name} end"));
            Ok(serde_json::json!(null))
        })
    };
    let a = ops
        .submit(submit("start", Some("vm1"), None), timed("a", log.clone()))
        .await
        .unwrap();
    let b = ops
        .submit(submit("stop", Some("vm1"), None), timed("b", log.clone()))
        .await
        .unwrap();
    let c = ops
        .submit(submit("start", Some("vm2"), None), timed("c", log.clone()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        ops.locked_by("vm1").as_deref(),
        Some(a.id.as_str()),
        "vm1 reports itself locked"
    );
    for id in [&a.id, &b.id, &c.id] {
        wait_end(&ops, id).await;
    }
    let log = log.lock().unwrap().clone();
    let pos = |s: &str| log.iter().position(|l| l == s).unwrap();
    assert!(
        pos("a end") < pos("b start"),
        "same VM in submission order: {log:?}"
    );
    assert!(
        pos("c start") < pos("a end"),
        "another VM runs alongside: {log:?}"
    );
    assert_eq!(ops.locked_by("vm1"), None);
}

#[tokio::test]
async fn per_host_limit_holds() {
    let dir = tempfile::tempdir().unwrap();
    let ops = Operations::new(Db::start(store(&dir)).unwrap(), 2);
    let running = Arc::new(Mutex::new((0usize, 0usize)));
    let mut ids = Vec::new();
    for i in 0..6 {
        let running = running.clone();
        let w = work(move |_ctx| async move {
            {
                let mut r = running.lock().unwrap();
                r.0 += 1;
                r.1 = r.1.max(r.0);
            }
            tokio::time::sleep(Duration::from_millis(60)).await;
            running.lock().unwrap().0 -= 1;
            Ok(serde_json::json!(null))
        });
        let vm = format!("vm{i}");
        ids.push(
            ops.submit(submit("clone", Some(&vm), Some("h1")), w)
                .await
                .unwrap()
                .id,
        );
    }
    for id in &ids {
        assert_eq!(wait_end(&ops, id).await.state, OpState::Succeeded);
    }
    assert_eq!(running.lock().unwrap().1, 2, "at most two at a time on h1");
}

#[tokio::test]
async fn cancel_failure_and_idempotency() {
    let dir = tempfile::tempdir().unwrap();
    let ops = Operations::new(Db::start(store(&dir)).unwrap(), 4);
    let op = ops
        .submit(
            submit("clone", Some("vm1"), None),
            work(|ctx| async move {
                ctx.cancelled().await;
                Err(OpError::Cancelled)
            }),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    ops.cancel(&op.id).await.unwrap();
    assert_eq!(wait_end(&ops, &op.id).await.state, OpState::Cancelled);
    assert!(
        ops.cancel(&op.id).await.is_err(),
        "an ended operation cannot be cancelled"
    );

    // A failing operation ends failed, its reason in the record and in the last event.
    let op = ops
        .submit(
            submit("clone", Some("vm2"), None),
            work(|_| async { Err(OpError::Failed("host h3 has no room".into())) }),
        )
        .await
        .unwrap();
    let events = collect(&ops, &op.id).await;
    assert_eq!(events.last().unwrap().2, Some(OpState::Failed));
    assert_eq!(
        ops.get(&op.id).await.unwrap().error.as_deref(),
        Some("host h3 has no room")
    );

    // The same idempotency key twice: one operation, its work runs once.
    let runs = Arc::new(Mutex::new(0));
    let counted = |runs: Arc<Mutex<i32>>| {
        work(move |_| async move {
            *runs.lock().unwrap() += 1;
            Ok(serde_json::json!(null))
        })
    };
    let s = Submit {
        idempotency_key: Some("create-vm3".into()),
        ..submit("create", Some("vm3"), None)
    };
    let a = ops.submit(s.clone(), counted(runs.clone())).await.unwrap();
    wait_end(&ops, &a.id).await;
    let b = ops.submit(s, counted(runs.clone())).await.unwrap();
    assert_eq!(a.id, b.id);
    assert_eq!(*runs.lock().unwrap(), 1);
    assert!(matches!(ops.get("nope").await, Err(OpError::NotFound(_))));
}

#[tokio::test]
async fn restart_resumes_what_it_can_and_fails_the_rest_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    {
        // A coordinator that dies with two operations in flight: its tasks never finish.
        let ops = Operations::new(Db::start(store(&dir)).unwrap(), 4);
        let stuck = || {
            work(|ctx| async move {
                ctx.progress("copy", Some(40.0), None, "half way").await?;
                std::future::pending::<()>().await;
                Ok(serde_json::json!(null))
            })
        };
        ops.submit(submit("sync", Some("vm1"), None), stuck())
            .await
            .unwrap();
        ops.submit(submit("clone", Some("vm2"), None), stuck())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ops = Operations::new(Db::start(store(&dir)).unwrap(), 4);
    let mut resumers: HashMap<String, Resumer> = HashMap::new();
    resumers.insert(
        "sync".into(),
        Arc::new(|_op: &OpRecord| {
            Some(work(|ctx| async move {
                ctx.progress("copy", Some(100.0), None, "finished after restart")
                    .await?;
                Ok(serde_json::json!({"resumed": true}))
            }))
        }),
    );
    let (resumed, failed) = ops.recover(&resumers).await.unwrap();
    assert_eq!((resumed.len(), failed.len()), (1, 1));
    let r = wait_end(&ops, &resumed[0]).await;
    assert_eq!(r.state, OpState::Succeeded);
    assert_eq!(r.result.unwrap()["resumed"], true);
    let f = ops.get(&failed[0]).await.unwrap();
    assert_eq!(f.state, OpState::Failed);
    assert!(
        f.error.unwrap().contains("coordinator restarted"),
        "the reason is recorded"
    );
    let events = collect(&ops, &failed[0]).await;
    let phases: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(phases, ["queued", "started", "copy", "failed"]);
    assert!(
        ops.list(true).await.unwrap().is_empty(),
        "nothing is left unfinished"
    );
}

/// Issue 8, item 9: capacity reserved for an operation is released whatever ends it: an
/// idempotent retry (its work never runs), a cancel while queued, success and failure.
#[tokio::test]
async fn reservations_are_released_on_retry_cancel_success_and_failure() {
    use corral_coordinator::reservations::Reservations;
    let dir = tempfile::tempdir().unwrap();
    let ops = Operations::new(Db::start(store(&dir)).unwrap(), 4);
    let res = Arc::new(Reservations::default());
    let holding = |gate: Arc<Notify>, fail: bool| {
        let guard = res.reserve("h1", (1, 1 << 30));
        work(move |_ctx| async move {
            let _guard = guard;
            gate.notified().await;
            if fail {
                Err(OpError::Failed("the agent said no".into()))
            } else {
                Ok(serde_json::json!({}))
            }
        })
    };
    let keyed = || Submit {
        idempotency_key: Some("k1".into()),
        ..submit("clone", Some("vm1"), Some("h1"))
    };
    let gate = Arc::new(Notify::new());
    let first = ops
        .submit(keyed(), holding(gate.clone(), false))
        .await
        .unwrap();
    assert_eq!(res.held(), 1);
    // The retry returns the first operation; its own reservation is gone at once.
    let retry = ops
        .submit(keyed(), holding(gate.clone(), false))
        .await
        .unwrap();
    assert_eq!(retry.id, first.id);
    assert_eq!(res.held(), 1);
    // A second operation on the same VM waits its turn; cancelled while queued.
    let queued = ops
        .submit(
            submit("start", Some("vm1"), Some("h1")),
            holding(Arc::new(Notify::new()), false),
        )
        .await
        .unwrap();
    assert_eq!(res.held(), 2);
    ops.cancel(&queued.id).await.unwrap();
    assert_eq!(wait_end(&ops, &queued.id).await.state, OpState::Cancelled);
    assert_eq!(res.held(), 1);
    // Success releases.
    gate.notify_one();
    assert_eq!(wait_end(&ops, &first.id).await.state, OpState::Succeeded);
    assert_eq!(res.held(), 0);
    // Failure releases.
    let gate = Arc::new(Notify::new());
    let failing = ops
        .submit(
            submit("clone", Some("vm2"), Some("h1")),
            holding(gate.clone(), true),
        )
        .await
        .unwrap();
    assert_eq!(res.held(), 1);
    gate.notify_one();
    assert_eq!(wait_end(&ops, &failing.id).await.state, OpState::Failed);
    assert_eq!(res.held(), 0);
    // A cancel during the work releases too.
    let running = ops
        .submit(
            submit("clone", Some("vm3"), Some("h1")),
            holding(Arc::new(Notify::new()), false),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    ops.cancel(&running.id).await.unwrap();
    assert_eq!(wait_end(&ops, &running.id).await.state, OpState::Cancelled);
    assert_eq!(res.held(), 0);
}
