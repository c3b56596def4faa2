//! The image repository, as Apache VCL keeps images: a shut-off VM's system disk captured into
//! a named, versioned, flattened file with its size, checksum, time and source; kept on the
//! repository hosts an admin chose (the agents' volume sync carries it there); loaded onto any
//! host by syncing it and preparing it there as a base. A version goes only when no base made
//! from it is left.

use std::sync::Arc;

use corral_client::proto as pb;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{CoordError, Result};
use crate::names::check_name;
use crate::operations::{OpCtx, OpError, Submit};
use crate::store::OpRecord;
use crate::vms::{work, Coordinator};

/// Longest image name (its file name, `image-NAME-vN.qcow2`, stays a valid volume name).
const MAX_IMAGE_NAME: usize = 40;

/// One version of an image, as the store keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    pub version: u32,
    /// The file's name on every host that holds it.
    pub file: String,
    pub virtual_size: u64,
    pub file_size: u64,
    pub checksum: String,
    pub created_ms: i64,
    pub source_vm: String,
    pub captured_by: String,
    #[serde(default)]
    pub description: String,
    /// Repository hosts holding the file.
    pub hosts: Vec<String>,
    /// The VM's definition with only its system disk (the agent's CapturedImage).
    pub definition_xml: String,
}

impl ImageRecord {
    /// How bases record it.
    pub fn tag(&self) -> String {
        format!("{}:{}", self.name, self.version)
    }
}

/// The file a version lives in.
pub fn file_name(name: &str, version: u32) -> String {
    format!("image-{name}-v{version}.qcow2")
}

/// An image name: a name by the agents' rules, short enough for its file names.
pub fn check_image_name(name: &str) -> Result<()> {
    check_name("image", name)?;
    if name.len() > MAX_IMAGE_NAME {
        return Err(CoordError::Invalid(format!(
            "invalid image name {name:?}: it is {} characters long, at most {MAX_IMAGE_NAME} \
             are allowed",
            name.len()
        )));
    }
    Ok(())
}

/// The version asked for (the newest for 0) among every version of every image (pure).
pub fn pick(all: &[ImageRecord], name: &str, version: u32) -> Result<ImageRecord> {
    let mut of: Vec<&ImageRecord> = all.iter().filter(|i| i.name == name).collect();
    of.sort_by_key(|i| i.version);
    let found = if version == 0 {
        of.last().copied()
    } else {
        of.iter().find(|i| i.version == version).copied()
    };
    found.cloned().ok_or_else(|| {
        CoordError::NotFound(if version == 0 || of.is_empty() {
            format!("image {name} not found")
        } else {
            format!(
                "image {name} has no version {version} (it has {})",
                of.iter()
                    .map(|i| i.version.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    })
}

/// The version a new capture of `name` gets (pure).
pub fn next_version(all: &[ImageRecord], name: &str) -> u32 {
    all.iter()
        .filter(|i| i.name == name)
        .map(|i| i.version)
        .max()
        .unwrap_or(0)
        + 1
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Coordinator {
    /// Every version (of one image when `name` is given), with the bases made from each.
    pub async fn images(&self, name: Option<String>) -> Result<Vec<(ImageRecord, Vec<String>)>> {
        if let Some(n) = &name {
            check_image_name(n)?;
        }
        let (all, used) = self
            .blocking(|s| Ok((s.images()?, s.base_images()?)))
            .await?;
        Ok(all
            .into_iter()
            .filter(|i| name.as_ref().is_none_or(|n| &i.name == n))
            .map(|i| {
                let tag = i.tag();
                let bases = used
                    .iter()
                    .filter(|(_, t)| t == &tag)
                    .map(|(b, _)| b.clone())
                    .collect();
                (i, bases)
            })
            .collect())
    }

    /// One version (the newest for 0).
    pub async fn image(&self, name: &str, version: u32) -> Result<(ImageRecord, Vec<String>)> {
        check_image_name(name)?;
        let all = self.images(Some(name.to_string())).await?;
        let records: Vec<ImageRecord> = all.iter().map(|(i, _)| i.clone()).collect();
        let i = pick(&records, name, version)?;
        let bases = all
            .into_iter()
            .find(|(r, _)| r.version == i.version)
            .map(|(_, b)| b)
            .unwrap_or_default();
        Ok((i, bases))
    }

    pub async fn repository_hosts(&self) -> Result<Vec<String>> {
        self.blocking(|s| s.repository_hosts()).await
    }

    /// Makes a known host a repository host, or not (admins; refused off while it holds
    /// image versions).
    pub async fn set_repository_host(
        &self,
        caller: &Caller,
        host: &str,
        on: bool,
    ) -> Result<Vec<String>> {
        check_name("host", host)?;
        caller.require_admin()?;
        self.hosts.address(host)?;
        if !on {
            let h = host.to_string();
            let held: Vec<String> = self
                .blocking(|s| s.images())
                .await?
                .into_iter()
                .filter(|i| i.hosts.contains(&h))
                .map(|i| i.tag())
                .collect();
            if !held.is_empty() {
                return Err(CoordError::FailedPrecondition(format!(
                    "host {host} holds image version(s) {}: remove them first",
                    held.join(", ")
                )));
            }
            let h = host.to_string();
            let backups: Vec<String> = self
                .blocking(|s| s.backups())
                .await?
                .into_iter()
                .filter(|b| b.hosts.contains(&h))
                .map(|b| b.tag())
                .collect();
            if !backups.is_empty() {
                return Err(CoordError::FailedPrecondition(format!(
                    "host {host} holds {}: remove them first",
                    backups.join(", ")
                )));
            }
        }
        let h = host.to_string();
        self.blocking(move |s| {
            s.set_repository_host(&h, on)?;
            s.repository_hosts()
        })
        .await
    }

    /// Up repository hosts, all of them (an image goes to each).
    pub(crate) async fn repository_doors(&self) -> Result<Vec<String>> {
        let repo = self.repository_hosts().await?;
        if repo.is_empty() {
            return Err(CoordError::FailedPrecondition(
                "there is no repository host: an admin makes one with `corral image repository \
                 HOST on`"
                    .into(),
            ));
        }
        for h in &repo {
            self.hosts.door(h).map_err(|e| {
                CoordError::Unavailable(format!("repository host {h} is not reachable: {e}"))
            })?;
        }
        Ok(repo)
    }

    /// Captures a shut-off VM's system disk as the next version of `image` (admins).
    pub async fn capture_image(
        self: &Arc<Self>,
        caller: &Caller,
        vm: &str,
        image: &str,
        description: String,
    ) -> Result<OpRecord> {
        check_name("VM", vm)?;
        check_image_name(image)?;
        if description.len() > 1024 {
            return Err(CoordError::Invalid(
                "an image's description is at most 1024 bytes".into(),
            ));
        }
        caller.require_admin()?;
        let rec = self.vm_for(caller, vm).await?;
        let repo = self.repository_doors().await?;
        let host = Self::shut_off_host(&rec, "a running guest changes its disk under the capture")?;
        self.hosts.door(&host)?;
        let submit = Submit {
            kind: "capture-image".into(),
            vm: Some(vm.into()),
            host: Some(host.clone()),
            user: Some(caller.name().into()),
            idempotency_key: None,
            request: serde_json::json!({ "vm": vm, "image": image }),
        };
        let me = Arc::clone(self);
        let domain = rec.domain().to_string();
        let base = ImageRecord {
            name: image.into(),
            source_vm: vm.into(),
            captured_by: caller.name().into(),
            description,
            hosts: repo,
            ..Default::default()
        };
        let w = work(move |ctx| async move {
            me.do_capture(&ctx, &host, &domain, base)
                .await
                .map_err(OpError::from)
        });
        Ok(self.ops.submit(submit, w).await?)
    }

    async fn do_capture(
        &self,
        ctx: &OpCtx,
        host: &str,
        domain: &str,
        mut img: ImageRecord,
    ) -> Result<serde_json::Value> {
        let door = self.hosts.door(host)?;
        let n = img.name.clone();
        img.version = self
            .blocking(move |s| Ok(next_version(&s.images()?, &n)))
            .await?;
        img.file = file_name(&img.name, img.version);
        ctx.progress(
            "capturing",
            Some(10.0),
            None,
            &format!("{domain} on {host} into {}", img.file),
        )
        .await?;
        let req = pb::CaptureImageRequest {
            domain: domain.into(),
            image: img.file.clone(),
        };
        let captured = door.capture_image(req).await?;
        let info = captured.volume.unwrap_or_default();
        img.virtual_size = info.virtual_size;
        img.file_size = info.allocated_size;
        img.checksum = captured.checksum;
        img.definition_xml = captured.definition_xml;
        img.created_ms = now_ms();
        let mut holding = vec![host.to_string()];
        let sent = self.spread(ctx, host, &img, &mut holding).await;
        let kept = img.hosts.clone();
        // The capturing host's file was only for the journey unless it keeps the repository.
        let stray: Vec<String> = holding
            .iter()
            .filter(|h| sent.is_err() || !kept.contains(h))
            .cloned()
            .collect();
        for h in &stray {
            if let Ok(d) = self.hosts.door(h) {
                if let Err(e) = d.delete_volume(&img.file).await {
                    tracing::warn!(host = %h, file = %img.file, error = %e, "image file left behind");
                }
            }
        }
        sent?;
        let r = img.clone();
        self.blocking(move |s| s.insert_image(&r)).await?;
        tracing::info!(image = %img.name, version = img.version, checksum = %img.checksum, "image captured");
        Ok(serde_json::json!({
            "image": img.name,
            "version": img.version,
            "checksum": img.checksum,
            "virtual_size": img.virtual_size,
            "file_size": img.file_size,
            "hosts": img.hosts,
        }))
    }

    /// Syncs an image file from `from` to every repository host that lacks it; `holding`
    /// grows with each host that has it.
    async fn spread(
        &self,
        ctx: &OpCtx,
        from: &str,
        img: &ImageRecord,
        holding: &mut Vec<String>,
    ) -> Result<()> {
        let src = self.hosts.door(from)?;
        for h in &img.hosts {
            if holding.contains(h) {
                continue;
            }
            ctx.progress(
                "syncing",
                Some(50.0),
                Some(img.file_size),
                &format!("{} from {from} to {h}", img.file),
            )
            .await?;
            self.send_file(&*src, &img.file, h).await?;
            holding.push(h.clone());
        }
        Ok(())
    }

    async fn send_file(
        &self,
        src: &dyn crate::door::AgentDoor,
        file: &str,
        to: &str,
    ) -> Result<()> {
        let req = pb::SendVolumeRequest {
            volume: file.into(),
            peer: self.hosts.address(to)?,
            bandwidth_limit: 0,
            replace: false,
            peer_tls_name: String::new(),
            ..Default::default()
        };
        self.send_copy(src, req).await?;
        Ok(())
    }

    /// Removes a version from every host holding it (admins; refused while bases made from
    /// it exist).
    pub async fn remove_image(
        self: &Arc<Self>,
        caller: &Caller,
        name: &str,
        version: u32,
    ) -> Result<OpRecord> {
        check_image_name(name)?;
        caller.require_admin()?;
        let (img, bases) = self.image(name, version).await?;
        if !bases.is_empty() {
            return Err(CoordError::FailedPrecondition(format!(
                "image {} is used by base(s) {}: remove them first",
                img.tag(),
                bases.join(", ")
            )));
        }
        let submit = Submit {
            kind: "remove-image".into(),
            vm: None,
            user: Some(caller.name().into()),
            request: serde_json::json!({ "image": img.name, "version": img.version }),
            ..Default::default()
        };
        let me = Arc::clone(self);
        let w = work(move |ctx| async move {
            let run = async {
                for h in &img.hosts {
                    ctx.progress("removing", None, None, &format!("{} on {h}", img.file))
                        .await?;
                    me.hosts.door(h)?.delete_volume(&img.file).await?;
                }
                let (n, v) = (img.name.clone(), img.version);
                me.blocking(move |s| s.remove_image(&n, v)).await?;
                Ok::<_, CoordError>(
                    serde_json::json!({ "image": img.name, "version": img.version }),
                )
            };
            run.await.map_err(OpError::from)
        });
        Ok(self.ops.submit(submit, w).await?)
    }

    /// Loads a version onto a host as the new base `base` (admins): synced from a repository
    /// host when the host lacks it, defined from it, prepared as a base.
    pub async fn load_image(
        self: &Arc<Self>,
        caller: &Caller,
        name: &str,
        version: u32,
        host: &str,
        base: &str,
    ) -> Result<OpRecord> {
        check_image_name(name)?;
        check_name("host", host)?;
        check_name("base", base)?;
        crate::names::not_reserved(base)?;
        caller.require_admin()?;
        let (img, _) = self.image(name, version).await?;
        self.hosts.door(host)?;
        let from = if img.hosts.iter().any(|h| h == host) {
            None
        } else {
            Some(
                img.hosts
                    .iter()
                    .find(|h| self.hosts.door(h).is_ok())
                    .cloned()
                    .ok_or_else(|| {
                        CoordError::Unavailable(format!(
                            "no repository host holding image {} is up ({})",
                            img.tag(),
                            img.hosts.join(", ")
                        ))
                    })?,
            )
        };
        self.name_free(base).await?;
        let submit = Submit {
            kind: "load-image".into(),
            vm: Some(base.into()),
            host: Some(host.into()),
            user: Some(caller.name().into()),
            idempotency_key: None,
            request: serde_json::json!({
                "image": img.name, "version": img.version, "host": host, "base": base,
                "sync_from": from, "sync_bytes": if from.is_some() { img.file_size } else { 0 },
            }),
        };
        let me = Arc::clone(self);
        let (host, base) = (host.to_string(), base.to_string());
        let w = work(move |ctx| async move {
            me.do_load(&ctx, &img, from.as_deref(), &host, &base)
                .await
                .map_err(OpError::from)
        });
        Ok(self.ops.submit(submit, w).await?)
    }

    async fn do_load(
        &self,
        ctx: &OpCtx,
        img: &ImageRecord,
        from: Option<&str>,
        host: &str,
        base: &str,
    ) -> Result<serde_json::Value> {
        let door = self.hosts.door(host)?;
        self.name_free(base).await?;
        if let Some(from) = from {
            ctx.progress(
                "syncing",
                Some(10.0),
                Some(img.file_size),
                &format!("{} from {from} to {host}", img.file),
            )
            .await?;
            self.send_file(&*self.hosts.door(from)?, &img.file, host)
                .await?;
        }
        let made = self.define_and_prepare(ctx, &*door, img, host, base).await;
        if from.is_some() {
            // The host's copy was only for the journey (its base has files of its own).
            if let Err(e) = door.delete_volume(&img.file).await {
                tracing::warn!(host, file = %img.file, error = %e, "image file left behind");
            }
        }
        if made.is_err() {
            let _ = door.remove_domain(base).await;
        }
        made
    }

    async fn define_and_prepare(
        &self,
        ctx: &OpCtx,
        door: &dyn crate::door::AgentDoor,
        img: &ImageRecord,
        host: &str,
        base: &str,
    ) -> Result<serde_json::Value> {
        ctx.progress(
            "defining",
            Some(50.0),
            None,
            &format!("{base} from {} on {host}", img.file),
        )
        .await?;
        let req = pb::DefineFromImageRequest {
            image: img.file.clone(),
            name: base.into(),
            definition_xml: img.definition_xml.clone(),
            checksum: img.checksum.clone(),
        };
        let d = door.define_from_image(req).await?;
        ctx.progress("preparing", Some(80.0), None, "read-only base files")
            .await?;
        let b = door.prepare_base(base).await?;
        let mut size = serde_json::json!({ "vcpus": d.vcpus, "memory": d.memory_mib << 20 });
        size["system_disk"] = crate::create::system_disk(door, &b).await.into();
        let (n, h, tag) = (base.to_string(), host.to_string(), img.tag());
        self.blocking(move |s| {
            s.put_base(&n, None, &size)?;
            s.set_base_host(&n, &h, true)?;
            s.set_base_image(&n, &tag)
        })
        .await?;
        Ok(serde_json::json!({ "base": base, "host": host, "image": img.tag() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, version: u32) -> ImageRecord {
        ImageRecord {
            name: name.into(),
            version,
            ..Default::default()
        }
    }

    #[test]
    fn versions_are_picked_and_counted() {
        let all = vec![rec("web", 1), rec("web", 3), rec("db", 1)];
        assert_eq!(pick(&all, "web", 0).unwrap().version, 3);
        assert_eq!(pick(&all, "web", 1).unwrap().version, 1);
        let e = pick(&all, "web", 2).unwrap_err().to_string();
        assert!(e.contains("no version 2 (it has 1, 3)"), "{e}");
        let e = pick(&all, "nope", 0).unwrap_err().to_string();
        assert!(e.contains("image nope not found"), "{e}");
        assert_eq!(next_version(&all, "web"), 4);
        assert_eq!(next_version(&all, "new"), 1);
        assert_eq!(file_name("web", 3), "image-web-v3.qcow2");
        assert!(check_image_name(&"x".repeat(41)).is_err());
        assert!(check_image_name(&"x".repeat(40)).is_ok());
        assert!(rules_fit(&"x".repeat(40)));
    }

    fn rules_fit(name: &str) -> bool {
        corral_proto::rules::name("volume", &file_name(name, u32::MAX)).is_ok()
    }
}
