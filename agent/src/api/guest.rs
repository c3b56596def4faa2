//! GuestService: programs and files inside a running guest, through its QEMU guest agent.
//! The loops (poll a program until it exits, read or write a file chunk by chunk) run here,
//! each step one blocking call; a client that goes away kills its program and closes its file.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_proto::v1 as pb;
use pb::guest_service_server::GuestService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::agent::Agent;
use crate::error::AgentError;
use crate::guest::{self, ExecStatus};

#[derive(Debug, Clone)]
pub struct GuestApi(pub Arc<Agent>);

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// The time limit of a program: the request's, or 60 s.
fn limit(seconds: u32) -> Duration {
    Duration::from_secs(if seconds == 0 { 60 } else { seconds.into() })
}

/// A finished program's output as events, in chunks of at most 64 KiB.
fn output(s: &ExecStatus) -> Vec<pb::GuestExecEvent> {
    let mut out = Vec::new();
    for (data, is_out) in [(&s.out_data, true), (&s.err_data, false)] {
        let Some(d) = data else { continue };
        match guest::decode(d) {
            Ok(bytes) => {
                for c in bytes.chunks(64 * 1024) {
                    out.push(pb::GuestExecEvent {
                        event: Some(if is_out {
                            pb::guest_exec_event::Event::Stdout(c.to_vec())
                        } else {
                            pb::guest_exec_event::Event::Stderr(c.to_vec())
                        }),
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "guest output"),
        }
    }
    out
}

/// Polls a started program until it exits or passes its limit, sending its events.
async fn follow(
    agent: Arc<Agent>,
    name: String,
    pid: i64,
    limit: Duration,
    tx: mpsc::Sender<Result<pb::GuestExecEvent, Status>>,
) -> Result<(), AgentError> {
    let started = Instant::now();
    let mut wait = Duration::from_millis(20);
    loop {
        let n = name.clone();
        let status = agent
            .blocking(move |a| a.guest_exec_status(&n, pid))
            .await?;
        let (status, timed_out) = if status.exited {
            (status, false)
        } else if started.elapsed() >= limit || tx.is_closed() {
            let n = name.clone();
            (
                agent.blocking(move |a| a.guest_exec_kill(&n, pid)).await?,
                true,
            )
        } else {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(250));
            continue;
        };
        for e in output(&status) {
            if tx.send(Ok(e)).await.is_err() {
                return Ok(());
            }
        }
        let exited = pb::GuestExited {
            code: status.exitcode.unwrap_or(-1),
            signal: status.signal.unwrap_or(0),
            timed_out,
            truncated: status.out_truncated || status.err_truncated,
        };
        tracing::info!(domain = %name, pid, code = exited.code, timed_out, "guest exec ended");
        let _ = tx
            .send(Ok(pb::GuestExecEvent {
                event: Some(pb::guest_exec_event::Event::Exited(exited)),
            }))
            .await;
        return Ok(());
    }
}

rpcs! { GuestApi: GuestService, |a, r|;
    ping_guest(pb::DomainRef) -> pb::GuestStatus = "PingGuest" by r.name => a.guest_status(&r.name);
    @more {
        type GuestExecStream = Stream<pb::GuestExecEvent>;
        type ReadGuestFileStream = Stream<pb::FileChunk>;

        async fn guest_exec(
            &self,
            req: Request<pb::GuestExecRequest>,
        ) -> Result<Response<Self::GuestExecStream>, Status> {
            let r = req.into_inner();
            let span = tracing::info_span!("rpc", rpc = "GuestExec", target = %r.name);
            let agent = Arc::clone(&self.0);
            let (name, limit) = (r.name.clone(), limit(r.timeout_seconds));
            let pid = agent
                .blocking(move |a| a.guest_exec_start(&r))
                .instrument(span.clone())
                .await
                .map_err(|e| {
                    span.in_scope(|| tracing::info!(code = ?e.code(), error = %e, "failed"));
                    Status::from(e)
                })?;
            let (tx, rx) = mpsc::channel(16);
            let _ = tx
                .send(Ok(pb::GuestExecEvent {
                    event: Some(pb::guest_exec_event::Event::StartedPid(
                        u32::try_from(pid).unwrap_or(0),
                    )),
                }))
                .await;
            tokio::spawn(
                async move {
                    if let Err(e) = follow(agent, name, pid, limit, tx.clone()).await {
                        tracing::warn!(error = %e, "guest exec");
                        let _ = tx.send(Err(e.into())).await;
                    }
                }
                .instrument(span),
            );
            Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
        }

        async fn read_guest_file(
            &self,
            req: Request<pb::GuestFileRef>,
        ) -> Result<Response<Self::ReadGuestFileStream>, Status> {
            let r = req.into_inner();
            let span = tracing::info_span!("rpc", rpc = "ReadGuestFile", target = %r.name);
            let agent = Arc::clone(&self.0);
            let (name, path) = (r.name.clone(), r.path.clone());
            let handle = agent
                .blocking(move |a| a.guest_open(&name, &path, false))
                .instrument(span.clone())
                .await
                .map_err(Status::from)?;
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(
                async move {
                    let mut offset = 0u64;
                    loop {
                        let n = r.name.clone();
                        match agent.blocking(move |a| a.guest_read(&n, handle)).await {
                            Ok((data, eof)) => {
                                let len = data.len() as u64;
                                if (!data.is_empty() || offset == 0)
                                    && tx.send(Ok(pb::FileChunk { data, offset })).await.is_err()
                                {
                                    break;
                                }
                                offset += len;
                                if eof || len == 0 {
                                    break;
                                }
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e.into())).await;
                                break;
                            }
                        }
                    }
                    tracing::info!(bytes = offset, path = %r.path, "guest file read");
                    let n = r.name.clone();
                    if let Err(e) = agent.blocking(move |a| a.guest_close(&n, handle)).await {
                        tracing::warn!(error = %e, "closing a guest file");
                    }
                }
                .instrument(span),
            );
            Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
        }

        async fn write_guest_file(
            &self,
            req: Request<Streaming<pb::GuestFileWrite>>,
        ) -> Result<Response<pb::GuestFileWritten>, Status> {
            let mut chunks = req.into_inner();
            let first = chunks
                .message()
                .await?
                .ok_or_else(|| Status::invalid_argument("no file named"))?;
            let file = first
                .file
                .clone()
                .ok_or_else(|| Status::invalid_argument("the first message must name the file"))?;
            let span = tracing::info_span!("rpc", rpc = "WriteGuestFile", target = %file.name);
            let agent = Arc::clone(&self.0);
            async move {
                let (name, path) = (file.name.clone(), file.path.clone());
                let handle = agent
                    .blocking(move |a| a.guest_open(&name, &path, true))
                    .await
                    .map_err(Status::from)?;
                let mut written = 0u64;
                let mut data = first.data;
                let result: Result<(), Status> = async {
                    loop {
                        if !data.is_empty() {
                            written += data.len() as u64;
                            let n = file.name.clone();
                            agent
                                .blocking(move |a| a.guest_write(&n, handle, &data))
                                .await?;
                        }
                        match chunks.message().await? {
                            Some(m) if m.file.is_some() => {
                                return Err(Status::invalid_argument(
                                    "only the first message names the file",
                                ))
                            }
                            Some(m) => data = m.data,
                            None => return Ok(()),
                        }
                    }
                }
                .await;
                let n = file.name.clone();
                let closed = agent.blocking(move |a| a.guest_close(&n, handle)).await;
                result?;
                closed?;
                tracing::info!(bytes = written, path = %file.path, "guest file written");
                Ok(Response::new(pb::GuestFileWritten { bytes: written }))
            }
            .instrument(span)
            .await
        }
    }
}
