//! The coordinator end to end: its binary, several agent binaries on private `test:///`
//! drivers (many hosts), and the `corral` CLI.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use corral_client::proto as pb;
use corral_client::CoordinatorClient;
use corral_tests::*;
use tokio_stream::StreamExt;
use tonic::Code;

fn ready() -> bool {
    e2e_ready(
        &["corral-coordinator", "corral-agent", "corral"],
        true,
        "build the binaries first (cargo build --workspace --bins)",
    )
}

struct Fleet {
    _dir: tempfile::TempDir,
    coord: CoordProc,
    agents: Vec<AgentProc>,
    admin: CoordinatorClient,
}

/// A coordinator and `n` test-driver agents named h1..hn, all up.
async fn fleet(n: usize, heartbeat_ms: u64, down_after_ms: u64) -> Fleet {
    fleet_with(n, heartbeat_ms, down_after_ms, &[], &[]).await
}

/// The same, with more environment for the coordinator and for each agent.
async fn fleet_with(
    n: usize,
    heartbeat_ms: u64,
    down_after_ms: u64,
    coord_env: &[(&str, &str)],
    agent_env: &[(&str, &str)],
) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("coord");
    let coord = CoordProc::start_with(&root, heartbeat_ms, down_after_ms, coord_env).unwrap();
    let mut admin = coord.client(&coord.admin_token).await.unwrap();
    let mut agents = Vec::new();
    let env: Vec<(&str, &str)> = TEST_DRIVER.iter().chain(agent_env).copied().collect();
    for i in 1..=n {
        let a = AgentProc::start_with(&dir.path().join(format!("h{i}")), &env).unwrap();
        admin
            .hosts
            .add_host(pb::AddHostRequest {
                name: format!("h{i}"),
                address: a.addr.clone(),
            })
            .await
            .unwrap();
        agents.push(a);
    }
    wait_hosts(&mut admin, n, pb::HostState::Up).await;
    Fleet {
        _dir: dir,
        coord,
        agents,
        admin,
    }
}

async fn hosts(c: &mut CoordinatorClient) -> Vec<pb::Host> {
    c.hosts
        .list_hosts(pb::ListHostsRequest {})
        .await
        .unwrap()
        .into_inner()
        .hosts
}

async fn wait_hosts(c: &mut CoordinatorClient, n: usize, state: pb::HostState) {
    for _ in 0..200 {
        if hosts(c)
            .await
            .iter()
            .filter(|h| h.state == state as i32)
            .count()
            == n
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("hosts did not reach {state:?}: {:?}", hosts(c).await);
}

async fn create_base(c: &mut CoordinatorClient, name: &str, host: &str) {
    test_base(c, name, host).await.unwrap();
    publish(c, name).await.unwrap();
}

async fn clone(c: &mut CoordinatorClient, base: &str, name: &str) -> pb::Operation {
    let op = c
        .vms
        .clone_vm(pb::CloneVmRequest {
            base: base.into(),
            name: name.into(),
            start: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    finish(c, op).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn clones_are_placed_by_the_rules_and_the_rejections_explained() {
    if !ready() {
        return;
    }
    let mut f = fleet(4, 200, 2000).await;
    create_base(&mut f.admin, "web", "h1").await;
    create_base(&mut f.admin, "web", "h2").await;
    create_base(&mut f.admin, "web", "h3").await;
    f.admin
        .hosts
        .set_host_enabled(pb::SetHostEnabledRequest {
            name: "h2".into(),
            enabled: false,
        })
        .await
        .unwrap();
    let e = f
        .admin
        .vms
        .explain_placement(pb::CloneVmRequest {
            base: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let why = |h: &str| {
        e.rejected
            .iter()
            .find(|r| r.host == h)
            .map(|r| r.reason.clone())
            .unwrap_or_default()
    };
    assert!(why("h2").contains("disabled"), "{e:?}");
    // h4 lacks the base but is of the same class as its holders: it may take a copy (at a
    // cost in score), so it is not rejected; it wins only when the holders are much busier.
    assert!(why("h4").is_empty(), "{e:?}");
    assert!(["h1", "h3"].contains(&e.chosen.as_str()), "{e:?}");
    // Clones spread over the enabled hosts that have the base, never elsewhere.
    let mut placed = Vec::new();
    for i in 0..6 {
        let done = clone(&mut f.admin, "web", &format!("web-{i}")).await;
        assert_eq!(done.state, pb::OperationState::Succeeded as i32, "{done:?}");
        placed.push(done.host);
    }
    assert!(placed.iter().all(|h| h == "h1" || h == "h3"), "{placed:?}");
    assert!(
        placed.contains(&"h1".to_string()) && placed.contains(&"h3".to_string()),
        "least loaded spreads them: {placed:?}"
    );
    let vm = f
        .admin
        .vms
        .get_vm(pb::VmRef {
            name: "web-0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(vm.observed_state, pb::DomainState::Running as i32);
    // No base anywhere: a clear refusal, nothing made.
    let err = f
        .admin
        .vms
        .clone_vm(pb::CloneVmRequest {
            base: "nope".into(),
            name: "x1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = f
        .admin
        .vms
        .clone_vm(pb::CloneVmRequest {
            base: "web".into(),
            name: "bad/name".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Removing a VM goes through an operation too.
    let op = f
        .admin
        .vms
        .remove_vm(pb::VmRef {
            name: "web-0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        finish(&mut f.admin, op).await.unwrap().state,
        pb::OperationState::Succeeded as i32
    );
    assert_eq!(
        f.admin
            .vms
            .get_vm(pb::VmRef {
                name: "web-0".into()
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watcher_attached_late_sees_the_progress_from_the_start() {
    if !ready() {
        return;
    }
    let mut f = fleet(1, 200, 2000).await;
    create_base(&mut f.admin, "lab", "h1").await;
    let op = f
        .admin
        .vms
        .clone_vm(pb::CloneVmRequest {
            base: "lab".into(),
            name: "lab-1".into(),
            start: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        op.state,
        pb::OperationState::Queued as i32,
        "returned at once"
    );
    // Attach only after it finished.
    for _ in 0..100 {
        let o = f
            .admin
            .ops
            .get_operation(pb::OperationRef { id: op.id.clone() })
            .await
            .unwrap()
            .into_inner();
        if o.state == pb::OperationState::Succeeded as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events: Vec<pb::OperationEvent> = f
        .admin
        .ops
        .watch_operation(pb::OperationRef { id: op.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .map(|e| e.unwrap())
        .collect()
        .await;
    let phases: Vec<&str> = events.iter().map(|e| e.phase.as_str()).collect();
    assert_eq!(
        phases,
        ["queued", "started", "cloning", "running", "succeeded"]
    );
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=5).collect::<Vec<u64>>()
    );
    assert_eq!(
        events.last().unwrap().state,
        pb::OperationState::Succeeded as i32
    );
    assert_eq!(events.last().unwrap().percent, 100.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn users_cannot_see_or_touch_each_others_vms() {
    if !ready() {
        return;
    }
    let mut f = fleet(1, 200, 2000).await;
    create_base(&mut f.admin, "lab", "h1").await;
    let token = |c: &mut CoordinatorClient, name: &str| {
        let mut c = c.clone();
        let name = name.to_string();
        async move {
            c.users
                .create_user(pb::CreateUserRequest {
                    name: name.clone(),
                    role: "user".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            c.users
                .create_token(pb::CreateTokenRequest {
                    user: name,
                    expires_in_seconds: 0,
                })
                .await
                .unwrap()
                .into_inner()
                .token
        }
    };
    let alice_t = token(&mut f.admin, "alice").await;
    let bob_t = token(&mut f.admin, "bob").await;
    let mut alice = f.coord.client(&alice_t).await.unwrap();
    let mut bob = f.coord.client(&bob_t).await.unwrap();
    let done = clone(&mut alice, "lab", "alice-1").await;
    assert_eq!(done.state, pb::OperationState::Succeeded as i32);
    assert_eq!(
        f.admin
            .vms
            .get_vm(pb::VmRef {
                name: "alice-1".into()
            })
            .await
            .unwrap()
            .into_inner()
            .owner,
        "alice"
    );

    // Alice's snapshot tree goes through the coordinator, serialised with her VM's other work.
    let create = |name: &str| pb::CreateSnapshotRequest {
        domain: "alice-1".into(),
        name: name.into(),
        description: format!("{name} before the lab"),
        ..Default::default()
    };
    for name in ["s1", "s2"] {
        let op = alice
            .snapshots
            .create_vm_snapshot(create(name))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(op.kind, "snapshot-create");
        assert_eq!(
            finish(&mut alice, op).await.unwrap().state,
            pb::OperationState::Succeeded as i32
        );
    }
    let list = |filters: Vec<pb::SnapshotFilter>| pb::ListSnapshotsRequest {
        domain: "alice-1".into(),
        filters: filters.into_iter().map(|f| f as i32).collect(),
    };
    let names = |l: pb::ListSnapshotsResponse| -> Vec<String> {
        let mut n: Vec<String> = l.snapshots.into_iter().map(|s| s.name).collect();
        n.sort();
        n
    };
    let all = alice
        .snapshots
        .list_vm_snapshots(list(vec![]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.snapshots.len(), 2);
    assert!(all
        .snapshots
        .iter()
        .any(|s| s.name == "s2" && s.parent == "s1" && s.description == "s2 before the lab"));
    for (filter, expect) in [
        (pb::SnapshotFilter::Roots, vec!["s1"]),
        (pb::SnapshotFilter::Leaves, vec!["s2"]),
    ] {
        let got = names(
            alice
                .snapshots
                .list_vm_snapshots(list(vec![filter]))
                .await
                .unwrap()
                .into_inner(),
        );
        assert_eq!(got, expect, "{filter:?}");
    }
    let s1 = alice
        .snapshots
        .get_vm_snapshot(pb::SnapshotRef {
            domain: "alice-1".into(),
            name: "s1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s1.children, vec!["s2".to_string()]);
    let op = alice
        .snapshots
        .revert_vm_snapshot(pb::RevertSnapshotRequest {
            domain: "alice-1".into(),
            name: "s1".into(),
            mode: pb::RevertMode::Running as i32,
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        finish(&mut alice, op).await.unwrap().state,
        pb::OperationState::Succeeded as i32
    );
    // A bad mode is refused before anything is queued.
    let bad = alice
        .snapshots
        .delete_vm_snapshot(pb::DeleteSnapshotRequest {
            domain: "alice-1".into(),
            name: "s1".into(),
            mode: 99,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    let delete = |mode: pb::DeleteSnapshotMode| pb::DeleteSnapshotRequest {
        domain: "alice-1".into(),
        name: "s1".into(),
        mode: mode as i32,
    };
    assert_eq!(
        bob.snapshots
            .list_vm_snapshots(list(vec![]))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        bob.snapshots
            .delete_vm_snapshot(delete(pb::DeleteSnapshotMode::JustIt))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    for (who, code) in [
        (
            bob.access
                .get_vm_display(pb::VmRef {
                    name: "alice-1".into(),
                })
                .await
                .unwrap_err(),
            Code::NotFound,
        ),
        (
            bob.access
                .list_vm_ports(pb::ListPortsRequest {
                    domain: "alice-1".into(),
                })
                .await
                .unwrap_err(),
            Code::NotFound,
        ),
        (
            alice
                .access
                .expose_vm_port(pb::ExposePortRequest {
                    domain: "alice-1".into(),
                    guest_port: 80,
                    host_port: 2222,
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            Code::PermissionDenied,
        ),
    ] {
        assert_eq!(who.code(), code, "{who:?}");
    }
    // Alice reaches her display through the coordinator.
    let display = alice
        .access
        .get_vm_display(pb::VmRef {
            name: "alice-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        display.remote_viewer_file.contains("[virt-viewer]"),
        "{display:?}"
    );
    let op = alice
        .snapshots
        .delete_vm_snapshot(delete(pb::DeleteSnapshotMode::WithChildren))
        .await
        .unwrap()
        .into_inner();
    let end = finish(&mut alice, op).await.unwrap();
    assert_eq!(end.state, pb::OperationState::Succeeded as i32, "{end:?}");
    assert!(end.result.contains("s2"), "{}", end.result);
    assert!(alice
        .snapshots
        .list_vm_snapshots(list(vec![]))
        .await
        .unwrap()
        .into_inner()
        .snapshots
        .is_empty());

    // Bob sees nothing of it and can do nothing to it.
    assert!(bob
        .vms
        .list_vms(pb::ListVmsRequest {})
        .await
        .unwrap()
        .into_inner()
        .vms
        .is_empty());
    for err in [
        bob.vms
            .get_vm(pb::VmRef {
                name: "alice-1".into(),
            })
            .await
            .unwrap_err(),
        bob.vms
            .power_off_vm(pb::VmRef {
                name: "alice-1".into(),
            })
            .await
            .unwrap_err(),
        bob.vms
            .remove_vm(pb::VmRef {
                name: "alice-1".into(),
            })
            .await
            .unwrap_err(),
        bob.ops
            .get_operation(pb::OperationRef {
                id: done.id.clone(),
            })
            .await
            .unwrap_err(),
        bob.ops
            .watch_operation(pb::OperationRef {
                id: done.id.clone(),
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
    assert!(bob
        .ops
        .list_operations(pb::ListOperationsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .operations
        .is_empty());
    // Users cannot administer, or clone for someone else.
    let err = bob
        .hosts
        .list_hosts(pb::ListHostsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = bob
        .vms
        .clone_vm(pb::CloneVmRequest {
            base: "lab".into(),
            name: "b1".into(),
            owner: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Alice still has it; without a token there is nothing at all.
    assert_eq!(
        alice
            .vms
            .list_vms(pb::ListVmsRequest {})
            .await
            .unwrap()
            .into_inner()
            .vms
            .len(),
        1
    );
    let mut anon = f.coord.client("crl_not_a_token").await.unwrap();
    assert_eq!(
        anon.vms
            .list_vms(pb::ListVmsRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_host_is_marked_down_gets_no_new_vms_and_is_reconciled_on_return() {
    if !ready() {
        return;
    }
    let mut f = fleet(2, 200, 1500).await;
    create_base(&mut f.admin, "lab", "h1").await;
    create_base(&mut f.admin, "lab", "h2").await;
    // A VM on each host.
    let mut on = std::collections::HashMap::new();
    for i in 0..2 {
        let d = clone(&mut f.admin, "lab", &format!("lab-{i}")).await;
        on.insert(d.host.clone(), d.vm.clone());
    }
    assert_eq!(on.len(), 2, "{on:?}");
    let silent = Instant::now();
    f.agents[0].pause(true).unwrap();
    wait_hosts(&mut f.admin, 1, pb::HostState::Down).await;
    let took = silent.elapsed();
    assert!(
        // down_after, one heartbeat and the polling above, with room for a loaded CI machine.
        took < Duration::from_millis(1500 + 2000),
        "marked down after {took:?}"
    );
    println!("h1 marked down {took:?} after it went silent (down_after = 1.5 s)");
    let vm = f
        .admin
        .vms
        .get_vm(pb::VmRef {
            name: on["h1"].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        vm.observed_state,
        pb::DomainState::Unspecified as i32,
        "unknown, not lost"
    );
    assert_eq!(vm.host_state, pb::HostState::Down as i32);
    for i in 2..5 {
        let d = clone(&mut f.admin, "lab", &format!("lab-{i}")).await;
        assert_eq!(
            (d.state, d.host.as_str()),
            (pb::OperationState::Succeeded as i32, "h2"),
            "{d:?}"
        );
    }
    // The VM on h1 changes while the coordinator cannot see it; on return that is read back.
    f.agents[0].pause(false).unwrap();
    wait_hosts(&mut f.admin, 2, pb::HostState::Up).await;
    let mut direct = corral_client::AgentClient::connect(&f.agents[0].addr)
        .await
        .unwrap();
    f.agents[0].pause(true).unwrap();
    wait_hosts(&mut f.admin, 1, pb::HostState::Down).await;
    f.agents[0].pause(false).unwrap();
    direct
        .domains
        .power_off_domain(pb::DomainRef {
            name: on["h1"].clone(),
        })
        .await
        .unwrap();
    wait_hosts(&mut f.admin, 2, pb::HostState::Up).await;
    let mut state = 0;
    for _ in 0..50 {
        state = f
            .admin
            .vms
            .get_vm(pb::VmRef {
                name: on["h1"].clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .observed_state;
        if state == pb::DomainState::ShutOff as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        state,
        pb::DomainState::ShutOff as i32,
        "the change made while away is seen"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_a_clone_then_restart_leaves_nothing_half_made() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let croot = dir.path().join("coord");
    let mut coord = CoordProc::start(&croot, 200, 2000).unwrap();
    let token = coord.admin_token.clone();
    let mut admin = coord.client(&token).await.unwrap();
    let agent = AgentProc::start_test_driver(&dir.path().join("h1")).unwrap();
    admin
        .hosts
        .add_host(pb::AddHostRequest {
            name: "h1".into(),
            address: agent.addr.clone(),
        })
        .await
        .unwrap();
    wait_hosts(&mut admin, 1, pb::HostState::Up).await;
    create_base(&mut admin, "lab", "h1").await;
    // The agent stalls, so the clone is in flight when the coordinator dies.
    agent.pause(true).unwrap();
    let op = admin
        .vms
        .clone_vm(pb::CloneVmRequest {
            base: "lab".into(),
            name: "lab-1".into(),
            start: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(300)).await;
    coord.kill().unwrap();
    agent.pause(false).unwrap();
    // Whether or not the agent went on to make the clone the dead coordinator asked for,
    // after the restart nothing of it may be left anywhere.
    let mut direct = corral_client::AgentClient::connect(&agent.addr)
        .await
        .unwrap();

    let coord = CoordProc::start(&croot, 200, 2000).unwrap();
    let mut admin = coord.client(&token).await.unwrap();
    let mut end = pb::Operation::default();
    for _ in 0..200 {
        end = admin
            .ops
            .get_operation(pb::OperationRef { id: op.id.clone() })
            .await
            .unwrap()
            .into_inner();
        if end.state == pb::OperationState::Failed as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(end.state, pb::OperationState::Failed as i32, "{end:?}");
    assert!(
        end.error.contains("restarted during the clone"),
        "{}",
        end.error
    );
    assert_eq!(
        direct
            .domains
            .get_domain(pb::DomainRef {
                name: "lab-1".into()
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        admin
            .vms
            .get_vm(pb::VmRef {
                name: "lab-1".into()
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert!(admin
        .ops
        .list_operations(pb::ListOperationsRequest {
            unfinished_only: true
        })
        .await
        .unwrap()
        .into_inner()
        .operations
        .is_empty());
    // The same name can be cloned again.
    let done = clone(&mut admin, "lab", "lab-1").await;
    assert_eq!(done.state, pb::OperationState::Succeeded as i32, "{done:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_drives_the_coordinator_and_fails_in_one_line() {
    if !ready() {
        return;
    }
    let mut f = fleet(1, 200, 2000).await;
    create_base(&mut f.admin, "lab", "h1").await;
    let t = f.coord.admin_token.clone();
    let out = corral_cli(
        &f.coord.addr,
        &t,
        &["vm", "clone", "lab", "cli-1", "--start"],
    )
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("clone cli-1 succeeded"));
    let out = corral_cli(&f.coord.addr, &t, &["-o", "json", "vm", "ls"]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["vms"][0]["name"], "cli-1");
    let out = corral_cli(&f.coord.addr, &t, &["--no-wait", "vm", "poweroff", "cli-1"]).unwrap();
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 36, "an operation id: {id:?}");
    let out = corral_cli(&f.coord.addr, &t, &["op", "watch", &id]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Ravada's way to a base: create, (customise,) stop, prepare, clone.
    let cli = Cli {
        addr: &f.coord.addr,
        token: &t,
        ca: None,
    };
    let ok = |args: &[&str]| cli.ok(args);
    let made = ok(&[
        "vm",
        "create",
        "win-golden",
        "--memory",
        "256M",
        "--disk",
        "win-golden-vda.qcow2:16M:system",
        "--start",
    ]);
    assert!(made.contains("create win-golden succeeded"), "{made}");
    ok(&["vm", "poweroff", "win-golden"]);
    let prepared = ok(&["base", "prepare", "win-golden"]);
    ok(&["base", "publish", "win-golden"]);
    assert!(
        prepared.contains("prepare-base win-golden succeeded"),
        "{prepared}"
    );
    assert!(ok(&["base", "ls"]).contains("win-golden"));
    ok(&["vm", "clone", "win-golden", "win-1"]);

    let out = corral_cli(&f.coord.addr, &t, &["vm", "start", "nope"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("corral: not found: VM nope not found"),
        "{err}"
    );
    let out = corral_cli(&f.coord.addr, "crl_bad", &["vm", "ls"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not authenticated"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_accepts_only_a_coordinator_with_the_lab_certificate() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    let pki = |args: &[&str]| corral_pki(args).unwrap();
    pki(&["init", "--dir", &d("lab")]);
    pki(&["issue", "--dir", &d("lab"), "agent", "--san", "127.0.0.1"]);
    pki(&["issue", "--dir", &d("lab"), "coordinator"]);
    pki(&["issue", "--dir", &d("lab"), "intruder"]);
    pki(&["init", "--dir", &d("rogue")]);
    pki(&["issue", "--dir", &d("rogue"), "coordinator"]);
    let mut env: Vec<(&str, &str)> = TEST_DRIVER.to_vec();
    let (cert, key, ca) = (d("lab/agent.pem"), d("lab/agent.key"), d("lab/ca.pem"));
    let pinned = d("lab/coordinator.pem");
    env.extend([
        ("CORRAL_AGENT_TLS_CERT", cert.as_str()),
        ("CORRAL_AGENT_TLS_KEY", key.as_str()),
        ("CORRAL_AGENT_TLS_CLIENT_CA", ca.as_str()),
        ("CORRAL_AGENT_TLS_COORDINATOR_CERT", pinned.as_str()),
    ]);
    let agent = AgentProc::start_with(&dir.path().join("h1"), &env).unwrap();

    let with = |who: &str| {
        let (c, k) = (
            d(&format!("{who}/coordinator.pem")),
            d(&format!("{who}/coordinator.key")),
        );
        vec![
            ("CORRAL_COORD_AGENT_CA".to_string(), ca.clone()),
            ("CORRAL_COORD_CLIENT_CERT".to_string(), c),
            ("CORRAL_COORD_CLIENT_KEY".to_string(), k),
        ]
    };
    let start = |root: &str, env: &[(String, String)]| {
        let env: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        CoordProc::start_with(&dir.path().join(root), 100, 1000, &env).unwrap()
    };
    let good = start("good", &with("lab"));
    let mut admin = good.client(&good.admin_token).await.unwrap();
    admin
        .hosts
        .add_host(pb::AddHostRequest {
            name: "h1".into(),
            address: agent.addr.clone(),
        })
        .await
        .unwrap();
    wait_hosts(&mut admin, 1, pb::HostState::Up).await;

    // A coordinator whose certificate comes from another CA is refused, and so is plain gRPC.
    let rogue = start("rogue", &with("rogue"));
    let mut radmin = rogue.client(&rogue.admin_token).await.unwrap();
    radmin
        .hosts
        .add_host(pb::AddHostRequest {
            name: "h1".into(),
            address: agent.addr.clone(),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let h = &hosts(&mut radmin).await[0];
    assert_ne!(h.state, pb::HostState::Up as i32, "{h:?}");
    assert!(!h.last_error.is_empty(), "{h:?}");
    println!("refused coordinator sees: {}", h.last_error);
    let plain = corral_client::AgentClient::connect(&agent.addr).await;
    let refused = match plain {
        Err(_) => true,
        Ok(mut c) => c
            .host
            .get_host_info(pb::GetHostInfoRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "plain gRPC must be refused");
    // Signed by the lab CA but not the coordinator's certificate: refused too.
    let mut intruder_env = with("lab");
    intruder_env[1].1 = d("lab/intruder.pem");
    intruder_env[2].1 = d("lab/intruder.key");
    let intruder = start("intruder", &intruder_env);
    let mut iadmin = intruder.client(&intruder.admin_token).await.unwrap();
    iadmin
        .hosts
        .add_host(pb::AddHostRequest {
            name: "h1".into(),
            address: agent.addr.clone(),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let h = &hosts(&mut iadmin).await[0];
    assert_ne!(h.state, pb::HostState::Up as i32, "{h:?}");
    assert!(
        h.last_error.contains("only the coordinator's certificate"),
        "{h:?}"
    );
    // The pinned coordinator keeps working.
    create_base(&mut admin, "lab", "h1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_created_from_a_spec_becomes_the_base_of_clones() {
    if !ready() {
        return;
    }
    let mut f = fleet(2, 200, 2000).await;
    let create = |name: &str, host: &str| pb::CreateVmRequest {
        spec: Some(test_spec(name)),
        host: host.into(),
        start: true,
        ..Default::default()
    };
    // Placed by the scheduler, started, owned by the caller.
    let op = f
        .admin
        .vms
        .create_vm(create("golden", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(op.kind, "create");
    let done = finish(&mut f.admin, op).await.unwrap();
    assert_eq!(done.state, pb::OperationState::Succeeded as i32, "{done:?}");
    let vm = f
        .admin
        .vms
        .get_vm(pb::VmRef {
            name: "golden".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(vm.observed_state, pb::DomainState::Running as i32);
    assert_eq!((vm.owner.as_str(), vm.base.as_str()), ("admin", ""));
    let host = vm.host.clone();

    // Bad input changes nothing: a taken name, no spec, an unknown host; and a running VM
    // cannot become a base.
    for (req, code) in [
        (create("golden", ""), Code::AlreadyExists),
        (
            pb::CreateVmRequest {
                spec: None,
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (create("elsewhere", "h9"), Code::NotFound),
    ] {
        let e = f.admin.vms.create_vm(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
    }
    let op = f
        .admin
        .vms
        .prepare_base(pb::VmRef {
            name: "golden".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let end = finish(&mut f.admin, op).await.unwrap();
    assert_eq!(end.state, pb::OperationState::Failed as i32, "{end:?}");

    // Shut down (after customising it), prepared, cloned.
    let op = f
        .admin
        .vms
        .power_off_vm(pb::VmRef {
            name: "golden".into(),
        })
        .await
        .unwrap()
        .into_inner();
    finish(&mut f.admin, op).await.unwrap();
    let op = f
        .admin
        .vms
        .prepare_base(pb::VmRef {
            name: "golden".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let end = finish(&mut f.admin, op).await.unwrap();
    assert_eq!(end.state, pb::OperationState::Succeeded as i32, "{end:?}");
    publish(&mut f.admin, "golden").await.unwrap();
    let bases = f
        .admin
        .vms
        .list_bases(pb::ListBaseSummariesRequest {})
        .await
        .unwrap()
        .into_inner()
        .bases;
    assert!(
        bases
            .iter()
            .any(|b| b.name == "golden" && b.hosts == [host.clone()]),
        "{bases:?}"
    );
    assert!(
        f.admin
            .vms
            .list_vms(pb::ListVmsRequest {})
            .await
            .unwrap()
            .into_inner()
            .vms
            .is_empty(),
        "a base is no longer a VM"
    );
    let d = clone(&mut f.admin, "golden", "golden-1").await;
    assert_eq!(d.state, pb::OperationState::Succeeded as i32, "{d:?}");
    assert_eq!(d.host, host, "clones go where the base is");

    // Users cannot create VMs or prepare bases.
    let t = f
        .admin
        .users
        .create_user(pb::CreateUserRequest {
            name: "carol".into(),
            role: "user".into(),
            ..Default::default()
        })
        .await
        .map(|_| ());
    t.unwrap();
    let token = f
        .admin
        .users
        .create_token(pb::CreateTokenRequest {
            user: "carol".into(),
            expires_in_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut carol = f.coord.client(&token).await.unwrap();
    let e = carol.vms.create_vm(create("mine", "")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
}

async fn op_ok(c: &mut CoordinatorClient, op: pb::Operation) -> pb::Operation {
    let done = finish(c, op).await.unwrap();
    assert_eq!(done.state, pb::OperationState::Succeeded as i32, "{done:?}");
    done
}

async fn holders(c: &mut CoordinatorClient, base: &str) -> Vec<String> {
    c.vms
        .list_bases(pb::ListBaseSummariesRequest {})
        .await
        .unwrap()
        .into_inner()
        .bases
        .into_iter()
        .find(|b| b.name == base)
        .map(|b| b.hosts)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_base_made_from_a_clone_is_synced_after_its_parent() {
    if !ready() {
        return;
    }
    let mut f = fleet(3, 200, 2000).await;
    create_base(&mut f.admin, "par", "h1").await;
    // A clone of it, kept on h1 (the others are in maintenance), prepared as a base itself.
    for h in ["h2", "h3"] {
        f.admin
            .hosts
            .set_host_enabled(pb::SetHostEnabledRequest {
                name: h.into(),
                enabled: false,
            })
            .await
            .unwrap();
    }
    let op = f
        .admin
        .vms
        .clone_vm(pb::CloneVmRequest {
            base: "par".into(),
            name: "kid".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(op_ok(&mut f.admin, op).await.host, "h1");
    let op = f
        .admin
        .vms
        .prepare_base(pb::VmRef { name: "kid".into() })
        .await
        .unwrap()
        .into_inner();
    op_ok(&mut f.admin, op).await;
    publish(&mut f.admin, "kid").await.unwrap();
    // Syncing the child to h3 brings the parent first.
    let sync = |base: &str, host: &str| pb::SyncBaseRequest {
        base: base.into(),
        host: host.into(),
        bandwidth_limit: 0,
    };
    let op = f
        .admin
        .vms
        .sync_base(sync("kid", "h3"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(op.kind, "sync-base");
    let done = op_ok(&mut f.admin, op).await;
    assert_eq!(
        holders(&mut f.admin, "par").await,
        vec!["h1", "h3"],
        "{done:?}"
    );
    assert_eq!(holders(&mut f.admin, "kid").await, vec!["h1", "h3"]);
    // The agent on h3 holds both bases, and clones of the child work there.
    let mut h3 = corral_client::AgentClient::connect(&f.agents[2].addr)
        .await
        .unwrap();
    let bases: Vec<String> = h3
        .bases
        .list_bases(pb::ListBasesRequest {})
        .await
        .unwrap()
        .into_inner()
        .bases
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(bases.len(), 2, "{bases:?}");
    f.admin
        .hosts
        .set_host_enabled(pb::SetHostEnabledRequest {
            name: "h3".into(),
            enabled: true,
        })
        .await
        .unwrap();
    f.admin
        .hosts
        .set_host_enabled(pb::SetHostEnabledRequest {
            name: "h1".into(),
            enabled: false,
        })
        .await
        .unwrap();
    let done = clone(&mut f.admin, "kid", "kid-1").await;
    assert_eq!(done.state, pb::OperationState::Succeeded as i32, "{done:?}");
    assert_eq!(done.host, "h3");
    // Syncing again is a no-op; bad input is refused and changes nothing.
    let op = f
        .admin
        .vms
        .sync_base(sync("kid", "h3"))
        .await
        .unwrap()
        .into_inner();
    let done = op_ok(&mut f.admin, op).await;
    assert!(done.result.contains("\"copied\":false"), "{done:?}");
    for (req, code) in [
        (sync("kid", "h9"), Code::NotFound),
        (sync("nope", "h2"), Code::NotFound),
        (sync("a/b", "h2"), Code::InvalidArgument),
    ] {
        let e = f.admin.vms.sync_base(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
    }
    // h3's copy of kid cannot go while kid-1 uses it.
    let e = f
        .admin
        .vms
        .remove_base_from_host(sync("kid", "h3"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
}

/// One sample's value (`name` with every label of `labels`), summed; 0 when absent.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clone_is_counted_and_its_log_lines_found_on_every_process() {
    if !ready() {
        return;
    }
    let free = || {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        format!("127.0.0.1:{port}")
    };
    let (listen, agent_listen) = (free(), free());
    let logs = tempfile::tempdir().unwrap();
    let (coord_log, agent_log) = (logs.path().join("coord"), logs.path().join("agent"));
    let json = ("CORRAL_LOG_FORMAT", "json");
    let mut f = fleet_with(
        1,
        200,
        2000,
        &[
            ("CORRAL_COORD_METRICS_LISTEN", listen.as_str()),
            json,
            ("RUST_LOG", "info"),
            (corral_tests::STDERR_TO, coord_log.to_str().unwrap()),
        ],
        &[
            ("CORRAL_AGENT_METRICS_LISTEN", agent_listen.as_str()),
            json,
            ("RUST_LOG", "info,corral_agent=debug"),
            (corral_tests::STDERR_TO, agent_log.to_str().unwrap()),
        ],
    )
    .await;
    let admin = &mut f.admin;
    let url = format!("http://{listen}/metrics");
    let scrape = || run("curl", &["-s", "--fail", "--max-time", "5", &url]).unwrap();
    let before = scrape();
    assert_eq!(
        sample(&before, "corral_operations_total", &[("kind", "clone")]),
        0.0
    );
    create_base(admin, "m-base", "h1").await;
    let op = clone(admin, "m-base", "m-c1").await;
    let bad = admin
        .vms
        .clone_vm(pb::CloneVmRequest {
            base: "m-base".into(),
            name: "../bad".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);
    let after = scrape();
    let ops = |outcome| {
        sample(
            &after,
            "corral_operations_total",
            &[("kind", "clone"), ("outcome", outcome)],
        )
    };
    assert_eq!(ops("succeeded"), 1.0, "{after}");
    assert_eq!(ops("failed"), 0.0, "{after}");
    let rpcs = |code| {
        sample(
            &after,
            "corral_rpc_requests_total",
            &[("method", "CloneVm"), ("code", code)],
        )
    };
    assert_eq!(rpcs("Ok"), 1.0, "{after}");
    assert_eq!(rpcs("InvalidArgument"), 1.0, "{after}");
    // Streams too, once ended: the client followed its clone with WatchOperation.
    let watched = sample(
        &after,
        "corral_rpc_requests_total",
        &[("method", "WatchOperation"), ("code", "Ok")],
    );
    assert!(watched >= 1.0, "{after}");
    assert_eq!(sample(&after, "corral_hosts", &[("state", "up")]), 1.0);
    assert_eq!(
        sample(&after, "corral_vms", &[("state", "running")]),
        1.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "corral_operations", &[("state", "running")]),
        0.0,
        "{after}"
    );
    assert!(
        sample(
            &after,
            "corral_operation_duration_seconds_count",
            &[("kind", "clone")]
        ) >= 1.0,
        "{after}"
    );
    // The agent's own: the clone it made, a refused call, its domains.
    let agent_url = format!("http://{agent_listen}/metrics");
    let on_agent = run("curl", &["-s", "--fail", "--max-time", "5", &agent_url]).unwrap();
    let calls = |method, code| {
        sample(
            &on_agent,
            "corral_agent_rpc_requests_total",
            &[("method", method), ("code", code)],
        )
    };
    assert_eq!(calls("CloneBase", "Ok"), 1.0, "{on_agent}");
    assert!(calls("GetHostInfo", "Ok") >= 1.0, "heartbeats: {on_agent}");
    assert!(
        sample(&on_agent, "corral_agent_domains", &[("state", "running")]) >= 1.0,
        "{on_agent}"
    );

    // Logs: JSON lines, and the clone's are found on both processes by its operation id.
    let of_op = |path: &std::path::Path| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert!(!lines.is_empty(), "{}: no lines", path.display());
        lines
            .into_iter()
            .filter(|l| {
                l["spans"].as_array().is_some_and(|spans| {
                    spans
                        .iter()
                        .any(|s| s["op"].as_str() == Some(op.id.as_str()))
                })
            })
            .collect()
    };
    let on_coord = of_op(&coord_log);
    assert!(!on_coord.is_empty(), "no coordinator line names {}", op.id);
    let agent_lines = of_op(&agent_log);
    let methods: Vec<&str> = agent_lines
        .iter()
        .flat_map(|l| l["spans"].as_array().into_iter().flatten())
        .filter_map(|s| s["method"].as_str())
        .collect();
    assert!(methods.contains(&"CloneBase"), "{agent_lines:?}");
}

fn vm_event<'a>(e: &'a pb::Event, name: &str) -> Option<&'a pb::VmChanged> {
    match &e.what {
        Some(pb::event::What::Vm(v)) if v.name == name => Some(v),
        _ => None,
    }
}

fn numbered_from(events: &[pb::Event], first: u64) {
    let numbers: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    let expected: Vec<u64> = (first..first + events.len() as u64).collect();
    assert_eq!(
        numbers, expected,
        "an admin sees every event, in order, none twice"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_events_feed_follows_changes_and_resumes_after_a_coordinator_crash() {
    if !ready() {
        return;
    }
    feed_follows_and_resumes(&[]).await;
}

/// The same on PostgreSQL: the coordinator's whole state, and its feed, in a schema of its own.
#[tokio::test(flavor = "multi_thread")]
async fn on_postgresql_the_feed_resumes_and_state_survives_a_coordinator_crash() {
    if !ready() {
        return;
    }
    let Some(pg) = corral_tests::postgres::Schema::new() else {
        return;
    };
    feed_follows_and_resumes(&pg.coordinator_env()).await;
}

async fn feed_follows_and_resumes(coord_env: &[(&str, &str)]) {
    let mut f = fleet_with(1, 200, 2000, coord_env, &[]).await;
    let running = pb::DomainState::Running as i32;
    // From the start of the feed until the clone runs.
    let mut watcher = f.admin.clone();
    let first = tokio::spawn(async move {
        let mut seen = Vec::new();
        watcher
            .follow_events(Some(0), Duration::from_millis(200), |e| {
                seen.push(e.clone());
                vm_event(e, "ev-1").is_none_or(|v| v.observed_state != running)
            })
            .await
            .unwrap();
        seen
    });
    create_base(&mut f.admin, "ev-base", "h1").await;
    let op = clone(&mut f.admin, "ev-base", "ev-1").await;
    let seen = tokio::time::timeout(Duration::from_secs(30), first)
        .await
        .unwrap()
        .unwrap();
    numbered_from(&seen, 1);
    let host = |event: &str| {
        seen.iter().any(|e| {
            matches!(&e.what, Some(pb::event::What::Host(h)) if h.name == "h1" && h.event == event)
        })
    };
    assert!(host("added") && host("up"), "{seen:?}");
    let of_op: Vec<&pb::OperationChanged> = seen
        .iter()
        .filter_map(|e| match &e.what {
            Some(pb::event::What::Operation(o)) if o.id == op.id => Some(o),
            _ => None,
        })
        .collect();
    assert_eq!(of_op[0].event, "created", "{of_op:?}");
    assert!(of_op.iter().any(|o| o.event == "progress"), "{of_op:?}");
    assert!(seen
        .iter()
        .any(|e| vm_event(e, "ev-1").is_some_and(|v| v.event == "created")));
    let last = seen.last().unwrap().sequence;

    // Changes while nobody follows; then the coordinator is killed and restarted on its
    // database: a reader resuming after the last number it saw gets exactly what came after.
    let off = f
        .admin
        .vms
        .power_off_vm(pb::VmRef {
            name: "ev-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    finish(&mut f.admin, off).await.unwrap();
    f.coord.kill().unwrap();
    let root = f._dir.path().join("coord");
    f.coord = CoordProc::start_with(&root, 200, 2000, coord_env).unwrap();
    // The VM and its state are still known.
    let mut admin = f.coord.client(&f.coord.admin_token).await.unwrap();
    let vm = admin
        .vms
        .get_vm(pb::VmRef {
            name: "ev-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(vm.desired_state, "shut-off", "{vm:?}");
    let shut_off = pb::DomainState::ShutOff as i32;
    let mut rest = Vec::new();
    let follow = admin.follow_events(Some(last), Duration::from_millis(200), |e| {
        rest.push(e.clone());
        vm_event(e, "ev-1").is_none_or(|v| v.observed_state != shut_off)
    });
    tokio::time::timeout(Duration::from_secs(30), follow)
        .await
        .unwrap()
        .unwrap();
    numbered_from(&rest, last + 1);

    // The CLI prints the feed, one event a line, and says why it cannot resume from nowhere.
    let (addr, token) = (f.coord.addr.clone(), f.coord.admin_token.clone());
    let out = corral_cli(&addr, &token, &["events", "--after", "0", "--count", "3"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let firsts: Vec<&str> = text
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(firsts, ["1", "2", "3"], "{text}");
    assert!(text.contains("host h1 added"), "{text}");
    let out = corral_cli(&addr, &token, &["events", "--after", "999999999"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no event 999999999 yet"), "{err}");
}
