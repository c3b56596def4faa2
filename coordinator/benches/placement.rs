//! Placement decisions on synthetic fleets, printed in one run:
//! 1,000 hosts / 20,000 VMs (target p50 < 100 µs) and 10,000 hosts / 200,000 VMs
//! (target p50 < 1 ms). The fleets are seeded, so every run sees the same hosts.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use corral_coordinator::placement::{place, HostView, Policy, Request};
use rand::{rngs::StdRng, Rng, SeedableRng};

const BASES: u32 = 200;
const USERS: u32 = 20_000;

fn fleet(hosts: u32, vms: u32, rng: &mut StdRng) -> Vec<HostView> {
    let mut fleet: Vec<HostView> = (0..hosts)
        .map(|id| HostView {
            id,
            up: rng.gen_bool(0.98),
            enabled: rng.gen_bool(0.97),
            vcpus_total: *[16u32, 32, 64].get(rng.gen_range(0..3)).unwrap_or(&32),
            vcpus_used: 0,
            memory_total: rng.gen_range(64u64..=512) << 30,
            memory_used: 0,
            disk_free: rng.gen_range(200u64..=4000) << 30,
            bases: (0..rng.gen_range(5..40))
                .map(|_| rng.gen_range(0..BASES))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect(),
            vms_by_user: HashMap::new(),
            class: "qemu",
        })
        .collect();
    for _ in 0..vms {
        let h = &mut fleet[rng.gen_range(0..hosts as usize)];
        h.vcpus_used += rng.gen_range(1..=4);
        h.memory_used += rng.gen_range(1u64..=8) << 30;
        *h.vms_by_user.entry(rng.gen_range(0..USERS)).or_insert(0) += 1;
    }
    fleet
}

fn run(hosts: u32, vms: u32, target: Duration) -> bool {
    let mut rng = StdRng::seed_from_u64(u64::from(hosts) * 31 + u64::from(vms));
    let fleet = fleet(hosts, vms, &mut rng);
    let policy = Policy::default();
    let decisions = 2_000;
    let mut times = Vec::with_capacity(decisions);
    let mut placed = 0;
    let started = Instant::now();
    for _ in 0..decisions {
        let req = Request {
            base: Some(rng.gen_range(0..BASES)),
            vcpus: rng.gen_range(1..=4),
            memory: rng.gen_range(1u64..=8) << 30,
            disk: rng.gen_range(1u64..=40) << 30,
            user: rng.gen_range(0..USERS),
            keep_together: rng.gen_bool(0.3),
            copy: None,
        };
        let t = Instant::now();
        let d = place(&fleet, &req, &policy, false);
        times.push(t.elapsed());
        placed += usize::from(d.chosen.is_some());
    }
    let total = started.elapsed();
    times.sort();
    let p50 = times[times.len() / 2];
    let p99 = times[times.len() * 99 / 100];
    let met = p50 < target;
    println!(
        "{hosts:>6} hosts / {vms:>7} VMs: p50 {:>8.1} µs, p99 {:>8.1} µs, {:>9.0} decisions/s ({placed}/{decisions} placed); target p50 < {} µs: {}",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        decisions as f64 / total.as_secs_f64(),
        target.as_micros(),
        if met { "MET" } else { "NOT MET" }
    );
    met
}

fn main() {
    run(1_000, 20_000, Duration::from_micros(100));
    run(10_000, 200_000, Duration::from_millis(1));
}
