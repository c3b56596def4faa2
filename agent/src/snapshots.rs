//! libvirt snapshot trees: create, list with filters, navigate, revert, delete.

use corral_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use virt::sys;

use crate::agent::Agent;
use crate::error::{AgentError, Result};
use crate::validate;

/// `<domainsnapshot>` as Corral writes it and reads the parts it shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename = "domainsnapshot")]
pub struct SnapshotXml {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing)]
    pub state: Option<String>,
    #[serde(default, rename = "creationTime", skip_serializing)]
    pub creation_time: Option<i64>,
    #[serde(default, skip_serializing)]
    pub memory: Option<SnapshotMemory>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotMemory {
    #[serde(rename = "@snapshot", default)]
    pub snapshot: String,
}

/// libvirt list flags for a set of filters (all apply together), and whether the list is
/// of the current snapshot's descendants. (libvirt spells "roots" and "descendants" with the
/// same bit: at domain level it means roots, below a snapshot it means all descendants.)
pub fn filter_flags(filters: &[i32]) -> Result<(u32, bool)> {
    use pb::SnapshotFilter as F;
    let mut flags = 0;
    let mut roots = false;
    let mut below_current = false;
    for f in filters {
        flags |= match F::try_from(*f) {
            Ok(F::Unspecified) => 0,
            Ok(F::Roots) => {
                roots = true;
                sys::VIR_DOMAIN_SNAPSHOT_LIST_ROOTS
            }
            Ok(F::Leaves) => sys::VIR_DOMAIN_SNAPSHOT_LIST_LEAVES,
            Ok(F::NoLeaves) => sys::VIR_DOMAIN_SNAPSHOT_LIST_NO_LEAVES,
            Ok(F::DescendantsOfCurrent) => {
                below_current = true;
                0
            }
            Ok(F::Active) => sys::VIR_DOMAIN_SNAPSHOT_LIST_ACTIVE,
            Ok(F::Inactive) => sys::VIR_DOMAIN_SNAPSHOT_LIST_INACTIVE,
            Ok(F::DiskOnly) => sys::VIR_DOMAIN_SNAPSHOT_LIST_DISK_ONLY,
            Ok(F::Internal) => sys::VIR_DOMAIN_SNAPSHOT_LIST_INTERNAL,
            Ok(F::External) => sys::VIR_DOMAIN_SNAPSHOT_LIST_EXTERNAL,
            Ok(F::Metadata) => sys::VIR_DOMAIN_SNAPSHOT_LIST_METADATA,
            Ok(F::NoMetadata) => sys::VIR_DOMAIN_SNAPSHOT_LIST_NO_METADATA,
            Err(_) => return Err(AgentError::invalid(format!("unknown snapshot filter {f}"))),
        };
    }
    if roots && below_current {
        return Err(AgentError::invalid(
            "the roots and descendants-of-current filters cannot be combined",
        ));
    }
    Ok((flags, below_current))
}

impl Agent {
    pub fn create_snapshot(&self, req: &pb::CreateSnapshotRequest) -> Result<pb::Snapshot> {
        corral_proto::rules::snapshot(&req.domain, &req.name, &req.description)?;
        let _busy = self.busy(&req.domain)?;
        if self.hv.snapshot_names(&req.domain, 0)?.contains(&req.name) {
            return Err(AgentError::exists(format!(
                "domain {:?} already has a snapshot {:?}",
                req.domain, req.name
            )));
        }
        let xml = quick_xml::se::to_string(&SnapshotXml {
            name: req.name.clone(),
            description: (!req.description.is_empty()).then(|| req.description.clone()),
            ..SnapshotXml::default()
        })
        .map_err(|e| AgentError::internal(format!("snapshot XML: {e}")))?;
        let mut flags = sys::VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC;
        if req.disk_only {
            flags |= sys::VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY;
        }
        if req.halt {
            flags |= sys::VIR_DOMAIN_SNAPSHOT_CREATE_HALT;
        }
        if req.live {
            flags |= sys::VIR_DOMAIN_SNAPSHOT_CREATE_LIVE;
        }
        self.forget_definition(&req.domain);
        self.hv.snapshot_create(&req.domain, &xml, flags)?;
        tracing::info!(domain = %req.domain, snapshot = %req.name, "snapshot created");
        self.snapshot(&req.domain, &req.name)
    }

    pub fn snapshot(&self, domain: &str, name: &str) -> Result<pb::Snapshot> {
        validate::name("domain", domain)?;
        validate::name("snapshot", name)?;
        let facts = self.hv.snapshot(domain, name)?;
        let parsed: SnapshotXml = quick_xml::de::from_str(&facts.xml)
            .map_err(|e| AgentError::internal(format!("cannot read snapshot XML: {e}")))?;
        let external = parsed
            .memory
            .as_ref()
            .is_some_and(|m| m.snapshot == "external")
            || facts.xml.contains("snapshot='external'")
            || facts.xml.contains("snapshot=\"external\"");
        Ok(pb::Snapshot {
            domain: domain.into(),
            name: facts.name,
            description: parsed.description.unwrap_or_default(),
            parent: facts.parent.unwrap_or_default(),
            children: facts.children,
            is_current: facts.is_current,
            state: parsed.state.unwrap_or_default(),
            created_at_unix: parsed.creation_time.unwrap_or(0),
            has_metadata: facts.has_metadata,
            external,
        })
    }

    pub fn list_snapshots(&self, domain: &str, filters: &[i32]) -> Result<Vec<pb::Snapshot>> {
        validate::name("domain", domain)?;
        let (flags, below_current) = filter_flags(filters)?;
        let flags = flags | sys::VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL;
        let names = if below_current {
            match self.hv.snapshot_current(domain)? {
                Some(cur) => self.hv.snapshot_children(
                    domain,
                    &cur,
                    flags | sys::VIR_DOMAIN_SNAPSHOT_LIST_DESCENDANTS,
                )?,
                None => Vec::new(),
            }
        } else {
            self.hv.snapshot_names(domain, flags)?
        };
        names.iter().map(|n| self.snapshot(domain, n)).collect()
    }

    pub fn snapshot_children(
        &self,
        domain: &str,
        name: &str,
        recursive: bool,
    ) -> Result<Vec<pb::Snapshot>> {
        validate::name("domain", domain)?;
        validate::name("snapshot", name)?;
        let flags = if recursive {
            sys::VIR_DOMAIN_SNAPSHOT_LIST_DESCENDANTS
        } else {
            0
        };
        let names = self.hv.snapshot_children(domain, name, flags)?;
        names.iter().map(|n| self.snapshot(domain, n)).collect()
    }

    pub fn revert_snapshot(&self, req: &pb::RevertSnapshotRequest) -> Result<pb::Snapshot> {
        validate::name("domain", &req.domain)?;
        validate::name("snapshot", &req.name)?;
        let mut flags = match pb::RevertMode::try_from(req.mode) {
            Ok(pb::RevertMode::Unspecified | pb::RevertMode::AsSnapshot) => 0,
            Ok(pb::RevertMode::Running) => sys::VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING,
            Ok(pb::RevertMode::Paused) => sys::VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED,
            Err(_) => {
                return Err(AgentError::invalid(format!(
                    "unknown revert mode {}",
                    req.mode
                )))
            }
        };
        if req.force {
            flags |= sys::VIR_DOMAIN_SNAPSHOT_REVERT_FORCE;
        }
        let _busy = self.busy(&req.domain)?;
        let locked = self
            .read_domain(&req.domain)?
            .meta()
            .is_some_and(|m| m.locked);
        if locked {
            return Err(AgentError::precondition(format!(
                "domain {:?} is a base: its disks cannot change",
                req.domain
            )));
        }
        self.forget_definition(&req.domain);
        self.hv.snapshot_revert(&req.domain, &req.name, flags)?;
        tracing::info!(domain = %req.domain, snapshot = %req.name, "reverted");
        self.snapshot(&req.domain, &req.name)
    }

    /// Deletes per `mode`; returns the names that are gone.
    pub fn delete_snapshot(&self, req: &pb::DeleteSnapshotRequest) -> Result<Vec<String>> {
        validate::name("domain", &req.domain)?;
        validate::name("snapshot", &req.name)?;
        let (flags, with_self, with_children) = match pb::DeleteSnapshotMode::try_from(req.mode) {
            Ok(pb::DeleteSnapshotMode::Unspecified | pb::DeleteSnapshotMode::JustIt) => {
                (0, true, false)
            }
            Ok(pb::DeleteSnapshotMode::WithChildren) => {
                (sys::VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN, true, true)
            }
            Ok(pb::DeleteSnapshotMode::ChildrenOnly) => {
                (sys::VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN_ONLY, false, true)
            }
            Ok(pb::DeleteSnapshotMode::MetadataOnly) => {
                (sys::VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY, true, false)
            }
            Err(_) => {
                return Err(AgentError::invalid(format!(
                    "unknown delete mode {}",
                    req.mode
                )))
            }
        };
        let _busy = self.busy(&req.domain)?;
        let mut gone = Vec::new();
        if with_children {
            gone = self.hv.snapshot_children(
                &req.domain,
                &req.name,
                sys::VIR_DOMAIN_SNAPSHOT_LIST_DESCENDANTS
                    | sys::VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL,
            )?;
        }
        self.forget_definition(&req.domain);
        self.hv.snapshot_delete(&req.domain, &req.name, flags)?;
        if with_self {
            gone.insert(0, req.name.clone());
        }
        tracing::info!(domain = %req.domain, deleted = ?gone, "snapshots deleted");
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_xml_round_trip() {
        let x = quick_xml::se::to_string(&SnapshotXml {
            name: "s1".into(),
            description: Some("before <upgrade>".into()),
            ..SnapshotXml::default()
        })
        .unwrap();
        assert_eq!(
            x,
            "<domainsnapshot><name>s1</name><description>before &lt;upgrade&gt;</description></domainsnapshot>"
        );
        let libvirt = "<domainsnapshot><name>s1</name><state>running</state><parent><name>s0</name></parent><creationTime>1700000000</creationTime><memory snapshot='internal'/><domain type='test'><name>x</name></domain></domainsnapshot>";
        let p: SnapshotXml = quick_xml::de::from_str(libvirt).unwrap();
        assert_eq!(p.state.as_deref(), Some("running"));
        assert_eq!(p.creation_time, Some(1_700_000_000));
        assert_eq!(p.memory.unwrap().snapshot, "internal");
    }

    #[test]
    fn filters_combine() {
        let f = filter_flags(&[
            pb::SnapshotFilter::Leaves as i32,
            pb::SnapshotFilter::Active as i32,
        ])
        .unwrap();
        assert_eq!(
            f,
            (
                sys::VIR_DOMAIN_SNAPSHOT_LIST_LEAVES | sys::VIR_DOMAIN_SNAPSHOT_LIST_ACTIVE,
                false
            )
        );
        assert_eq!(filter_flags(&[4]).unwrap(), (0, true));
        assert!(filter_flags(&[99]).is_err());
        assert!(filter_flags(&[1, 4]).is_err());
    }
}
