//! Several coordinators on one PostgreSQL (issue 12, item 5): one leads, the other answers
//! reads and refuses writes naming the leader; the leader is killed (`kill -9`) in the middle
//! of a batch of clones, the other takes over, and every operation ends exactly once with
//! every VM as its operation says. The client, given both addresses, follows by itself.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use corral_client::proto as pb;
use corral_client::CoordinatorClient;
use corral_tests::*;
use tonic::Code;

fn ready() -> bool {
    e2e_ready(
        &["corral-coordinator", "corral-agent"],
        true,
        "build the binaries first (cargo build --workspace --bins)",
    )
}

async fn info(c: &mut CoordinatorClient) -> Option<pb::CoordinatorInfo> {
    c.ops
        .get_coordinator(pb::GetCoordinatorRequest {})
        .await
        .ok()
        .map(tonic::Response::into_inner)
}

/// Waits until the coordinator at `c` leads; how long that took.
async fn leads(c: &mut CoordinatorClient, within: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < within {
        if info(c).await.is_some_and(|i| i.leader) {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no lead within {within:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_is_killed_mid_batch_and_the_other_finishes_every_operation_once() {
    if !ready() {
        return;
    }
    let Some(pg) = postgres::Schema::new() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut env = pg.coordinator_env();
    // One clone at a time per host: the batch is still running when the leader dies.
    env.push(("CORRAL_COORD_PER_HOST_LIMIT", "1"));
    let (root_a, root_b) = (dir.path().join("a"), dir.path().join("b"));
    let mut a = CoordProc::start_with(&root_a, 200, 2000, &env).unwrap();
    let token = a.admin_token.clone();
    let mut admin_a = a.client(&token).await.unwrap();
    leads(&mut admin_a, Duration::from_secs(10)).await;
    let agent = AgentProc::start_test_driver(&dir.path().join("h1")).unwrap();
    admin_a
        .hosts
        .add_host(pb::AddHostRequest {
            name: "h1".into(),
            address: agent.addr.clone(),
        })
        .await
        .unwrap();
    test_base(&mut admin_a, "fo-base", "h1").await.unwrap();

    // The second coordinator: it follows, answers reads, refuses writes naming the leader.
    std::fs::create_dir_all(&root_b).unwrap();
    std::fs::copy(root_a.join("admin.token"), root_b.join("admin.token")).unwrap();
    let b = CoordProc::start_with(&root_b, 200, 2000, &env).unwrap();
    let mut admin_b = b.client(&token).await.unwrap();
    let follower = info(&mut admin_b).await.unwrap();
    assert!(!follower.leader, "{follower:?}");
    assert_eq!(follower.leader_address, a.addr);
    let listed = admin_b.vms.list_vms(pb::ListVmsRequest::default()).await;
    assert!(listed.is_ok(), "a follower answers reads: {listed:?}");
    // Its hosts from the store, their state unknown: only the leader talks to agents.
    let hosts = admin_b
        .hosts
        .list_hosts(pb::ListHostsRequest {})
        .await
        .unwrap()
        .into_inner()
        .hosts;
    let seen: Vec<(&str, i32)> = hosts.iter().map(|h| (h.name.as_str(), h.state)).collect();
    assert_eq!(seen, [("h1", pb::HostState::Unknown as i32)], "{hosts:?}");
    let refused = admin_b
        .users
        .create_user(pb::CreateUserRequest {
            name: "eve".into(),
            role: "user".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("not the leader") && refused.message().contains(&a.addr),
        "{refused:?}"
    );
    assert_eq!(
        refused
            .metadata()
            .get("corral-leader")
            .unwrap()
            .to_str()
            .unwrap(),
        a.addr
    );

    // A client given both addresses talks to the leader.
    let both = format!("{},{}", a.addr, b.addr);
    let mut client = CoordinatorClient::connect_with(&both, &token, None)
        .await
        .unwrap();
    let mut ops = Vec::new();
    for i in 0..16 {
        let op = client
            .vms
            .clone_vm(pb::CloneVmRequest {
                base: "fo-base".into(),
                name: format!("fo-{i}"),
                start: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        ops.push(op);
    }
    let unfinished = admin_a
        .ops
        .list_operations(pb::ListOperationsRequest {
            unfinished_only: true,
        })
        .await
        .unwrap()
        .into_inner()
        .operations
        .len();
    a.kill().unwrap();
    let killed = Instant::now();
    assert!(
        unfinished > 0,
        "the batch must still be running when the leader dies"
    );

    let took = leads(&mut admin_b, Duration::from_secs(10)).await;
    let failover = killed.elapsed();
    eprintln!(
        "failover: {} unfinished of {} clones at the kill; the other coordinator led {:.2} s after it",
        unfinished,
        ops.len(),
        failover.as_secs_f64()
    );
    assert!(took <= Duration::from_secs(5), "failover took {took:?}");

    // Fencing: once the new leader has called the agent, a call naming the old term of this
    // database is refused, the new term's is not.
    let now = info(&mut admin_b).await.unwrap();
    assert!(now.term >= 2 && now.cluster.len() == 32, "{now:?}");
    let mut on_agent = agent.client().await.unwrap();
    let named = |term: i64| {
        let mut r = tonic::Request::new(pb::GetHostInfoRequest {});
        let v = format!("{}:{term}", now.cluster).parse().unwrap();
        r.metadata_mut().insert(corral_client::TERM_HEADER, v);
        r
    };
    let fenced = Instant::now();
    let refused = loop {
        match on_agent.host.get_host_info(named(now.term - 1)).await {
            Err(e) => break e,
            Ok(_) => {
                assert!(fenced.elapsed() < Duration::from_secs(10), "never fenced");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("newer term"), "{refused:?}");
    on_agent.host.get_host_info(named(now.term)).await.unwrap();

    // Every operation ends, once, and every VM is as its operation says.
    let mut succeeded = 0;
    let mut made = Vec::new();
    for op in &ops {
        let end = client.wait(&op.id, |_| {}).await.unwrap();
        let vm = client
            .vms
            .get_vm(pb::VmRef {
                name: op.vm.clone(),
            })
            .await;
        match pb::OperationState::try_from(end.state).unwrap() {
            pb::OperationState::Succeeded => {
                succeeded += 1;
                made.push(op.vm.clone());
                assert!(vm.is_ok(), "{} succeeded: its VM exists", op.vm);
            }
            pb::OperationState::Failed | pb::OperationState::Cancelled => {
                assert_eq!(vm.unwrap_err().code(), Code::NotFound, "{end:?}");
            }
            other => panic!("{} did not end: {other:?}", op.id),
        }
    }
    // The agent has a domain for each VM that exists, and none for the others (clean-ups
    // after the takeover have run by the time their operations ended).
    let domains: Vec<String> = on_agent
        .domains
        .list_domains(pb::ListDomainsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .domains
        .into_iter()
        .map(|d| d.name)
        .collect();
    let mut clones: Vec<String> = domains
        .into_iter()
        .filter(|d| d.starts_with("fo-") && d != "fo-base")
        .collect();
    clones.sort();
    made.sort();
    assert_eq!(
        clones, made,
        "the agent's clones are exactly the VMs that exist"
    );
    // Exactly once: each operation was created once and ended once, in the feed.
    let terminal = [
        pb::OperationState::Succeeded as i32,
        pb::OperationState::Failed as i32,
        pb::OperationState::Cancelled as i32,
    ];
    let is_end = |o: &pb::OperationChanged| o.event == "state" && terminal.contains(&o.state);
    let mut feed = Vec::new();
    let ids: Vec<String> = ops.iter().map(|o| o.id.clone()).collect();
    let mut left: std::collections::BTreeSet<String> = ids.iter().cloned().collect();
    let follow = client.follow_events(Some(0), Duration::from_millis(200), |e| {
        if let Some(pb::event::What::Operation(o)) = &e.what {
            if is_end(o) {
                left.remove(&o.id);
            }
        }
        feed.push(e.clone());
        !left.is_empty()
    });
    tokio::time::timeout(Duration::from_secs(20), follow)
        .await
        .expect("every operation's end is in the feed")
        .unwrap();
    for op in &ops {
        let of_op: Vec<&pb::OperationChanged> = feed
            .iter()
            .filter_map(|e| match &e.what {
                Some(pb::event::What::Operation(o)) if o.id == op.id => Some(o),
                _ => None,
            })
            .collect();
        let created = of_op.iter().filter(|o| o.event == "created").count();
        let ended = of_op.iter().filter(|o| is_end(o)).count();
        assert_eq!((created, ended), (1, 1), "{}: {of_op:?}", op.id);
    }
    eprintln!(
        "{succeeded} of {} clones succeeded, the rest failed cleanly",
        ops.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_leader_loses_its_lease_and_exits_without_writing() {
    if !ready() {
        return;
    }
    let Some(pg) = postgres::Schema::new() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let env = pg.coordinator_env();
    let (root_a, root_b) = (dir.path().join("a"), dir.path().join("b"));
    let mut a = CoordProc::start_with(&root_a, 200, 2000, &env).unwrap();
    let token = a.admin_token.clone();
    let mut admin_a = a.client(&token).await.unwrap();
    leads(&mut admin_a, Duration::from_secs(10)).await;
    std::fs::create_dir_all(&root_b).unwrap();
    std::fs::copy(root_a.join("admin.token"), root_b.join("admin.token")).unwrap();
    let b = CoordProc::start_with(&root_b, 200, 2000, &env).unwrap();
    let mut admin_b = b.client(&token).await.unwrap();
    // Paused past its lease: the other takes over with the next term.
    a.pause(true).unwrap();
    let took = leads(&mut admin_b, Duration::from_secs(10)).await;
    assert!(took <= Duration::from_secs(5), "{took:?}");
    let term = info(&mut admin_b).await.unwrap().term;
    assert!(term >= 2, "a new term: {term}");
    // A write sent to the paused one waits in its socket; when it wakes, it finds the lease
    // gone: the write is not made and the process ends.
    let mut late = admin_a.clone();
    let write = tokio::spawn(async move {
        late.users
            .create_user(pb::CreateUserRequest {
                name: "late".into(),
                role: "user".into(),
                ..Default::default()
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.pause(false).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), write).await;
    let started = Instant::now();
    while a.exited().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the old leader goes on"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let users = admin_b
        .users
        .list_users(pb::ListUsersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .users;
    assert!(
        !users.iter().any(|u| u.name == "late"),
        "the old leader wrote after losing its lease: {users:?}"
    );
    assert!(info(&mut admin_b).await.unwrap().leader);
}
