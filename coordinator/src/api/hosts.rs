use std::sync::Arc;

use corral_client::proto as pb;
use pb::host_admin_service_server::HostAdminService;

use crate::convert::host_to_pb;
use crate::error::{CoordError, Result};
use crate::vms::Coordinator;

#[derive(Debug, Clone)]
pub struct HostAdminApi(pub Arc<Coordinator>);

async fn list(c: &Coordinator) -> Result<Vec<pb::Host>> {
    Ok(c.host_list().await?.into_iter().map(host_to_pb).collect())
}

async fn host(c: &Coordinator, name: &str) -> Result<pb::Host> {
    list(c)
        .await?
        .into_iter()
        .find(|h| h.name == name)
        .ok_or_else(|| CoordError::NotFound(format!("host {name} not found")))
}

rpcs! { HostAdminApi: HostAdminService, |c, who, r|;
    add_host(pb::AddHostRequest) -> pb::Host = "AddHost"
        => { who.require_admin()?; c.hosts.add(&r.name, &r.address).await?; host(c, &r.name).await? };
    remove_host(pb::HostRef) -> pb::RemoveHostResponse = "RemoveHost"
        => { who.require_admin()?; c.hosts.remove(&r.name).await?; pb::RemoveHostResponse {} };
    set_host_enabled(pb::SetHostEnabledRequest) -> pb::Host = "SetHostEnabled"
        => { who.require_admin()?; c.hosts.set_enabled(&r.name, r.enabled).await?; host(c, &r.name).await? };
    list_hosts(pb::ListHostsRequest) -> pb::ListHostsResponse = "ListHosts"
        => { who.require_admin()?; pb::ListHostsResponse { hosts: list(c).await? } };
}
