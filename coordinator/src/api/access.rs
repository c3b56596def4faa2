use std::sync::Arc;

use corral_client::proto as pb;
use pb::vm_access_service_server::VmAccessService;
use tonic::{Request, Response, Status};

use super::pass;
use crate::auth::caller;
use crate::error::CoordError;
use crate::vms::Coordinator;

#[derive(Debug, Clone)]
pub struct VmAccessApi(pub Arc<Coordinator>);

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl VmAccessService for VmAccessApi {
    #[tracing::instrument(skip_all, fields(rpc = "ExposeVmPort"))]
    async fn expose_vm_port(&self, req: Request<pb::ExposePortRequest>) -> R<pb::ExposedPort> {
        if req.get_ref().host_port != 0 && !caller(&req)?.is_admin() {
            return Err(CoordError::PermissionDenied(
                "only an admin may choose the host port; leave it 0 for one from the range".into(),
            )
            .into());
        }
        pass(
            &self.0,
            req,
            |r| &r.domain,
            |d, r| async move { d.expose_port(r).await },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListVmPorts"))]
    async fn list_vm_ports(&self, req: Request<pb::ListPortsRequest>) -> R<pb::ListPortsResponse> {
        if !req.get_ref().domain.is_empty() {
            return pass(
                &self.0,
                req,
                |r| &r.domain,
                |d, r| async move {
                    Ok(pb::ListPortsResponse {
                        ports: d.list_ports(&r.domain).await?,
                    })
                },
            )
            .await;
        }
        let ports = self.0.ports_of(&caller(&req)?).await?;
        Ok(Response::new(pb::ListPortsResponse { ports }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "RemoveVmPort"))]
    async fn remove_vm_port(
        &self,
        req: Request<pb::RemovePortRequest>,
    ) -> R<pb::RemovePortResponse> {
        pass(
            &self.0,
            req,
            |r| &r.domain,
            |d, r| async move { d.remove_port(r).await },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "RemoveAllVmPorts"))]
    async fn remove_all_vm_ports(
        &self,
        req: Request<pb::RemoveAllPortsRequest>,
    ) -> R<pb::RemovePortResponse> {
        pass(
            &self.0,
            req,
            |r| &r.domain,
            |d, r| async move { d.remove_all_ports(&r.domain).await },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "RestrictVmDisplay"))]
    async fn restrict_vm_display(
        &self,
        req: Request<pb::RestrictDisplayRequest>,
    ) -> R<pb::RestrictDisplayResponse> {
        pass(
            &self.0,
            req,
            |r| &r.domain,
            |d, r| async move {
                d.restrict_display(r).await?;
                Ok(pb::RestrictDisplayResponse {})
            },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetVmDisplay"))]
    async fn get_vm_display(&self, req: Request<pb::VmRef>) -> R<pb::DisplayInfo> {
        pass(
            &self.0,
            req,
            |r| &r.name,
            |d, r| async move { d.display(&r.name).await },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetVmScreenshot"))]
    async fn get_vm_screenshot(&self, req: Request<pb::VmRef>) -> R<pb::Screenshot> {
        pass(
            &self.0,
            req,
            |r| &r.name,
            |d, r| async move { d.screenshot(&r.name).await },
        )
        .await
    }
}
