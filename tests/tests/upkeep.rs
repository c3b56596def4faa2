//! Base upkeep on the real libvirtd with the tiny guest, through the CLI: a student's clone
//! moved onto another base (and booted from it), `base rm` turning a base back into an
//! editable VM, a re-prepare refused while nothing changed and accepted after a change, and
//! `base delete`.

#![allow(clippy::unwrap_used)]

use corral_client::proto as pb;
use corral_tests::*;

async fn tiny_base(c: &mut corral_client::CoordinatorClient, name: &str) {
    let op = c
        .vms
        .create_base(pb::CreateBaseRequest {
            spec: Some(tiny_spec(name, false)),
            host: "real".into(),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let done = finish(c, op).await.unwrap();
    assert_eq!(done.state, pb::OperationState::Succeeded as i32, "{done:?}");
    publish(c, name).await.unwrap();
}

#[tokio::test]
async fn rebase_base_rm_and_re_prepare() {
    if !real_host_ready() {
        return;
    }
    cleanup_domains("e2e-u-");
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(&dir.path().join("agent")).unwrap();
    let coord = CoordProc::start(&dir.path().join("coord"), 300, 3000).unwrap();
    let mut admin = coord.client(&coord.admin_token).await.unwrap();
    let admin_cli = Cli {
        addr: &coord.addr,
        token: &coord.admin_token,
        ca: None,
    };
    add_host(&mut admin, "real", &agent.addr).await.unwrap();
    wait_up(&admin_cli, 1);
    tiny_base(&mut admin, "e2e-u-a").await;
    tiny_base(&mut admin, "e2e-u-b").await;
    let token = user_token(&mut admin, "student").await.unwrap();
    let cli = Cli {
        addr: &coord.addr,
        token: &token,
        ca: None,
    };
    let mut ac = agent.client().await.unwrap();
    let b_file = ac
        .bases
        .get_base(pb::DomainRef {
            name: "e2e-u-b".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .volumes[0]
        .base_volume
        .clone();

    // A clone of a moved onto b: its system disk now backs onto b's file, and it boots.
    cli.ok(&["vm", "clone", "e2e-u-a", "e2e-u-c"]);
    cli.ok(&["vm", "rebase", "e2e-u-c", "e2e-u-b"]);
    let c = cli.json(&["vm", "show", "e2e-u-c"]);
    assert_eq!(c["base"], "e2e-u-b", "{c}");
    let vda = c["details"]["disks"][0]["volume"]
        .as_str()
        .unwrap()
        .to_string();
    let info = ac
        .volumes
        .get_volume_info(pb::VolumeRef { name: vda })
        .await
        .unwrap()
        .into_inner();
    assert!(info.backing_chain[0].path.ends_with(&b_file), "{info:?}");
    let out = cli.run(&["vm", "rebase", "e2e-u-c", "e2e-u-b"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already a clone"));
    cli.ok(&["vm", "start", "e2e-u-c"]);
    assert_eq!(virsh(&["domstate", "e2e-u-c"]).unwrap().trim(), "running");
    cli.ok(&["vm", "rm", "e2e-u-c"]);

    // base rm: a base without clones becomes an editable VM; its base file goes.
    let a_file = agent.storage().join(
        ac.bases
            .get_base(pb::DomainRef {
                name: "e2e-u-a".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .volumes[0]
            .base_volume
            .clone(),
    );
    assert!(a_file.is_file());
    admin_cli.ok(&["base", "rm", "e2e-u-a"]);
    assert!(!a_file.exists());
    let vm = admin_cli.json(&["vm", "show", "e2e-u-a"]);
    assert_eq!(vm["details"]["locked"], false, "{vm}");
    let bases = admin_cli.json(&["base", "ls"]);
    assert!(!bases.to_string().contains("\"e2e-u-a\""), "{bases}");
    // Nothing changed: preparing it again would make the same base.
    let out = admin_cli.run(&["base", "prepare", "e2e-u-a"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing changed"),
        "{out:?}"
    );
    // A change (a new disk), and it prepares again.
    admin_cli.ok(&["vm", "disk-add", "e2e-u-a", "--size", "16M"]);
    admin_cli.ok(&["base", "prepare", "e2e-u-a"]);
    assert!(admin_cli
        .json(&["base", "ls"])
        .to_string()
        .contains("\"e2e-u-a\""));

    // base delete removes it everywhere.
    admin_cli.ok(&["base", "delete", "e2e-u-a"]);
    admin_cli.ok(&["base", "delete", "e2e-u-b"]);
    assert!(virsh(&["domstate", "e2e-u-a"]).is_err());
}
