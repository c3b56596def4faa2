//! Guest readiness and post-load over the fake fleet (the real guest agent is tested end to
//! end in `tests/tests/guests.rs`).

use crate::error::CoordError;
use crate::fake::Kit;
use crate::guests::{GuestCommand, PostLoad, Readiness};
use crate::lifecycle::Action;
use crate::orders::CloneOrder;
use crate::store::OpState;

fn cmd(path: &str, args: &[&str]) -> GuestCommand {
    GuestCommand {
        path: path.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

async fn readiness(kit: &Kit, vm: &str) -> (Readiness, String) {
    let rec = kit.coord.vm_for(&kit.alice, vm).await.unwrap();
    kit.coord.vm_view(&rec).readiness
}

/// Watcher rounds, each followed by the end of what it submitted.
async fn settle(kit: &Kit) {
    for _ in 0..3 {
        kit.coord.watch_guests().await.unwrap();
        for op in kit.coord.ops.list(true).await.unwrap() {
            kit.end(&op.id).await;
        }
    }
}

fn execs(kit: &Kit) -> Vec<String> {
    kit.calls()
        .into_iter()
        .filter(|c| c.contains("guest_exec"))
        .collect()
}

#[tokio::test]
async fn a_vm_is_ready_after_its_post_load_ran_once_per_boot() {
    let kit = Kit::new(1).await;
    kit.base("web", None, &["h1"]).await;
    let good = PostLoad {
        commands: vec![cmd("touch", &["/run/ready"])],
    };
    // Only admins set post-load commands; bad ones change nothing.
    let e = kit
        .coord
        .set_base_post_load(&kit.alice, "web", good.clone())
        .await
        .unwrap_err();
    assert!(matches!(e, CoordError::PermissionDenied(_)), "{e}");
    let bad = PostLoad {
        commands: vec![cmd("", &[])],
    };
    let e = kit
        .coord
        .set_base_post_load(&kit.admin, "web", bad)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("program"), "{e}");
    let e = kit
        .coord
        .set_base_post_load(&kit.admin, "nope", good.clone())
        .await
        .unwrap_err();
    assert!(matches!(e, CoordError::NotFound(_)), "{e}");
    assert_eq!(
        kit.coord.base_post_load(&kit.admin, "web").await.unwrap(),
        PostLoad::default()
    );
    kit.coord
        .set_base_post_load(&kit.admin, "web", good.clone())
        .await
        .unwrap();

    let order = CloneOrder {
        base: "web".into(),
        name: "mine".into(),
        start: true,
        ..Default::default()
    };
    let op = kit.coord.clone_vm(&kit.alice, order).await.unwrap();
    assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
    assert_eq!(readiness(&kit, "mine").await.0, Readiness::Booting);
    settle(&kit).await;
    assert_eq!(readiness(&kit, "mine").await.0, Readiness::Ready);
    assert_eq!(execs(&kit), vec!["h1 guest_exec mine touch"]);
    // Settled: further rounds ask nothing and run nothing again.
    settle(&kit).await;
    assert_eq!(execs(&kit).len(), 1);

    // A failing command: the next boot's post-load fails and says which command.
    let failing = PostLoad {
        commands: vec![cmd("touch", &["/x"]), cmd("false", &[])],
    };
    kit.coord
        .set_base_post_load(&kit.admin, "web", failing)
        .await
        .unwrap();
    for action in [Action::PowerOff, Action::Start] {
        let op = kit
            .coord
            .vm_action(&kit.alice, "mine", action)
            .await
            .unwrap();
        assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
    }
    settle(&kit).await;
    let (r, detail) = readiness(&kit, "mine").await;
    assert_eq!(r, Readiness::Failed);
    assert!(
        detail.contains("post-load command 2/2 (false) exited 1"),
        "{detail}"
    );
    assert_eq!(execs(&kit).len(), 3);

    // Shut off: OFF, whatever was learnt.
    let op = kit
        .coord
        .vm_action(&kit.alice, "mine", Action::PowerOff)
        .await
        .unwrap();
    kit.end(&op.id).await;
    settle(&kit).await;
    assert_eq!(readiness(&kit, "mine").await.0, Readiness::Off);
}

#[tokio::test]
async fn a_pool_hands_out_only_ready_running_clones() {
    use crate::store::PoolSize;
    let kit = Kit::new(1).await;
    kit.base("web", None, &["h1"]).await;
    kit.coord
        .set_base_pool(
            &kit.admin,
            "web",
            PoolSize {
                clones: 1,
                start: 1,
            },
        )
        .await
        .unwrap();
    kit.coord.manage_pools().await.unwrap();
    for op in kit.coord.ops.list(true).await.unwrap() {
        kit.end(&op.id).await;
    }
    // Its one clone runs but its guest was not seen ready: a user gets a fresh clone.
    let order = CloneOrder {
        base: "web".into(),
        name: "first".into(),
        start: true,
        ..Default::default()
    };
    let op = kit.coord.clone_vm(&kit.alice, order).await.unwrap();
    assert_eq!(op.kind, "clone");
    kit.end(&op.id).await;
    // Once it is ready, the next user gets it.
    settle(&kit).await;
    let order = CloneOrder {
        base: "web".into(),
        name: "second".into(),
        start: true,
        ..Default::default()
    };
    let op = kit.coord.clone_vm(&kit.alice, order).await.unwrap();
    assert_eq!(op.kind, "handout");
    assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
    // Still ready under its new name (its guest did not change).
    settle(&kit).await;
    assert_eq!(readiness(&kit, "second").await.0, Readiness::Ready);
}
