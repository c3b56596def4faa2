//! VMs made from a spec, and VMs turned into bases: Ravada's path from an installed VM to the
//! base its clones come from (create, customise, shut down, prepare).

use std::sync::Arc;
use std::time::Duration;

use corral_client::proto as pb;

use crate::auth::Caller;
use crate::error::{CoordError, Result};
use crate::operations::{OpError, Submit};
use crate::orders::{BaseOrder, CreateOrder};
use crate::states::{Desired, Observed};
use crate::store::{OpRecord, VmRecord};
use crate::vms::{check_name, work, Coordinator};

/// vCPUs and bytes of memory a spec asks for, with the agent's defaults.
pub(crate) fn size_of(spec: &pb::DomainSpec) -> (u32, u64) {
    let memory_mib = if spec.memory_mib == 0 {
        512
    } else {
        spec.memory_mib
    };
    (spec.vcpus.max(1), memory_mib << 20)
}

impl Coordinator {
    /// Defines a VM from a spec (admin), placed unless a host is given.
    pub async fn create_vm(
        self: &Arc<Self>,
        caller: &Caller,
        mut req: CreateOrder,
    ) -> Result<OpRecord> {
        caller.require_admin()?;
        self.apply_create_plan(&mut req).await?;
        let mut spec = req.spec;
        corral_proto::rules::domain_spec(&spec)?;
        crate::names::not_reserved(&spec.name)?;
        if let Some(h) = &req.host {
            check_name("host", h)?;
            self.hosts.door(h)?;
        }
        let owner = match &req.owner {
            None => caller.name().to_string(),
            Some(o) => {
                check_name("user", o)?;
                self.user_exists(o).await?;
                o.clone()
            }
        };
        spec.owner.clone_from(&owner);
        let key = req.key;
        if key.is_none() {
            self.name_free(&spec.name).await?;
        }
        let size = size_of(&spec);
        let host = match req.host {
            None => self
                .place_sized(size, &owner)
                .await?
                .host_or_refusal(&spec.name)?,
            Some(h) => h,
        };
        let submit = Submit {
            kind: "create".into(),
            vm: Some(spec.name.clone()),
            host: Some(host.clone()),
            user: Some(owner.clone()),
            idempotency_key: key,
            request: serde_json::json!({ "vm": spec.name, "host": host, "start": req.start }),
        };
        let reserved = self.reserve(&host, size);
        let me = Arc::clone(self);
        let start = req.start;
        let w = work(move |ctx| async move {
            let r = me.do_create(&ctx, &host, spec, start, &owner).await;
            drop(reserved);
            r.map_err(OpError::from)
        });
        Ok(self.ops.submit(submit, w).await?)
    }

    async fn do_create(
        &self,
        ctx: &crate::operations::OpCtx,
        host: &str,
        spec: pb::DomainSpec,
        start: bool,
        owner: &str,
    ) -> Result<serde_json::Value> {
        let door = self.hosts.door(host)?;
        let (vcpus, memory) = size_of(&spec);
        // Recorded before it is made: a crash leaves a trace that recovery cleans.
        let mut vm = VmRecord {
            name: spec.name.clone(),
            owner: owner.into(),
            base: None,
            host: Some(host.into()),
            desired_state: Desired::ShutOff,
            observed_state: Observed::Creating,
            spec: serde_json::json!({ "labels": spec.labels, "vcpus": vcpus, "memory": memory }),
        };
        let v = vm.clone();
        self.blocking(move |s| s.insert_vm(&v)).await?;
        ctx.progress("defining", Some(10.0), None, &format!("on host {host}"))
            .await?;
        let name = spec.name.clone();
        let mut domain = match door.define(spec).await {
            Ok(d) => d,
            Err(e) => {
                // The agent leaves nothing behind when a definition fails.
                let n = name.clone();
                let _ = self.blocking(move |st| st.remove_vm(&n)).await;
                return Err(e);
            }
        };
        if start {
            ctx.progress("starting", Some(60.0), None, "").await?;
            domain = door.power(&name, crate::door::Power::Start).await?;
            vm.desired_state = Desired::Running;
        }
        vm.observed_state = Observed::from_pb(domain.state);
        let v = vm.clone();
        self.blocking(move |s| s.put_vm(&v)).await?;
        Ok(serde_json::json!({ "vm": name, "host": host, "state": vm.observed_state.as_str() }))
    }

    /// Turns a shut-off VM into a base (admin). Its record moves from the VMs to the bases;
    /// a clone prepared as a base keeps its own base as parent.
    pub async fn prepare_base(self: &Arc<Self>, caller: &Caller, name: &str) -> Result<OpRecord> {
        check_name("VM", name)?;
        caller.require_admin()?;
        let vm = self.vm_for(caller, name).await?;
        crate::volatile::refuse_keeping(&vm, "made a base")?;
        self.refuse_unchanged(&vm).await?;
        let host = vm
            .host
            .clone()
            .ok_or_else(|| CoordError::FailedPrecondition(format!("VM {name} has no host")))?;
        let n = name.to_string();
        if self.blocking(move |s| Ok(s.base_spec(&n).is_ok())).await? {
            return Err(CoordError::AlreadyExists(format!(
                "base {name} already exists"
            )));
        }
        let submit = Submit {
            kind: "prepare-base".into(),
            vm: Some(name.into()),
            host: Some(host.clone()),
            user: Some(caller.name().into()),
            idempotency_key: None,
            request: serde_json::json!({ "vm": name }),
        };
        let me = Arc::clone(self);
        let w = work(move |ctx| async move {
            let run = async {
                let door = me.hosts.door(&host)?;
                ctx.progress("preparing", Some(10.0), None, "read-only base files")
                    .await?;
                let base = door.prepare_base(&vm.name).await?;
                let d = door.get_domain(&vm.name).await?;
                let mut size =
                    serde_json::json!({ "vcpus": d.vcpus, "memory": d.memory_mib << 20 });
                size["system_disk"] = system_disk(&*door, &base).await.into();
                let (v, h) = (vm.clone(), host.clone());
                me.blocking(move |s| {
                    s.put_base(&v.name, v.base.as_deref(), &size)?;
                    s.set_base_host(&v.name, &h, true)?;
                    s.remove_vm(&v.name)
                })
                .await?;
                Ok::<_, CoordError>(serde_json::json!({ "base": vm.name, "host": host }))
            };
            run.await.map_err(OpError::from)
        });
        Ok(self.ops.submit(submit, w).await?)
    }

    /// Defines a VM from a spec on a host and prepares it as a base (admin).
    pub async fn create_base(
        self: &Arc<Self>,
        caller: &Caller,
        req: BaseOrder,
    ) -> Result<OpRecord> {
        caller.require_admin()?;
        let spec = req.spec;
        corral_proto::rules::domain_spec(&spec)?;
        check_name("host", &req.host)?;
        // A base may be created on several hosts (the same template on each); a VM's name
        // is never taken.
        let n = spec.name.clone();
        if self.blocking(move |s| s.name_taken(&n)).await? == Some("VM") {
            return Err(crate::names::taken("VM", &spec.name));
        }
        // A host just added answers within a heartbeat or two.
        self.hosts
            .wait_up(&req.host, Duration::from_secs(10))
            .await?;
        let submit = Submit {
            kind: "create-base".into(),
            vm: Some(spec.name.clone()),
            host: Some(req.host.clone()),
            user: Some(caller.name().into()),
            idempotency_key: req.key,
            request: serde_json::json!({ "base": spec.name, "host": req.host }),
        };
        let me = Arc::clone(self);
        let host = req.host.clone();
        let w = work(move |ctx| async move {
            let run = async {
                let door = me.hosts.door(&host)?;
                let name = spec.name.clone();
                let (vcpus, memory) = crate::create::size_of(&spec);
                let size = serde_json::json!({ "vcpus": vcpus, "memory": memory });
                ctx.progress("defining", Some(10.0), None, &format!("on host {host}"))
                    .await?;
                door.define(spec).await?;
                ctx.progress("preparing", Some(40.0), None, "read-only base files")
                    .await?;
                let base = door.prepare_base(&name).await?;
                let mut size = size;
                size["system_disk"] = system_disk(&*door, &base).await.into();
                let (n, h) = (name.clone(), host.clone());
                me.blocking(move |s| {
                    s.put_base(&n, None, &size)?;
                    s.set_base_host(&n, &h, true)
                })
                .await?;
                Ok::<_, CoordError>(serde_json::json!({ "base": name, "host": host }))
            };
            run.await.map_err(OpError::from)
        });
        Ok(self.ops.submit(submit, w).await?)
    }

    /// The hosts holding base `name` and its clones' names (NotFound: no such base): two
    /// indexed reads, not every VM.
    pub(crate) async fn base_and_clones(&self, name: &str) -> Result<(Vec<String>, Vec<String>)> {
        let n = name.to_string();
        let found = self
            .blocking(move |s| match s.base_holders(&n) {
                Ok(hosts) => Ok(Some((hosts, s.clones_of(&n)?))),
                Err(crate::store::StoreError::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            })
            .await?;
        found.ok_or_else(|| CoordError::NotFound(format!("base {name} not found")))
    }

    pub async fn remove_base(self: &Arc<Self>, caller: &Caller, name: &str) -> Result<OpRecord> {
        caller.require_admin()?;
        check_name("base", name)?;
        let n = name.to_string();
        let (hosts, clones) = self.base_and_clones(name).await?;
        if !clones.is_empty() {
            return Err(CoordError::FailedPrecondition(format!(
                "base {name} has {} clone(s) ({}): remove them first",
                clones.len(),
                clones.join(", ")
            )));
        }
        let submit = Submit {
            kind: "remove-base".into(),
            vm: Some(name.into()),
            user: Some(caller.name().into()),
            request: serde_json::json!({ "base": name }),
            ..Default::default()
        };
        let me = Arc::clone(self);
        let w = work(move |ctx| async move {
            let run = async {
                for h in &hosts {
                    ctx.progress("removing", None, None, &format!("on host {h}"))
                        .await?;
                    me.hosts.door(h)?.remove_domain(&n).await?;
                }
                let n2 = n.clone();
                me.blocking(move |s| s.remove_base(&n2)).await?;
                Ok::<_, CoordError>(serde_json::json!({ "base": n }))
            };
            run.await.map_err(OpError::from)
        });
        Ok(self.ops.submit(submit, w).await?)
    }
}

/// A prepared base's system disk size (bytes), for plans; 0 when the agent does not say.
pub(crate) async fn system_disk(door: &dyn crate::door::AgentDoor, base: &pb::Base) -> u64 {
    let Some(v) = base
        .volumes
        .iter()
        .find(|v| v.role == pb::VolumeRole::System as i32)
    else {
        return 0;
    };
    door.volume_info(&v.base_volume)
        .await
        .map_or(0, |i| i.virtual_size)
}
