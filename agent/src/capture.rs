//! Images of the repository, as Apache VCL captures and loads them: a shut-off domain's
//! system volume flattened into a read-only file no domain owns, with its content checksum and
//! a definition that keeps only that disk; and domains defined from such a file later (here,
//! or on another host after the volume sync brought it).

use std::io::Read;
use std::path::Path;

use corral_proto::v1 as pb;

use crate::agent::{now_unix, Agent};
use crate::bases::{meta_of, Undo};
use crate::domain_xml::{CorralMeta, DomainXml, Kind, MetaDisk, Metadata, Role};
use crate::domains::disk_xml;
use crate::error::{AgentError, Result};
use crate::hypervisor::DomState;
use crate::images::Format;
use crate::validate;

/// "blake3:" and the hex digest of a file's bytes.
pub fn checksum(path: &Path) -> Result<String> {
    let mut f = crate::fsx::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("blake3:{}", h.finalize().to_hex()))
}

/// The definition an image keeps: only its system disk (the disk itself is rewritten when a
/// domain is made from it), no owner, base, labels, UUID, MACs nor display password.
fn image_definition(mut xml: DomainXml, system_target: &str) -> DomainXml {
    xml.uuid = None;
    xml.devices
        .disks
        .retain(|d| d.target.dev == system_target || d.readonly.is_some());
    for i in &mut xml.devices.interfaces {
        i.mac = None;
    }
    for g in &mut xml.devices.graphics {
        g.passwd = None;
        g.port = Some(-1);
        g.autoport = Some("yes".into());
    }
    let mut meta = CorralMeta::new(Kind::Plain);
    meta.disks.push(MetaDisk {
        target: system_target.to_string(),
        role: Role::System,
        volume: String::new(),
    });
    xml.metadata = Some(Metadata { corral: Some(meta) });
    xml
}

impl Agent {
    /// Captures a shut-off domain's system volume into the read-only image file `image`.
    pub fn capture_image(&self, r: &pb::CaptureImageRequest) -> Result<pb::CapturedImage> {
        validate::name("domain", &r.domain)?;
        validate::name("volume", &r.image)?;
        let _busy = self.busy(&r.domain)?;
        let xml = self.read_definition(&r.domain)?;
        let state = self.hv.state(&r.domain)?;
        if state != DomState::ShutOff {
            return Err(AgentError::precondition(format!(
                "domain {:?} is {}: shut it off first (a running guest changes its disk under \
                 the capture)",
                r.domain,
                state.as_str()
            )));
        }
        let Some((target, _, src)) = self
            .volumes_of(&xml)
            .into_iter()
            .find(|(_, role, _)| *role == Role::System)
        else {
            return Err(AgentError::precondition(format!(
                "domain {:?} has no system disk to capture",
                r.domain
            )));
        };
        let dest = self.storage.fresh(&r.image)?;
        let tmp = self.storage.tmp_path(&r.image)?;
        let undo = Undo(vec![tmp.clone()]);
        self.images.convert(&src, &tmp, Format::Qcow2, None)?;
        let sum = checksum(&tmp)?;
        crate::fsx::set_mode(&tmp, 0o444)?;
        crate::fsx::rename(&tmp, &dest)?;
        undo.disarm();
        let def = image_definition(xml, &target);
        tracing::info!(domain = %r.domain, image = %r.image, checksum = %sum, "image captured");
        Ok(pb::CapturedImage {
            volume: Some(self.volume_info(&r.image)?),
            checksum: sum,
            definition_xml: def.to_xml()?,
        })
    }

    /// Defines the shut-off domain `name` from an image file here.
    pub fn define_from_image(&self, r: &pb::DefineFromImageRequest) -> Result<pb::Domain> {
        validate::name("volume", &r.image)?;
        validate::name("domain", &r.name)?;
        if !r.checksum.starts_with("blake3:") {
            return Err(AgentError::invalid(format!(
                "checksum {:?} is not a blake3 checksum (\"blake3:\" and hex)",
                r.checksum
            )));
        }
        let _busy = self.busy(&r.name)?;
        if self.exists(&r.name)? {
            return Err(AgentError::exists(format!(
                "domain {:?} already exists",
                r.name
            )));
        }
        let image = self.storage.existing(&r.image).map_err(|_| {
            AgentError::precondition(format!(
                "image file {:?} is not on this host: sync it first",
                r.image
            ))
        })?;
        // Only an image: read-only and nobody's (a domain's disk or a base file is not read
        // into a new domain).
        let claims = self.claims()?;
        if !crate::fsx::metadata(&image)?.permissions().readonly()
            || !claims.users(&image).is_empty()
            || claims.base_of(&image).is_some()
        {
            return Err(AgentError::precondition(format!(
                "volume {:?} is not an image (a read-only file no domain or base owns)",
                r.image
            )));
        }
        let sum = checksum(&image)?;
        if sum != r.checksum {
            return Err(AgentError::precondition(format!(
                "image file {:?} here does not match its checksum ({sum}, expected {}): sync \
                 it again",
                r.image, r.checksum
            )));
        }
        let mut xml = DomainXml::parse_given(&r.definition_xml)?;
        let meta = meta_of(&xml);
        let system = meta
            .disks
            .iter()
            .find(|d| d.role == Role::System)
            .map(|d| d.target.clone());
        let Some(target) = system.filter(|_| meta.kind == Kind::Plain) else {
            return Err(AgentError::invalid(
                "the definition is not an image's (one system disk, no base)".to_string(),
            ));
        };
        let vol = format!("{}-{target}.qcow2", r.name);
        let dest = self.storage.fresh(&vol)?;
        let tmp = self.storage.tmp_path(&vol)?;
        let mut undo = Undo(vec![tmp.clone()]);
        self.images.convert(&image, &tmp, Format::Qcow2, None)?;
        crate::fsx::rename(&tmp, &dest)?;
        undo.0.push(dest.clone());
        crate::bases::renamed(&mut xml, &r.name);
        crate::bases::with_disks(&mut xml, vec![disk_xml(&dest, &target, "qcow2", false)]);
        let mut meta = CorralMeta::new(Kind::Plain);
        meta.created_unix = now_unix();
        meta.disks.push(MetaDisk {
            target,
            role: Role::System,
            volume: vol,
        });
        xml.metadata = Some(Metadata { corral: Some(meta) });
        self.localise(&mut xml);
        self.check_definition_disks(&r.name, &xml)?;
        self.forget_definition(&r.name);
        self.hv.define(&xml.to_xml()?)?;
        undo.disarm();
        tracing::info!(domain = %r.name, image = %r.image, "defined from an image");
        self.view(&r.name)
    }
}
