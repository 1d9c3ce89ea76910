//! `cherga import` and `cherga export`: tasks in and out of a queue as NDJSON,
//! one JSON object per line.
//!
//! Import sends batches (`POST /v1/queues/{queue}/tasks/batch`) and is
//! resumable: every task it creates carries an idempotency key, so running it
//! again over the same file (after a crash, a cut connection, or to be sure)
//! creates nothing new. The key of a line is, in order: the value of
//! `--key-field`; the line's own `idempotency_key` (an exported task has it);
//! else `import:<line number>:<hash of the line>`, which stays the same for an
//! unchanged line of the file wherever the file lies. Keys are remembered for
//! the queue's dedup window (`cherga queue set --dedup-window`), so a re-run
//! must come within it.
//!
//! Export pages through the queue with the list cursor and writes each task as
//! the API shows it; an exported file imports as it is.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cherga_client::api::{EnqueueBatchRequest, EnqueueRequest, ListQuery, MAX_BATCH};
use cherga_client::{Client, Error};
use clap::Args;
use serde_json::value::RawValue;

use super::ServerArgs;
use super::progress::Progress;

/// The fields of a line that make the task; an exported task's other fields
/// (`id`, `state`, `attempts`...) are left out.
const TASK_FIELDS: [&str; 8] =
    ["kind", "payload", "priority", "run_at", "delay_ms", "idempotency_key", "group", "max_attempts"];
/// Tries of one batch that fails for a transient reason.
const BATCH_TRIES: u32 = 5;

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The NDJSON file: one task a line, an object with `kind` and optionally
    /// `payload`, `priority`, `run_at`, `delay_ms`, `idempotency_key`, `group`,
    /// `max_attempts` (an exported file is such a file); with `--kind`, each line
    /// is the payload.
    file: PathBuf,
    /// The queue to enqueue into.
    #[arg(long)]
    queue: String,
    /// Every line is the payload of a task of this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Take each task's idempotency key from this field of the line (or of its
    /// payload); a string or a number.
    #[arg(long, value_name = "FIELD")]
    key_field: Option<String>,
    /// Tasks per request (1 to 1000).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The queue to export.
    #[arg(long)]
    queue: String,
    /// Only tasks in this state.
    #[arg(long)]
    state: Option<String>,
    /// Write to this file instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
    #[command(flatten)]
    server: ServerArgs,
}

/// What an import did, per line of the file.
#[derive(Debug, Default)]
struct Imported {
    lines: u64,
    created: u64,
    /// Lines whose task existed already (an earlier run made it).
    existing: u64,
    failed: u64,
}

impl Imported {
    fn text(&self) -> String {
        format!(
            "{} lines: {} created, {} already there, {} failed",
            self.lines, self.created, self.existing, self.failed
        )
    }
}

/// One task read from the file, with the line it came from.
struct Line {
    number: u64,
    request: EnqueueRequest,
}

pub async fn import(args: ImportArgs) -> Result<()> {
    if !(1..=MAX_BATCH).contains(&args.batch) {
        bail!("--batch must be between 1 and {MAX_BATCH}");
    }
    let file = std::fs::File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
    let size = file.metadata().map(|m| m.len()).ok();
    let client = args.server.client()?;
    let mut progress = Progress::new("import", size, true);
    let mut imported = Imported::default();
    let mut batch = Vec::with_capacity(args.batch);
    let mut read_bytes = 0u64;
    let mut reader = BufReader::new(file);
    let mut text = String::new();
    let mut number = 0u64;
    loop {
        text.clear();
        let n = reader.read_line(&mut text).with_context(|| format!("reading {}", args.file.display()))?;
        if n == 0 {
            break;
        }
        number += 1;
        read_bytes += n as u64;
        let line = text.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        imported.lines += 1;
        match task_of_line(line, number, args.kind.as_deref(), args.key_field.as_deref()) {
            Ok(request) => batch.push(Line { number, request }),
            Err(reason) => {
                imported.failed += 1;
                eprintln!("line {number}: {reason}");
            }
        }
        if batch.len() == args.batch {
            send_batch(&client, &args.queue, &mut batch, &mut imported).await?;
            progress.set(read_bytes, &imported.text());
        }
    }
    send_batch(&client, &args.queue, &mut batch, &mut imported).await?;
    progress.set(read_bytes, &imported.text());
    progress.finish(&imported.text());
    if args.server.json {
        let Imported { lines, created, existing, failed } = imported;
        println!(
            "{}",
            serde_json::json!({ "lines": lines, "created": created, "existing": existing, "failed": failed })
        );
    } else {
        println!("{}", imported.text());
    }
    if imported.failed > 0 {
        bail!("{} line(s) of {} were not imported (see above)", imported.failed, args.file.display());
    }
    Ok(())
}

/// Sends the batch (retrying transient failures: the keys make that safe) and
/// empties it.
async fn send_batch(
    client: &Client,
    queue: &str,
    batch: &mut Vec<Line>,
    imported: &mut Imported,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let request = EnqueueBatchRequest { tasks: batch.iter().map(|line| line.request.clone()).collect() };
    let mut wait = Duration::from_millis(200);
    let mut tries = 0;
    let answer = loop {
        tries += 1;
        match client.enqueue_batch(queue, &request).await {
            Ok(answer) => break answer,
            Err(error) if error.is_transient() && tries < BATCH_TRIES => {
                eprintln!("a batch failed ({}); trying again in {wait:?}", anyhow::Error::from(error));
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(error) => return Err(batch_error(error, batch)),
        }
    };
    for (line, item) in batch.iter().zip(&answer.results) {
        match (item.status, &item.error) {
            (201, _) => imported.created += 1,
            (200, _) => imported.existing += 1,
            (status, error) => {
                imported.failed += 1;
                let reason =
                    error.as_ref().map_or_else(String::new, |e| format!("{}: {}", e.code, e.message));
                eprintln!("line {}: refused ({status}) {reason}", line.number);
            }
        }
    }
    batch.clear();
    Ok(())
}

fn batch_error(error: Error, batch: &[Line]) -> anyhow::Error {
    let (first, last) = (batch.first().map_or(0, |l| l.number), batch.last().map_or(0, |l| l.number));
    anyhow::Error::from(error).context(format!(
        "sending lines {first} to {last}; run the same import again to resume (the lines sent already create nothing new)"
    ))
}

/// The enqueue request of one line of the file, or why there is none.
fn task_of_line(
    line: &str,
    number: u64,
    kind: Option<&str>,
    key_field: Option<&str>,
) -> Result<EnqueueRequest, String> {
    let fields: Option<HashMap<String, Box<RawValue>>> = serde_json::from_str(line).ok();
    let mut request = match kind {
        Some(kind) => {
            let payload = RawValue::from_string(line.to_owned()).map_err(|e| format!("not JSON: {e}"))?;
            EnqueueRequest {
                kind: kind.to_owned(),
                payload: Some(payload),
                priority: 0,
                run_at: None,
                delay_ms: None,
                idempotency_key: None,
                group: None,
                max_attempts: None,
            }
        }
        None => {
            let Some(fields) = &fields else {
                return Err("not a JSON object (give --kind to take each line as a payload)".to_owned());
            };
            let picked: HashMap<&str, &RawValue> = TASK_FIELDS
                .iter()
                .filter_map(|name| fields.get(*name).map(|value| (*name, value.as_ref())))
                .collect();
            let json = serde_json::to_string(&picked).map_err(|e| e.to_string())?;
            serde_json::from_str(&json).map_err(|e| format!("not a task: {e}"))?
        }
    };
    if let Some(field) = key_field {
        let key = fields
            .as_ref()
            .and_then(|f| {
                key_in(f, field).or_else(|| f.get("payload").and_then(|p| key_in_payload(p, field)))
            })
            .ok_or_else(|| format!("--key-field {field:?}: no such string or number field"))?;
        request.idempotency_key = Some(key);
    } else if request.idempotency_key.is_none() {
        request.idempotency_key = Some(format!("import:{number}:{:016x}", fnv1a(line.as_bytes())));
    }
    Ok(request)
}

fn key_in(fields: &HashMap<String, Box<RawValue>>, field: &str) -> Option<String> {
    match serde_json::from_str::<serde_json::Value>(fields.get(field)?.get()).ok()? {
        serde_json::Value::String(text) => Some(text),
        serde_json::Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

fn key_in_payload(payload: &RawValue, field: &str) -> Option<String> {
    let fields: HashMap<String, Box<RawValue>> = serde_json::from_str(payload.get()).ok()?;
    key_in(&fields, field)
}

/// FNV-1a, 64 bits: a stable hash (the standard library's may change between
/// releases, and keys must survive an upgrade between two runs).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

pub async fn export(args: ExportArgs) -> Result<()> {
    let client = args.server.client()?;
    let counts = client.queue(&args.queue).await?.counts;
    let total = match args.state.as_deref() {
        None | Some("") => {
            counts.scheduled
                + counts.ready
                + counts.running
                + counts.succeeded
                + counts.dead
                + counts.cancelled
        }
        Some("scheduled") => counts.scheduled,
        Some("ready") => counts.ready,
        Some("running") => counts.running,
        Some("succeeded") => counts.succeeded,
        Some("dead") => counts.dead,
        Some("cancelled") => counts.cancelled,
        Some(other) => {
            bail!("--state {other:?} is not a state (scheduled, ready, running, succeeded, dead, cancelled)")
        }
    };
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    // The total is the count when the export started; tasks come and go meanwhile.
    let mut progress = Progress::new("export", Some(total), false);
    let mut query = ListQuery { state: args.state.clone(), limit: Some(MAX_BATCH), ..ListQuery::default() };
    let mut exported = 0u64;
    loop {
        let page = client.list_tasks(&args.queue, &query).await?;
        for task in &page.tasks {
            serde_json::to_writer(&mut out, task)?;
            out.write_all(b"\n")?;
        }
        exported += page.tasks.len() as u64;
        progress.set(exported, &format!("{exported} tasks"));
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    out.flush().context("writing the export")?;
    drop(out);
    progress.finish(&format!("{exported} tasks"));
    let summary = if args.server.json {
        serde_json::json!({ "queue": args.queue, "tasks": exported }).to_string()
    } else {
        format!("exported {exported} tasks of queue {}", args.queue)
    };
    // With the tasks on stdout, the summary goes to stderr.
    if args.output.is_some() {
        println!("{summary}");
    } else {
        eprintln!("{summary}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_becomes_a_task_with_a_stable_key() {
        let line = r#"{"kind":"send","payload":{"to":"a@b","n":7},"priority":3,"id":"x","state":"dead"}"#;
        let request = task_of_line(line, 4, None, None).expect("a task");
        assert_eq!(request.kind, "send");
        assert_eq!(request.payload.as_ref().map(|p| p.get()), Some(r#"{"to":"a@b","n":7}"#));
        assert_eq!(request.priority, 3);
        let key = request.idempotency_key.clone().expect("a derived key");
        assert!(key.starts_with("import:4:"), "{key}");
        assert_eq!(task_of_line(line, 4, None, None).unwrap().idempotency_key, Some(key.clone()));
        assert_ne!(task_of_line(line, 5, None, None).unwrap().idempotency_key, Some(key));
    }

    #[test]
    fn keys_come_from_the_key_field_the_payload_or_the_line() {
        let line = r#"{"kind":"send","payload":{"order":17},"idempotency_key":"own"}"#;
        assert_eq!(task_of_line(line, 1, None, None).unwrap().idempotency_key.as_deref(), Some("own"));
        assert_eq!(
            task_of_line(line, 1, None, Some("order")).unwrap().idempotency_key.as_deref(),
            Some("17")
        );
        let payload = r#"{"order":"o-1"}"#;
        let request = task_of_line(payload, 1, Some("charge"), Some("order")).unwrap();
        assert_eq!((request.kind.as_str(), request.idempotency_key.as_deref()), ("charge", Some("o-1")));
        assert!(task_of_line(payload, 1, Some("charge"), Some("nope")).unwrap_err().contains("nope"));
    }

    #[test]
    fn bad_lines_say_why() {
        assert!(task_of_line("[1,2]", 1, None, None).unwrap_err().contains("--kind"));
        assert!(task_of_line(r#"{"payload":1}"#, 1, None, None).unwrap_err().contains("kind"));
        assert!(task_of_line("{", 1, Some("k"), None).unwrap_err().contains("not JSON"));
    }
}
