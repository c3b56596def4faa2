use std::sync::Arc;

use corral_client::proto as pb;
use pb::host_admin_service_server::HostAdminService;
use tonic::{Request, Response, Status};

use crate::auth::caller;
use crate::vms::Coordinator;

#[derive(Debug, Clone)]
pub struct HostAdminApi(pub Arc<Coordinator>);

impl HostAdminApi {
    async fn host(&self, name: &str) -> Result<pb::Host, Status> {
        let hosts = self.list().await?;
        hosts
            .into_iter()
            .find(|h| h.name == name)
            .ok_or_else(|| Status::not_found(format!("host {name} not found")))
    }

    async fn list(&self) -> Result<Vec<pb::Host>, Status> {
        Ok(self.0.host_list().await?)
    }
}

#[tonic::async_trait]
impl HostAdminService for HostAdminApi {
    #[tracing::instrument(skip_all, fields(rpc = "AddHost"))]
    async fn add_host(
        &self,
        req: Request<pb::AddHostRequest>,
    ) -> Result<Response<pb::Host>, Status> {
        caller(&req)?.require_admin()?;
        let r = req.into_inner();
        self.0.hosts.add(&r.name, &r.address).await?;
        Ok(Response::new(self.host(&r.name).await?))
    }

    #[tracing::instrument(skip_all, fields(rpc = "RemoveHost"))]
    async fn remove_host(
        &self,
        req: Request<pb::HostRef>,
    ) -> Result<Response<pb::RemoveHostResponse>, Status> {
        caller(&req)?.require_admin()?;
        self.0.hosts.remove(&req.into_inner().name).await?;
        Ok(Response::new(pb::RemoveHostResponse {}))
    }

    #[tracing::instrument(skip_all, fields(rpc = "SetHostEnabled"))]
    async fn set_host_enabled(
        &self,
        req: Request<pb::SetHostEnabledRequest>,
    ) -> Result<Response<pb::Host>, Status> {
        caller(&req)?.require_admin()?;
        let r = req.into_inner();
        self.0.hosts.set_enabled(&r.name, r.enabled).await?;
        Ok(Response::new(self.host(&r.name).await?))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListHosts"))]
    async fn list_hosts(
        &self,
        req: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        caller(&req)?.require_admin()?;
        Ok(Response::new(pb::ListHostsResponse {
            hosts: self.list().await?,
        }))
    }
}
