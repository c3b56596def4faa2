use std::sync::Arc;

use corral_client::proto as pb;
use pb::vm_service_server::VmService;

use crate::convert::{
    access_to_pb, base_summary_to_pb, op_to_pb, placed_to_pb, plan_of, plan_to_pb, pool_to_pb,
    rule_of, timeouts_of, timeouts_to_pb, vm_to_pb,
};
use crate::lifecycle::Action;
use crate::store::PoolSize;
use crate::vms::Coordinator;

#[derive(Debug, Clone)]
pub struct VmApi(pub Arc<Coordinator>);

rpcs! { VmApi: VmService, |c, who, r|;
    create_base(pb::CreateBaseRequest) -> pb::Operation = "CreateBase"
        => op_to_pb(&c.create_base(&who, r.try_into()?).await?);
    create_vm(pb::CreateVmRequest) -> pb::Operation = "CreateVm" => op_to_pb(&c.create_vm(&who, r.try_into()?).await?);
    prepare_base(pb::VmRef) -> pb::Operation = "PrepareBase" => op_to_pb(&c.prepare_base(&who, &r.name).await?);
    remove_base(pb::BaseRef) -> pb::Operation = "RemoveBase" => op_to_pb(&c.remove_base(&who, &r.name).await?);
    unprepare_base(pb::BaseRef) -> pb::Operation = "UnprepareBase" => op_to_pb(&c.unprepare_base(&who, &r.name).await?);
    sync_base(pb::SyncBaseRequest) -> pb::Operation = "SyncBase" => op_to_pb(&c.sync_base(&who, r.into()).await?);
    remove_base_from_host(pb::SyncBaseRequest) -> pb::Operation = "RemoveBaseFromHost"
        => op_to_pb(&c.remove_base_from_host(&who, r.into()).await?);
    move_vm(pb::MoveVmRequest) -> pb::Operation = "MoveVm" => op_to_pb(&c.move_vm(&who, r.into()).await?);
    list_bases(pb::ListBaseSummariesRequest) -> pb::ListBaseSummariesResponse = "ListBases"
        => pb::ListBaseSummariesResponse {
            bases: c.base_summaries(&who).await?.into_iter().map(base_summary_to_pb).collect(),
        };
    clone_vm(pb::CloneVmRequest) -> pb::Operation = "CloneVm" => op_to_pb(&c.clone_vm(&who, r.try_into()?).await?);
    create_plan(pb::Plan) -> pb::Plan = "CreatePlan" => plan_to_pb(c.create_plan(&who, plan_of(r)).await?);
    list_plans(pb::ListPlansRequest) -> pb::ListPlansResponse = "ListPlans"
        => pb::ListPlansResponse { plans: c.plans().await?.into_iter().map(plan_to_pb).collect() };
    remove_plan(pb::PlanRef) -> pb::Plan = "RemovePlan" => plan_to_pb(c.remove_plan(&who, &r.name).await?);
    ensure_vm(pb::CloneVmRequest) -> pb::EnsureVmResponse = "EnsureVm" => match c.ensure_vm(&who, r.try_into()?).await? {
        crate::ensure::Ensured::Exists { vm, making } => pb::EnsureVmResponse {
            vm: Some(vm_to_pb(c.vm_view(&vm))),
            operation: making.as_ref().map(op_to_pb),
            created: false,
        },
        crate::ensure::Ensured::Making { op, created } => pb::EnsureVmResponse {
            vm: None,
            operation: Some(op_to_pb(&op)),
            created,
        },
    };
    explain_placement(pb::CloneVmRequest) -> pb::PlacementExplanation = "ExplainPlacement"
        => placed_to_pb(c.explain_placement(&who, &r.try_into()?).await?);
    start_vm(pb::VmRef) -> pb::Operation = "StartVm" => op_to_pb(&c.vm_action(&who, &r.name, Action::Start).await?);
    shutdown_vm(pb::VmRef) -> pb::Operation = "ShutdownVm"
        => op_to_pb(&c.vm_action(&who, &r.name, Action::Shutdown).await?);
    power_off_vm(pb::VmRef) -> pb::Operation = "PowerOffVm"
        => op_to_pb(&c.vm_action(&who, &r.name, Action::PowerOff).await?);
    hibernate_vm(pb::VmRef) -> pb::Operation = "HibernateVm"
        => op_to_pb(&c.vm_action(&who, &r.name, Action::Hibernate).await?);
    restore_vm(pb::VmRef) -> pb::Operation = "RestoreVm" => op_to_pb(&c.vm_action(&who, &r.name, Action::Restore).await?);
    suspend_vm(pb::VmRef) -> pb::Operation = "SuspendVm" => op_to_pb(&c.vm_action(&who, &r.name, Action::Suspend).await?);
    resume_vm(pb::VmRef) -> pb::Operation = "ResumeVm" => op_to_pb(&c.vm_action(&who, &r.name, Action::Resume).await?);
    reset_vm(pb::VmRef) -> pb::Operation = "ResetVm" => op_to_pb(&c.vm_action(&who, &r.name, Action::Reset).await?);
    spinoff_vm(pb::VmRef) -> pb::Operation = "SpinoffVm" => op_to_pb(&c.vm_action(&who, &r.name, Action::Spinoff).await?);
    reboot_vm(pb::VmRef) -> pb::Operation = "RebootVm" => op_to_pb(&c.vm_action(&who, &r.name, Action::Reboot).await?);
    set_vm_autostart(pb::SetVmAutostartRequest) -> pb::Operation = "SetVmAutostart"
        => op_to_pb(&c.vm_action(&who, &r.name, Action::Autostart(r.autostart)).await?);
    set_vm_resources(pb::SetVmResourcesRequest) -> pb::Operation = "SetVmResources"
        => op_to_pb(&c.vm_action(&who, &r.name, Action::Resources { memory_mib: r.memory_mib, vcpus: r.vcpus }).await?);
    rebase_vm(pb::RebaseVmRequest) -> pb::Operation = "RebaseVm"
        => op_to_pb(&c.vm_action(&who, &r.name, Action::Rebase(r.base.clone())).await?);
    add_vm_disk(pb::AddVmDiskRequest) -> pb::Operation = "AddVmDisk"
        => op_to_pb(&c.vm_action(&who, &r.name, crate::convert::add_disk_of(&r)?).await?);
    remove_vm_disk(pb::RemoveVmDiskRequest) -> pb::Operation = "RemoveVmDisk"
        => op_to_pb(&c.vm_action(&who, &r.name, Action::RemoveDisk(r.volume.clone())).await?);
    detach_vm_disk(pb::RemoveVmDiskRequest) -> pb::Operation = "DetachVmDisk"
        => op_to_pb(&c.vm_action(&who, &r.name, Action::DetachDisk(r.volume.clone())).await?);
    attach_vm_disk(pb::RemoveVmDiskRequest) -> pb::Operation = "AttachVmDisk"
        => op_to_pb(&c.vm_action(&who, &r.name, Action::AttachDisk(r.volume.clone())).await?);
    resize_vm_disk(pb::ResizeVmDiskRequest) -> pb::Operation = "ResizeVmDisk"
        => op_to_pb(&c.vm_action(&who, &r.name, Action::ResizeDisk { volume: r.volume.clone(), size_bytes: r.size_bytes }).await?);
    list_vm_disks(pb::VmRef) -> pb::ListVmDisksResponse = "ListVmDisks" => c.vm_disks(&who, &r.name).await?;
    snapshot_vm_disk(pb::SnapshotVmDiskRequest) -> pb::Operation = "SnapshotVmDisk"
        => op_to_pb(&c.vm_action(&who, &r.name, crate::convert::disk_snapshot_of(&r)?).await?);
    copy_vm_disk(pb::CopyVmDiskRequest) -> pb::Operation = "CopyVmDisk"
        => op_to_pb(&c.copy_vm_disk(&who, &r.name, &r.volume, &r.to).await?);
    remove_vm(pb::VmRef) -> pb::Operation = "RemoveVm" => op_to_pb(&c.vm_action(&who, &r.name, Action::Remove).await?);
    get_vm(pb::VmRef) -> pb::Vm = "GetVm" => {
        let vm = c.vm_for(&who, &r.name).await?;
        let details = c.details_of(&vm).await;
        let left = c.reclaim_left(&vm, details.as_ref()).await;
        pb::Vm {
            details,
            run_left_seconds: left.run_ms.map(|m| m / 1000),
            idle_left_seconds: left.idle_ms.map(|m| m / 1000),
            ..vm_to_pb(c.vm_view(&vm))
        }
    };
    get_base_access(pb::BaseAccessRequest) -> pb::BaseAccess = "GetBaseAccess"
        => access_to_pb(c.base_access(&who, &r.base, Some(r.user.as_str()).filter(|u| !u.is_empty())).await?);
    set_base_public(pb::SetBasePublicRequest) -> pb::BaseAccess = "SetBasePublic"
        => access_to_pb(c.set_base_public(&who, &r.base, r.public).await?);
    add_access_rule(pb::AddAccessRuleRequest) -> pb::BaseAccess = "AddAccessRule"
        => access_to_pb(c.add_access_rule(&who, &r.base, rule_of(r.rule)?, r.position).await?);
    set_base_pool(pb::SetBasePoolRequest) -> pb::BasePool = "SetBasePool"
        => pool_to_pb(c.set_base_pool(&who, &r.base, PoolSize { clones: r.clones, start: r.start }).await?);
    get_base_pool(pb::BaseRef) -> pb::BasePool = "GetBasePool" => pool_to_pb(c.pool_status(&who, &r.name).await?);
    set_base_timeouts(pb::BaseTimeouts) -> pb::BaseTimeouts = "SetBaseTimeouts" => {
        let t = c.set_base_timeouts(&who, &r.base, timeouts_of(&r)).await?;
        timeouts_to_pb(&r.base, t)
    };
    set_base_display(pb::BaseDisplay) -> pb::BaseDisplay = "SetBaseDisplay" => {
        let d = crate::display::DisplayPolicy { restrict_to_client: r.restrict_to_client };
        let d = c.set_base_display(&who, &r.base, d).await?;
        pb::BaseDisplay { base: r.base.clone(), restrict_to_client: d.restrict_to_client }
    };
    get_base_display(pb::BaseRef) -> pb::BaseDisplay = "GetBaseDisplay" => {
        let d = c.base_display(&who, &r.name).await?;
        pb::BaseDisplay { base: r.name.clone(), restrict_to_client: d.restrict_to_client }
    };
    get_base_timeouts(pb::BaseRef) -> pb::BaseTimeouts = "GetBaseTimeouts"
        => timeouts_to_pb(&r.name, c.base_timeouts(&who, &r.name).await?);
    set_vm_run_timeout(pb::SetVmRunTimeoutRequest) -> pb::Operation = "SetVmRunTimeout"
        => op_to_pb(&c.vm_action(&who, &r.name, Action::RunTimeout(r.run_seconds)).await?);
    remove_access_rule(pb::RemoveAccessRuleRequest) -> pb::BaseAccess = "RemoveAccessRule"
        => access_to_pb(c.remove_access_rule(&who, &r.base, r.position).await?);
    list_vms(pb::ListVmsRequest) -> pb::ListVmsResponse = "ListVms"
        => pb::ListVmsResponse { vms: c.vms_of(&who).await?.iter().map(|v| vm_to_pb(c.vm_view(v))).collect() };
}
