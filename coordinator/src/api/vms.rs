use std::sync::Arc;

use corral_client::proto as pb;
use pb::vm_service_server::VmService;
use tonic::{Request, Response, Status};

use super::op_to_pb;
use crate::auth::caller;
use crate::lifecycle::Action;
use crate::vms::Coordinator;

#[derive(Debug, Clone)]
pub struct VmApi(pub Arc<Coordinator>);

type R<T> = Result<Response<T>, Status>;

impl VmApi {
    async fn action(&self, req: Request<pb::VmRef>, action: Action) -> R<pb::Operation> {
        let who = caller(&req)?;
        let name = req.into_inner().name;
        let op = self.0.vm_action(&who, &name, action).await?;
        Ok(Response::new(op_to_pb(&op)))
    }
}

#[tonic::async_trait]
impl VmService for VmApi {
    #[tracing::instrument(skip_all, fields(rpc = "CreateBase"))]
    async fn create_base(&self, req: Request<pb::CreateBaseRequest>) -> R<pb::Operation> {
        let who = caller(&req)?;
        Ok(Response::new(op_to_pb(
            &self.0.create_base(&who, req.into_inner()).await?,
        )))
    }

    #[tracing::instrument(skip_all, fields(rpc = "CreateVm"))]
    async fn create_vm(&self, req: Request<pb::CreateVmRequest>) -> R<pb::Operation> {
        let who = caller(&req)?;
        Ok(Response::new(op_to_pb(
            &self.0.create_vm(&who, req.into_inner()).await?,
        )))
    }

    #[tracing::instrument(skip_all, fields(rpc = "PrepareBase"))]
    async fn prepare_base(&self, req: Request<pb::VmRef>) -> R<pb::Operation> {
        let who = caller(&req)?;
        Ok(Response::new(op_to_pb(
            &self.0.prepare_base(&who, &req.into_inner().name).await?,
        )))
    }

    #[tracing::instrument(skip_all, fields(rpc = "RemoveBase"))]
    async fn remove_base(&self, req: Request<pb::BaseRef>) -> R<pb::Operation> {
        let who = caller(&req)?;
        Ok(Response::new(op_to_pb(
            &self.0.remove_base(&who, &req.into_inner().name).await?,
        )))
    }

    #[tracing::instrument(skip_all, fields(rpc = "SyncBase"))]
    async fn sync_base(&self, req: Request<pb::SyncBaseRequest>) -> R<pb::Operation> {
        let who = caller(&req)?;
        Ok(Response::new(op_to_pb(
            &self.0.sync_base(&who, req.into_inner()).await?,
        )))
    }

    #[tracing::instrument(skip_all, fields(rpc = "RemoveBaseFromHost"))]
    async fn remove_base_from_host(&self, req: Request<pb::SyncBaseRequest>) -> R<pb::Operation> {
        let who = caller(&req)?;
        Ok(Response::new(op_to_pb(
            &self.0.remove_base_from_host(&who, req.into_inner()).await?,
        )))
    }

    #[tracing::instrument(skip_all, fields(rpc = "MoveVm"))]
    async fn move_vm(&self, req: Request<pb::MoveVmRequest>) -> R<pb::Operation> {
        let who = caller(&req)?;
        Ok(Response::new(op_to_pb(
            &self.0.move_vm(&who, req.into_inner()).await?,
        )))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListBases"))]
    async fn list_bases(
        &self,
        req: Request<pb::ListBaseSummariesRequest>,
    ) -> R<pb::ListBaseSummariesResponse> {
        caller(&req)?;
        Ok(Response::new(pb::ListBaseSummariesResponse {
            bases: self.0.base_summaries().await?,
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "CloneVm"))]
    async fn clone_vm(&self, req: Request<pb::CloneVmRequest>) -> R<pb::Operation> {
        let who = caller(&req)?;
        Ok(Response::new(op_to_pb(
            &self.0.clone_vm(&who, req.into_inner()).await?,
        )))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ExplainPlacement"))]
    async fn explain_placement(
        &self,
        req: Request<pb::CloneVmRequest>,
    ) -> R<pb::PlacementExplanation> {
        let who = caller(&req)?;
        let r = req.into_inner();
        crate::vms::check_name("base", &r.base)?;
        // The clone's name is optional here; when given it must be one a clone could have.
        if !r.name.is_empty() {
            crate::vms::check_name("VM", &r.name)?;
        }
        let (placed, _) = self.0.place(&r.base, who.name(), r.keep_together).await?;
        Ok(Response::new(pb::PlacementExplanation {
            chosen: placed.host.unwrap_or_default(),
            rejected: placed
                .rejected
                .into_iter()
                .map(|(host, reason)| pb::HostRejection { host, reason })
                .collect(),
        }))
    }

    async fn start_vm(&self, req: Request<pb::VmRef>) -> R<pb::Operation> {
        self.action(req, Action::Start).await
    }
    async fn shutdown_vm(&self, req: Request<pb::VmRef>) -> R<pb::Operation> {
        self.action(req, Action::Shutdown).await
    }
    async fn power_off_vm(&self, req: Request<pb::VmRef>) -> R<pb::Operation> {
        self.action(req, Action::PowerOff).await
    }
    async fn hibernate_vm(&self, req: Request<pb::VmRef>) -> R<pb::Operation> {
        self.action(req, Action::Hibernate).await
    }
    async fn restore_vm(&self, req: Request<pb::VmRef>) -> R<pb::Operation> {
        self.action(req, Action::Restore).await
    }
    async fn remove_vm(&self, req: Request<pb::VmRef>) -> R<pb::Operation> {
        self.action(req, Action::Remove).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetVm"))]
    async fn get_vm(&self, req: Request<pb::VmRef>) -> R<pb::Vm> {
        let who = caller(&req)?;
        let vm = self.0.vm_for(&who, &req.into_inner().name).await?;
        Ok(Response::new(self.0.vm_view(&vm)))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListVms"))]
    async fn list_vms(&self, req: Request<pb::ListVmsRequest>) -> R<pb::ListVmsResponse> {
        let who = caller(&req)?;
        let vms = self.0.vms_of(&who).await?;
        Ok(Response::new(pb::ListVmsResponse {
            vms: vms.iter().map(|v| self.0.vm_view(v)).collect(),
        }))
    }
}
