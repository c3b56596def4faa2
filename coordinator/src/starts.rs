//! Boot storms: at most `starts_per_host` guests start at once on one host; the others wait
//! their turn, in order, and say so in their operation's progress. A class that starts twenty
//! clones at once then boots them a few at a time instead of twenty QEMUs fighting for the
//! host's cores (and libvirt's locks) together.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{CoordError, Result};

/// One host's start slots and how many starts wait for one.
#[derive(Debug)]
struct Lane {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// The start slots of every host.
#[derive(Debug)]
pub struct StartGate {
    per_host: usize,
    lanes: Mutex<HashMap<String, Arc<Lane>>>,
}

/// A start slot on one host, given back when dropped.
#[derive(Debug)]
pub struct StartSlot {
    _permit: OwnedSemaphorePermit,
}

impl StartGate {
    pub fn new(per_host: usize) -> Self {
        Self {
            per_host: per_host.max(1),
            lanes: Mutex::new(HashMap::new()),
        }
    }

    fn lane(&self, host: &str) -> Result<Arc<Lane>> {
        let mut lanes = self
            .lanes
            .lock()
            .map_err(|_| CoordError::Internal("start gate lock poisoned".into()))?;
        Ok(Arc::clone(lanes.entry(host.to_string()).or_insert_with(
            || {
                Arc::new(Lane {
                    slots: Arc::new(Semaphore::new(self.per_host)),
                    waiting: AtomicUsize::new(0),
                })
            },
        )))
    }

    /// A start slot on `host`; when none is free, `on_wait` is told how many wait already,
    /// then the slot comes in turn (tokio's semaphore is fair: first come, first served).
    pub async fn enter(
        &self,
        host: &str,
        on_wait: impl AsyncFnOnce(usize) -> Result<()>,
    ) -> Result<StartSlot> {
        let lane = self.lane(host)?;
        if let Ok(p) = Arc::clone(&lane.slots).try_acquire_owned() {
            return Ok(StartSlot { _permit: p });
        }
        let ahead = lane.waiting.fetch_add(1, Ordering::SeqCst);
        struct Left<'a>(&'a AtomicUsize);
        impl Drop for Left<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _left = Left(&lane.waiting);
        on_wait(ahead).await?;
        let permit = Arc::clone(&lane.slots)
            .acquire_owned()
            .await
            .map_err(|_| CoordError::Internal("start gate closed".into()))?;
        Ok(StartSlot { _permit: permit })
    }

    /// Starts running now on `host` (for tests and metrics).
    pub fn running(&self, host: &str) -> usize {
        self.lane(host)
            .map(|l| self.per_host - l.slots.available_permits())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn at_most_the_limit_run_and_the_rest_wait_in_order() {
        let gate = Arc::new(StartGate::new(2));
        let a = gate.enter("h1", async |_| Ok(())).await.unwrap();
        let _b = gate.enter("h1", async |_| Ok(())).await.unwrap();
        // Another host has its own slots.
        let _other = gate.enter("h2", async |_| Ok(())).await.unwrap();
        assert_eq!(gate.running("h1"), 2);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..3 {
            let (g, o) = (Arc::clone(&gate), Arc::clone(&order));
            waiters.push(tokio::spawn(async move {
                let mut told = None;
                let slot = g
                    .enter("h1", async |ahead| {
                        told = Some(ahead);
                        Ok(())
                    })
                    .await
                    .unwrap();
                o.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(slot);
                told
            }));
            // Each asks after the one before.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(order.lock().unwrap().is_empty(), "no slot was free");
        drop(a);
        let mut told = Vec::new();
        for w in waiters {
            told.push(w.await.unwrap());
        }
        assert_eq!(told, vec![Some(0), Some(1), Some(2)]);
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
    }
}
