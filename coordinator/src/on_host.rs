//! A VM on its host: the door to its agent and its domain's name there. A VM's domain is
//! usually named as the VM; one handed out from a pool keeps its pool clone's name (a running
//! domain cannot be renamed). Requests go out with the domain's name and answers come back
//! with the VM's, so callers only ever see VM names.

use std::sync::Arc;

use corral_client::proto as pb;

use crate::door::AgentDoor;

/// Messages that name a domain.
pub trait Named {
    fn domain_mut(&mut self) -> &mut String;
}

macro_rules! named {
    ($($t:ty),* $(,)?) => {
        $(impl Named for $t {
            fn domain_mut(&mut self) -> &mut String {
                &mut self.domain
            }
        })*
    };
}

named!(
    pb::ExposePortRequest,
    pb::ExposedPort,
    pb::RemovePortRequest,
    pb::RestrictDisplayRequest,
    pb::CreateSnapshotRequest,
    pb::RevertSnapshotRequest,
    pb::DeleteSnapshotRequest,
    pb::ListSnapshotsRequest,
    pb::ListChildrenRequest,
    pb::Snapshot,
);

/// A VM's door and names.
#[derive(Clone)]
pub struct VmDoor {
    pub door: Arc<dyn AgentDoor>,
    /// The domain on the host.
    pub domain: String,
    pub vm: String,
}

impl VmDoor {
    /// A request as the agent must get it.
    pub fn out<T: Named>(&self, mut t: T) -> T {
        *t.domain_mut() = self.domain.clone();
        t
    }

    /// An answer as the caller must see it.
    pub fn back<T: Named>(&self, mut t: T) -> T {
        if *t.domain_mut() == self.domain {
            *t.domain_mut() = self.vm.clone();
        }
        t
    }

    pub fn back_all<T: Named>(&self, v: Vec<T>) -> Vec<T> {
        v.into_iter().map(|t| self.back(t)).collect()
    }
}
