use std::pin::Pin;
use std::sync::Arc;

use corral_client::proto as pb;
use futures::StreamExt;
use pb::vm_guest_service_server::VmGuestService;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::caller;
use crate::guests::{GuestCommand, PostLoad};
use crate::vms::Coordinator;

#[derive(Debug, Clone)]
pub struct VmGuestApi(pub Arc<Coordinator>);

type Stream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

fn post_load_to_pb(base: String, p: PostLoad) -> pb::BasePostLoad {
    pb::BasePostLoad {
        base,
        commands: p
            .commands
            .into_iter()
            .map(|c| pb::GuestCommand {
                path: c.path,
                args: c.args,
                shell: c.shell,
                timeout_seconds: c.timeout_seconds,
            })
            .collect(),
    }
}

fn post_load_from_pb(r: &pb::BasePostLoad) -> PostLoad {
    PostLoad {
        commands: r
            .commands
            .iter()
            .map(|c| GuestCommand {
                path: c.path.clone(),
                args: c.args.clone(),
                shell: c.shell,
                timeout_seconds: c.timeout_seconds,
            })
            .collect(),
    }
}

rpcs! { VmGuestApi: VmGuestService, |c, who, r|;
    get_vm_guest(pb::VmRef) -> pb::GuestStatus = "GetVmGuest" => c.vm_guest(&who, &r.name).await?;
    set_base_post_load(pb::BasePostLoad) -> pb::BasePostLoad = "SetBasePostLoad"
        => post_load_to_pb(r.base.clone(), c.set_base_post_load(&who, &r.base, post_load_from_pb(&r)).await?);
    get_base_post_load(pb::BaseRef) -> pb::BasePostLoad = "GetBasePostLoad"
        => post_load_to_pb(r.name.clone(), c.base_post_load(&who, &r.name).await?);
    @more {
        type ExecVmStream = Stream<pb::GuestExecEvent>;
        type ReadVmFileStream = Stream<pb::FileChunk>;

        #[tracing::instrument(skip_all, fields(rpc = "ExecVm"))]
        async fn exec_vm(
            &self,
            req: Request<pb::GuestExecRequest>,
        ) -> Result<Response<Self::ExecVmStream>, Status> {
            crate::dry::asked("ExecVm", &req)?;
            let who = caller(&req)?;
            let events = self.0.exec_vm(&who, req.into_inner()).await?;
            Ok(Response::new(Box::pin(events.map(|e| e.map_err(Status::from)))))
        }

        #[tracing::instrument(skip_all, fields(rpc = "ReadVmFile"))]
        async fn read_vm_file(
            &self,
            req: Request<pb::GuestFileRef>,
        ) -> Result<Response<Self::ReadVmFileStream>, Status> {
            crate::dry::asked("ReadVmFile", &req)?;
            let who = caller(&req)?;
            let chunks = self.0.read_vm_file(&who, req.into_inner()).await?;
            Ok(Response::new(Box::pin(chunks.map(|e| e.map_err(Status::from)))))
        }

        #[tracing::instrument(skip_all, fields(rpc = "WriteVmFile"))]
        async fn write_vm_file(
            &self,
            req: Request<Streaming<pb::GuestFileWrite>>,
        ) -> Result<Response<pb::GuestFileWritten>, Status> {
            crate::dry::asked("WriteVmFile", &req)?;
            let who = caller(&req)?;
            let mut incoming = req.into_inner();
            let first = incoming
                .message()
                .await?
                .ok_or_else(|| Status::invalid_argument("no file named"))?;
            // A client that stops sending for a minute, or breaks off, fails the write: the
            // agent's stream then ends in an error, never as a short file that looks complete.
            let (tx, rx) = tokio::sync::mpsc::channel::<pb::GuestFileWrite>(4);
            let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<Status>();
            tokio::spawn(async move {
                loop {
                    match tokio::time::timeout(std::time::Duration::from_secs(60), incoming.message()).await {
                        Ok(Ok(Some(m))) => {
                            if m.file.is_some() {
                                let _ = failed_tx.send(Status::invalid_argument("only the first message names the file"));
                                return;
                            }
                            if tx.send(m).await.is_err() {
                                return;
                            }
                        }
                        Ok(Ok(None)) => return,
                        Ok(Err(s)) => {
                            let _ = failed_tx.send(s);
                            return;
                        }
                        Err(_) => {
                            let _ = failed_tx.send(Status::deadline_exceeded("the client sent nothing for 60 s"));
                            return;
                        }
                    }
                }
            });
            let rest = tokio_stream::wrappers::ReceiverStream::new(rx);
            let write = self.0.write_vm_file(&who, first, Box::pin(rest));
            tokio::pin!(write);
            let mut failed_rx = failed_rx;
            tokio::select! {
                r = &mut write => Ok(Response::new(r?)),
                Ok(s) = &mut failed_rx => Err(s),
            }
        }
    }
}
