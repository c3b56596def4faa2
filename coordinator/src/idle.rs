//! Idle reclaim (Ravada's `run_timeout` and shutdown of disconnected machines): running VMs
//! are shut down once they ran their run timeout (the VM's own, else its base's), and shut
//! down or hibernated once no display client has been connected for their base's idle time.
//! A shutdown asks the guest (ACPI) and powers it off after the grace time.
//!
//! The rules are [`left`] and [`verdict`] (pure); a keeper loop asks each host's agent what
//! it knows (start time, display clients from libvirt's graphics events) every
//! [`KEEP_EVERY`] and submits the reclaim as an ordinary operation of the VM.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use corral_client::proto as pb;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{CoordError, Result};
use crate::lifecycle::Action;
use crate::states::Observed;
use crate::store::{now_ms, VmRecord};
use crate::vms::Coordinator;

/// How often the keeper looks.
pub const KEEP_EVERY: Duration = Duration::from_secs(5);

/// Timeouts are at least this long (a shorter one would stop a guest still booting)...
pub const MIN_TIMEOUT_S: u64 = 10;
/// ... and at most a year.
pub const MAX_TIMEOUT_S: u64 = 366 * 86_400;

/// A base's run and idle timeouts (seconds; 0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    pub run_seconds: u64,
    pub idle_seconds: u64,
    /// Idle clones are hibernated rather than shut down.
    pub idle_hibernate: bool,
}

impl Timeouts {
    pub fn is_none(&self) -> bool {
        self.run_seconds == 0 && self.idle_seconds == 0
    }

    pub fn check(&self) -> Result<()> {
        check_seconds("run", self.run_seconds)?;
        check_seconds("idle", self.idle_seconds)
    }
}

fn check_seconds(what: &str, s: u64) -> Result<()> {
    if s != 0 && !(MIN_TIMEOUT_S..=MAX_TIMEOUT_S).contains(&s) {
        return Err(CoordError::Invalid(format!(
            "a {what} timeout of {s} s is out of range: {MIN_TIMEOUT_S} s to 366 days (0: none)"
        )));
    }
    Ok(())
}

/// A VM's own run timeout (seconds; 0: its base's).
pub fn vm_run_timeout(vm: &VmRecord) -> u64 {
    vm.spec
        .get("run_timeout_s")
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
}

/// The timeouts that hold for a VM: its own run timeout over its base's.
pub fn effective(vm: &VmRecord, base: Option<&Timeouts>) -> Timeouts {
    let mut t = base.copied().unwrap_or_default();
    let own = vm_run_timeout(vm);
    if own > 0 {
        t.run_seconds = own;
    }
    t
}

/// What the agent says of a running VM, as the rules need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    /// Since when it counts as running for its user (ms): its start, or its hand-out from a
    /// pool when later.
    pub since_ms: i64,
    pub clients: u32,
    /// When a display client last came or went (ms; 0: never).
    pub last_seen_ms: i64,
}

impl Running {
    /// From the agent's view of the VM's domain; `None` when it does not run.
    pub fn of(vm: &VmRecord, d: &pb::Domain) -> Option<Self> {
        if d.state != pb::DomainState::Running as i32 {
            return None;
        }
        let handed_out = vm
            .spec
            .get("handed_out_ms")
            .and_then(|v| v.as_i64())
            .unwrap_or(0);
        Some(Self {
            since_ms: d.started_at_unix.saturating_mul(1000).max(handed_out),
            clients: d.display_clients,
            last_seen_ms: d.display_last_seen_unix_ms,
        })
    }
}

/// Time left (ms, may be negative) before each timeout; `None` where there is none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Left {
    pub run_ms: Option<i64>,
    pub idle_ms: Option<i64>,
}

fn ms(s: u64) -> i64 {
    i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)
}

pub fn left(now_ms: i64, r: &Running, t: &Timeouts) -> Left {
    Left {
        run_ms: (t.run_seconds > 0).then(|| r.since_ms + ms(t.run_seconds) - now_ms),
        idle_ms: (t.idle_seconds > 0).then(|| {
            if r.clients > 0 {
                // Someone is looking: the whole idle time is left.
                ms(t.idle_seconds)
            } else {
                r.last_seen_ms.max(r.since_ms) + ms(t.idle_seconds) - now_ms
            }
        }),
    }
}

/// Why a VM is reclaimed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaim {
    /// It ran its run timeout: shut down.
    RunOut,
    /// No display client for the idle time: shut down, or hibernated.
    Idle { hibernate: bool },
}

impl Reclaim {
    pub fn action(self) -> Action {
        match self {
            Self::Idle { hibernate: true } => Action::Hibernate,
            Self::RunOut | Self::Idle { hibernate: false } => Action::Shutdown,
        }
    }
}

/// The run timeout goes first: a VM past it is shut down even if it is also idle.
pub fn verdict(l: &Left, t: &Timeouts) -> Option<Reclaim> {
    if l.run_ms.is_some_and(|m| m <= 0) {
        return Some(Reclaim::RunOut);
    }
    l.idle_ms.is_some_and(|m| m <= 0).then_some(Reclaim::Idle {
        hibernate: t.idle_hibernate,
    })
}

impl Coordinator {
    /// A base's timeouts (admin).
    pub async fn base_timeouts(&self, caller: &Caller, base: &str) -> Result<Timeouts> {
        caller.require_admin()?;
        crate::names::check_name("base", base)?;
        let b = base.to_string();
        let (known, all) = self
            .blocking(move |s| Ok((s.base_spec(&b).is_ok(), s.base_timeouts()?)))
            .await?;
        if !known {
            return Err(CoordError::NotFound(format!("base {base} not found")));
        }
        Ok(all.get(base).copied().unwrap_or_default())
    }

    /// Sets a base's timeouts (admin); all 0 turns reclaim off for its clones.
    pub async fn set_base_timeouts(
        &self,
        caller: &Caller,
        base: &str,
        t: Timeouts,
    ) -> Result<Timeouts> {
        caller.require_admin()?;
        crate::names::check_name("base", base)?;
        t.check()?;
        let b = base.to_string();
        self.blocking(move |s| s.set_base_timeouts(&b, &t))
            .await
            .map_err(|e| match e {
                CoordError::NotFound(_) => CoordError::NotFound(format!("base {base} not found")),
                e => e,
            })?;
        Ok(t)
    }

    /// The time left before a VM is reclaimed, from what its agent said (`details`).
    pub async fn reclaim_left(&self, vm: &VmRecord, details: Option<&pb::Domain>) -> Left {
        let Some(r) = details.and_then(|d| Running::of(vm, d)) else {
            return Left::default();
        };
        let base = vm.base.clone();
        let bases = self
            .blocking(|s| s.base_timeouts())
            .await
            .unwrap_or_default();
        let t = effective(vm, base.as_deref().and_then(|b| bases.get(b)));
        left(now_ms(), &r, &t)
    }

    /// Submits the reclaim of every running VM that is due; returns them with the reason.
    pub async fn reclaim_idle(self: &Arc<Self>) -> Result<Vec<(String, Reclaim)>> {
        // Only the VMs a timeout may apply to, not every VM.
        let (vms, bases) = self
            .blocking(|s| {
                let bases = s.base_timeouts()?;
                let timed: Vec<String> = bases
                    .iter()
                    .filter(|(_, t)| !t.is_none())
                    .map(|(b, _)| b.clone())
                    .collect();
                Ok((s.vms_with_timeouts(&timed)?, bases))
            })
            .await?;
        let now = now_ms();
        let mut reclaimed = Vec::new();
        for vm in vms {
            let Some((t, host)) = candidate(&vm, &bases) else {
                continue;
            };
            if self.ops.locked_by(&vm.name).is_some() {
                continue;
            }
            let Ok(door) = self.hosts.door(host) else {
                continue;
            };
            let d = match door.get_domain(vm.domain()).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(vm = %vm.name, error = %e, "idle keeper cannot see the VM");
                    continue;
                }
            };
            let Some(r) = Running::of(&vm, &d) else {
                continue;
            };
            let Some(why) = verdict(&left(now, &r, &t), &t) else {
                continue;
            };
            match self
                .vm_action(&crate::volatile::system(), &vm.name, why.action())
                .await
            {
                Ok(op) => {
                    tracing::info!(vm = %vm.name, ?why, op = %op.id, "VM reclaimed");
                    reclaimed.push((vm.name, why));
                }
                Err(e) => tracing::warn!(vm = %vm.name, error = %e, "VM not reclaimed yet"),
            }
        }
        Ok(reclaimed)
    }

    /// Runs the keeper until the coordinator goes away.
    pub fn spawn_idle_keeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(KEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(c) = me.upgrade() else { break };
                if let Err(e) = c.reclaim_idle().await {
                    tracing::warn!(error = %e, "idle keeper");
                }
            }
        })
    }
}

/// A VM the keeper asks its agent about: a user's (not a free pool clone), running as far
/// as the coordinator knows, on a host, with some timeout.
fn candidate<'a>(
    vm: &'a VmRecord,
    bases: &HashMap<String, Timeouts>,
) -> Option<(Timeouts, &'a str)> {
    if vm.is_pool() || vm.observed_state != Observed::Domain(pb::DomainState::Running) {
        return None;
    }
    let t = effective(vm, vm.base.as_deref().and_then(|b| bases.get(b)));
    (!t.is_none()).then_some(())?;
    Some((t, vm.host.as_deref()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn running(since_ms: i64, clients: u32, last_seen_ms: i64) -> Running {
        Running {
            since_ms,
            clients,
            last_seen_ms,
        }
    }

    fn t(run: u64, idle: u64, hibernate: bool) -> Timeouts {
        Timeouts {
            run_seconds: run,
            idle_seconds: idle,
            idle_hibernate: hibernate,
        }
    }

    #[test]
    fn the_rules_table() {
        let now = 100 * MIN;
        // (what, running, timeouts, left run, left idle, verdict)
        type Case = (
            &'static str,
            Running,
            Timeouts,
            Option<i64>,
            Option<i64>,
            Option<Reclaim>,
        );
        let cases: &[Case] = &[
            (
                "no timeouts",
                running(0, 0, 0),
                t(0, 0, false),
                None,
                None,
                None,
            ),
            (
                "run: 10 min left",
                running(now - 50 * MIN, 1, 0),
                t(3600, 0, false),
                Some(10 * MIN),
                None,
                None,
            ),
            (
                "run: just up",
                running(now - 60 * MIN, 1, 0),
                t(3600, 0, false),
                Some(0),
                None,
                Some(Reclaim::RunOut),
            ),
            (
                "idle: a client is connected",
                running(now - 90 * MIN, 2, now - 80 * MIN),
                t(0, 600, true),
                None,
                Some(10 * MIN),
                None,
            ),
            (
                "idle: gone 9 min",
                running(now - 90 * MIN, 0, now - 9 * MIN),
                t(0, 600, false),
                None,
                Some(MIN),
                None,
            ),
            (
                "idle: gone 10 min, hibernate",
                running(now - 90 * MIN, 0, now - 10 * MIN),
                t(0, 600, true),
                None,
                Some(0),
                Some(Reclaim::Idle { hibernate: true }),
            ),
            (
                "idle: never connected, counts from the start",
                running(now - 11 * MIN, 0, 0),
                t(0, 600, false),
                None,
                Some(-MIN),
                Some(Reclaim::Idle { hibernate: false }),
            ),
            (
                "idle: a client left before a restart",
                running(now - 2 * MIN, 0, now - 50 * MIN),
                t(0, 600, false),
                None,
                Some(8 * MIN),
                None,
            ),
            (
                "both due: the run timeout wins",
                running(now - 70 * MIN, 0, 0),
                t(3600, 600, true),
                Some(-10 * MIN),
                Some(-60 * MIN),
                Some(Reclaim::RunOut),
            ),
        ];
        for (what, r, tt, run, idle, v) in cases {
            let l = left(now, r, tt);
            assert_eq!((l.run_ms, l.idle_ms), (*run, *idle), "{what}");
            assert_eq!(verdict(&l, tt), *v, "{what}");
        }
    }

    #[test]
    fn a_vm_timeout_goes_over_its_bases() {
        let mut vm = VmRecord {
            name: "v".into(),
            owner: "u".into(),
            base: Some("b".into()),
            host: Some("h".into()),
            desired_state: crate::states::Desired::Running,
            observed_state: Observed::Domain(pb::DomainState::Running),
            spec: serde_json::json!({}),
        };
        let base = t(3600, 600, true);
        assert_eq!(effective(&vm, Some(&base)), base);
        assert_eq!(effective(&vm, None), Timeouts::default());
        vm.spec["run_timeout_s"] = 120.into();
        assert_eq!(effective(&vm, Some(&base)), t(120, 600, true));
        assert_eq!(effective(&vm, None), t(120, 0, false));
        let bases = HashMap::from([("b".to_string(), base)]);
        assert!(candidate(&vm, &bases).is_some());
        vm.observed_state = Observed::Domain(pb::DomainState::ShutOff);
        assert!(
            candidate(&vm, &bases).is_none(),
            "a shut-off VM is not looked at"
        );
    }

    #[test]
    fn bad_timeouts_are_refused() {
        for (tt, ok) in [
            (t(0, 0, false), true),
            (t(10, 0, false), true),
            (t(9, 0, false), false),
            (t(0, 5, false), false),
            (t(0, MAX_TIMEOUT_S + 1, false), false),
            (t(MAX_TIMEOUT_S, MAX_TIMEOUT_S, true), true),
        ] {
            assert_eq!(tt.check().is_ok(), ok, "{tt:?}");
        }
        let e = t(5, 0, false).check().unwrap_err().to_string();
        assert!(e.contains("run timeout of 5 s is out of range"), "{e}");
    }

    #[test]
    fn a_handed_out_pool_clone_counts_from_its_hand_out() {
        let vm = VmRecord {
            name: "v".into(),
            owner: "u".into(),
            base: Some("b".into()),
            host: Some("h".into()),
            desired_state: crate::states::Desired::Running,
            observed_state: Observed::Domain(pb::DomainState::Running),
            spec: serde_json::json!({ "handed_out_ms": 5_000_000 }),
        };
        let d = pb::Domain {
            state: pb::DomainState::Running as i32,
            started_at_unix: 1000,
            display_clients: 1,
            display_last_seen_unix_ms: 7,
            ..Default::default()
        };
        assert_eq!(Running::of(&vm, &d), Some(running(5_000_000, 1, 7)));
        let off = pb::Domain {
            state: pb::DomainState::ShutOff as i32,
            ..d
        };
        assert_eq!(Running::of(&vm, &off), None);
    }

    #[tokio::test]
    async fn the_keeper_reclaims_what_ran_out_or_sat_idle_and_nothing_else() {
        use crate::error::CoordError;
        use crate::fake::Kit;
        use crate::orders::CloneOrder;
        use crate::states::Desired;
        use crate::store::OpState;
        let kit = Kit::new(1).await;
        kit.base("web", None, &["h1"]).await;
        for name in ["r1", "i1", "i2"] {
            let order = CloneOrder {
                base: "web".into(),
                name: name.into(),
                start: true,
                ..Default::default()
            };
            let op = kit.coord.clone_vm(&kit.alice, order).await.unwrap();
            assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
        }
        let now_s = now_ms() / 1000;
        let agent = kit.agent("h1");
        // r1 ran two hours with a client; i1's client left 11 minutes ago; i2 has a client.
        for (name, started, clients, seen_s) in [
            ("r1", now_s - 7200, 1, now_s - 7000),
            ("i1", now_s - 3000, 0, now_s - 660),
            ("i2", now_s - 3000, 1, now_s - 2000),
        ] {
            agent.edit_domain(name, |d| {
                d.started_at_unix = started;
                d.display_clients = clients;
                d.display_last_seen_unix_ms = seen_s * 1000;
            });
        }
        assert!(
            kit.coord.reclaim_idle().await.unwrap().is_empty(),
            "no timeouts, no reclaim"
        );
        let t = Timeouts {
            run_seconds: 3600,
            idle_seconds: 600,
            idle_hibernate: true,
        };
        let refused = kit.coord.set_base_timeouts(&kit.alice, "web", t).await;
        assert!(matches!(refused, Err(CoordError::PermissionDenied(_))));
        kit.coord
            .set_base_timeouts(&kit.admin, "web", t)
            .await
            .unwrap();
        assert_eq!(kit.coord.base_timeouts(&kit.admin, "web").await.unwrap(), t);
        let mut got = kit.coord.reclaim_idle().await.unwrap();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            [
                ("i1".to_string(), Reclaim::Idle { hibernate: true }),
                ("r1".to_string(), Reclaim::RunOut)
            ]
        );
        for op in kit.coord.ops.list(true).await.unwrap() {
            assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
        }
        for (n, want) in [
            ("r1", Desired::ShutOff),
            ("i1", Desired::Hibernated),
            ("i2", Desired::Running),
        ] {
            let vm = kit.coord.vm_for(&kit.admin, n).await.unwrap();
            assert_eq!(vm.desired_state, want, "{n}");
        }
        assert!(
            kit.coord.reclaim_idle().await.unwrap().is_empty(),
            "what was reclaimed is not reclaimed again"
        );
        // i2's own run timeout (admin only) goes over the base's hour: it ran 50 minutes.
        let lift = kit
            .coord
            .vm_action(&kit.alice, "i2", Action::RunTimeout(0))
            .await;
        assert!(matches!(lift, Err(CoordError::PermissionDenied(_))));
        let i2 = kit.coord.vm_for(&kit.admin, "i2").await.unwrap();
        let d = agent.domain("i2").unwrap();
        let before = kit.coord.reclaim_left(&i2, Some(&d)).await;
        assert!(before.run_ms.unwrap() > 500_000, "{before:?}");
        assert_eq!(before.idle_ms, Some(600_000), "a client is connected");
        let op = kit
            .coord
            .vm_action(&kit.admin, "i2", Action::RunTimeout(1800))
            .await
            .unwrap();
        kit.end(&op.id).await;
        let i2 = kit.coord.vm_for(&kit.admin, "i2").await.unwrap();
        assert_eq!(vm_run_timeout(&i2), 1800);
        assert!(kit.coord.reclaim_left(&i2, Some(&d)).await.run_ms.unwrap() < 0);
        let got = kit.coord.reclaim_idle().await.unwrap();
        assert_eq!(got, [("i2".to_string(), Reclaim::RunOut)]);
    }
}
