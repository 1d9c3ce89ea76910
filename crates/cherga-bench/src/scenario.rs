//! The scenarios, written once against [`Broker`] and run for every system.
//!
//! - **S1 enqueue**: closed-loop producers enqueue N tasks; latency per request.
//!   Afterwards an unmeasured drain checks that all N are there.
//! - **S2 drain**: N tasks are enqueued (unmeasured), then workers lease and ack
//!   them; latency per lease + ack cycle.
//! - **S3 steady state**: workers run while producers enqueue at a fixed rate on
//!   a schedule (open loop); latency from each task's *scheduled* enqueue time
//!   to its arrival at a worker, so a stalled producer cannot hide queueing
//!   (coordinated omission is corrected by construction, as in wrk2).
//! - **S4 bulk**: a large number of tasks, each with its own payload, enqueued in
//!   batches and then drained in batches; two measurements.
//!
//! **Invariant:** connections are opened, and queues created, before a measured
//! phase starts; server counters are read right before and after it. Every run
//! ends with a [`Check`] built from the sequence numbers actually consumed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::future::try_join_all;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use crate::payload::{self, Stamp};
use crate::procfs::{self, Counters};
use crate::stats::{self, Percentiles};
use crate::systems::{Broker, Consumer, Producer};
use crate::tally::{Check, Tally};

/// Workers and batch of the unmeasured drains that check S1 runs, and of the
/// unmeasured fills before S2.
const HELPER_CONNECTIONS: usize = 4;
const HELPER_BATCH: usize = 100;
/// How long a drain's lease waits for a task before looking at the ledger again.
const DRAIN_WAIT: Duration = Duration::from_millis(200);
/// S3: producer connections and worker settings.
const STEADY_PRODUCERS: usize = 16;
const STEADY_WORKERS: usize = 4;
const STEADY_BATCH: usize = 10;
/// S4: connections and batch on both sides.
const BULK_CONNECTIONS: usize = 4;
const BULK_BATCH: usize = 100;

/// One thing to run; a job yields one measurement, or two for [`Job::Bulk`].
#[derive(Clone, Debug, PartialEq)]
pub enum Job {
    Enqueue { clients: usize, batch: usize },
    Drain { workers: usize, batch: usize },
    Steady { rate: u64, seconds: f64 },
    Bulk,
}

impl Job {
    /// (row id, scenario, title, what the latency measures) of each measurement.
    pub fn rows(&self) -> Vec<(String, &'static str, String, &'static str)> {
        match *self {
            Job::Enqueue { clients, batch } => vec![(
                format!("S1-b{batch}-c{clients}"),
                "S1",
                format!("enqueue, batch {batch}, {clients} client{}", plural(clients)),
                "per request",
            )],
            Job::Drain { workers, batch } => vec![(
                format!("S2-b{batch}-w{workers}"),
                "S2",
                format!("drain, batch {batch}, {workers} worker{}", plural(workers)),
                "per lease + ack",
            )],
            Job::Steady { rate, seconds } => vec![(
                format!("S3-r{rate}"),
                "S3",
                format!("steady {rate}/s for {seconds} s, {STEADY_WORKERS} workers"),
                "scheduled enqueue → worker",
            )],
            Job::Bulk => vec![
                ("S4-enqueue".into(), "S4", format!("bulk enqueue, batch {BULK_BATCH}"), "per request"),
                ("S4-drain".into(), "S4", format!("bulk drain, batch {BULK_BATCH}"), "per lease + ack"),
            ],
        }
    }

    /// Whether the job needs consumers (the null endpoint has none).
    pub fn consumes(&self) -> bool {
        !matches!(self, Job::Enqueue { .. })
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// What one measured phase produced.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Measured {
    pub tasks: u64,
    pub seconds: f64,
    pub tasks_per_second: f64,
    pub latency: Percentiles,
    /// CPU-seconds of the server's process tree during the phase.
    pub server_cpu_seconds: Option<f64>,
    /// Disk flushes completed on the machine during the phase.
    pub device_flushes: Option<u64>,
    /// Peak resident memory of the server's process tree, reset before the phase.
    pub peak_rss_kib: Option<u64>,
    pub check: Check,
    /// `consumed` when the check counted consumed tasks; `answered` when the system
    /// stores nothing (null endpoint) and the check counted acknowledged enqueues.
    pub checked_by: String,
}

/// How to run jobs against one system.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The server's pid, for CPU and memory; `None` leaves them unmeasured.
    pub pid: Option<i32>,
    /// False for the null endpoint: nothing to drain.
    pub stores: bool,
    /// Limit of each phase.
    pub phase_timeout: Duration,
    /// A drain that receives nothing for this long gives up: the rest is lost.
    pub idle_timeout: Duration,
    /// Workers ack in a request of their own, never with their next lease.
    pub separate_acks: bool,
}

static QUEUE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A queue name no earlier run used: lower case, digits and `_`, valid as a
/// cherga queue, a RabbitMQ queue, a JetStream stream, a Redis key and a
/// PostgreSQL table.
pub fn fresh_queue_name() -> String {
    let n = QUEUE_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("bench_{}_{:x}_{n}", std::process::id(), fastrand::u32(..))
}

/// Runs `job` with `n_tasks` tasks on a fresh queue, then deletes the queue.
///
/// # Errors
/// When the system fails, a phase times out, or a connection cannot be opened.
/// Lost tasks are not an error: they are in the returned checks.
pub async fn run<B: Broker>(
    broker: &B,
    job: &Job,
    n_tasks: u64,
    settings: &Settings,
) -> Result<Vec<Measured>> {
    let queue = fresh_queue_name();
    broker.create_queue(&queue).await.context("creating the queue")?;
    let outcome = match *job {
        Job::Enqueue { clients, batch } => {
            enqueue_job(broker, &queue, clients, batch, n_tasks, settings).await
        }
        Job::Drain { workers, batch } => drain_job(broker, &queue, workers, batch, n_tasks, settings).await,
        Job::Steady { rate, seconds } => steady_job(broker, &queue, rate, seconds, settings).await,
        Job::Bulk => bulk_job(broker, &queue, n_tasks, settings).await,
    };
    // Deleting is best effort: the outcome matters more than a leftover queue.
    let _ = tokio::time::timeout(Duration::from_secs(60), broker.delete_queue(&queue)).await;
    outcome
}

/// Enqueues and drains `n_tasks` tasks without measuring, so that connections,
/// caches and files are warm before the first measured run.
///
/// # Errors
/// As [`run`].
pub async fn warm_up<B: Broker>(broker: &B, n_tasks: u64, settings: &Settings) -> Result<()> {
    if n_tasks == 0 {
        return Ok(());
    }
    let queue = fresh_queue_name();
    broker.create_queue(&queue).await?;
    let outcome = async {
        let producers = open_producers(broker, &queue, 8).await?;
        timed(settings, enqueue_closed_loop(producers, n_tasks, 1)).await?;
        if settings.stores {
            let consumers = open_consumers(broker, &queue, HELPER_CONNECTIONS, 1).await?;
            let tally = Arc::new(Tally::new(n_tasks));
            timed(
                settings,
                drain(consumers, tally, Latency::Cycle, settings.idle_timeout, !settings.separate_acks),
            )
            .await?;
        }
        Ok(())
    }
    .await;
    let _ = broker.delete_queue(&queue).await;
    outcome
}

async fn timed<T>(settings: &Settings, phase: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(settings.phase_timeout, phase).await {
        Ok(outcome) => outcome,
        Err(_) => bail!("the phase took longer than {:?}", settings.phase_timeout),
    }
}

/// Server counters around a measured phase.
struct Probe {
    pid: Option<i32>,
    before: Counters,
}

/// What a [`Probe`] read over its phase.
struct Reading {
    cpu_seconds: Option<f64>,
    flushes: Option<u64>,
    peak_rss_kib: Option<u64>,
}

impl Probe {
    /// Resets the server's memory peak and reads its counters.
    fn start(pid: Option<i32>) -> Self {
        if let Some(pid) = pid {
            procfs::reset_peak_rss(pid);
        }
        Self { pid, before: Counters::read(pid) }
    }

    fn stop(&self) -> Reading {
        let (cpu_seconds, flushes) = self.before.until(&Counters::read(self.pid));
        Reading { cpu_seconds, flushes, peak_rss_kib: self.pid.and_then(procfs::tree_peak_rss_kib) }
    }
}

fn measured(
    reading: Reading,
    tasks: u64,
    elapsed: Duration,
    histogram: &Histogram<u64>,
    check: Check,
    checked_by: &str,
) -> Measured {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    Measured {
        tasks,
        seconds,
        tasks_per_second: tasks as f64 / seconds,
        latency: Percentiles::of(histogram),
        server_cpu_seconds: reading.cpu_seconds,
        device_flushes: reading.flushes,
        peak_rss_kib: reading.peak_rss_kib,
        check,
        checked_by: checked_by.to_owned(),
    }
}

async fn enqueue_job<B: Broker>(
    broker: &B,
    queue: &str,
    clients: usize,
    batch: usize,
    n_tasks: u64,
    settings: &Settings,
) -> Result<Vec<Measured>> {
    let producers = open_producers(broker, queue, clients).await?;
    let probe = Probe::start(settings.pid);
    let (histogram, elapsed) = timed(settings, enqueue_closed_loop(producers, n_tasks, batch)).await?;
    let reading = probe.stop();
    if !settings.stores {
        // Nothing to consume: every enqueue was answered with 201, which
        // `enqueue_closed_loop` checked by returning at all.
        let check = Check { expected: n_tasks, distinct: n_tasks, duplicates: 0, lost: 0, strangers: 0 };
        return Ok(vec![measured(reading, n_tasks, elapsed, &histogram, check, "answered")]);
    }
    // The check drains outside the measured phase.
    let tally = Arc::new(Tally::new(n_tasks));
    let consumers = open_consumers(broker, queue, HELPER_CONNECTIONS, HELPER_BATCH).await?;
    timed(
        settings,
        drain(consumers, tally.clone(), Latency::Cycle, settings.idle_timeout, !settings.separate_acks),
    )
    .await?;
    Ok(vec![measured(reading, n_tasks, elapsed, &histogram, tally.check(), "consumed")])
}

async fn drain_job<B: Broker>(
    broker: &B,
    queue: &str,
    workers: usize,
    batch: usize,
    n_tasks: u64,
    settings: &Settings,
) -> Result<Vec<Measured>> {
    let producers = open_producers(broker, queue, HELPER_CONNECTIONS).await?;
    timed(settings, enqueue_closed_loop(producers, n_tasks, HELPER_BATCH))
        .await
        .context("filling the queue")?;
    let consumers = open_consumers(broker, queue, workers, batch).await?;
    let tally = Arc::new(Tally::new(n_tasks));
    let probe = Probe::start(settings.pid);
    let started = Instant::now();
    let (histogram, end) = timed(
        settings,
        drain(consumers, tally.clone(), Latency::Cycle, settings.idle_timeout, !settings.separate_acks),
    )
    .await?;
    let check = tally.check();
    Ok(vec![measured(
        probe.stop(),
        check.distinct,
        end.saturating_duration_since(started),
        &histogram,
        check,
        "consumed",
    )])
}

async fn steady_job<B: Broker>(
    broker: &B,
    queue: &str,
    rate: u64,
    seconds: f64,
    settings: &Settings,
) -> Result<Vec<Measured>> {
    if rate == 0 {
        bail!("a steady rate must be positive");
    }
    let n_tasks = ((rate as f64 * seconds).round() as u64).max(1);
    let producers = open_producers(broker, queue, STEADY_PRODUCERS).await?;
    let consumers = open_consumers(broker, queue, STEADY_WORKERS, STEADY_BATCH).await?;
    let tally = Arc::new(Tally::new(n_tasks));
    let probe = Probe::start(settings.pid);
    // Workers first, so that the first task finds them waiting.
    let mut draining = tokio::spawn(drain(
        consumers,
        tally.clone(),
        Latency::EndToEnd,
        settings.idle_timeout,
        !settings.separate_acks,
    ));
    let start = Instant::now() + Duration::from_millis(20);
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let outcome = timed(settings, async {
        enqueue_open_loop(producers, n_tasks, start, interval).await?;
        (&mut draining).await.context("the workers panicked")?
    })
    .await;
    if outcome.is_err() {
        draining.abort();
    }
    let (histogram, end) = outcome?;
    let check = tally.check();
    let elapsed = end.saturating_duration_since(start);
    Ok(vec![measured(probe.stop(), check.distinct, elapsed, &histogram, check, "consumed")])
}

async fn bulk_job<B: Broker>(
    broker: &B,
    queue: &str,
    n_tasks: u64,
    settings: &Settings,
) -> Result<Vec<Measured>> {
    let producers = open_producers(broker, queue, BULK_CONNECTIONS).await?;
    let probe = Probe::start(settings.pid);
    let (enqueue_histogram, enqueue_elapsed) =
        timed(settings, enqueue_closed_loop(producers, n_tasks, BULK_BATCH)).await?;
    let enqueue_reading = probe.stop();
    let consumers = open_consumers(broker, queue, BULK_CONNECTIONS, BULK_BATCH).await?;
    let tally = Arc::new(Tally::new(n_tasks));
    let probe = Probe::start(settings.pid);
    let started = Instant::now();
    let (drain_histogram, end) = timed(
        settings,
        drain(consumers, tally.clone(), Latency::Cycle, settings.idle_timeout, !settings.separate_acks),
    )
    .await?;
    let check = tally.check();
    Ok(vec![
        measured(enqueue_reading, n_tasks, enqueue_elapsed, &enqueue_histogram, check, "consumed"),
        measured(
            probe.stop(),
            check.distinct,
            end.saturating_duration_since(started),
            &drain_histogram,
            check,
            "consumed",
        ),
    ])
}

async fn open_producers<B: Broker>(broker: &B, queue: &str, n: usize) -> Result<Vec<B::Producer>> {
    try_join_all((0..n).map(|_| broker.producer(queue))).await.context("opening producer connections")
}

async fn open_consumers<B: Broker>(
    broker: &B,
    queue: &str,
    n: usize,
    batch: usize,
) -> Result<Vec<B::Consumer>> {
    try_join_all((0..n).map(|w| broker.consumer(queue, w, batch)))
        .await
        .context("opening consumer connections")
}

/// Closed loop: each producer enqueues the next `batch` sequence numbers as soon
/// as its previous request was answered, until `n_tasks` were enqueued. Returns
/// the per-request latencies and the elapsed time.
async fn enqueue_closed_loop<P: Producer>(
    producers: Vec<P>,
    n_tasks: u64,
    batch: usize,
) -> Result<(Histogram<u64>, Duration)> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for mut producer in producers {
        let next = next.clone();
        set.spawn(async move {
            let mut histogram = stats::histogram();
            let mut payloads: Vec<Vec<u8>> = Vec::new();
            loop {
                let first = next.fetch_add(batch as u64, Ordering::Relaxed);
                if first >= n_tasks {
                    return Ok::<_, anyhow::Error>(histogram);
                }
                let count = (batch as u64).min(n_tasks - first) as usize;
                payloads.resize_with(count, Vec::new);
                let sent = Instant::now();
                let at_ns = payload::ns_since_anchor(sent);
                for (i, buffer) in payloads.iter_mut().enumerate() {
                    payload::make(first + i as u64, at_ns, buffer);
                }
                producer.enqueue(&payloads).await?;
                stats::record(&mut histogram, sent.elapsed().as_micros() as u64);
            }
        });
    }
    let histogram = join_histograms(set).await?;
    Ok((histogram, started.elapsed()))
}

/// Open loop: task `i` is due at `start + i × interval`; a free producer sleeps
/// until it is due and sends it, stamped with its due time.
async fn enqueue_open_loop<P: Producer>(
    producers: Vec<P>,
    n_tasks: u64,
    start: Instant,
    interval: Duration,
) -> Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for mut producer in producers {
        let next = next.clone();
        set.spawn(async move {
            let mut payloads = vec![Vec::new()];
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= n_tasks {
                    return Ok::<_, anyhow::Error>(stats::histogram());
                }
                let due = start + interval.mul_f64(seq as f64);
                tokio::time::sleep_until(due.into()).await;
                payload::make(seq, payload::ns_since_anchor(due), &mut payloads[0]);
                producer.enqueue(&payloads).await?;
            }
        });
    }
    join_histograms(set).await.map(drop)
}

/// What a drain's latency histogram holds.
#[derive(Clone, Copy, Debug)]
enum Latency {
    /// Each round of a worker: from sending its lease (which carries the acks of
    /// the previous round's tasks, `Consumer::ack_and_lease`) to its answer, or,
    /// when the round's tasks are acked on their own, to the ack's answer.
    Cycle,
    /// Each task, from its stamped enqueue time to its arrival at a worker.
    EndToEnd,
}

/// Runs the consumers until every expected task was consumed, or none arrived for
/// `idle_timeout`. Returns the latencies and when the last missing task was
/// acknowledged (or when the drain gave up).
async fn drain<C: Consumer>(
    consumers: Vec<C>,
    tally: Arc<Tally>,
    latency: Latency,
    idle_timeout: Duration,
    ack_with_lease: bool,
) -> Result<(Histogram<u64>, Instant)> {
    let last_progress = Arc::new(AtomicU64::new(payload::ns_since_anchor(Instant::now())));
    let mut set = JoinSet::new();
    for mut consumer in consumers {
        let (tally, last_progress) = (tally.clone(), last_progress.clone());
        set.spawn(async move {
            let mut histogram = stats::histogram();
            let mut stamps: Vec<Stamp> = Vec::new();
            // Taken by the last lease and not yet acknowledged: the next lease
            // carries their acks (`Consumer::ack_and_lease`).
            let mut held: Vec<Stamp> = Vec::new();
            while !tally.is_complete() {
                stamps.clear();
                let sent = Instant::now();
                if held.is_empty() {
                    consumer.lease(DRAIN_WAIT, &mut stamps).await?;
                } else {
                    consumer.ack_and_lease(&mut stamps).await?;
                    for s in held.drain(..) {
                        tally.record(s.seq);
                    }
                }
                let now = Instant::now();
                if stamps.is_empty() {
                    let idle_ns =
                        payload::ns_since_anchor(now).saturating_sub(last_progress.load(Ordering::Relaxed));
                    if Duration::from_nanos(idle_ns) >= idle_timeout {
                        break;
                    }
                    continue;
                }
                last_progress.fetch_max(payload::ns_since_anchor(now), Ordering::Relaxed);
                if let Latency::EndToEnd = latency {
                    let now_ns = payload::ns_since_anchor(now);
                    for s in &stamps {
                        stats::record(&mut histogram, now_ns.saturating_sub(s.at_ns) / 1000);
                    }
                }
                // Every task has been handed out: nothing would come with a later
                // lease, so these are acknowledged at once (as all are with
                // `--separate-acks`).
                let ack_now = tally.taken(stamps.len()) || !ack_with_lease;
                if ack_now {
                    consumer.ack().await?;
                }
                if let Latency::Cycle = latency {
                    // One round: the acks of the previous tasks with the lease of
                    // these, or the lease of these and their own acks.
                    stats::record(&mut histogram, sent.elapsed().as_micros() as u64);
                }
                if ack_now {
                    for s in &stamps {
                        tally.record(s.seq);
                    }
                } else {
                    std::mem::swap(&mut held, &mut stamps);
                }
            }
            if !held.is_empty() {
                consumer.ack().await?;
                for s in &held {
                    tally.record(s.seq);
                }
            }
            Ok::<_, anyhow::Error>(histogram)
        });
    }
    let histogram = join_histograms(set).await?;
    Ok((histogram, tally.completed_at().unwrap_or_else(Instant::now)))
}

/// Waits for every worker; the first error stops the others.
async fn join_histograms(mut set: JoinSet<Result<Histogram<u64>>>) -> Result<Histogram<u64>> {
    let mut histograms = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(h)) => histograms.push(h),
            Ok(Err(error)) => {
                set.abort_all();
                return Err(error);
            }
            Err(join_error) => {
                set.abort_all();
                bail!("a worker panicked: {join_error}");
            }
        }
    }
    stats::merge(histograms)
}
