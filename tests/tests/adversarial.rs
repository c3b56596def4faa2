//! The adversarial suite against the agent: every RPC with bad names, bad numbers, unknown
//! ids and references to what another domain or a base owns; each case asserts the code,
//! the message, and that nothing changed. On libvirt's test driver, and on the real
//! libvirtd with real qemu-img files and iptables.

#![allow(clippy::unwrap_used)]

use corral_client::proto as pb;
use corral_tests::adversarial::{host_snapshot, make_agent_world, run_cases};
use corral_tests::agent_cases::agent_cases;
use corral_tests::*;

/// The real-libvirtd tests share libvirtd and iptables: one at a time.
static REAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn suite(agent: &AgentProc, prefix: &str, real: bool) {
    let mut c = agent.client().await.unwrap();
    let storage = agent.storage();
    let world = make_agent_world(&mut c, &agent.addr, prefix, &storage, test_spec)
        .await
        .unwrap();
    let cases = agent_cases(&world);
    let sc = c.clone();
    let failures = run_cases(&c, cases, || {
        let (mut sc, storage) = (sc.clone(), storage.clone());
        async move { format!("{:?}", host_snapshot(&mut sc, &storage, real).await) }
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
async fn every_agent_rpc_refuses_bad_input_on_the_test_driver() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start_test_driver(dir.path()).unwrap();
    suite(&agent, "adv-", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_agent_rpc_refuses_bad_input_on_the_real_libvirtd() {
    let _one = REAL.lock().await;
    if !real_host_ready() {
        return;
    }
    cleanup_domains("advr-");
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path()).unwrap();
    suite(&agent, "advr-", true).await;
    cleanup_domains("advr-");
}

/// Issue 8, item 2: domains defined behind the agent's back (with virsh) on another
/// domain's disk and on a base file: removing them with their volumes keeps both files.
#[tokio::test(flavor = "multi_thread")]
async fn removing_a_domain_never_deletes_what_another_domain_or_a_base_owns() {
    let _one = REAL.lock().await;
    if !real_host_ready() {
        return;
    }
    cleanup_domains("advo-");
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path()).unwrap();
    let mut c = agent.client().await.unwrap();
    let storage = agent.storage();
    let w = corral_tests::adversarial::make_agent_world(
        &mut c,
        &agent.addr,
        "advo-",
        &storage,
        test_spec,
    )
    .await
    .unwrap();
    for (name, file) in [
        ("advo-onother", &w.other_disk),
        ("advo-onbase", &w.base_file),
    ] {
        let xml = format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'>\
             <driver name='qemu' type='qcow2'/><source file='{}'/><target dev='vda' bus='virtio'/>\
             </disk></devices></domain>",
            storage.join(file).display()
        );
        let path = dir.path().join(format!("{name}.xml"));
        std::fs::write(&path, xml).unwrap();
        virsh(&["define", path.to_str().unwrap()]).unwrap();
        let before = std::fs::read(storage.join(file)).unwrap();
        let removed = c
            .domains
            .remove_domain(pb::RemoveDomainRequest {
                name: name.into(),
                remove_volumes: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            !removed.removed_volumes.contains(file),
            "{name} removed {file}: {removed:?}"
        );
        assert_eq!(
            std::fs::read(storage.join(file)).unwrap(),
            before,
            "{file} changed"
        );
    }
    // The owners still work: the clone of the base still has its base file.
    let d = c
        .domains
        .get_domain(pb::DomainRef {
            name: w.clone.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.base, w.base);
    cleanup_domains("advo-");
}
