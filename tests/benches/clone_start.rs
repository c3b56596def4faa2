//! Clone + start through the agent against the same steps done directly
//! (`qemu-img create` + `virsh define` + `virsh start`), on the real libvirtd, in one run.
//!
//! Both sides define the same domain XML (the direct side reuses the agent clone's
//! definition with a new name, MAC and disk) and start the same tiny guest. Runs alternate
//! so that both see the same machine. Prints every sample, the medians and their ratio.
//! Target: ratio <= 1.10. `CORRAL_BENCH_RUNS` sets the number of runs (default 9).

use std::time::{Duration, Instant};

use anyhow::Result;
use corral_agent::domain_xml::{DiskSource, DomainXml, MacAddress};
use corral_client::proto as pb;
use corral_tests::*;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    if !real_host_ready() {
        return Ok(());
    }
    let runs: usize = std::env::var("CORRAL_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    cleanup_domains("bench-");
    let dir = tempfile::tempdir()?;
    let agent = AgentProc::start(dir.path())?;
    let mut c = agent.client().await?;
    let base = prepared_base(&mut c, "bench-base", false).await?;
    let base_file = agent.storage().join(&base.volumes[0].base_volume);
    let direct_dir = dir.path().join("direct");
    std::fs::create_dir_all(&direct_dir)?;

    // The definition both sides use: the agent's clone, as libvirt stores it.
    c.bases
        .clone_base(clone_req("bench-base", "bench-template", false))
        .await?;
    let template = DomainXml::parse(&virsh(&[
        "dumpxml",
        "--inactive",
        "--security-info",
        "bench-template",
    ])?)?;
    c.domains
        .remove_domain(pb::RemoveDomainRequest {
            name: "bench-template".into(),
            remove_volumes: true,
        })
        .await?;

    let (mut corral, mut direct) = (Vec::new(), Vec::new());
    for i in 0..=runs {
        // Corral: one CloneBase RPC with start.
        let name = format!("bench-c{i}");
        let t = Instant::now();
        c.bases
            .clone_base(clone_req("bench-base", &name, true))
            .await?;
        let tc = t.elapsed();

        // Direct: the same steps by hand.
        let dname = format!("bench-d{i}");
        let disk = direct_dir.join(format!("{dname}-vda.qcow2"));
        let mut xml = template.clone();
        xml.name = dname.clone();
        xml.uuid = None;
        for nic in &mut xml.devices.interfaces {
            nic.mac = Some(MacAddress {
                address: corral_agent::domains::random_mac(),
            });
        }
        xml.devices.disks[0].source = Some(DiskSource {
            file: Some(disk.display().to_string()),
        });
        let xml_path = direct_dir.join(format!("{dname}.xml"));
        std::fs::write(&xml_path, xml.to_xml()?)?;
        let t = Instant::now();
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                &base_file.display().to_string(),
                &disk.display().to_string(),
            ],
        )?;
        run(
            "virsh",
            &[
                "-q",
                "-c",
                "qemu:///system",
                "define",
                &xml_path.display().to_string(),
            ],
        )?;
        run("virsh", &["-q", "-c", "qemu:///system", "start", &dname])?;
        let td = t.elapsed();

        if i == 0 {
            println!(
                "warm-up: corral {:.1} ms, direct {:.1} ms (not counted)",
                ms(tc),
                ms(td)
            );
        } else {
            println!("run {i}: corral {:.1} ms, direct {:.1} ms", ms(tc), ms(td));
            corral.push(tc);
            direct.push(td);
        }
        // Clean up outside the timed part.
        c.domains
            .remove_domain(pb::RemoveDomainRequest {
                name,
                remove_volumes: true,
            })
            .await?;
        let _ = virsh(&["destroy", &dname]);
        virsh(&["undefine", &dname])?;
        std::fs::remove_file(&disk)?;
    }
    c.domains
        .remove_domain(pb::RemoveDomainRequest {
            name: "bench-base".into(),
            remove_volumes: true,
        })
        .await?;
    let (mc, md) = (median(&mut corral), median(&mut direct));
    let ratio = mc.as_secs_f64() / md.as_secs_f64();
    println!("clone+start median over {runs} runs: corral {:.1} ms, direct (qemu-img + virsh define + virsh start) {:.1} ms", ms(mc), ms(md));
    println!(
        "ratio corral/direct = {ratio:.3} (target <= 1.10): {}",
        if ratio <= 1.10 { "MET" } else { "NOT MET" }
    );
    Ok(())
}
