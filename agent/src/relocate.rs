//! A domain's full XML, every element as libvirt wrote it, with only its disk files and
//! display addresses moved to another host's: the target definition of a live migration
//! must keep the guest's ABI (devices, addresses, controllers) exactly, which the typed
//! [`crate::domain_xml::DomainXml`] (Corral's subset) would not. Rewritten with quick-xml's
//! event reader and writer.

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, Writer};

use crate::error::{AgentError, Result};

fn xml_err(e: impl std::fmt::Display) -> AgentError {
    AgentError::invalid(format!("domain XML: {e}"))
}

/// Copies `e` with the value of `attr` replaced by what `f` returns for it.
fn with_attr(
    e: &BytesStart<'_>,
    attr: &[u8],
    f: impl Fn(&str) -> Option<String>,
) -> Result<BytesStart<'static>> {
    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
    let mut out = BytesStart::new(name);
    for a in e.attributes() {
        let a = a.map_err(xml_err)?;
        let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
        let value = a.unescape_value().map_err(xml_err)?.into_owned();
        let value = if a.key.as_ref() == attr {
            f(&value).unwrap_or(value)
        } else {
            value
        };
        out.push_attribute((key.as_str(), value.as_str()));
    }
    Ok(out)
}

/// The display address a definition from another host gets here: `listen` (this host's
/// address), unless the old one listens on every address or only on loopback.
pub fn moved_listen(old: Option<&str>, listen: &str) -> Option<String> {
    let keep = old
        .and_then(|l| l.parse::<std::net::IpAddr>().ok())
        .is_some_and(|ip| ip.is_unspecified() || ip.is_loopback());
    (!keep).then(|| listen.to_string())
}

/// Moves `<source file=...>` (disks and their backing chains) through `path`, and display
/// listen addresses (`<graphics listen=...>`, `<listen address=...>`) to `listen` unless
/// they listen on every address or on loopback.
pub fn relocate(xml: &str, path: &dyn Fn(&str) -> Option<String>, listen: &str) -> Result<String> {
    let mut reader = Reader::from_str(xml);
    let mut writer = Writer::new(Vec::new());
    let mut in_graphics = false;
    let addr = |old: &str| moved_listen(Some(old), listen);
    loop {
        let ev = reader.read_event().map_err(xml_err)?;
        let fixed =
            |e: &BytesStart<'_>, in_graphics: bool| -> Result<Option<BytesStart<'static>>> {
                Ok(match e.name().as_ref() {
                    b"source" => Some(with_attr(e, b"file", path)?),
                    b"graphics" => Some(with_attr(e, b"listen", addr)?),
                    b"listen" if in_graphics => Some(with_attr(e, b"address", addr)?),
                    _ => None,
                })
            };
        let out = match &ev {
            Event::Eof => break,
            Event::Start(e) => {
                if e.name().as_ref() == b"graphics" {
                    in_graphics = true;
                }
                fixed(e, in_graphics)?.map(Event::Start)
            }
            Event::Empty(e) => fixed(e, in_graphics)?.map(Event::Empty),
            Event::End(e) => {
                if e.name().as_ref() == b"graphics" {
                    in_graphics = false;
                }
                None
            }
            _ => None,
        };
        writer.write_event(out.unwrap_or(ev)).map_err(xml_err)?;
    }
    String::from_utf8(writer.into_inner()).map_err(xml_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_disk_files_and_display_addresses_move() {
        let xml = r#"<domain type='qemu'><name>c1</name><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/a/h1/storage/c1-vda.qcow2'/><backingStore type='file'><source file='/a/h1/storage/web-vda.base.qcow2'/></backingStore><target dev='vda' bus='virtio'/><address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/></disk>
<disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='hdc'/></disk>
<graphics type='vnc' port='5900' autoport='yes' listen='10.0.0.11'><listen type='address' address='10.0.0.11'/></graphics>
<graphics type='spice' listen='0.0.0.0'/>
<controller type='usb' index='0' model='piix3-uhci'/>
</devices></domain>"#;
        let path = |p: &str| {
            let name = std::path::Path::new(p).file_name()?.to_str()?.to_string();
            name.ends_with(".qcow2")
                .then(|| format!("/b/h2/storage/{name}"))
        };
        let out = relocate(xml, &path, "10.0.0.12").unwrap();
        assert!(out.contains("file=\"/b/h2/storage/c1-vda.qcow2\""), "{out}");
        assert!(
            out.contains("file=\"/b/h2/storage/web-vda.base.qcow2\""),
            "{out}"
        );
        assert!(out.contains("file=\"/iso/x.iso\""), "{out}");
        assert!(out.contains("listen=\"10.0.0.12\""), "{out}");
        assert!(out.contains("address=\"10.0.0.12\""), "{out}");
        assert!(out.contains("listen=\"0.0.0.0\""), "{out}");
        assert!(out.contains("slot='0x04'"), "addresses kept: {out}");
        assert!(
            out.contains("model='piix3-uhci'"),
            "controllers kept: {out}"
        );
        assert!(!out.contains("10.0.0.11"));
        assert!(relocate("<domain><unclosed></domain>", &path, "x").is_err());
    }
}
