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
        let v = c.door_for(who, vm).await?;
        v.back_all(v.door.list_ports(&v.domain).await?)
    };
    Ok(pb::ListPortsResponse { ports })
}

rpcs! { VmAccessApi: VmAccessService, |c, who, r|;
    expose_vm_port(pb::ExposePortRequest) -> pb::ExposedPort = "ExposeVmPort"
        => { may_choose(&who, &r)?; let v = c.door_for(&who, &r.domain).await?; v.back(v.door.expose_port(v.out(r)).await?) };
    list_vm_ports(pb::ListPortsRequest) -> pb::ListPortsResponse = "ListVmPorts" => ports(c, &who, &r.domain).await?;
    remove_vm_port(pb::RemovePortRequest) -> pb::RemovePortResponse = "RemoveVmPort"
        => { let v = c.door_for(&who, &r.domain).await?; v.door.remove_port(v.out(r)).await? };
    remove_all_vm_ports(pb::RemoveAllPortsRequest) -> pb::RemovePortResponse = "RemoveAllVmPorts"
        => { let v = c.door_for(&who, &r.domain).await?; v.door.remove_all_ports(&v.domain).await? };
    restrict_vm_display(pb::RestrictDisplayRequest) -> pb::RestrictDisplayResponse = "RestrictVmDisplay"
        => { let v = c.door_for(&who, &r.domain).await?; v.door.restrict_display(v.out(r)).await?; pb::RestrictDisplayResponse {} };
    get_vm_screenshot(pb::VmRef) -> pb::Screenshot = "GetVmScreenshot"
        => { let v = c.door_for(&who, &r.name).await?; v.door.screenshot(&v.domain).await? };
    @more {
        // By hand: it needs the caller's address, which the other handlers do not.
        #[tracing::instrument(skip_all, fields(rpc = "GetVmDisplay"))]
        async fn get_vm_display(
            &self,
            req: tonic::Request<pb::VmRef>,
        ) -> std::result::Result<tonic::Response<pb::DisplayInfo>, tonic::Status> {
            let dry = crate::dry::asked("GetVmDisplay", &req)?;
            let who = crate::auth::caller(&req)?;
            let client = req.remote_addr().map(|a| a.ip());
            let r = req.into_inner();
            let c = &self.0;
            crate::dry::scope(dry, async move {
                Ok(tonic::Response::new(c.vm_display(&who, &r.name, client).await?))
            })
            .await
        }
    }
}
