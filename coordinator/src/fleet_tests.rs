//! The coordinator's logic over an in-process fake fleet ([`crate::fake`]): what only end
//! to end tests could show before the door existed, in milliseconds.

use std::time::Duration;

use corral_client::proto as pb;

use crate::fake::Kit;
use crate::orders::{BaseOnHost, CloneOrder, MoveOrder};
use crate::store::{OpRecord, OpState};

fn clone_req(base: &str, name: &str, key: &str) -> CloneOrder {
    CloneOrder {
        base: base.into(),
        name: name.into(),
        key: (!key.is_empty()).then(|| key.into()),
        ..Default::default()
    }
}

/// A clone by alice that must succeed.
async fn cloned(kit: &Kit, order: CloneOrder) {
    let op = kit.coord.clone_vm(&kit.alice, order).await.unwrap();
    assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
}

async fn vm_exists(kit: &Kit, name: &str) -> bool {
    let n = name.to_string();
    kit.coord
        .db
        .call(move |s| Ok(s.vm(&n).is_ok()))
        .await
        .unwrap()
}

/// Waits (the fleet cleans up in the background) until `ok` holds.
async fn eventually(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    for _ in 0..300 {
        if ok().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} did not happen");
}

#[tokio::test]
async fn a_clone_is_placed_made_and_recorded() {
    let kit = Kit::new(1).await;
    kit.base("web", None, &["h1"]).await;
    let op = kit
        .coord
        .clone_vm(&kit.alice, clone_req("web", "c1", ""))
        .await
        .unwrap();
    assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
    assert!(kit.agent("h1").has_domain("c1"));
    assert!(vm_exists(&kit, "c1").await);
    assert_eq!(kit.coord.reservations.held(), 0);
}

#[tokio::test]
async fn a_failed_clone_leaves_no_record_and_releases_its_reservation() {
    let kit = Kit::new(1).await;
    kit.base("web", None, &["h1"]).await;
    kit.agent("h1").fail("clone_base");
    let op = kit
        .coord
        .clone_vm(&kit.alice, clone_req("web", "c1", ""))
        .await
        .unwrap();
    let ended = kit.end(&op.id).await;
    assert_eq!(ended.state, OpState::Failed);
    assert!(ended
        .error
        .unwrap_or_default()
        .contains("clone_base failed"));
    assert!(!vm_exists(&kit, "c1").await);
    assert_eq!(kit.coord.reservations.held(), 0);
}

#[tokio::test]
async fn an_idempotent_retry_and_a_cancel_release_the_reservation_and_clean_up() {
    let kit = Kit::new(1).await;
    kit.base("web", None, &["h1"]).await;
    let h1 = kit.agent("h1");
    h1.hold("clone_base");
    let first = kit
        .coord
        .clone_vm(&kit.alice, clone_req("web", "c1", "k1"))
        .await
        .unwrap();
    eventually("the clone reaching the agent", async || {
        kit.calls().iter().any(|c| c == "h1 clone_base c1")
    })
    .await;
    assert_eq!(kit.coord.reservations.held(), 1);
    let retry = kit
        .coord
        .clone_vm(&kit.alice, clone_req("web", "c1", "k1"))
        .await
        .unwrap();
    assert_eq!(retry.id, first.id);
    assert_eq!(kit.coord.reservations.held(), 1, "the retry holds nothing");
    kit.coord.ops.cancel(&first.id).await.unwrap();
    assert_eq!(kit.end(&first.id).await.state, OpState::Cancelled);
    assert_eq!(kit.coord.reservations.held(), 0);
    // The agent finishes the clone it was asked for; the coordinator removes it, and the
    // record, since its operation was cancelled.
    h1.gate.notify_one();
    eventually("the cancelled clone's removal", async || {
        !h1.has_domain("c1") && !vm_exists(&kit, "c1").await
    })
    .await;
}

#[tokio::test]
async fn a_live_move_that_fails_rolls_back() {
    let kit = Kit::new(2).await;
    kit.base("web", None, &["h1", "h2"]).await;
    let op = kit
        .coord
        .clone_vm(&kit.alice, clone_req("web", "c1", ""))
        .await
        .unwrap();
    assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
    let source = kit
        .coord
        .vm_for(&kit.admin, "c1")
        .await
        .unwrap()
        .host
        .unwrap();
    let target = if source == "h1" { "h2" } else { "h1" };
    kit.agent(&source).fail("migrate");
    let req = MoveOrder {
        name: "c1".into(),
        host: target.into(),
        live: true,
        bandwidth_limit: 0,
    };
    let op = kit.coord.move_vm(&kit.admin, req).await.unwrap();
    assert_eq!(kit.end(&op.id).await.state, OpState::Failed);
    let vm = kit.coord.vm_for(&kit.admin, "c1").await.unwrap();
    assert_eq!(
        vm.host.as_deref(),
        Some(source.as_str()),
        "the VM stays where it was"
    );
    // What the target prepared for the migration goes again.
    let t = kit.agent(target);
    eventually("the target's cleanup", async || t.volumes().is_empty()).await;
    assert!(kit
        .calls()
        .iter()
        .any(|c| c == &format!("{target} delete_volume c1-vda.qcow2")));
}

#[tokio::test]
async fn ensure_base_copies_parents_first() {
    let kit = Kit::new(2).await;
    kit.base("root", None, &["h1"]).await;
    kit.base("child", Some("root"), &["h1"]).await;
    let req = BaseOnHost {
        base: "child".into(),
        host: "h2".into(),
        bandwidth_limit: 0,
    };
    let op = kit.coord.sync_base(&kit.admin, req).await.unwrap();
    assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
    let imports: Vec<String> = kit
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("h2 import_base"))
        .collect();
    assert_eq!(imports, ["h2 import_base root", "h2 import_base child"]);
    let holders = kit.coord.db.call(|s| s.bases()).await.unwrap();
    for (b, hosts) in holders {
        assert_eq!(hosts, ["h1", "h2"], "{b}");
    }
}

/// An operation left unfinished by a coordinator that stopped.
async fn unfinished(kit: &Kit, kind: &str, vm: &str) -> OpRecord {
    let op = OpRecord {
        id: format!("op-{kind}-{vm}"),
        kind: kind.into(),
        vm: Some(vm.into()),
        host: Some("h1".into()),
        user: Some("alice".into()),
        state: OpState::Queued,
        idempotency_key: None,
        request: serde_json::json!({}),
        result: None,
        error: None,
        created_ms: 0,
        updated_ms: 0,
    };
    let o = op.clone();
    kit.coord
        .db
        .call(move |s| {
            s.create_operation(&o)?;
            s.set_operation_state(&o.id, OpState::Running, None, None)
        })
        .await
        .unwrap();
    op
}

#[tokio::test]
async fn every_restart_resumer_cleans_what_was_half_made() {
    let kit = Kit::new(1).await;
    kit.base("web", None, &["h1"]).await;
    let h1 = kit.agent("h1");
    for (kind, vm) in [("clone", "c1"), ("create", "v1")] {
        h1.put_domain(pb::Domain {
            name: vm.into(),
            ..Default::default()
        });
        let record = crate::store::VmRecord {
            name: vm.into(),
            owner: "alice".into(),
            base: None,
            host: Some("h1".into()),
            desired_state: crate::states::Desired::ShutOff,
            observed_state: crate::states::Observed::Creating,
            spec: serde_json::json!({}),
        };
        kit.coord
            .db
            .call(move |s| s.insert_vm(&record))
            .await
            .unwrap();
        unfinished(&kit, kind, vm).await;
    }
    let other = unfinished(&kit, "start", "c9").await;
    let (resumed, failed) = kit.coord.ops.recover(&kit.coord.resumers()).await.unwrap();
    assert_eq!(resumed.len(), 2, "{resumed:?}");
    assert_eq!(failed, std::slice::from_ref(&other.id));
    for (kind, vm) in [("clone", "c1"), ("create", "v1")] {
        let ended = kit.end(&format!("op-{kind}-{vm}")).await;
        assert_eq!(ended.state, OpState::Failed);
        assert!(ended
            .error
            .unwrap_or_default()
            .contains("was removed from h1"));
        assert!(!h1.has_domain(vm), "{vm}");
        assert!(!vm_exists(&kit, vm).await, "{vm}");
    }
    let stopped = kit.end(&other.id).await;
    assert!(stopped
        .error
        .unwrap_or_default()
        .contains("submitted again"));
}

#[tokio::test]
async fn access_rules_decide_who_clones_and_sees_a_base() {
    use crate::access::Rule;
    use crate::auth::Caller;
    let kit = Kit::new(1).await;
    kit.base("web", None, &["h1"]).await;
    let mut students = Vec::new();
    for course in ["math", "art"] {
        let attrs = [("course".to_string(), course.to_string())].into();
        let name = format!("s-{course}");
        let u = kit.coord.create_user(&kit.admin, &name, "user", &attrs);
        students.push(Caller(u.await.unwrap()));
    }
    let (math, art) = (students[0].clone(), students[1].clone());
    let listed = |who: &Caller| {
        let (c, who) = (kit.coord.clone(), who.clone());
        async move {
            let bases = c.base_summaries(&who).await.unwrap();
            bases.into_iter().map(|b| b.name).collect::<Vec<_>>()
        }
    };
    // Public, no rules: every user.
    assert_eq!(listed(&art).await, ["web"]);
    // Only math students, by the user's own attributes.
    let rule = Rule {
        attribute: "course".into(),
        value: "math".into(),
        allowed: true,
        last: false,
    };
    let v = kit
        .coord
        .add_access_rule(&kit.admin, "web", rule, 0)
        .await
        .unwrap();
    assert_eq!(v.access.rules.len(), 1);
    assert_eq!(listed(&math).await, ["web"]);
    assert!(listed(&art).await.is_empty());
    let e = kit
        .coord
        .clone_vm(&art, clone_req("web", "c-art", ""))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("you may not clone base web"), "{e}");
    let op = kit
        .coord
        .clone_vm(&math, clone_req("web", "c-math", ""))
        .await
        .unwrap();
    assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
    // The admin asks why; a user may not ask for another user, nor change rules.
    let why = kit
        .coord
        .base_access(&kit.admin, "web", Some("s-art"))
        .await
        .unwrap();
    assert!(!why.decision.allowed);
    assert!(
        why.explanation().contains("only allow"),
        "{}",
        why.explanation()
    );
    assert!(kit
        .coord
        .base_access(&art, "web", Some("s-math"))
        .await
        .is_err());
    assert!(kit.coord.set_base_public(&art, "web", false).await.is_err());
    // A refused change changes nothing; private closes the base to every user.
    assert!(kit
        .coord
        .remove_access_rule(&kit.admin, "web", 5)
        .await
        .is_err());
    kit.coord
        .set_base_public(&kit.admin, "web", false)
        .await
        .unwrap();
    assert!(listed(&math).await.is_empty());
    assert_eq!(listed(&kit.admin).await, ["web"]);
    let mine = kit.coord.base_access(&math, "web", None).await.unwrap();
    assert!(mine.access.rules.is_empty(), "users do not see the rules");
    assert!(!mine.decision.allowed);
}

#[tokio::test]
async fn a_volatile_clone_goes_when_it_shuts_down_or_its_time_is_up() {
    use crate::states::Observed;
    let kit = Kit::new(1).await;
    kit.base("web", None, &["h1"]).await;
    for (name, lifetime) in [("v1", None), ("v2", Some(Duration::from_secs(3600)))] {
        let order = CloneOrder {
            volatile: true,
            lifetime,
            ..clone_req("web", name, "")
        };
        let op = kit.coord.clone_vm(&kit.alice, order).await.unwrap();
        assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
    }
    // Started with its clone; nothing is due while both run.
    let v1 = kit.coord.vm_for(&kit.alice, "v1").await.unwrap();
    assert_eq!(v1.desired_state, crate::states::Desired::Running);
    assert!(kit.coord.reap_volatile().await.unwrap().is_empty());
    // Not kept: no move, no base made of it.
    let mv = crate::orders::MoveOrder {
        name: "v1".into(),
        host: "h1".into(),
        ..Default::default()
    };
    let e = kit.coord.move_vm(&kit.admin, mv).await.unwrap_err();
    assert!(e.to_string().contains("volatile"), "{e}");
    // v1 shuts down (as its host's event says); v2's time is up.
    kit.coord
        .db
        .call(|s| {
            let mut v1 = s.vm("v1")?;
            v1.observed_state = Observed::Domain(pb::DomainState::ShutOff);
            s.put_vm(&v1)?;
            let mut v2 = s.vm("v2")?;
            v2.spec["expires_ms"] = 1.into();
            s.put_vm(&v2)
        })
        .await
        .unwrap();
    let mut reaped = kit.coord.reap_volatile().await.unwrap();
    reaped.sort();
    assert_eq!(reaped, ["v1", "v2"]);
    eventually("both removed", async || {
        !vm_exists(&kit, "v1").await && !vm_exists(&kit, "v2").await
    })
    .await;
    for name in ["v1", "v2"] {
        assert!(kit
            .calls()
            .iter()
            .any(|c| c.contains("remove_domain") && c.contains(name)));
    }
    // A lifetime is for volatile clones only.
    let order = CloneOrder {
        lifetime: Some(Duration::from_secs(60)),
        ..clone_req("web", "k1", "")
    };
    assert!(kit.coord.clone_vm(&kit.alice, order).await.is_err());
}

#[tokio::test]
async fn day_two_power_actions_pause_resume_and_reset() {
    use crate::lifecycle::Action;
    let kit = Kit::new(1).await;
    kit.base("web", None, &["h1"]).await;
    let started = CloneOrder {
        start: true,
        ..clone_req("web", "c1", "")
    };
    cloned(&kit, started).await;
    for (action, state) in [
        (Action::Suspend, pb::DomainState::Paused),
        (Action::Resume, pb::DomainState::Running),
        (Action::Reset, pb::DomainState::Running),
    ] {
        let op = kit
            .coord
            .vm_action(&kit.alice, "c1", action.clone())
            .await
            .unwrap();
        assert_eq!(
            kit.end(&op.id).await.state,
            OpState::Succeeded,
            "{action:?}"
        );
        let vm = kit.coord.vm_for(&kit.alice, "c1").await.unwrap();
        assert_eq!(
            vm.observed_state,
            crate::states::Observed::Domain(state),
            "{action:?}"
        );
        assert_eq!(
            vm.desired_state,
            crate::states::Desired::Running,
            "{action:?}"
        );
    }
}

#[tokio::test]
async fn a_spun_off_clone_leaves_its_base_free_to_go() {
    use crate::lifecycle::Action;
    let kit = Kit::new(1).await;
    kit.base("web", None, &["h1"]).await;
    cloned(&kit, clone_req("web", "c1", "")).await;
    let clones = |kit: &Kit| {
        let c = kit.coord.clone();
        let admin = kit.admin.clone();
        async move { c.base_summaries(&admin).await.unwrap()[0].clones }
    };
    assert_eq!(clones(&kit).await, 1);
    let op = kit
        .coord
        .vm_action(&kit.alice, "c1", Action::Spinoff)
        .await
        .unwrap();
    assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
    let vm = kit.coord.vm_for(&kit.alice, "c1").await.unwrap();
    assert_eq!(vm.base, None);
    assert_eq!(clones(&kit).await, 0);
    assert!(kit.calls().iter().any(|c| c == "h1 spinoff_clone c1"));
    // A VM that is no clone has nothing to spin off from.
    let e = kit
        .coord
        .vm_action(&kit.alice, "c1", Action::Spinoff)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no clone"), "{e}");
}

#[tokio::test]
async fn a_boot_storm_starts_a_few_at_a_time_and_queues_the_rest() {
    let kit = Kit::with(1, |c| c.starts_per_host = 2).await;
    kit.base("web", None, &["h1"]).await;
    kit.agent("h1").hold("clone_base");
    let mut ops = Vec::new();
    for i in 0..3 {
        let order = CloneOrder {
            start: true,
            ..clone_req("web", &format!("s{i}"), "")
        };
        ops.push(kit.coord.clone_vm(&kit.alice, order).await.unwrap().id);
    }
    let started = || {
        kit.calls()
            .iter()
            .filter(|c| c.contains("clone_base"))
            .count()
    };
    // Four operations may run on the host, but only two starts.
    eventually("two starts", async || started() == 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(started(), 2);
    assert_eq!(kit.coord.starts.running("h1"), 2);
    let mut queued = 0;
    for id in &ops {
        let i = id.clone();
        let events = kit.coord.db.call(move |s| s.events(&i, 0)).await.unwrap();
        queued += events.iter().filter(|e| e.phase == "queued-start").count();
    }
    assert_eq!(queued, 1, "the waiting start says so");
    // Released one by one, every start ends running.
    for _ in 0..200 {
        kit.agent("h1").gate.notify_waiters();
        tokio::time::sleep(Duration::from_millis(5)).await;
        if kit.coord.starts.running("h1") == 0 && started() == 3 {
            break;
        }
    }
    for id in &ops {
        assert_eq!(kit.end(id).await.state, OpState::Succeeded);
    }
    assert_eq!(kit.coord.starts.running("h1"), 0);
}

/// Waits for every operation of the pool manager's round to end.
async fn round(kit: &Kit) -> usize {
    let steps = kit.coord.manage_pools().await.unwrap();
    for op in kit.coord.ops.list(true).await.unwrap() {
        kit.end(&op.id).await;
    }
    steps.len()
}

#[tokio::test]
async fn a_pool_is_kept_full_and_hands_out_a_running_clone_without_remaking_it() {
    use crate::store::PoolSize;
    let kit = Kit::new(2).await;
    kit.base("web", None, &["h1", "h2"]).await;
    let size = PoolSize {
        clones: 3,
        start: 2,
    };
    // Only admins size pools, and a pool starts no more than it keeps.
    let refused = kit.coord.set_base_pool(&kit.alice, "web", size).await;
    assert!(matches!(
        refused,
        Err(crate::error::CoordError::PermissionDenied(_))
    ));
    let too_many = PoolSize {
        clones: 1,
        start: 2,
    };
    let refused = kit.coord.set_base_pool(&kit.admin, "web", too_many).await;
    assert!(refused
        .unwrap_err()
        .to_string()
        .contains("cannot start more"));
    kit.coord
        .set_base_pool(&kit.admin, "web", size)
        .await
        .unwrap();
    assert_eq!(round(&kit).await, 3);
    let status = kit.coord.pool_status(&kit.admin, "web").await.unwrap();
    assert_eq!((status.made, status.running, status.making), (3, 2, 0));
    assert_eq!(round(&kit).await, 0, "a full pool takes no step");
    // Users do not see pool clones.
    assert!(kit.coord.vms_of(&kit.alice).await.unwrap().is_empty());
    // Running pool clones are handed out once their guests are ready.
    kit.coord.watch_guests().await.unwrap();

    let before = kit.calls().len();
    let order = CloneOrder {
        start: true,
        ..clone_req("web", "mine", "")
    };
    let op = kit.coord.clone_vm(&kit.alice, order).await.unwrap();
    assert_eq!(op.kind, "handout");
    assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
    let calls = kit.calls()[before..].to_vec();
    assert_eq!(
        calls.len(),
        1,
        "one call: the owner and password: {calls:?}"
    );
    assert!(calls[0].contains(" assign pool-web-"), "{calls:?}");
    let mine = kit.coord.vm_for(&kit.alice, "mine").await.unwrap();
    assert!(mine.domain().starts_with("pool-web-"));
    assert_eq!(mine.observed_state.as_str(), "DOMAIN_STATE_RUNNING");
    let host = mine.host.clone().unwrap();
    assert!(kit.agent(&host).has_domain(mine.domain()));
    assert!(!kit.agent(&host).has_domain("mine"));

    // The manager refills the pool with a started clone.
    assert_eq!(round(&kit).await, 1);
    let status = kit.coord.pool_status(&kit.admin, "web").await.unwrap();
    assert_eq!((status.made, status.running), (3, 2));
    // The VM's actions reach its domain.
    let op = kit
        .coord
        .vm_action(&kit.alice, "mine", crate::lifecycle::Action::PowerOff)
        .await
        .unwrap();
    assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
    assert!(kit
        .calls()
        .iter()
        .any(|c| c.ends_with(&format!("power {}", mine.domain()))));
    // A name kept for pool clones is refused to users.
    let err = kit
        .coord
        .clone_vm(&kit.alice, clone_req("web", "pool-web-mine", ""))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("kept for pool clones"));

    // An emptied pool removes its clones; the handed-out VM stays.
    let empty = PoolSize::default();
    kit.coord
        .set_base_pool(&kit.admin, "web", empty)
        .await
        .unwrap();
    assert_eq!(round(&kit).await, 3);
    let status = kit.coord.pool_status(&kit.admin, "web").await.unwrap();
    assert_eq!(status.made, 0);
    assert!(vm_exists(&kit, "mine").await);
}

#[tokio::test]
async fn base_rm_makes_an_editable_vm_and_a_rebase_changes_a_clones_base() {
    use crate::lifecycle::Action;
    let kit = Kit::new(2).await;
    kit.base("web", None, &["h1", "h2"]).await;
    kit.base("web2", None, &["h1"]).await;
    // A clone moves onto another base (the new base comes to its host when needed).
    cloned(&kit, clone_req("web", "c1", "")).await;
    let op = kit
        .coord
        .vm_action(&kit.alice, "c1", Action::Rebase("web2".into()))
        .await
        .unwrap();
    assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
    let c1 = kit.coord.vm_for(&kit.alice, "c1").await.unwrap();
    assert_eq!(c1.base.as_deref(), Some("web2"));
    // Not while it has clones; then a VM on one host, its other copy gone.
    let refused = kit.coord.unprepare_base(&kit.admin, "web2").await;
    assert!(refused.unwrap_err().to_string().contains("c1"));
    let op = kit.coord.unprepare_base(&kit.admin, "web").await.unwrap();
    assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
    assert!(vm_exists(&kit, "web").await);
    let calls = kit.calls();
    assert!(
        calls.iter().any(|c| c == "h2 remove_domain web"),
        "{calls:?}"
    );
    assert!(
        calls.iter().any(|c| c == "h1 unprepare_base web"),
        "{calls:?}"
    );
    // Unchanged disks: preparing it again is refused (the fake's disks never change).
    let err = kit.coord.prepare_base(&kit.admin, "web").await.unwrap_err();
    assert!(err.to_string().contains("nothing changed"), "{err}");
}

#[tokio::test]
async fn an_idempotency_key_is_each_users_own() {
    let kit = Kit::new(1).await;
    kit.base("web", None, &["h1"]).await;
    let mine = kit
        .coord
        .clone_vm(&kit.alice, clone_req("web", "c1", "k1"))
        .await
        .unwrap();
    assert_eq!(kit.end(&mine.id).await.state, OpState::Succeeded);
    // Another user with the same key gets their own clone, not alice's operation.
    let theirs = kit
        .coord
        .clone_vm(&kit.admin, clone_req("web", "c2", "k1"))
        .await
        .unwrap();
    assert_ne!(theirs.id, mine.id);
    assert_eq!(kit.end(&theirs.id).await.state, OpState::Succeeded);
    assert!(vm_exists(&kit, "c2").await);
    // Alice's retry still finds hers.
    let retry = kit
        .coord
        .clone_vm(&kit.alice, clone_req("web", "c1", "k1"))
        .await
        .unwrap();
    assert_eq!(retry.id, mine.id);
}
