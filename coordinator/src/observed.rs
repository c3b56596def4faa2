//! The observed state of VMs, written by two sources: the agent's event stream and the
//! reconciliation snapshot (the agent's list of domains). Both go through one
//! [`ObservedClock`] so a snapshot read before an event never overwrites what that event
//! wrote (the host came back, its list was read, then a VM stopped: the stop wins).

use std::collections::HashMap;

use crate::states::Observed;
use crate::store::{Result, Store};

/// Orders event writes against snapshot writes. Hold it (a mutex around it) across the store
/// write so the order of writes is the order of `seq`.
#[derive(Debug, Default)]
pub struct ObservedClock {
    seq: u64,
    /// (host, domain) -> `seq` of the last event written for it.
    last_event: HashMap<(String, String), u64>,
}

impl ObservedClock {
    /// Call before reading the agent's list; pass the value to [`Self::apply_snapshot`].
    pub fn read_at(&self) -> u64 {
        self.seq
    }

    /// Writes one lifecycle event of `domain` on `host`.
    pub fn apply_event(
        &mut self,
        s: &dyn Store,
        host: &str,
        domain: &str,
        state: i32,
    ) -> Result<()> {
        self.seq += 1;
        self.last_event
            .insert((host.to_string(), domain.to_string()), self.seq);
        let mut vm = s.vm(domain).ok();
        // A pool clone handed out is the VM of another name: found by its domain.
        if vm.is_none() && domain.starts_with(crate::names::POOL_PREFIX) {
            vm = s.vms_on(host)?.into_iter().find(|v| v.domain() == domain);
        }
        if let Some(mut vm) = vm {
            if vm.host.as_deref() == Some(host) && vm.domain() == domain {
                vm.observed_state = Observed::from_pb(state);
                s.put_vm(&vm)?;
            }
        }
        Ok(())
    }

    /// Writes the states of `host`'s VMs from a list read after `read_at`, skipping VMs that
    /// had an event since. A VM the agent does not list is `MISSING`. Returns how many changed.
    pub fn apply_snapshot(
        &mut self,
        s: &dyn Store,
        host: &str,
        read_at: u64,
        domains: &[(String, i32)],
    ) -> Result<usize> {
        let mut changed = 0;
        for mut vm in s.vms_on(host)? {
            let key = (host.to_string(), vm.domain().to_string());
            if self.last_event.get(&key).is_some_and(|&seq| seq > read_at) {
                continue;
            }
            let observed = domains
                .iter()
                .find(|(name, _)| name == vm.domain())
                .map(|(_, state)| Observed::from_pb(*state))
                .unwrap_or(Observed::Missing);
            if observed != vm.observed_state {
                vm.observed_state = observed;
                s.put_vm(&vm)?;
                changed += 1;
            }
        }
        // Events this snapshot already includes need no more ordering (one reconciliation
        // per host runs at a time).
        self.last_event
            .retain(|(h, _), seq| h != host || *seq > read_at);
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Sqlite, VmRecord};
    use corral_client::proto as pb;

    fn store_with(vms: &[(&str, &str)]) -> (tempfile::TempDir, Sqlite) {
        let dir = tempfile::tempdir().unwrap();
        let s = Sqlite::open(&dir.path().join("c.db")).unwrap();
        for (name, host) in vms {
            s.put_vm(&VmRecord {
                name: name.to_string(),
                owner: "alice".into(),
                base: None,
                host: Some(host.to_string()),
                desired_state: crate::states::Desired::Running,
                observed_state: Observed::from_pb(RUNNING),
                spec: serde_json::json!({}),
            })
            .unwrap();
        }
        (dir, s)
    }

    const RUNNING: i32 = pb::DomainState::Running as i32;
    const SHUT_OFF: i32 = pb::DomainState::ShutOff as i32;

    #[test]
    fn an_event_after_the_list_was_read_is_not_overwritten_by_it() {
        let (_d, s) = store_with(&[("a", "h1"), ("b", "h1")]);
        let mut clock = ObservedClock::default();
        let read_at = clock.read_at();
        let list = vec![("a".to_string(), RUNNING), ("b".to_string(), RUNNING)];
        // "a" stops after the list was read but before the list is written.
        clock.apply_event(&s, "h1", "a", SHUT_OFF).unwrap();
        assert_eq!(clock.apply_snapshot(&s, "h1", read_at, &list).unwrap(), 0);
        assert_eq!(
            s.vm("a").unwrap().observed_state,
            Observed::from_pb(SHUT_OFF)
        );
        assert_eq!(
            s.vm("b").unwrap().observed_state,
            Observed::from_pb(RUNNING)
        );
        // The next snapshot orders nothing any more and is taken as it is.
        let read_at = clock.read_at();
        clock.apply_snapshot(&s, "h1", read_at, &list).unwrap();
        assert_eq!(
            s.vm("a").unwrap().observed_state,
            Observed::from_pb(RUNNING)
        );
        assert!(clock.last_event.is_empty());
    }

    #[test]
    fn a_snapshot_read_after_an_event_wins_and_unlisted_vms_are_missing() {
        let (_d, s) = store_with(&[("a", "h1"), ("b", "h1"), ("c", "h2")]);
        let mut clock = ObservedClock::default();
        clock.apply_event(&s, "h1", "a", SHUT_OFF).unwrap();
        let read_at = clock.read_at();
        let list = vec![("a".to_string(), RUNNING)];
        assert_eq!(clock.apply_snapshot(&s, "h1", read_at, &list).unwrap(), 2);
        assert_eq!(
            s.vm("a").unwrap().observed_state,
            Observed::from_pb(RUNNING)
        );
        assert_eq!(s.vm("b").unwrap().observed_state, Observed::Missing);
        assert_eq!(
            s.vm("c").unwrap().observed_state,
            Observed::from_pb(RUNNING),
            "other host"
        );
    }

    #[test]
    fn an_event_for_a_vm_on_another_host_changes_nothing() {
        let (_d, s) = store_with(&[("a", "h1")]);
        let mut clock = ObservedClock::default();
        clock.apply_event(&s, "h2", "a", SHUT_OFF).unwrap();
        assert_eq!(
            s.vm("a").unwrap().observed_state,
            Observed::from_pb(RUNNING)
        );
    }
}
