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
    /// Host names by placement id, and base names by base id.
    names: Vec<String>,
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
        let (mine, bases) = self.fleet_of(owner).await?;
        let holders = bases
            .iter()
            .find(|(b, _)| b == base)
            .map(|(_, h)| h.clone())
            .ok_or_else(|| CoordError::NotFound(format!("base {base} not found")))?;
        let size = self.base_size(base, &holders).await?;
        let size = (
            if over.0 > 0 { over.0 } else { size.0 },
            if over.1 > 0 { over.1 } else { size.1 },
        );
        let placed = self.decide(mine, &bases, Some(base), size, keep_together)?;
        crate::metrics::placement("total", started.elapsed().as_secs_f64());
        Ok((placed, holders))
    }

    /// Where a VM of `size` (vCPUs, bytes) goes.
    pub async fn place_sized(&self, size: (u32, u64), owner: &str) -> Result<Placed> {
        let (mine, bases) = self.fleet_of(owner).await?;
        self.decide(mine, &bases, None, size, false)
    }

    /// What placement reads from the store: `owner`'s VM count per host, and the bases.
    pub(crate) async fn fleet_of(
        &self,
        owner: &str,
    ) -> Result<(Vec<(String, u32)>, Vec<(String, Vec<String>)>)> {
        let who = owner.to_string();
        self.blocking(move |s| Ok((s.vm_counts_of(&who)?, s.bases()?)))
            .await
    }

    /// Places on the hosts' last heartbeats plus reservations; on a host holding `base` when
    /// given.
    pub(crate) fn decide(
        &self,
        mine: Vec<(String, u32)>,
        bases: &[(String, Vec<String>)],
        base: Option<&str>,
        size: (u32, u64),
        keep_together: bool,
    ) -> Result<Placed> {
        let started = std::time::Instant::now();
        let base_ids: HashMap<String, u32> = bases
            .iter()
            .enumerate()
            .map(|(i, (b, _))| (b.clone(), i as u32))
            .collect();
        // Reservations every heartbeat has since covered are dropped.
        let oldest_info = self.hosts.oldest_info_ms()?;
        let pending = self.reservations.counted(oldest_info)?;
        // Placement sees only the requesting user's VMs (user 0): all keep-together needs.
        let user = 0;
        let mine: HashMap<String, u32> = mine.into_iter().collect();
        let (views, names) = self.hosts.views(&mine, user, bases, &base_ids, &pending)?;
        // Hosts without the base can take the clone when a host of their class holding it is
        // up; the copy costs score in proportion to the base's size.
        let copy = base
            .and_then(|b| base_ids.get(b).map(|id| (b, id)))
            .map(|(b, id)| {
                let classes: std::collections::HashSet<String> = views
                    .iter()
                    .filter(|v| v.up && v.bases.contains(id))
                    .map(|v| v.class.clone())
                    .collect();
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
            base: base.and_then(|b| base_ids.get(b).copied()),
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
            bases: bases.iter().map(|(b, _)| b.clone()).collect(),
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
