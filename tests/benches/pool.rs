//! A student's clone+start through the CLI, on the real libvirtd with the tiny guest: served
//! from a pool of started clones (the hand-out) against a cold clone+start of a base without a
//! pool, side by side in one run. Each sample is one `corral vm clone BASE NAME --start`
//! process, from its start until it exits (the operation has ended). Between samples the
//! VMs are removed and the pool refills (not timed). Prints every sample, the medians and the
//! target: hand-out p50 <= 50 ms. `CORRAL_BENCH_RUNS` sets the number of samples (default 9).

// The benchmark drives real processes (the agent, the coordinator, the CLI).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use corral_client::proto as pb;
use corral_tests::*;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Waits until the pool has all its clones made and `running` of them running and ready.
async fn refilled(
    c: &mut corral_client::CoordinatorClient,
    base: &str,
    running: u32,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = c
            .vms
            .get_base_pool(pb::BaseRef { name: base.into() })
            .await?
            .into_inner();
        if p.made == p.clones && p.running >= running && p.ready >= running && p.making == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the pool did not refill: {p:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn base(c: &mut corral_client::CoordinatorClient, name: &str) -> Result<()> {
    let op = c
        .vms
        .create_base(pb::CreateBaseRequest {
            spec: Some(tiny_spec(name, false)),
            host: "local".into(),
            idempotency_key: String::new(),
        })
        .await?
        .into_inner();
    finish(c, op).await?;
    publish(c, name).await
}

async fn remove(c: &mut corral_client::CoordinatorClient, vm: &str) -> Result<()> {
    let op = c
        .vms
        .remove_vm(pb::VmRef { name: vm.into() })
        .await?
        .into_inner();
    finish(c, op).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    if !real_host_ready() {
        return Ok(());
    }
    let runs: usize = std::env::var("CORRAL_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    cleanup_domains("pool-pbench-");
    cleanup_domains("pbench-");
    let dir = tempfile::tempdir()?;
    let agent = AgentProc::start(&dir.path().join("agent"))?;
    let coord = CoordProc::start(&dir.path().join("coord"), 2000, 6000)?;
    let mut admin = coord.client(&coord.admin_token).await?;
    add_host(&mut admin, "local", &agent.addr).await?;
    let admin_cli = Cli {
        addr: &coord.addr,
        token: &coord.admin_token,
        ca: None,
    };
    wait_up(&admin_cli, 1);
    base(&mut admin, "pbench-pooled").await?;
    base(&mut admin, "pbench-cold").await?;
    admin
        .vms
        .set_base_pool(pb::SetBasePoolRequest {
            base: "pbench-pooled".into(),
            clones: 2,
            start: 2,
        })
        .await?;
    let token = user_token(&mut admin, "student").await?;
    let student = Cli {
        addr: &coord.addr,
        token: &token,
        ca: None,
    };
    let timed = |base: &str, name: &str| -> Duration {
        let t = Instant::now();
        student.ok(&["vm", "clone", base, name, "--start"]);
        t.elapsed()
    };
    let (mut handouts, mut colds) = (Vec::new(), Vec::new());
    // Sample 0 warms up and is not counted.
    for i in 0..=runs {
        refilled(&mut admin, "pbench-pooled", 2).await?;
        // Each runs alone: a booting guest of the other would take a core from it.
        std::thread::sleep(Duration::from_millis(500));
        let (h, c) = (format!("pbench-h{i}"), format!("pbench-c{i}"));
        let th = timed("pbench-pooled", &h);
        let from_pool = student.json(&["vm", "show", &h])["domain"] != h.as_str();
        std::thread::sleep(Duration::from_millis(500));
        let tc = timed("pbench-cold", &c);
        println!(
            "sample {i}: hand-out {:.1} ms{}, cold clone+start {:.1} ms{}",
            ms(th),
            if from_pool {
                ""
            } else {
                " (NOT from the pool)"
            },
            ms(tc),
            if i == 0 { " (warm-up)" } else { "" }
        );
        if !from_pool {
            bail!("sample {i}: the clone was not served from the pool");
        }
        if i > 0 {
            handouts.push(th);
            colds.push(tc);
        }
        remove(&mut admin, &h).await?;
        remove(&mut admin, &c).await?;
    }
    let (mh, mc) = (median(&mut handouts), median(&mut colds));
    println!(
        "median over {runs} samples through the CLI: hand-out of a started pool clone {:.1} ms (target <= 50 ms): {}; cold clone+start {:.1} ms ({:.1}x the hand-out)",
        ms(mh),
        if ms(mh) <= 50.0 { "MET" } else { "NOT MET" },
        ms(mc),
        mc.as_secs_f64() / mh.as_secs_f64()
    );
    admin
        .vms
        .set_base_pool(pb::SetBasePoolRequest {
            base: "pbench-pooled".into(),
            clones: 0,
            start: 0,
        })
        .await?;
    Ok(())
}
