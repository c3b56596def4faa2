use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use corral_client::proto as pb;
use pb::vm_access_service_server::VmAccessService;
use tonic::{Request, Response, Status};

use super::pass;
use crate::auth::caller;
use crate::error::CoordError;
use crate::vms::{Coordinator, AGENT_QUICK_CALL};

#[derive(Debug, Clone)]
pub struct VmAccessApi(pub Arc<Coordinator>);

type R<T> = Result<Response<T>, Status>;

/// How long the agent may wait for a booting guest's address, as the agent defaults it.
fn expose_wait(wait_seconds: u32) -> Duration {
    let wait = if wait_seconds == 0 { 60 } else { wait_seconds };
    AGENT_QUICK_CALL + Duration::from_secs(u64::from(wait.min(600)))
}

#[tonic::async_trait]
impl VmAccessService for VmAccessApi {
    #[tracing::instrument(skip_all, fields(rpc = "ExposeVmPort"))]
    async fn expose_vm_port(&self, req: Request<pb::ExposePortRequest>) -> R<pb::ExposedPort> {
        let who = caller(&req)?;
        let r = req.into_inner();
        if r.host_port != 0 && !who.is_admin() {
            return Err(CoordError::PermissionDenied(
                "only an admin may choose the host port; leave it 0 for one from the range".into(),
            )
            .into());
        }
        let vm = r.domain.clone();
        let out = self
            .0
            .agent_call(&who, &vm, expose_wait(r.wait_seconds), |mut c| async move {
                c.ports.expose_port(r).await
            })
            .await?;
        Ok(Response::new(out))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListVmPorts"))]
    async fn list_vm_ports(&self, req: Request<pb::ListPortsRequest>) -> R<pb::ListPortsResponse> {
        let who = caller(&req)?;
        let r = req.into_inner();
        if !r.domain.is_empty() {
            let vm = r.domain.clone();
            let out = self
                .0
                .agent_call(&who, &vm, AGENT_QUICK_CALL, |mut c| async move {
                    c.ports.list_ports(r).await
                })
                .await?;
            return Ok(Response::new(out));
        }
        // Every VM the caller may touch, asked host by host; a down host is skipped.
        let vms = self.0.blocking(|s| s.vms()).await?;
        let mut by_host: BTreeMap<String, HashSet<String>> = BTreeMap::new();
        for v in vms.into_iter().filter(|v| who.may_touch(&v.owner)) {
            if let Some(h) = v.host {
                by_host.entry(h).or_default().insert(v.name);
            }
        }
        let mut ports = Vec::new();
        for (host, names) in by_host {
            let Ok(mut c) = self.0.client_for(&host) else {
                continue;
            };
            let call = c.ports.list_ports(pb::ListPortsRequest::default());
            if let Ok(Ok(l)) = tokio::time::timeout(AGENT_QUICK_CALL, call).await {
                ports.extend(
                    l.into_inner()
                        .ports
                        .into_iter()
                        .filter(|p| names.contains(&p.domain)),
                );
            }
        }
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
            AGENT_QUICK_CALL,
            |mut c, r| async move { c.ports.remove_port(r).await },
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
            AGENT_QUICK_CALL,
            |mut c, r| async move { c.ports.remove_all_ports(r).await },
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
            AGENT_QUICK_CALL,
            |mut c, r| async move { c.ports.restrict_display(r).await },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetVmDisplay"))]
    async fn get_vm_display(&self, req: Request<pb::VmRef>) -> R<pb::DisplayInfo> {
        pass(
            &self.0,
            req,
            |r| &r.name,
            AGENT_QUICK_CALL,
            |mut c, r| async move { c.domains.get_display(pb::DomainRef { name: r.name }).await },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetVmScreenshot"))]
    async fn get_vm_screenshot(&self, req: Request<pb::VmRef>) -> R<pb::Screenshot> {
        pass(
            &self.0,
            req,
            |r| &r.name,
            AGENT_QUICK_CALL * 3,
            |mut c, r| async move {
                c.domains
                    .get_screenshot(pb::DomainRef { name: r.name })
                    .await
            },
        )
        .await
    }
}
