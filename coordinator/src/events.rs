//! The events feed (issue 12, item 3): what a front-end follows. The store numbers every
//! change of a VM, an operation or a host in the transaction that makes it (triggers of the
//! `feed` table; hosts' liveness is appended here), with who besides admins may see it. A
//! reader gets the rows after its position, then waits for the store's next batch: so resuming
//! after the last number received misses nothing, and a position older than what the feed
//! keeps is refused rather than skipped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::auth::Caller;
use crate::error::{CoordError, Result};
use crate::store::{FeedPage, FeedRow};
use crate::vms::Coordinator;

/// Rows read from the store at once.
const PAGE: usize = 500;
/// A reader looks again this often even when no batch told it to.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// What a reader receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// The feed's position when a reader started "from now": resume after it.
    At(u64),
    Row(FeedRow),
}

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// After the newest event recorded now.
    Now,
    /// After this sequence number.
    After(u64),
}

/// The position a reader starting at `from` resumes after, given the feed's bounds; a refusal
/// when events after it are no longer kept or it is beyond the newest.
pub fn start(from: From, bounds: &FeedPage) -> Result<u64> {
    match from {
        From::Now => Ok(bounds.newest),
        From::After(n) if n > bounds.newest => Err(CoordError::Invalid(format!(
            "the feed has no event {n} yet: its newest is {}",
            bounds.newest
        ))),
        From::After(n) => {
            check_kept(n, bounds)?;
            Ok(n)
        }
    }
}

/// Events after `last` must all still be kept.
fn check_kept(last: u64, bounds: &FeedPage) -> Result<()> {
    if bounds.oldest > last + 1 {
        return Err(CoordError::FailedPrecondition(format!(
            "events {}..{} are no longer kept (the feed keeps the last {}): read the current \
             state again and follow from now",
            last + 1,
            bounds.oldest - 1,
            crate::store::FEED_KEPT
        )));
    }
    Ok(())
}

impl Coordinator {
    /// The feed as `caller` may see it, from `from`, until the receiver is dropped. A failure
    /// (a gap, the store) ends it with an error.
    pub async fn watch_feed(
        self: &Arc<Self>,
        caller: &Caller,
        from: From,
    ) -> Result<mpsc::Receiver<Result<Item>>> {
        let viewer = (!caller.is_admin()).then(|| caller.name().to_string());
        let bounds = self.blocking(|s| s.feed(u64::MAX, None, 0)).await?;
        let mut last = start(from, &bounds)?;
        let (tx, rx) = mpsc::channel(64);
        if from == From::Now {
            let _ = tx.send(Ok(Item::At(last))).await;
        }
        let me = Arc::clone(self);
        let mut batches = self.db.batches();
        let span = tracing::info_span!("feed", viewer = ?viewer, after = last);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                loop {
                    batches.borrow_and_update();
                    let v = viewer.clone();
                    let page = me.blocking(move |s| s.feed(last, v.as_deref(), PAGE)).await;
                    let page = match page.and_then(|p| check_kept(last, &p).map(|()| p)) {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    let full = page.rows.len() == PAGE;
                    // Rows the viewer may not see still move its position.
                    let seen = page.rows.last().map(|r| r.seq);
                    for row in page.rows {
                        if tx.send(Ok(Item::Row(row))).await.is_err() {
                            return;
                        }
                    }
                    // A page not full holds every row up to the newest the viewer may see.
                    last = if full {
                        seen.unwrap_or(last)
                    } else {
                        page.newest.max(last)
                    };
                    if full {
                        continue;
                    }
                    tokio::select! {
                        _ = batches.changed() => {}
                        _ = tokio::time::sleep(LOOK_EVERY) => {}
                        _ = tx.closed() => return,
                    }
                }
            },
            span,
        ));
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(oldest: u64, newest: u64) -> FeedPage {
        FeedPage {
            oldest,
            newest,
            rows: vec![],
        }
    }

    #[test]
    fn a_reader_starts_where_it_asks_or_is_told_why_not() {
        assert_eq!(start(From::Now, &bounds(0, 0)).unwrap(), 0);
        assert_eq!(start(From::Now, &bounds(5, 90)).unwrap(), 90);
        assert_eq!(start(From::After(0), &bounds(0, 0)).unwrap(), 0);
        assert_eq!(start(From::After(0), &bounds(1, 9)).unwrap(), 0);
        assert_eq!(start(From::After(4), &bounds(5, 9)).unwrap(), 4);
        let gone = start(From::After(3), &bounds(5, 9)).unwrap_err();
        assert!(matches!(gone, CoordError::FailedPrecondition(_)), "{gone}");
        assert!(
            gone.to_string().contains("events 4..4 are no longer kept"),
            "{gone}"
        );
        let ahead = start(From::After(10), &bounds(5, 9)).unwrap_err();
        assert!(matches!(ahead, CoordError::Invalid(_)), "{ahead}");
        assert!(ahead.to_string().contains("no event 10 yet"), "{ahead}");
    }

    use crate::fake::Kit;
    use crate::orders::CloneOrder;
    use crate::store::{HostRecord, Store};

    async fn next(rx: &mut mpsc::Receiver<Result<Item>>) -> Item {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an event in time")
            .expect("the feed goes on")
            .expect("no error")
    }

    /// Rows until none comes for a while.
    async fn drain(rx: &mut mpsc::Receiver<Result<Item>>) -> Vec<FeedRow> {
        let mut rows = Vec::new();
        while let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await
        {
            match item.unwrap() {
                Item::Row(r) => rows.push(r),
                Item::At(_) => {}
            }
        }
        rows
    }

    fn says(rows: &[FeedRow], kind: &str, subject: &str, key: &str, value: &str) -> bool {
        rows.iter()
            .any(|r| r.kind == kind && r.subject == subject && r.body[key] == value)
    }

    #[tokio::test]
    async fn the_feed_shows_each_caller_what_they_may_see_and_resumes_without_gaps() {
        let kit = Kit::new(1).await;
        kit.base("web", None, &["h1"]).await;
        let bob = Caller(crate::store::UserRecord {
            name: "bob".into(),
            role: "user".into(),
            attributes: serde_json::json!({}),
        });
        let mut admin = kit.coord.watch_feed(&kit.admin, From::Now).await.unwrap();
        let Item::At(start) = next(&mut admin).await else {
            panic!("a position first")
        };
        let mut alice = kit.coord.watch_feed(&kit.alice, From::Now).await.unwrap();
        let mut bobs = kit.coord.watch_feed(&bob, From::Now).await.unwrap();
        let order = CloneOrder {
            base: "web".into(),
            name: "a1".into(),
            start: true,
            ..Default::default()
        };
        let op = kit.coord.clone_vm(&kit.alice, order).await.unwrap();
        kit.end(&op.id).await;
        let r = HostRecord {
            name: "h9".into(),
            address: "10.0.0.9:7700".into(),
            enabled: true,
            last_seen_ms: 0,
        };
        kit.coord
            .blocking(move |s| s.insert_host(&r))
            .await
            .unwrap();

        let seen = drain(&mut alice).await;
        assert!(says(&seen, "vm", "a1", "event", "created"), "{seen:?}");
        assert!(
            says(&seen, "vm", "a1", "state", "DOMAIN_STATE_RUNNING"),
            "{seen:?}"
        );
        assert!(
            says(&seen, "operation", &op.id, "event", "created"),
            "{seen:?}"
        );
        assert!(
            says(&seen, "operation", &op.id, "event", "progress"),
            "{seen:?}"
        );
        assert!(
            says(&seen, "operation", &op.id, "state", "succeeded"),
            "{seen:?}"
        );
        assert!(
            !seen.iter().any(|r| r.kind == "host"),
            "hosts are for admins: {seen:?}"
        );
        assert!(
            drain(&mut bobs).await.is_empty(),
            "bob sees none of alice's"
        );
        let all = drain(&mut admin).await;
        assert!(says(&all, "host", "h9", "event", "added"), "{all:?}");
        // An admin sees every event, numbered one after another from the position.
        let numbers: Vec<u64> = all.iter().map(|r| r.seq).collect();
        let expected: Vec<u64> = (start + 1..=start + all.len() as u64).collect();
        assert_eq!(numbers, expected);

        // Resuming after any event gives exactly the ones after it.
        let middle = all[all.len() / 2].seq;
        let mut again = kit
            .coord
            .watch_feed(&kit.admin, From::After(middle))
            .await
            .unwrap();
        let rest = drain(&mut again).await;
        assert_eq!(rest, all[all.len() / 2 + 1..].to_vec());
        // Removing the VM is told too.
        kit.coord.blocking(|s| s.remove_vm("a1")).await.unwrap();
        let removed = drain(&mut alice).await;
        assert!(
            says(&removed, "vm", "a1", "event", "removed"),
            "{removed:?}"
        );

        // A position beyond the newest is refused.
        let ahead = kit
            .coord
            .watch_feed(&kit.admin, From::After(1 << 40))
            .await
            .unwrap_err();
        assert!(matches!(ahead, CoordError::Invalid(_)), "{ahead}");
    }

    /// The feed's bounds after `FEED_KEPT + 1000` rows, and a reader from too far back.
    fn check_retention(s: &dyn Store, name: &str) {
        let page = s.feed(0, None, 1).unwrap();
        assert_eq!(page.newest, crate::store::FEED_KEPT + 1000, "{name}");
        assert_eq!(page.oldest, 1001, "{name}");
        assert_eq!(page.rows[0].seq, 1001);
        let gone = start(From::After(5), &page).unwrap_err();
        assert!(
            gone.to_string()
                .contains("events 6..1000 are no longer kept"),
            "{gone}"
        );
        assert_eq!(start(From::After(1000), &page).unwrap(), 1000);
    }

    #[test]
    fn the_feed_keeps_the_last_rows_and_a_reader_from_further_back_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::Sqlite::open(&dir.path().join("c.db")).unwrap();
        let body = serde_json::json!({ "event": "up" });
        s.begin_batch().unwrap();
        for _ in 0..crate::store::FEED_KEPT + 1000 {
            s.append_feed("host", "h1", None, &body).unwrap();
        }
        s.end_batch().unwrap();
        check_retention(&s, "sqlite");
        // PostgreSQL's trigger, with the rows written in one statement (one by one over the
        // network takes half a minute).
        if let Some(url) = crate::store::tests::postgres_url() {
            let (pg, _schema) = crate::store::tests::postgres_schema(&url);
            pg.raw_query(&format!(
                "INSERT INTO feed (at_ms, kind, subject, body) \
                 SELECT 0, 'host', 'h1', '{{}}' FROM generate_series(1, {})",
                crate::store::FEED_KEPT + 1000
            ))
            .unwrap();
            check_retention(&pg, "postgres");
        }
    }
}
