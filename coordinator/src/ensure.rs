//! Named machines, get or create (EC2 staging's `get_server`): the caller's VM if it exists,
//! or a clone made now, in one call that is safe to repeat, also at once. Ensures are
//! serialised so a second call sees the first one's queued clone and answers with it.

use std::sync::Arc;

use crate::auth::Caller;
use crate::error::{CoordError, Result};
use crate::orders::CloneOrder;
use crate::store::{OpRecord, VmRecord};
use crate::vms::Coordinator;

/// What an ensure found or did.
#[derive(Debug, Clone)]
pub enum Ensured {
    /// The VM exists; `making` is the operation still holding it, if any.
    Exists {
        vm: VmRecord,
        making: Option<OpRecord>,
    },
    /// A clone of it is queued (by an earlier call) or was submitted now (`created`).
    Making { op: OpRecord, created: bool },
}

/// Kinds of operation that make a VM from a base.
const MAKING: [&str; 2] = ["clone", "handout"];

impl Coordinator {
    pub async fn ensure_vm(
        self: &Arc<Self>,
        caller: &Caller,
        order: CloneOrder,
    ) -> Result<Ensured> {
        // The clone's own checks first: the same answers as `clone` for bad input.
        corral_proto::rules::clone_base(&crate::clones::agent_request(&order, ""))?;
        crate::names::not_reserved(&order.name)?;
        let owner = order
            .owner
            .clone()
            .unwrap_or_else(|| caller.name().to_string());
        let _one_at_a_time = self.ensuring.lock().await;
        match self.vm_for(caller, &order.name).await {
            Ok(vm) => {
                if vm.base.as_deref() != Some(order.base.as_str()) || vm.owner != owner {
                    return Err(CoordError::FailedPrecondition(format!(
                        "VM {} exists, {}: not a clone of {} for {owner}",
                        vm.name,
                        match &vm.base {
                            Some(b) => format!("a clone of {b} owned by {}", vm.owner),
                            None => format!("no clone, owned by {}", vm.owner),
                        },
                        order.base
                    )));
                }
                let making = match self.ops.locked_by(&vm.name) {
                    Some(id) => self.ops.get(&id).await.ok(),
                    None => None,
                };
                return Ok(Ensured::Exists { vm, making });
            }
            Err(CoordError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        // A clone of it queued by an earlier call, not recorded yet.
        let queued = self.ops.list(true).await?.into_iter().find(|op| {
            MAKING.contains(&op.kind.as_str())
                && op.vm.as_deref() == Some(order.name.as_str())
                && op.user.as_deref() == Some(owner.as_str())
        });
        if let Some(op) = queued {
            return Ok(Ensured::Making { op, created: false });
        }
        let op = self.clone_vm(caller, order).await?;
        Ok(Ensured::Making { op, created: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::Kit;
    use crate::store::OpState;

    fn order(base: &str, name: &str) -> CloneOrder {
        CloneOrder {
            base: base.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn ensure_makes_once_then_finds_and_refuses_another_base() {
        let kit = Kit::new(1).await;
        kit.base("web", None, &["h1"]).await;
        kit.base("db", None, &["h1"]).await;
        let h1 = kit.agent("h1");
        h1.hold("clone_base");
        let first = kit
            .coord
            .ensure_vm(&kit.alice, order("web", "s1"))
            .await
            .unwrap();
        let Ensured::Making { op, created: true } = first else {
            panic!("{first:?}")
        };
        // Asked again while it is being made (held at the agent): the same operation.
        let again = kit
            .coord
            .ensure_vm(&kit.alice, order("web", "s1"))
            .await
            .unwrap();
        match again {
            Ensured::Making { op: o, created } => {
                assert_eq!((o.id.as_str(), created), (op.id.as_str(), false))
            }
            Ensured::Exists { making, .. } => {
                assert_eq!(making.map(|o| o.id), Some(op.id.clone()))
            }
        }
        h1.gate.notify_one();
        assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
        let found = kit
            .coord
            .ensure_vm(&kit.alice, order("web", "s1"))
            .await
            .unwrap();
        let Ensured::Exists { vm, making: None } = found else {
            panic!("{found:?}")
        };
        assert_eq!((vm.name.as_str(), vm.owner.as_str()), ("s1", "alice"));
        let clones = kit
            .calls()
            .iter()
            .filter(|c| c.contains("clone_base s1"))
            .count();
        assert_eq!(clones, 1, "made once");
        let e = kit
            .coord
            .ensure_vm(&kit.alice, order("db", "s1"))
            .await
            .unwrap_err();
        assert!(matches!(e, CoordError::FailedPrecondition(_)), "{e}");
        assert!(e.to_string().contains("a clone of web"), "{e}");
    }
}
