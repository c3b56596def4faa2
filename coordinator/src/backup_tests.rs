//! Backups over the fake fleet: what travels where (destination, basis), who sees what, a new
//! VM from a backup and its removal when filling it fails (real files, deltas and guests are
//! tested end to end in `tests/tests/backups.rs` and the lab).

use corral_client::proto as pb;

use crate::error::CoordError;
use crate::fake::Kit;
use crate::orders::CloneOrder;
use crate::store::OpState;

fn disk(volume: &str, role: pb::VolumeRole, target: &str) -> pb::Disk {
    pb::Disk {
        volume: volume.into(),
        role: role as i32,
        target: target.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn backups_are_deltas_seen_by_their_owner_and_make_new_vms() {
    let kit = Kit::new(2).await;
    kit.base("web", None, &["h1"]).await;
    let order = CloneOrder {
        base: "web".into(),
        name: "mine".into(),
        ..Default::default()
    };
    let op = kit.coord.clone_vm(&kit.alice, order).await.unwrap();
    assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
    let host = kit
        .coord
        .vm_for(&kit.admin, "mine")
        .await
        .unwrap()
        .host
        .unwrap();
    kit.agent(&host).edit_domain("mine", |d| {
        d.disks = vec![
            disk("mine-vda.qcow2", pb::VolumeRole::System, "vda"),
            disk("mine-vdb.qcow2", pb::VolumeRole::Data, "vdb"),
        ];
        d.memory_mib = 384;
    });
    let c = &kit.coord;
    let e = c.backup_vm(&kit.alice, "mine", false).await.unwrap_err();
    assert!(e.to_string().contains("no repository host"), "{e}");
    c.set_repository_host(&kit.admin, "h2", true).await.unwrap();

    let op = c.backup_vm(&kit.alice, "mine", false).await.unwrap();
    assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
    let op = c.backup_vm(&kit.alice, "mine", true).await.unwrap();
    assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
    let all = c.backups(&kit.alice, Some("mine")).await.unwrap();
    assert_eq!(all.len(), 2);
    let (b1, b2) = (&all[0], &all[1]);
    assert_eq!((b1.number, b2.number), (1, 2));
    assert_eq!(b1.volumes.len(), 1);
    assert_eq!(b1.volumes[0].basis, "", "the first is a full copy");
    assert_eq!(b2.volumes.len(), 2, "with the system overlay");
    assert_eq!(
        b2.volumes[1].basis, b1.volumes[0].file,
        "a delta against the first"
    );
    assert_eq!(b2.volumes[0].basis, "", "nothing to start the overlay from");
    assert_eq!(b2.memory_mib, 384);
    let sends: Vec<String> = kit
        .calls()
        .into_iter()
        .filter(|c| c.contains("send_volume mine-vdb.qcow2"))
        .collect();
    assert_eq!(sends.len(), 2, "{sends:?}");
    assert!(
        sends[0].contains(&format!("as {}", b1.volumes[0].file)),
        "{sends:?}"
    );
    assert!(
        sends[1].contains(&format!("against {}", b1.volumes[0].file)),
        "{sends:?}"
    );

    // The owner and admins see them; a repository host holding them stays one.
    assert_eq!(c.backups(&kit.admin, None).await.unwrap().len(), 2);
    let e = c
        .set_repository_host(&kit.admin, "h2", false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("backup 1 of VM mine"), "{e}");
    for (vm, number, says) in [
        ("mine", 7, "no backup 7 (it has 1, 2)"),
        ("nope", 0, "VM nope not found"),
        ("a/b", 0, "invalid"),
    ] {
        let e = c.restore_backup(&kit.alice, vm, number).await.unwrap_err();
        assert!(e.to_string().contains(says), "{vm} {number}: {e}");
    }

    // A new VM from backup 2: a clone of web, its overlay and data the backup's.
    let op = c
        .create_from_backup(&kit.alice, "mine", 2, "again", None, None)
        .await
        .unwrap();
    let end = kit.end(&op.id).await;
    assert_eq!(end.state, OpState::Succeeded, "{end:?}");
    let again = c.vm_for(&kit.alice, "again").await.unwrap();
    assert_eq!(again.owner, "alice");
    let calls = kit.calls();
    assert!(
        calls.iter().any(|c| c.contains("attach_volume again")),
        "{calls:?}"
    );
    let e = c
        .create_from_backup(&kit.alice, "mine", 2, "again", None, None)
        .await
        .unwrap_err();
    assert!(matches!(e, CoordError::AlreadyExists(_)), "{e}");

    // Filling fails: the new VM goes again, record and domain.
    for h in ["h1", "h2"] {
        kit.agent(h).fail("attach_volume");
    }
    let op = c
        .create_from_backup(&kit.alice, "mine", 1, "broken", None, None)
        .await
        .unwrap();
    assert_eq!(kit.end(&op.id).await.state, OpState::Failed);
    for _ in 0..200 {
        if c.vm_for(&kit.admin, "broken").await.is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(c.vm_for(&kit.admin, "broken").await.is_err());
    assert!(!kit.agent("h1").has_domain("broken") && !kit.agent("h2").has_domain("broken"));

    // Removing one backup leaves the other whole.
    let op = c.remove_backup(&kit.alice, "mine", 1).await.unwrap();
    assert_eq!(kit.end(&op.id).await.state, OpState::Succeeded);
    let left = c.backups(&kit.alice, None).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].number, 2);
}
