//! Where a VM goes: placement glue over the pure `placement` module (the fleet's last
//! heartbeats, the bases and where they are, the caller's VMs per host, reservations), and
//! the reservation that holds capacity for the VM being made.

use std::collections::HashMap;

use crate::auth::Caller;
use crate::error::{CoordError, Result};
use crate::names::check_name;
use crate::orders::CloneOrder;
use crate::placement;
use crate::vms::Coordinator;

/// A placement: the chosen host, every rejected host with its reason, and the VM's size.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    pub host: Option<String>,
    /// (host id, why not), typed: rendered with names only when asked ([`Placed::rejected`]),
    /// not for every clone placed among thousands of hosts.
    why_not: Vec<(placement::HostId, placement::Rejection)>,
    /// Host names by placement id (shared with the fleet's list), and base names by base id.
    names: std::sync::Arc<Vec<String>>,
    bases: Vec<String>,
    /// (vCPUs, bytes of memory).
    pub size: (u32, u64),
}

impl Placed {
    /// (host, why not), rendered with names.
    pub fn rejected(&self) -> Vec<(String, String)> {
        let host = |id: placement::HostId| self.names.get(id as usize).cloned().unwrap_or_default();
        let base_name = |b: placement::BaseId| self.bases.get(b as usize).cloned();
        self.why_not
            .iter()
            .map(|(id, why)| (host(*id), why.render(base_name)))
            .collect()
    }

    /// The chosen host, or the refusal that says why no host can take `what`.
    pub fn host_or_refusal(&self, what: &str) -> Result<String> {
        self.host.clone().ok_or_else(|| {
            let why: Vec<String> = self
                .rejected()
                .iter()
                .map(|(h, r)| format!("{h}: {r}"))
                .collect();
            CoordError::FailedPrecondition(format!(
                "no host can take {what}: {}",
                if why.is_empty() {
                    "no hosts".to_string()
                } else {
                    why.join("; ")
                }
            ))
        })
    }
}

impl Coordinator {
    /// The size of a base's VMs, asked once from a host that has it.
    pub(crate) async fn base_size(&self, base: &str, hosts: &[String]) -> Result<(u32, u64)> {
        if let Some(s) = self
            .base_sizes
            .lock()
            .ok()
            .and_then(|m| m.get(base).copied())
        {
            return Ok(s);
        }
        let b = base.to_string();
        let spec = self.blocking(move |s| s.base_spec(&b)).await?;
        let size = match (spec["vcpus"].as_u64(), spec["memory"].as_u64()) {
            (Some(v), Some(m)) => Some((u32::try_from(v).unwrap_or(u32::MAX), m)),
            _ => None,
        };
        let size = match size {
            Some(s) => s,
            None => self.ask_base_size(base, hosts).await?,
        };
        if let Ok(mut cache) = self.base_sizes.lock() {
            cache.insert(base.into(), size);
        }
        Ok(size)
    }

    /// Asks a host that has the base (for bases recorded without their size).
    pub(crate) async fn ask_base_size(&self, base: &str, hosts: &[String]) -> Result<(u32, u64)> {
        for h in hosts {
            let Ok(door) = self.hosts.door(h) else {
                continue;
            };
            if let Ok(d) = door.get_domain(base).await {
                return Ok((d.vcpus, d.memory_mib << 20));
            }
        }
        Err(CoordError::Unavailable(format!(
            "no host holding base {base} answers"
        )))
    }

    /// Where a clone of `base` goes: (chosen host, every rejected host with its reason, the
    /// clone's size), and the hosts that hold the base now.
    pub async fn place(
        &self,
        base: &str,
        owner: &str,
        keep_together: bool,
    ) -> Result<(Placed, Vec<String>)> {
        self.place_resized(base, owner, keep_together, (0, 0)).await
    }

    /// The same for a clone whose vCPUs or memory (bytes) override its base's (0 keeps them).
    pub async fn place_resized(
        &self,
        base: &str,
        owner: &str,
        keep_together: bool,
        over: (u32, u64),
    ) -> Result<(Placed, Vec<String>)> {
        let started = std::time::Instant::now();
        let (mine, holders) = self.fleet_of(owner, Some(base)).await?;
        let size = self.base_size(base, &holders).await?;
        let size = (
            if over.0 > 0 { over.0 } else { size.0 },
            if over.1 > 0 { over.1 } else { size.1 },
        );
        let placed = self.decide(mine, Some((base, &holders)), size, keep_together)?;
        crate::metrics::placement("total", started.elapsed().as_secs_f64());
        Ok((placed, holders))
    }

    /// Where a VM of `size` (vCPUs, bytes) goes.
    pub async fn place_sized(&self, size: (u32, u64), owner: &str) -> Result<Placed> {
        let (mine, _) = self.fleet_of(owner, None).await?;
        self.decide(mine, None, size, false)
    }

    /// What placement reads from the store: `owner`'s VM count per host, and the hosts
    /// holding `base` (NotFound for no such base).
    pub(crate) async fn fleet_of(
        &self,
        owner: &str,
        base: Option<&str>,
    ) -> Result<(Vec<(String, u32)>, Vec<String>)> {
        let (who, base) = (owner.to_string(), base.map(str::to_string));
        self.blocking(move |s| {
            let holders = match &base {
                Some(b) => s.base_holders(b)?,
                None => Vec::new(),
            };
            Ok((s.vm_counts_of(&who)?, holders))
        })
        .await
    }

    /// Places on the hosts' last heartbeats plus reservations; on a host holding `base`
    /// (its name and holders) when given.
    pub(crate) fn decide(
        &self,
        mine: Vec<(String, u32)>,
        base: Option<(&str, &[String])>,
        size: (u32, u64),
        keep_together: bool,
    ) -> Result<Placed> {
        let started = std::time::Instant::now();
        // The requested base is placement's base 0.
        const BASE: placement::BaseId = 0;
        // Reservations every heartbeat has since covered are dropped.
        let oldest_info = self.hosts.oldest_info_ms()?;
        let pending = self.reservations.counted(oldest_info)?;
        // Placement sees only the requesting user's VMs (user 0): all keep-together needs.
        let user = 0;
        let mine: HashMap<String, u32> = mine.into_iter().collect();
        let (views, names) =
            self.hosts
                .views(&mine, user, base.map(|(_, h)| (BASE, h)), &pending)?;
        // Hosts without the base can take the clone when a host of their class holding it is
        // up; the copy costs score in proportion to the base's size.
        let copy = base.map(|(b, _)| {
            // A few classes among thousands of hosts: deduplicated without hashing each.
            let mut classes: Vec<&'static str> = Vec::new();
            for v in views.iter().filter(|v| v.up && v.bases.contains(&BASE)) {
                if !classes.contains(&v.class) {
                    classes.push(v.class);
                }
            }
            let classes = classes.into_iter().collect();
            let bytes = self
                .base_bytes
                .lock()
                .ok()
                .and_then(|m| m.get(b).copied())
                .unwrap_or(self.policy.copy_scale);
            placement::Copy {
                classes,
                penalty: self.policy.copy_penalty(bytes),
            }
        });
        let req = placement::Request {
            copy: copy.filter(|c| !c.classes.is_empty()),
            base: base.map(|_| BASE),
            vcpus: size.0,
            memory: size.1,
            disk: 0,
            user,
            keep_together,
        };
        let d = placement::place(&views, &req, &self.policy, true);
        let host = d
            .chosen
            .map(|id| names.get(id as usize).cloned().unwrap_or_default());
        crate::metrics::placement("decide", started.elapsed().as_secs_f64());
        Ok(Placed {
            host,
            why_not: d.rejected,
            names,
            bases: base.map(|(b, _)| vec![b.to_string()]).unwrap_or_default(),
            size,
        })
    }

    /// Promises `size` on `host` to a VM being made, until the guard is dropped.
    pub(crate) fn reserve(&self, host: &str, size: (u32, u64)) -> crate::reservations::Reserved {
        self.reservations.reserve(host, size)
    }
}

impl Coordinator {
    /// Where a clone of `order.base` for the caller would go now (nothing is reserved).
    pub async fn explain_placement(&self, caller: &Caller, order: &CloneOrder) -> Result<Placed> {
        check_name("base", &order.base)?;
        // The clone's name is optional here; when given it must be one a clone could have.
        if !order.name.is_empty() {
            check_name("VM", &order.name)?;
        }
        self.may_clone(caller, &order.base).await?;
        let (placed, _) = self
            .place(&order.base, caller.name(), order.keep_together)
            .await?;
        Ok(placed)
    }
}
