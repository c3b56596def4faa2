//! Volatile clones (Ravada's): made started, and removed with their volumes when they shut
//! down or their time is up. Nothing of them is kept: they are not moved nor made bases.
//! A reaper looks at the VMs every second and removes those that are due, as operations.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::Caller;
use crate::error::{CoordError, Result};
use crate::lifecycle::Action;
use crate::states::Observed;
use crate::store::{now_ms, UserRecord, VmRecord};
use crate::vms::Coordinator;
use corral_client::proto::DomainState;

/// How often the reaper looks.
pub const REAP_EVERY: Duration = Duration::from_secs(1);

/// A volatile clone lives at most this long.
pub const MAX_LIFETIME: Duration = Duration::from_secs(366 * 86_400);

/// What a VM record says of its volatility (kept in its spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Volatility {
    /// When its time is up (ms since the epoch), if it has a lifetime.
    pub expires_ms: Option<i64>,
}

impl Volatility {
    pub fn of(vm: &VmRecord) -> Option<Self> {
        (vm.spec.get("volatile").and_then(|v| v.as_bool()) == Some(true)).then(|| Self {
            expires_ms: vm.spec.get("expires_ms").and_then(|v| v.as_i64()),
        })
    }
}

/// Why a volatile VM goes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    ShutDown,
    TimeUp,
}

/// Whether a VM is due for removal: volatile, not held by an operation, and shut off (or
/// crashed) or past its time. A VM still being made is never due.
pub fn due(vm: &VmRecord, now_ms: i64, locked: bool) -> Option<Due> {
    let v = Volatility::of(vm)?;
    if locked || vm.observed_state == Observed::Creating {
        return None;
    }
    if v.expires_ms.is_some_and(|t| t <= now_ms) {
        return Some(Due::TimeUp);
    }
    matches!(
        vm.observed_state,
        Observed::Domain(DomainState::ShutOff | DomainState::Crashed)
    )
    .then_some(Due::ShutDown)
}

/// Refuses what would keep a volatile VM (a move, a base made of it).
pub fn refuse_keeping(vm: &VmRecord, what: &str) -> Result<()> {
    if Volatility::of(vm).is_some() {
        return Err(CoordError::FailedPrecondition(format!(
            "VM {} is volatile: it is not {what}",
            vm.name
        )));
    }
    Ok(())
}

/// The coordinator's own identity in the operations it starts itself (the reaper, the idle
/// keeper).
pub(crate) fn system() -> Caller {
    Caller(UserRecord {
        name: "corral".into(),
        role: "admin".into(),
        attributes: serde_json::json!({}),
    })
}

impl Coordinator {
    /// Submits the removal of every volatile VM that is due; returns their names.
    pub async fn reap_volatile(self: &Arc<Self>) -> Result<Vec<String>> {
        let vms = self.blocking(|s| s.volatile_vms()).await?;
        let now = now_ms();
        let mut reaped = Vec::new();
        for vm in vms {
            let locked = self.ops.locked_by(&vm.name).is_some();
            let Some(why) = due(&vm, now, locked) else {
                continue;
            };
            match self.vm_action(&system(), &vm.name, Action::Remove).await {
                Ok(op) => {
                    tracing::info!(vm = %vm.name, ?why, op = %op.id, "volatile VM removed");
                    reaped.push(vm.name);
                }
                // A host that is down is asked again each round; only news is a warning.
                Err(CoordError::Unavailable(e)) => {
                    tracing::debug!(vm = %vm.name, error = %e, "volatile VM waits for its host")
                }
                Err(e) => tracing::warn!(vm = %vm.name, error = %e, "volatile VM not removed yet"),
            }
        }
        Ok(reaped)
    }

    /// Runs the reaper until the coordinator goes away.
    pub fn spawn_reaper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REAP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(c) = me.upgrade() else { break };
                if let Err(e) = c.reap_volatile().await {
                    tracing::warn!(error = %e, "volatile reaper");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::states::Desired;

    fn vm(spec: serde_json::Value, observed: Observed) -> VmRecord {
        VmRecord {
            name: "v".into(),
            owner: "alice".into(),
            base: Some("b".into()),
            host: Some("h1".into()),
            desired_state: Desired::Running,
            observed_state: observed,
            spec,
        }
    }

    #[test]
    fn volatile_vms_are_due_when_shut_off_or_past_their_time() {
        let off = Observed::Domain(DomainState::ShutOff);
        let on = Observed::Domain(DomainState::Running);
        let vol = serde_json::json!({ "volatile": true });
        let timed = serde_json::json!({ "volatile": true, "expires_ms": 1000 });
        let table = [
            (
                "kept VM, shut off",
                vm(serde_json::json!({}), off),
                0,
                false,
                None,
            ),
            ("volatile, running", vm(vol.clone(), on), 0, false, None),
            (
                "volatile, shut off",
                vm(vol.clone(), off),
                0,
                false,
                Some(Due::ShutDown),
            ),
            (
                "volatile, crashed",
                vm(vol.clone(), Observed::Domain(DomainState::Crashed)),
                0,
                false,
                Some(Due::ShutDown),
            ),
            (
                "volatile, shut off, held",
                vm(vol.clone(), off),
                0,
                true,
                None,
            ),
            (
                "volatile, being made",
                vm(vol, Observed::Creating),
                0,
                false,
                None,
            ),
            (
                "running, time not up",
                vm(timed.clone(), on),
                999,
                false,
                None,
            ),
            (
                "running, time up",
                vm(timed, on),
                1000,
                false,
                Some(Due::TimeUp),
            ),
        ];
        for (what, v, now, locked, want) in table {
            assert_eq!(due(&v, now, locked), want, "{what}");
        }
        assert!(refuse_keeping(&vm(serde_json::json!({ "volatile": true }), on), "moved").is_err());
        assert!(refuse_keeping(&vm(serde_json::json!({}), on), "moved").is_ok());
    }
}
