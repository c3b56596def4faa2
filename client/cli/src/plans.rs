//! `plan` commands: named sizes for clones and VMs (admins add and remove them).

use corral_client::{ClientError, CoordinatorClient};
use corral_proto::v1 as pb;

use crate::cli::{lines, Out};

#[derive(clap::Subcommand, Debug)]
pub enum PlanCmd {
    /// A named size (admin): `vm clone --plan`, `vm create --plan`.
    Add {
        name: String,
        /// Memory in MiB.
        #[arg(long)]
        memory: u64,
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        /// The system disk's size (suffixes K, M, G, T); clones need it to hold their base's.
        #[arg(long)]
        disk: Option<String>,
    },
    /// Every plan.
    Ls,
    /// Remove a plan (admin); VMs made with it keep their sizes.
    Rm { name: String },
}

fn plan_line(p: &pb::Plan) -> String {
    format!(
        "{:<16} memory={}MiB vcpus={} disk={}",
        p.name,
        p.memory_mib,
        p.vcpus,
        if p.disk_bytes == 0 {
            "the base's".to_string()
        } else {
            format!("{}MiB", p.disk_bytes >> 20)
        }
    )
}

pub(crate) async fn plan(
    c: &mut CoordinatorClient,
    out: &Out,
    cmd: PlanCmd,
) -> Result<(), ClientError> {
    match cmd {
        PlanCmd::Add {
            name,
            memory,
            vcpus,
            disk,
        } => {
            let disk_bytes = match disk {
                Some(d) => corral_client::parse_size(&d).map_err(ClientError::Config)?,
                None => 0,
            };
            let p = pb::Plan {
                name,
                memory_mib: memory,
                vcpus,
                disk_bytes,
            };
            out.show(&c.vms.create_plan(p).await?.into_inner(), plan_line);
        }
        PlanCmd::Ls => {
            let l = c
                .vms
                .list_plans(pb::ListPlansRequest {})
                .await?
                .into_inner();
            out.show(&l, |l| lines(&l.plans, plan_line));
        }
        PlanCmd::Rm { name } => {
            let p = c.vms.remove_plan(pb::PlanRef { name }).await?.into_inner();
            out.show(&p, |p| format!("removed {}", plan_line(p)));
        }
    }
    Ok(())
}
