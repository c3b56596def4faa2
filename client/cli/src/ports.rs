//! `port` commands, the same against one agent and through the coordinator: a [`Ports`]
//! implementation per client, one dispatch.

use corral_client::{AgentClient, ClientError, CoordinatorClient};
use corral_proto::v1 as pb;
use tonic::Status;

use crate::cli::{lines, port_line, removed_text, restrict_text, Out, PortCall, PortCmd};

/// What a port command answers.
#[derive(Debug)]
pub(crate) enum PortAnswer {
    Port(pb::ExposedPort),
    List(pb::ListPortsResponse),
    Removed(pb::RemovePortResponse),
    Restricted(pb::RestrictDisplayRequest),
}

/// Where port requests go: an agent's `PortService` or the coordinator's `VmAccessService`.
#[tonic::async_trait]
pub(crate) trait Ports: Send {
    async fn call(&mut self, call: PortCall) -> Result<PortAnswer, Status>;
}

/// Implements [`Ports`] for a client by its service field and that service's five methods.
macro_rules! ports_via {
    ($client:ty, $svc:ident: $expose:ident, $list:ident, $rm:ident, $rm_all:ident, $restrict:ident) => {
        #[tonic::async_trait]
        impl Ports for $client {
            async fn call(&mut self, call: PortCall) -> Result<PortAnswer, Status> {
                let s = &mut self.$svc;
                Ok(match call {
                    PortCall::Expose(r) => PortAnswer::Port(s.$expose(r).await?.into_inner()),
                    PortCall::List(r) => PortAnswer::List(s.$list(r).await?.into_inner()),
                    PortCall::Rm(r) => PortAnswer::Removed(s.$rm(r).await?.into_inner()),
                    PortCall::RmAll(r) => PortAnswer::Removed(s.$rm_all(r).await?.into_inner()),
                    PortCall::RestrictDisplay(r) => {
                        s.$restrict(r.clone()).await?;
                        PortAnswer::Restricted(r)
                    }
                })
            }
        }
    };
}

ports_via!(AgentClient, ports: expose_port, list_ports, remove_port, remove_all_ports, restrict_display);
ports_via!(
    CoordinatorClient,
    access: expose_vm_port, list_vm_ports, remove_vm_port, remove_all_vm_ports, restrict_vm_display
);

/// Runs a `port` command against `c` and shows its answer.
pub(crate) async fn port(c: &mut dyn Ports, out: &Out, cmd: PortCmd) -> Result<(), ClientError> {
    match c.call(cmd.into_call()).await? {
        PortAnswer::Port(p) => out.show(&p, port_line),
        PortAnswer::List(l) => out.show(&l, |l| lines(&l.ports, port_line)),
        PortAnswer::Removed(r) => out.show(&r, removed_text),
        PortAnswer::Restricted(r) => out.show(&r, restrict_text),
    }
    Ok(())
}
