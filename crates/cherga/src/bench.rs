//! `cherga bench`: enqueue → lease → ack against a running server, measuring
//! throughput and latency percentiles, and checking that every task enqueued was
//! consumed exactly once.

use anyhow::{Context, Result, bail};
use cherga_client::Client;
use cherga_client::api::{
    AckRequest, BatchAck, BatchAckRequest, EnqueueBatchRequest, EnqueueRequest, LeaseRequest,
};
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// The cherga server.
    #[arg(long, env = "CHERGA_URL", default_value = "http://127.0.0.1:7700")]
    server: String,
    /// Tasks to enqueue and drain.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Concurrent producers.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Concurrent consumers.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Tasks per enqueue request and per lease/ack (1 = single requests).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Size of each task's JSON payload in bytes.
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Latency percentiles in microseconds.
#[derive(Serialize, Debug)]
struct Latency {
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
}

impl From<&Histogram<u64>> for Latency {
    fn from(h: &Histogram<u64>) -> Self {
        Self {
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

#[derive(Serialize, Debug)]
struct Phase {
    tasks: usize,
    seconds: f64,
    tasks_per_second: f64,
    requests: u64,
    latency: Latency,
}

#[derive(Serialize, Debug)]
struct Report {
    server: String,
    tasks: usize,
    clients: usize,
    workers: usize,
    batch: usize,
    payload_bytes: usize,
    enqueue: Phase,
    drain: Phase,
    /// Distinct tasks consumed; must equal `tasks`.
    consumed: usize,
    /// Deliveries of a task already consumed; must be 0.
    duplicates: usize,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn payload(bytes: usize) -> serde_json::Value {
    // {"data":"xxx…"} is 11 bytes plus the x's.
    serde_json::json!({ "data": "x".repeat(bytes.saturating_sub(11)) })
}

pub async fn run(args: BenchArgs) -> Result<()> {
    if args.tasks == 0 || args.clients == 0 || args.workers == 0 || !(1..=1000).contains(&args.batch) {
        bail!("--tasks, --clients and --workers must be positive and --batch between 1 and 1000");
    }
    let client = Client::new(&args.server)?;
    client.health().await.with_context(|| format!("is cherga running at {}?", args.server))?;
    let queue = format!("bench-{:016x}", fastrand::u64(..));
    let enqueue = enqueue_phase(&client, &queue, &args).await?;
    let (drain, consumed, duplicates) = drain_phase(&client, &queue, &args).await?;
    let report = Report {
        server: args.server.clone(),
        tasks: args.tasks,
        clients: args.clients,
        workers: args.workers,
        batch: args.batch,
        payload_bytes: args.payload_bytes,
        enqueue,
        drain,
        consumed,
        duplicates,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    if consumed != args.tasks || duplicates != 0 {
        bail!("consumed {consumed} distinct tasks of {} with {duplicates} duplicates", args.tasks);
    }
    Ok(())
}

fn print_report(r: &Report) {
    println!(
        "cherga bench: {} tasks of {} B, batch {}, {} producers, {} consumers, {}",
        r.tasks, r.payload_bytes, r.batch, r.clients, r.workers, r.server
    );
    println!(
        "{:<9} {:>12} {:>10} {:>10} {:>10} {:>10}",
        "phase", "tasks/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for (name, p) in [("enqueue", &r.enqueue), ("drain", &r.drain)] {
        let ms = |us: u64| us as f64 / 1000.0;
        println!(
            "{:<9} {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            name,
            p.tasks_per_second,
            ms(p.latency.p50_us),
            ms(p.latency.p99_us),
            ms(p.latency.p999_us),
            ms(p.latency.max_us)
        );
    }
    println!("consumed {} distinct tasks, {} duplicates", r.consumed, r.duplicates);
    println!("(drain latency is per request: a lease, or an ack)");
}

async fn enqueue_phase(client: &Client, queue: &str, args: &BenchArgs) -> Result<Phase> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut producers = Vec::new();
    for _ in 0..args.clients {
        let (client, queue, next, args) = (client.clone(), queue.to_owned(), next.clone(), args.clone());
        producers.push(tokio::spawn(async move {
            let mut latencies = histogram();
            let body = payload(args.payload_bytes);
            loop {
                let first = next.fetch_add(args.batch, Ordering::Relaxed);
                if first >= args.tasks {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let n = args.batch.min(args.tasks - first);
                let sent = Instant::now();
                if args.batch == 1 {
                    let request = EnqueueRequest::new("bench", &body)?;
                    client.enqueue(&queue, &request, None).await?;
                } else {
                    let tasks =
                        (0..n).map(|_| EnqueueRequest::new("bench", &body)).collect::<Result<_, _>>()?;
                    let answer = client.enqueue_batch(&queue, &EnqueueBatchRequest { tasks }).await?;
                    if let Some(failed) = answer.results.iter().find(|r| r.status >= 300) {
                        bail!("batch item refused: {:?}", failed.error);
                    }
                }
                latencies.record(sent.elapsed().as_micros().max(1) as u64)?;
            }
        }));
    }
    let mut all = histogram();
    for p in producers {
        all.add(p.await??)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Phase {
        tasks: args.tasks,
        seconds,
        tasks_per_second: args.tasks as f64 / seconds,
        requests: all.len(),
        latency: (&all).into(),
    })
}

async fn drain_phase(client: &Client, queue: &str, args: &BenchArgs) -> Result<(Phase, usize, usize)> {
    let seen = Arc::new(Mutex::new(HashSet::with_capacity(args.tasks)));
    let duplicates = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut consumers = Vec::new();
    for w in 0..args.workers {
        let (client, queue, args) = (client.clone(), queue.to_owned(), args.clone());
        let (seen, duplicates) = (seen.clone(), duplicates.clone());
        consumers.push(tokio::spawn(async move {
            let mut latencies = histogram();
            let lease = LeaseRequest {
                max: Some(args.batch),
                wait_ms: Some(200),
                lease_ms: Some(60_000),
                worker: Some(format!("bench-{w}")),
                ..LeaseRequest::default()
            };
            loop {
                if seen.lock().expect("seen lock").len() >= args.tasks {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let sent = Instant::now();
                let leased = client.lease(&queue, &lease).await?.tasks;
                latencies.record(sent.elapsed().as_micros().max(1) as u64)?;
                if leased.is_empty() {
                    continue;
                }
                let sent = Instant::now();
                if leased.len() == 1 && args.batch == 1 {
                    let t = &leased[0];
                    let token = t.lease.as_ref().context("leased task without lease")?.token.clone();
                    client.ack(&t.id, &AckRequest { lease: token, result: None }).await?;
                } else {
                    let acks = leased
                        .iter()
                        .map(|t| {
                            let lease = t.lease.as_ref().context("leased task without lease")?.token.clone();
                            Ok(BatchAck { id: t.id.clone(), lease, result: None })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let answer = client.ack_batch(&BatchAckRequest { acks }).await?;
                    if let Some(failed) = answer.results.iter().find(|r| r.status >= 300) {
                        bail!("ack refused: {:?}", failed.error);
                    }
                }
                latencies.record(sent.elapsed().as_micros().max(1) as u64)?;
                let mut seen = seen.lock().expect("seen lock");
                for t in &leased {
                    if !seen.insert(t.id.clone()) {
                        duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let mut all = histogram();
    for c in consumers {
        all.add(tokio::time::timeout(Duration::from_secs(600), c).await.context("drain timed out")???)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let consumed = seen.lock().expect("seen lock").len();
    Ok((
        Phase {
            tasks: consumed,
            seconds,
            tasks_per_second: consumed as f64 / seconds,
            requests: all.len(),
            latency: (&all).into(),
        },
        consumed,
        duplicates.load(Ordering::Relaxed),
    ))
}
