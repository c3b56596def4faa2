//! The adversarial suite against the coordinator: every RPC of its services with bad names,
//! bad numbers, unknown ids and references to what another user owns; each case asserts the
//! code, the message, and that neither the store nor the agent's host changed. With an
//! agent on libvirt's test driver, and with one on the real libvirtd.

#![allow(clippy::unwrap_used)]

use corral_client::proto as pb;
use corral_tests::adversarial::{host_snapshot, run_cases};
use corral_tests::coord_cases::{coord_cases, store_snapshot, Callers, CoordWorld};
use corral_tests::*;

async fn clone_as(c: &mut corral_client::CoordinatorClient, base: &str, name: &str) -> String {
    let op = c
        .vms
        .clone_vm(pb::CloneVmRequest {
            base: base.into(),
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = finish(c, op).await.unwrap();
    assert_eq!(done.state, pb::OperationState::Succeeded as i32, "{done:?}");
    done.id
}

async fn suite(agent: AgentProc, real: bool) {
    let dir = tempfile::tempdir().unwrap();
    let coord = CoordProc::start(dir.path(), 100, 1500).unwrap();
    let mut admin = coord.client(&coord.admin_token).await.unwrap();
    admin
        .hosts
        .add_host(pb::AddHostRequest {
            name: "h1".into(),
            address: agent.addr.clone(),
        })
        .await
        .unwrap();
    let base = "advc-web";
    let op = admin
        .vms
        .create_base(pb::CreateBaseRequest {
            spec: Some(test_spec(base)),
            host: "h1".into(),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let done = finish(&mut admin, op).await.unwrap();
    assert_eq!(done.state, pb::OperationState::Succeeded as i32, "{done:?}");
    publish(&mut admin, base).await.unwrap();
    let (ta, tb) = (
        user_token(&mut admin, "alice").await.unwrap(),
        user_token(&mut admin, "bob").await.unwrap(),
    );
    let mut alice = coord.client(&ta).await.unwrap();
    let mut bob = coord.client(&tb).await.unwrap();
    clone_as(&mut alice, base, "advc-a1").await;
    let bob_op = clone_as(&mut bob, base, "advc-b1").await;
    let world = CoordWorld {
        p: "advc-".into(),
        host: "h1".into(),
        host_address: agent.addr.clone(),
        base: base.into(),
        alice_vm: "advc-a1".into(),
        bob_vm: "advc-b1".into(),
        bob_op,
    };
    let callers = Callers {
        admin: admin.clone(),
        alice,
        bob,
        nobody: coord.client("crl_not-a-token").await.unwrap(),
    };
    let agent_client = agent.client().await.unwrap();
    let storage = agent.storage();
    let failures = run_cases(&callers, coord_cases(&world), || {
        let (mut admin, mut ac, storage) = (admin.clone(), agent_client.clone(), storage.clone());
        async move {
            format!(
                "{} {:?}",
                store_snapshot(&mut admin).await,
                host_snapshot(&mut ac, &storage, real).await
            )
        }
    })
    .await;
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_coordinator_rpc_refuses_bad_input_with_a_test_driver_host() {
    let dir = tempfile::tempdir().unwrap();
    suite(AgentProc::start_test_driver(dir.path()).unwrap(), false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_coordinator_rpc_refuses_bad_input_with_a_real_host() {
    if !real_host_ready() {
        return;
    }
    cleanup_domains("advc-");
    let dir = tempfile::tempdir().unwrap();
    suite(AgentProc::start(dir.path()).unwrap(), true).await;
    cleanup_domains("advc-");
}
