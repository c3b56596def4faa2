//! Plans: named sizes (memory, vCPUs, system disk) that admins manage and that clones and
//! new VMs take by name (`--plan`), as a hosting API's plans. A plan's sizes become the
//! order's before it is checked and placed, so placement reserves what the plan gives.

use corral_client::proto as pb;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{CoordError, Result};
use crate::orders::{CloneOrder, CreateOrder};
use crate::vms::Coordinator;

/// Disks are 1 MiB to 16 TiB (0: the base's or the spec's).
const DISK_RANGE: std::ops::RangeInclusive<u64> = (1 << 20)..=(16 << 40);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// The system disk's size in bytes (0: the base's, or the spec's).
    pub disk_bytes: u64,
}

impl Plan {
    pub fn check(&self) -> Result<()> {
        crate::names::check_name("plan", &self.name)?;
        corral_proto::rules::memory_mib(self.memory_mib)?;
        corral_proto::rules::vcpus(self.vcpus)?;
        if self.disk_bytes != 0 && !DISK_RANGE.contains(&self.disk_bytes) {
            return Err(CoordError::Invalid(format!(
                "a plan's disk of {} bytes is out of range: 1 MiB to 16 TiB (0: the base's)",
                self.disk_bytes
            )));
        }
        Ok(())
    }
}

/// A base's system disk size as recorded when it was prepared (bases prepared before
/// plans existed do not say).
fn system_disk_bytes(spec: &serde_json::Value) -> Option<u64> {
    spec.get("system_disk")?.as_u64().filter(|b| *b > 0)
}

impl Coordinator {
    pub async fn plans(&self) -> Result<Vec<Plan>> {
        self.blocking(|s| s.plans()).await
    }

    pub async fn plan(&self, name: &str) -> Result<Plan> {
        crate::names::check_name("plan", name)?;
        let n = name.to_string();
        self.blocking(move |s| s.plan(&n))
            .await
            .map_err(|e| match e {
                CoordError::NotFound(_) => CoordError::NotFound(format!("plan {name} not found")),
                e => e,
            })
    }

    /// A new plan (admin).
    pub async fn create_plan(&self, caller: &Caller, plan: Plan) -> Result<Plan> {
        caller.require_admin()?;
        plan.check()?;
        let p = plan.clone();
        self.blocking(move |s| s.insert_plan(&p)).await?;
        Ok(plan)
    }

    /// Removes a plan (admin); VMs made with it keep their sizes.
    pub async fn remove_plan(&self, caller: &Caller, name: &str) -> Result<Plan> {
        caller.require_admin()?;
        let plan = self.plan(name).await?;
        let n = name.to_string();
        self.blocking(move |s| s.remove_plan(&n)).await?;
        Ok(plan)
    }

    /// A clone's plan, made its sizes: refused with explicit sizes too, or when the base's
    /// system disk is larger than the plan gives (a clone is never smaller than its base).
    pub(crate) async fn apply_clone_plan(&self, order: &mut CloneOrder) -> Result<()> {
        let Some(name) = order.plan.clone() else {
            return Ok(());
        };
        if order.memory_mib > 0 || order.vcpus > 0 {
            return Err(CoordError::Invalid(format!(
                "plan {name} gives the memory and vCPUs: give a plan or sizes, not both"
            )));
        }
        let plan = self.plan(&name).await?;
        if plan.disk_bytes > 0 {
            crate::names::check_name("base", &order.base)?;
            let b = order.base.clone();
            if let Ok(spec) = self.blocking(move |s| s.base_spec(&b)).await {
                if let Some(need) = system_disk_bytes(&spec).filter(|n| *n > plan.disk_bytes) {
                    return Err(CoordError::FailedPrecondition(format!(
                        "plan {name} gives {} MiB of disk; base {}'s system disk is {} MiB",
                        plan.disk_bytes >> 20,
                        order.base,
                        need >> 20
                    )));
                }
            }
        }
        order.memory_mib = plan.memory_mib;
        order.vcpus = plan.vcpus;
        Ok(())
    }

    /// A new VM's plan, made its spec's memory, vCPUs and created system disk's size.
    pub(crate) async fn apply_create_plan(&self, order: &mut CreateOrder) -> Result<()> {
        let Some(name) = order.plan.clone() else {
            return Ok(());
        };
        let plan = self.plan(&name).await?;
        order.spec.memory_mib = plan.memory_mib;
        order.spec.vcpus = plan.vcpus;
        if plan.disk_bytes > 0 {
            for d in &mut order.spec.disks {
                if d.role == pb::VolumeRole::System as i32 && d.create_size_bytes > 0 {
                    d.create_size_bytes = plan.disk_bytes;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(memory_mib: u64, vcpus: u32, disk_bytes: u64) -> Plan {
        Plan {
            name: "small".into(),
            memory_mib,
            vcpus,
            disk_bytes,
        }
    }

    #[test]
    fn bad_plans_are_refused() {
        for (p, says) in [
            (plan(512, 1, 0), None),
            (plan(512, 1, 8 << 30), None),
            (plan(1, 1, 0), Some("out of range")),
            (plan(512, 0, 0), Some("out of range")),
            (plan(512, 1, 5), Some("disk of 5 bytes is out of range")),
            (plan(512, 1, u64::MAX), Some("out of range")),
            (
                Plan {
                    name: "../x".into(),
                    ..plan(512, 1, 0)
                },
                Some("plan"),
            ),
        ] {
            match (p.check(), says) {
                (Ok(()), None) => {}
                (Err(e), Some(s)) => assert!(e.to_string().contains(s), "{e}"),
                (r, s) => panic!("{p:?}: {r:?}, wanted {s:?}"),
            }
        }
    }

    #[test]
    fn the_system_disk_of_a_stored_spec() {
        let spec = serde_json::json!({ "vcpus": 1, "memory": 1, "system_disk": 64 });
        assert_eq!(system_disk_bytes(&spec), Some(64));
        assert_eq!(
            system_disk_bytes(&serde_json::json!({ "system_disk": 0 })),
            None
        );
        assert_eq!(system_disk_bytes(&serde_json::json!({})), None);
    }

    #[tokio::test]
    async fn a_clone_takes_its_plans_sizes() {
        use crate::fake::Kit;
        use crate::store::OpState;
        let kit = Kit::new(1).await;
        kit.base("web", None, &["h1"]).await;
        let small = Plan {
            name: "small".into(),
            memory_mib: 256,
            vcpus: 2,
            disk_bytes: 0,
        };
        let refused = kit.coord.create_plan(&kit.alice, small.clone()).await;
        assert!(matches!(refused, Err(CoordError::PermissionDenied(_))));
        kit.coord
            .create_plan(&kit.admin, small.clone())
            .await
            .unwrap();
        let again = kit.coord.create_plan(&kit.admin, small.clone()).await;
        assert!(
            matches!(again, Err(CoordError::AlreadyExists(_))),
            "{again:?}"
        );
        assert_eq!(
            kit.coord.plans().await.unwrap(),
            std::slice::from_ref(&small)
        );
        let order = |plan: &str, memory_mib: u64| CloneOrder {
            base: "web".into(),
            name: "p1".into(),
            plan: Some(plan.into()),
            memory_mib,
            ..Default::default()
        };
        let both = kit.coord.clone_vm(&kit.alice, order("small", 512)).await;
        assert!(matches!(both, Err(CoordError::Invalid(_))), "{both:?}");
        let unknown = kit.coord.clone_vm(&kit.alice, order("huge", 0)).await;
        assert!(
            matches!(&unknown, Err(CoordError::NotFound(m)) if m.contains("plan huge")),
            "{unknown:?}"
        );
        let op = kit
            .coord
            .clone_vm(&kit.alice, order("small", 0))
            .await
            .unwrap();
        assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
        let d = kit.agent("h1").domain("p1").unwrap();
        assert_eq!((d.memory_mib, d.vcpus), (256, 2));
        let vm = kit.coord.vm_for(&kit.alice, "p1").await.unwrap();
        assert_eq!(vm.spec["plan"], "small");
        // Removed, the plan is gone from lists; the VM keeps its sizes.
        kit.coord.remove_plan(&kit.admin, "small").await.unwrap();
        assert!(kit.coord.plans().await.unwrap().is_empty());
        assert_eq!(kit.agent("h1").domain("p1").unwrap().memory_mib, 256);
    }
}
