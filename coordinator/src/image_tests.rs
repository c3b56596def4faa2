//! The image repository over the fake fleet (real files and real syncs are tested end to end
//! in `tests/tests/guests.rs` and the lab).

use crate::error::CoordError;
use crate::fake::Kit;
use crate::orders::CloneOrder;
use crate::store::OpState;

#[tokio::test]
async fn images_are_captured_versioned_loaded_and_removed_only_when_unused() {
    let kit = Kit::new(3).await;
    kit.base("web", None, &["h1"]).await;
    let order = CloneOrder {
        base: "web".into(),
        name: "mine".into(),
        ..Default::default()
    };
    let op = kit.coord.clone_vm(&kit.admin, order).await.unwrap();
    assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
    let c = &kit.coord;

    // No repository host yet; users may not capture nor choose them.
    let e = c
        .capture_image(&kit.admin, "mine", "lab", String::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no repository host"), "{e}");
    let e = c
        .set_repository_host(&kit.alice, "h2", true)
        .await
        .unwrap_err();
    assert!(matches!(e, CoordError::PermissionDenied(_)), "{e}");
    let e = c
        .set_repository_host(&kit.admin, "h9", true)
        .await
        .unwrap_err();
    assert!(matches!(e, CoordError::NotFound(_)), "{e}");
    c.set_repository_host(&kit.admin, "h2", true).await.unwrap();
    let e = c
        .capture_image(&kit.alice, "mine", "lab", String::new())
        .await
        .unwrap_err();
    assert!(matches!(e, CoordError::PermissionDenied(_)), "{e}");
    for (vm, image, says) in [
        ("nope", "lab", "not found"),
        ("mine", "bad/name", "invalid image name"),
        ("mine", &"x".repeat(41)[..], "at most 40"),
    ] {
        let e = c
            .capture_image(&kit.admin, vm, image, String::new())
            .await
            .unwrap_err();
        assert!(e.to_string().contains(says), "{vm} {image}: {e}");
    }
    assert!(
        c.images(None).await.unwrap().is_empty(),
        "refusals made nothing"
    );

    // Two captures: versions 1 and 2 on the repository host, none left on the VM's host.
    for want in [1, 2] {
        let op = c
            .capture_image(&kit.admin, "mine", "lab", "the lab".into())
            .await
            .unwrap();
        let op = kit.end(&op.id).await;
        assert_eq!(op.state, OpState::Succeeded, "{:?}", op.error);
        let (img, bases) = c.image("lab", 0).await.unwrap();
        assert_eq!(
            (img.version, img.hosts.clone()),
            (want, vec!["h2".to_string()])
        );
        assert!(bases.is_empty());
        assert!(
            !kit.agent("h1").volumes().contains(&img.file),
            "journey copy deleted"
        );
    }
    let calls = kit.calls();
    assert!(
        calls
            .iter()
            .any(|c| c == "h1 send_volume image-lab-v1.qcow2 to h2:50051")
            || calls
                .iter()
                .any(|c| c.starts_with("h1 send_volume image-lab-v1.qcow2")),
        "{calls:?}"
    );
    let e = c.image("lab", 7).await.unwrap_err();
    assert!(e.to_string().contains("no version 7 (it has 1, 2)"), "{e}");

    // Loaded onto h3 as base lab-base: the base records its version, which cannot go.
    for (host, base, says) in [
        ("h3", "web", "already"),
        ("h9", "lab-base", "not found"),
        ("h3", "pool-x", "pool"),
    ] {
        let e = c
            .load_image(&kit.admin, "lab", 1, host, base)
            .await
            .unwrap_err();
        assert!(e.to_string().contains(says), "{host} {base}: {e}");
    }
    let e = c
        .load_image(&kit.alice, "lab", 1, "h3", "lab-base")
        .await
        .unwrap_err();
    assert!(matches!(e, CoordError::PermissionDenied(_)), "{e}");
    let op = c
        .load_image(&kit.admin, "lab", 1, "h3", "lab-base")
        .await
        .unwrap();
    let op = kit.end(&op.id).await;
    assert_eq!(op.state, OpState::Succeeded, "{:?}", op.error);
    let (_, bases) = c.image("lab", 1).await.unwrap();
    assert_eq!(bases, vec!["lab-base".to_string()]);
    let e = c.remove_image(&kit.admin, "lab", 1).await.unwrap_err();
    assert!(e.to_string().contains("used by base(s) lab-base"), "{e}");
    let e = c
        .set_repository_host(&kit.admin, "h2", false)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("holds image version(s) lab:1, lab:2"),
        "{e}"
    );

    // Version 2 goes; version 1 goes once its base does.
    let op = c.remove_image(&kit.admin, "lab", 2).await.unwrap();
    assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
    let op = c.remove_base(&kit.admin, "lab-base").await.unwrap();
    assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
    let op = c.remove_image(&kit.admin, "lab", 1).await.unwrap();
    assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
    assert!(c.images(None).await.unwrap().is_empty());
    assert!(
        kit.agent("h2").volumes().is_empty(),
        "{:?}",
        kit.agent("h2").volumes()
    );
    c.set_repository_host(&kit.admin, "h2", false)
        .await
        .unwrap();
}
