//! `EventService`: the events feed (see [`crate::events`]).

use std::pin::Pin;
use std::sync::Arc;

use corral_client::proto as pb;
use pb::event_service_server::EventService;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::auth::caller;
use crate::events::{From, Item};
use crate::store::{FeedRow, OpState};
use crate::vms::Coordinator;

#[derive(Debug, Clone)]
pub struct EventApi(pub Arc<Coordinator>);

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

fn text(body: &serde_json::Value, key: &str) -> String {
    body[key].as_str().unwrap_or_default().to_string()
}

/// A feed row as the API shows it.
pub fn event_to_pb(row: FeedRow) -> pb::Event {
    use pb::event::What;
    let b = &row.body;
    let what = match row.kind.as_str() {
        "vm" => {
            let observed = crate::states::Observed::parse(&text(b, "state"));
            Some(What::Vm(pb::VmChanged {
                event: text(b, "event"),
                observed_state: observed.domain_state() as i32,
                observed: observed.as_str().to_string(),
                desired_state: text(b, "desired"),
                host: text(b, "host"),
                name: row.subject,
            }))
        }
        "operation" => Some(What::Operation(pb::OperationChanged {
            event: text(b, "event"),
            kind: text(b, "kind"),
            vm: text(b, "vm"),
            state: OpState::parse(&text(b, "state"))
                .map(|s| crate::convert::op_state(s) as i32)
                .unwrap_or_default(),
            phase: text(b, "phase"),
            percent: b["percent"].as_f64().map_or(-1.0, |p| p as f32),
            message: text(b, "message"),
            error: text(b, "error"),
            id: row.subject,
        })),
        "host" => Some(What::Host(pb::HostChanged {
            event: text(b, "event"),
            name: row.subject,
        })),
        _ => None,
    };
    pb::Event {
        sequence: row.seq,
        at_unix_ms: row.at_ms,
        what,
    }
}

#[tonic::async_trait]
impl EventService for EventApi {
    type WatchEventsStream = EventStream;

    #[tracing::instrument(skip_all, fields(rpc = "WatchEvents"))]
    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        crate::dry::asked("WatchEvents", &req)?;
        let who = caller(&req)?;
        let r = req.into_inner();
        let from = if r.from_now {
            From::Now
        } else {
            From::After(r.after)
        };
        let rx = self.0.watch_feed(&who, from).await?;
        let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(|item| match item {
            Ok(Item::At(seq)) => Ok(pb::Event {
                sequence: seq,
                ..Default::default()
            }),
            Ok(Item::Row(row)) => Ok(event_to_pb(row)),
            Err(e) => Err(Status::from(e)),
        });
        Ok(Response::new(Box::pin(events)))
    }
}
