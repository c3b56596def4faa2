//! Start-up reconciliation: libvirt is the source of truth; guests are never touched.

use crate::agent::Agent;
use crate::error::Result;

/// What reconciliation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub leftovers_removed: usize,
    pub domains: usize,
    pub running: usize,
    pub port_owners_gone: usize,
    pub rules: usize,
}

impl Agent {
    /// Removes files of interrupted operations, drops port records of domains that are gone,
    /// and re-creates every firewall rule. Running guests keep running.
    pub fn reconcile(&self) -> Result<Report> {
        let leftovers = self.storage.remove_leftovers()?;
        for p in &leftovers {
            tracing::info!(file = %p.display(), "removed leftover of an interrupted operation");
        }
        let names = self.hv.names()?;
        let running = names
            .iter()
            .filter(|n| self.hv.state(n).is_ok_and(|s| s.is_active()))
            .count();
        let port_owners_gone = self.prune_ports()?;
        let rules = self.apply_ports()?;
        let report = Report {
            leftovers_removed: leftovers.len(),
            domains: names.len(),
            running,
            port_owners_gone,
            rules,
        };
        tracing::info!(?report, "reconciled with libvirt");
        Ok(report)
    }
}
