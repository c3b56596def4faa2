use std::sync::Arc;

use corral_proto::v1 as pb;
use pb::port_service_server::PortService;
use tonic::{Request, Response, Status};

use super::run;
use crate::agent::Agent;

#[derive(Debug, Clone)]
pub struct PortApi(pub Arc<Agent>);

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl PortService for PortApi {
    async fn expose_port(&self, req: Request<pb::ExposePortRequest>) -> R<pb::ExposedPort> {
        let r = req.into_inner();
        run(&self.0, "ExposePort", &r.domain.clone(), move |a| {
            a.expose(&r)
        })
        .await
    }
    async fn list_ports(&self, req: Request<pb::ListPortsRequest>) -> R<pb::ListPortsResponse> {
        let d = req.into_inner().domain;
        run(&self.0, "ListPorts", &d.clone(), move |a| {
            Ok(pb::ListPortsResponse {
                ports: a.list_ports(&d)?,
            })
        })
        .await
    }
    async fn remove_port(&self, req: Request<pb::RemovePortRequest>) -> R<pb::RemovePortResponse> {
        let r = req.into_inner();
        run(&self.0, "RemovePort", &r.domain.clone(), move |a| {
            Ok(pb::RemovePortResponse {
                removed: a.remove_port(&r.domain, r.guest_port)?,
            })
        })
        .await
    }
    async fn remove_all_ports(
        &self,
        req: Request<pb::RemoveAllPortsRequest>,
    ) -> R<pb::RemovePortResponse> {
        let d = req.into_inner().domain;
        run(&self.0, "RemoveAllPorts", &d.clone(), move |a| {
            Ok(pb::RemovePortResponse {
                removed: a.remove_all_ports(&d)?,
            })
        })
        .await
    }
    async fn restrict_display(
        &self,
        req: Request<pb::RestrictDisplayRequest>,
    ) -> R<pb::RestrictDisplayResponse> {
        let r = req.into_inner();
        run(&self.0, "RestrictDisplay", &r.domain.clone(), move |a| {
            a.restrict_display(&r.domain, &r.client_ip)?;
            Ok(pb::RestrictDisplayResponse {})
        })
        .await
    }
}
