use std::sync::Arc;

use corral_proto::v1 as pb;
use pb::volume_service_server::VolumeService;

use crate::agent::Agent;

#[derive(Debug, Clone)]
pub struct VolumeApi(pub Arc<Agent>);

rpcs! { VolumeApi: VolumeService, |a, r|;
    create_volume(pb::CreateVolumeRequest) -> pb::VolumeInfo = "CreateVolume" by r.name => a.create_volume(&r);
    create_overlay(pb::CreateOverlayRequest) -> pb::VolumeInfo = "CreateOverlay" by r.name => a.create_overlay(&r);
    get_volume_info(pb::VolumeRef) -> pb::VolumeInfo = "GetVolumeInfo" by r.name => a.volume_info(&r.name);
    list_volumes(pb::ListVolumesRequest) -> pb::ListVolumesResponse = "ListVolumes"
        => Ok(pb::ListVolumesResponse { volumes: a.list_volumes()? });
    copy_volume(pb::CopyVolumeRequest) -> pb::VolumeInfo = "CopyVolume" by r.destination => a.copy_volume(&r);
    rebase_volume(pb::RebaseVolumeRequest) -> pb::VolumeInfo = "RebaseVolume" by r.name => a.rebase_volume(&r);
    resize_volume(pb::ResizeVolumeRequest) -> pb::VolumeInfo = "ResizeVolume" by r.name => a.resize_volume(&r);
    delete_volume(pb::VolumeRef) -> pb::DeleteVolumeResponse = "DeleteVolume" by r.name
        => a.delete_volume(&r.name).map(|()| pb::DeleteVolumeResponse {});
}
