//! `port` commands, the same against one agent and through the coordinator: a [`Ports`]
//! implementation per client, one dispatch.

use corral_client::{AgentClient, ClientError, CoordinatorClient};
use corral_proto::v1 as pb;
use tonic::Status;

use crate::cli::{lines, port_line, removed_text, restrict_text, Out, PortCall, PortCmd};

/// Where port requests go: an agent's `PortService` or the coordinator's `VmAccessService`.
#[tonic::async_trait]
pub trait Ports: Send {
    async fn expose(&mut self, r: pb::ExposePortRequest) -> Result<pb::ExposedPort, Status>;
    async fn list(&mut self, r: pb::ListPortsRequest) -> Result<pb::ListPortsResponse, Status>;
    async fn rm(&mut self, r: pb::RemovePortRequest) -> Result<pb::RemovePortResponse, Status>;
    async fn rm_all(
        &mut self,
        r: pb::RemoveAllPortsRequest,
    ) -> Result<pb::RemovePortResponse, Status>;
    async fn restrict(&mut self, r: pb::RestrictDisplayRequest) -> Result<(), Status>;
}

#[tonic::async_trait]
impl Ports for AgentClient {
    async fn expose(&mut self, r: pb::ExposePortRequest) -> Result<pb::ExposedPort, Status> {
        Ok(self.ports.expose_port(r).await?.into_inner())
    }
    async fn list(&mut self, r: pb::ListPortsRequest) -> Result<pb::ListPortsResponse, Status> {
        Ok(self.ports.list_ports(r).await?.into_inner())
    }
    async fn rm(&mut self, r: pb::RemovePortRequest) -> Result<pb::RemovePortResponse, Status> {
        Ok(self.ports.remove_port(r).await?.into_inner())
    }
    async fn rm_all(
        &mut self,
        r: pb::RemoveAllPortsRequest,
    ) -> Result<pb::RemovePortResponse, Status> {
        Ok(self.ports.remove_all_ports(r).await?.into_inner())
    }
    async fn restrict(&mut self, r: pb::RestrictDisplayRequest) -> Result<(), Status> {
        self.ports.restrict_display(r).await.map(|_| ())
    }
}

#[tonic::async_trait]
impl Ports for CoordinatorClient {
    async fn expose(&mut self, r: pb::ExposePortRequest) -> Result<pb::ExposedPort, Status> {
        Ok(self.access.expose_vm_port(r).await?.into_inner())
    }
    async fn list(&mut self, r: pb::ListPortsRequest) -> Result<pb::ListPortsResponse, Status> {
        Ok(self.access.list_vm_ports(r).await?.into_inner())
    }
    async fn rm(&mut self, r: pb::RemovePortRequest) -> Result<pb::RemovePortResponse, Status> {
        Ok(self.access.remove_vm_port(r).await?.into_inner())
    }
    async fn rm_all(
        &mut self,
        r: pb::RemoveAllPortsRequest,
    ) -> Result<pb::RemovePortResponse, Status> {
        Ok(self.access.remove_all_vm_ports(r).await?.into_inner())
    }
    async fn restrict(&mut self, r: pb::RestrictDisplayRequest) -> Result<(), Status> {
        self.access.restrict_vm_display(r).await.map(|_| ())
    }
}

/// Runs a `port` command against `c` and shows its answer.
pub(crate) async fn port(c: &mut dyn Ports, out: &Out, cmd: PortCmd) -> Result<(), ClientError> {
    match cmd.into_call() {
        PortCall::Expose(r) => out.show(&c.expose(r).await?, port_line),
        PortCall::List(r) => out.show(&c.list(r).await?, |l| lines(&l.ports, port_line)),
        PortCall::Rm(r) => out.show(&c.rm(r).await?, removed_text),
        PortCall::RmAll(r) => out.show(&c.rm_all(r).await?, removed_text),
        PortCall::RestrictDisplay(r) => {
            c.restrict(r.clone()).await?;
            out.show(&r, restrict_text);
        }
    }
    Ok(())
}
