//! Guests, as Apache VCL knows its nodes: a VM is READY only when its guest agent answers, an
//! address is known and its base's post-load commands ran in this boot. A watcher loop asks
//! the agents about running VMs that are not settled yet and submits the post-load as an
//! ordinary operation (the `corral` system caller, one per boot by its idempotency key, so a
//! restarted coordinator finds it instead of running it twice). Programs and files in guests
//! go through the VM's host agent and its QEMU guest agent.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_client::proto as pb;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::door::{Events, Outgoing};
use crate::error::{CoordError, Result};
use crate::operations::{OpError, Resumer, Submit};
use crate::states::Observed;
use crate::store::{OpRecord, OpState, VmRecord};
use crate::vms::{work, Coordinator};

/// How often the watcher looks at guests that are not settled.
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// A sweep is skipped when nothing changed since the last (no new row in the events feed,
/// nobody asked about last time), but not for longer than this.
const SWEEP_AT_LEAST_EVERY: Duration = Duration::from_secs(60);
/// Guests asked at once.
const ASK_AT_ONCE: usize = 16;
/// Most post-load commands per base.
const MAX_POST_LOAD: usize = 32;
/// Operations that reload a VM's disks (VCL's RELOAD).
const RELOADS: &[&str] = &["restore", "rebase", "snapshot-revert"];

/// One command run in a guest after it boots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestCommand {
    pub path: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub shell: bool,
    #[serde(default)]
    pub timeout_seconds: u32,
}

impl GuestCommand {
    /// How the command reads in messages.
    pub fn display(&self) -> String {
        let mut s = if self.shell {
            format!("sh -c {:?}", self.path)
        } else {
            self.path.clone()
        };
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

/// A base's post-load commands, run in order; the first that fails stops the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostLoad {
    pub commands: Vec<GuestCommand>,
}

impl PostLoad {
    pub fn check(&self) -> Result<()> {
        if self.commands.len() > MAX_POST_LOAD {
            return Err(CoordError::Invalid(format!(
                "at most {MAX_POST_LOAD} post-load commands"
            )));
        }
        for c in &self.commands {
            corral_proto::rules::guest_command(&c.path, &c.args, c.timeout_seconds)?;
        }
        Ok(())
    }
}

/// A VM's guest, as VCL reports a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Off,
    Booting,
    PostLoad,
    Ready,
    Reload,
    Failed,
    NoAgent,
}

impl Readiness {
    pub fn to_pb(self) -> pb::Readiness {
        match self {
            Self::Off => pb::Readiness::Off,
            Self::Booting => pb::Readiness::Booting,
            Self::PostLoad => pb::Readiness::PostLoad,
            Self::Ready => pb::Readiness::Ready,
            Self::Reload => pb::Readiness::Reload,
            Self::Failed => pb::Readiness::Failed,
            Self::NoAgent => pb::Readiness::NoAgent,
        }
    }

    /// Nothing changes it until the VM's next operation (or boot).
    fn settled(self) -> bool {
        matches!(self, Self::Ready | Self::Failed | Self::NoAgent)
    }
}

/// What the watcher learnt of one guest.
#[derive(Debug, Clone)]
struct Memo {
    vm: String,
    /// [`crate::operations::Operations::generation`] of the VM when learnt.
    generation: u64,
    state: Readiness,
    detail: String,
}

/// What the watcher learnt, by host and domain: a pool clone keeps its guest when handed out.
#[derive(Default)]
pub struct Guests {
    memo: Mutex<HashMap<String, HashMap<String, Memo>>>,
    swept: Mutex<Swept>,
}

/// The last sweep: the newest row of the events feed before it, whether it asked about any
/// guest, and when.
#[derive(Default)]
struct Swept {
    newest: u64,
    asked: bool,
    at: Option<std::time::Instant>,
}

impl Guests {
    /// Whether a sweep can be skipped: nothing in the store changed since the last one (every
    /// change of a VM and every operation's end writes a feed row; an operation's end moves
    /// its VM's generation before its row is written), nobody was left to ask, and the last
    /// full sweep is recent.
    fn quiet_since(&self, newest: u64) -> bool {
        self.swept.lock().is_ok_and(|s| {
            s.newest == newest
                && !s.asked
                && s.at.is_some_and(|t| t.elapsed() < SWEEP_AT_LEAST_EVERY)
        })
    }

    fn swept(&self, newest: u64, asked: bool) {
        if let Ok(mut s) = self.swept.lock() {
            *s = Swept {
                newest,
                asked,
                at: Some(std::time::Instant::now()),
            };
        }
    }

    fn get(&self, host: &str, domain: &str) -> Option<Memo> {
        self.memo.lock().ok()?.get(host)?.get(domain).cloned()
    }

    fn put(&self, host: &str, domain: &str, m: Memo) {
        if let Ok(mut memo) = self.memo.lock() {
            memo.entry(host.to_string())
                .or_default()
                .insert(domain.to_string(), m);
        }
    }

    /// One sweep over the running VMs (name, host, domain) and their generations: what was
    /// learnt of VMs no longer running is forgotten; the VMs (name, host, generation) whose
    /// guest is not settled in this generation are returned.
    fn sweep(
        &self,
        running: &[(String, String, String)],
        generations: &[u64],
    ) -> Vec<(String, String, u64)> {
        let Ok(mut memo) = self.memo.lock() else {
            return Vec::new();
        };
        let mut seen: HashMap<&str, HashSet<&str>> = HashMap::new();
        let mut ask = Vec::new();
        for ((vm, host, domain), g) in running.iter().zip(generations) {
            seen.entry(host).or_default().insert(domain);
            let settled = memo
                .get(host.as_str())
                .and_then(|m| m.get(domain.as_str()))
                .is_some_and(|m| m.vm == *vm && m.generation == *g && m.state.settled());
            if !settled {
                ask.push((vm.clone(), host.clone(), *g));
            }
        }
        memo.retain(|host, domains| {
            let Some(running) = seen.get(host.as_str()) else {
                return false;
            };
            domains.retain(|d, _| running.contains(d.as_str()));
            !domains.is_empty()
        });
        ask
    }
}

/// A VM's readiness from what the coordinator knows now (pure): its observed state, the kind
/// of operation holding it, and what the watcher learnt in this boot.
pub fn readiness(
    observed: Option<Observed>,
    locked_kind: Option<&str>,
    learnt: Option<(Readiness, &str)>,
) -> (Readiness, String) {
    if let Some(k) = locked_kind {
        if RELOADS.contains(&k) {
            return (Readiness::Reload, format!("{k} running"));
        }
        if k == "post-load" {
            return (Readiness::PostLoad, "post-load commands running".into());
        }
    }
    if observed != Some(Observed::Domain(pb::DomainState::Running)) {
        return (Readiness::Off, String::new());
    }
    match learnt {
        Some((r, d)) => (r, d.to_string()),
        None => (Readiness::Booting, "the guest was not asked yet".into()),
    }
}

/// What a guest's status says before any post-load (pure): settled without an agent, booting
/// until it answers with an address, or answering (None).
pub fn assess(status: &pb::GuestStatus) -> Option<(Readiness, String)> {
    if status.agent == pb::GuestAgent::None as i32 {
        return Some((
            Readiness::NoAgent,
            "no guest agent channel: readiness cannot be known".into(),
        ));
    }
    if !status.answers {
        let why = if status.detail.is_empty() {
            "the guest agent does not answer yet".to_string()
        } else {
            status.detail.clone()
        };
        return Some((Readiness::Booting, why));
    }
    if status.addresses.is_empty() {
        return Some((
            Readiness::Booting,
            "the guest answers but has no address yet".into(),
        ));
    }
    None
}

/// Output kept of a failed command (the end of it).
fn tail(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let t = s.trim();
    let start = t.len().saturating_sub(300);
    let start = (start..=t.len())
        .find(|&i| t.is_char_boundary(i))
        .unwrap_or(t.len());
    t[start..].to_string()
}

/// A program's end: exit code, whether it timed out, stdout and stderr.
#[derive(Debug, Default)]
pub struct Ran {
    pub code: i32,
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Follows a program's events to its end.
pub async fn run_to_end(mut events: Events<pb::GuestExecEvent>, limit: Duration) -> Result<Ran> {
    use pb::guest_exec_event::Event;
    let mut ran = Ran::default();
    let deadline = tokio::time::Instant::now() + limit + Duration::from_secs(30);
    loop {
        let next = tokio::time::timeout_at(deadline, events.next())
            .await
            .map_err(|_| {
                CoordError::Unavailable("the guest program's host stopped answering".into())
            })?;
        match next {
            Some(Ok(pb::GuestExecEvent { event: Some(e) })) => match e {
                Event::Stdout(b) => ran.stdout.extend(b),
                Event::Stderr(b) => ran.stderr.extend(b),
                Event::Exited(x) => {
                    ran.code = x.code;
                    ran.timed_out = x.timed_out;
                    return Ok(ran);
                }
                Event::StartedPid(_) => {}
            },
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
            None => {
                return Err(CoordError::Unavailable(
                    "the guest program's events ended before it exited".into(),
                ))
            }
        }
    }
}

fn limit(seconds: u32) -> Duration {
    Duration::from_secs(if seconds == 0 { 60 } else { seconds.into() })
}

impl Coordinator {
    /// A VM's readiness now, from the coordinator's memory (no agent is asked).
    pub fn readiness_of(&self, vm: &VmRecord, observed: Option<Observed>) -> (Readiness, String) {
        let kind = self.ops.locked_kind(&vm.name);
        let learnt = self.learnt(vm);
        readiness(
            observed,
            kind.as_deref(),
            learnt.as_ref().map(|m| (m.state, m.detail.as_str())),
        )
    }

    /// What the watcher learnt of a VM's guest since the VM's last operation ended: anything
    /// older may predate a reboot, a reload or a move, and is asked again.
    fn learnt(&self, vm: &VmRecord) -> Option<Memo> {
        let h = vm.host.as_deref()?;
        let m = self.guests.get(h, vm.domain())?;
        (m.vm == vm.name && m.generation == self.ops.generation(&vm.name)).then_some(m)
    }

    /// Whether a VM's guest is known ready (pools hand out only such running clones).
    pub fn is_ready(&self, vm: &VmRecord) -> bool {
        self.learnt(vm).is_some_and(|m| m.state == Readiness::Ready)
    }

    /// One round of the watcher: every running VM not settled in this boot is asked about.
    /// The sweep reads names only (not every VM's record): at scale almost every guest is
    /// settled, and only the others are read in full.
    pub async fn watch_guests(self: &Arc<Self>) -> Result<()> {
        let newest = self
            .blocking(|s| Ok(s.feed(u64::MAX, None, 0)?.newest))
            .await?;
        if self.guests.quiet_since(newest) {
            return Ok(());
        }
        let running = self.blocking(|s| s.running_domains()).await?;
        let generations: Vec<u64> = running
            .iter()
            .map(|(vm, _, _)| self.ops.generation(vm))
            .collect();
        let mut ask = Vec::new();
        for (vm, host, generation) in self.guests.sweep(&running, &generations) {
            // Busy with other work: asked once it ends (its end changes the generation).
            if self.ops.locked_kind(&vm).is_some_and(|k| k != "post-load") {
                continue;
            }
            ask.push((vm, host, generation));
        }
        drop(running);
        self.guests.swept(newest, !ask.is_empty());
        // Read in full in slices, so that no one read holds the store for long.
        let mut asked = Vec::with_capacity(ask.len());
        for chunk in ask.chunks(500) {
            let names: Vec<String> = chunk.iter().map(|(vm, _, _)| vm.clone()).collect();
            let records = self
                .blocking(move |s| {
                    names
                        .iter()
                        .map(|n| {
                            s.vm(n).map(Some).or_else(|e| match e {
                                crate::store::StoreError::NotFound(_) => Ok(None),
                                e => Err(e),
                            })
                        })
                        .collect::<crate::store::Result<Vec<_>>>()
                })
                .await?;
            for ((_, host, generation), vm) in chunk.iter().zip(records) {
                // Gone, or moved since the sweep: the next round sees it as it is.
                if let Some(vm) = vm.filter(|v| v.host.as_deref() == Some(host.as_str())) {
                    asked.push((vm, host.clone(), *generation));
                }
            }
        }
        let ask = asked;
        futures::stream::iter(ask)
            .for_each_concurrent(ASK_AT_ONCE, |(vm, host, generation)| async move {
                let (state, detail) = match self.ask_guest(&vm, &host).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(vm = %vm.name, error = %e, "guest watcher");
                        return;
                    }
                };
                self.guests.put(
                    &host,
                    vm.domain(),
                    Memo {
                        vm: vm.name.clone(),
                        generation,
                        state,
                        detail,
                    },
                );
            })
            .await;
        Ok(())
    }

    /// Asks a VM's agent about its guest and runs (or finds) the post-load of this boot.
    async fn ask_guest(self: &Arc<Self>, vm: &VmRecord, host: &str) -> Result<(Readiness, String)> {
        let door = self.hosts.door(host)?;
        let d = door.get_domain(vm.domain()).await?;
        if d.state != pb::DomainState::Running as i32 {
            return Ok((Readiness::Off, String::new()));
        }
        let status = door.guest_status(vm.domain()).await?;
        if let Some(r) = assess(&status) {
            return Ok(r);
        }
        let post_load = match vm.base.clone() {
            Some(b) => self
                .blocking(move |s| s.base_post_load(&b))
                .await
                .unwrap_or_default(),
            None => PostLoad::default(),
        };
        if post_load.commands.is_empty() {
            return Ok((Readiness::Ready, String::new()));
        }
        let key = format!("post-load:{host}/{}:{}", vm.domain(), d.started_at_unix);
        let op = self.submit_post_load(vm, host, key).await?;
        Ok(match op.state {
            OpState::Succeeded => (Readiness::Ready, String::new()),
            OpState::Failed | OpState::Cancelled => (
                Readiness::Failed,
                op.error
                    .unwrap_or_else(|| "post-load did not finish".into()),
            ),
            _ => (
                Readiness::PostLoad,
                format!("post-load operation {}", op.id),
            ),
        })
    }

    /// The post-load of one boot (the same key finds the one submitted before).
    async fn submit_post_load(
        self: &Arc<Self>,
        vm: &VmRecord,
        host: &str,
        key: String,
    ) -> Result<OpRecord> {
        let sys = crate::volatile::system();
        let s = Submit {
            kind: "post-load".into(),
            vm: Some(vm.name.clone()),
            host: Some(host.to_string()),
            user: Some(sys.name().to_string()),
            idempotency_key: Some(key),
            request: serde_json::json!({ "vm": vm.name }),
        };
        let me = Arc::clone(self);
        let name = vm.name.clone();
        Ok(self
            .ops
            .submit(
                s,
                work(move |ctx| async move { me.post_load(&ctx, &name).await }),
            )
            .await?)
    }

    /// Runs a VM's base's post-load commands in its guest, in order.
    async fn post_load(
        self: &Arc<Self>,
        ctx: &crate::operations::OpCtx,
        name: &str,
    ) -> std::result::Result<serde_json::Value, OpError> {
        let sys = crate::volatile::system();
        let vm = self.vm_for(&sys, name).await?;
        let base = vm
            .base
            .clone()
            .ok_or_else(|| OpError::Failed(format!("{name} has no base")))?;
        let commands = self
            .blocking(move |s| s.base_post_load(&base))
            .await?
            .commands;
        let v = self.door_for(&sys, name).await?;
        let n = commands.len();
        for (i, c) in commands.iter().enumerate() {
            ctx.progress(
                "post-load",
                Some(100.0 * i as f32 / n as f32),
                None,
                &format!("command {}/{n}: {}", i + 1, c.display()),
            )
            .await?;
            let req = pb::GuestExecRequest {
                name: v.domain.clone(),
                path: c.path.clone(),
                args: c.args.clone(),
                shell: c.shell,
                timeout_seconds: c.timeout_seconds,
                ..Default::default()
            };
            let ran = run_to_end(v.door.guest_exec(req).await?, limit(c.timeout_seconds)).await?;
            if ran.code != 0 || ran.timed_out {
                let out = if ran.stderr.is_empty() {
                    &ran.stdout
                } else {
                    &ran.stderr
                };
                return Err(OpError::Failed(format!(
                    "post-load command {}/{n} ({}) {}: {}",
                    i + 1,
                    c.display(),
                    if ran.timed_out {
                        "passed its time limit".to_string()
                    } else {
                        format!("exited {}", ran.code)
                    },
                    tail(out)
                )));
            }
        }
        tracing::info!(vm = %name, commands = n, "post-load done");
        Ok(serde_json::json!({ "vm": name, "commands": n }))
    }

    /// After a restart a post-load runs again from its first command (they are meant to be
    /// safe to repeat, as VCL's are).
    pub fn post_load_resumer(self: &Arc<Self>) -> Resumer {
        let me = Arc::clone(self);
        Arc::new(move |op: &OpRecord| {
            let (me, vm) = (Arc::clone(&me), op.vm.clone()?);
            Some(work(
                move |ctx| async move { me.post_load(&ctx, &vm).await },
            ))
        })
    }

    /// Runs the watcher until the coordinator goes away.
    pub fn spawn_guest_watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(c) = me.upgrade() else { break };
                if let Err(e) = c.watch_guests().await {
                    tracing::warn!(error = %e, "guest watcher");
                }
            }
        })
    }

    /// Whether a VM's guest agent answers now (asked of its agent).
    pub async fn vm_guest(&self, caller: &Caller, name: &str) -> Result<pb::GuestStatus> {
        let v = self.door_for(caller, name).await?;
        v.door.guest_status(&v.domain).await
    }

    /// Runs a program in a VM's guest; its events as the agent sends them.
    pub async fn exec_vm(
        &self,
        caller: &Caller,
        mut req: pb::GuestExecRequest,
    ) -> Result<Events<pb::GuestExecEvent>> {
        corral_proto::rules::guest_exec("VM", &req)?;
        let v = self.door_for(caller, &req.name).await?;
        tracing::info!(vm = %req.name, user = %caller.name(), program = %req.path, "exec in guest");
        req.name = v.domain.clone();
        let stall = limit(req.timeout_seconds) + Duration::from_secs(30);
        let events = v.door.guest_exec(req).await?;
        // The agent kills the program at its limit; a host that goes silent ends the stream.
        Ok(Box::pin(tokio_stream::StreamExt::map(
            tokio_stream::StreamExt::timeout(events, stall),
            |r| {
                r.unwrap_or_else(|_| {
                    Err(CoordError::Unavailable(
                        "the VM's host stopped answering".into(),
                    ))
                })
            },
        )))
    }

    pub async fn read_vm_file(
        &self,
        caller: &Caller,
        mut req: pb::GuestFileRef,
    ) -> Result<Events<pb::FileChunk>> {
        crate::names::check_name("VM", &req.name)?;
        corral_proto::rules::guest_path(&req.path)?;
        let v = self.door_for(caller, &req.name).await?;
        req.name = v.domain.clone();
        v.door.read_guest_file(req).await
    }

    /// Writes a file in a VM's guest: `first` names it; `rest` carries the remaining data.
    pub async fn write_vm_file(
        &self,
        caller: &Caller,
        mut first: pb::GuestFileWrite,
        rest: Outgoing<pb::GuestFileWrite>,
    ) -> Result<pb::GuestFileWritten> {
        let file = first
            .file
            .as_mut()
            .ok_or_else(|| CoordError::Invalid("the first message must name the file".into()))?;
        crate::names::check_name("VM", &file.name)?;
        corral_proto::rules::guest_path(&file.path)?;
        let v = self.door_for(caller, &file.name).await?;
        file.name = v.domain.clone();
        let all: Outgoing<pb::GuestFileWrite> =
            Box::pin(futures::stream::once(async move { first }).chain(rest));
        v.door.write_guest_file(all).await
    }

    pub async fn base_post_load(&self, caller: &Caller, base: &str) -> Result<PostLoad> {
        caller.require_admin()?;
        crate::names::check_name("base", base)?;
        let b = base.to_string();
        self.blocking(move |s| s.base_post_load(&b))
            .await
            .map_err(|e| not_found(e, base))
    }

    pub async fn set_base_post_load(
        &self,
        caller: &Caller,
        base: &str,
        p: PostLoad,
    ) -> Result<PostLoad> {
        caller.require_admin()?;
        crate::names::check_name("base", base)?;
        p.check()?;
        let (b, q) = (base.to_string(), p.clone());
        self.blocking(move |s| s.set_base_post_load(&b, &q))
            .await
            .map_err(|e| not_found(e, base))?;
        tracing::info!(base, commands = p.commands.len(), "post-load set");
        Ok(p)
    }
}

fn not_found(e: CoordError, base: &str) -> CoordError {
    match e {
        CoordError::NotFound(_) => CoordError::NotFound(format!("base {base} not found")),
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(agent: pb::GuestAgent, answers: bool, addrs: &[&str]) -> pb::GuestStatus {
        pb::GuestStatus {
            agent: agent as i32,
            answers,
            addresses: addrs.iter().map(|s| s.to_string()).collect(),
            detail: String::new(),
        }
    }

    #[test]
    fn a_sweep_asks_the_unsettled_and_forgets_what_stopped() {
        let g = Guests::default();
        let memo = |vm: &str, generation, state| Memo {
            vm: vm.into(),
            generation,
            state,
            detail: String::new(),
        };
        g.put("h1", "a", memo("a", 1, Readiness::Ready));
        g.put("h1", "b", memo("b", 1, Readiness::Booting));
        g.put("h1", "gone", memo("gone", 1, Readiness::Ready));
        g.put("h2", "c", memo("c", 1, Readiness::Ready));
        g.put("h1", "d-7", memo("d", 1, Readiness::NoAgent));
        let row = |vm: &str, host: &str, domain: &str| (vm.into(), host.into(), domain.into());
        let running = [
            row("a", "h1", "a"),     // settled
            row("b", "h1", "b"),     // not settled yet
            row("c", "h2", "c"),     // settled, but a later generation
            row("d", "h1", "d-7"),   // settled under its domain's name
            row("new", "h1", "new"), // never asked
        ];
        let ask = g.sweep(&running, &[1, 1, 2, 1, 0]);
        assert_eq!(
            ask,
            [
                ("b".to_string(), "h1".to_string(), 1),
                ("c".to_string(), "h2".to_string(), 2),
                ("new".to_string(), "h1".to_string(), 0),
            ]
        );
        assert!(
            g.get("h1", "gone").is_none(),
            "no longer running: forgotten"
        );
        assert!(g.get("h1", "a").is_some());
        g.sweep(&[], &[]);
        assert!(
            g.memo.lock().unwrap().is_empty(),
            "nothing runs: nothing kept"
        );
    }

    #[test]
    fn a_sweep_is_skipped_only_when_nothing_changed_and_nobody_waits() {
        let g = Guests::default();
        assert!(!g.quiet_since(0), "never swept: sweep");
        g.swept(7, false);
        assert!(g.quiet_since(7));
        assert!(!g.quiet_since(8), "a change since: sweep");
        g.swept(8, true);
        assert!(!g.quiet_since(8), "someone to ask again: sweep");
        g.swept(8, false);
        if let Some(long_ago) = std::time::Instant::now().checked_sub(SWEEP_AT_LEAST_EVERY) {
            g.swept.lock().unwrap().at = Some(long_ago);
            assert!(!g.quiet_since(8), "a full sweep is due");
        }
    }

    #[test]
    fn readiness_follows_state_work_and_what_was_learnt() {
        use Readiness::*;
        let run = Some(Observed::Domain(pb::DomainState::Running));
        let off = Some(Observed::Domain(pb::DomainState::ShutOff));
        for (observed, kind, learnt, want) in [
            (off, None, None, Off),
            (None, None, Some(Ready), Off),
            (run, None, None, Booting),
            (run, None, Some(Ready), Ready),
            (run, Some("restore"), Some(Ready), Reload),
            (off, Some("rebase"), None, Reload),
            (run, Some("snapshot-revert"), None, Reload),
            (run, Some("post-load"), Some(Booting), PostLoad),
            (run, Some("reboot"), Some(Ready), Ready),
            (run, None, Some(Failed), Failed),
        ] {
            let (got, _) = readiness(observed, kind, learnt.map(|r| (r, "")));
            assert_eq!(got, want, "{observed:?} {kind:?} {learnt:?}");
        }
    }

    #[test]
    fn a_guest_is_assessed_by_its_agent_and_address() {
        use pb::GuestAgent::*;
        assert_eq!(
            assess(&status(None, false, &[])).unwrap().0,
            Readiness::NoAgent
        );
        assert_eq!(
            assess(&status(Disconnected, false, &[])).unwrap().0,
            Readiness::Booting
        );
        assert_eq!(
            assess(&status(Connected, true, &[])).unwrap().0,
            Readiness::Booting
        );
        assert!(assess(&status(Connected, true, &["10.0.0.2"])).is_none());
    }

    #[test]
    fn post_load_commands_are_checked() {
        let ok = GuestCommand {
            path: "touch".into(),
            args: vec!["/tmp/x".into()],
            ..Default::default()
        };
        PostLoad {
            commands: vec![ok.clone()],
        }
        .check()
        .unwrap();
        for bad in [
            GuestCommand {
                path: "".into(),
                ..ok.clone()
            },
            GuestCommand {
                timeout_seconds: 99999,
                ..ok.clone()
            },
            GuestCommand {
                args: vec!["a\0".into()],
                ..ok.clone()
            },
        ] {
            let e = PostLoad {
                commands: vec![bad],
            }
            .check()
            .unwrap_err();
            assert!(matches!(e, CoordError::Invalid(_)), "{e}");
        }
        let many = PostLoad {
            commands: vec![ok; 33],
        };
        assert!(many.check().unwrap_err().to_string().contains("at most 32"));
        assert_eq!(tail("é".repeat(400).as_bytes()).chars().count(), 150);
    }
}
