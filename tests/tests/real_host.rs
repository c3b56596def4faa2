//! End to end on a real host: the agent binary, the real libvirtd (guests under TCG here),
//! qemu-img, iptables, and HTTP from another address (a client network namespace).
//!
//! The tests share libvirtd and iptables, so they run one at a time.

// The end-to-end tests drive real processes (agents, virsh, iptables, the CLI).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use corral_client::proto as pb;
use corral_tests::*;
use tokio::sync::Mutex;
use tokio_stream::StreamExt;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());
const BOOT: Duration = Duration::from_secs(90);

fn dref(n: &str) -> pb::DomainRef {
    pb::DomainRef { name: n.into() }
}

fn url(port: &pb::ExposedPort, path: &str) -> String {
    format!("http://{}:{}{path}", port.host_address, port.host_port)
}

async fn expose80(c: &mut corral_client::AgentClient, vm: &str) -> pb::ExposedPort {
    c.ports
        .expose_port(pb::ExposePortRequest {
            domain: vm.into(),
            guest_port: 80,
            wait_seconds: 90,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// Whether a TCP connection from the client namespace to addr:port is accepted.
fn tcp_from_client(addr: &str, port: i32) -> bool {
    std::process::Command::new("ip")
        .args(["netns", "exec", CLIENT_NS, "timeout", "3", "bash", "-c"])
        .arg(format!("exec 3<>/dev/tcp/{addr}/{port}"))
        .status()
        .is_ok_and(|s| s.success())
}

fn remove(name: &str) -> pb::RemoveDomainRequest {
    pb::RemoveDomainRequest {
        name: name.into(),
        remove_volumes: true,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn clone_serves_http_from_another_address_and_its_writes_stay_off_the_base() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !real_host_ready() {
        return;
    }
    cleanup_domains("e2e-a-");
    client_ns().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path()).unwrap();
    let mut c = agent.client().await.unwrap();
    let base = prepared_base(&mut c, "e2e-a-base", false).await.unwrap();
    let base_file = agent.storage().join(&base.volumes[0].base_volume);
    let base_bytes = std::fs::read(&base_file).unwrap();

    let mut events = c
        .host
        .watch_domain_events(pb::WatchDomainEventsRequest {
            domain: "e2e-a-c1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let d = c
        .bases
        .clone_base(clone_req("e2e-a-base", "e2e-a-c1", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.state, pb::DomainState::Running as i32);
    let ev = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = events.next().await {
            let e = e.unwrap();
            if e.kind == pb::DomainEventKind::Started as i32 {
                return e;
            }
        }
        panic!("event stream ended")
    })
    .await
    .expect("libvirt STARTED event for the clone");
    assert_eq!(ev.domain, "e2e-a-c1");
    // Heartbeats count running guests from libvirt's domain info (no XML read).
    let info = c
        .host
        .get_host_info(pb::GetHostInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        info.domains_running >= 1
            && info.vcpus_running >= 1
            && info.memory_running_bytes >= 128 << 20
            && info.domains_defined > info.domains_running,
        "{info:?}"
    );

    let port = expose80(&mut c, "e2e-a-c1").await;
    assert!(port.active, "{port:?}");
    assert_eq!(port.host_address, HOST_SIDE_IP);
    let body = wait_for_body(&url(&port, "/"), "corral tiny guest e2e-a-c1", BOOT).unwrap();
    println!("from {CLIENT_IP}: {body}");
    // QEMU hands libvirt a PPM; the agent returns PNG.
    let shot = c
        .domains
        .get_screenshot(dref("e2e-a-c1"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        shot.png.starts_with(b"\x89PNG") && shot.width >= 320,
        "{}x{}",
        shot.width,
        shot.height
    );

    // The clone writes to its system disk; the base file does not change.
    wait_for_body(
        &url(&port, "/cgi-bin/write?dev=vda&v=CLONE1"),
        "ok CLONE1",
        BOOT,
    )
    .unwrap();
    wait_for_body(&url(&port, "/cgi-bin/read?dev=vda"), "CLONE1", BOOT).unwrap();
    assert!(
        std::fs::read(&base_file).unwrap() == base_bytes,
        "the base file changed"
    );
    // A second clone of the same base does not see the first one's write.
    c.bases
        .clone_base(clone_req("e2e-a-base", "e2e-a-c2", true))
        .await
        .unwrap();
    let port2 = expose80(&mut c, "e2e-a-c2").await;
    let seen = wait_for_body(&url(&port2, "/cgi-bin/read?dev=vda"), "", BOOT).unwrap();
    assert!(
        !seen.contains("CLONE1"),
        "second clone sees the first clone's write: {seen:?}"
    );
    assert_ne!(port.host_port, port2.host_port);

    // Removing domains leaves no files and no rules.
    assert!(!rules_of("e2e-a-c1").is_empty());
    for n in ["e2e-a-c1", "e2e-a-c2", "e2e-a-base"] {
        c.domains.remove_domain(remove(n)).await.unwrap();
        assert!(
            rules_of(n).is_empty(),
            "rules of {n} left: {:?}",
            rules_of(n)
        );
    }
    let left: Vec<_> = std::fs::read_dir(agent.storage())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "files left: {left:?}");
    assert!(
        fetch_from_client(&url(&port, "/")).is_err(),
        "port still answers"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn acpi_shutdown_then_restore_discards_system_writes_and_keeps_data() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !real_host_ready() {
        return;
    }
    cleanup_domains("e2e-b-");
    client_ns().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path()).unwrap();
    let mut c = agent.client().await.unwrap();
    prepared_base(&mut c, "e2e-b-base", true).await.unwrap();
    c.bases
        .clone_base(clone_req("e2e-b-base", "e2e-b-c1", true))
        .await
        .unwrap();
    let port = expose80(&mut c, "e2e-b-c1").await;
    wait_for_body(
        &url(&port, "/cgi-bin/write?dev=vda&v=SYSWRITE"),
        "ok SYSWRITE",
        BOOT,
    )
    .unwrap();
    wait_for_body(
        &url(&port, "/cgi-bin/write?dev=vdb&v=KEEPDATA"),
        "ok KEEPDATA",
        BOOT,
    )
    .unwrap();

    let t = Instant::now();
    let d = c
        .domains
        .shutdown_domain(pb::ShutdownDomainRequest {
            name: "e2e-b-c1".into(),
            timeout_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner();
    let took = t.elapsed();
    assert_eq!(d.state, pb::DomainState::ShutOff as i32);
    assert!(
        took < Duration::from_secs(30),
        "ACPI shutdown took {took:?}: the guest did not stop by itself"
    );
    println!("ACPI shutdown took {took:?}");
    assert!(
        rules_of("e2e-b-c1").is_empty() || {
            // The STOPPED event removes the rules; give the reactor a moment.
            std::thread::sleep(Duration::from_secs(1));
            rules_of("e2e-b-c1").is_empty()
        }
    );

    c.bases.restore_clone(dref("e2e-b-c1")).await.unwrap();
    c.domains.start_domain(dref("e2e-b-c1")).await.unwrap();
    // The exposed port comes back by itself when the clone runs again.
    wait_for_body(&url(&port, "/cgi-bin/read?dev=vdb"), "KEEPDATA", BOOT).unwrap();
    let sys = wait_for_body(&url(&port, "/cgi-bin/read?dev=vda"), "", BOOT).unwrap();
    assert!(
        !sys.contains("SYSWRITE"),
        "restore kept the system write: {sys:?}"
    );

    for n in ["e2e-b-c1", "e2e-b-base"] {
        c.domains.remove_domain(remove(n)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_revert_brings_the_disk_back_and_hibernate_resumes() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !real_host_ready() {
        return;
    }
    cleanup_domains("e2e-c-");
    client_ns().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path()).unwrap();
    let mut c = agent.client().await.unwrap();
    prepared_base(&mut c, "e2e-c-base", false).await.unwrap();
    c.bases
        .clone_base(clone_req("e2e-c-base", "e2e-c-c1", true))
        .await
        .unwrap();
    let port = expose80(&mut c, "e2e-c-c1").await;
    wait_for_body(
        &url(&port, "/cgi-bin/write?dev=vda&v=BEFORE"),
        "ok BEFORE",
        BOOT,
    )
    .unwrap();
    let snap = |name: &str| pb::CreateSnapshotRequest {
        domain: "e2e-c-c1".into(),
        name: name.into(),
        description: "before the change".into(),
        ..Default::default()
    };
    let s = c
        .snapshots
        .create_snapshot(snap("s1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state, "running");
    wait_for_body(
        &url(&port, "/cgi-bin/write?dev=vda&v=AFTER"),
        "ok AFTER",
        BOOT,
    )
    .unwrap();
    c.snapshots
        .revert_snapshot(pb::RevertSnapshotRequest {
            domain: "e2e-c-c1".into(),
            name: "s1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let d = c
        .domains
        .get_domain(dref("e2e-c-c1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.state, pb::DomainState::Running as i32);
    wait_for_body(&url(&port, "/cgi-bin/read?dev=vda"), "BEFORE", BOOT).unwrap();

    // A child snapshot, then metadata-only deletion (QEMU supports it; the test driver does not).
    c.snapshots.create_snapshot(snap("s2")).await.unwrap();
    let gone = c
        .snapshots
        .delete_snapshot(pb::DeleteSnapshotRequest {
            domain: "e2e-c-c1".into(),
            name: "s2".into(),
            mode: pb::DeleteSnapshotMode::MetadataOnly as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gone.deleted, ["s2"]);

    let d = c
        .domains
        .hibernate_domain(dref("e2e-c-c1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.state, pb::DomainState::Hibernated as i32);
    assert!(virsh(&["domstate", "e2e-c-c1"])
        .unwrap()
        .contains("shut off"));
    let d = c
        .domains
        .start_domain(dref("e2e-c-c1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.state, pb::DomainState::Running as i32);
    assert!(!d.has_managed_save);
    // Resumed, not rebooted: the marker is still there and the guest answers.
    wait_for_body(&url(&port, "/cgi-bin/read?dev=vda"), "BEFORE", BOOT).unwrap();

    // A disk-only (external) snapshot puts new files in front of the clone's volumes;
    // removing the clone with its volumes leaves none of them behind.
    let ext = c
        .snapshots
        .create_snapshot(pb::CreateSnapshotRequest {
            domain: "e2e-c-c1".into(),
            name: "ext".into(),
            disk_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ext.external && ext.state == "disk-snapshot", "{ext:?}");
    let err = c
        .snapshots
        .revert_snapshot(pb::RevertSnapshotRequest {
            domain: "e2e-c-c1".into(),
            name: "ext".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::Unimplemented,
        "libvirt 9.0 cannot revert external snapshots: {err:?}"
    );
    for n in ["e2e-c-c1", "e2e-c-base"] {
        c.domains.remove_domain(remove(n)).await.unwrap();
    }
    let left: Vec<_> = std::fs::read_dir(agent.storage())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "files left: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_restart_keeps_guests_running_and_rules_in_place() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !real_host_ready() {
        return;
    }
    cleanup_domains("e2e-d-");
    client_ns().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut agent = AgentProc::start(dir.path()).unwrap();
    let mut c = agent.client().await.unwrap();
    prepared_base(&mut c, "e2e-d-base", false).await.unwrap();
    c.bases
        .clone_base(clone_req("e2e-d-base", "e2e-d-c1", true))
        .await
        .unwrap();
    let port = expose80(&mut c, "e2e-d-c1").await;
    wait_for_body(&url(&port, "/"), "e2e-d-c1", BOOT).unwrap();
    // Only the client may reach the display: a connection from elsewhere is refused.
    let display = c
        .domains
        .get_display(dref("e2e-d-c1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(display.host, HOST_SIDE_IP);
    assert!(
        tcp_from_client(HOST_SIDE_IP, display.port),
        "display reachable before restriction"
    );
    c.ports
        .restrict_display(pb::RestrictDisplayRequest {
            domain: "e2e-d-c1".into(),
            client_ip: "172.31.254.3".into(),
        })
        .await
        .unwrap();
    assert!(
        !tcp_from_client(HOST_SIDE_IP, display.port),
        "display reachable from a refused address"
    );
    c.ports
        .restrict_display(pb::RestrictDisplayRequest {
            domain: "e2e-d-c1".into(),
            client_ip: CLIENT_IP.into(),
        })
        .await
        .unwrap();
    assert!(
        tcp_from_client(HOST_SIDE_IP, display.port),
        "display refused to its client"
    );
    let rules_before = rules_of("e2e-d-c1");
    assert_eq!(rules_before.len(), 3, "{rules_before:?}");

    // A crash: the guest keeps running and its port keeps answering without the agent.
    agent.kill().unwrap();
    assert!(virsh(&["domstate", "e2e-d-c1"])
        .unwrap()
        .contains("running"));
    wait_for_body(&url(&port, "/"), "e2e-d-c1", Duration::from_secs(10)).unwrap();
    // An interrupted operation's temporary file is cleaned at the next start.
    let leftover = agent.storage().join(".e2e-d-c9-vda.qcow2.corral-tmp");
    std::fs::write(&leftover, b"half a clone").unwrap();

    let mut agent = AgentProc::start(dir.path()).unwrap();
    assert!(!leftover.exists(), "leftover not removed");
    assert!(virsh(&["domstate", "e2e-d-c1"])
        .unwrap()
        .contains("running"));
    assert_eq!(
        rules_of("e2e-d-c1"),
        rules_before,
        "rules re-created exactly once"
    );
    wait_for_body(&url(&port, "/"), "e2e-d-c1", Duration::from_secs(10)).unwrap();
    let mut c = agent.client().await.unwrap();
    let ports = c
        .ports
        .list_ports(pb::ListPortsRequest {
            domain: "e2e-d-c1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ports.ports.len(), 1);
    assert!(ports.ports[0].active);

    // A clean stop too.
    agent.stop().unwrap();
    assert!(virsh(&["domstate", "e2e-d-c1"])
        .unwrap()
        .contains("running"));
    let agent = AgentProc::start(dir.path()).unwrap();
    let mut c = agent.client().await.unwrap();
    assert_eq!(rules_of("e2e-d-c1"), rules_before);
    for n in ["e2e-d-c1", "e2e-d-base"] {
        c.domains.remove_domain(remove(n)).await.unwrap();
    }
    assert!(rules_of("e2e-d-c1").is_empty());
}
