//! The coordinator's costs, printed in one run:
//! 1. clone+start through the CLI and the coordinator against the same through the CLI and
//!    the agent alone, on the real libvirtd with the tiny guest (target ratio <= 1.05);
//! 2. clone operations per second the coordinator completes against test:/// agents
//!    (target >= 1,000 per second).

// The end-to-end tests drive real processes (agents, virsh, iptables, the CLI).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use corral_client::proto as pb;
use corral_tests::*;

fn cli(args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let out = Command::new(bin("corral"))
        .envs(env.iter().copied())
        .env("HOME", "/nonexistent")
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "corral {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How long an operation spent in the agent call (from its "cloning" event to the next).
async fn agent_part(c: &mut corral_client::CoordinatorClient, id: &str) -> Result<Duration> {
    let mut at = Vec::new();
    c.wait(id, |e| at.push((e.phase.clone(), e.at_unix_ms)))
        .await?;
    let i = at
        .iter()
        .position(|(p, _)| p == "cloning")
        .ok_or_else(|| anyhow::anyhow!("no cloning event in {at:?}"))?;
    let end = at.get(i + 1).map_or(at[i].1, |e| e.1);
    Ok(Duration::from_millis(u64::try_from(end - at[i].1)?))
}

async fn real_ratio() -> Result<()> {
    if !real_host_ready() {
        return Ok(());
    }
    cleanup_domains("cbench-");
    let dir = tempfile::tempdir()?;
    let agent = AgentProc::start(&dir.path().join("agent"))?;
    let coord = CoordProc::start(&dir.path().join("coord"), 500, 3000)?;
    let mut admin = coord.client(&coord.admin_token).await?;
    admin
        .hosts
        .add_host(pb::AddHostRequest {
            name: "local".into(),
            address: agent.addr.clone(),
        })
        .await?;
    for _ in 0..50 {
        if admin
            .hosts
            .list_hosts(pb::ListHostsRequest {})
            .await?
            .into_inner()
            .hosts[0]
            .state
            == pb::HostState::Up as i32
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let op = admin
        .vms
        .create_base(pb::CreateBaseRequest {
            spec: Some(tiny_spec("cbench-base", false)),
            host: "local".into(),
            idempotency_key: String::new(),
        })
        .await?
        .into_inner();
    finish(&mut admin, op).await?;
    let coord_env = [
        ("CORRAL_COORDINATOR", coord.addr.as_str()),
        ("CORRAL_TOKEN", coord.admin_token.as_str()),
    ];
    let agent_env = [("CORRAL_AGENT", agent.addr.as_str())];
    let runs: usize = std::env::var("CORRAL_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let (mut via_coord, mut via_agent) = (Vec::new(), Vec::new());
    // Each clone runs alone (the other's guest, booting under TCG, would take a core from it),
    // and the order alternates so neither path always goes first.
    // A removed guest's QEMU may still be exiting; let it go before the next start.
    let settle = || std::thread::sleep(Duration::from_millis(500));
    let through_agent = |i: usize| -> Result<Duration> {
        let a = format!("cbench-a{i}");
        let t = Instant::now();
        cli(
            &["agent", "base", "clone", "cbench-base", &a, "--start"],
            &agent_env,
        )?;
        let took = t.elapsed();
        cli(&["agent", "vm", "rm", &a, "--volumes"], &agent_env)?;
        settle();
        Ok(took)
    };
    let through_coord = |i: usize| -> Result<(Duration, String)> {
        let c = format!("cbench-c{i}");
        let t = Instant::now();
        let out = cli(
            &["-o", "json", "vm", "clone", "cbench-base", &c, "--start"],
            &coord_env,
        )?;
        let took = t.elapsed();
        let op: serde_json::Value = serde_json::from_str(&out)?;
        cli(&["vm", "rm", &c], &coord_env)?;
        settle();
        Ok((took, op["id"].as_str().unwrap_or_default().to_string()))
    };
    let mut overheads = Vec::new();
    for i in 0..=runs {
        let (ta, (tc, id)) = if i % 2 == 0 {
            let ta = through_agent(i)?;
            (ta, through_coord(i)?)
        } else {
            let tc = through_coord(i)?;
            (through_agent(i)?, tc)
        };
        // The first pair warms caches up and is not counted.
        if i > 0 {
            via_agent.push(ta);
            via_coord.push(tc);
            // What the coordinator path adds around its one agent call.
            overheads.push(tc.saturating_sub(agent_part(&mut admin, &id).await?));
        }
    }
    let (mc, ma) = (median(&mut via_coord), median(&mut via_agent));
    let ratio = mc.as_secs_f64() / ma.as_secs_f64();
    println!(
        "clone+start median over {runs} runs: CLI->coordinator->agent {:.1} ms, CLI->agent {:.1} ms, ratio {ratio:.3} (target <= 1.05): {}",
        mc.as_secs_f64() * 1e3,
        ma.as_secs_f64() * 1e3,
        if ratio <= 1.05 { "MET" } else { "NOT MET" }
    );
    let added = median(&mut overheads);
    println!(
        "  of which the coordinator path adds around its agent call (CLI start, RPCs, store, events): median {:.1} ms = {:.1}% of the agent path; the rest is the spread of QEMU starts under TCG",
        added.as_secs_f64() * 1e3,
        100.0 * added.as_secs_f64() / ma.as_secs_f64()
    );
    let op = admin
        .vms
        .remove_base(pb::BaseRef {
            name: "cbench-base".into(),
        })
        .await?
        .into_inner();
    finish(&mut admin, op).await?;
    Ok(())
}

async fn throughput() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // The test:/// agents stand in for hosts; their "disks" are only qcow2 headers. They live
    // on tmpfs when there is one, so the figure is the coordinator's and not ext4's inode
    // allocation after thousands of files were created and deleted. The database stays on disk.
    let on_disk = std::env::var_os("CORRAL_BENCH_HOSTS_ON_DISK").is_some();
    let hosts_dir = if Path::new("/dev/shm").is_dir() && !on_disk {
        tempfile::tempdir_in("/dev/shm")?
    } else {
        tempfile::tempdir()?
    };
    let hosts = 4;
    let mut agents = Vec::new();
    let coord = CoordProc::start_with(
        &dir.path().join("coord"),
        200,
        2000,
        &[
            ("CORRAL_COORD_PER_HOST_LIMIT", "64"),
            ("CORRAL_COORD_CPU_OVERCOMMIT", "1000"),
        ],
    )?;
    let mut admin = coord.client(&coord.admin_token).await?;
    for i in 0..hosts {
        let a = AgentProc::start_test_driver(&hosts_dir.path().join(format!("h{i}")))?;
        admin
            .hosts
            .add_host(pb::AddHostRequest {
                name: format!("h{i}"),
                address: a.addr.clone(),
            })
            .await?;
        agents.push(a);
    }
    for _ in 0..100 {
        let up = admin
            .hosts
            .list_hosts(pb::ListHostsRequest {})
            .await?
            .into_inner()
            .hosts
            .iter()
            .filter(|h| h.state == pb::HostState::Up as i32)
            .count();
        if up == hosts {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..hosts {
        let op = admin
            .vms
            .create_base(pb::CreateBaseRequest {
                spec: Some(test_spec("tput")),
                host: format!("h{i}"),
                idempotency_key: String::new(),
            })
            .await?
            .into_inner();
        finish(&mut admin, op).await?;
    }
    publish(&mut admin, "tput").await?;
    // Many clients at once, as a fleet of users would: submit, then follow, concurrently.
    let total: usize = std::env::var("CORRAL_BENCH_CLONES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_time(*p)).sum::<Duration>();
    let agent_pids: Vec<u32> = agents.iter().map(AgentProc::pid).collect();
    let (coord0, agents0) = (cpu(&[coord.pid()]), cpu(&agent_pids));
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let mut c = admin.clone();
        tasks.spawn(async move {
            let op = c
                .vms
                .clone_vm(pb::CloneVmRequest {
                    base: "tput".into(),
                    name: format!("tput-{i}"),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let end = c.wait(&op.id, |_| {}).await?;
            anyhow::Ok(end.state == pb::OperationState::Succeeded as i32)
        });
    }
    let mut done = 0u32;
    while let Some(r) = tasks.join_next().await {
        if r?? {
            done += 1;
        }
    }
    let all = t.elapsed();
    let rate = f64::from(done) / all.as_secs_f64();
    let per_op = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(done.max(1));
    let (coord_us, agents_us) = (
        per_op(cpu(&[coord.pid()]) - coord0),
        per_op(cpu(&agent_pids) - agents0),
    );
    println!(
        "{done}/{total} clone operations on {hosts} test:/// agents, {total} clients at once, in {:.2} s: {rate:.0} per second (target >= 1000): {}",
        all.as_secs_f64(),
        if rate >= 1000.0 { "MET" } else { "NOT MET" }
    );
    println!(
        "  CPU per clone operation: coordinator {coord_us:.0} us (one core would complete {:.0} per second), agents {agents_us:.0} us; {} cores shared by the coordinator, the agents and the clients",
        1e6 / coord_us.max(1.0),
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    if std::env::var("CORRAL_BENCH_ONLY_THROUGHPUT").is_err() {
        real_ratio().await?;
    }
    throughput().await?;
    Ok(())
}
