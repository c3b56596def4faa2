//! Placement: which host a new VM goes to. Pure and deterministic.
//!
//! Filters drop hosts that cannot take the VM (down, disabled, not enough memory, vCPUs or
//! disk after overcommit, base missing); weighers score the rest (least loaded, most free
//! memory, the user's other VMs — Ravada's `balance_policy`). Ties go to the lowest host id,
//! so the same fleet and request always give the same answer. With `explain`, every rejected
//! host comes back with the reason it was rejected.

use std::collections::{HashMap, HashSet};

pub type HostId = u32;
pub type BaseId = u32;
pub type UserId = u32;

/// The bases a host holds: a few ids, kept inline (placement builds a view of every host for
/// every clone; a heap set per host would cost more than the decision).
pub type Bases = smallvec::SmallVec<[BaseId; 4]>;

/// What placement knows about one host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostView {
    pub id: HostId,
    pub up: bool,
    pub enabled: bool,
    pub vcpus_total: u32,
    pub vcpus_used: u32,
    pub memory_total: u64,
    pub memory_used: u64,
    pub disk_free: u64,
    /// Bases whose files are on this host.
    pub bases: Bases,
    /// Which hosts can share base files: hosts of one class run the same images (`qemu`
    /// for KVM and QEMU hosts, `test` for libvirt's test driver; empty when unknown).
    pub class: &'static str,
    /// How many VMs each user has on this host.
    pub vms_by_user: HashMap<UserId, u32>,
}

/// What the new VM needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub base: Option<BaseId>,
    pub vcpus: u32,
    pub memory: u64,
    pub disk: u64,
    pub user: UserId,
    /// Keep the user's VMs on the same host when possible.
    pub keep_together: bool,
    /// When the base can be copied to hosts that lack it: from which host classes, and
    /// the cost of the copy in score points.
    pub copy: Option<Copy>,
}

/// A base copy placement may count on: hosts of these classes hold it and are up.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Copy {
    pub classes: HashSet<&'static str>,
    pub penalty: f64,
}

/// Knobs of the scheduler.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// vCPUs promised per physical CPU.
    pub cpu_overcommit: f64,
    /// Memory promised per byte of RAM.
    pub memory_overcommit: f64,
    /// Disk kept free on every host.
    pub disk_reserve: u64,
    pub weight_least_loaded: f64,
    pub weight_free_memory: f64,
    pub weight_together: f64,
    /// Score points a base copy costs at `copy_scale` bytes and above (a quarter of it for
    /// the smallest base).
    pub weight_copy: f64,
    pub copy_scale: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            cpu_overcommit: 4.0,
            memory_overcommit: 1.0,
            disk_reserve: 1 << 30,
            weight_least_loaded: 1.0,
            weight_free_memory: 1.0,
            weight_together: 2.0,
            weight_copy: 1.0,
            copy_scale: 4 << 30,
        }
    }
}

/// Why a host was not chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    Down,
    Disabled,
    NotEnoughMemory { free: u64, needed: u64 },
    NotEnoughVcpus { free: u64, needed: u32 },
    NotEnoughDisk { free: u64, needed: u64 },
    BaseMissing(BaseId),
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Down => write!(f, "host is down"),
            Self::Disabled => write!(f, "host is disabled (maintenance)"),
            Self::NotEnoughMemory { free, needed } => {
                write!(
                    f,
                    "not enough memory: {} MiB free, {} MiB needed",
                    free >> 20,
                    needed >> 20
                )
            }
            Self::NotEnoughVcpus { free, needed } => {
                write!(f, "not enough vCPUs: {free} free, {needed} needed")
            }
            Self::NotEnoughDisk { free, needed } => {
                write!(
                    f,
                    "not enough disk: {} MiB free, {} MiB needed",
                    free >> 20,
                    needed >> 20
                )
            }
            // Ids are internal: the edge renders the base's name (`render`).
            Self::BaseMissing(_) => write!(f, "the base is not on this host"),
        }
    }
}

impl Rejection {
    /// The reason in words, with the base's name from `base_name`.
    pub fn render(&self, base_name: impl Fn(BaseId) -> Option<String>) -> String {
        match self {
            Self::BaseMissing(b) => match base_name(*b) {
                Some(n) => format!("base {n} is not on this host"),
                None => self.to_string(),
            },
            other => other.to_string(),
        }
    }
}

/// The outcome: the chosen host, and with `explain` every rejected host and why.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    pub chosen: Option<HostId>,
    pub score: f64,
    pub rejected: Vec<(HostId, Rejection)>,
}

/// The first filter a host fails, if any.
pub fn check(host: &HostView, req: &Request, policy: &Policy) -> Option<Rejection> {
    if !host.up {
        return Some(Rejection::Down);
    }
    if !host.enabled {
        return Some(Rejection::Disabled);
    }
    let mem_cap = (host.memory_total as f64 * policy.memory_overcommit) as u64;
    let mem_free = mem_cap.saturating_sub(host.memory_used);
    if mem_free < req.memory {
        return Some(Rejection::NotEnoughMemory {
            free: mem_free,
            needed: req.memory,
        });
    }
    let cpu_cap = (f64::from(host.vcpus_total) * policy.cpu_overcommit) as u64;
    let cpu_free = cpu_cap.saturating_sub(u64::from(host.vcpus_used));
    if cpu_free < u64::from(req.vcpus) {
        return Some(Rejection::NotEnoughVcpus {
            free: cpu_free,
            needed: req.vcpus,
        });
    }
    let disk_free = host.disk_free.saturating_sub(policy.disk_reserve);
    if disk_free < req.disk {
        return Some(Rejection::NotEnoughDisk {
            free: disk_free,
            needed: req.disk,
        });
    }
    if let Some(b) = req.base {
        let copyable = req
            .copy
            .as_ref()
            .is_some_and(|c| c.classes.contains(host.class));
        if !host.bases.contains(&b) && !copyable {
            return Some(Rejection::BaseMissing(b));
        }
    }
    None
}

impl Policy {
    /// What copying a base of `bytes` costs in score points.
    pub fn copy_penalty(&self, bytes: u64) -> f64 {
        let scale = self.copy_scale.max(1) as f64;
        self.weight_copy * (0.25 + 0.75 * (bytes as f64 / scale).min(1.0))
    }
}

/// The weighers' score of a host that passed the filters (higher is better).
pub fn score(host: &HostView, req: &Request, policy: &Policy) -> f64 {
    let cpu_cap = (f64::from(host.vcpus_total) * policy.cpu_overcommit).max(1.0);
    let load = f64::from(host.vcpus_used + req.vcpus) / cpu_cap;
    let mem_cap = (host.memory_total as f64 * policy.memory_overcommit).max(1.0);
    let mem_free = (mem_cap - (host.memory_used + req.memory) as f64).max(0.0) / mem_cap;
    let together = if req.keep_together && host.vms_by_user.get(&req.user).copied().unwrap_or(0) > 0
    {
        1.0
    } else {
        0.0
    };
    let copy = match (req.base, &req.copy) {
        (Some(b), Some(c)) if !host.bases.contains(&b) => c.penalty,
        _ => 0.0,
    };
    policy.weight_least_loaded * (1.0 - load.min(1.0))
        + policy.weight_free_memory * mem_free
        + policy.weight_together * together
        - copy
}

/// Chooses a host for `req`.
pub fn place(hosts: &[HostView], req: &Request, policy: &Policy, explain: bool) -> Decision {
    let mut best: Option<(f64, HostId)> = None;
    let mut rejected = Vec::new();
    for h in hosts {
        if let Some(why) = check(h, req, policy) {
            if explain {
                rejected.push((h.id, why));
            }
            continue;
        }
        let s = score(h, req, policy);
        let better = match best {
            None => true,
            Some((bs, bid)) => s > bs || (s == bs && h.id < bid),
        };
        if better {
            best = Some((s, h.id));
        }
    }
    if explain {
        rejected.sort_by_key(|(id, _)| *id);
    }
    Decision {
        chosen: best.map(|(_, id)| id),
        score: best.map_or(0.0, |(s, _)| s),
        rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host(id: HostId) -> HostView {
        HostView {
            id,
            up: true,
            enabled: true,
            vcpus_total: 8,
            vcpus_used: 0,
            memory_total: 16 << 30,
            memory_used: 0,
            disk_free: 100 << 30,
            bases: Bases::from_slice(&[1]),
            class: "qemu",
            vms_by_user: HashMap::new(),
        }
    }

    fn req() -> Request {
        Request {
            base: Some(1),
            vcpus: 2,
            memory: 2 << 30,
            disk: 1 << 30,
            user: 7,
            keep_together: false,
            copy: None,
        }
    }

    #[test]
    fn a_host_without_the_base_wins_only_when_worth_the_copy() {
        let p = Policy::default();
        let mut hosts: Vec<HostView> = (0..3).map(host).collect();
        hosts[1].bases.clear();
        hosts[2].bases.clear();
        hosts[2].class = "test";
        let copy = Copy {
            classes: HashSet::from(["qemu"]),
            penalty: p.copy_penalty(4 << 30),
        };
        let mut r = req();
        r.copy = Some(copy.clone());
        // Equal load: the holder wins; the test-driver host cannot take a qemu base.
        let d = place(&hosts, &r, &p, true);
        assert_eq!(d.chosen, Some(0));
        assert_eq!(d.rejected.len(), 1);
        assert!(d.rejected[0]
            .1
            .to_string()
            .contains("the base is not on this host"));
        let named = d.rejected[0]
            .1
            .render(|b| (b == 1).then(|| "web".to_string()));
        assert_eq!(named, "base web is not on this host");
        // The holder is nearly full: the copy is worth it.
        hosts[0].vcpus_used = 30;
        hosts[0].memory_used = 14 << 30;
        assert_eq!(place(&hosts, &r, &p, false).chosen, Some(1));
        // Without a copy source, hosts lacking the base are out.
        r.copy = None;
        assert_eq!(place(&hosts, &r, &p, false).chosen, Some(0));
        // A small base costs less than a big one.
        assert!(p.copy_penalty(100 << 20) < p.copy_penalty(10 << 30));
    }

    #[test]
    fn filters_say_why() {
        let p = Policy::default();
        let mut hosts: Vec<HostView> = (0..6).map(host).collect();
        hosts[0].up = false;
        hosts[1].enabled = false;
        hosts[2].memory_used = 15 << 30;
        hosts[3].vcpus_used = 31;
        hosts[4].disk_free = 1 << 30;
        hosts[5].bases.clear();
        let d = place(&hosts, &req(), &p, true);
        assert_eq!(d.chosen, None);
        let reasons: Vec<String> = d.rejected.iter().map(|(_, r)| r.to_string()).collect();
        assert!(reasons[0].contains("down"));
        assert!(reasons[1].contains("disabled"));
        assert!(reasons[2].contains("memory"));
        assert!(reasons[3].contains("vCPUs"));
        assert!(reasons[4].contains("disk"));
        assert!(reasons[5].contains("the base is not on this host"));
    }

    #[test]
    fn least_loaded_wins_and_together_when_asked() {
        let p = Policy::default();
        let mut hosts: Vec<HostView> = (0..3).map(host).collect();
        hosts[0].vcpus_used = 10;
        hosts[1].vcpus_used = 2;
        hosts[2].vcpus_used = 20;
        hosts[2].vms_by_user.insert(7, 3);
        assert_eq!(place(&hosts, &req(), &p, false).chosen, Some(1));
        let r = Request {
            keep_together: true,
            ..req()
        };
        assert_eq!(place(&hosts, &r, &p, false).chosen, Some(2));
    }

    #[test]
    fn ties_go_to_the_lowest_id() {
        let hosts: Vec<HostView> = [5, 3, 9].into_iter().map(host).collect();
        assert_eq!(
            place(&hosts, &req(), &Policy::default(), false).chosen,
            Some(3)
        );
    }

    fn arb_host() -> impl Strategy<Value = HostView> {
        (
            0u32..64,
            any::<bool>(),
            any::<bool>(),
            1u32..64,
            0u32..256,
            (1u64..64).prop_map(|g| g << 30),
            0u64..(64 << 30),
            0u64..(200 << 30),
            proptest::collection::hash_set(0u32..4, 0..4)
                .prop_map(|s| s.into_iter().collect::<Bases>()),
            proptest::collection::hash_map(0u32..4, 1u32..5, 0..4),
        )
            .prop_map(
                |(id, up, enabled, vt, vu, mt, mu, df, bases, users)| HostView {
                    id,
                    up,
                    enabled,
                    vcpus_total: vt,
                    vcpus_used: vu,
                    memory_total: mt,
                    memory_used: mu,
                    disk_free: df,
                    bases,
                    class: "qemu",
                    vms_by_user: users,
                },
            )
    }

    fn arb_req() -> impl Strategy<Value = Request> {
        (
            proptest::option::of(0u32..4),
            1u32..8,
            1u64..(8 << 30),
            0u64..(20 << 30),
            0u32..4,
            any::<bool>(),
        )
            .prop_map(|(base, vcpus, memory, disk, user, keep_together)| Request {
                base,
                vcpus,
                memory,
                disk,
                user,
                keep_together,
                copy: None,
            })
    }

    proptest! {
        #[test]
        fn chosen_host_passes_every_filter_and_scores_best(
            hosts in proptest::collection::vec(arb_host(), 0..40),
            r in arb_req(),
        ) {
            let p = Policy::default();
            let d = place(&hosts, &r, &p, true);
            let passing: Vec<&HostView> = hosts.iter().filter(|h| check(h, &r, &p).is_none()).collect();
            match d.chosen {
                None => prop_assert!(passing.is_empty()),
                Some(id) => {
                    let h = hosts.iter().find(|h| h.id == id && check(h, &r, &p).is_none());
                    prop_assert!(h.is_some());
                    for other in &passing {
                        prop_assert!(score(other, &r, &p) <= d.score);
                    }
                }
            }
            // Every rejection is true, and every host is either rejected or passing.
            for (id, why) in &d.rejected {
                prop_assert!(hosts.iter().any(|h| h.id == *id && check(h, &r, &p).as_ref() == Some(why)));
            }
            prop_assert_eq!(d.rejected.len() + passing.len(), hosts.len());
        }

        #[test]
        fn same_fleet_in_any_order_gives_the_same_host(
            hosts in proptest::collection::vec(arb_host(), 0..40),
            r in arb_req(),
            seed in any::<u64>(),
        ) {
            // Unique ids, so that "the same host" means one host.
            let mut seen = HashSet::new();
            let hosts: Vec<HostView> = hosts.into_iter().filter(|h| seen.insert(h.id)).collect();
            let p = Policy::default();
            let a = place(&hosts, &r, &p, false);
            let mut shuffled = hosts.clone();
            use rand::{seq::SliceRandom, SeedableRng};
            shuffled.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
            let b = place(&shuffled, &r, &p, false);
            prop_assert_eq!(a.chosen, b.chosen);
            prop_assert_eq!(place(&hosts, &r, &p, false), a);
        }
    }
}
