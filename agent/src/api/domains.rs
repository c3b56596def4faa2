use std::sync::Arc;
use std::time::Duration;

use corral_proto::v1 as pb;
use pb::domain_service_server::DomainService;
use tonic::{Request, Response, Status};

use super::run;
use crate::agent::Agent;
use crate::error::AgentError;

#[derive(Debug, Clone)]
pub struct DomainApi(pub Arc<Agent>);

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl DomainService for DomainApi {
    async fn define_domain(&self, req: Request<pb::DefineDomainRequest>) -> R<pb::Domain> {
        let spec = req
            .into_inner()
            .spec
            .ok_or_else(|| Status::from(AgentError::invalid("a domain spec is required")))?;
        let name = spec.name.clone();
        run(&self.0, "DefineDomain", &name, move |a| a.define(&spec)).await
    }
    async fn start_domain(&self, req: Request<pb::DomainRef>) -> R<pb::Domain> {
        let n = req.into_inner().name;
        run(&self.0, "StartDomain", &n.clone(), move |a| a.start(&n)).await
    }
    async fn shutdown_domain(&self, req: Request<pb::ShutdownDomainRequest>) -> R<pb::Domain> {
        let r = req.into_inner();
        let timeout = Duration::from_secs(if r.timeout_seconds == 0 {
            60
        } else {
            r.timeout_seconds.into()
        });
        run(&self.0, "ShutdownDomain", &r.name.clone(), move |a| {
            a.shutdown(&r.name, timeout)
        })
        .await
    }
    async fn power_off_domain(&self, req: Request<pb::DomainRef>) -> R<pb::Domain> {
        let n = req.into_inner().name;
        run(&self.0, "PowerOffDomain", &n.clone(), move |a| {
            a.power_off(&n)
        })
        .await
    }
    async fn reset_domain(&self, req: Request<pb::DomainRef>) -> R<pb::Domain> {
        let n = req.into_inner().name;
        run(&self.0, "ResetDomain", &n.clone(), move |a| a.reset(&n)).await
    }
    async fn suspend_domain(&self, req: Request<pb::DomainRef>) -> R<pb::Domain> {
        let n = req.into_inner().name;
        run(&self.0, "SuspendDomain", &n.clone(), move |a| a.suspend(&n)).await
    }
    async fn resume_domain(&self, req: Request<pb::DomainRef>) -> R<pb::Domain> {
        let n = req.into_inner().name;
        run(&self.0, "ResumeDomain", &n.clone(), move |a| a.resume(&n)).await
    }
    async fn hibernate_domain(&self, req: Request<pb::DomainRef>) -> R<pb::Domain> {
        let n = req.into_inner().name;
        run(&self.0, "HibernateDomain", &n.clone(), move |a| {
            a.hibernate(&n)
        })
        .await
    }
    async fn get_domain(&self, req: Request<pb::DomainRef>) -> R<pb::Domain> {
        let n = req.into_inner().name;
        run(&self.0, "GetDomain", &n.clone(), move |a| a.view(&n)).await
    }
    async fn list_domains(
        &self,
        req: Request<pb::ListDomainsRequest>,
    ) -> R<pb::ListDomainsResponse> {
        let labels = req.into_inner().labels;
        run(&self.0, "ListDomains", "", move |a| {
            Ok(pb::ListDomainsResponse {
                domains: a.list(&labels)?,
            })
        })
        .await
    }
    async fn get_screenshot(&self, req: Request<pb::DomainRef>) -> R<pb::Screenshot> {
        let n = req.into_inner().name;
        run(&self.0, "GetScreenshot", &n.clone(), move |a| {
            a.screenshot(&n)
        })
        .await
    }
    async fn get_display(&self, req: Request<pb::DomainRef>) -> R<pb::DisplayInfo> {
        let n = req.into_inner().name;
        run(&self.0, "GetDisplay", &n.clone(), move |a| a.display(&n)).await
    }
    async fn get_domain_xml(&self, req: Request<pb::DomainRef>) -> R<pb::DomainXml> {
        let n = req.into_inner().name;
        run(&self.0, "GetDomainXml", &n.clone(), move |a| {
            Ok(pb::DomainXml {
                xml: a.domain_xml(&n)?,
            })
        })
        .await
    }
    async fn remove_domain(
        &self,
        req: Request<pb::RemoveDomainRequest>,
    ) -> R<pb::RemoveDomainResponse> {
        let r = req.into_inner();
        run(&self.0, "RemoveDomain", &r.name.clone(), move |a| {
            Ok(pb::RemoveDomainResponse {
                removed_volumes: a.remove(&r.name, r.remove_volumes)?,
            })
        })
        .await
    }
}
