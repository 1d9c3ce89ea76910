//! `cherga tail`: follows the event stream, one line per event (or the
//! CloudEvent's JSON with `--json`), reconnecting with `Last-Event-ID` when the
//! connection drops.
//!
//! **Invariant:** stdout carries only events; what the stream says about itself
//! (where it starts, reconnections, events lost to retention) goes to stderr.

use anyhow::Result;
use cherga_client::StreamItem;
use cherga_client::api::event::{CloudEvent, EventsQuery};
use clap::Args;

use super::ServerArgs;

#[derive(Args, Debug)]
pub struct TailArgs {
    /// Only events of queues matching this pattern (`*` for any run of characters).
    #[arg(long)]
    queue: Option<String>,
    /// Only events of tasks of this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Only events that moved a task into this state (`succeeded`, `dead`...).
    #[arg(long)]
    state: Option<String>,
    /// Only events of this change (`enqueued`, `leased`, `acked`, `nacked`...).
    #[arg(long = "type", value_name = "CHANGE")]
    event_type: Option<String>,
    /// Only events of this task.
    #[arg(long, value_name = "ID")]
    task: Option<String>,
    /// Start after this event id (`0`: from the oldest event kept). Without it,
    /// the stream starts now.
    #[arg(long, value_name = "EVENT_ID")]
    after: Option<String>,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn run(args: TailArgs) -> Result<()> {
    let query = EventsQuery {
        queue: args.queue,
        kind: args.kind,
        state: args.state,
        event_type: args.event_type,
        task: args.task,
        after: args.after,
        limit: None,
    };
    let client = args.server.client()?;
    let mut stream = client.follow_events(query).await?;
    eprintln!("following events after {}", stream.after());
    let mut seen = 0;
    while args.count.is_none_or(|count| seen < count) {
        match stream.next().await? {
            StreamItem::Event { event, json } => {
                seen += 1;
                if args.server.json {
                    println!("{json}");
                } else {
                    println!("{}", event_line(&event));
                }
            }
            StreamItem::StreamError { code, message } => eprintln!("warning: {code}: {message}"),
            StreamItem::Reconnecting { after, reason } => {
                eprintln!("{reason}; reconnecting to resume after event {after}");
            }
        }
    }
    Ok(())
}

/// `time  #id  change  queue  kind  task  from→to  attempt n`.
fn event_line(event: &CloudEvent) -> String {
    let d = &event.data;
    let states = match (&d.from, &d.to) {
        (Some(from), Some(to)) => format!("{from}→{to}"),
        (None, Some(to)) => format!("→{to}"),
        (Some(from), None) => format!("{from}→"),
        (None, None) => String::new(),
    };
    format!(
        "{}  #{:<6} {:<10} {:<16} {:<16} {}  {states}  attempt {}",
        event.time.to_rfc3339(),
        event.id,
        d.change,
        d.queue,
        d.kind,
        d.task_id,
        d.attempt
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_readable_line() {
        let json = r#"{"specversion":"1.0","id":"42","source":"/v1/queues/emails","type":"dev.cherga.task.acked",
            "subject":"t1","time":"2026-12-07T16:20:01.123Z","datacontenttype":"application/json",
            "data":{"task_id":"t1","queue":"emails","kind":"send","change":"acked","from":"running",
            "to":"succeeded","attempt":1}}"#;
        let event: CloudEvent = serde_json::from_str(json).expect("a CloudEvent");
        let line = event_line(&event);
        assert!(line.starts_with("2026-12-07T16:20:01.123"), "{line}");
        for part in ["#42", "acked", "emails", "send", "t1", "running→succeeded", "attempt 1"] {
            assert!(line.contains(part), "{part:?} missing from {line}");
        }
        assert!(!line.contains('\n'), "{line}");
    }
}
