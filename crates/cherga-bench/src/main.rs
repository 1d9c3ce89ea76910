//! `cherga-bench`: one Rust load generator that drives cherga and its durable
//! peers — RabbitMQ, NATS JetStream, Redis streams, PostgreSQL — through the same
//! scenarios, so that the client's language does not bias the comparison, and
//! writes the report as JSON, markdown and SVG.
//!
//! `bench/run.sh` starts the peers (bench/peers/*.sh), builds this binary and
//! runs `cherga-bench run`; see bench/README.md. The binary also serves the null
//! endpoint (`null-server`) and redraws a report from its JSON (`render`).
//!
//! **Boundary:** this crate speaks to cherga only over HTTP, like any client; it
//! shares nothing with the server but the wire types of `cherga-api`.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod fsync_probe;
mod null_server;
mod payload;
mod peers;
mod procfs;
mod report;
mod scenario;
mod stats;
mod svg;
mod systems;
mod tally;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::peers::{PeerFile, SYSTEMS, System};
use crate::report::{Cell, Options, Report, Row, fmt_count, fmt_sig};
use crate::scenario::{Job, Settings};

/// Side-by-side benchmark of cherga and durable peers.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs every scenario against every available system and writes the report.
    Run(Box<RunArgs>),
    /// Serves the null endpoint: cherga's HTTP stack without storage.
    NullServer {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7719")]
        addr: String,
    },
    /// Redraws the markdown and SVG of a saved JSON report.
    Render {
        /// The JSON report.
        json: PathBuf,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Smoke-test sizes (well under a minute): 1 run, 500 tasks, S3 at 500/s for
    /// 1 s, 2000 bulk tasks, 100 warm-up tasks. Explicit options below still win.
    #[arg(long)]
    quick: bool,
    /// Where the peer scripts wrote their `<system>.peer` files.
    #[arg(long, default_value = "target/bench/peers")]
    peers_dir: PathBuf,
    /// Where to write `<name>.json`, `<name>.md` and `<name>.svg`.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
    /// Base name of the report files [default: latest, or quick with --quick].
    #[arg(long)]
    name: Option<String>,
    /// Runs per cell; the report shows their median and min–max [default: 3].
    #[arg(long)]
    runs: Option<usize>,
    /// Runs per S4 cell [default: 1: S4 is long].
    #[arg(long)]
    bulk_runs: Option<usize>,
    /// Measured tasks per S1 and S2 run [default: 100000].
    #[arg(long)]
    tasks: Option<u64>,
    /// Tasks of the S4 bulk run [default: 2000000].
    #[arg(long)]
    bulk_tasks: Option<u64>,
    /// S3 rates in tasks per second, comma-separated [default: 1000,5000].
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<u64>>,
    /// Seconds each S3 rate runs [default: 10].
    #[arg(long)]
    rate_seconds: Option<f64>,
    /// Tasks enqueued and drained once per system before measuring [default: 5000].
    #[arg(long)]
    warmup: Option<u64>,
    /// Only these systems (cherga always runs), comma-separated keys:
    /// null, rabbitmq, nats, redis, postgres.
    #[arg(long, value_delimiter = ',')]
    systems: Option<Vec<String>>,
    /// Only these scenarios, comma-separated: S1, S2, S3, S4; or single cells by
    /// row id (`S1-b100-c4`, `S2-b100-w8`, `S3-r5000`, `S4-enqueue`; see the JSON report).
    #[arg(long, value_delimiter = ',')]
    scenarios: Option<Vec<String>>,
    /// Longest a measured phase may take, in seconds.
    #[arg(long, default_value_t = 1800)]
    phase_timeout: u64,
    /// A drain that receives nothing for this many seconds gives up; what is
    /// missing then counts as lost.
    #[arg(long, default_value_t = 20)]
    idle_timeout: u64,
    /// Workers ack in a request of their own instead of with their next lease
    /// (to compare with reports made before acks rode on leases).
    #[arg(long)]
    separate_acks: bool,
    /// Also fail when a peer lost tasks (by default only cherga's losses and
    /// failed runs fail the command; a peer's are reported).
    #[arg(long)]
    strict: bool,
    /// Directory for the fsync probe's file (use the disk the servers write to).
    #[arg(long, default_value = "target/bench")]
    fsync_dir: PathBuf,
}

/// `RunArgs` with every default filled in.
struct Plan {
    mode: &'static str,
    name: String,
    options: Options,
    systems: Option<Vec<String>>,
    scenarios: Vec<String>,
    settings: Settings,
    fsync_seconds: f64,
}

impl RunArgs {
    fn plan(self) -> Result<(Plan, PathBuf, PathBuf, PathBuf)> {
        let q = self.quick;
        let pick = |given: Option<u64>, quick: u64, full: u64| given.unwrap_or(if q { quick } else { full });
        let runs = self.runs.unwrap_or(if q { 1 } else { 3 });
        let options = Options {
            runs,
            bulk_runs: self.bulk_runs.unwrap_or(1),
            tasks: pick(self.tasks, 500, 100_000),
            bulk_tasks: pick(self.bulk_tasks, 2000, 2_000_000),
            rates: self.rates.unwrap_or_else(|| if q { vec![500] } else { vec![1000, 5000] }),
            rate_seconds: self.rate_seconds.unwrap_or(if q { 1.0 } else { 10.0 }),
            warmup_tasks: pick(self.warmup, 100, 5000),
            payload_bytes: payload::PAYLOAD_BYTES,
            separate_acks: self.separate_acks,
        };
        if options.runs == 0 || options.bulk_runs == 0 || options.tasks == 0 || options.bulk_tasks == 0 {
            bail!("--runs, --bulk-runs, --tasks and --bulk-tasks must be positive");
        }
        let scenarios = self
            .scenarios
            .unwrap_or_else(|| ["S1", "S2", "S3", "S4"].map(String::from).to_vec())
            .into_iter()
            .map(|s| s.to_ascii_uppercase())
            .collect();
        let plan = Plan {
            mode: if q { "quick" } else { "full" },
            name: self.name.unwrap_or_else(|| if q { "quick".into() } else { "latest".into() }),
            options,
            systems: self.systems,
            scenarios,
            settings: Settings {
                pid: None,
                stores: true,
                phase_timeout: Duration::from_secs(self.phase_timeout),
                idle_timeout: Duration::from_secs(if q {
                    self.idle_timeout.min(10)
                } else {
                    self.idle_timeout
                }),
                separate_acks: self.separate_acks,
            },
            fsync_seconds: if q { 0.3 } else { 3.0 },
        };
        Ok((plan, self.peers_dir, self.out_dir, self.fsync_dir))
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<std::process::ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::NullServer { addr } => runtime.block_on(null_server::serve(&addr))?,
        Command::Render { json } => {
            let text =
                std::fs::read_to_string(&json).with_context(|| format!("reading {}", json.display()))?;
            let report: Report = serde_json::from_str(&text)?;
            write_views(&report, &json.with_extension(""))?;
        }
        Command::Run(args) => return runtime.block_on(run_all(*args)),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// The jobs of the chosen scenarios (or cells, by row id), in report order.
fn jobs(plan: &Plan) -> Vec<Job> {
    let mut jobs = Vec::new();
    for (clients, batch) in [(1, 1), (16, 1), (64, 1), (1, 100), (4, 100)] {
        jobs.push(Job::Enqueue { clients, batch });
    }
    for (workers, batch) in [(1, 1), (8, 1), (1, 100), (8, 100)] {
        jobs.push(Job::Drain { workers, batch });
    }
    for &rate in &plan.options.rates {
        jobs.push(Job::Steady { rate, seconds: plan.options.rate_seconds });
    }
    jobs.push(Job::Bulk);
    let wanted = |name: &str| plan.scenarios.iter().any(|x| x.eq_ignore_ascii_case(name));
    jobs.retain(|job| job.rows().iter().any(|(row, scenario, _, _)| wanted(scenario) || wanted(row)));
    jobs
}

async fn run_all(args: RunArgs) -> Result<std::process::ExitCode> {
    let strict = args.strict;
    let (plan, peers_dir, out_dir, fsync_dir) = args.plan()?;
    let machine = procfs::machine();
    eprintln!("machine: {} × {} CPUs, {} MiB", machine.cpu_model, machine.nproc, machine.memory_mib);

    let fsync_probe = match fsync_probe::run(&fsync_dir, Duration::from_secs_f64(plan.fsync_seconds)) {
        Ok(p) => {
            eprintln!("fsync probe: append {}/s, p50 {} µs", fmt_count(p.syncs_per_second), p.latency.p50_us);
            if let Some(q) = &p.in_place {
                eprintln!(
                    "fsync probe: in place {}/s, p50 {} µs",
                    fmt_count(q.syncs_per_second),
                    q.latency.p50_us
                );
            }
            Some(p)
        }
        Err(error) => {
            eprintln!("fsync probe failed: {error:#}");
            None
        }
    };

    let mut systems: Vec<System> = SYSTEMS
        .iter()
        .map(|&(key, name)| {
            let mut system = System::open(key, name, PeerFile::read(&peers_dir, key), &plan.settings);
            let excluded =
                plan.systems.as_ref().is_some_and(|only| key != "cherga" && !only.iter().any(|s| s == key));
            if excluded {
                system.skip("not selected (--systems)");
            }
            system
        })
        .collect();
    for system in &mut systems {
        if system.handle.is_none() {
            eprintln!("{}: {}", system.entry.key, system.entry.status);
            continue;
        }
        eprintln!("{}: warming up with {} tasks", system.entry.key, plan.options.warmup_tasks);
        if let Err(error) = system.warm_up(plan.options.warmup_tasks).await {
            let reason = format!("warm-up failed: {error:#}");
            eprintln!("{}: {reason}", system.entry.key);
            system.skip(&reason);
        }
    }
    if systems[0].handle.is_none() {
        bail!("cherga must run, but it is {}", systems[0].entry.status);
    }

    let mut rows: Vec<Row> = Vec::new();
    for job in jobs(&plan) {
        let (runs, n_tasks) = match job {
            Job::Bulk => (plan.options.bulk_runs, plan.options.bulk_tasks),
            _ => (plan.options.runs, plan.options.tasks),
        };
        let specs = job.rows();
        // results[row][system] = (measurements, errors)
        let mut results: Vec<Vec<(Vec<scenario::Measured>, Vec<String>)>> =
            specs.iter().map(|_| systems.iter().map(|_| (Vec::new(), Vec::new())).collect()).collect();
        for run in 1..=runs {
            for (s, system) in systems.iter().enumerate() {
                if system.handle.is_none() || (!system.settings.stores && job.consumes()) {
                    continue;
                }
                match system.run(&job, n_tasks).await {
                    Ok(measured) => {
                        for (r, m) in measured.into_iter().enumerate() {
                            eprintln!(
                                "{} run {run}/{runs} {}: {}/s, p50 {} ms, p99 {} ms, {}/{} consumed, {} dup",
                                specs[r].0,
                                system.entry.key,
                                fmt_count(m.tasks_per_second),
                                fmt_sig(m.latency.p50_us as f64 / 1000.0),
                                fmt_sig(m.latency.p99_us as f64 / 1000.0),
                                m.check.distinct,
                                m.check.expected,
                                m.check.duplicates
                            );
                            results[r][s].0.push(m);
                        }
                    }
                    Err(error) => {
                        eprintln!("{} run {run}/{runs} {}: FAILED: {error:#}", specs[0].0, system.entry.key);
                        for row in results.iter_mut() {
                            row[s].1.push(format!("run {run}: {error:#}"));
                        }
                    }
                }
            }
        }
        for ((id, scenario, title, latency), cells) in specs.into_iter().zip(results) {
            let cells = systems
                .iter()
                .zip(cells)
                .filter(|(system, (runs, errors))| {
                    system.handle.is_some() && (!runs.is_empty() || !errors.is_empty())
                })
                .map(|(system, (runs, errors))| Cell::new(&system.entry.key, runs, errors))
                .collect();
            rows.push(Row { id, scenario: scenario.into(), title, latency: latency.into(), cells });
        }
    }

    let generated = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let report = Report {
        mode: plan.mode.into(),
        generated_at: report::rfc3339_utc(generated),
        machine,
        options: plan.options,
        fsync_probe,
        systems: systems.into_iter().map(|s| s.entry).collect(),
        rows,
    };
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let base = out_dir.join(&plan.name);
    std::fs::write(base.with_extension("json"), serde_json::to_string_pretty(&report)?)?;
    let markdown = write_views(&report, &base)?;
    println!("{markdown}");
    eprintln!("wrote {}.{{json,md,svg}}", base.display());

    let cherga_lost = report.lost(Some(report::CHERGA));
    let peers_lost = report.lost(None) - cherga_lost;
    let cherga_errors = report.cherga_errors();
    if peers_lost > 0 {
        eprintln!("warning: peers lost {peers_lost} tasks (see the Checks table)");
    }
    if cherga_lost > 0 || cherga_errors > 0 || (strict && peers_lost > 0) {
        eprintln!(
            "FAILED: cherga lost {cherga_lost} tasks and failed {cherga_errors} runs; peers lost {peers_lost}"
        );
        return Ok(std::process::ExitCode::FAILURE);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Writes `<base>.md` and `<base>.svg`; returns the markdown.
fn write_views(report: &Report, base: &Path) -> Result<String> {
    let markdown = report::markdown(report);
    std::fs::write(base.with_extension("md"), &markdown)?;
    std::fs::write(base.with_extension("svg"), svg::render(report))?;
    Ok(markdown)
}
