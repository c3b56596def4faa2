//! Property-based fuzzing of every parser of untrusted text in the agent: domain XML (from
//! libvirt, and from other hosts in imports and migrations), `qemu-img info` JSON, qcow2
//! headers (files users may have written), screenshots, and the configuration. Inputs are
//! arbitrary bytes and real samples with random edits; the property is "no panic", and a
//! parsed domain XML must serialise and parse again.
//!
//! CI runs a few hundred cases each; `CORRAL_FUZZ_CASES=100000 cargo test --release -p
//! corral-agent fuzz_` (`deploy/fuzz.sh`) is the long run.

use corral_proto::env::Settings;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::domain_xml::DomainXml;

/// Cases per property: `CORRAL_FUZZ_CASES`, 512 by default.
pub(crate) fn cases() -> u32 {
    std::env::var("CORRAL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

/// Runs `check` on `cases()` inputs from `strategy` and says how many ran.
pub(crate) fn fuzz<S: Strategy>(name: &str, strategy: S, check: impl Fn(S::Value))
where
    S::Value: std::fmt::Debug,
{
    let n = cases();
    let mut runner = TestRunner::new(Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |v| {
        check(v);
        Ok(())
    });
    if let Err(e) = result {
        panic!("fuzz {name}: {e}");
    }
    println!("fuzz {name}: {n} cases, no panic");
}

/// Pieces that make parsers take their rare paths.
const TOKENS: &[&str] = &[
    "<",
    ">",
    "</",
    "/>",
    "\"",
    "'",
    "&",
    "&amp;",
    "&#0;",
    "&#x110000;",
    "<![CDATA[",
    "]]>",
    "<!--",
    "-->",
    "<?xml?>",
    "<!DOCTYPE d [<!ENTITY e \"x\">]>",
    "&e;",
    "\0",
    "\u{202E}",
    "<disk type='file' device='disk'><source file='/etc/shadow'/><target dev='vda'/></disk>",
    "<corral:instance xmlns:corral=\"https://corral.dev/xmlns/agent/1\" kind=\"base\">",
    "xmlns:a=\"b\"",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "null",
    "-1",
    "1e999",
    "18446744073709551616",
    "\"virtual-size\"",
    "\"backing-filename\"",
    "\\u0000",
    "\\ud800",
];

/// A sample with up to eight random edits: deletions, token insertions, arbitrary text.
pub(crate) fn mutated(samples: &'static [&'static str]) -> impl Strategy<Value = String> {
    let edit = (
        any::<prop::sample::Index>(),
        0usize..16,
        prop::sample::select(TOKENS),
        ".{0,8}",
        any::<bool>(),
    );
    (
        prop::sample::select(samples),
        prop::collection::vec(edit, 0..8),
    )
        .prop_map(|(s, edits)| {
            let mut s = s.to_string();
            for (at, del, token, text, use_token) in edits {
                let mut i = at.index(s.len() + 1);
                while !s.is_char_boundary(i) {
                    i -= 1;
                }
                let mut j = (i + del).min(s.len());
                while !s.is_char_boundary(j) {
                    j -= 1;
                }
                s.replace_range(i..j, if use_token { token } else { &text });
            }
            s
        })
}

const DOMAIN_XML: &[&str] = &[
    r#"<domain type='qemu' id='3'><name>web1</name><uuid>0b7a1a3c-33c1-4d8c-9a67-0d0fd0f1c0de</uuid><metadata><corral:instance xmlns:corral="https://corral.dev/xmlns/agent/1" kind="base" locked="true" created="5"><corral:disk target="vda" role="system" volume="a.qcow2"/><corral:prepared at="7"><corral:file target="vda" role="system" file="b.qcow2" source="a.qcow2" fingerprint="f" size="9"/></corral:prepared><corral:label key="course" value="net"/></corral:instance></metadata><memory unit='KiB'>131072</memory><vcpu placement='static'>2</vcpu><os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><kernel>/k</kernel><initrd>/i</initrd><cmdline>console=ttyS0</cmdline><boot dev='hd'/></os><features><acpi/><apic/></features><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/s/a.qcow2'/><target dev='vda' bus='virtio'/><readonly/></disk><interface type='network'><mac address='52:54:00:01:02:03'/><source network='default'/><model type='virtio'/></interface><serial type='pty'/><console type='pty'/><graphics type='spice' port='5900' autoport='yes' listen='10.0.0.1' passwd='x'><listen type='address' address='10.0.0.1'/></graphics><video><model type='qxl'/></video></devices></domain>"#,
    "<domain type='test'><name>a</name><memory>1</memory><vcpu>1</vcpu><os><type>hvm</type></os><devices/></domain>",
];

const QEMU_IMG_JSON: &[&str] = &[
    include_str!("../tests/fixtures/qemu-img-info-chain.json"),
    r#"[{"virtual-size": 1048576, "filename": "/s/a.raw", "format": "raw", "actual-size": 4096, "dirty-flag": false}]"#,
];

const AGENT_TOML: &[&str] = &[include_str!("../../deploy/agent.example.toml")];

/// A qcow2 header (version 2 or 3) with the backing name's offset and length anywhere,
/// followed by arbitrary bytes.
fn qcow2_head() -> impl Strategy<Value = Vec<u8>> {
    (
        2u32..=3,
        any::<u64>(),
        any::<u32>(),
        0u64..256,
        0u32..64,
        prop::collection::vec(any::<u8>(), 0..512),
        any::<bool>(),
    )
        .prop_map(
            |(version, offset, len, small_off, small_len, tail, small)| {
                let mut h = Vec::new();
                h.extend_from_slice(&0x5146_49fbu32.to_be_bytes());
                h.extend_from_slice(&version.to_be_bytes());
                if small {
                    h.extend_from_slice(&(small_off + 20).to_be_bytes());
                    h.extend_from_slice(&small_len.to_be_bytes());
                } else {
                    h.extend_from_slice(&offset.to_be_bytes());
                    h.extend_from_slice(&len.to_be_bytes());
                }
                h.extend_from_slice(&tail);
                h
            },
        )
}

#[test]
fn fuzz_domain_xml() {
    let s = prop_oneof![mutated(DOMAIN_XML), any::<String>()];
    fuzz("domain XML", s, |xml| {
        if let Ok(d) = DomainXml::parse(&xml) {
            if let Ok(again) = d.to_xml() {
                DomainXml::parse(&again).expect("what we write parses");
            }
        }
        let _ = DomainXml::parse_given(&xml);
    });
}

#[test]
fn fuzz_relocated_definitions() {
    let s = prop_oneof![mutated(DOMAIN_XML), any::<String>()];
    fuzz("relocated domain XML", s, |xml| {
        let _ = crate::relocate::relocate(&xml, &|p| Some(format!("/var/lib/x/{p}")), "10.0.0.2");
    });
}

#[test]
fn fuzz_qemu_img_json() {
    let s = prop_oneof![mutated(QEMU_IMG_JSON), any::<String>()];
    fuzz("qemu-img JSON", s, |json| {
        let _ = crate::images::parse_chain(&json);
    });
}

#[test]
fn fuzz_qcow2_headers() {
    let s = prop_oneof![qcow2_head(), prop::collection::vec(any::<u8>(), 0..256)];
    fuzz("qcow2 header", s, |head| {
        if let Some(name) = crate::qcow2::backing_name(&head) {
            assert!(name.len() <= 1023);
        }
    });
}

#[test]
fn fuzz_screenshots() {
    let ppm = (
        0u32..4096,
        0u32..4096,
        prop::sample::select(&[255u32, 0, 65535][..]),
        prop::collection::vec(any::<u8>(), 0..256),
    )
        .prop_map(|(w, h, max, px)| {
            let mut d = format!("P6\n# c\n{w} {h}\n{max}\n").into_bytes();
            d.extend(px);
            d
        });
    let s = prop_oneof![
        ppm,
        prop::collection::vec(any::<u8>(), 0..128).prop_map(|mut v| {
            v.splice(0..0, *b"P6");
            v
        })
    ];
    fuzz("screenshot (PPM)", s, |data| {
        let _ = crate::screenshot::to_png("image/x-portable-pixmap", &data);
    });
}

#[test]
fn fuzz_agent_config() {
    let keys = [
        "LISTEN",
        "HOST_ADDRESS",
        "PORT_RANGE",
        "DOMAIN_TYPE",
        "FIREWALL",
        "STORAGE_ROOT",
    ]
    .map(|k| format!("CORRAL_AGENT_{k}"));
    let env = prop::collection::vec((prop::sample::select(keys.to_vec()), ".{0,24}"), 0..4);
    let s = (prop_oneof![mutated(AGENT_TOML), any::<String>()], env);
    fuzz("agent configuration", s, |(text, env)| {
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        let _ = <crate::config::Config as Settings>::from_parts(&text, get);
    });
}
