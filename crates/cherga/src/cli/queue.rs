//! `cherga queue show|pause|resume|set`: a queue's settings and counts, and
//! changes to its settings (`PUT /v1/queues/{queue}`, which keeps what a request
//! leaves out).

use std::time::Duration;

use anyhow::{Result, bail};
use cherga_client::api::{BackoffSettings, QueueSettingsBody, QueueView};
use clap::{Args, Subcommand};

use super::ServerArgs;

#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// Shows a queue's settings and its tasks per state.
    Show {
        /// The queue.
        queue: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Pauses a queue: nothing is leased from it until it is resumed (enqueues go on).
    Pause {
        /// The queue.
        queue: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Resumes a paused queue.
    Resume {
        /// The queue.
        queue: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Changes a queue's settings, creating the queue if needed; settings not
    /// given stay as they are.
    Set(SetArgs),
    /// Deletes a queue with its finished tasks; refused while it holds
    /// unfinished ones, unless `--force` (which purges those too).
    Delete {
        /// The queue.
        queue: String,
        /// Delete even while the queue holds scheduled, ready or running tasks.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Args, Debug)]
pub struct SetArgs {
    /// The queue.
    queue: String,
    /// Most deliveries of a task before it is dead.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// How long a lease lasts when the lease request does not say, e.g. `30s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    lease: Option<Duration>,
    /// Wait before the first retry of a failed task, e.g. `1s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    backoff_initial: Option<Duration>,
    /// Longest wait before a retry, e.g. `10m`.
    #[arg(long, value_parser = humantime::parse_duration)]
    backoff_max: Option<Duration>,
    /// Each retry waits this many times longer than the one before (1 to 100).
    #[arg(long)]
    backoff_multiplier: Option<f64>,
    /// Share of each wait chosen at random (0 to 1), so retries do not come in waves.
    #[arg(long)]
    backoff_jitter: Option<f64>,
    /// Most tasks of the queue running at once; `none` removes the limit.
    #[arg(long, value_parser = parse_limit)]
    concurrency: Option<Limit>,
    /// How long finished tasks are kept, e.g. `7d`.
    #[arg(long, value_parser = humantime::parse_duration)]
    retention: Option<Duration>,
    /// How long an idempotency key is remembered, e.g. `24h`.
    #[arg(long, value_parser = humantime::parse_duration)]
    dedup_window: Option<Duration>,
    /// Pause (`true`) or resume (`false`) the queue.
    #[arg(long)]
    paused: Option<bool>,
    #[command(flatten)]
    server: ServerArgs,
}

/// A concurrency limit, or none.
#[derive(Clone, Copy, Debug)]
struct Limit(Option<u32>);

fn parse_limit(text: &str) -> Result<Limit, String> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(Limit(None));
    }
    text.parse().map(|n| Limit(Some(n))).map_err(|_| format!("expected a number or `none`, got {text:?}"))
}

fn millis(duration: Option<Duration>) -> Option<i64> {
    duration.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl SetArgs {
    fn body(&self) -> QueueSettingsBody {
        let backoff = BackoffSettings {
            initial_ms: millis(self.backoff_initial),
            max_ms: millis(self.backoff_max),
            multiplier: self.backoff_multiplier,
            jitter: self.backoff_jitter,
        };
        let any_backoff = backoff.initial_ms.is_some()
            || backoff.max_ms.is_some()
            || backoff.multiplier.is_some()
            || backoff.jitter.is_some();
        QueueSettingsBody {
            max_attempts: self.max_attempts,
            lease_ms: millis(self.lease),
            backoff: any_backoff.then_some(backoff),
            concurrency: self.concurrency.map(|limit| limit.0),
            paused: self.paused,
            retention_ms: millis(self.retention),
            dedup_window_ms: millis(self.dedup_window),
        }
    }
}

pub async fn run(command: QueueCommand) -> Result<()> {
    let (server, view) = match command {
        QueueCommand::Delete { queue, force, server } => {
            return crate::bulk::delete_queue(queue, force, server).await;
        }
        QueueCommand::Show { queue, server } => {
            let view = server.client()?.queue(&queue).await?;
            (server, view)
        }
        QueueCommand::Pause { queue, server } => {
            let body = QueueSettingsBody { paused: Some(true), ..QueueSettingsBody::default() };
            let view = server.client()?.put_queue(&queue, &body).await?;
            (server, view)
        }
        QueueCommand::Resume { queue, server } => {
            let body = QueueSettingsBody { paused: Some(false), ..QueueSettingsBody::default() };
            let view = server.client()?.put_queue(&queue, &body).await?;
            (server, view)
        }
        QueueCommand::Set(args) => {
            let body = args.body();
            if body == QueueSettingsBody::default() {
                bail!("nothing to set: give at least one setting (see `cherga queue set --help`)");
            }
            let view = args.server.client()?.put_queue(&args.queue, &body).await?;
            (args.server, view)
        }
    };
    if server.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", queue_text(&view));
    }
    Ok(())
}

fn queue_text(q: &QueueView) -> String {
    let s = &q.settings;
    let c = &q.counts;
    let ms = |ms: i64| humantime::format_duration(Duration::from_millis(ms.max(0) as u64)).to_string();
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<16}{v}\n"));
    line("queue", q.name.clone());
    line("paused", s.paused.to_string());
    line("max_attempts", s.max_attempts.to_string());
    line("lease", ms(s.lease_ms));
    line(
        "backoff",
        format!(
            "{} to {}, ×{}, jitter {}",
            ms(s.backoff.initial_ms),
            ms(s.backoff.max_ms),
            s.backoff.multiplier,
            s.backoff.jitter
        ),
    );
    line("concurrency", s.concurrency.map_or_else(|| "no limit".to_owned(), |n| n.to_string()));
    line("retention", ms(s.retention_ms));
    line("dedup_window", ms(s.dedup_window_ms));
    line(
        "tasks",
        format!(
            "{} scheduled, {} ready, {} running, {} succeeded, {} dead, {} cancelled",
            c.scheduled, c.ready, c.running, c.succeeded, c.dead, c.cancelled
        ),
    );
    out
}
