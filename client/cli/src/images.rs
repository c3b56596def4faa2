//! `image` commands: the image repository (VCL's images). Admins capture, load and remove
//! versions and choose the repository hosts; everyone lists them.

use corral_client::{ClientError, CoordinatorClient};
use corral_proto::v1 as pb;

use crate::cli::{human, lines, Out};

#[derive(clap::Subcommand, Debug)]
pub enum ImageCmd {
    /// Capture a shut-off VM's system disk as the next version of IMAGE (admin).
    Capture {
        vm: String,
        image: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Every image's versions (or one image's).
    Ls { name: Option<String> },
    /// One version (the newest unless --version): fails when it does not exist.
    Show {
        name: String,
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Load a version onto a host as a new base (admin): synced there, defined, prepared.
    Load {
        name: String,
        #[arg(long, default_value_t = 0)]
        version: u32,
        #[arg(long)]
        host: String,
        #[arg(long)]
        base: String,
    },
    /// Remove one version from every repository host (admin; refused while bases use it).
    Rm { name: String, version: u32 },
    /// Make a host a repository host (on) or not (off) (admin).
    Repository {
        host: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// The repository hosts.
    Repositories,
}

fn image_line(i: &pb::ImageVersion) -> String {
    format!(
        "{:<20} v{:<3} size {} (file {}) {} from {} by {} on {}{}{}",
        i.name,
        i.version,
        human(i.virtual_size),
        human(i.file_size),
        i.checksum.chars().take(23).collect::<String>(),
        i.source_vm,
        i.captured_by,
        i.hosts.join(","),
        if i.bases.is_empty() {
            String::new()
        } else {
            format!(" bases: {}", i.bases.join(","))
        },
        if i.description.is_empty() {
            String::new()
        } else {
            format!(" — {}", i.description)
        }
    )
}

pub(crate) async fn image(
    c: &mut CoordinatorClient,
    out: &Out,
    no_wait: bool,
    cmd: ImageCmd,
) -> Result<(), ClientError> {
    use crate::coord_cli::follow;
    match cmd {
        ImageCmd::Capture {
            vm,
            image,
            description,
        } => {
            let req = pb::CaptureVmImageRequest {
                vm,
                image,
                description,
            };
            let op = c.images.capture_image(req).await?.into_inner();
            follow(c, out, no_wait, op).await?;
        }
        ImageCmd::Ls { name } => {
            let req = pb::ListImagesRequest {
                name: name.unwrap_or_default(),
            };
            let l = c.images.list_images(req).await?.into_inner();
            out.show(&l, |l| lines(&l.images, image_line));
        }
        ImageCmd::Show { name, version } => {
            let i = c
                .images
                .get_image(pb::ImageRef { name, version })
                .await?
                .into_inner();
            out.show(&i, image_line);
        }
        ImageCmd::Load {
            name,
            version,
            host,
            base,
        } => {
            let req = pb::LoadImageRequest {
                name,
                version,
                host,
                base,
            };
            let op = c.images.load_image(req).await?.into_inner();
            follow(c, out, no_wait, op).await?;
        }
        ImageCmd::Rm { name, version } => {
            if version == 0 {
                return Err(ClientError::Config(
                    "name the version to remove (see `corral image ls`)".into(),
                ));
            }
            let op = c
                .images
                .remove_image(pb::ImageRef { name, version })
                .await?
                .into_inner();
            follow(c, out, no_wait, op).await?;
        }
        ImageCmd::Repository { host, state } => {
            let req = pb::SetRepositoryHostRequest {
                host,
                repository: state == "on",
            };
            let h = c.images.set_repository_host(req).await?.into_inner();
            out.show(&h, |h| h.hosts.join("\n"));
        }
        ImageCmd::Repositories => {
            let h = c
                .images
                .list_repository_hosts(pb::ListRepositoryHostsRequest {})
                .await?
                .into_inner();
            out.show(&h, |h| h.hosts.join("\n"));
        }
    }
    Ok(())
}
