use std::sync::Arc;

use corral_proto::v1 as pb;
use pb::base_service_server::BaseService;
use tonic::{Request, Response, Status};

use super::run;
use crate::agent::Agent;

#[derive(Debug, Clone)]
pub struct BaseApi(pub Arc<Agent>);

/// A base's name, checked (reads take a name no write would have accepted as not found).
fn base_name(n: &str) -> crate::error::Result<&str> {
    crate::validate::name("base", n)?;
    Ok(n)
}

rpcs! { BaseApi: BaseService, |a, r|;
    prepare_base(pb::DomainRef) -> pb::Base = "PrepareBase" by r.name => a.prepare_base(&r.name);
    remove_base(pb::DomainRef) -> pb::RemoveBaseResponse = "RemoveBase" by r.name
        => a.remove_base(&r.name).map(|()| pb::RemoveBaseResponse {});
    get_base(pb::DomainRef) -> pb::Base = "GetBase" by r.name => a.base(base_name(&r.name)?);
    list_bases(pb::ListBasesRequest) -> pb::ListBasesResponse = "ListBases"
        => Ok(pb::ListBasesResponse { bases: a.bases()? });
    clone_base(pb::CloneBaseRequest) -> pb::Domain = "CloneBase" by r.name => a.clone_base(&r);
    list_clones(pb::DomainRef) -> pb::ListClonesResponse = "ListClones" by r.name
        => Ok(pb::ListClonesResponse { clones: a.list_clones(base_name(&r.name)?)? });
    restore_clone(pb::DomainRef) -> pb::Domain = "RestoreClone" by r.name => a.restore_clone(&r.name);
    spinoff_clone(pb::DomainRef) -> pb::Domain = "SpinoffClone" by r.name => a.spinoff(&r.name);
    add_volume(pb::AddVolumeRequest) -> pb::Domain = "AddVolume" by r.domain => a.add_volume(&r);
    resize_domain_volume(pb::ResizeDomainVolumeRequest) -> pb::VolumeInfo = "ResizeDomainVolume" by r.domain
        => a.resize_domain_volume(&r);
    copy_domain_volume(pb::CopyDomainVolumeRequest) -> pb::VolumeInfo = "CopyDomainVolume" by r.domain
        => a.copy_domain_volume(&r);
    attach_volume(pb::AttachVolumeRequest) -> pb::Domain = "AttachVolume" by r.domain => a.attach_volume(&r);
    detach_volume(pb::AttachVolumeRequest) -> pb::Domain = "DetachVolume" by r.domain => a.detach_volume(&r);
    snapshot_volume(pb::SnapshotVolumeRequest) -> pb::VolumeInfo = "SnapshotVolume" by r.domain
        => a.snapshot_volume(&r);
    restore_volume(pb::RestoreVolumeRequest) -> pb::VolumeInfo = "RestoreVolume" by r.domain
        => a.restore_volume(&r);
    capture_image(pb::CaptureImageRequest) -> pb::CapturedImage = "CaptureImage" by r.domain
        => a.capture_image(&r);
    define_from_image(pb::DefineFromImageRequest) -> pb::Domain = "DefineFromImage" by r.name
        => a.define_from_image(&r);
    rebase_clone(pb::RebaseCloneRequest) -> pb::Domain = "RebaseClone" by r.name
        => a.rebase_clone(&r.name, &r.base);
    remove_volume(pb::RemoveVolumeRequest) -> pb::Domain = "RemoveVolume" by r.domain
        => a.remove_volume(&r.domain, &r.volume);
    export_base(pb::DomainRef) -> pb::BaseExport = "ExportBase" by r.name => a.export_base(&r.name);
    import_base(pb::ImportBaseRequest) -> pb::Base = "ImportBase" => a.import_base(&r.definition_xml);
    export_domain(pb::DomainRef) -> pb::BaseExport = "ExportDomain" by r.name => a.export_domain(&r.name);
    import_domain(pb::ImportBaseRequest) -> pb::Domain = "ImportDomain" => a.import_domain(&r.definition_xml);
    export_for_migration(pb::DomainRef) -> pb::BaseExport = "ExportForMigration" by r.name
        => a.export_for_migration(&r.name);
    prepare_migration(pb::ImportBaseRequest) -> pb::MigrationTarget = "PrepareMigration"
        => a.prepare_migration(&r);
    finish_migration(pb::DomainRef) -> pb::Domain = "FinishMigration" by r.name => a.finish_migration(&r.name);
    @more {
        async fn migrate_domain(
            &self,
            req: Request<pb::MigrateDomainRequest>,
        ) -> Result<Response<pb::MigrateDomainResponse>, Status> {
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
