use std::sync::Arc;
use std::time::Duration;

use corral_proto::v1 as pb;
use pb::domain_service_server::DomainService;

use crate::agent::Agent;
use crate::error::AgentError;

#[derive(Debug, Clone)]
pub struct DomainApi(pub Arc<Agent>);

/// A shutdown's wait for the guest: the request's, or 60 s when it gives none.
fn shutdown_wait(seconds: u32) -> Duration {
    Duration::from_secs(if seconds == 0 { 60 } else { seconds.into() })
}

/// The spec of a definition, which is required.
fn spec_of(r: &pb::DefineDomainRequest) -> crate::error::Result<&pb::DomainSpec> {
    r.spec
        .as_ref()
        .ok_or_else(|| AgentError::invalid("a domain spec is required"))
}

rpcs! { DomainApi: DomainService, |a, r|;
    define_domain(pb::DefineDomainRequest) -> pb::Domain = "DefineDomain" by spec_of(&r).map_or("", |s| &s.name)
        => a.define(spec_of(&r)?);
    start_domain(pb::DomainRef) -> pb::Domain = "StartDomain" by r.name => a.start(&r.name);
    shutdown_domain(pb::ShutdownDomainRequest) -> pb::Domain = "ShutdownDomain" by r.name
        => a.shutdown(&r.name, shutdown_wait(r.timeout_seconds));
    power_off_domain(pb::DomainRef) -> pb::Domain = "PowerOffDomain" by r.name => a.power_off(&r.name);
    reset_domain(pb::DomainRef) -> pb::Domain = "ResetDomain" by r.name => a.reset(&r.name);
    suspend_domain(pb::DomainRef) -> pb::Domain = "SuspendDomain" by r.name => a.suspend(&r.name);
    resume_domain(pb::DomainRef) -> pb::Domain = "ResumeDomain" by r.name => a.resume(&r.name);
    hibernate_domain(pb::DomainRef) -> pb::Domain = "HibernateDomain" by r.name => a.hibernate(&r.name);
    get_domain(pb::DomainRef) -> pb::Domain = "GetDomain" by r.name => a.view(&r.name);
    list_domains(pb::ListDomainsRequest) -> pb::ListDomainsResponse = "ListDomains"
        => Ok(pb::ListDomainsResponse { domains: a.list(&r.labels)? });
    get_screenshot(pb::DomainRef) -> pb::Screenshot = "GetScreenshot" by r.name => a.screenshot(&r.name);
    get_display(pb::DomainRef) -> pb::DisplayInfo = "GetDisplay" by r.name => a.display(&r.name);
    get_domain_xml(pb::DomainRef) -> pb::DomainXml = "GetDomainXml" by r.name
        => Ok(pb::DomainXml { xml: a.domain_xml(&r.name)? });
    remove_domain(pb::RemoveDomainRequest) -> pb::RemoveDomainResponse = "RemoveDomain" by r.name
        => Ok(pb::RemoveDomainResponse { removed_volumes: a.remove(&r.name, r.remove_volumes)? });
    assign_domain(pb::AssignDomainRequest) -> pb::Domain = "AssignDomain" by r.name
        => a.assign(&r.name, &r.owner);
    reboot_domain(pb::DomainRef) -> pb::Domain = "RebootDomain" by r.name => a.reboot(&r.name);
    set_autostart(pb::SetAutostartRequest) -> pb::Domain = "SetAutostart" by r.name
        => a.set_autostart(&r.name, r.autostart);
    set_resources(pb::SetResourcesRequest) -> pb::Domain = "SetResources" by r.name
        => a.set_resources(&r.name, r.memory_mib, r.vcpus);
}
