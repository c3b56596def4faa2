//! Pools of ready clones (Ravada's `pools`): per base, how many clones to keep made
//! (`pool_clones`) and how many of them running (`pool_start`). The pool manager keeps the
//! numbers in the background, across hosts (each pool clone is placed like any clone), and is
//! woken after each hand-out to refill. A user's clone of a base with a free pool clone is
//! served from the pool: the pool clone's record becomes the user's VM (their name, owner
//! and labels) and the agent gives the domain its new owner and a new display password; it
//! is neither remade nor booted. The domain keeps its pool name on the host
//! ([`VmRecord::domain`]).
//!
//! Pool clones belong to no user (owner empty): users never see them; admins do, marked.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::auth::Caller;
use crate::error::{CoordError, Result};
use crate::lifecycle::Action;
use crate::names::POOL_PREFIX;
use crate::operations::{OpError, Submit};
use crate::orders::CloneOrder;
use crate::states::{Desired, Observed};
use crate::store::{OpRecord, PoolSize, UserRecord, VmRecord};
use crate::vms::{work, Coordinator};
use corral_client::proto::DomainState;

/// How often the manager looks when nothing wakes it.
pub const MANAGE_EVERY: Duration = Duration::from_secs(1);
/// At most this many clones in one pool.
pub const MAX_POOL: u32 = 1000;

/// A base's pool as seen now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    pub base: String,
    pub size: PoolSize,
    /// Pool clones that exist or are being made.
    pub made: u32,
    /// Of those, running or being started.
    pub running: u32,
    pub making: u32,
    /// Of the running ones: guests known ready.
    pub ready: u32,
}

/// One pool clone as the manager sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub making: bool,
    /// Running, or meant to run (a start is under way).
    pub running: bool,
    /// Held by an operation.
    pub busy: bool,
}

/// What the manager does next for one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Make a pool clone, started or not.
    Make {
        start: bool,
    },
    Start(String),
    /// A pool clone beyond the pool's size (shut-off ones go first).
    Remove(String),
}

/// The steps that bring a pool to its size: pure.
pub fn plan(size: PoolSize, members: &[Member]) -> Vec<Step> {
    let made = members.len() as u32;
    // A clone being made counts as running: the plan that made it started it when the pool
    // lacked running ones (starting a shut-off one too would overshoot `start`).
    let running = members.iter().filter(|m| m.running || m.making).count() as u32;
    let mut steps = Vec::new();
    if made < size.clones {
        let missing_running = size.start.saturating_sub(running);
        for i in 0..size.clones - made {
            steps.push(Step::Make {
                start: i < missing_running,
            });
        }
        // Those made started count towards `start`; shut-off ones start below.
        let started_by_making = missing_running.min(size.clones - made);
        let still = missing_running - started_by_making;
        steps.extend(
            members
                .iter()
                .filter(|m| !m.running && !m.making && !m.busy)
                .take(still as usize)
                .map(|m| Step::Start(m.name.clone())),
        );
    } else {
        let surplus = (made - size.clones) as usize;
        let mut idle: Vec<&Member> = members.iter().filter(|m| !m.busy && !m.making).collect();
        // Shut-off ones first: they cost nothing to keep and nothing to remove.
        idle.sort_by_key(|m| m.running);
        steps.extend(
            idle.iter()
                .take(surplus)
                .map(|m| Step::Remove(m.name.clone())),
        );
        let kept_running =
            running.saturating_sub(idle.iter().take(surplus).filter(|m| m.running).count() as u32);
        let removed: Vec<&str> = idle.iter().take(surplus).map(|m| m.name.as_str()).collect();
        steps.extend(
            members
                .iter()
                .filter(|m| {
                    !m.running && !m.making && !m.busy && !removed.contains(&m.name.as_str())
                })
                .take(size.start.saturating_sub(kept_running) as usize)
                .map(|m| Step::Start(m.name.clone())),
        );
    }
    steps
}

/// The pool manager's identity in operations.
fn manager() -> Caller {
    Caller(UserRecord {
        name: "corral".into(),
        role: "admin".into(),
        attributes: serde_json::json!({}),
    })
}

/// A fresh pool clone name for `base`: `pool-<base>-<6 hex>`, at most 64 characters.
fn pool_name(base: &str) -> String {
    let cut: String = base.chars().take(64 - POOL_PREFIX.len() - 7).collect();
    let tag: u32 = rand::thread_rng().gen_range(0..0x0100_0000);
    format!("{POOL_PREFIX}{cut}-{tag:06x}")
}

fn is_running(vm: &VmRecord) -> bool {
    vm.desired_state == Desired::Running
        || vm.observed_state == Observed::Domain(DomainState::Running)
}

impl Coordinator {
    /// Sets a base's pool size (admin); 0 clones ends the pool (its clones are removed).
    pub async fn set_base_pool(
        &self,
        caller: &Caller,
        base: &str,
        size: PoolSize,
    ) -> Result<PoolStatus> {
        caller.require_admin()?;
        crate::names::check_name("base", base)?;
        if size.clones > MAX_POOL {
            return Err(CoordError::Invalid(format!(
                "a pool keeps at most {MAX_POOL} clones, not {}",
                size.clones
            )));
        }
        if size.start > size.clones {
            return Err(CoordError::Invalid(format!(
                "a pool cannot start more clones ({}) than it keeps ({})",
                size.start, size.clones
            )));
        }
        let b = base.to_string();
        self.blocking(move |s| s.set_base_pool(&b, &size))
            .await
            .map_err(|e| match e {
                CoordError::NotFound(_) => CoordError::NotFound(format!("base {base} not found")),
                e => e,
            })?;
        self.pool_wake.notify_one();
        self.pool_status(caller, base).await
    }

    /// A base's pool (admin).
    pub async fn pool_status(&self, caller: &Caller, base: &str) -> Result<PoolStatus> {
        caller.require_admin()?;
        crate::names::check_name("base", base)?;
        let b = base.to_string();
        let (pools, members, known) = self
            .blocking(move |s| {
                let known = s.base_spec(&b).is_ok();
                Ok((s.base_pools()?, s.pool_vms()?, known))
            })
            .await?;
        if !known {
            return Err(CoordError::NotFound(format!("base {base} not found")));
        }
        Ok(self.status_of(base, pools.get(base).copied().unwrap_or_default(), &members))
    }

    /// `base`'s pool of `size` among every pool clone (`members`).
    pub(crate) fn status_of(&self, base: &str, size: PoolSize, members: &[VmRecord]) -> PoolStatus {
        let mine: Vec<&VmRecord> = members
            .iter()
            .filter(|v| v.base.as_deref() == Some(base))
            .collect();
        PoolStatus {
            base: base.into(),
            size,
            made: mine.len() as u32,
            running: mine.iter().filter(|v| is_running(v)).count() as u32,
            ready: mine
                .iter()
                .filter(|v| is_running(v) && self.is_ready(v))
                .count() as u32,
            making: mine
                .iter()
                .filter(|v| v.observed_state == Observed::Creating)
                .count() as u32,
        }
    }

    /// One round of the manager: every pool brought towards its size. Returns the steps taken.
    pub async fn manage_pools(self: &Arc<Self>) -> Result<Vec<(String, Step)>> {
        let (pools, members) = self
            .blocking(|s| Ok((s.base_pools()?, s.pool_vms()?)))
            .await?;
        let mut bases: Vec<String> = pools.keys().cloned().collect();
        // Pools set to 0 still have clones to remove.
        for v in &members {
            if let Some(b) = &v.base {
                if !bases.contains(b) {
                    bases.push(b.clone());
                }
            }
        }
        let mut taken = Vec::new();
        for base in bases {
            let size = pools.get(&base).copied().unwrap_or_default();
            let mine: Vec<Member> = members
                .iter()
                .filter(|v| v.base.as_deref() == Some(base.as_str()))
                .map(|v| Member {
                    name: v.name.clone(),
                    making: v.observed_state == Observed::Creating,
                    running: is_running(v),
                    busy: self.ops.locked_by(&v.name).is_some(),
                })
                .collect();
            for step in plan(size, &mine) {
                let done = match &step {
                    Step::Make { start } => self.make_pool_clone(&base, *start).await.map(|_| ()),
                    Step::Start(n) => self
                        .vm_action(&manager(), n, Action::Start)
                        .await
                        .map(|_| ()),
                    Step::Remove(n) => self
                        .vm_action(&manager(), n, Action::Remove)
                        .await
                        .map(|_| ()),
                };
                match done {
                    Ok(()) => taken.push((base.clone(), step)),
                    // Nowhere to put it, or its host is down: asked again next round.
                    Err(e) => {
                        tracing::debug!(%base, ?step, error = %e, "pool step not taken");
                        break;
                    }
                }
            }
        }
        Ok(taken)
    }

    /// Places and makes one pool clone; its record exists (being made) before this returns,
    /// so the next round counts it.
    async fn make_pool_clone(self: &Arc<Self>, base: &str, start: bool) -> Result<OpRecord> {
        let order = CloneOrder {
            base: base.into(),
            name: pool_name(base),
            start,
            pool: true,
            ..Default::default()
        };
        let (placed, holders) = self.place(base, "", false).await?;
        let host = placed.host_or_refusal(&format!("a pool clone of {base}"))?;
        let vm = VmRecord {
            name: order.name.clone(),
            owner: String::new(),
            base: Some(base.into()),
            host: Some(host.clone()),
            desired_state: Desired::ShutOff,
            observed_state: Observed::Creating,
            spec: crate::clones::clone_spec(&order),
        };
        let v = vm.clone();
        self.blocking(move |s| s.insert_vm(&v)).await?;
        let submit = Submit {
            kind: "pool-clone".into(),
            vm: Some(order.name.clone()),
            host: Some(host.clone()),
            user: Some("corral".into()),
            idempotency_key: None,
            request: serde_json::json!({ "base": base, "name": order.name, "start": start }),
        };
        let reserved = self.reserve(&host, placed.size);
        let me = Arc::clone(self);
        let copy = !holders.contains(&host);
        let w = work(move |ctx| async move {
            let copied = if copy {
                me.ensure_base(&ctx, &order.base, &host, 0)
                    .await
                    .map(|_| ())
            } else {
                Ok(())
            };
            let r = match copied {
                Ok(()) => me.do_clone(&ctx, &host, &order, "").await,
                Err(e) => Err(e),
            };
            drop(reserved);
            if r.is_err() {
                // Not made: its record goes unless the agent holds the clone.
                let n = order.name.clone();
                let _ = me
                    .blocking(move |s| {
                        let still_making = s
                            .vm(&n)
                            .is_ok_and(|v| v.observed_state == Observed::Creating);
                        if still_making {
                            s.remove_vm(&n)?;
                        }
                        Ok(())
                    })
                    .await;
            }
            r.map_err(OpError::from)
        });
        match self.ops.submit(submit, w).await {
            Ok(op) => Ok(op),
            Err(e) => {
                let n = vm.name.clone();
                let _ = self.blocking(move |s| s.remove_vm(&n)).await;
                Err(e.into())
            }
        }
    }

    /// Serves a clone order from the base's pool when it has a free clone: the pool clone
    /// becomes `owner`'s VM named as ordered. `None` when the pool has none to give.
    pub(crate) async fn hand_out(
        self: &Arc<Self>,
        order: &CloneOrder,
        owner: &str,
    ) -> Result<Option<OpRecord>> {
        let base = order.base.clone();
        let mut free: Vec<VmRecord> = self
            .blocking(move |s| s.pool_vms())
            .await?
            .into_iter()
            .filter(|v| {
                v.base.as_deref() == Some(base.as_str())
                    && v.observed_state != Observed::Creating
                    && self.ops.locked_by(&v.name).is_none()
                    // A running clone only once its guest is ready (VCL's available node).
                    && (!is_running(v) || self.is_ready(v))
                    && v.host
                        .as_deref()
                        .is_some_and(|h| self.hosts.door(h).is_ok())
            })
            .collect();
        // What was asked for first: a running clone for a start, a shut-off one otherwise.
        free.sort_by_key(|v| is_running(v) != order.start);
        for pooled in free {
            let mut spec = crate::clones::clone_spec(order);
            spec["domain"] = pooled.name.clone().into();
            // Run timeouts count from here, not from when the pool started it.
            spec["handed_out_ms"] = crate::store::now_ms().into();
            let vm = VmRecord {
                name: order.name.clone(),
                owner: owner.into(),
                base: pooled.base.clone(),
                host: pooled.host.clone(),
                desired_state: if order.start {
                    Desired::Running
                } else {
                    pooled.desired_state
                },
                observed_state: pooled.observed_state,
                spec,
            };
            let (p, v) = (pooled.name.clone(), vm.clone());
            match self.blocking(move |s| s.hand_out(&p, &v)).await {
                Ok(()) => {}
                // Another request took it first: the next one.
                Err(CoordError::NotFound(_)) => continue,
                Err(CoordError::AlreadyExists(_)) => {
                    return Err(crate::names::taken("VM or base", &order.name))
                }
                Err(e) => return Err(e),
            }
            return Ok(Some(self.finish_hand_out(vm, order.start).await?));
        }
        Ok(None)
    }

    /// The hand-out's operation: the agent records the owner and changes the display
    /// password; a shut-off clone is started when asked.
    async fn finish_hand_out(self: &Arc<Self>, mut vm: VmRecord, start: bool) -> Result<OpRecord> {
        let host = vm.host.clone().unwrap_or_default();
        let domain = vm.domain().to_string();
        // Its own kind: a restart in the middle must not clean it away as a half-made clone.
        let submit = Submit {
            kind: "handout".into(),
            vm: Some(vm.name.clone()),
            host: Some(host.clone()),
            user: Some(vm.owner.clone()),
            idempotency_key: None,
            request: serde_json::json!({
                "base": vm.base, "name": vm.name, "start": start, "owner": vm.owner, "pool": domain,
            }),
        };
        let me = Arc::clone(self);
        let w = work(move |ctx| async move {
            let door = me.hosts.door(&host)?;
            let msg = format!("handed out from the pool ({domain} on host {host})");
            ctx.progress("pool", Some(50.0), None, &msg).await?;
            let mut d = door.assign(&domain, &vm.owner).await?;
            if start && d.state != DomainState::Running as i32 {
                let _slot = me.start_slot(&ctx, &host).await?;
                d = door.power(&domain, crate::door::Power::Start).await?;
            }
            vm.observed_state = Observed::from_pb(d.state);
            let v = vm.clone();
            me.blocking(move |s| s.put_vm(&v)).await?;
            // Refilled once handed out: a clone starting on the host meanwhile would hold
            // libvirt up (a start stalls other changes to running domains for most of a second).
            me.pool_wake.notify_one();
            Ok(serde_json::json!({
                "vm": vm.name, "host": host, "state": vm.observed_state.as_str(), "pool": domain,
            }))
        });
        Ok(self.ops.submit(submit, w).await?)
    }

    /// Runs the pool manager until the coordinator goes away.
    pub fn spawn_pool_manager(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        let wake = Arc::clone(&self.pool_wake);
        tokio::spawn(async move {
            loop {
                let _ = tokio::time::timeout(MANAGE_EVERY, wake.notified()).await;
                let Some(c) = me.upgrade() else { break };
                if let Err(e) = c.manage_pools().await {
                    tracing::warn!(error = %e, "pool manager");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, running: bool) -> Member {
        Member {
            name: name.into(),
            making: false,
            running,
            busy: false,
        }
    }

    fn size(clones: u32, start: u32) -> PoolSize {
        PoolSize { clones, start }
    }

    #[test]
    fn an_empty_pool_is_made_with_the_right_number_started() {
        let steps = plan(size(3, 2), &[]);
        assert_eq!(
            steps,
            vec![
                Step::Make { start: true },
                Step::Make { start: true },
                Step::Make { start: false }
            ]
        );
    }

    #[test]
    fn a_full_pool_starts_what_it_lacks_and_leaves_busy_ones_alone() {
        let mut busy = m("b", false);
        busy.busy = true;
        let steps = plan(size(3, 2), &[m("a", false), busy, m("c", true)]);
        assert_eq!(steps, vec![Step::Start("a".into())]);
        assert!(plan(size(3, 2), &[m("a", true), m("b", false), m("c", true)]).is_empty());
    }

    #[test]
    fn a_clone_being_made_counts_as_running() {
        // After a hand-out the refill is being made (started): the shut-off one stays off.
        let mut making = m("new", false);
        making.making = true;
        assert_eq!(plan(size(2, 1), &[m("a", false), making]), vec![]);
    }

    #[test]
    fn after_a_hand_out_one_is_made_started() {
        let steps = plan(size(3, 2), &[m("a", true), m("b", false)]);
        assert_eq!(steps, vec![Step::Make { start: true }]);
    }

    #[test]
    fn a_shrunk_pool_removes_shut_off_clones_first() {
        let steps = plan(size(1, 1), &[m("a", true), m("b", false), m("c", true)]);
        assert_eq!(
            steps,
            vec![Step::Remove("b".into()), Step::Remove("a".into())]
        );
        assert_eq!(
            plan(size(0, 0), &[m("a", true)]),
            vec![Step::Remove("a".into())]
        );
    }
}
