//! Capacity promised to VMs being made, until their hosts' heartbeats include them.
//!
//! A reservation is a guard ([`Reserved`]): it is released when dropped, whatever ends the
//! operation that holds it: success, failure, a cancel before or during the work (the work
//! is dropped), an idempotent retry (the second submission's work is dropped unrun) or a
//! restart (nothing in memory survives). A released reservation still counts until a
//! heartbeat taken after its release, so placement never sees the capacity twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{CoordError, Result};
use crate::hosts::Reservation;

#[derive(Debug, Default)]
pub struct Reservations {
    pending: Mutex<Vec<Reservation>>,
    next: AtomicU64,
}

/// Capacity held on a host; released on drop.
#[derive(Debug)]
pub struct Reserved {
    owner: Arc<Reservations>,
    id: u64,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.owner.release(self.id);
    }
}

impl Reservations {
    /// Promises `size` (vCPUs, bytes of memory) on `host` until the guard is dropped.
    pub fn reserve(self: &Arc<Self>, host: &str, size: (u32, u64)) -> Reserved {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut p) = self.pending.lock() {
            p.push(Reservation {
                id,
                host: host.to_string(),
                vcpus: size.0,
                memory: size.1,
                released_ms: None,
            });
        }
        Reserved {
            owner: Arc::clone(self),
            id,
        }
    }

    fn release(&self, id: u64) {
        if let Ok(mut p) = self.pending.lock() {
            if let Some(r) = p.iter_mut().find(|r| r.id == id) {
                r.released_ms = Some(crate::store::now_ms());
            }
        }
    }

    /// What placement must still count, given the oldest heartbeat (ms) among the hosts:
    /// held reservations, and released ones no heartbeat has covered yet.
    pub fn counted(&self, oldest_info_ms: i64) -> Result<Vec<Reservation>> {
        let mut p = self
            .pending
            .lock()
            .map_err(|_| CoordError::Internal("reservations lock poisoned".into()))?;
        p.retain(|r| r.released_ms.is_none_or(|t| t >= oldest_info_ms));
        Ok(p.clone())
    }

    /// How many reservations are held (not yet released).
    pub fn held(&self) -> usize {
        self.pending
            .lock()
            .map(|p| p.iter().filter(|r| r.released_ms.is_none()).count())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_the_guard_releases_and_a_later_heartbeat_forgets() {
        let r = Arc::new(Reservations::default());
        let a = r.reserve("h1", (1, 1 << 30));
        let b = r.reserve("h1", (2, 1 << 30));
        assert_eq!(r.held(), 2);
        drop(a);
        assert_eq!(r.held(), 1);
        // Released but not yet in a heartbeat: still counted.
        assert_eq!(r.counted(0).unwrap().len(), 2);
        // A heartbeat after the release: only the held one counts.
        assert_eq!(r.counted(i64::MAX).unwrap().len(), 1);
        drop(b);
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn a_dropped_closure_releases_its_reservation() {
        // What an idempotent retry or a cancel before the work starts does: the work,
        // holding the guard, is dropped unrun.
        let r = Arc::new(Reservations::default());
        let guard = r.reserve("h1", (1, 1));
        let work = move || drop(guard);
        assert_eq!(r.held(), 1);
        drop(work);
        assert_eq!(r.held(), 0);
    }
}
