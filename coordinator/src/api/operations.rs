use std::pin::Pin;
use std::sync::Arc;

use corral_client::proto as pb;
use pb::operation_service_server::OperationService;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::auth::caller;
use crate::convert::{op_event_to_pb, op_to_pb};
use crate::vms::Coordinator;

#[derive(Debug, Clone)]
pub struct OperationApi(pub Arc<Coordinator>);

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::OperationEvent, Status>> + Send>>;

rpcs! { OperationApi: OperationService, |c, who, r|;
    get_operation(pb::OperationRef) -> pb::Operation = "GetOperation" => op_to_pb(&c.op_for(&who, &r.id).await?);
    list_operations(pb::ListOperationsRequest) -> pb::ListOperationsResponse = "ListOperations"
        => pb::ListOperationsResponse { operations: c.ops_of(&who, r.unfinished_only).await?.iter().map(op_to_pb).collect() };
    cancel_operation(pb::OperationRef) -> pb::Operation = "CancelOperation" => op_to_pb(&c.cancel_op(&who, &r.id).await?);
    get_coordinator(pb::GetCoordinatorRequest) -> pb::CoordinatorInfo = "GetCoordinator" => {
        let (leader_address, term) = c.role.known();
        pb::CoordinatorInfo { id: c.role.id.clone(), leader: c.role.is_leader(), leader_address, term, cluster: c.role.cluster() }
    };
    @more {
        type WatchOperationStream = EventStream;

        #[tracing::instrument(skip_all, fields(rpc = "WatchOperation"))]
        async fn watch_operation(
            &self,
            req: Request<pb::OperationRef>,
        ) -> Result<Response<EventStream>, Status> {
            let who = caller(&req)?;
            let events = self.0.watch_op(&who, &req.into_inner().id).await?;
            Ok(Response::new(Box::pin(events.map(|e| Ok(op_event_to_pb(e))))))
        }
    }
}
