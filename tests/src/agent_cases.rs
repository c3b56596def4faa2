//! The agent's adversarial table: every RPC of every agent service with bad names, bad
//! numbers, unknown ids, and references to what another domain or a base owns.

use corral_client::proto as pb;
use corral_client::AgentClient;
use tonic::Code;

use crate::adversarial::{bad_names, name_says, AgentWorld, Call, Case};

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

/// The client itself: what every agent case calls.
fn it(c: C) -> C {
    c
}

/// A definition of `spec`.
fn define(spec: pb::DomainSpec) -> pb::DefineDomainRequest {
    pb::DefineDomainRequest { spec: Some(spec) }
}

/// A definition with one system disk `volume` (of `create` bytes when made, else existing).
fn with_disk(name: &str, volume: &str, readonly: bool, create: u64) -> pb::DefineDomainRequest {
    define(spec_with_disk(name, volume, readonly, create))
}

fn expose(domain: &str, guest_port: u32, host_port: u32) -> pb::ExposePortRequest {
    pb::ExposePortRequest {
        domain: domain.into(),
        guest_port,
        host_port,
        wait_seconds: 1,
        ..Default::default()
    }
}

fn new_volume(name: &str, size_bytes: u64, format: i32) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        name: name.into(),
        size_bytes,
        format,
    }
}

fn import(definition_xml: &str) -> pb::ImportBaseRequest {
    pb::ImportBaseRequest {
        definition_xml: definition_xml.into(),
        layouts: vec![],
    }
}

fn rebase(name: &str, backing: &str) -> pb::RebaseVolumeRequest {
    pb::RebaseVolumeRequest {
        name: name.into(),
        backing: backing.into(),
        r#unsafe: true,
    }
}

fn resize(name: &str, size_bytes: u64, allow_shrink: bool) -> pb::ResizeVolumeRequest {
    pb::ResizeVolumeRequest {
        name: name.into(),
        size_bytes,
        allow_shrink,
    }
}

/// A snapshot request naming a domain's snapshot.
macro_rules! snap {
    ($t:ident, $domain:expr, $name:expr $(, $field:ident: $value:expr)*) => {
        {
            // Some requests have no field beyond those given.
            #[allow(clippy::needless_update)]
            let r = pb::$t { domain: $domain.into(), name: $name.into(), $($field: $value,)* ..Default::default() };
            r
        }
    };
}

/// Sends a volume to `peer` and waits for the transfer's end.
async fn send(c: &mut C, volume: String, peer: &str) -> Result<(), tonic::Status> {
    let req = pb::SendVolumeRequest {
        volume,
        peer: peer.into(),
        ..Default::default()
    };
    let mut s = c.sync.send_volume(req).await?.into_inner();
    while s.message().await?.is_some() {}
    Ok(())
}

/// Sends with the whole request given (destination, basis, mode).
async fn send_req(c: &mut C, req: pb::SendVolumeRequest) -> Result<(), tonic::Status> {
    let mut s = c.sync.send_volume(req).await?.into_inner();
    while s.message().await?.is_some() {}
    Ok(())
}

fn restore(domain: &str, volume: &str, from: &str) -> pb::RestoreVolumeRequest {
    pb::RestoreVolumeRequest {
        domain: domain.into(),
        volume: volume.into(),
        from: from.into(),
    }
}

/// Every RPC that takes a domain (or base) name, called with `n`.
fn domain_rpcs(n: &str) -> Vec<(&'static str, Call<C>)> {
    let n = n.to_string();
    let data = pb::VolumeRole::Data as i32;
    let dest_uri = "qemu+tcp://192.0.2.1/system".to_string();
    crate::calls! { C, it, |c| [n, dest_uri];
        "DefineDomain" => c.domains.define_domain(with_disk(&n, "adv-ok.qcow2", false, 16 << 20));
        "StartDomain" => c.domains.start_domain(dref(&n));
        "ShutdownDomain" => c.domains.shutdown_domain(pb::ShutdownDomainRequest { name: n, timeout_seconds: 1 });
        "PowerOffDomain" => c.domains.power_off_domain(dref(&n));
        "ResetDomain" => c.domains.reset_domain(dref(&n));
        "SuspendDomain" => c.domains.suspend_domain(dref(&n));
        "ResumeDomain" => c.domains.resume_domain(dref(&n));
        "HibernateDomain" => c.domains.hibernate_domain(dref(&n));
        "GetDomain" => c.domains.get_domain(dref(&n));
        "GetScreenshot" => c.domains.get_screenshot(dref(&n));
        "GetDisplay" => c.domains.get_display(dref(&n));
        "GetDomainXml" => c.domains.get_domain_xml(dref(&n));
        "RemoveDomain" => c.domains.remove_domain(pb::RemoveDomainRequest { name: n, remove_volumes: true });
        "AssignDomain" => c.domains.assign_domain(pb::AssignDomainRequest { name: n, owner: "alice".into() });
        "RebootDomain" => c.domains.reboot_domain(dref(&n));
        "RebaseClone" => c.bases.rebase_clone(pb::RebaseCloneRequest { name: n, base: "adv-none".into() });
        "RemoveVolume" => c.bases.remove_volume(pb::RemoveVolumeRequest { domain: n, volume: "adv-none.qcow2".into() });
        "SetAutostart" => c.domains.set_autostart(pb::SetAutostartRequest { name: n, autostart: true });
        "SetResources" => c.domains.set_resources(pb::SetResourcesRequest { name: n, memory_mib: 256, vcpus: 1 });
        "PrepareBase" => c.bases.prepare_base(dref(&n));
        "RemoveBase" => c.bases.remove_base(dref(&n));
        "GetBase" => c.bases.get_base(dref(&n));
        "CloneBase(base)" => c.bases.clone_base(pb::CloneBaseRequest { base: n, name: "adv-new-clone".into(), ..Default::default() });
        "ListClones" => c.bases.list_clones(dref(&n));
        "RestoreClone" => c.bases.restore_clone(dref(&n));
        "SpinoffClone" => c.bases.spinoff_clone(dref(&n));
        "AddVolume" => c.bases.add_volume(pb::AddVolumeRequest { domain: n, role: data, size_bytes: 8 << 20, name: String::new(), format: 0 });
        "CopyDomainVolume" => c.bases.copy_domain_volume(pb::CopyDomainVolumeRequest { domain: n, volume: "adv-none.qcow2".into(), destination: "adv-copy.qcow2".into() });
        "SnapshotVolume" => c.bases.snapshot_volume(pb::SnapshotVolumeRequest { domain: n, volume: "adv-none.qcow2".into(), snapshot: "s1".into(), action: pb::VolumeSnapshotAction::Create as i32 });
        "CaptureImage" => c.bases.capture_image(pb::CaptureImageRequest { domain: n, image: "adv-img.qcow2".into() });
        "DetachVolume" => c.bases.detach_volume(pb::AttachVolumeRequest { domain: n.clone(), volume: "adv-none.qcow2".into() });
        "AttachVolume" => c.bases.attach_volume(pb::AttachVolumeRequest { domain: n.clone(), volume: "adv-none.qcow2".into() });
        "RestoreVolume" => c.bases.restore_volume(restore(&n, "adv-none.qcow2", "adv-from.qcow2"));
        "ResizeDomainVolume" => c.bases.resize_domain_volume(pb::ResizeDomainVolumeRequest { domain: n, volume: "adv-none.qcow2".into(), size_bytes: 32 << 20 });
        "ExportBase" => c.bases.export_base(dref(&n));
        "ExportDomain" => c.bases.export_domain(dref(&n));
        "ExportForMigration" => c.bases.export_for_migration(dref(&n));
        "MigrateDomain" => c.bases.migrate_domain(pb::MigrateDomainRequest { name: n, dest_uri, dest_xml: String::new(), bandwidth_mib: 0 });
        "FinishMigration" => c.bases.finish_migration(dref(&n));
        "CreateSnapshot" => c.snapshots.create_snapshot(snap!(CreateSnapshotRequest, n, "s1"));
        "ListSnapshots" => c.snapshots.list_snapshots(pb::ListSnapshotsRequest { domain: n, filters: vec![] });
        "GetSnapshot" => c.snapshots.get_snapshot(pb::SnapshotRef { domain: n, name: "s1".into() });
        "ListChildren" => c.snapshots.list_children(pb::ListChildrenRequest { domain: n, name: "s1".into(), recursive: false });
        "RevertSnapshot" => c.snapshots.revert_snapshot(snap!(RevertSnapshotRequest, n, "s1"));
        "DeleteSnapshot" => c.snapshots.delete_snapshot(snap!(DeleteSnapshotRequest, n, "s1"));
        "ExposePort" => c.ports.expose_port(expose(&n, 80, 0));
        "RemovePort" => c.ports.remove_port(pb::RemovePortRequest { domain: n, guest_port: 80 });
        "RemoveAllPorts" => c.ports.remove_all_ports(pb::RemoveAllPortsRequest { domain: n });
        "RestrictDisplay" => c.ports.restrict_display(pb::RestrictDisplayRequest { domain: n, client_ip: "192.0.2.7".into() });
        "PingGuest" => c.guest.ping_guest(dref(&n));
        "GuestExec" => c.guest.guest_exec(pb::GuestExecRequest { name: n, path: "touch".into(), args: vec!["/tmp/adv".into()], ..Default::default() });
        "ReadGuestFile" => c.guest.read_guest_file(pb::GuestFileRef { name: n, path: "/etc/hostname".into() });
        "WriteGuestFile" => c.guest.write_guest_file(tokio_stream::iter(vec![pb::GuestFileWrite { file: Some(pb::GuestFileRef { name: n, path: "/tmp/adv".into() }), data: b"x".to_vec() }]));
    }
}

/// Every RPC that takes a volume name, called with `v`.
fn volume_rpcs(v: &str, w: &AgentWorld) -> Vec<(&'static str, Call<C>)> {
    let (v, free) = (v.to_string(), w.free.clone());
    crate::calls! { C, it, |c| [v, free];
        "CreateVolume" => c.volumes.create_volume(new_volume(&v, 8 << 20, 0));
        "CreateOverlay(name)" => c.volumes.create_overlay(pb::CreateOverlayRequest { name: v, backing: free });
        "CreateOverlay(backing)" => c.volumes.create_overlay(pb::CreateOverlayRequest { name: "adv-overlay.qcow2".into(), backing: v });
        "GetVolumeInfo" => c.volumes.get_volume_info(pb::VolumeRef { name: v });
        "CopyVolume(source)" => c.volumes.copy_volume(pb::CopyVolumeRequest { source: v, destination: "adv-copy.qcow2".into(), ..Default::default() });
        "CopyVolume(destination)" => c.volumes.copy_volume(pb::CopyVolumeRequest { source: free, destination: v, ..Default::default() });
        "RebaseVolume" => c.volumes.rebase_volume(rebase(&v, ""));
        "ResizeVolume" => c.volumes.resize_volume(resize(&v, 64 << 20, false));
        "DeleteVolume" => c.volumes.delete_volume(pb::VolumeRef { name: v });
        "VolumeChecksum" => c.sync.volume_checksum(pb::VolumeChecksumRequest { volume: v });
        "SendVolume" => send(&mut c, v, "127.0.0.1:9");
        "DefineDomain(disk)" => c.domains.define_domain(with_disk("adv-new", &v, false, 16 << 20));
        "CaptureImage(image)" => c.bases.capture_image(pb::CaptureImageRequest { domain: "adv-none".into(), image: v });
        "DefineFromImage(image)" => c.bases.define_from_image(pb::DefineFromImageRequest { image: v, name: "adv-new".into(), definition_xml: "<domain/>".into(), checksum: "blake3:00".into() });
    }
}

/// The whole table for one agent.
pub fn agent_cases(w: &AgentWorld) -> Vec<Case<C>> {
    let mut cases = Vec::new();
    // Bad names, everywhere a name goes.
    for (what, n) in bad_names() {
        let says = name_says(&n);
        for (rpc, call) in domain_rpcs(&n).into_iter().chain(volume_rpcs(&n, w)) {
            cases.push(Case::of(
                rpc,
                format!("a name with {what}"),
                Code::InvalidArgument,
                says.iter().map(|s| s.to_string()).collect(),
                call,
            ));
        }
    }
    // Unknown ids: well-formed names of nothing (a new name is fine where things are made).
    let ghost = format!("{}ghost", w.p);
    let ghost_vol = format!("{}ghost.qcow2", w.p);
    let unknown = domain_rpcs(&ghost)
        .into_iter()
        .map(|(rpc, call)| (rpc, call, "an unknown domain", &ghost))
        .chain(
            volume_rpcs(&ghost_vol, w)
                .into_iter()
                .map(|(rpc, call)| (rpc, call, "an unknown volume", &ghost_vol)),
        );
    for (rpc, call, input, name) in unknown {
        let made_here = [
            "DefineDomain",
            "CreateVolume",
            "CreateOverlay(name)",
            "CopyVolume(destination)",
            "DefineDomain(disk)",
            "CaptureImage(image)",
            "DefineFromImage(image)",
        ];
        if !made_here.contains(&rpc) {
            let says = vec![name.clone()];
            cases.push(Case::of(rpc, input.into(), Code::NotFound, says, call));
        }
    }
    cases.extend(number_cases(w));
    cases.extend(ownership_cases(w));
    cases
}

/// Zero, negative (as a huge unsigned), out-of-range and enum values no one defined.
fn number_cases(w: &AgentWorld) -> Vec<Case<C>> {
    let mut out: Vec<Case<C>> = Vec::new();
    let AgentWorld {
        p,
        base,
        free,
        clone: d,
        ..
    } = w.clone();
    let (vol, n, clone) = (
        format!("{p}num.qcow2"),
        format!("{p}num"),
        format!("{p}num-clone"),
    );
    let disk = format!("{n}-vda.qcow2");
    let data = pb::VolumeRole::Data as i32;
    for (input, size, says) in [
        ("size 0", 0u64, "greater than zero"),
        ("size 1 byte", 1, "too small"),
        ("size -1 (u64::MAX)", u64::MAX, "too large"),
    ] {
        // 0 means "exists" to a definition; 1 byte is too small.
        let (disk_size, disk_says) = if size == 0 {
            (1, "too small")
        } else {
            (size, says)
        };
        let volume = pb::AddVolumeRequest {
            domain: format!("{clone}x"),
            role: data,
            size_bytes: size,
            name: String::new(),
            format: 0,
        };
        crate::cases! { out, C, |c|;
            "CreateVolume", input, InvalidArgument, [says], it [vol] => c.volumes.create_volume(new_volume(&vol, size, 0));
            "ResizeVolume", input, InvalidArgument, [says], it [free] => c.volumes.resize_volume(resize(&free, size, true));
            "DefineDomain", format!("disk {input}"), InvalidArgument, [disk_says], it [n, disk] => c.domains.define_domain(with_disk(&n, &disk, false, disk_size));
            "AddVolume", input, InvalidArgument, [says], it [volume] => c.bases.add_volume(volume);
        }
    }
    let edited = |edit: fn(&mut pb::DomainSpec)| {
        let mut s = spec_with_disk(&n, &disk, false, 16 << 20);
        edit(&mut s);
        define(s)
    };
    let specs = [
        ("memory 1 MiB", "out of range", edited(|s| s.memory_mib = 1)),
        (
            "memory u64::MAX",
            "out of range",
            edited(|s| s.memory_mib = u64::MAX),
        ),
        (
            "100000 vCPUs",
            "out of range",
            edited(|s| s.vcpus = 100_000),
        ),
        (
            "role 99",
            "unknown volume role",
            edited(|s| s.disks[0].role = 99),
        ),
        (
            "display type 42",
            "unknown display type",
            edited(|s| {
                s.display = Some(pb::DisplaySpec {
                    r#type: 42,
                    listen: String::new(),
                })
            }),
        ),
        (
            "display listen $(id)",
            "not an ip address",
            edited(|s| {
                s.display = Some(pb::DisplaySpec {
                    r#type: 1,
                    listen: "$(id)".into(),
                })
            }),
        ),
        (
            "a multicast MAC",
            "multicast",
            edited(|s| {
                s.nics = vec![pb::NicSpec {
                    mac: "01:00:5e:00:00:01".into(),
                    ..Default::default()
                }]
            }),
        ),
        (
            "NIC model 'evil'",
            "unknown nic model",
            edited(|s| {
                s.nics = vec![pb::NicSpec {
                    model: "evil".into(),
                    ..Default::default()
                }]
            }),
        ),
        (
            "video model 'x'",
            "unknown video model",
            edited(|s| s.video_model = "x".into()),
        ),
        (
            "a relative kernel path",
            "must be absolute",
            edited(|s| {
                s.kernel_boot = Some(pb::KernelBoot {
                    kernel: "../../boot/vmlinuz".into(),
                    ..Default::default()
                })
            }),
        ),
        (
            "a label with a newline",
            "control characters",
            edited(|s| drop(s.labels.insert("course".into(), "a\nb".into()))),
        ),
        (
            "a 300-character label key",
            "keys are 1-63",
            edited(|s| drop(s.labels.insert("k".repeat(300), "v".into()))),
        ),
        (
            "27 disks",
            "at most 26 disks",
            edited(|s| {
                s.disks = (0..27)
                    .map(|i| pb::DiskSpec {
                        volume: format!("adv-d{i}.qcow2"),
                        create_size_bytes: 1 << 20,
                        ..Default::default()
                    })
                    .collect()
            }),
        ),
        (
            "one volume twice",
            "given twice",
            edited(|s| s.disks.push(s.disks[0].clone())),
        ),
    ];
    for (input, says, r) in specs {
        crate::cases! { out, C, |c|; "DefineDomain", input, InvalidArgument, [says], it [r] => c.domains.define_domain(r); }
    }
    let clone_req = |edit: fn(&mut pb::CloneBaseRequest)| {
        let mut r = pb::CloneBaseRequest {
            base: base.clone(),
            name: clone.clone(),
            ..Default::default()
        };
        edit(&mut r);
        r
    };
    let clones = [
        (
            "memory 1 MiB",
            "out of range",
            clone_req(|r| r.memory_mib = 1),
        ),
        ("9999 vCPUs", "out of range", clone_req(|r| r.vcpus = 9999)),
        (
            "data volume mode 7",
            "unknown data volume mode",
            clone_req(|r| r.data_volumes = 7),
        ),
        (
            "a label with a direction override",
            "control characters",
            clone_req(|r| drop(r.labels.insert("k".into(), "\u{202E}x".into()))),
        ),
    ];
    for (input, says, r) in clones {
        crate::cases! { out, C, |c|; "CloneBase", input, InvalidArgument, [says], it [r] => c.bases.clone_base(r); }
    }
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
        crate::cases! { out, C, |c|; "ExposePort", input, InvalidArgument, [says], it [d] => c.ports.expose_port(expose(&d, guest, host)); }
    }
    let nul: std::collections::HashMap<String, String> =
        [("k".to_string(), "a\0b".to_string())].into();
    crate::cases! { out, C, |c|;
        "RestrictDisplay", "client 'nobody'", InvalidArgument, ["client"], it [d] => c.ports.restrict_display(pb::RestrictDisplayRequest { domain: d, client_ip: "nobody".into() });
        "GuestExec", "no program", InvalidArgument, ["program"], it [d] => c.guest.guest_exec(pb::GuestExecRequest { name: d, ..Default::default() });
        "GuestExec", "a time limit of u32::MAX s", InvalidArgument, ["maximum"], it [d] => c.guest.guest_exec(pb::GuestExecRequest { name: d, path: "true".into(), timeout_seconds: u32::MAX, ..Default::default() });
        "GuestExec", "an environment entry without '='", InvalidArgument, ["NAME=VALUE"], it [d] => c.guest.guest_exec(pb::GuestExecRequest { name: d, path: "true".into(), env: vec!["PATH".into()], ..Default::default() });
        "GuestExec", "64 KiB + 1 of input", InvalidArgument, ["standard input", "vm cp"], it [d] => c.guest.guest_exec(pb::GuestExecRequest { name: d, path: "cat".into(), input: vec![0; (64 << 10) + 1], ..Default::default() });
        "ReadGuestFile", "a relative path", InvalidArgument, ["absolute"], it [d] => c.guest.read_guest_file(pb::GuestFileRef { name: d, path: "etc/passwd".into() });
        "WriteGuestFile", "a path with NUL", InvalidArgument, ["NUL"], it [d] => c.guest.write_guest_file(tokio_stream::iter(vec![pb::GuestFileWrite { file: Some(pb::GuestFileRef { name: d, path: "/tmp/a\0b".into() }), data: vec![] }]));
        "WriteGuestFile", "no file named", InvalidArgument, ["name the file"], it [d] => { let _ = &d; c.guest.write_guest_file(tokio_stream::iter(vec![pb::GuestFileWrite { file: None, data: b"x".to_vec() }])) };
        "CreateSnapshot", "a 5000-character description", InvalidArgument, ["description"], it [d] => c.snapshots.create_snapshot(snap!(CreateSnapshotRequest, d, "s", description: "x".repeat(5000)));
        "RevertSnapshot", "mode 9", InvalidArgument, ["mode"], it [d] => c.snapshots.revert_snapshot(snap!(RevertSnapshotRequest, d, "s", mode: 9));
        "DeleteSnapshot", "mode 9", InvalidArgument, ["mode"], it [d] => c.snapshots.delete_snapshot(snap!(DeleteSnapshotRequest, d, "s", mode: 9));
        "CreateVolume", "format 9", InvalidArgument, ["format"], it [] => c.volumes.create_volume(new_volume("adv-fmt.qcow2", 8 << 20, 9));
        "ImportDomain", "a definition that is not XML", InvalidArgument, ["xml"], it [] => c.bases.import_domain(import("<domain"));
        "ImportBase", "a definition that is not XML", InvalidArgument, ["xml"], it [] => c.bases.import_base(import("not xml at all"));
        "SendVolume", "no peer", InvalidArgument, ["peer"], it [free] => send(&mut c, free, "");
        "ListDomains", "a label filter with a NUL", InvalidArgument, ["label"], it [nul] => c.domains.list_domains(pb::ListDomainsRequest { labels: nul });
    }
    out.extend(peer_and_stream_cases(w));
    out
}

/// What another domain or a base owns: a hostile request names it.
fn ownership_cases(w: &AgentWorld) -> Vec<Case<C>> {
    let mut out: Vec<Case<C>> = Vec::new();
    let AgentWorld {
        p,
        base,
        base_file: bf,
        clone,
        clone_disk: cd,
        other,
        other_disk: od,
        free,
        storage,
        ..
    } = w.clone();
    let (thief, peek, scribble, squat) = (
        format!("{p}thief"),
        format!("{p}peek"),
        format!("{p}scribble"),
        format!("{p}squat"),
    );
    let on_other = foreign_xml(
        &format!("{p}import"),
        &storage.join(&od).display().to_string(),
    );
    let shadow = foreign_xml_ro(
        &format!("{p}import2"),
        &storage.join(&free).display().to_string(),
        "/etc/shadow",
    );
    crate::cases! { out, C, |c|;
        // Another domain's disk, attached writable or read-only (it writes to it) by a new domain.
        "DefineDomain", "another domain's disk", FailedPrecondition, ["belongs to domain", other], it [thief, od] => c.domains.define_domain(with_disk(&thief, &od, false, 0));
        "DefineDomain", "another domain's disk, read-only", FailedPrecondition, ["write to it"], it [peek, od] => c.domains.define_domain(with_disk(&peek, &od, true, 0));
        // A base file, writable (item 3 of issue 8).
        "DefineDomain", "a base file, writable", FailedPrecondition, ["base file", base], it [scribble, bf] => c.domains.define_domain(with_disk(&scribble, &bf, false, 0));
        // A clone's overlay, which backs nothing but belongs to the clone.
        "DefineDomain", "a clone's overlay", FailedPrecondition, ["belongs to domain", clone], it [squat, cd] => c.domains.define_domain(with_disk(&squat, &cd, false, 0));
        // Base files: never resized, rebased or deleted while a clone uses them.
        "ResizeVolume", "a base file with clones", FailedPrecondition, ["base file"], it [bf] => c.volumes.resize_volume(resize(&bf, 1 << 30, false));
        "RebaseVolume", "a base file with clones", FailedPrecondition, ["base file"], it [bf] => c.volumes.rebase_volume(rebase(&bf, ""));
        "DeleteVolume", "a base file with clones", FailedPrecondition, ["base file"], it [bf] => c.volumes.delete_volume(pb::VolumeRef { name: bf });
        "RebaseVolume", "a base file onto another domain's disk", FailedPrecondition, ["base file"], it [bf, od] => c.volumes.rebase_volume(rebase(&bf, &od));
        // Another domain's disk: not deleted by the volume API.
        "DeleteVolume", "another domain's disk", FailedPrecondition, ["belongs to domain"], it [od] => c.volumes.delete_volume(pb::VolumeRef { name: od });
        // A base with clones is not removed, nor its base; bases never run: no start, no ports.
        "RemoveDomain", "a base with clones", FailedPrecondition, ["clone"], it [base] => c.domains.remove_domain(pb::RemoveDomainRequest { name: base, remove_volumes: true });
        "RemoveBase", "a base with clones", FailedPrecondition, ["clone"], it [base] => c.bases.remove_base(dref(&base));
        "StartDomain", "a base", FailedPrecondition, ["base"], it [base] => c.domains.start_domain(dref(&base));
        "ExposePort", "a base", FailedPrecondition, ["base"], it [base] => c.ports.expose_port(expose(&base, 80, 0));
        // Importing a definition that points at another domain's disk, or outside the storage.
        "ImportDomain", "a definition on another domain's disk", FailedPrecondition, ["belongs to domain", other], it [on_other] => c.bases.import_domain(import(&on_other));
        "ImportDomain", "a definition attaching /etc/shadow read-only", InvalidArgument, ["outside the storage root"], it [shadow] => c.bases.import_domain(import(&shadow));
        // Names taken.
        "CloneBase", "the name of an existing domain", AlreadyExists, ["already exists"], it [base, other] => c.bases.clone_base(pb::CloneBaseRequest { base, name: other, ..Default::default() });
        "DefineDomain", "the name of a base", AlreadyExists, ["already exists"], it [base] => c.domains.define_domain(with_disk(&base, "adv-fresh.qcow2", false, 16 << 20));
        "CaptureImage", "an existing volume as the image", AlreadyExists, ["already exists"], it [other, free] => c.bases.capture_image(pb::CaptureImageRequest { domain: other, image: free });
        "DetachVolume", "another domain's disk", NotFound, ["has no volume"], it [clone, od] => c.bases.detach_volume(pb::AttachVolumeRequest { domain: clone, volume: od });
        "DetachVolume", "a base's volume", FailedPrecondition, ["base"], it [base, bf] => c.bases.detach_volume(pb::AttachVolumeRequest { domain: base, volume: bf });
        // A restore puts only a free file in place of the domain's own volume.
        "RestoreVolume", "another domain's disk as the volume", NotFound, ["has no volume"], it [clone, od, free] => c.bases.restore_volume(restore(&clone, &od, &free));
        "RestoreVolume", "another domain's disk as the file", FailedPrecondition, ["belongs to domain", clone], it [other, od, cd] => c.bases.restore_volume(restore(&other, &od, &cd));
        "RestoreVolume", "a base file as the file", FailedPrecondition, ["base file"], it [other, od, bf] => c.bases.restore_volume(restore(&other, &od, &bf));
        "RestoreVolume", "a base's file", FailedPrecondition, ["base"], it [base, bf, free] => c.bases.restore_volume(restore(&base, &bf, &free));
        "RestoreVolume", "the volume from itself", InvalidArgument, ["itself"], it [other, od] => c.bases.restore_volume(restore(&other, &od, &od));
        "SendVolume", "a basis that is the copy", InvalidArgument, ["basis"], it [free] => send_req(&mut c, pb::SendVolumeRequest { volume: free, peer: "127.0.0.1:9".into(), dest: "adv-b.qcow2".into(), basis: "adv-b.qcow2".into(), ..Default::default() });
        "SendVolume", "a mode its owner cannot read", InvalidArgument, ["mode"], it [free] => send_req(&mut c, pb::SendVolumeRequest { volume: free, peer: "127.0.0.1:9".into(), mode: 0o044, ..Default::default() });
        "SendVolume", "a destination with a path", InvalidArgument, ["destination volume"], it [free] => send_req(&mut c, pb::SendVolumeRequest { volume: free, peer: "127.0.0.1:9".into(), dest: "../x.qcow2".into(), ..Default::default() });
        "DefineFromImage", "the name of a base", AlreadyExists, ["already exists"], it [base, free] => c.bases.define_from_image(pb::DefineFromImageRequest { image: free, name: base, definition_xml: "<domain/>".into(), checksum: "blake3:00".into() });
        "DefineFromImage", "an image not on this host", FailedPrecondition, ["sync it first"], it [] => c.bases.define_from_image(pb::DefineFromImageRequest { image: "adv-noimage.qcow2".into(), name: "adv-fromimg".into(), definition_xml: "<domain/>".into(), checksum: "blake3:00".into() });
        "DefineFromImage", "another domain's disk as the image", FailedPrecondition, ["not an image"], it [od] => c.bases.define_from_image(pb::DefineFromImageRequest { image: od, name: "adv-fromimg".into(), definition_xml: "<domain/>".into(), checksum: "blake3:00".into() });
        "DefineFromImage", "a base file as the image", FailedPrecondition, ["not an image"], it [bf] => c.bases.define_from_image(pb::DefineFromImageRequest { image: bf, name: "adv-fromimg".into(), definition_xml: "<domain/>".into(), checksum: "blake3:00".into() });
        "DefineFromImage", "a writable free volume as the image", FailedPrecondition, ["not an image"], it [free] => c.bases.define_from_image(pb::DefineFromImageRequest { image: free, name: "adv-fromimg".into(), definition_xml: "<domain/>".into(), checksum: "blake3:00".into() });
        "DefineFromImage", "an md5 checksum", InvalidArgument, ["blake3"], it [free] => c.bases.define_from_image(pb::DefineFromImageRequest { image: free, name: "adv-fromimg".into(), definition_xml: "<domain/>".into(), checksum: "md5:00".into() });
        "CreateVolume", "the name of an existing volume", AlreadyExists, ["already exists"], it [free] => c.volumes.create_volume(new_volume(&free, 8 << 20, 0));
        "SpinoffClone", "a domain that is no clone", FailedPrecondition, ["clone"], it [other] => c.bases.spinoff_clone(dref(&other));
        "RestoreClone", "a domain that is no clone", FailedPrecondition, ["clone"], it [other] => c.bases.restore_clone(dref(&other));
        "AssignDomain", "a base", FailedPrecondition, ["base"], it [base] => c.domains.assign_domain(pb::AssignDomainRequest { name: base, owner: "alice".into() });
        "AssignDomain", "an owner with a path", InvalidArgument, ["owner"], it [clone] => c.domains.assign_domain(pb::AssignDomainRequest { name: clone, owner: "../root".into() });
        "AssignDomain", "an empty owner", InvalidArgument, ["owner"], it [clone] => c.domains.assign_domain(pb::AssignDomainRequest { name: clone, owner: String::new() });
        "SetAutostart", "a base", FailedPrecondition, ["base"], it [base] => c.domains.set_autostart(pb::SetAutostartRequest { name: base, autostart: true });
        "SetResources", "a base", FailedPrecondition, ["base"], it [base] => c.domains.set_resources(pb::SetResourcesRequest { name: base, memory_mib: 256, vcpus: 0 });
        "SetResources", "nothing to change", InvalidArgument, ["memory or vCPUs"], it [clone] => c.domains.set_resources(pb::SetResourcesRequest { name: clone, memory_mib: 0, vcpus: 0 });
        "SetResources", "u64::MAX MiB", InvalidArgument, ["memory"], it [clone] => c.domains.set_resources(pb::SetResourcesRequest { name: clone, memory_mib: u64::MAX, vcpus: 0 });
        "SetResources", "10000 vCPUs", InvalidArgument, ["vCPU"], it [clone] => c.domains.set_resources(pb::SetResourcesRequest { name: clone, memory_mib: 0, vcpus: 10_000 });
        "RebootDomain", "a shut-off domain", FailedPrecondition, ["reboot"], it [clone] => c.domains.reboot_domain(dref(&clone));
        "RebaseClone", "a domain that is no clone", FailedPrecondition, ["not a clone"], it [other, base] => c.bases.rebase_clone(pb::RebaseCloneRequest { name: other, base });
        "RebaseClone", "onto its own base", FailedPrecondition, ["already a clone"], it [clone, base] => c.bases.rebase_clone(pb::RebaseCloneRequest { name: clone, base });
        "RebaseClone", "onto a base named ../x", InvalidArgument, ["base"], it [clone] => c.bases.rebase_clone(pb::RebaseCloneRequest { name: clone, base: "../x".into() });
        "RebaseClone", "onto an unknown base", NotFound, ["adv-ghost-base"], it [clone] => c.bases.rebase_clone(pb::RebaseCloneRequest { name: clone, base: "adv-ghost-base".into() });
        "RebaseClone", "onto a domain that is no base", FailedPrecondition, ["not a base"], it [clone, other] => c.bases.rebase_clone(pb::RebaseCloneRequest { name: clone, base: other });
        "RemoveVolume", "a base's volume", FailedPrecondition, ["base"], it [base, bf] => c.bases.remove_volume(pb::RemoveVolumeRequest { domain: base, volume: bf });
        "RemoveVolume", "another domain's disk", NotFound, ["no volume"], it [clone, od] => c.bases.remove_volume(pb::RemoveVolumeRequest { domain: clone, volume: od });
        "RemoveVolume", "the system disk", FailedPrecondition, ["only swap and data"], it [clone, cd] => c.bases.remove_volume(pb::RemoveVolumeRequest { domain: clone, volume: cd });
        "RemoveVolume", "a path as the volume", InvalidArgument, ["volume"], it [clone] => c.bases.remove_volume(pb::RemoveVolumeRequest { domain: clone, volume: "../../etc/passwd".into() });
    }
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
            ..Default::default()
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
    let AgentWorld {
        other,
        other_disk: od,
        base_file: bf,
        addr,
        ..
    } = w.clone();
    crate::cases! { out, C, |c|;
        "PrepareMigration", "a host without migration_uri", Unimplemented, ["migration_uri"], it [] => c.bases.prepare_migration(import("<domain/>"));
        "ReceiveVolume", "replacing another domain's disk", FailedPrecondition, ["belongs to domain", other], it [addr, od] => receive(addr, od, 16 << 20);
        "ReceiveVolume", "replacing a base file", FailedPrecondition, ["base file"], it [addr, bf] => receive(addr, bf, 16 << 20);
    }
    for (what, n) in bad_names() {
        if !n.is_empty() {
            crate::cases! { out, C, |c|;
                "WatchDomainEvents", format!("a name with {what}"), InvalidArgument, ["invalid", "name"], it [n] => c.host.watch_domain_events(pb::WatchDomainEventsRequest { domain: n });
            }
        }
        let call = crate::call!(C, it, |c| [addr, n] receive(addr, n, 1 << 20));
        let says = name_says(&n).iter().map(|s| s.to_string()).collect();
        let input = format!("a header naming a volume with {what}");
        out.push(Case::of(
            "ReceiveVolume",
            input,
            Code::InvalidArgument,
            says,
            call,
        ));
    }
    out
}
