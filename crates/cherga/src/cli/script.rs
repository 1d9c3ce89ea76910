//! `cherga lease`, `ack`, `nack`: one task at a time, for shell scripts. `lease`
//! prints the task with its lease token; `ack` and `nack` take the token back.
//!
//! ```sh
//! task=$(cherga lease --queue emails --json) || exit
//! id=$(jq -r .id <<<"$task"); token=$(jq -r .lease.token <<<"$task")
//! cherga ack "$id" --lease "$token" --result '{"sent":true}'
//! ```

use std::time::Duration;

use anyhow::{Context, Result};
use cherga_client::api::{AckRequest, LeaseRequest, MAX_WAIT_MS, NackRequest, TaskView};
use clap::Args;
use serde_json::value::RawValue;

use super::{Exit, ServerArgs};

/// The exit status of `cherga lease` when no task became ready in time.
pub const NOTHING_LEASED: u8 = 2;

#[derive(Args, Debug)]
pub struct LeaseArgs {
    /// The queue to lease from.
    #[arg(long)]
    queue: String,
    /// Wait up to this long for a task to become ready (at most 60s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    wait: Duration,
    /// How long the lease lasts (default: the queue's); ack or nack before then.
    #[arg(long, value_parser = humantime::parse_duration)]
    lease: Option<Duration>,
    /// The worker's name, kept in the task's attempt history.
    #[arg(long)]
    worker: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args, Debug)]
pub struct AckArgs {
    /// The task id.
    id: String,
    /// The lease token `cherga lease` printed (`.lease.token`). (`--token` is
    /// the bearer token, as for every subcommand.)
    #[arg(long, value_name = "LEASE_TOKEN")]
    lease: String,
    /// The task's result, as JSON.
    #[arg(long)]
    result: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args, Debug)]
pub struct NackArgs {
    /// The task id.
    id: String,
    /// The lease token `cherga lease` printed (`.lease.token`). (`--token` is
    /// the bearer token, as for every subcommand.)
    #[arg(long, value_name = "LEASE_TOKEN")]
    lease: String,
    /// What went wrong, kept as the task's last error.
    #[arg(long)]
    error: Option<String>,
    /// Retry after this long instead of the queue's backoff, e.g. `30s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Option<Duration>,
    /// Do not retry: the task is dead.
    #[arg(long, conflicts_with = "delay")]
    dead: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// Leases one task and prints it, its lease token included, as JSON (one line
/// with `--json`). Exits with status 2 when no task became ready in time.
pub async fn lease(args: LeaseArgs) -> Result<()> {
    let wait_ms = u64::try_from(args.wait.as_millis()).unwrap_or(u64::MAX);
    anyhow::ensure!(wait_ms <= MAX_WAIT_MS, "--wait is at most {}s", MAX_WAIT_MS / 1000);
    let request = LeaseRequest {
        max: Some(1),
        wait_ms: Some(wait_ms),
        lease_ms: args.lease.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        worker: args.worker,
        acks: Vec::new(),
    };
    let leased = args.server.client()?.lease(&args.queue, &request).await?;
    let Some(task) = leased.tasks.into_iter().next() else {
        return Err(Exit {
            status: NOTHING_LEASED,
            message: format!(
                "no task of queue {} became ready within {}",
                args.queue,
                humantime::format_duration(args.wait)
            ),
        }
        .into());
    };
    print_task(&task, args.server.json)
}

pub async fn ack(args: AckArgs) -> Result<()> {
    let result = match &args.result {
        Some(text) => Some(
            RawValue::from_string(text.clone()).with_context(|| format!("--result is not JSON: {text}"))?,
        ),
        None => None,
    };
    let request = AckRequest { lease: args.lease, result };
    let task = args.server.client()?.ack(&args.id, &request).await?;
    if args.server.json {
        return print_task(&task, true);
    }
    println!("acked {} ({})", task.id, task.state);
    Ok(())
}

pub async fn nack(args: NackArgs) -> Result<()> {
    let request = NackRequest {
        lease: args.lease,
        error: args.error,
        retry_in_ms: args.delay.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        dead: args.dead,
    };
    let task = args.server.client()?.nack(&args.id, &request).await?;
    if args.server.json {
        return print_task(&task, true);
    }
    match task.state.as_str() {
        "dead" => println!("nacked {}: dead after {} attempt(s)", task.id, task.attempts),
        state => println!(
            "nacked {}: {state}, next attempt at {} ({} of {} used)",
            task.id,
            task.run_at.to_rfc3339(),
            task.attempts,
            task.max_attempts
        ),
    }
    Ok(())
}

/// A task as JSON: one line for scripts, indented for people.
fn print_task(task: &TaskView, one_line: bool) -> Result<()> {
    let text = if one_line { serde_json::to_string(task)? } else { serde_json::to_string_pretty(task)? };
    println!("{text}");
    Ok(())
}
