//! Issue 8's items that a table of refused requests cannot show: cancelled transfers leave
//! nothing behind on either agent, a full disk says so, the CLI says why it could not
//! connect, reflection shows each process's own services, and a clone onto a name the host
//! holds leaves no record behind.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use corral_client::proto as pb;
use corral_tests::*;
use tonic::Code;

/// `len` bytes that do not compress or repeat, in a raw file at `path`.
fn random_file(path: &Path, len: usize) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(path, data).unwrap();
}

/// Files of the storage root that a sync leaves while it runs.
fn partials(storage: &Path) -> Vec<String> {
    std::fs::read_dir(storage)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("corral-partial"))
                .collect()
        })
        .unwrap_or_default()
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !ok() {
        assert!(
            Instant::now() < end,
            "{what} did not happen within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Hosts h1 and h2, their coordinator, and an admin's client.
type World = (
    AgentProc,
    AgentProc,
    CoordProc,
    corral_client::CoordinatorClient,
);

/// Two test-driver hosts and a coordinator (with `env`), and a base `name` on h1 whose
/// disk holds `mib` MiB of data (so that a sync of it takes a while).
async fn two_hosts_with_a_base(dir: &Path, name: &str, mib: usize, env: &[(&str, &str)]) -> World {
    two_hosts_with(dir, name, mib, env, true).await
}

/// As [`two_hosts_with_a_base`], the VM prepared as a base only when `prepare`.
async fn two_hosts_with(
    dir: &Path,
    name: &str,
    mib: usize,
    env: &[(&str, &str)],
    prepare: bool,
) -> World {
    let h1 = AgentProc::start_test_driver(&dir.join("h1")).unwrap();
    let h2 = AgentProc::start_test_driver(&dir.join("h2")).unwrap();
    let coord = CoordProc::start_with(&dir.join("coord"), 100, 60_000, env).unwrap();
    let mut admin = coord.client(&coord.admin_token).await.unwrap();
    for (host, a) in [("h1", &h1), ("h2", &h2)] {
        admin
            .hosts
            .add_host(pb::AddHostRequest {
                name: host.into(),
                address: a.addr.clone(),
            })
            .await
            .unwrap();
    }
    let raw = dir.join("data.raw");
    random_file(&raw, mib << 20);
    let disk = h1.storage().join(format!("{name}-vda.qcow2"));
    let (raw, disk) = (raw.to_str().unwrap(), disk.to_str().unwrap());
    run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow2", raw, disk],
    )
    .unwrap();
    let mut spec = test_spec(name);
    spec.disks[0].create_size_bytes = 0;
    let op = admin
        .vms
        .create_vm(pb::CreateVmRequest {
            spec: Some(spec),
            host: "h1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = finish(&mut admin, op).await.unwrap();
    assert_eq!(done.state, pb::OperationState::Succeeded as i32, "{done:?}");
    if prepare {
        let vm = pb::VmRef { name: name.into() };
        let op = admin.vms.prepare_base(vm).await.unwrap().into_inner();
        let done = finish(&mut admin, op).await.unwrap();
        assert_eq!(done.state, pb::OperationState::Succeeded as i32, "{done:?}");
        publish(&mut admin, name).await.unwrap();
    }
    (h1, h2, coord, admin)
}

/// Item 10 for moves: a cancelled move of a shut-off VM stops its volume transfer and
/// leaves nothing on the target (neither a partial file nor a finished volume); the VM
/// stays where it was.
#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_move_leaves_nothing_on_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let (h1, h2, _coord, mut admin) = two_hosts_with(dir.path(), "mover", 24, &[], false).await;
    let op = admin
        .vms
        .move_vm(pb::MoveVmRequest {
            name: "mover".into(),
            host: "h2".into(),
            live: false,
            bandwidth_limit: 4_000_000,
        })
        .await
        .unwrap()
        .into_inner();
    cancel_while_copying(&mut admin, op, &h2.storage()).await;
    wait_until("an empty target", Duration::from_secs(10), || {
        std::fs::read_dir(h2.storage()).unwrap().next().is_none()
    });
    let vm = admin
        .vms
        .get_vm(pb::VmRef {
            name: "mover".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(vm.host, "h1");
    assert!(h1.storage().join("mover-vda.qcow2").exists());
}

/// Follows `op` until data flows and the target holds a partial file, cancels it, and checks
/// it ended cancelled.
async fn cancel_while_copying(
    admin: &mut corral_client::CoordinatorClient,
    op: pb::Operation,
    target_storage: &Path,
) {
    let mut events = admin
        .ops
        .watch_operation(pb::OperationRef { id: op.id.clone() })
        .await
        .unwrap()
        .into_inner();
    loop {
        let e = events.message().await.unwrap().unwrap();
        if e.bytes > 2 << 20 && !partials(target_storage).is_empty() {
            break;
        }
    }
    let id = pb::OperationRef { id: op.id.clone() };
    admin.ops.cancel_operation(id).await.unwrap();
    let ended = finish(admin, op).await.unwrap();
    assert_eq!(
        ended.state,
        pb::OperationState::Cancelled as i32,
        "{ended:?}"
    );
}

/// Sends `volume` to the agent at `peer` through its whole stream; the last progress.
async fn send_all(
    c: &mut corral_client::AgentClient,
    volume: &str,
    peer: &str,
) -> pb::SyncProgress {
    let mut stream = c
        .sync
        .send_volume(pb::SendVolumeRequest {
            volume: volume.into(),
            peer: peer.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(p) = stream.message().await.unwrap() {
        last = Some(p);
    }
    last.unwrap()
}

/// Item 10 on the agents: the caller of SendVolume goes away mid-transfer; the sender stops
/// and the receiver discards its partial file (a crash keeps it, to resume: see the lab).
#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_send_stops_and_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = AgentProc::start_test_driver(&dir.path().join("a")).unwrap();
    let b = AgentProc::start_test_driver(&dir.path().join("b")).unwrap();
    random_file(&a.storage().join("big.raw"), 24 << 20);
    let mut c = a.client().await.unwrap();
    let mut stream = c
        .sync
        .send_volume(pb::SendVolumeRequest {
            volume: "big.raw".into(),
            peer: b.addr.clone(),
            bandwidth_limit: 4_000_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Wait until data flows and the receiver holds a partial file.
    loop {
        let p = stream.message().await.unwrap().unwrap();
        if p.sent_bytes > 2 << 20 && !partials(&b.storage()).is_empty() {
            break;
        }
    }
    drop(stream);
    wait_until(
        "the partial file's removal",
        Duration::from_secs(10),
        || partials(&b.storage()).is_empty(),
    );
    assert!(!b.storage().join("big.raw").exists());
    // Nothing is still being sent: a new sync of the same volume is not refused as busy.
    assert!(send_all(&mut c, "big.raw", &b.addr).await.done);
    assert!(b.storage().join("big.raw").exists());
}

/// Item 10 through the coordinator: cancelling a base sync cancels the transfer on both
/// agents; the target keeps no partial file and is not recorded as holding the base.
#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_base_sync_stops_the_transfer_on_both_agents() {
    let dir = tempfile::tempdir().unwrap();
    let (_h1, h2, _coord, mut admin) = two_hosts_with_a_base(dir.path(), "big", 24, &[]).await;

    let op = admin
        .vms
        .sync_base(pb::SyncBaseRequest {
            base: "big".into(),
            host: "h2".into(),
            bandwidth_limit: 4_000_000,
        })
        .await
        .unwrap()
        .into_inner();
    cancel_while_copying(&mut admin, op, &h2.storage()).await;
    wait_until(
        "the target's partial file's removal",
        Duration::from_secs(10),
        || partials(&h2.storage()).is_empty(),
    );
    let files: Vec<_> = std::fs::read_dir(h2.storage())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(files.is_empty(), "h2 holds {files:?}");
    let bases = admin
        .vms
        .list_bases(pb::ListBaseSummariesRequest {})
        .await
        .unwrap()
        .into_inner();
    let big = bases.bases.iter().find(|b| b.name == "big").unwrap();
    assert_eq!(big.hosts, vec!["h1".to_string()]);
    // The source is free again: a new sync completes.
    let op = admin
        .vms
        .sync_base(pb::SyncBaseRequest {
            base: "big".into(),
            host: "h2".into(),
            bandwidth_limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let done = finish(&mut admin, op).await.unwrap();
    assert_eq!(done.state, pb::OperationState::Succeeded as i32, "{done:?}");
}

/// Item 10's time limit: a source agent that stops answering mid-transfer (SIGSTOP) fails
/// the sync after `transfer_stall_ms`, and the target is not recorded as holding the base.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_transfer_fails_after_the_stall_limit() {
    let dir = tempfile::tempdir().unwrap();
    let stall = [("CORRAL_COORD_TRANSFER_STALL_MS", "1500")];
    let (h1, _h2, _coord, mut admin) = two_hosts_with_a_base(dir.path(), "slow", 16, &stall).await;

    let op = admin
        .vms
        .sync_base(pb::SyncBaseRequest {
            base: "slow".into(),
            host: "h2".into(),
            bandwidth_limit: 2_000_000,
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = admin
        .ops
        .watch_operation(pb::OperationRef { id: op.id.clone() })
        .await
        .unwrap()
        .into_inner();
    loop {
        let e = events.message().await.unwrap().unwrap();
        if e.bytes > 1 << 20 {
            break;
        }
    }
    h1.pause(true).unwrap();
    let stopped = Instant::now();
    let ended = finish(&mut admin, op).await.unwrap();
    let took = stopped.elapsed();
    h1.pause(false).unwrap();
    assert_eq!(ended.state, pb::OperationState::Failed as i32, "{ended:?}");
    assert!(ended.error.contains("no progress"), "{}", ended.error);
    assert!(
        took < Duration::from_secs(10),
        "the stall was noticed after {took:?}"
    );
    let bases = admin
        .vms
        .list_bases(pb::ListBaseSummariesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bases.bases[0].hosts, vec!["h1".to_string()]);
    println!("stall noticed after {took:?}");
}

/// Item 11: a full disk is ResourceExhausted (retry after freeing space), with the path.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_answers_resource_exhausted() {
    if run("mount", &["--version"]).is_err() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    std::fs::create_dir_all(&storage).unwrap();
    run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=16m",
            "corral-test",
            storage.to_str().unwrap(),
        ],
    )
    .unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = run("umount", &[self.0.to_str().unwrap_or_default()]);
        }
    }
    let _unmount = Unmount(storage.clone());
    random_file(&storage.join("data.raw"), 10 << 20);
    let agent = AgentProc::start_test_driver(dir.path()).unwrap();
    let mut c = agent.client().await.unwrap();
    let e = c
        .volumes
        .copy_volume(pb::CopyVolumeRequest {
            source: "data.raw".into(),
            destination: "copy.raw".into(),
            format: pb::VolumeFormat::Raw as i32,
            keep_backing: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("No space left"), "{}", e.message());
    // Nothing half-made stays.
    let left: Vec<_> = std::fs::read_dir(&storage)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("data.raw")]);
    drop(agent);
}

/// Item 11: the CLI names the cause of a failed connection, and what to check for TLS.
#[test]
fn the_cli_says_why_it_could_not_connect() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = l.local_addr().unwrap().to_string();
    drop(l);
    let out = corral_cli(&closed, "crl_x", &["vm", "ls"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.to_lowercase().contains("refused"), "{err}");

    // A coordinator serving TLS, asked in plain text and with a CA that did not sign it.
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    corral_pki(&["init", "--dir", &d("pki")]).unwrap();
    corral_pki(&[
        "issue",
        "--dir",
        &d("pki"),
        "coordinator",
        "--san",
        "127.0.0.1",
    ])
    .unwrap();
    corral_pki(&["init", "--dir", &d("other")]).unwrap();
    let (cert, key) = (d("pki/coordinator.pem"), d("pki/coordinator.key"));
    let coord = CoordProc::start_with(
        &dir.path().join("coord"),
        300,
        3000,
        &[
            ("CORRAL_COORD_API_CERT", cert.as_str()),
            ("CORRAL_COORD_API_KEY", key.as_str()),
        ],
    )
    .unwrap();
    let plain = corral_cli(&coord.addr, &coord.admin_token, &["vm", "ls"]).unwrap();
    let err = String::from_utf8_lossy(&plain.stderr);
    assert!(!plain.status.success());
    assert!(err.contains("--ca") && err.contains("certificate"), "{err}");
    let wrong_ca = corral_cli(
        &coord.addr,
        &coord.admin_token,
        &["--ca", &d("other/ca.pem"), "vm", "ls"],
    )
    .unwrap();
    let err = String::from_utf8_lossy(&wrong_ca.stderr);
    assert!(!wrong_ca.status.success());
    assert!(
        err.contains("--ca") && err.to_lowercase().contains("certificate"),
        "{err}"
    );
    println!(
        "plain: {}\nwrong CA: {err}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let good = corral_cli(
        &coord.addr,
        &coord.admin_token,
        &["--ca", &d("pki/ca.pem"), "vm", "ls"],
    )
    .unwrap();
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
}

/// Item 12: reflection in both versions, each process showing only its own services.
#[tokio::test(flavor = "multi_thread")]
async fn reflection_shows_each_processs_own_services_in_v1_and_v1alpha() {
    use tonic_reflection::pb::{v1, v1alpha};
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start_test_driver(&dir.path().join("a")).unwrap();
    let coord = CoordProc::start(&dir.path().join("c"), 300, 3000).unwrap();
    for (addr, own, other) in [
        (
            &agent.addr,
            corral_proto::AGENT_SERVICES,
            corral_proto::COORDINATOR_SERVICES,
        ),
        (
            &coord.addr,
            corral_proto::COORDINATOR_SERVICES,
            corral_proto::AGENT_SERVICES,
        ),
    ] {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let req = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        };
        let mut s = v1::server_reflection_client::ServerReflectionClient::new(ch.clone())
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(l)) =
            s.message().await.unwrap().unwrap().message_response
        else {
            panic!("no service list from {addr}");
        };
        let mut v1_names: Vec<String> = l.service.into_iter().map(|s| s.name).collect();
        let req = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        };
        let mut s = v1alpha::server_reflection_client::ServerReflectionClient::new(ch)
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(l)) =
            s.message().await.unwrap().unwrap().message_response
        else {
            panic!("no v1alpha service list from {addr}");
        };
        let mut alpha_names: Vec<String> = l.service.into_iter().map(|s| s.name).collect();
        v1_names.sort();
        alpha_names.sort();
        assert_eq!(v1_names, alpha_names, "{addr}");
        for s in own {
            assert!(
                v1_names.iter().any(|n| n == s),
                "{addr} does not show {s}: {v1_names:?}"
            );
        }
        for s in other {
            assert!(
                !v1_names.iter().any(|n| n == s),
                "{addr} shows {s}: {v1_names:?}"
            );
        }
        assert!(v1_names.iter().any(|n| n == "grpc.health.v1.Health"));
    }
}

/// Item 1: a clone whose name the host already holds (a domain the coordinator does not
/// know) fails and leaves no VM record, so no later `vm rm` can remove that domain.
#[tokio::test(flavor = "multi_thread")]
async fn a_clone_onto_a_name_the_host_holds_leaves_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start_test_driver(&dir.path().join("h1")).unwrap();
    let coord = CoordProc::start(&dir.path().join("coord"), 100, 1500).unwrap();
    let mut admin = coord.client(&coord.admin_token).await.unwrap();
    add_host(&mut admin, "h1", &agent.addr).await.unwrap();
    test_base(&mut admin, "web", "h1").await.unwrap();
    publish(&mut admin, "web").await.unwrap();
    // Someone made "web2" on the host directly.
    let mut ac = agent.client().await.unwrap();
    ac.domains
        .define_domain(pb::DefineDomainRequest {
            spec: Some(test_spec("web2")),
        })
        .await
        .unwrap();
    let op = admin
        .vms
        .clone_vm(pb::CloneVmRequest {
            base: "web".into(),
            name: "web2".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = finish(&mut admin, op).await.unwrap();
    assert_eq!(done.state, pb::OperationState::Failed as i32, "{done:?}");
    assert!(done.error.contains("already exists"), "{}", done.error);
    let e = admin
        .vms
        .get_vm(pb::VmRef {
            name: "web2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = admin
        .vms
        .remove_vm(pb::VmRef {
            name: "web2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    ac.domains
        .get_domain(pb::DomainRef {
            name: "web2".into(),
        })
        .await
        .unwrap();
}

/// Issue 12, item 2, agent to agent: a volume sync made for an operation names it on the
/// receiving agent too (the sender passes the operation header on to ReceiveVolume).
#[tokio::test(flavor = "multi_thread")]
async fn a_sync_for_an_operation_names_it_on_the_receiving_agent() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("b.log");
    let a = AgentProc::start_test_driver(&dir.path().join("a")).unwrap();
    let mut env = TEST_DRIVER.to_vec();
    env.extend([
        ("CORRAL_LOG_FORMAT", "json"),
        ("RUST_LOG", "info,corral_agent=debug"),
        (STDERR_TO, log.to_str().unwrap()),
    ]);
    let b = AgentProc::start_with(&dir.path().join("b"), &env).unwrap();
    random_file(&a.storage().join("named.raw"), 1 << 20);
    let mut c = a.client().await.unwrap();
    let op = "op-sync-7f3a";
    let last =
        corral_client::for_operation(Some(op.into()), send_all(&mut c, "named.raw", &b.addr)).await;
    assert!(last.done);
    let text = std::fs::read_to_string(&log).unwrap();
    let named: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| {
            l["spans"].as_array().is_some_and(|spans| {
                spans.iter().any(|s| {
                    s["method"].as_str() == Some("ReceiveVolume") && s["op"].as_str() == Some(op)
                })
            })
        })
        .collect();
    assert!(
        !named.is_empty(),
        "no ReceiveVolume line of the receiver names {op}:\n{text}"
    );
}

/// Issue 12, item 5, on the agent: calls naming an older term of a database than the agent
/// has seen are refused; another database's terms, and calls naming none, are not fenced;
/// a malformed term is refused as such.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_refuses_calls_from_an_older_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = AgentProc::start_test_driver(dir.path()).unwrap();
    let c = a.client().await.unwrap();
    let call = |term: Option<&str>| {
        let mut r = tonic::Request::new(pb::GetHostInfoRequest {});
        if let Some(t) = term {
            r.metadata_mut()
                .insert(corral_client::TERM_HEADER, t.parse().unwrap());
        }
        let mut host = c.host.clone();
        async move { host.get_host_info(r).await.map(|_| ()) }
    };
    call(Some("db1:3")).await.unwrap();
    let refused = call(Some("db1:2")).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("newer term (3)") && refused.message().contains("term 2"),
        "{refused:?}"
    );
    call(None).await.unwrap();
    call(Some("db2:1")).await.unwrap();
    call(Some("db1:3")).await.unwrap();
    call(Some("db1:4")).await.unwrap();
    assert_eq!(
        call(Some("db1:3")).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    for bad in ["3", "db1:0", "db1:x", "d b:1"] {
        let e = call(Some(bad)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
    }
    // Refusals are counted like any call, and changed nothing: the agent answers on.
    call(None).await.unwrap();

    // The terms are kept: after a crash, the old leader is still refused.
    drop(c);
    a.kill().unwrap();
    let a = AgentProc::start_test_driver(dir.path()).unwrap();
    let mut host = a.client().await.unwrap().host;
    let mut old = tonic::Request::new(pb::GetHostInfoRequest {});
    old.metadata_mut()
        .insert(corral_client::TERM_HEADER, "db1:3".parse().unwrap());
    let e = host.get_host_info(old).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("newer term (4)"), "{e:?}");
}
