use std::sync::Arc;

use corral_proto::v1 as pb;
use pb::base_service_server::BaseService;
use tonic::{Request, Response, Status};

use super::run;
use crate::agent::Agent;

#[derive(Debug, Clone)]
pub struct BaseApi(pub Arc<Agent>);

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl BaseService for BaseApi {
    async fn prepare_base(&self, req: Request<pb::DomainRef>) -> R<pb::Base> {
        let n = req.into_inner().name;
        run(&self.0, "PrepareBase", &n.clone(), move |a| {
            a.prepare_base(&n)
        })
        .await
    }
    async fn remove_base(&self, req: Request<pb::DomainRef>) -> R<pb::RemoveBaseResponse> {
        let n = req.into_inner().name;
        run(&self.0, "RemoveBase", &n.clone(), move |a| {
            a.remove_base(&n)?;
            Ok(pb::RemoveBaseResponse {})
        })
        .await
    }
    async fn get_base(&self, req: Request<pb::DomainRef>) -> R<pb::Base> {
        let n = req.into_inner().name;
        run(&self.0, "GetBase", &n.clone(), move |a| {
            crate::validate::name("base", &n)?;
            a.base(&n)
        })
        .await
    }
    async fn list_bases(&self, _: Request<pb::ListBasesRequest>) -> R<pb::ListBasesResponse> {
        run(&self.0, "ListBases", "", |a| {
            Ok(pb::ListBasesResponse { bases: a.bases()? })
        })
        .await
    }
    async fn clone_base(&self, req: Request<pb::CloneBaseRequest>) -> R<pb::Domain> {
        let r = req.into_inner();
        run(&self.0, "CloneBase", &r.name.clone(), move |a| {
            a.clone_base(&r)
        })
        .await
    }
    async fn list_clones(&self, req: Request<pb::DomainRef>) -> R<pb::ListClonesResponse> {
        let n = req.into_inner().name;
        run(&self.0, "ListClones", &n.clone(), move |a| {
            crate::validate::name("base", &n)?;
            Ok(pb::ListClonesResponse {
                clones: a.list_clones(&n)?,
            })
        })
        .await
    }
    async fn restore_clone(&self, req: Request<pb::DomainRef>) -> R<pb::Domain> {
        let n = req.into_inner().name;
        run(&self.0, "RestoreClone", &n.clone(), move |a| {
            a.restore_clone(&n)
        })
        .await
    }
    async fn spinoff_clone(&self, req: Request<pb::DomainRef>) -> R<pb::Domain> {
        let n = req.into_inner().name;
        run(&self.0, "SpinoffClone", &n.clone(), move |a| a.spinoff(&n)).await
    }
    async fn add_volume(&self, req: Request<pb::AddVolumeRequest>) -> R<pb::Domain> {
        let r = req.into_inner();
        run(&self.0, "AddVolume", &r.domain.clone(), move |a| {
            a.add_volume(&r)
        })
        .await
    }
    async fn export_base(&self, req: Request<pb::DomainRef>) -> R<pb::BaseExport> {
        let n = req.into_inner().name;
        run(&self.0, "ExportBase", &n.clone(), move |a| {
            a.export_base(&n)
        })
        .await
    }
    async fn import_base(&self, req: Request<pb::ImportBaseRequest>) -> R<pb::Base> {
        let r = req.into_inner();
        run(&self.0, "ImportBase", "", move |a| {
            a.import_base(&r.definition_xml)
        })
        .await
    }
    async fn export_domain(&self, req: Request<pb::DomainRef>) -> R<pb::BaseExport> {
        let n = req.into_inner().name;
        run(&self.0, "ExportDomain", &n.clone(), move |a| {
            a.export_domain(&n)
        })
        .await
    }
    async fn import_domain(&self, req: Request<pb::ImportBaseRequest>) -> R<pb::Domain> {
        let r = req.into_inner();
        run(&self.0, "ImportDomain", "", move |a| {
            a.import_domain(&r.definition_xml)
        })
        .await
    }
    async fn export_for_migration(&self, req: Request<pb::DomainRef>) -> R<pb::BaseExport> {
        let n = req.into_inner().name;
        run(&self.0, "ExportForMigration", &n.clone(), move |a| {
            a.export_for_migration(&n)
        })
        .await
    }
    async fn prepare_migration(
        &self,
        req: Request<pb::ImportBaseRequest>,
    ) -> R<pb::MigrationTarget> {
        let r = req.into_inner();
        run(&self.0, "PrepareMigration", "", move |a| {
            a.prepare_migration(&r)
        })
        .await
    }
    async fn migrate_domain(
        &self,
        req: Request<pb::MigrateDomainRequest>,
    ) -> R<pb::MigrateDomainResponse> {
        let r = req.into_inner();
        // A caller that goes away (a cancelled move) aborts libvirt's migration job: the
        // guest keeps running here.
        let abort = AbortOnDrop(Some((Arc::clone(&self.0), r.name.clone())));
        let out = run(&self.0, "MigrateDomain", &r.name.clone(), move |a| {
            a.migrate_domain(&r)?;
            Ok(pb::MigrateDomainResponse {})
        })
        .await;
        abort.disarm();
        out
    }
    async fn finish_migration(&self, req: Request<pb::DomainRef>) -> R<pb::Domain> {
        let n = req.into_inner().name;
        run(&self.0, "FinishMigration", &n.clone(), move |a| {
            a.finish_migration(&n)
        })
        .await
    }
}

/// Aborts a domain's migration job when dropped armed (the RPC was cancelled mid-way).
struct AbortOnDrop(Option<(Arc<Agent>, String)>);

impl AbortOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some((agent, name)) = self.0.take() {
            tokio::task::spawn_blocking(move || match agent.hv.abort_job(&name) {
                Ok(()) => tracing::info!(domain = %name, "migration aborted: the caller went away"),
                Err(e) => {
                    tracing::warn!(domain = %name, error = %e, "could not abort the migration")
                }
            });
        }
    }
}
