use std::sync::Arc;

use corral_proto::v1 as pb;
use pb::port_service_server::PortService;

use crate::agent::Agent;

#[derive(Debug, Clone)]
pub struct PortApi(pub Arc<Agent>);

rpcs! { PortApi: PortService, |a, r|;
    expose_port(pb::ExposePortRequest) -> pb::ExposedPort = "ExposePort" by r.domain => a.expose(&r);
    list_ports(pb::ListPortsRequest) -> pb::ListPortsResponse = "ListPorts" by r.domain
        => Ok(pb::ListPortsResponse { ports: a.list_ports(&r.domain)? });
    remove_port(pb::RemovePortRequest) -> pb::RemovePortResponse = "RemovePort" by r.domain
        => Ok(pb::RemovePortResponse { removed: a.remove_port(&r.domain, r.guest_port)? });
    remove_all_ports(pb::RemoveAllPortsRequest) -> pb::RemovePortResponse = "RemoveAllPorts" by r.domain
        => Ok(pb::RemovePortResponse { removed: a.remove_all_ports(&r.domain)? });
    restrict_display(pb::RestrictDisplayRequest) -> pb::RestrictDisplayResponse = "RestrictDisplay" by r.domain
        => a.restrict_display(&r.domain, &r.client_ip).map(|()| pb::RestrictDisplayResponse {});
}
