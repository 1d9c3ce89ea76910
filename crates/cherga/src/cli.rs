//! The client subcommands. Each prints readable text, or JSON with `--json` for
//! scripts. This file holds what they share (the server options) and the
//! one-task commands (`enqueue`, `queues`, `task get`); the others have a module
//! each: `queue` (settings), `tail` (the event stream), `script` (`lease`, `ack`,
//! `nack`), `transfer` (`import`, `export`).

pub mod progress;
pub mod queue;
pub mod script;
pub mod tail;
pub mod transfer;

use anyhow::{Context, Result};
use cherga_client::Client;
use cherga_client::api::{EnqueueRequest, QueueView, TaskView};
use clap::{Args, Subcommand};
use serde_json::value::RawValue;

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// The cherga server.
    #[arg(long, env = "CHERGA_URL", default_value = "http://127.0.0.1:7700")]
    server: String,
    /// Print the API's JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Bearer token for a server with authentication on (see `cherga token issue`).
    #[arg(long, env = "CHERGA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Trust this CA certificate (PEM) for an https server, besides the system's.
    #[arg(long, env = "CHERGA_CA_CERT", value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
}

impl ServerArgs {
    pub(crate) fn client(&self) -> Result<Client> {
        let mut http = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(5));
        if let Some(token) = &self.token {
            let mut value = reqwest::header::HeaderValue::try_from(format!("Bearer {}", token.trim()))
                .map_err(|_| anyhow::anyhow!("--token / CHERGA_TOKEN is not a valid header value"))?;
            value.set_sensitive(true);
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, value);
            http = http.default_headers(headers);
        }
        if let Some(path) = &self.ca_cert {
            let pem = std::fs::read(path).with_context(|| format!("reading --ca-cert {}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("--ca-cert {} is not a PEM certificate", path.display()))?;
            http = http.add_root_certificate(cert);
        }
        let http = http.build().context("building the HTTP client")?;
        Client::with_http_client(&self.server, http).with_context(|| format!("--server {:?}", self.server))
    }
}

/// An error that ends the command with its own exit status (not the usual 1),
/// such as `cherga lease` finding nothing to lease.
#[derive(Debug)]
pub struct Exit {
    pub status: u8,
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

#[derive(Args, Debug)]
pub struct EnqueueArgs {
    /// The queue.
    queue: String,
    /// The task kind the worker dispatches on.
    #[arg(long)]
    kind: String,
    /// The payload, as JSON.
    #[arg(long, default_value = "null")]
    payload: String,
    /// Idempotency key: the same key again returns the same task.
    #[arg(long)]
    key: Option<String>,
    /// Ordering group: tasks of a group run one at a time, in order.
    #[arg(long)]
    group: Option<String>,
    /// Run no sooner than this from now, e.g. `5s`, `10m`.
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Option<std::time::Duration>,
    /// Higher runs first.
    #[arg(long, default_value_t = 0)]
    priority: i32,
    /// Most deliveries before the task is dead (default: the queue's).
    #[arg(long)]
    max_attempts: Option<u32>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args, Debug)]
pub struct QueuesArgs {
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// Shows one task with its result.
    Get {
        /// The task id.
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub async fn enqueue(args: EnqueueArgs) -> Result<()> {
    let payload = RawValue::from_string(args.payload.clone())
        .with_context(|| format!("--payload is not JSON: {}", args.payload))?;
    let request = EnqueueRequest {
        kind: args.kind,
        payload: Some(payload),
        priority: args.priority,
        run_at: None,
        delay_ms: args.delay.map(|d| d.as_millis() as i64),
        idempotency_key: None,
        group: args.group,
        max_attempts: args.max_attempts,
    };
    let enqueued = args.server.client()?.enqueue(&args.queue, &request, args.key.as_deref()).await?;
    if args.server.json {
        println!("{}", serde_json::to_string_pretty(&enqueued.task)?);
    } else {
        let verb = if enqueued.replayed { "already enqueued" } else { "enqueued" };
        println!("{verb} {} ({}, {})", enqueued.task.id, enqueued.task.kind, enqueued.task.state);
    }
    Ok(())
}

/// `GET /healthz`: succeeds when the server answers that it is up. A container's
/// health check, where there is no `curl` (the image is `FROM scratch`).
pub async fn health(args: HealthArgs) -> Result<()> {
    let health = args.server.client()?.health().await?;
    if args.server.json {
        println!("{}", serde_json::json!({"status": health.status}));
    } else {
        println!("{}", health.status);
    }
    Ok(())
}

pub async fn queues(args: QueuesArgs) -> Result<()> {
    let list = args.server.client()?.queues().await?;
    if args.server.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    print!("{}", queue_table(&list.queues));
    Ok(())
}

fn queue_table(queues: &[QueueView]) -> String {
    let mut out = format!(
        "{:<24} {:>9} {:>9} {:>9} {:>10} {:>9} {:>10}\n",
        "QUEUE", "SCHEDULED", "READY", "RUNNING", "SUCCEEDED", "DEAD", "CANCELLED"
    );
    for q in queues {
        let c = &q.counts;
        let paused = if q.settings.paused { " (paused)" } else { "" };
        out.push_str(&format!(
            "{:<24} {:>9} {:>9} {:>9} {:>10} {:>9} {:>10}{paused}\n",
            q.name, c.scheduled, c.ready, c.running, c.succeeded, c.dead, c.cancelled
        ));
    }
    if queues.is_empty() {
        out.push_str("(no queues yet)\n");
    }
    out
}

pub async fn task(command: TaskCommand) -> Result<()> {
    match command {
        TaskCommand::Get { id, server } => {
            let task = server.client()?.get_task(&id).await?;
            if server.json {
                println!("{}", serde_json::to_string_pretty(&task)?);
            } else {
                print!("{}", task_text(&task));
            }
        }
    }
    Ok(())
}

fn task_text(t: &TaskView) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<16}{v}\n"));
    line("id", t.id.clone());
    line("queue", t.queue.clone());
    line("kind", t.kind.clone());
    line("state", t.state.clone());
    line("attempts", format!("{} of {}", t.attempts, t.max_attempts));
    line("priority", t.priority.to_string());
    line("run_at", t.run_at.to_rfc3339());
    if let Some(g) = &t.group {
        line("group", g.clone());
    }
    if let Some(k) = &t.idempotency_key {
        line("idempotency_key", k.clone());
    }
    line("payload", t.payload.get().to_owned());
    if let Some(r) = &t.result {
        line("result", r.get().to_owned());
    }
    if let Some(e) = &t.last_error {
        line("last_error", e.clone());
    }
    if let Some(at) = t.lease_expires_at {
        line("lease_expires", at.to_rfc3339());
    }
    line("created_at", t.created_at.to_rfc3339());
    if let Some(at) = t.finished_at {
        line("finished_at", at.to_rfc3339());
    }
    out
}
