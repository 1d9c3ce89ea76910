//! The bulk subcommands: `retry`, `cancel` and `purge` with a filter, and
//! `queue delete`. Each prints one line, or the API's JSON with `--json`.

use crate::cli::ServerArgs;
use anyhow::Result;
use cherga_client::api::{BulkRequest, Timestamp};
use clap::Args;
use std::time::Duration;

/// How long a bulk request may run before the client gives up (the server's
/// own request timeout may end it sooner; the steps it committed stay done).
const BULK_TIMEOUT: Duration = Duration::from_secs(600);

/// Which tasks of a queue a bulk command acts on.
#[derive(Args, Debug)]
pub struct BulkArgs {
    /// The queue.
    #[arg(long)]
    queue: String,
    /// Only tasks in this state (repeat for several; default: every state the
    /// command applies to).
    #[arg(long = "state", value_name = "STATE")]
    states: Vec<String>,
    /// Only tasks of this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Only tasks of this group.
    #[arg(long)]
    group: Option<String>,
    /// Only tasks enqueued before this time (RFC 3339, e.g. 2026-12-01T00:00:00Z).
    #[arg(long, value_parser = Timestamp::parse)]
    before: Option<Timestamp>,
    /// Only tasks enqueued at or after this time (RFC 3339).
    #[arg(long, value_parser = Timestamp::parse)]
    after: Option<Timestamp>,
    /// Act on at most this many tasks.
    #[arg(long)]
    limit: Option<u64>,
    #[command(flatten)]
    server: ServerArgs,
}

impl BulkArgs {
    fn request(&self) -> BulkRequest {
        BulkRequest {
            states: self.states.clone(),
            kind: self.kind.clone(),
            group: self.group.clone(),
            enqueued_after: self.after,
            enqueued_before: self.before,
            limit: self.limit,
        }
    }
}

/// A bulk action.
#[derive(Clone, Copy, Debug)]
pub enum Action {
    Retry,
    Cancel,
    Purge,
}

pub async fn run(action: Action, args: BulkArgs) -> Result<()> {
    let client = args.server.client()?.with_timeout(BULK_TIMEOUT);
    let request = args.request();
    let (answer, verb) = match action {
        Action::Retry => (client.retry_tasks(&args.queue, &request).await?, "retried"),
        Action::Cancel => (client.cancel_tasks(&args.queue, &request).await?, "cancelled"),
        Action::Purge => (client.purge_tasks(&args.queue, &request).await?, "purged"),
    };
    if args.server.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!("{verb} {} tasks of {}", answer.matched, args.queue);
    }
    Ok(())
}

/// `cherga queue delete`: deletes a queue with its finished tasks; refused
/// while it holds unfinished ones, unless `force` (which purges those too).
pub async fn delete_queue(queue: String, force: bool, server: ServerArgs) -> Result<()> {
    let client = server.client()?.with_timeout(BULK_TIMEOUT);
    let answer = client.delete_queue(&queue, force).await?;
    if server.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!("deleted queue {} ({} tasks purged)", answer.queue, answer.purged);
    }
    Ok(())
}
