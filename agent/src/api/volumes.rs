use std::sync::Arc;

use corral_proto::v1 as pb;
use pb::volume_service_server::VolumeService;
use tonic::{Request, Response, Status};

use super::run;
use crate::agent::Agent;

#[derive(Debug, Clone)]
pub struct VolumeApi(pub Arc<Agent>);

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl VolumeService for VolumeApi {
    async fn create_volume(&self, req: Request<pb::CreateVolumeRequest>) -> R<pb::VolumeInfo> {
        let r = req.into_inner();
        run(&self.0, "CreateVolume", &r.name.clone(), move |a| {
            a.create_volume(&r)
        })
        .await
    }
    async fn create_overlay(&self, req: Request<pb::CreateOverlayRequest>) -> R<pb::VolumeInfo> {
        let r = req.into_inner();
        run(&self.0, "CreateOverlay", &r.name.clone(), move |a| {
            a.create_overlay(&r)
        })
        .await
    }
    async fn get_volume_info(&self, req: Request<pb::VolumeRef>) -> R<pb::VolumeInfo> {
        let n = req.into_inner().name;
        run(&self.0, "GetVolumeInfo", &n.clone(), move |a| {
            a.volume_info(&n)
        })
        .await
    }
    async fn list_volumes(&self, _: Request<pb::ListVolumesRequest>) -> R<pb::ListVolumesResponse> {
        run(&self.0, "ListVolumes", "", |a| {
            Ok(pb::ListVolumesResponse {
                volumes: a.list_volumes()?,
            })
        })
        .await
    }
    async fn copy_volume(&self, req: Request<pb::CopyVolumeRequest>) -> R<pb::VolumeInfo> {
        let r = req.into_inner();
        run(&self.0, "CopyVolume", &r.destination.clone(), move |a| {
            a.copy_volume(&r)
        })
        .await
    }
    async fn rebase_volume(&self, req: Request<pb::RebaseVolumeRequest>) -> R<pb::VolumeInfo> {
        let r = req.into_inner();
        run(&self.0, "RebaseVolume", &r.name.clone(), move |a| {
            a.rebase_volume(&r)
        })
        .await
    }
    async fn resize_volume(&self, req: Request<pb::ResizeVolumeRequest>) -> R<pb::VolumeInfo> {
        let r = req.into_inner();
        run(&self.0, "ResizeVolume", &r.name.clone(), move |a| {
            a.resize_volume(&r)
        })
        .await
    }
    async fn delete_volume(&self, req: Request<pb::VolumeRef>) -> R<pb::DeleteVolumeResponse> {
        let n = req.into_inner().name;
        run(&self.0, "DeleteVolume", &n.clone(), move |a| {
            a.delete_volume(&n)?;
            Ok(pb::DeleteVolumeResponse {})
        })
        .await
    }
}
