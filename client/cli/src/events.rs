//! `corral events`: the events feed, one line per event, followed until interrupted (or
//! `--count` events); resumable with `--after` the last number printed.

use corral_client::{enum_name, state_name, ClientError, CoordinatorClient};
use corral_proto::v1 as pb;

use crate::cli::Out;

#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// Resume after this event number (the first column); without it, from now on.
    #[arg(long)]
    pub after: Option<u64>,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
}

/// One event as a line: number, time, what, and its details.
pub fn event_line(e: &pb::Event) -> String {
    use pb::event::What;
    let what = match &e.what {
        None => return format!("{}\t(now: resume with --after {})", e.sequence, e.sequence),
        Some(What::Vm(v)) => {
            let state = if v.observed_state == 0 {
                enum_name(&v.observed, "")
            } else {
                state_name(v.observed_state)
            };
            let host = if v.host.is_empty() { "-" } else { &v.host };
            format!(
                "vm {} {}: {state} (wants {}) on {host}",
                v.name, v.event, v.desired_state
            )
        }
        Some(What::Operation(o)) => {
            let state = pb::OperationState::try_from(o.state)
                .map(|s| enum_name(s.as_str_name(), "OPERATION_STATE_"))
                .unwrap_or_default();
            let vm = if o.vm.is_empty() {
                String::new()
            } else {
                format!(" of {}", o.vm)
            };
            let mut line = format!("op {} {}{vm} {}: {state}", o.id, o.kind, o.event);
            if o.event == "progress" {
                line.push_str(&format!(" {}", o.phase));
                if o.percent >= 0.0 {
                    line.push_str(&format!(" {:.0}%", o.percent));
                }
                if !o.message.is_empty() {
                    line.push_str(&format!(" {}", o.message));
                }
            }
            if !o.error.is_empty() {
                line.push_str(&format!(": {}", o.error));
            }
            line
        }
        Some(What::Host(h)) => format!("host {} {}", h.name, h.event),
    };
    format!("{}\t{}\t{what}", e.sequence, e.at_unix_ms)
}

pub(crate) async fn events(
    c: &mut CoordinatorClient,
    out: &Out,
    args: EventsArgs,
) -> Result<(), ClientError> {
    let mut left = args.count;
    c.follow_events(args.after, std::time::Duration::from_secs(1), |e| {
        if out.is_text() {
            println!("{}", event_line(e));
        } else {
            println!("{}", serde_json::to_string(e).unwrap_or_default());
        }
        if e.what.is_none() {
            return true;
        }
        match left.as_mut() {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n > 0
            }
            None => true,
        }
    })
    .await
}
