use std::sync::Arc;

use corral_client::proto as pb;
use pb::image_service_server::ImageService;

use crate::api::op_to_pb;
use crate::images::ImageRecord;
use crate::vms::Coordinator;

#[derive(Debug, Clone)]
pub struct ImageApi(pub Arc<Coordinator>);

fn image_to_pb((i, bases): (ImageRecord, Vec<String>)) -> pb::ImageVersion {
    pb::ImageVersion {
        name: i.name,
        version: i.version,
        virtual_size: i.virtual_size,
        file_size: i.file_size,
        checksum: i.checksum,
        created_unix_ms: i.created_ms,
        source_vm: i.source_vm,
        captured_by: i.captured_by,
        hosts: i.hosts,
        description: i.description,
        bases,
    }
}

fn hosts(hosts: Vec<String>) -> pb::RepositoryHosts {
    pb::RepositoryHosts { hosts }
}

rpcs! { ImageApi: ImageService, |c, who, r|;
    capture_image(pb::CaptureVmImageRequest) -> pb::Operation = "CaptureImage"
        => op_to_pb(&c.capture_image(&who, &r.vm, &r.image, r.description.clone()).await?);
    list_images(pb::ListImagesRequest) -> pb::ListImagesResponse = "ListImages"
        => pb::ListImagesResponse {
            images: c
                .images((!r.name.is_empty()).then(|| r.name.clone()))
                .await?
                .into_iter()
                .map(image_to_pb)
                .collect(),
        };
    get_image(pb::ImageRef) -> pb::ImageVersion = "GetImage"
        => image_to_pb(c.image(&r.name, r.version).await?);
    remove_image(pb::ImageRef) -> pb::Operation = "RemoveImage"
        => op_to_pb(&c.remove_image(&who, &r.name, r.version).await?);
    load_image(pb::LoadImageRequest) -> pb::Operation = "LoadImage"
        => op_to_pb(&c.load_image(&who, &r.name, r.version, &r.host, &r.base).await?);
    set_repository_host(pb::SetRepositoryHostRequest) -> pb::RepositoryHosts = "SetRepositoryHost"
        => hosts(c.set_repository_host(&who, &r.host, r.repository).await?);
    list_repository_hosts(pb::ListRepositoryHostsRequest) -> pb::RepositoryHosts = "ListRepositoryHosts"
        => hosts(c.repository_hosts().await?);
}
