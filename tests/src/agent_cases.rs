//! The agent's adversarial table: every RPC of every agent service with bad names, bad
//! numbers, unknown ids, and references to what another domain or a base owns.

use corral_client::proto as pb;
use corral_client::AgentClient;
use tonic::Code;

use crate::adversarial::{bad_names, case, name_says, AgentWorld, Call, Case};

type C = AgentClient;

fn dref(n: &str) -> pb::DomainRef {
    pb::DomainRef { name: n.into() }
}

fn spec_with_disk(name: &str, volume: &str, readonly: bool, create: u64) -> pb::DomainSpec {
    pb::DomainSpec {
        name: name.into(),
        vcpus: 1,
        memory_mib: 128,
        disks: vec![pb::DiskSpec {
            volume: volume.into(),
            role: pb::VolumeRole::System as i32,
            create_size_bytes: create,
            readonly,
        }],
        ..Default::default()
    }
}

/// Every RPC that takes a domain (or base) name, called with `n`.
fn domain_rpcs(n: &str) -> Vec<(&'static str, Call<C>)> {
    let n = n.to_string();
    macro_rules! rpc {
        ($name:literal, |$c:ident, $n:ident| $body:expr) => {{
            let $n = n.clone();
            let f: Call<C> =
                Box::new(move |mut $c: C| Box::pin(async move { $body.await.map(|_| ()) }));
            ($name, f)
        }};
    }
    vec![
        rpc!("DefineDomain", |c, n| c.domains.define_domain(
            pb::DefineDomainRequest {
                spec: Some(spec_with_disk(&n, "adv-ok.qcow2", false, 16 << 20))
            }
        )),
        rpc!("StartDomain", |c, n| c.domains.start_domain(dref(&n))),
        rpc!("ShutdownDomain", |c, n| c.domains.shutdown_domain(
            pb::ShutdownDomainRequest {
                name: n,
                timeout_seconds: 1
            }
        )),
        rpc!("PowerOffDomain", |c, n| c
            .domains
            .power_off_domain(dref(&n))),
        rpc!("ResetDomain", |c, n| c.domains.reset_domain(dref(&n))),
        rpc!("SuspendDomain", |c, n| c.domains.suspend_domain(dref(&n))),
        rpc!("ResumeDomain", |c, n| c.domains.resume_domain(dref(&n))),
        rpc!("HibernateDomain", |c, n| c
            .domains
            .hibernate_domain(dref(&n))),
        rpc!("GetDomain", |c, n| c.domains.get_domain(dref(&n))),
        rpc!("GetScreenshot", |c, n| c.domains.get_screenshot(dref(&n))),
        rpc!("GetDisplay", |c, n| c.domains.get_display(dref(&n))),
        rpc!("GetDomainXml", |c, n| c.domains.get_domain_xml(dref(&n))),
        rpc!("RemoveDomain", |c, n| c.domains.remove_domain(
            pb::RemoveDomainRequest {
                name: n,
                remove_volumes: true
            }
        )),
        rpc!("PrepareBase", |c, n| c.bases.prepare_base(dref(&n))),
        rpc!("RemoveBase", |c, n| c.bases.remove_base(dref(&n))),
        rpc!("GetBase", |c, n| c.bases.get_base(dref(&n))),
        rpc!("CloneBase(base)", |c, n| c.bases.clone_base(
            pb::CloneBaseRequest {
                base: n,
                name: "adv-new-clone".into(),
                ..Default::default()
            }
        )),
        rpc!("ListClones", |c, n| c.bases.list_clones(dref(&n))),
        rpc!("RestoreClone", |c, n| c.bases.restore_clone(dref(&n))),
        rpc!("SpinoffClone", |c, n| c.bases.spinoff_clone(dref(&n))),
        rpc!("AddVolume", |c, n| c.bases.add_volume(
            pb::AddVolumeRequest {
                domain: n,
                role: pb::VolumeRole::Data as i32,
                size_bytes: 8 << 20,
                name: String::new()
            }
        )),
        rpc!("ExportBase", |c, n| c.bases.export_base(dref(&n))),
        rpc!("ExportDomain", |c, n| c.bases.export_domain(dref(&n))),
        rpc!("ExportForMigration", |c, n| c
            .bases
            .export_for_migration(dref(&n))),
        rpc!("MigrateDomain", |c, n| c.bases.migrate_domain(
            pb::MigrateDomainRequest {
                name: n,
                dest_uri: "qemu+tcp://192.0.2.1/system".into(),
                dest_xml: String::new(),
                bandwidth_mib: 0
            }
        )),
        rpc!("FinishMigration", |c, n| c.bases.finish_migration(dref(&n))),
        rpc!("CreateSnapshot", |c, n| c.snapshots.create_snapshot(
            pb::CreateSnapshotRequest {
                domain: n,
                name: "s1".into(),
                ..Default::default()
            }
        )),
        rpc!("ListSnapshots", |c, n| c.snapshots.list_snapshots(
            pb::ListSnapshotsRequest {
                domain: n,
                filters: vec![]
            }
        )),
        rpc!("GetSnapshot", |c, n| c.snapshots.get_snapshot(
            pb::SnapshotRef {
                domain: n,
                name: "s1".into()
            }
        )),
        rpc!("ListChildren", |c, n| c.snapshots.list_children(
            pb::ListChildrenRequest {
                domain: n,
                name: "s1".into(),
                recursive: false
            }
        )),
        rpc!("RevertSnapshot", |c, n| c.snapshots.revert_snapshot(
            pb::RevertSnapshotRequest {
                domain: n,
                name: "s1".into(),
                ..Default::default()
            }
        )),
        rpc!("DeleteSnapshot", |c, n| c.snapshots.delete_snapshot(
            pb::DeleteSnapshotRequest {
                domain: n,
                name: "s1".into(),
                ..Default::default()
            }
        )),
        rpc!("ExposePort", |c, n| c.ports.expose_port(
            pb::ExposePortRequest {
                domain: n,
                guest_port: 80,
                wait_seconds: 1,
                ..Default::default()
            }
        )),
        rpc!("RemovePort", |c, n| c.ports.remove_port(
            pb::RemovePortRequest {
                domain: n,
                guest_port: 80
            }
        )),
        rpc!("RemoveAllPorts", |c, n| c
            .ports
            .remove_all_ports(pb::RemoveAllPortsRequest { domain: n })),
        rpc!("RestrictDisplay", |c, n| c.ports.restrict_display(
            pb::RestrictDisplayRequest {
                domain: n,
                client_ip: "192.0.2.7".into()
            }
        )),
    ]
}

/// Every RPC that takes a volume name, called with `v`.
fn volume_rpcs(v: &str, w: &AgentWorld) -> Vec<(&'static str, Call<C>)> {
    let v = v.to_string();
    let free = w.free.clone();
    macro_rules! rpc {
        ($name:literal, |$c:ident, $v:ident, $free:ident| $body:expr) => {{
            let ($v, $free) = (v.clone(), free.clone());
            let f: Call<C> = Box::new(move |mut $c: C| {
                let _ = &$free;
                Box::pin(async move { $body.await.map(|_| ()) })
            });
            ($name, f)
        }};
    }
    vec![
        rpc!("CreateVolume", |c, v, free| c.volumes.create_volume(
            pb::CreateVolumeRequest {
                name: v,
                size_bytes: 8 << 20,
                format: 0
            }
        )),
        rpc!("CreateOverlay(name)", |c, v, free| c
            .volumes
            .create_overlay(pb::CreateOverlayRequest {
                name: v,
                backing: free
            })),
        rpc!("CreateOverlay(backing)", |c, v, free| c
            .volumes
            .create_overlay(pb::CreateOverlayRequest {
                name: "adv-overlay.qcow2".into(),
                backing: v
            })),
        rpc!("GetVolumeInfo", |c, v, free| c
            .volumes
            .get_volume_info(pb::VolumeRef { name: v })),
        rpc!("CopyVolume(source)", |c, v, free| c.volumes.copy_volume(
            pb::CopyVolumeRequest {
                source: v,
                destination: "adv-copy.qcow2".into(),
                ..Default::default()
            }
        )),
        rpc!("CopyVolume(destination)", |c, v, free| c
            .volumes
            .copy_volume(pb::CopyVolumeRequest {
                source: free,
                destination: v,
                ..Default::default()
            })),
        rpc!("RebaseVolume", |c, v, free| c.volumes.rebase_volume(
            pb::RebaseVolumeRequest {
                name: v,
                backing: String::new(),
                r#unsafe: true
            }
        )),
        rpc!("ResizeVolume", |c, v, free| c.volumes.resize_volume(
            pb::ResizeVolumeRequest {
                name: v,
                size_bytes: 64 << 20,
                allow_shrink: false
            }
        )),
        rpc!("DeleteVolume", |c, v, free| c
            .volumes
            .delete_volume(pb::VolumeRef { name: v })),
        rpc!("VolumeChecksum", |c, v, free| c
            .sync
            .volume_checksum(pb::VolumeChecksumRequest { volume: v })),
        rpc!("SendVolume", |c, v, free| async move {
            let mut s = c
                .sync
                .send_volume(pb::SendVolumeRequest {
                    volume: v,
                    peer: "127.0.0.1:9".into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            while s.message().await?.is_some() {}
            Ok::<_, tonic::Status>(())
        }),
        rpc!("DefineDomain(disk)", |c, v, free| c.domains.define_domain(
            pb::DefineDomainRequest {
                spec: Some(spec_with_disk("adv-new", &v, false, 16 << 20))
            }
        )),
    ]
}

/// The whole table for one agent.
pub fn agent_cases(w: &AgentWorld) -> Vec<Case<C>> {
    let mut cases = Vec::new();
    // Bad names, everywhere a name goes.
    for (what, n) in bad_names() {
        let says = name_says(&n);
        for (rpc, call) in domain_rpcs(&n).into_iter().chain(volume_rpcs(&n, w)) {
            cases.push(Case {
                rpc,
                input: format!("a name with {what}"),
                code: Code::InvalidArgument,
                says: says.iter().map(|s| s.to_string()).collect(),
                call,
            });
        }
    }
    // Unknown ids: well-formed names of nothing.
    let ghost = format!("{}ghost", w.p);
    for (rpc, call) in domain_rpcs(&ghost) {
        if rpc == "DefineDomain" {
            continue; // a new name is fine there
        }
        cases.push(Case {
            rpc,
            input: "an unknown domain".into(),
            code: Code::NotFound,
            says: vec![ghost.clone()],
            call,
        });
    }
    let ghost_vol = format!("{}ghost.qcow2", w.p);
    for (rpc, call) in volume_rpcs(&ghost_vol, w) {
        if matches!(
            rpc,
            "CreateVolume" | "CreateOverlay(name)" | "CopyVolume(destination)"
        ) {
            continue; // a new name is fine there
        }
        let code = if rpc == "DefineDomain(disk)" {
            continue;
        } else {
            Code::NotFound
        };
        cases.push(Case {
            rpc,
            input: "an unknown volume".into(),
            code,
            says: vec![ghost_vol.clone()],
            call,
        });
    }
    cases.extend(number_cases(w));
    cases.extend(ownership_cases(w));
    cases
}

/// Zero, negative (as a huge unsigned), out-of-range and enum values no one defined.
fn number_cases(w: &AgentWorld) -> Vec<Case<C>> {
    let p = w.p.clone();
    let mut out: Vec<Case<C>> = Vec::new();
    for (input, size, says) in [
        ("size 0", 0u64, "greater than zero"),
        ("size 1 byte", 1, "too small"),
        ("size -1 (u64::MAX)", u64::MAX, "too large"),
    ] {
        let name = format!("{p}num.qcow2");
        out.push(case(
            "CreateVolume",
            input,
            Code::InvalidArgument,
            &[says],
            move |mut c: C| async move {
                c.volumes
                    .create_volume(pb::CreateVolumeRequest {
                        name,
                        size_bytes: size,
                        format: 0,
                    })
                    .await
            },
        ));
        let free = w.free.clone();
        out.push(case(
            "ResizeVolume",
            input,
            Code::InvalidArgument,
            &[says],
            move |mut c: C| async move {
                c.volumes
                    .resize_volume(pb::ResizeVolumeRequest {
                        name: free,
                        size_bytes: size,
                        allow_shrink: true,
                    })
                    .await
            },
        ));
        let n = format!("{p}num");
        out.push(case(
            "DefineDomain",
            format!("disk {input}"),
            Code::InvalidArgument,
            &[says],
            move |mut c: C| async move {
                let mut s = spec_with_disk(&n, &format!("{n}-vda.qcow2"), false, size);
                if size == 0 {
                    s.disks[0].create_size_bytes = 1; // 0 means "exists"; 1 byte is too small
                }
                c.domains
                    .define_domain(pb::DefineDomainRequest { spec: Some(s) })
                    .await
            },
        ));
        let (base, name) = (w.base.clone(), format!("{p}num-clone"));
        out.push(case(
            "AddVolume",
            input,
            Code::InvalidArgument,
            &[says],
            move |mut c: C| async move {
                let _ = base;
                c.bases
                    .add_volume(pb::AddVolumeRequest {
                        domain: format!("{name}x"),
                        role: pb::VolumeRole::Data as i32,
                        size_bytes: if size == 0 { 0 } else { size },
                        name: String::new(),
                    })
                    .await
            },
        ));
    }
    // Fix up: the size-0 DefineDomain case above asks for 1 byte.
    for c in out.iter_mut() {
        if c.rpc == "DefineDomain" && c.input == "disk size 0" {
            c.says = vec!["too small".into()];
        }
    }
    let n = format!("{p}num");
    let spec_case = |input: &str, says: &str, edit: fn(&mut pb::DomainSpec)| {
        let n = n.clone();
        case(
            "DefineDomain",
            input.to_string(),
            Code::InvalidArgument,
            &[says],
            move |mut c: C| async move {
                let mut s = spec_with_disk(&n, &format!("{n}-vda.qcow2"), false, 16 << 20);
                edit(&mut s);
                c.domains
                    .define_domain(pb::DefineDomainRequest { spec: Some(s) })
                    .await
            },
        )
    };
    out.push(spec_case("memory 1 MiB", "out of range", |s| {
        s.memory_mib = 1
    }));
    out.push(spec_case("memory u64::MAX", "out of range", |s| {
        s.memory_mib = u64::MAX
    }));
    out.push(spec_case("100000 vCPUs", "out of range", |s| {
        s.vcpus = 100_000
    }));
    out.push(spec_case("role 99", "unknown volume role", |s| {
        s.disks[0].role = 99
    }));
    out.push(spec_case("display type 42", "unknown display type", |s| {
        s.display = Some(pb::DisplaySpec {
            r#type: 42,
            listen: String::new(),
        })
    }));
    out.push(spec_case(
        "display listen $(id)",
        "not an ip address",
        |s| {
            s.display = Some(pb::DisplaySpec {
                r#type: 1,
                listen: "$(id)".into(),
            })
        },
    ));
    out.push(spec_case("a multicast MAC", "multicast", |s| {
        s.nics = vec![pb::NicSpec {
            mac: "01:00:5e:00:00:01".into(),
            ..Default::default()
        }]
    }));
    out.push(spec_case("NIC model 'evil'", "unknown nic model", |s| {
        s.nics = vec![pb::NicSpec {
            model: "evil".into(),
            ..Default::default()
        }]
    }));
    out.push(spec_case("video model 'x'", "unknown video model", |s| {
        s.video_model = "x".into()
    }));
    out.push(spec_case(
        "a relative kernel path",
        "must be absolute",
        |s| {
            s.kernel_boot = Some(pb::KernelBoot {
                kernel: "../../boot/vmlinuz".into(),
                ..Default::default()
            })
        },
    ));
    out.push(spec_case(
        "a label with a newline",
        "control characters",
        |s| {
            s.labels.insert("course".into(), "a\nb".into());
        },
    ));
    out.push(spec_case(
        "a 300-character label key",
        "keys are 1-63",
        |s| {
            s.labels.insert("k".repeat(300), "v".into());
        },
    ));
    out.push(spec_case("27 disks", "at most 26 disks", |s| {
        s.disks = (0..27)
            .map(|i| pb::DiskSpec {
                volume: format!("adv-d{i}.qcow2"),
                create_size_bytes: 1 << 20,
                ..Default::default()
            })
            .collect()
    }));
    out.push(spec_case("one volume twice", "given twice", |s| {
        let d = s.disks[0].clone();
        s.disks.push(d);
    }));
    let clone_case = |input: &str, says: &str, edit: fn(&mut pb::CloneBaseRequest)| {
        let (base, name) = (w.base.clone(), format!("{p}num-clone"));
        case(
            "CloneBase",
            input.to_string(),
            Code::InvalidArgument,
            &[says],
            move |mut c: C| async move {
                let mut r = pb::CloneBaseRequest {
                    base,
                    name,
                    ..Default::default()
                };
                edit(&mut r);
                c.bases.clone_base(r).await
            },
        )
    };
    out.push(clone_case("memory 1 MiB", "out of range", |r| {
        r.memory_mib = 1
    }));
    out.push(clone_case("9999 vCPUs", "out of range", |r| r.vcpus = 9999));
    out.push(clone_case(
        "data volume mode 7",
        "unknown data volume mode",
        |r| r.data_volumes = 7,
    ));
    out.push(clone_case(
        "a label with a direction override",
        "control characters",
        |r| {
            r.labels.insert("k".into(), "\u{202E}x".into());
        },
    ));
    let clone = w.clone.clone();
    for (input, guest, host, says) in [
        ("guest port 0", 0u32, 0u32, "out of range"),
        ("guest port 70000", 70000, 0, "out of range"),
        ("host port 99999", 80, 99999, "out of range"),
        (
            "host port 22, outside the range",
            80,
            22,
            "outside this host's port range",
        ),
    ] {
        let d = clone.clone();
        out.push(case(
            "ExposePort",
            input,
            Code::InvalidArgument,
            &[says],
            move |mut c: C| async move {
                c.ports
                    .expose_port(pb::ExposePortRequest {
                        domain: d,
                        guest_port: guest,
                        host_port: host,
                        wait_seconds: 1,
                        ..Default::default()
                    })
                    .await
            },
        ));
    }
    let d = clone.clone();
    out.push(case(
        "RestrictDisplay",
        "client 'nobody'",
        Code::InvalidArgument,
        &["client"],
        move |mut c: C| async move {
            c.ports
                .restrict_display(pb::RestrictDisplayRequest {
                    domain: d,
                    client_ip: "nobody".into(),
                })
                .await
        },
    ));
    let d = clone.clone();
    out.push(case(
        "CreateSnapshot",
        "a 5000-character description",
        Code::InvalidArgument,
        &["description"],
        move |mut c: C| async move {
            c.snapshots
                .create_snapshot(pb::CreateSnapshotRequest {
                    domain: d,
                    name: "s".into(),
                    description: "x".repeat(5000),
                    ..Default::default()
                })
                .await
        },
    ));
    let d = clone.clone();
    out.push(case(
        "RevertSnapshot",
        "mode 9",
        Code::InvalidArgument,
        &["mode"],
        move |mut c: C| async move {
            c.snapshots
                .revert_snapshot(pb::RevertSnapshotRequest {
                    domain: d,
                    name: "s".into(),
                    mode: 9,
                    force: false,
                })
                .await
        },
    ));
    let d = clone.clone();
    out.push(case(
        "DeleteSnapshot",
        "mode 9",
        Code::InvalidArgument,
        &["mode"],
        move |mut c: C| async move {
            c.snapshots
                .delete_snapshot(pb::DeleteSnapshotRequest {
                    domain: d,
                    name: "s".into(),
                    mode: 9,
                })
                .await
        },
    ));
    let free = w.free.clone();
    out.push(case(
        "CreateVolume",
        "format 9",
        Code::InvalidArgument,
        &["format"],
        move |mut c: C| async move {
            let _ = free;
            c.volumes
                .create_volume(pb::CreateVolumeRequest {
                    name: "adv-fmt.qcow2".into(),
                    size_bytes: 8 << 20,
                    format: 9,
                })
                .await
        },
    ));
    out.push(case(
        "ImportDomain",
        "a definition that is not XML",
        Code::InvalidArgument,
        &["xml"],
        move |mut c: C| async move {
            c.bases
                .import_domain(pb::ImportBaseRequest {
                    definition_xml: "<domain".into(),
                    layouts: vec![],
                })
                .await
        },
    ));
    out.push(case(
        "ImportBase",
        "a definition that is not XML",
        Code::InvalidArgument,
        &["xml"],
        move |mut c: C| async move {
            c.bases
                .import_base(pb::ImportBaseRequest {
                    definition_xml: "not xml at all".into(),
                    layouts: vec![],
                })
                .await
        },
    ));
    out.push(case(
        "SendVolume",
        "no peer",
        Code::InvalidArgument,
        &["peer"],
        {
            let free = w.free.clone();
            move |mut c: C| async move {
                let mut s = c
                    .sync
                    .send_volume(pb::SendVolumeRequest {
                        volume: free,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                while s.message().await?.is_some() {}
                Ok::<_, tonic::Status>(())
            }
        },
    ));
    out.extend(peer_and_stream_cases(w));
    out.push(case(
        "ListDomains",
        "a label filter with a NUL",
        Code::InvalidArgument,
        &["label"],
        move |mut c: C| async move {
            c.domains
                .list_domains(pb::ListDomainsRequest {
                    labels: [("k".to_string(), "a\0b".to_string())].into(),
                })
                .await
        },
    ));
    out
}

/// What another domain or a base owns: a hostile request names it.
fn ownership_cases(w: &AgentWorld) -> Vec<Case<C>> {
    let mut out: Vec<Case<C>> = Vec::new();
    let p = w.p.clone();
    // Another domain's disk, attached writable by a new domain.
    let (disk, who) = (w.other_disk.clone(), w.other.clone());
    out.push(case(
        "DefineDomain",
        "another domain's disk",
        Code::FailedPrecondition,
        &["belongs to domain", &who],
        {
            let n = format!("{p}thief");
            move |mut c: C| async move {
                c.domains
                    .define_domain(pb::DefineDomainRequest {
                        spec: Some(spec_with_disk(&n, &disk, false, 0)),
                    })
                    .await
            }
        },
    ));
    // Another domain's disk, attached read-only (it writes to it).
    let disk = w.other_disk.clone();
    out.push(case(
        "DefineDomain",
        "another domain's disk, read-only",
        Code::FailedPrecondition,
        &["write to it"],
        {
            let n = format!("{p}peek");
            move |mut c: C| async move {
                c.domains
                    .define_domain(pb::DefineDomainRequest {
                        spec: Some(spec_with_disk(&n, &disk, true, 0)),
                    })
                    .await
            }
        },
    ));
    // A base file, writable (item 3 of the issue).
    let (bf, base) = (w.base_file.clone(), w.base.clone());
    out.push(case(
        "DefineDomain",
        "a base file, writable",
        Code::FailedPrecondition,
        &["base file", &base],
        {
            let n = format!("{p}scribble");
            move |mut c: C| async move {
                c.domains
                    .define_domain(pb::DefineDomainRequest {
                        spec: Some(spec_with_disk(&n, &bf, false, 0)),
                    })
                    .await
            }
        },
    ));
    // A clone's overlay, which backs nothing but belongs to the clone.
    let (cd, clone) = (w.clone_disk.clone(), w.clone.clone());
    out.push(case(
        "DefineDomain",
        "a clone's overlay",
        Code::FailedPrecondition,
        &["belongs to domain", &clone],
        {
            let n = format!("{p}squat");
            move |mut c: C| async move {
                c.domains
                    .define_domain(pb::DefineDomainRequest {
                        spec: Some(spec_with_disk(&n, &cd, false, 0)),
                    })
                    .await
            }
        },
    ));
    // Base files: never resized, rebased or deleted while a clone uses them.
    for (rpc, says) in [
        ("ResizeVolume", "base file"),
        ("RebaseVolume", "base file"),
        ("DeleteVolume", "base file"),
    ] {
        let bf = w.base_file.clone();
        out.push(case(
            rpc,
            "a base file with clones",
            Code::FailedPrecondition,
            &[says],
            move |mut c: C| async move {
                match rpc {
                    "ResizeVolume" => c
                        .volumes
                        .resize_volume(pb::ResizeVolumeRequest {
                            name: bf,
                            size_bytes: 1 << 30,
                            allow_shrink: false,
                        })
                        .await
                        .map(|_| ()),
                    "RebaseVolume" => c
                        .volumes
                        .rebase_volume(pb::RebaseVolumeRequest {
                            name: bf,
                            backing: String::new(),
                            r#unsafe: true,
                        })
                        .await
                        .map(|_| ()),
                    _ => c
                        .volumes
                        .delete_volume(pb::VolumeRef { name: bf })
                        .await
                        .map(|_| ()),
                }
            },
        ));
    }
    // An unsafe rebase of a base file onto another domain's disk.
    let (bf, od) = (w.base_file.clone(), w.other_disk.clone());
    out.push(case(
        "RebaseVolume",
        "a base file onto another domain's disk",
        Code::FailedPrecondition,
        &["base file"],
        move |mut c: C| async move {
            c.volumes
                .rebase_volume(pb::RebaseVolumeRequest {
                    name: bf,
                    backing: od,
                    r#unsafe: true,
                })
                .await
        },
    ));
    // Another domain's disk: not deleted by the volume API.
    let od = w.other_disk.clone();
    out.push(case(
        "DeleteVolume",
        "another domain's disk",
        Code::FailedPrecondition,
        &["belongs to domain"],
        move |mut c: C| async move { c.volumes.delete_volume(pb::VolumeRef { name: od }).await },
    ));
    // A base with clones is not removed, nor its base.
    let base = w.base.clone();
    out.push(case(
        "RemoveDomain",
        "a base with clones",
        Code::FailedPrecondition,
        &["clone"],
        move |mut c: C| async move {
            c.domains
                .remove_domain(pb::RemoveDomainRequest {
                    name: base,
                    remove_volumes: true,
                })
                .await
        },
    ));
    let base = w.base.clone();
    out.push(case(
        "RemoveBase",
        "a base with clones",
        Code::FailedPrecondition,
        &["clone"],
        move |mut c: C| async move { c.bases.remove_base(dref(&base)).await },
    ));
    // Bases never run: no start, no ports.
    let base = w.base.clone();
    out.push(case(
        "StartDomain",
        "a base",
        Code::FailedPrecondition,
        &["base"],
        move |mut c: C| async move { c.domains.start_domain(dref(&base)).await },
    ));
    let base = w.base.clone();
    out.push(case(
        "ExposePort",
        "a base",
        Code::FailedPrecondition,
        &["base"],
        move |mut c: C| async move {
            c.ports
                .expose_port(pb::ExposePortRequest {
                    domain: base,
                    guest_port: 80,
                    wait_seconds: 1,
                    ..Default::default()
                })
                .await
        },
    ));
    // Importing a definition that points at another domain's disk, or outside the storage.
    let (od, who) = (w.other_disk.clone(), w.other.clone());
    let storage = w.storage.clone();
    out.push(case(
        "ImportDomain",
        "a definition on another domain's disk",
        Code::FailedPrecondition,
        &["belongs to domain", &who],
        {
            let xml = foreign_xml(
                &format!("{p}import"),
                &storage.join(&od).display().to_string(),
            );
            move |mut c: C| async move {
                c.bases
                    .import_domain(pb::ImportBaseRequest {
                        definition_xml: xml,
                        layouts: vec![],
                    })
                    .await
            }
        },
    ));
    out.push(case(
        "ImportDomain",
        "a definition attaching /etc/shadow read-only",
        Code::InvalidArgument,
        &["outside the storage root"],
        {
            let xml = foreign_xml_ro(
                &format!("{p}import2"),
                &w.storage.join(&w.free).display().to_string(),
                "/etc/shadow",
            );
            move |mut c: C| async move {
                c.bases
                    .import_domain(pb::ImportBaseRequest {
                        definition_xml: xml,
                        layouts: vec![],
                    })
                    .await
            }
        },
    ));
    // Names taken.
    let other = w.other.clone();
    out.push(case(
        "CloneBase",
        "the name of an existing domain",
        Code::AlreadyExists,
        &["already exists"],
        {
            let base = w.base.clone();
            move |mut c: C| async move {
                c.bases
                    .clone_base(pb::CloneBaseRequest {
                        base,
                        name: other,
                        ..Default::default()
                    })
                    .await
            }
        },
    ));
    let base = w.base.clone();
    out.push(case(
        "DefineDomain",
        "the name of a base",
        Code::AlreadyExists,
        &["already exists"],
        move |mut c: C| async move {
            c.domains
                .define_domain(pb::DefineDomainRequest {
                    spec: Some(spec_with_disk(&base, "adv-fresh.qcow2", false, 16 << 20)),
                })
                .await
        },
    ));
    let free = w.free.clone();
    out.push(case(
        "CreateVolume",
        "the name of an existing volume",
        Code::AlreadyExists,
        &["already exists"],
        move |mut c: C| async move {
            c.volumes
                .create_volume(pb::CreateVolumeRequest {
                    name: free,
                    size_bytes: 8 << 20,
                    format: 0,
                })
                .await
        },
    ));
    let (clone, other) = (w.clone.clone(), w.other.clone());
    out.push(case(
        "SpinoffClone",
        "a domain that is no clone",
        Code::FailedPrecondition,
        &["clone"],
        move |mut c: C| async move {
            let _ = clone;
            c.bases.spinoff_clone(dref(&other)).await
        },
    ));
    let other = w.other.clone();
    out.push(case(
        "RestoreClone",
        "a domain that is no clone",
        Code::FailedPrecondition,
        &["clone"],
        move |mut c: C| async move { c.bases.restore_clone(dref(&other)).await },
    ));
    out
}

/// A domain definition (as an import carries it) with one writable disk at `file`.
fn foreign_xml(name: &str, file: &str) -> String {
    format!(
        "<domain type='test'><name>{name}</name><memory unit='KiB'>131072</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'>\
         <driver name='qemu' type='qcow2'/><source file='{file}'/><target dev='vda' bus='virtio'/>\
         </disk></devices></domain>"
    )
}

/// As [`foreign_xml`], plus a read-only disk at `ro`.
fn foreign_xml_ro(name: &str, file: &str, ro: &str) -> String {
    foreign_xml(name, file).replace(
        "</devices>",
        &format!(
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{ro}'/>\
             <target dev='vdb' bus='virtio'/><readonly/></disk></devices>"
        ),
    )
}

/// A header a peer sends to ReceiveVolume.
async fn receive(addr: String, volume: String, size: u64) -> Result<(), tonic::Status> {
    let ch = corral_client::channel_with(&addr, None)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let header = pb::SyncUpload {
        msg: Some(pb::sync_upload::Msg::Header(pb::SyncHeader {
            volume,
            size,
            block_size: 65536,
            mode: 0o644,
            replace: true,
        })),
    };
    let mut s = pb::peer_transfer_service_client::PeerTransferServiceClient::new(ch)
        .receive_volume(tokio_stream::iter([header]))
        .await?
        .into_inner();
    while s.message().await?.is_some() {}
    Ok(())
}

/// The peers' ReceiveVolume, the event stream, and live migration's first step.
fn peer_and_stream_cases(w: &AgentWorld) -> Vec<Case<C>> {
    let mut out: Vec<Case<C>> = Vec::new();
    out.push(case(
        "PrepareMigration",
        "a host without migration_uri",
        Code::Unimplemented,
        &["migration_uri"],
        move |mut c: C| async move {
            c.bases
                .prepare_migration(pb::ImportBaseRequest {
                    definition_xml: "<domain/>".into(),
                    layouts: vec![],
                })
                .await
        },
    ));
    for (what, n) in bad_names() {
        if !n.is_empty() {
            let n2 = n.clone();
            out.push(case(
                "WatchDomainEvents",
                format!("a name with {what}"),
                Code::InvalidArgument,
                &["invalid", "name"],
                move |mut c: C| async move {
                    c.host
                        .watch_domain_events(pb::WatchDomainEventsRequest { domain: n2 })
                        .await
                },
            ));
        }
        let addr = w.addr.clone();
        let says = name_says(&n);
        out.push(case(
            "ReceiveVolume",
            format!("a header naming a volume with {what}"),
            Code::InvalidArgument,
            &says,
            move |_c: C| receive(addr, n, 1 << 20),
        ));
    }
    let (od, who, addr) = (w.other_disk.clone(), w.other.clone(), w.addr.clone());
    out.push(case(
        "ReceiveVolume",
        "replacing another domain's disk",
        Code::FailedPrecondition,
        &["belongs to domain", &who],
        move |_c: C| receive(addr, od, 16 << 20),
    ));
    let (bf, addr) = (w.base_file.clone(), w.addr.clone());
    out.push(case(
        "ReceiveVolume",
        "replacing a base file",
        Code::FailedPrecondition,
        &["base file"],
        move |_c: C| receive(addr, bf, 16 << 20),
    ));
    out
}
