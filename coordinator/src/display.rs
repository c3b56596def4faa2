//! Display access through the coordinator: the remote-viewer file of a VM, and per base
//! whether asking for it restricts the display to the asking client's address (Ravada's
//! "display restricted to the client's IP"): the agent's firewall then lets only that
//! address reach the display's ports (plain and TLS), until another request moves it.

use std::net::IpAddr;

use corral_client::proto as pb;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{CoordError, Result};
use crate::vms::Coordinator;

/// A base's display policy, for its clones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisplayPolicy {
    /// Asking for the display file restricts the display to the caller's address.
    pub restrict_to_client: bool,
}

/// The IPv4 address a restriction names (an IPv4-mapped IPv6 address counts as IPv4).
pub fn restrictable(client: Option<IpAddr>) -> Result<std::net::Ipv4Addr> {
    let v4 = match client {
        Some(IpAddr::V4(a)) => Some(a),
        Some(IpAddr::V6(a)) => a.to_ipv4_mapped(),
        None => None,
    };
    v4.ok_or_else(|| {
        CoordError::FailedPrecondition(format!(
            "this display is restricted to the client's address, and the coordinator sees \
             no IPv4 address for this client ({}); connect over IPv4",
            client.map_or("none".into(), |a| a.to_string())
        ))
    })
}

impl Coordinator {
    /// A base's display policy (admin).
    pub async fn base_display(&self, caller: &Caller, base: &str) -> Result<DisplayPolicy> {
        caller.require_admin()?;
        crate::names::check_name("base", base)?;
        let b = base.to_string();
        self.blocking(move |s| s.base_display(&b))
            .await
            .map_err(|e| not_found(e, base))
    }

    pub async fn set_base_display(
        &self,
        caller: &Caller,
        base: &str,
        d: DisplayPolicy,
    ) -> Result<DisplayPolicy> {
        caller.require_admin()?;
        crate::names::check_name("base", base)?;
        let b = base.to_string();
        self.blocking(move |s| s.set_base_display(&b, &d))
            .await
            .map_err(|e| not_found(e, base))?;
        Ok(d)
    }

    /// A VM's display file for `client`, restricting the display to it first when the VM's
    /// base says so.
    pub async fn vm_display(
        &self,
        caller: &Caller,
        name: &str,
        client: Option<IpAddr>,
    ) -> Result<pb::DisplayInfo> {
        let v = self.door_for(caller, name).await?;
        let vm = self.vm_for(caller, name).await?;
        let policy = match vm.base.clone() {
            Some(b) => self
                .blocking(move |s| s.base_display(&b))
                .await
                .unwrap_or_default(),
            None => DisplayPolicy::default(),
        };
        if policy.restrict_to_client {
            let ip = restrictable(client)?;
            let req = pb::RestrictDisplayRequest {
                domain: v.domain.clone(),
                client_ip: ip.to_string(),
            };
            v.door.restrict_display(req).await?;
            tracing::info!(vm = %vm.name, client = %ip, "display restricted to its client");
        }
        v.door.display(&v.domain).await
    }
}

fn not_found(e: CoordError, base: &str) -> CoordError {
    match e {
        CoordError::NotFound(_) => CoordError::NotFound(format!("base {base} not found")),
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_ipv4_client_can_be_restricted_to() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(restrictable(Some(v4)).unwrap().to_string(), "10.1.2.3");
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(restrictable(Some(mapped)).unwrap().to_string(), "10.1.2.3");
        for c in [None, Some("2001:db8::1".parse().unwrap())] {
            let e = restrictable(c).unwrap_err();
            assert!(matches!(e, CoordError::FailedPrecondition(_)), "{e}");
            assert!(e.to_string().contains("IPv4"), "{e}");
        }
    }
}
