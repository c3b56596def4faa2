//! Scale, measured (issue 12, item 6): one coordinator (this build's binary) with 10,000
//! simulated hosts (`corral_tests::sim`: one server in this process, a loopback address per
//! host) and 200,000 VMs in its store. Prints: time until every host is up, heartbeats per
//! second, event streams held, the coordinator's CPU (cores) and RSS at steady state, and
//! placement latency (a dry-run clone: authenticated, validated and placed across every host,
//! nothing made) p50/p99 — against the targets (p50 <= 1 ms, CPU < 1 core, RSS <= 256 MB).
//! Then an idle agent's RSS (aim <= 15 MB).
//!
//! `CORRAL_SCALE_HOSTS` and `CORRAL_SCALE_VMS` change the sizes, `CORRAL_SCALE_PLACEMENTS`
//! the number of dry-run clones timed (200).

#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_client::proto as pb;
use corral_coordinator::store::{HostRecord, Sqlite, Store, VmRecord};
use corral_tests::sim::{host_ip, Fleet};
use corral_tests::*;

fn size(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A field of `/proc/PID/status` in MiB (`VmRSS`: resident; `RssAnon`: of it, the process's
/// own memory, not the pages of its binary and libraries that the page cache shares).
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS")
}

/// The upper bound of the histogram bucket holding the median of
/// `corral_placement_seconds{part}`.
fn median_bucket(text: &str, part: &str) -> f64 {
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with("corral_placement_seconds_bucket{"))
        .filter(|l| l.contains(&format!("part=\"{part}\"")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let n: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, n))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let all = buckets.last().map_or(0.0, |b| b.1);
    buckets
        .iter()
        .find(|(_, n)| *n >= all / 2.0)
        .map_or(f64::NAN, |b| b.0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let hosts = size("CORRAL_SCALE_HOSTS", 10_000);
    let vms = size("CORRAL_SCALE_VMS", 200_000);
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("coord");
    std::fs::create_dir_all(&root)?;
    let port = free_port();
    let base = "scale-base";

    // The hosts' domains: VM i on host i % hosts.
    let mut fleet = Fleet {
        base: base.into(),
        ..Default::default()
    };
    for i in 0..vms {
        fleet
            .domains
            .entry(host_ip(i % hosts))
            .or_default()
            .push(format!("vm-{i}"));
    }
    let fleet = Arc::new(fleet);
    corral_tests::sim::serve(Arc::clone(&fleet), port).await?;

    // The coordinator makes its admin once, then the store is filled while it is stopped.
    let metrics = format!("127.0.0.1:{}", free_port());
    let env = [
        ("CORRAL_COORD_HEARTBEAT_MS", "2000"),
        ("CORRAL_COORD_DOWN_AFTER_MS", "10000"),
        ("CORRAL_COORD_METRICS_LISTEN", metrics.as_str()),
        ("RUST_LOG", "error"),
    ];
    CoordProc::start_with(&root, 2000, 10_000, &env)?.kill()?;
    let filled = Instant::now();
    {
        let s = Sqlite::open(&root.join("corral.db"))?;
        s.begin_batch()?;
        s.put_base(
            base,
            None,
            &serde_json::json!({ "vcpus": 1, "memory": 1u64 << 30 }),
        )?;
        for i in 0..hosts {
            let name = format!("h{i}");
            s.insert_host(&HostRecord {
                name: name.clone(),
                address: format!("{}:{port}", host_ip(i)),
                enabled: true,
                last_seen_ms: 0,
            })?;
            s.set_base_host(base, &name, true)?;
        }
        for i in 0..vms {
            s.insert_vm(&VmRecord {
                name: format!("vm-{i}"),
                owner: format!("u{}", i % 1000),
                base: Some(base.into()),
                host: Some(format!("h{}", i % hosts)),
                desired_state: corral_coordinator::states::Desired::Running,
                observed_state: corral_coordinator::states::Observed::from_pb(
                    pb::DomainState::Running as i32,
                ),
                spec: serde_json::json!({}),
            })?;
        }
        s.end_batch()?;
    }
    println!(
        "store filled: {hosts} hosts, {vms} VMs in {:.1} s",
        filled.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let coord = CoordProc::start_with(&root, 2000, 10_000, &env)?;
    let pid = coord.pid();
    let mut admin = coord.client(&coord.admin_token).await?;
    let up = loop {
        let listed = admin
            .hosts
            .list_hosts(pb::ListHostsRequest {})
            .await?
            .into_inner()
            .hosts;
        let up = listed
            .iter()
            .filter(|h| h.state == pb::HostState::Up as i32)
            .count();
        if up == hosts {
            break started.elapsed();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "only {up} of {hosts} hosts up after 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "every host up {:.1} s after the start; event streams held: {}",
        up.as_secs_f64(),
        fleet.streams_open.load(Ordering::Relaxed)
    );

    // Steady state: every host reconciled and the guest watcher done with every running VM
    // (no question about a domain or a guest for 3 s); then heartbeats go on, and CPU and
    // memory are read over 20 s.
    let settled = loop {
        let asked = fleet.asked.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let listed = fleet.listed.load(Ordering::Relaxed) as usize;
        if listed >= hosts && fleet.asked.load(Ordering::Relaxed) == asked {
            break started.elapsed();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "not settled after 10 minutes ({listed} of {hosts} hosts reconciled)"
        );
    };
    println!(
        "settled {:.1} s after the start (every host reconciled, every guest asked about)",
        settled.as_secs_f64()
    );
    let (cpu0, beats0, t0) = (
        cpu_time(pid),
        fleet.heartbeats.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    let wall = t0.elapsed().as_secs_f64();
    let cores = (cpu_time(pid) - cpu0).as_secs_f64() / wall;
    let beats = (fleet.heartbeats.load(Ordering::Relaxed) - beats0) as f64 / wall;
    let rss = rss_mib(pid);
    let streams = fleet.streams_open.load(Ordering::Relaxed);

    // Placement: dry-run clones, one after another.
    admin.set_dry_run(true);
    let mut lat = Vec::new();
    for i in 0..size("CORRAL_SCALE_PLACEMENTS", 200) {
        let t = Instant::now();
        admin
            .vms
            .clone_vm(pb::CloneVmRequest {
                base: base.into(),
                name: format!("new-{i}"),
                ..Default::default()
            })
            .await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    let (p50, p99) = (lat[lat.len() / 2], lat[lat.len() * 99 / 100]);
    // The placement itself, timed in the coordinator (its histogram's bucket holding p50).
    let text = corral_tests::run(
        "curl",
        &[
            "-s",
            "--max-time",
            "10",
            &format!("http://{metrics}/metrics"),
        ],
    )?;
    let decide = median_bucket(&text, "decide");
    let total = median_bucket(&text, "total");

    // An idle agent (libvirt's test driver), after it settled.
    let adir = tempfile::tempdir()?;
    let agent = AgentProc::start_test_driver(adir.path())?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let agent_rss = rss_mib(agent.pid());
    let agent_anon = status_mib(agent.pid(), "RssAnon");

    let mark = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!();
    println!("scale: {hosts} hosts, {vms} VMs, one coordinator");
    println!(
        "  all hosts up after start      {:>8.1} s",
        up.as_secs_f64()
    );
    println!(
        "  settled after start           {:>8.1} s      (every host reconciled, every guest asked)",
        settled.as_secs_f64()
    );
    println!("  heartbeats answered           {beats:>8.0} /s");
    println!("  agent event streams held      {streams:>8} (of {hosts})");
    println!(
        "  coordinator CPU, steady       {cores:>8.2} cores  (target < 1)      {}",
        mark(cores < 1.0)
    );
    println!(
        "  coordinator RSS               {rss:>8.0} MiB    (target <= 256)  {}",
        mark(rss <= 256.0)
    );
    println!(
        "    per host                    {:>8.1} KiB    (each host's HTTP/2 connection to its agent: about 72 KiB of it, see the note of issue 12)",
        rss * 1024.0 / hosts.max(1) as f64
    );
    println!(
        "  placement decision p50     <= {:>8.2} ms     (target <= 1)    {}",
        decide * 1000.0,
        mark(decide <= 0.001)
    );
    println!(
        "  placement with its reads p50 <= {:>6.2} ms",
        total * 1000.0
    );
    println!("  dry-run CloneVm RPC p50       {p50:>8.2} ms");
    println!("  dry-run CloneVm RPC p99       {p99:>8.2} ms");
    println!(
        "  idle agent RSS                {agent_rss:>8.1} MiB    (aim <= 15)      {}",
        mark(agent_rss <= 15.0)
    );
    println!(
        "    of it its own (anonymous)   {agent_anon:>8.1} MiB    (the rest: its binary and libvirt's libraries, file-backed)"
    );
    drop(coord);
    Ok(())
}
