use std::sync::Arc;

use corral_client::proto as pb;
use pb::vm_access_service_server::VmAccessService;

use crate::auth::Caller;
use crate::error::{CoordError, Result};
use crate::vms::Coordinator;

#[derive(Debug, Clone)]
pub struct VmAccessApi(pub Arc<Coordinator>);

/// Users get a host port from the range; only admins choose one.
fn may_choose(who: &Caller, r: &pb::ExposePortRequest) -> Result<()> {
    if r.host_port != 0 && !who.is_admin() {
        return Err(CoordError::PermissionDenied(
            "only an admin may choose the host port; leave it 0 for one from the range".into(),
        ));
    }
    Ok(())
}

/// The ports of one VM the caller may touch, or of all of them when no VM is named.
async fn ports(c: &Coordinator, who: &Caller, vm: &str) -> Result<pb::ListPortsResponse> {
    let ports = if vm.is_empty() {
        c.ports_of(who).await?
    } else {
        c.door_for(who, vm).await?.list_ports(vm).await?
    };
    Ok(pb::ListPortsResponse { ports })
}

rpcs! { VmAccessApi: VmAccessService, |c, who, r|;
    expose_vm_port(pb::ExposePortRequest) -> pb::ExposedPort = "ExposeVmPort"
        => { may_choose(&who, &r)?; c.door_for(&who, &r.domain).await?.expose_port(r).await? };
    list_vm_ports(pb::ListPortsRequest) -> pb::ListPortsResponse = "ListVmPorts" => ports(c, &who, &r.domain).await?;
    remove_vm_port(pb::RemovePortRequest) -> pb::RemovePortResponse = "RemoveVmPort"
        => c.door_for(&who, &r.domain).await?.remove_port(r).await?;
    remove_all_vm_ports(pb::RemoveAllPortsRequest) -> pb::RemovePortResponse = "RemoveAllVmPorts"
        => c.door_for(&who, &r.domain).await?.remove_all_ports(&r.domain).await?;
    restrict_vm_display(pb::RestrictDisplayRequest) -> pb::RestrictDisplayResponse = "RestrictVmDisplay"
        => { c.door_for(&who, &r.domain).await?.restrict_display(r).await?; pb::RestrictDisplayResponse {} };
    get_vm_display(pb::VmRef) -> pb::DisplayInfo = "GetVmDisplay" => c.door_for(&who, &r.name).await?.display(&r.name).await?;
    get_vm_screenshot(pb::VmRef) -> pb::Screenshot = "GetVmScreenshot"
        => c.door_for(&who, &r.name).await?.screenshot(&r.name).await?;
}
