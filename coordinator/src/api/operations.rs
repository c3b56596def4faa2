use std::pin::Pin;
use std::sync::Arc;

use corral_client::proto as pb;
use pb::operation_service_server::OperationService;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::{op_state, op_to_pb};
use crate::auth::{caller, Caller};
use crate::error::CoordError;
use crate::store::OpRecord;
use crate::vms::Coordinator;

#[derive(Debug, Clone)]
pub struct OperationApi(pub Arc<Coordinator>);

impl OperationApi {
    /// An operation the caller may see (others' look absent).
    async fn visible(&self, who: &Caller, id: &str) -> Result<OpRecord, Status> {
        let op = self.0.ops.get(id).await.map_err(CoordError::from)?;
        if !who.may_touch(op.user.as_deref().unwrap_or_default()) {
            return Err(Status::not_found(format!("operation {id} not found")));
        }
        Ok(op)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::OperationEvent, Status>> + Send>>;

#[tonic::async_trait]
impl OperationService for OperationApi {
    #[tracing::instrument(skip_all, fields(rpc = "GetOperation"))]
    async fn get_operation(
        &self,
        req: Request<pb::OperationRef>,
    ) -> Result<Response<pb::Operation>, Status> {
        let who = caller(&req)?;
        Ok(Response::new(op_to_pb(
            &self.visible(&who, &req.into_inner().id).await?,
        )))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListOperations"))]
    async fn list_operations(
        &self,
        req: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsResponse>, Status> {
        let who = caller(&req)?;
        let ops = self
            .0
            .ops
            .list(req.into_inner().unfinished_only)
            .await
            .map_err(CoordError::from)?;
        Ok(Response::new(pb::ListOperationsResponse {
            operations: ops
                .iter()
                .filter(|o| who.may_touch(o.user.as_deref().unwrap_or_default()))
                .map(op_to_pb)
                .collect(),
        }))
    }

    type WatchOperationStream = EventStream;

    #[tracing::instrument(skip_all, fields(rpc = "WatchOperation"))]
    async fn watch_operation(
        &self,
        req: Request<pb::OperationRef>,
    ) -> Result<Response<EventStream>, Status> {
        let who = caller(&req)?;
        let id = req.into_inner().id;
        self.visible(&who, &id).await?;
        let events = self.0.ops.watch(&id).await.map_err(CoordError::from)?;
        Ok(Response::new(Box::pin(events.map(|e| {
            Ok(pb::OperationEvent {
                operation: e.op_id,
                seq: e.seq,
                at_unix_ms: e.at_ms,
                phase: e.phase,
                percent: e.percent.unwrap_or(-1.0),
                bytes: e.bytes.unwrap_or(0),
                message: e.message,
                state: e.state.map(|s| op_state(s) as i32).unwrap_or(0),
            })
        }))))
    }

    #[tracing::instrument(skip_all, fields(rpc = "CancelOperation"))]
    async fn cancel_operation(
        &self,
        req: Request<pb::OperationRef>,
    ) -> Result<Response<pb::Operation>, Status> {
        let who = caller(&req)?;
        let id = req.into_inner().id;
        self.visible(&who, &id).await?;
        self.0.ops.cancel(&id).await.map_err(CoordError::from)?;
        Ok(Response::new(op_to_pb(
            &self.0.ops.get(&id).await.map_err(CoordError::from)?,
        )))
    }
}
