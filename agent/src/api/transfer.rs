//! Volume sync: `VolumeSyncService` (asked by the coordinator) and `PeerTransferService`
//! (called by peer agents).

use std::pin::Pin;
use std::sync::Arc;

use corral_proto::v1 as pb;
use pb::peer_transfer_service_server::PeerTransferService;
use pb::volume_sync_service_server::VolumeSyncService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::run;
use crate::agent::Agent;

type R<T> = Result<Response<T>, Status>;
type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[derive(Debug, Clone)]
pub struct SyncApi(pub Arc<Agent>);

#[derive(Debug, Clone)]
pub struct PeerApi(pub Arc<Agent>);

#[tonic::async_trait]
impl VolumeSyncService for SyncApi {
    type SendVolumeStream = Stream<pb::SyncProgress>;

    async fn send_volume(&self, req: Request<pb::SendVolumeRequest>) -> R<Self::SendVolumeStream> {
        // The operation this transfer works for goes on to the peer's ReceiveVolume.
        let op = req.metadata().get(corral_proto::OPERATION_HEADER).cloned();
        let r = req.into_inner();
        let span =
            tracing::info_span!("rpc", rpc = "SendVolume", target = %r.volume, peer = %r.peer);
        let agent = Arc::clone(&self.0);
        let (out, rx) = mpsc::channel::<Result<pb::SyncProgress, Status>>(8);
        // Progress that finds the stream full is dropped: the next report supersedes it.
        let report = {
            let out = out.clone();
            move |p| {
                let _ = out.try_send(Ok(p));
            }
        };
        tokio::spawn(
            async move {
                // The caller going away (a cancelled operation) cancels the transfer.
                let gone = out.clone();
                let result =
                    crate::sync::send(agent, r, op, report, async move { gone.closed().await })
                        .await;
                let msg = match result {
                    Ok(last) => Ok(last),
                    Err(e) => {
                        tracing::info!(code = ?e.code(), error = %e, "failed");
                        Err(e.into())
                    }
                };
                let _ = out.send(msg).await;
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn volume_checksum(
        &self,
        req: Request<pb::VolumeChecksumRequest>,
    ) -> R<pb::VolumeChecksumResponse> {
        let n = req.into_inner().volume;
        run(&self.0, "VolumeChecksum", &n.clone(), move |a| {
            a.volume_checksum(&n)
        })
        .await
    }
}

#[tonic::async_trait]
impl PeerTransferService for PeerApi {
    type ReceiveVolumeStream = Stream<pb::SyncReply>;

    async fn receive_volume(
        &self,
        req: Request<Streaming<pb::SyncUpload>>,
    ) -> R<Self::ReceiveVolumeStream> {
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let span = tracing::info_span!("rpc", rpc = "ReceiveVolume", peer = %peer);
        let inbound = req.into_inner();
        let agent = Arc::clone(&self.0);
        let (out, rx) = mpsc::channel(4);
        tokio::spawn(
            async move {
                if let Err(e) = crate::sync::receive(agent, inbound, out.clone()).await {
                    tracing::info!(code = ?e.code(), error = %e, "failed");
                    let _ = out.send(Err(e.into())).await;
                }
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
