//! A class's boot storm, on the real libvirtd with the tiny guest: 20 clone+starts submitted
//! at once to the coordinator (which starts at most `starts_per_host` at a time and queues the
//! rest) against the same 20 done by a raw parallel loop (`qemu-img create` + `virsh define` +
//! `virsh start`, one thread each). Both end when all 20 guests are running; every guest is
//! checked running with `virsh domstate`. Runs alternate so both see the same machine.
//! Run 0 warms up and is not counted. Prints every run, the medians, their ratio (target <= 1.2) and the failures (target 0).
//! `CORRAL_BENCH_RUNS` (default 3), `CORRAL_BENCH_STORM` (default 20) and
//! `CORRAL_COORD_STARTS_PER_HOST` (the coordinator's own setting) change it. The coordinator
//! overcommits vCPUs 32 to 1 here so that twenty guests fit a small host.

// The benchmark drives real processes (agents, virsh, qemu-img).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use corral_agent::domain_xml::{DiskSource, DomainXml, MacAddress};
use corral_client::proto as pb;
use corral_tests::*;

fn env_num(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Guests not running among `names`.
fn not_running(names: &[String]) -> usize {
    names
        .iter()
        .filter(|n| virsh(&["domstate", n]).map_or(true, |s| s.trim() != "running"))
        .count()
}

/// Lets QEMUs of removed guests exit before the next run starts.
fn settle(prefix: &str) {
    for _ in 0..100 {
        let left = run("pgrep", &["-f", &format!("guest={prefix}")]).unwrap_or_default();
        if left.trim().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
}

/// 20 clone+starts submitted at once; the time until all have ended, and the failures.
async fn through_coordinator(
    admin: &corral_client::CoordinatorClient,
    run_no: usize,
    n: usize,
) -> Result<(Duration, usize, Vec<String>)> {
    let names: Vec<String> = (0..n).map(|i| format!("storm-c{run_no}-{i}")).collect();
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for name in names.clone() {
        let mut c = admin.clone();
        tasks.spawn(async move {
            let op = c
                .vms
                .clone_vm(pb::CloneVmRequest {
                    base: "storm-base".into(),
                    name,
                    start: true,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let end = c.wait(&op.id, |_| {}).await?;
            if end.state != pb::OperationState::Succeeded as i32 {
                bail!("{}: {}", op.vm, end.error);
            }
            anyhow::Ok(())
        });
    }
    let mut failed = 0;
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r) {
            eprintln!("  failed: {e:#}");
            failed += 1;
        }
    }
    let took = t.elapsed();
    // A failed clone is also not running: each guest counts once.
    Ok((took, failed.max(not_running(&names)), names))
}

/// The same by hand: one thread per guest.
fn raw_loop(
    template: &DomainXml,
    base_file: &Path,
    dir: &Path,
    run_no: usize,
    n: usize,
) -> Result<(Duration, usize, Vec<String>)> {
    let mut jobs = Vec::new();
    for i in 0..n {
        let name = format!("storm-d{run_no}-{i}");
        let disk = dir.join(format!("{name}-vda.qcow2"));
        let mut xml = template.clone();
        xml.name = name.clone();
        xml.uuid = None;
        for nic in &mut xml.devices.interfaces {
            nic.mac = Some(MacAddress {
                address: corral_agent::domains::random_mac(),
            });
        }
        xml.devices.disks[0].source = Some(DiskSource {
            file: Some(disk.display().to_string()),
        });
        let xml_path = dir.join(format!("{name}.xml"));
        std::fs::write(&xml_path, xml.to_xml()?)?;
        jobs.push((name, disk, xml_path));
    }
    let base = base_file.display().to_string();
    let t = Instant::now();
    let handles: Vec<_> = jobs
        .iter()
        .cloned()
        .map(|(name, disk, xml)| {
            let base = base.clone();
            std::thread::spawn(move || -> Result<()> {
                let disk = disk.display().to_string();
                let create = [
                    "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &base, &disk,
                ];
                run("qemu-img", &create)?;
                let uri = ["-q", "-c", "qemu:///system"];
                run(
                    "virsh",
                    &[&uri[..], &["define", &xml.display().to_string()]].concat(),
                )?;
                run("virsh", &[&uri[..], &["start", &name]].concat())?;
                Ok(())
            })
        })
        .collect();
    let mut failed = 0;
    for h in handles {
        if !matches!(h.join(), Ok(Ok(()))) {
            failed += 1;
        }
    }
    let took = t.elapsed();
    let names: Vec<String> = jobs.iter().map(|j| j.0.clone()).collect();
    let failures = failed.max(not_running(&names));
    for (name, disk, xml) in &jobs {
        let _ = virsh(&["destroy", name]);
        let _ = virsh(&["undefine", name]);
        let _ = std::fs::remove_file(disk);
        let _ = std::fs::remove_file(xml);
    }
    Ok((took, failures, names))
}

async fn remove_all(admin: &mut corral_client::CoordinatorClient, names: &[String]) -> Result<()> {
    for name in names {
        match admin.vms.remove_vm(pb::VmRef { name: name.clone() }).await {
            Ok(op) => {
                finish(admin, op.into_inner()).await?;
            }
            // A clone that failed left nothing.
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    if !real_host_ready() {
        return Ok(());
    }
    let (runs, n) = (
        env_num("CORRAL_BENCH_RUNS", 3),
        env_num("CORRAL_BENCH_STORM", 20),
    );
    cleanup_domains("storm-");
    let dir = tempfile::tempdir()?;
    let agent = AgentProc::start(&dir.path().join("agent"))?;
    // Twenty one-vCPU guests on a small host: more vCPUs promised than the default
    // overcommit (4 per core) allows on two cores, as a classroom host of tiny guests does.
    let coord = CoordProc::start_with(
        &dir.path().join("coord"),
        2000,
        6000,
        &[("CORRAL_COORD_CPU_OVERCOMMIT", "32")],
    )?;
    let mut admin = coord.client(&coord.admin_token).await?;
    add_host(&mut admin, "local", &agent.addr).await?;
    for _ in 0..100 {
        let hosts = admin.hosts.list_hosts(pb::ListHostsRequest {}).await?;
        if hosts.into_inner().hosts[0].state == pb::HostState::Up as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let op = admin
        .vms
        .create_base(pb::CreateBaseRequest {
            spec: Some(tiny_spec("storm-base", false)),
            host: "local".into(),
            idempotency_key: String::new(),
        })
        .await?
        .into_inner();
    finish(&mut admin, op).await?;

    // The raw side defines what the agent defines: its clone's definition, as libvirt keeps it.
    let op = admin
        .vms
        .clone_vm(pb::CloneVmRequest {
            base: "storm-base".into(),
            name: "storm-template".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    finish(&mut admin, op).await?;
    let template = DomainXml::parse(&virsh(&[
        "dumpxml",
        "--inactive",
        "--security-info",
        "storm-template",
    ])?)?;
    remove_all(&mut admin, &["storm-template".to_string()]).await?;
    let mut ac = agent.client().await?;
    let base = ac
        .bases
        .get_base(pb::DomainRef {
            name: "storm-base".into(),
        })
        .await?
        .into_inner();
    let base_file: PathBuf = agent.storage().join(&base.volumes[0].base_volume);
    let raw_dir = dir.path().join("raw");
    std::fs::create_dir_all(&raw_dir)?;

    let (mut coord_t, mut raw_t) = (Vec::new(), Vec::new());
    let (mut coord_fail, mut raw_fail) = (0, 0);
    // Run 0 warms caches up and is not counted.
    for i in 0..=runs {
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for coordinator in order {
            if coordinator {
                let (t, f, names) = through_coordinator(&admin, i, n).await?;
                println!(
                    "run {i}: coordinator, {n} at once: {:.0} ms, {f} failed",
                    ms(t)
                );
                if i > 0 {
                    coord_t.push(t);
                }
                coord_fail += f;
                remove_all(&mut admin, &names).await?;
                settle("storm-c");
            } else {
                let (t, f, _) = raw_loop(&template, &base_file, &raw_dir, i, n)?;
                println!(
                    "run {i}: raw parallel loop, {n} at once: {:.0} ms, {f} failed",
                    ms(t)
                );
                if i > 0 {
                    raw_t.push(t);
                }
                raw_fail += f;
                settle("storm-d");
            }
        }
    }
    let (mc, mr) = (median(&mut coord_t), median(&mut raw_t));
    let ratio = mc.as_secs_f64() / mr.as_secs_f64();
    let failures = coord_fail + raw_fail;
    println!(
        "{n} clone+starts at once, median of {runs} runs: coordinator {:.0} ms, raw loop {:.0} ms, ratio {ratio:.3} (target <= 1.2): {}; failures: coordinator {coord_fail}, raw {raw_fail} (target 0): {}",
        ms(mc),
        ms(mr),
        if ratio <= 1.2 { "MET" } else { "NOT MET" },
        if failures == 0 { "MET" } else { "NOT MET" }
    );
    let op = admin
        .vms
        .remove_base(pb::BaseRef {
            name: "storm-base".into(),
        })
        .await?
        .into_inner();
    finish(&mut admin, op).await?;
    if coord_fail > 0 {
        bail!("{coord_fail} clone+starts through the coordinator failed");
    }
    Ok(())
}
