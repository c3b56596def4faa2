//! Every domain, snapshot, base and volume operation through gRPC, against libvirt's own
//! `test:///default` driver (no daemon) and the real `qemu-img`.
//!
//! All connections of one process share the test driver's state, so every test uses
//! names of its own.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;

use corral_agent::config::{Config, DomainType, FirewallKind};
use corral_agent::server;
use corral_client::proto as pb;
use corral_client::AgentClient;
use tokio_stream::StreamExt;
use tonic::Code;

struct Fixture {
    c: AgentClient,
    addr: String,
    _dir: tempfile::TempDir,
    storage: std::path::PathBuf,
}

async fn start() -> Fixture {
    virt::error::clear_error_callback();
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        libvirt_uri: "test:///default".into(),
        domain_type: DomainType::Test,
        firewall: FirewallKind::None,
        storage_root: dir.path().join("storage"),
        state_dir: dir.path().join("state"),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Config::default()
    };
    let storage = cfg.storage_root.clone();
    let agent = server::build(cfg).await.unwrap();
    let (listener, addr) = server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    tokio::spawn(server::serve(agent, listener, std::future::pending()));
    let c = AgentClient::connect(&addr.to_string()).await.unwrap();
    Fixture {
        c,
        addr: format!("http://{addr}"),
        _dir: dir,
        storage,
    }
}

fn spec(name: &str) -> pb::DomainSpec {
    pb::DomainSpec {
        name: name.into(),
        vcpus: 1,
        memory_mib: 128,
        disks: vec![
            pb::DiskSpec {
                volume: format!("{name}-vda.qcow2"),
                role: pb::VolumeRole::System as i32,
                create_size_bytes: 16 << 20,
                readonly: false,
            },
            pb::DiskSpec {
                volume: format!("{name}-vdb.qcow2"),
                role: pb::VolumeRole::Data as i32,
                create_size_bytes: 8 << 20,
                readonly: false,
            },
        ],
        nics: vec![pb::NicSpec::default()],
        display: Some(pb::DisplaySpec {
            r#type: pb::DisplayType::Spice as i32,
            listen: String::new(),
        }),
        video_model: "qxl".into(),
        kernel_boot: None,
        labels: HashMap::from([("course".to_string(), "net101".to_string())]),
        owner: "alice".into(),
    }
}

fn dref(n: &str) -> pb::DomainRef {
    pb::DomainRef { name: n.into() }
}

async fn define(f: &mut Fixture, name: &str) -> pb::Domain {
    f.c.domains
        .define_domain(pb::DefineDomainRequest {
            spec: Some(spec(name)),
        })
        .await
        .unwrap()
        .into_inner()
}

fn state(d: &pb::Domain) -> pb::DomainState {
    pb::DomainState::try_from(d.state).unwrap()
}

#[tokio::test]
async fn domain_lifecycle() {
    let mut f = start().await;
    let d = define(&mut f, "td-life").await;
    assert_eq!(state(&d), pb::DomainState::ShutOff);
    assert_eq!(d.memory_mib, 128);
    assert_eq!(d.disks.len(), 2);
    assert_eq!(d.disks[1].role, pb::VolumeRole::Data as i32);
    assert_eq!(d.labels.get("course").map(String::as_str), Some("net101"));
    assert_eq!(d.owner, "alice");
    assert_eq!(d.video_model, "qxl");
    assert!(d.nics[0].mac.starts_with("52:54:00:"));
    assert!(f.storage.join("td-life-vda.qcow2").is_file());

    let mut events =
        f.c.host
            .watch_domain_events(pb::WatchDomainEventsRequest {
                domain: "td-life".into(),
            })
            .await
            .unwrap()
            .into_inner();
    let d =
        f.c.domains
            .start_domain(dref("td-life"))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(state(&d), pb::DomainState::Running);
    assert!(d.started_at_unix > 0);
    // libvirt delivers events from its own loop: the definition's event may still arrive
    // after the watch began (seen once in CI), never anything else before the start.
    let e = loop {
        let e = tokio::time::timeout(std::time::Duration::from_secs(5), events.next())
            .await
            .expect("a lifecycle event")
            .unwrap()
            .unwrap();
        if e.kind != pb::DomainEventKind::Defined as i32 {
            break e;
        }
    };
    assert_eq!(e.kind, pb::DomainEventKind::Started as i32);
    assert_eq!(e.domain, "td-life");

    let err = f.c.domains.start_domain(dref("td-life")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("running"));

    let d =
        f.c.domains
            .suspend_domain(dref("td-life"))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(state(&d), pb::DomainState::Paused);
    let d =
        f.c.domains
            .resume_domain(dref("td-life"))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(state(&d), pb::DomainState::Running);
    f.c.domains.reset_domain(dref("td-life")).await.unwrap();

    let shot =
        f.c.domains
            .get_screenshot(dref("td-life"))
            .await
            .unwrap()
            .into_inner();
    assert!(shot.png.starts_with(b"\x89PNG"));
    assert!(shot.width > 0);
    let disp =
        f.c.domains
            .get_display(dref("td-life"))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(disp.r#type, pb::DisplayType::Spice as i32);
    assert_eq!(disp.password.len(), 8);
    assert!(disp.remote_viewer_file.contains("type=spice"));
    assert!(disp
        .remote_viewer_file
        .contains(&format!("password={}", disp.password)));
    let xml =
        f.c.domains
            .get_domain_xml(dref("td-life"))
            .await
            .unwrap()
            .into_inner()
            .xml;
    assert!(xml.contains("https://corral.dev/xmlns/agent/1"), "{xml}");

    let d =
        f.c.domains
            .hibernate_domain(dref("td-life"))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(state(&d), pb::DomainState::Hibernated);
    assert!(d.has_managed_save);
    let d =
        f.c.domains
            .start_domain(dref("td-life"))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(state(&d), pb::DomainState::Running);

    let d =
        f.c.domains
            .shutdown_domain(pb::ShutdownDomainRequest {
                name: "td-life".into(),
                timeout_seconds: 5,
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(state(&d), pb::DomainState::ShutOff);
    f.c.domains.start_domain(dref("td-life")).await.unwrap();
    let d =
        f.c.domains
            .power_off_domain(dref("td-life"))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(state(&d), pb::DomainState::ShutOff);
    assert_eq!(d.started_at_unix, 0);

    let list =
        f.c.domains
            .list_domains(pb::ListDomainsRequest {
                labels: HashMap::from([("course".into(), "net101".into())]),
            })
            .await
            .unwrap()
            .into_inner();
    assert!(list.domains.iter().any(|d| d.name == "td-life"));

    let r =
        f.c.domains
            .remove_domain(pb::RemoveDomainRequest {
                name: "td-life".into(),
                remove_volumes: true,
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(r.removed_volumes.len(), 2);
    assert!(!f.storage.join("td-life-vda.qcow2").exists());
    let err = f.c.domains.get_domain(dref("td-life")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn bad_input_changes_nothing() {
    let mut f = start().await;
    let before = std::fs::read_dir(&f.storage).unwrap().count();
    for bad in ["", "a/b", "..", "x\0y", "tab\there", &"n".repeat(65)] {
        let mut s = spec("ok");
        s.name = bad.into();
        let err =
            f.c.domains
                .define_domain(pb::DefineDomainRequest { spec: Some(s) })
                .await
                .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err:?}");
        assert!(err.message().contains("name"), "{}", err.message());
    }
    let mut s = spec("td-bad1");
    s.disks[0].create_size_bytes = u64::MAX;
    let err =
        f.c.domains
            .define_domain(pb::DefineDomainRequest { spec: Some(s) })
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("too large"));
    let mut s = spec("td-bad2");
    s.disks[1].role = 42;
    let err =
        f.c.domains
            .define_domain(pb::DefineDomainRequest { spec: Some(s) })
            .await
            .unwrap_err();
    assert!(
        err.message().contains("unknown volume role 42"),
        "{}",
        err.message()
    );
    let mut s = spec("td-bad3");
    s.disks[0].volume = "../escape.qcow2".into();
    let err =
        f.c.domains
            .define_domain(pb::DefineDomainRequest { spec: Some(s) })
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut s = spec("td-bad4");
    s.memory_mib = 1;
    assert_eq!(
        f.c.domains
            .define_domain(pb::DefineDomainRequest { spec: Some(s) })
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let mut s = spec("td-bad5");
    s.kernel_boot = Some(pb::KernelBoot {
        kernel: "/nonexistent/vmlinuz".into(),
        ..Default::default()
    });
    assert_eq!(
        f.c.domains
            .define_domain(pb::DefineDomainRequest { spec: Some(s) })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // Nothing was created by any of them.
    assert_eq!(std::fs::read_dir(&f.storage).unwrap().count(), before);
    for n in ["td-bad1", "td-bad2", "td-bad3", "td-bad4", "td-bad5"] {
        assert_eq!(
            f.c.domains.get_domain(dref(n)).await.unwrap_err().code(),
            Code::NotFound
        );
    }

    define(&mut f, "td-dup").await;
    let err =
        f.c.domains
            .define_domain(pb::DefineDomainRequest {
                spec: Some(spec("td-dup")),
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = f.c.domains.resume_domain(dref("td-dup")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("shut off"), "{}", err.message());
    let err =
        f.c.domains
            .get_screenshot(dref("td-dup"))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err =
        f.c.ports
            .expose_port(pb::ExposePortRequest {
                domain: "td-dup".into(),
                guest_port: 70000,
                ..Default::default()
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("out of range"));
    let err =
        f.c.ports
            .expose_port(pb::ExposePortRequest {
                domain: "td-dup".into(),
                guest_port: 80,
                ..Default::default()
            })
            .await
            .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unimplemented,
        "this agent has no firewall: {err:?}"
    );
    let err =
        f.c.volumes
            .create_volume(pb::CreateVolumeRequest {
                name: "zero.qcow2".into(),
                size_bytes: 0,
                format: 0,
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    f.c.domains
        .remove_domain(pb::RemoveDomainRequest {
            name: "td-dup".into(),
            remove_volumes: true,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn bases_and_clones() {
    let mut f = start().await;
    define(&mut f, "td-base").await;
    let b =
        f.c.bases
            .prepare_base(dref("td-base"))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(b.volumes.len(), 2);
    let sys = &b.volumes[0];
    assert_eq!(sys.base_volume, "td-base-vda.base.qcow2");
    let meta = std::fs::metadata(f.storage.join(&sys.base_volume)).unwrap();
    assert!(meta.permissions().readonly(), "base files are read-only");
    assert_eq!(
        b.volumes[1].base_volume, "",
        "data volumes have no base file"
    );

    let err = f.c.bases.prepare_base(dref("td-base")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let err = f.c.domains.start_domain(dref("td-base")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("locked"));

    let c =
        f.c.bases
            .clone_base(pb::CloneBaseRequest {
                base: "td-base".into(),
                name: "td-clone1".into(),
                start: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(c.kind, pb::DomainKind::Clone as i32);
    assert_eq!(c.base, "td-base");
    assert_eq!(state(&c), pb::DomainState::Running);
    let base =
        f.c.domains
            .get_domain(dref("td-base"))
            .await
            .unwrap()
            .into_inner();
    assert_ne!(c.uuid, base.uuid);
    assert_ne!(c.nics[0].mac, base.nics[0].mac);
    let vol =
        f.c.volumes
            .get_volume_info(pb::VolumeRef {
                name: "td-clone1-vda.qcow2".into(),
            })
            .await
            .unwrap()
            .into_inner();
    assert!(
        vol.backing_chain[0]
            .path
            .ends_with("td-base-vda.base.qcow2"),
        "{vol:?}"
    );

    let err = f.c.bases.remove_base(dref("td-base")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("td-clone1"));
    let clones =
        f.c.bases
            .list_clones(dref("td-base"))
            .await
            .unwrap()
            .into_inner()
            .clones;
    assert_eq!(clones.len(), 1);

    // Restore and spinoff need a shut-off clone.
    let err =
        f.c.bases
            .restore_clone(dref("td-clone1"))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    f.c.domains
        .power_off_domain(dref("td-clone1"))
        .await
        .unwrap();
    f.c.bases.restore_clone(dref("td-clone1")).await.unwrap();
    let d =
        f.c.bases
            .add_volume(pb::AddVolumeRequest {
                domain: "td-clone1".into(),
                role: pb::VolumeRole::Swap as i32,
                size_bytes: 4 << 20,
                name: String::new(),
                format: 0,
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(d.disks.len(), 3);
    assert_eq!(d.disks[2].role, pb::VolumeRole::Swap as i32);
    let swap = d.disks[2].volume.clone();

    // A copy of a shut-off domain's swap volume goes to another domain; nothing owned by
    // someone else is copied from or attached.
    define(&mut f, "td-att").await;
    let copy = |volume: &str, destination: &str| pb::CopyDomainVolumeRequest {
        domain: "td-clone1".into(),
        volume: volume.into(),
        destination: destination.into(),
    };
    let err =
        f.c.bases
            .copy_domain_volume(copy("td-clone1-vda.qcow2", "td-sys.qcow2"))
            .await
            .unwrap_err();
    assert!(err.message().contains("only swap and data"), "{err:?}");
    let err =
        f.c.bases
            .copy_domain_volume(pb::CopyDomainVolumeRequest {
                domain: "td-att".into(),
                ..copy(&swap, "td-x.qcow2")
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "not td-att's volume: {err:?}");
    f.c.bases
        .copy_domain_volume(copy(&swap, "td-copy.qcow2"))
        .await
        .unwrap();
    let attach = |domain: &str, volume: &str| pb::AttachVolumeRequest {
        domain: domain.into(),
        volume: volume.into(),
    };
    for (vol, says) in [
        ("td-clone1-vda.qcow2", "belongs to domain(s) td-clone1"),
        ("td-base-vda.base.qcow2", "base file"),
        ("td-none.qcow2", "does not exist"),
    ] {
        let err =
            f.c.bases
                .attach_volume(attach("td-att", vol))
                .await
                .unwrap_err();
        assert!(err.message().contains(says), "{vol}: {err:?}");
    }
    let att =
        f.c.bases
            .attach_volume(attach("td-att", "td-copy.qcow2"))
            .await
            .unwrap()
            .into_inner();
    let last = att.disks.last().unwrap();
    assert_eq!(
        (last.volume.as_str(), last.role),
        ("td-copy.qcow2", pb::VolumeRole::Data as i32)
    );
    let err =
        f.c.bases
            .attach_volume(attach("td-clone1", "td-copy.qcow2"))
            .await
            .unwrap_err();
    assert!(
        err.message().contains("belongs to domain(s) td-att"),
        "{err:?}"
    );
    let gone =
        f.c.domains
            .remove_domain(pb::RemoveDomainRequest {
                name: "td-att".into(),
                remove_volumes: true,
            })
            .await
            .unwrap()
            .into_inner();
    assert!(
        gone.removed_volumes.contains(&"td-copy.qcow2".to_string()),
        "{gone:?}"
    );
    let d =
        f.c.bases
            .spinoff_clone(dref("td-clone1"))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(d.kind, pb::DomainKind::Plain as i32);
    let vol =
        f.c.volumes
            .get_volume_info(pb::VolumeRef {
                name: "td-clone1-vda.qcow2".into(),
            })
            .await
            .unwrap()
            .into_inner();
    assert!(vol.backing_chain.is_empty(), "spun off: {vol:?}");
    // With no clones left the base can go; its files go with it.
    f.c.bases.remove_base(dref("td-base")).await.unwrap();
    assert!(!f.storage.join("td-base-vda.base.qcow2").exists());
    f.c.domains.start_domain(dref("td-base")).await.unwrap();
    for n in ["td-clone1", "td-base"] {
        f.c.domains
            .remove_domain(pb::RemoveDomainRequest {
                name: n.into(),
                remove_volumes: true,
            })
            .await
            .unwrap();
    }
    let left: Vec<_> = std::fs::read_dir(&f.storage)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test]
async fn snapshot_trees() {
    let mut f = start().await;
    define(&mut f, "td-snap").await;
    f.c.domains.start_domain(dref("td-snap")).await.unwrap();
    let mk = |name: &str| pb::CreateSnapshotRequest {
        domain: "td-snap".into(),
        name: name.into(),
        description: format!("snapshot {name}"),
        ..Default::default()
    };
    let s1 =
        f.c.snapshots
            .create_snapshot(mk("s1"))
            .await
            .unwrap()
            .into_inner();
    assert!(s1.is_current);
    assert_eq!(s1.parent, "");
    assert_eq!(s1.description, "snapshot s1");
    f.c.snapshots.create_snapshot(mk("s2")).await.unwrap();
    f.c.snapshots.create_snapshot(mk("s3")).await.unwrap();
    let err = f.c.snapshots.create_snapshot(mk("s3")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    // Back to s1 and branch: s1 -> {s2 -> s3, s4}
    f.c.snapshots
        .revert_snapshot(pb::RevertSnapshotRequest {
            domain: "td-snap".into(),
            name: "s1".into(),
            mode: pb::RevertMode::Running as i32,
            force: false,
        })
        .await
        .unwrap();
    let s4 =
        f.c.snapshots
            .create_snapshot(mk("s4"))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(s4.parent, "s1");

    let snaps = f.c.snapshots.clone();
    let list = |filters: Vec<pb::SnapshotFilter>| {
        let mut c = snaps.clone();
        async move {
            let mut names: Vec<String> = c
                .list_snapshots(pb::ListSnapshotsRequest {
                    domain: "td-snap".into(),
                    filters: filters.into_iter().map(|x| x as i32).collect(),
                })
                .await
                .unwrap()
                .into_inner()
                .snapshots
                .into_iter()
                .map(|s| s.name)
                .collect();
            names.sort();
            names
        }
    };
    use pb::SnapshotFilter as F;
    assert_eq!(list(vec![]).await, ["s1", "s2", "s3", "s4"]);
    assert_eq!(list(vec![F::Roots]).await, ["s1"]);
    assert_eq!(list(vec![F::Leaves]).await, ["s3", "s4"]);
    assert_eq!(list(vec![F::NoLeaves]).await, ["s1", "s2"]);
    assert_eq!(list(vec![F::Active]).await, ["s1", "s2", "s3", "s4"]);
    assert!(list(vec![F::Inactive]).await.is_empty());
    assert_eq!(list(vec![F::Metadata]).await.len(), 4);
    assert!(list(vec![F::NoMetadata]).await.is_empty());
    assert_eq!(list(vec![F::Internal]).await.len(), 4);
    assert!(list(vec![F::External]).await.is_empty());
    // s4 is current and a leaf: it has no descendants.
    assert!(list(vec![F::DescendantsOfCurrent]).await.is_empty());

    let s1 =
        f.c.snapshots
            .get_snapshot(pb::SnapshotRef {
                domain: "td-snap".into(),
                name: "s1".into(),
            })
            .await
            .unwrap()
            .into_inner();
    let mut kids = s1.children.clone();
    kids.sort();
    assert_eq!(kids, ["s2", "s4"]);
    let all =
        f.c.snapshots
            .list_children(pb::ListChildrenRequest {
                domain: "td-snap".into(),
                name: "s1".into(),
                recursive: true,
            })
            .await
            .unwrap()
            .into_inner()
            .snapshots;
    assert_eq!(all.len(), 3);

    let del = |name: &str, mode: pb::DeleteSnapshotMode| pb::DeleteSnapshotRequest {
        domain: "td-snap".into(),
        name: name.into(),
        mode: mode as i32,
    };
    let gone =
        f.c.snapshots
            .delete_snapshot(del("s2", pb::DeleteSnapshotMode::ChildrenOnly))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(gone.deleted, ["s3"]);
    // The test driver cannot drop only metadata (tested on real QEMU); it says so clearly.
    let err =
        f.c.snapshots
            .delete_snapshot(del("s4", pb::DeleteSnapshotMode::MetadataOnly))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    let gone =
        f.c.snapshots
            .delete_snapshot(del("s4", pb::DeleteSnapshotMode::JustIt))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(gone.deleted, ["s4"]);
    let gone =
        f.c.snapshots
            .delete_snapshot(del("s2", pb::DeleteSnapshotMode::JustIt))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(gone.deleted, ["s2"]);
    f.c.snapshots.create_snapshot(mk("s5")).await.unwrap();
    let gone =
        f.c.snapshots
            .delete_snapshot(del("s1", pb::DeleteSnapshotMode::WithChildren))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(gone.deleted, ["s1", "s5"]);
    assert!(list(vec![]).await.is_empty());
    let err =
        f.c.snapshots
            .get_snapshot(pb::SnapshotRef {
                domain: "td-snap".into(),
                name: "s1".into(),
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    f.c.domains
        .remove_domain(pb::RemoveDomainRequest {
            name: "td-snap".into(),
            remove_volumes: true,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn volumes_with_real_qemu_img() {
    let mut f = start().await;
    let v =
        f.c.volumes
            .create_volume(pb::CreateVolumeRequest {
                name: "tv-a.qcow2".into(),
                size_bytes: 32 << 20,
                format: 0,
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!((v.format.as_str(), v.virtual_size), ("qcow2", 32 << 20));
    let err =
        f.c.volumes
            .create_volume(pb::CreateVolumeRequest {
                name: "tv-a.qcow2".into(),
                size_bytes: 32 << 20,
                format: 0,
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    f.c.volumes
        .create_overlay(pb::CreateOverlayRequest {
            name: "tv-b.qcow2".into(),
            backing: "tv-a.qcow2".into(),
        })
        .await
        .unwrap();
    let err =
        f.c.volumes
            .delete_volume(pb::VolumeRef {
                name: "tv-a.qcow2".into(),
            })
            .await
            .unwrap_err();
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "backing file of tv-b: {err:?}"
    );
    let c =
        f.c.volumes
            .copy_volume(pb::CopyVolumeRequest {
                source: "tv-b.qcow2".into(),
                destination: "tv-c.raw".into(),
                format: pb::VolumeFormat::Raw as i32,
                keep_backing: false,
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(c.format, "raw");
    let r =
        f.c.volumes
            .resize_volume(pb::ResizeVolumeRequest {
                name: "tv-b.qcow2".into(),
                size_bytes: 64 << 20,
                allow_shrink: false,
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(r.virtual_size, 64 << 20);
    let err =
        f.c.volumes
            .resize_volume(pb::ResizeVolumeRequest {
                name: "tv-b.qcow2".into(),
                size_bytes: 16 << 20,
                allow_shrink: false,
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let r =
        f.c.volumes
            .rebase_volume(pb::RebaseVolumeRequest {
                name: "tv-b.qcow2".into(),
                backing: String::new(),
                r#unsafe: false,
            })
            .await
            .unwrap()
            .into_inner();
    assert!(r.backing_chain.is_empty());
    let all =
        f.c.volumes
            .list_volumes(pb::ListVolumesRequest {})
            .await
            .unwrap()
            .into_inner()
            .volumes;
    assert_eq!(all.len(), 3);
    for n in ["tv-a.qcow2", "tv-b.qcow2", "tv-c.raw"] {
        f.c.volumes
            .delete_volume(pb::VolumeRef { name: n.into() })
            .await
            .unwrap();
    }
    let err =
        f.c.volumes
            .get_volume_info(pb::VolumeRef {
                name: "tv-a.qcow2".into(),
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err =
        f.c.volumes
            .get_volume_info(pb::VolumeRef {
                name: "../../etc/passwd".into(),
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn host_info() {
    let mut f = start().await;
    let h =
        f.c.host
            .get_host_info(pb::GetHostInfoRequest {})
            .await
            .unwrap()
            .into_inner();
    assert_eq!(h.domain_type, "test");
    assert!(h.cpus > 0 && h.memory_total_bytes > 0 && h.storage_free_bytes > 0);
    assert!(!h.libvirt_version.is_empty());
}

#[tokio::test]
async fn health_and_reflection() {
    let f = start().await;
    let channel = tonic::transport::Channel::from_shared(f.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in [
        "",
        "corral.v1.DomainService",
        "corral.v1.BaseService",
        "corral.v1.PortService",
    ] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
    use tonic_reflection::pb::v1 as refl;
    let mut client = refl::server_reflection_client::ServerReflectionClient::new(channel);
    let req = refl::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            refl::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(refl::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        resp.message_response
    else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for s in [
        "corral.v1.HostService",
        "corral.v1.DomainService",
        "corral.v1.VolumeService",
        "corral.v1.BaseService",
        "corral.v1.SnapshotService",
        "corral.v1.PortService",
    ] {
        assert!(names.iter().any(|n| n == s), "{s} missing from {names:?}");
    }
}

#[tokio::test]
async fn clone_with_copied_data_and_halting_snapshot() {
    let mut f = start().await;
    define(&mut f, "td-copy").await;
    // Something in the data volume, so that a copy is more than an empty volume.
    f.c.volumes
        .resize_volume(pb::ResizeVolumeRequest {
            name: "td-copy-vdb.qcow2".into(),
            size_bytes: 12 << 20,
            allow_shrink: false,
        })
        .await
        .unwrap();
    f.c.bases.prepare_base(dref("td-copy")).await.unwrap();
    let c =
        f.c.bases
            .clone_base(pb::CloneBaseRequest {
                base: "td-copy".into(),
                name: "td-copy-c1".into(),
                data_volumes: pb::DataVolumeMode::Copy as i32,
                memory_mib: 256,
                vcpus: 2,
                labels: HashMap::from([("pool".to_string(), "a".to_string())]),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!((c.memory_mib, c.vcpus), (256, 2));
    assert_eq!(c.labels.get("pool").map(String::as_str), Some("a"));
    let data =
        f.c.volumes
            .get_volume_info(pb::VolumeRef {
                name: "td-copy-c1-vdb.qcow2".into(),
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(
        data.virtual_size,
        12 << 20,
        "a copy of the base's data volume"
    );
    assert!(
        data.backing_chain.is_empty(),
        "data volumes are not overlays"
    );
    let err =
        f.c.bases
            .clone_base(pb::CloneBaseRequest {
                base: "td-copy-c1".into(),
                name: "td-x".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "a clone is not a base: {err:?}"
    );

    f.c.domains.start_domain(dref("td-copy-c1")).await.unwrap();
    let s =
        f.c.snapshots
            .create_snapshot(pb::CreateSnapshotRequest {
                domain: "td-copy-c1".into(),
                name: "halted".into(),
                halt: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(s.state, "running");
    let d =
        f.c.domains
            .get_domain(dref("td-copy-c1"))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(
        state(&d),
        pb::DomainState::ShutOff,
        "halt stops the domain after the snapshot"
    );
    for n in ["td-copy-c1", "td-copy"] {
        f.c.domains
            .remove_domain(pb::RemoveDomainRequest {
                name: n.into(),
                remove_volumes: true,
            })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn clones_follow_a_base_changed_after_earlier_clones() {
    let mut f = start().await;
    let clone = |name: &str| pb::CloneBaseRequest {
        base: "td-cache".into(),
        name: name.into(),
        ..Default::default()
    };
    define(&mut f, "td-cache").await;
    f.c.bases.prepare_base(dref("td-cache")).await.unwrap();
    let first = f.c.bases.clone_base(clone("td-cache-1")).await.unwrap();
    assert_eq!(first.into_inner().memory_mib, 128);
    // Someone changes the base's definition with libvirt itself (virsh edit would): the
    // agent hears the DEFINED event and does not clone from what it read before.
    let conn = virt::connect::Connect::open(Some("test:///default")).unwrap();
    let dom = conn.lookup_domain_by_name("td-cache").unwrap();
    let xml = dom
        .xml_desc(virt::sys::VIR_DOMAIN_XML_SECURE | virt::sys::VIR_DOMAIN_XML_INACTIVE)
        .unwrap();
    let changed = xml
        .replace(
            "<memory unit='KiB'>131072</memory>",
            "<memory unit='KiB'>262144</memory>",
        )
        .replace(
            "<currentMemory unit='KiB'>131072</currentMemory>",
            "<currentMemory unit='KiB'>262144</currentMemory>",
        );
    assert_ne!(xml, changed, "{xml}");
    conn.define_domain_xml(&changed).unwrap();
    let mut seen = 0;
    for i in 2..40 {
        let d =
            f.c.bases
                .clone_base(clone(&format!("td-cache-{i}")))
                .await
                .unwrap()
                .into_inner();
        seen = d.memory_mib;
        if seen == 256 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(seen, 256, "the changed base was never used");
}
