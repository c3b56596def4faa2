//! libvirt domain XML as typed structs, written and read with quick-xml's serde support.
//!
//! The same structs build the XML Corral defines and read back what libvirt returns
//! (unknown elements are ignored). Corral's own data lives in the domain's `<metadata>`
//! under the namespace [`NAMESPACE`], so libvirt stays the source of truth for it.

use serde::{Deserialize, Serialize};

use crate::error::{AgentError, Result};

/// XML namespace of Corral's metadata element.
pub const NAMESPACE: &str = "https://corral.dev/xmlns/agent/1";

fn is_false(b: &bool) -> bool {
    !*b
}

/// An element with no content, like `<acpi/>` or `<readonly/>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename = "domain")]
pub struct DomainXml {
    #[serde(rename = "@type")]
    pub domain_type: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    pub memory: Memory,
    /// What the guest has now (the balloon's target), when libvirt says it apart from `memory`.
    #[serde(
        rename = "currentMemory",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub current_memory: Option<Memory>,
    pub vcpu: Vcpu,
    pub os: Os,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Features>,
    pub devices: Devices,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    #[serde(rename = "@unit", default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(rename = "$text")]
    pub value: u64,
}

impl Memory {
    pub fn mib(mib: u64) -> Self {
        Self {
            unit: Some("MiB".into()),
            value: mib,
        }
    }

    /// The amount in MiB, whatever unit libvirt used.
    pub fn as_mib(&self) -> u64 {
        let bytes = match self.unit.as_deref().unwrap_or("KiB") {
            "b" | "bytes" => self.value,
            "KB" => self.value * 1000,
            "k" | "KiB" => self.value << 10,
            "MB" => self.value * 1_000_000,
            "M" | "MiB" => self.value << 20,
            "GB" => self.value * 1_000_000_000,
            "G" | "GiB" => self.value << 30,
            _ => self.value << 10,
        };
        bytes >> 20
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Vcpu {
    #[serde(rename = "$text")]
    pub count: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Os {
    #[serde(rename = "type")]
    pub os_type: OsType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot: Vec<Boot>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OsType {
    #[serde(rename = "@arch", default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(rename = "@machine", default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    #[serde(rename = "$text")]
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Boot {
    #[serde(rename = "@dev")]
    pub dev: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Features {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acpi: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apic: Option<Empty>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Devices {
    #[serde(default, rename = "disk")]
    pub disks: Vec<Disk>,
    #[serde(default, rename = "interface")]
    pub interfaces: Vec<Interface>,
    #[serde(default, rename = "serial")]
    pub serials: Vec<CharDev>,
    #[serde(default, rename = "console")]
    pub consoles: Vec<CharDev>,
    #[serde(default, rename = "channel")]
    pub channels: Vec<Channel>,
    #[serde(default, rename = "graphics")]
    pub graphics: Vec<Graphics>,
    #[serde(default, rename = "video")]
    pub videos: Vec<Video>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Disk {
    #[serde(rename = "@type")]
    pub disk_type: String,
    #[serde(rename = "@device")]
    pub device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<DiskDriver>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<DiskSource>,
    pub target: DiskTarget,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly: Option<Empty>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskDriver {
    #[serde(rename = "@name")]
    pub name: String,
    #[serde(rename = "@type")]
    pub format: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskSource {
    #[serde(rename = "@file", default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskTarget {
    #[serde(rename = "@dev")]
    pub dev: String,
    #[serde(rename = "@bus", default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    #[serde(rename = "@type")]
    pub iface_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<NetSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<TypeAttr>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MacAddress {
    #[serde(rename = "@address")]
    pub address: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetSource {
    #[serde(rename = "@network", default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TypeAttr {
    #[serde(rename = "@type")]
    pub kind: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CharDev {
    #[serde(rename = "@type")]
    pub kind: String,
}

/// The virtio port name of the QEMU guest agent's channel.
pub const GUEST_AGENT_CHANNEL: &str = "org.qemu.guest_agent.0";

/// A `<channel>`; written without its source (libvirt gives each domain its own socket) and
/// without the live `state` (read back: `connected` once the guest opened the port).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Channel {
    #[serde(rename = "@type")]
    pub kind: String,
    pub target: ChannelTarget,
}

impl Channel {
    /// The QEMU guest agent's channel (a unix socket on the host, a virtio port in the guest).
    pub fn guest_agent() -> Self {
        Self {
            kind: "unix".into(),
            target: ChannelTarget {
                kind: "virtio".into(),
                name: Some(GUEST_AGENT_CHANNEL.into()),
                state: None,
            },
        }
    }

    pub fn is_guest_agent(&self) -> bool {
        self.target.name.as_deref() == Some(GUEST_AGENT_CHANNEL)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChannelTarget {
    #[serde(rename = "@type")]
    pub kind: String,
    #[serde(rename = "@name", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "@state", default, skip_serializing)]
    pub state: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Graphics {
    #[serde(rename = "@type")]
    pub kind: String,
    #[serde(rename = "@port", default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// SPICE's TLS port (libvirt gives one with autoport where the host has TLS).
    #[serde(rename = "@tlsPort", default, skip_serializing_if = "Option::is_none")]
    pub tls_port: Option<i32>,
    #[serde(rename = "@autoport", default, skip_serializing_if = "Option::is_none")]
    pub autoport: Option<String>,
    #[serde(rename = "@listen", default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(rename = "@passwd", default, skip_serializing_if = "Option::is_none")]
    pub passwd: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Video {
    pub model: TypeAttr,
}

/// `<metadata>`: only Corral's element is read; others are left alone by libvirt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(
        rename(serialize = "corral:instance", deserialize = "instance"),
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub corral: Option<CorralMeta>,
}

/// Corral's data about a domain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CorralMeta {
    /// Declared when the element is embedded in a full definition; libvirt's metadata API
    /// adds the namespace itself and refuses an element that declares it.
    #[serde(
        rename = "@xmlns:corral",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub xmlns: Option<String>,
    #[serde(rename = "@kind")]
    pub kind: Kind,
    /// A clone's base, or the base a base was cloned from.
    #[serde(rename = "@base", default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    #[serde(rename = "@owner", default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Locked domains cannot start (bases).
    #[serde(rename = "@locked", default, skip_serializing_if = "is_false")]
    pub locked: bool,
    #[serde(rename = "@created", default)]
    pub created_unix: i64,
    #[serde(rename = "disk", default)]
    pub disks: Vec<MetaDisk>,
    #[serde(rename = "label", default)]
    pub labels: Vec<MetaLabel>,
    /// Swap and data volumes detached from the domain: still its own (nothing else may take
    /// them), attached again with AttachVolume, deleted with the domain.
    #[serde(rename = "detached", default, skip_serializing_if = "Vec::is_empty")]
    pub detached: Vec<MetaDisk>,
    /// Present once the domain has been prepared as a base.
    #[serde(rename = "prepared", default, skip_serializing_if = "Option::is_none")]
    pub prepared: Option<PreparedBase>,
}

/// What a volume is to its domain (stored as `system`, `tmp`, `swap` or `data`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    System,
    Tmp,
    Swap,
    /// The user's data: kept by a restore, made fresh or copied for a clone.
    Data,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::System => "system",
            Self::Tmp => "tmp",
            Self::Swap => "swap",
            Self::Data => "data",
        })
    }
}

impl Role {
    /// Roles that come from a base and are reset by a restore.
    pub fn from_base(self) -> bool {
        !matches!(self, Self::Data)
    }
}

/// What a domain is to Corral (stored as `plain`, `base` or `clone` in its metadata).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Defined by Corral from a spec (or not by Corral at all).
    #[default]
    Plain,
    /// Prepared: read-only base files, locked.
    Base,
    /// A copy-on-write clone of a base.
    Clone,
}

impl CorralMeta {
    pub fn new(kind: Kind) -> Self {
        Self {
            xmlns: Some(NAMESPACE.into()),
            kind,
            ..Self::default()
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetaDisk {
    #[serde(rename = "@target")]
    pub target: String,
    #[serde(rename = "@role")]
    pub role: Role,
    #[serde(rename = "@volume")]
    pub volume: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetaLabel {
    #[serde(rename = "@key")]
    pub key: String,
    #[serde(rename = "@value")]
    pub value: String,
}

/// What preparing a base produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PreparedBase {
    #[serde(rename = "@at")]
    pub at_unix: i64,
    #[serde(rename = "file", default)]
    pub files: Vec<BaseFile>,
}

/// One read-only base file, or one data volume recorded for clones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BaseFile {
    #[serde(rename = "@target")]
    pub target: String,
    #[serde(rename = "@role")]
    pub role: Role,
    /// The base file (empty for data volumes, which clones get fresh or copied).
    #[serde(rename = "@file", default)]
    pub file: String,
    /// The domain's own volume the base file was made from.
    #[serde(rename = "@source")]
    pub source: String,
    /// Size and modification time of the source when the base was made, to detect changes.
    #[serde(rename = "@fingerprint", default)]
    pub fingerprint: String,
    #[serde(rename = "@size", default)]
    pub size: u64,
}

/// quick-xml's deserializer, guarded: libvirt never writes a DTD, and a DTD inside element
/// text makes quick-xml 0.37 panic (an `unreachable!`, fixed upstream in tafia/quick-xml#964);
/// any other panic of the parser is an error too, never a crashed worker.
fn deserialize(xml: &str) -> std::result::Result<DomainXml, String> {
    if xml.contains("<!DOCTYPE") || xml.contains("<!ENTITY") {
        return Err("a DTD (<!DOCTYPE>, <!ENTITY>) is not allowed in domain XML".into());
    }
    std::panic::catch_unwind(|| quick_xml::de::from_str::<DomainXml>(xml))
        .map_err(|_| "the XML parser failed on this input".to_string())?
        .map_err(|e| e.to_string())
}

impl DomainXml {
    /// Serialises to libvirt domain XML.
    pub fn to_xml(&self) -> Result<String> {
        quick_xml::se::to_string(self)
            .map_err(|e| AgentError::internal(format!("cannot write domain XML: {e}")))
    }

    /// Parses libvirt's domain XML (unknown elements ignored).
    pub fn parse(xml: &str) -> Result<Self> {
        deserialize(xml).map_err(|e| AgentError::internal(format!("cannot read domain XML: {e}")))
    }

    /// Parses a definition a caller sent (an import): malformed XML is the caller's error.
    pub fn parse_given(xml: &str) -> Result<Self> {
        deserialize(xml).map_err(|e| {
            AgentError::invalid(format!("the definition is not valid domain XML: {e}"))
        })
    }

    pub fn meta(&self) -> Option<&CorralMeta> {
        self.metadata.as_ref()?.corral.as_ref()
    }

    pub fn meta_mut(&mut self) -> &mut CorralMeta {
        self.metadata
            .get_or_insert_with(Metadata::default)
            .corral
            .get_or_insert_with(|| CorralMeta::new(Kind::Plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DomainXml {
        let mut meta = CorralMeta::new(Kind::Clone);
        meta.base = Some("base1".into());
        meta.disks.push(MetaDisk {
            target: "vda".into(),
            role: Role::System,
            volume: "web1-vda.qcow2".into(),
        });
        meta.labels.push(MetaLabel {
            key: "course".into(),
            value: "net101".into(),
        });
        DomainXml {
            domain_type: "qemu".into(),
            name: "web1".into(),
            uuid: Some("0b7a1a3c-33c1-4d8c-9a67-0d0fd0f1c0de".into()),
            metadata: Some(Metadata { corral: Some(meta) }),
            memory: Memory::mib(128),
            current_memory: None,
            vcpu: Vcpu { count: 1 },
            os: Os {
                os_type: OsType {
                    arch: Some("x86_64".into()),
                    machine: Some("pc".into()),
                    value: "hvm".into(),
                },
                kernel: Some("/k".into()),
                initrd: None,
                cmdline: Some("console=ttyS0".into()),
                boot: vec![],
            },
            features: Some(Features {
                acpi: Some(Empty {}),
                apic: None,
            }),
            devices: Devices {
                disks: vec![Disk {
                    disk_type: "file".into(),
                    device: "disk".into(),
                    driver: Some(DiskDriver {
                        name: "qemu".into(),
                        format: "qcow2".into(),
                    }),
                    source: Some(DiskSource {
                        file: Some("/s/web1-vda.qcow2".into()),
                    }),
                    target: DiskTarget {
                        dev: "vda".into(),
                        bus: Some("virtio".into()),
                    },
                    readonly: None,
                }],
                interfaces: vec![Interface {
                    iface_type: "network".into(),
                    mac: Some(MacAddress {
                        address: "52:54:00:00:00:01".into(),
                    }),
                    source: Some(NetSource {
                        network: Some("default".into()),
                    }),
                    model: Some(TypeAttr {
                        kind: "virtio".into(),
                    }),
                }],
                serials: vec![CharDev { kind: "pty".into() }],
                consoles: vec![],
                channels: vec![Channel::guest_agent()],
                graphics: vec![Graphics {
                    kind: "vnc".into(),
                    port: Some(-1),
                    tls_port: None,
                    autoport: Some("yes".into()),
                    listen: Some("127.0.0.1".into()),
                    passwd: Some("s3cret".into()),
                }],
                videos: vec![Video {
                    model: TypeAttr { kind: "vga".into() },
                }],
            },
        }
    }

    #[test]
    fn a_dtd_is_refused_not_a_panic() {
        // Found by the fuzzer: quick-xml 0.37 panics on a DOCTYPE inside element text.
        let xml = "<domain type='test'><name>a<!DOCTYPE d [<!ENTITY e \"x\">]>/name><memory>1</memory><vcpu>1</vcpu><os><type>hvm</type></os><devices/></domain>";
        let e = DomainXml::parse_given(xml).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.to_string().contains("DTD"), "{e}");
    }

    #[test]
    fn round_trip() {
        let d = sample();
        let xml = d.to_xml().unwrap();
        assert!(xml.starts_with("<domain type=\"qemu\">"), "{xml}");
        assert!(xml.contains(&format!("<corral:instance xmlns:corral=\"{NAMESPACE}\"")));
        assert!(xml.contains("<acpi/>"), "{xml}");
        assert_eq!(DomainXml::parse(&xml).unwrap(), d);
    }

    #[test]
    fn reads_libvirt_output_with_extra_elements() {
        let xml = r#"<domain type='qemu' id='3'>
  <name>web1</name>
  <uuid>0b7a1a3c-33c1-4d8c-9a67-0d0fd0f1c0de</uuid>
  <metadata>
    <other:x xmlns:other="urn:other"/>
    <corral:instance xmlns:corral="https://corral.dev/xmlns/agent/1" kind="base" locked="true" created="5">
      <corral:disk target="vda" role="system" volume="a.qcow2"/>
      <corral:prepared at="7"><corral:file target="vda" role="system" file="b.qcow2" source="a.qcow2" fingerprint="f" size="9"/></corral:prepared>
    </corral:instance>
  </metadata>
  <memory unit='KiB'>131072</memory>
  <currentMemory unit='KiB'>131072</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><boot dev='hd'/></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/s/a.qcow2' index='1'/><backingStore/><target dev='vda' bus='virtio'/><alias name='virtio-disk0'/></disk>
    <controller type='usb' index='0'/>
    <interface type='network'><mac address='52:54:00:00:00:02'/><source network='default' portid='x' bridge='virbr0'/><target dev='vnet0'/><model type='virtio'/></interface>
    <serial type='pty'><source path='/dev/pts/1'/></serial>
    <console type='pty'/>
    <input type='mouse' bus='ps2'/>
    <graphics type='spice' port='5901' autoport='yes' listen='0.0.0.0'><listen type='address' address='0.0.0.0'/></graphics>
    <video><model type='qxl' ram='65536' heads='1' primary='yes'/></video>
    <memballoon model='virtio'/>
  </devices>
</domain>"#;
        let d = DomainXml::parse(xml).unwrap();
        assert_eq!(d.memory.as_mib(), 128);
        assert_eq!(d.vcpu.count, 2);
        let meta = d.meta().unwrap();
        assert!(meta.locked);
        assert_eq!(meta.kind, Kind::Base);
        assert_eq!(meta.prepared.as_ref().unwrap().files[0].file, "b.qcow2");
        assert_eq!(d.devices.graphics[0].port, Some(5901));
        assert_eq!(d.devices.videos[0].model.kind, "qxl");
        assert_eq!(
            d.devices.interfaces[0].mac.as_ref().unwrap().address,
            "52:54:00:00:00:02"
        );
    }
}
