//! The report: what was run and measured (serialized as JSON), its summary per
//! cell (median and min–max over runs), and its markdown rendering with the ratio
//! cherga ÷ peer in every peer cell.
//!
//! **Invariant:** the markdown and the SVG are pure functions of [`Report`], so
//! `cherga-bench render` redraws them from a saved JSON file.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::fsync_probe::FsyncProbe;
use crate::procfs::Machine;
use crate::scenario::Measured;
use crate::stats::{Percentiles, Spread, ratio};

/// The system every ratio divides by.
pub const CHERGA: &str = "cherga";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// `quick` or `full`.
    pub mode: String,
    /// UTC, RFC 3339.
    pub generated_at: String,
    pub machine: Machine,
    pub options: Options,
    pub fsync_probe: Option<FsyncProbe>,
    pub systems: Vec<SystemEntry>,
    pub rows: Vec<Row>,
}

/// The knobs of the run, as given.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Options {
    pub runs: usize,
    pub bulk_runs: usize,
    pub tasks: u64,
    pub bulk_tasks: u64,
    pub rates: Vec<u64>,
    pub rate_seconds: f64,
    pub warmup_tasks: u64,
    pub payload_bytes: usize,
    /// Workers acked in requests of their own, not with their next lease
    /// (`--separate-acks`). Absent in reports made before the option existed,
    /// which all acked so.
    #[serde(default)]
    pub separate_acks: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SystemEntry {
    /// Short key: `cherga`, `null`, `rabbitmq`, `nats`, `redis`, `postgres`.
    pub key: String,
    pub name: String,
    pub version: String,
    /// The durability settings it ran with.
    pub settings: String,
    /// `ok`, or `skipped: <reason>`.
    pub status: String,
}

impl SystemEntry {
    pub fn ran(&self) -> bool {
        self.status == "ok"
    }
}

/// One scenario configuration: a row of every table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub id: String,
    pub scenario: String,
    pub title: String,
    /// What the latency columns measure.
    pub latency: String,
    pub cells: Vec<Cell>,
}

/// One system in one row: every run, and their summary.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cell {
    pub system: String,
    pub runs: Vec<Measured>,
    pub errors: Vec<String>,
    pub summary: Option<Summary>,
}

impl Cell {
    pub fn new(system: &str, runs: Vec<Measured>, errors: Vec<String>) -> Self {
        let summary = Summary::of(&runs);
        Self { system: system.to_owned(), runs, errors, summary }
    }
}

/// Median and min–max over the runs of a cell.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub runs: usize,
    pub tasks_per_second: Spread,
    pub p50_ms: Spread,
    pub p99_ms: Spread,
    pub p999_ms: Spread,
    pub cpu_seconds_per_1k: Option<Spread>,
    pub device_flushes_per_1k: Option<Spread>,
    pub peak_rss_mib: Option<Spread>,
    /// Summed over runs.
    pub expected: u64,
    pub distinct: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub strangers: u64,
}

impl Summary {
    pub fn of(runs: &[Measured]) -> Option<Self> {
        let over = |f: &dyn Fn(&Measured) -> f64| Spread::of(&runs.iter().map(f).collect::<Vec<_>>());
        let over_some = |f: &dyn Fn(&Measured) -> Option<f64>| {
            Spread::of_present(&runs.iter().map(f).collect::<Vec<_>>())
        };
        let per_1k = |value: Option<f64>, m: &Measured| {
            value.filter(|_| m.tasks > 0).map(|v| v * 1000.0 / m.tasks as f64)
        };
        Some(Self {
            runs: runs.len(),
            tasks_per_second: over(&|m| m.tasks_per_second)?,
            p50_ms: over(&|m| m.latency.p50_us as f64 / 1000.0)?,
            p99_ms: over(&|m| m.latency.p99_us as f64 / 1000.0)?,
            p999_ms: over(&|m| m.latency.p999_us as f64 / 1000.0)?,
            cpu_seconds_per_1k: over_some(&|m| per_1k(m.server_cpu_seconds, m)),
            device_flushes_per_1k: over_some(&|m| per_1k(m.device_flushes.map(|f| f as f64), m)),
            peak_rss_mib: over_some(&|m| m.peak_rss_kib.map(|k| k as f64 / 1024.0)),
            expected: runs.iter().map(|m| m.check.expected).sum(),
            distinct: runs.iter().map(|m| m.check.distinct).sum(),
            lost: runs.iter().map(|m| m.check.lost).sum(),
            duplicates: runs.iter().map(|m| m.check.duplicates).sum(),
            strangers: runs.iter().map(|m| m.check.strangers).sum(),
        })
    }
}

impl Report {
    /// Systems that ran, in report order.
    pub fn ran(&self) -> Vec<&SystemEntry> {
        self.systems.iter().filter(|s| s.ran()).collect()
    }

    /// Tasks lost (or foreign tasks received) in the runs of `system`, or of every
    /// system when `None`.
    pub fn lost(&self, system: Option<&str>) -> u64 {
        self.rows
            .iter()
            .flat_map(|r| &r.cells)
            .filter(|c| system.is_none_or(|s| c.system == s))
            .filter_map(|c| c.summary.as_ref())
            .map(|s| s.lost + s.strangers)
            .sum()
    }

    /// Errors of any run of cherga.
    pub fn cherga_errors(&self) -> usize {
        self.rows.iter().flat_map(|r| &r.cells).filter(|c| c.system == CHERGA).map(|c| c.errors.len()).sum()
    }
}

impl Row {
    pub fn cell(&self, system: &str) -> Option<&Cell> {
        self.cells.iter().find(|c| c.system == system)
    }
}

/// `12.3k`, `950`, `1.23M`: three significant digits.
pub fn fmt_count(value: f64) -> String {
    let (scaled, unit) = match value.abs() {
        v if v >= 1e6 => (value / 1e6, "M"),
        v if v >= 1e3 => (value / 1e3, "k"),
        _ => (value, ""),
    };
    format!("{}{unit}", fmt_sig(scaled))
}

/// Three significant digits, no exponent: `0.0123`, `1.23`, `12.3`, `123`.
pub fn fmt_sig(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude == 0.0 {
        "0".to_owned()
    } else if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        let decimals = (2 - magnitude.log10().floor() as i32).clamp(2, 6) as usize;
        format!("{value:.decimals$}")
    }
}

/// `median` alone for one run; `median (min–max)` for several.
fn fmt_spread(spread: &Spread, runs: usize, fmt: &dyn Fn(f64) -> String) -> String {
    if runs > 1 {
        format!("{} ({}–{})", fmt(spread.median), fmt(spread.min), fmt(spread.max))
    } else {
        fmt(spread.median)
    }
}

/// `×1.23`: cherga's median over the peer's.
pub fn fmt_ratio(value: Option<f64>) -> String {
    value.map(|r| format!("×{}", fmt_sig(r))).unwrap_or_default()
}

/// One metric as a table: a row per scenario, a column per system that ran, the
/// peers' cells ending with `×r`, cherga ÷ peer.
pub struct Metric<'a> {
    pub title: &'a str,
    /// What is measured and which way is better.
    pub explain: &'a str,
    /// The cell's text, `None` when the metric was not measured.
    pub text: &'a dyn Fn(&Summary) -> Option<String>,
    /// The value the ratio divides.
    pub ratio_of: &'a dyn Fn(&Summary) -> Option<f64>,
}

fn table_head(out: &mut String, systems: &[&SystemEntry]) {
    out.push_str("| scenario |");
    for s in systems {
        let _ = write!(out, " {} |", s.name);
    }
    out.push_str("\n|---|");
    for _ in systems {
        out.push_str("---:|");
    }
    out.push('\n');
}

pub fn metric_table(report: &Report, metric: &Metric<'_>) -> String {
    let systems = report.ran();
    let mut out = String::new();
    let _ = writeln!(out, "### {}\n\n{}\n", metric.title, metric.explain);
    table_head(&mut out, &systems);
    for row in &report.rows {
        let _ = write!(out, "| {} {} |", row.scenario, row.title);
        let cherga = row.cell(CHERGA).and_then(|c| c.summary.as_ref()).and_then(|s| (metric.ratio_of)(s));
        for system in &systems {
            let text = match row.cell(&system.key) {
                None => "—".to_owned(),
                Some(cell) => match &cell.summary {
                    Some(summary) => match (metric.text)(summary) {
                        Some(mut text) => {
                            if system.key != CHERGA {
                                let r = fmt_ratio(ratio(cherga, (metric.ratio_of)(summary)));
                                if !r.is_empty() {
                                    let _ = write!(text, " · {r}");
                                }
                            }
                            if !cell.errors.is_empty() {
                                let _ = write!(text, " ({} failed)", cell.errors.len());
                            }
                            text
                        }
                        None => "n/a".to_owned(),
                    },
                    None if !cell.errors.is_empty() => "failed".to_owned(),
                    None => "—".to_owned(),
                },
            };
            let _ = write!(out, " {text} |");
        }
        out.push('\n');
    }
    out
}

/// The whole markdown report.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let m = &report.machine;
    let o = &report.options;
    let _ = writeln!(out, "# cherga side-by-side benchmark ({})\n", report.mode);
    let _ = writeln!(
        out,
        "Generated {} on {} × {} CPUs, {} MiB memory, Linux {}. Median of {} run(s) per cell \
         (S4: {}), min–max in parentheses; systems interleaved run by run. {} tasks per S1/S2 run, \
         {} in S4, {}-byte JSON payloads; S3 at {} tasks/s for {} s. {}\n",
        report.generated_at,
        m.cpu_model,
        m.nproc,
        m.memory_mib,
        m.kernel,
        o.runs,
        o.bulk_runs,
        o.tasks,
        o.bulk_tasks,
        o.payload_bytes,
        o.rates.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", "),
        o.rate_seconds,
        if o.separate_acks {
            "Workers ack in a request of their own (`--separate-acks`)."
        } else {
            "A worker acks its last tasks with its next lease where the system has a way to \
             (`Consumer::ack_and_lease`), else in a request of its own."
        },
    );
    match &report.fsync_probe {
        Some(p) => {
            let rate = |per_second: f64, latency: &Percentiles| {
                format!(
                    "**{}/s** (p50 {} ms, p99 {} ms)",
                    fmt_count(per_second),
                    fmt_sig(latency.p50_us as f64 / 1000.0),
                    fmt_sig(latency.p99_us as f64 / 1000.0),
                )
            };
            let _ = writeln!(
                out,
                "Disk: 4 KiB append + fdatasync in one thread: {} in `{}`.",
                rate(p.syncs_per_second, &p.latency),
                p.dir
            );
            if let Some(q) = &p.in_place {
                let _ = writeln!(
                    out,
                    "4 KiB overwritten in place + fdatasync: {}.",
                    rate(q.syncs_per_second, &q.latency)
                );
            }
            out.push('\n');
        }
        None => out.push_str("Disk: the fsync probe did not run.\n\n"),
    }
    out.push_str("## Systems\n\n| system | version | durability settings | status |\n|---|---|---|---|\n");
    for s in &report.systems {
        let or_dash = |text: &str| if text.is_empty() { "—".to_owned() } else { text.replace('|', "\\|") };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            s.name,
            or_dash(&s.version),
            or_dash(&s.settings),
            s.status
        );
    }
    out.push_str(
        "\n## Results\n\nIn every peer cell, `×r` is cherga ÷ that peer (medians). A cell marked — was not \
         run: the null endpoint only enqueues.\n\n",
    );
    let spread = |value: Option<Spread>, runs: usize, fmt: &dyn Fn(f64) -> String| {
        value.map(|v| fmt_spread(&v, runs, fmt))
    };
    let tables = [
        Metric {
            title: "Throughput, tasks/s",
            explain: "×r above 1: cherga is faster.",
            text: &|s| spread(Some(s.tasks_per_second), s.runs, &fmt_count),
            ratio_of: &|s| Some(s.tasks_per_second.median),
        },
        Metric {
            title: "Latency p50 / p99 / p99.9, ms",
            explain: "Min–max is that of p50; ×r compares p99 — below 1: cherga is faster. S1 and S4 \
                      enqueue: per request; S2 and S4 drain: per lease + ack; S3: from the task's scheduled \
                      enqueue time to its arrival at a worker (open loop, corrected for coordinated omission).",
            text: &|s| {
                let p50 = fmt_spread(&s.p50_ms, s.runs, &fmt_sig);
                Some(format!("{p50} / {} / {}", fmt_sig(s.p99_ms.median), fmt_sig(s.p999_ms.median)))
            },
            ratio_of: &|s| Some(s.p99_ms.median),
        },
        Metric {
            title: "Server CPU-seconds per 1k tasks",
            explain: "User + system time of the server's process tree during the measured phase \
                      (/proc/PID/stat). ×r below 1: cherga is cheaper.",
            text: &|s| spread(s.cpu_seconds_per_1k, s.runs, &fmt_sig),
            ratio_of: &|s| s.cpu_seconds_per_1k.map(|v| v.median),
        },
        Metric {
            title: "Disk flushes per 1k tasks",
            explain: "Flush requests completed by the machine's disks during the phase (/proc/diskstats): \
                      each fsync/fdatasync that reaches the disk is one. Machine-wide, so other activity \
                      adds noise. ×r below 1: cherga flushes less.",
            text: &|s| spread(s.device_flushes_per_1k, s.runs, &fmt_sig),
            ratio_of: &|s| s.device_flushes_per_1k.map(|v| v.median),
        },
        Metric {
            title: "Server peak RSS, MiB",
            explain: "VmHWM summed over the server's process tree, reset before each phase \
                      (/proc/PID/clear_refs). ×r below 1: cherga uses less.",
            text: &|s| spread(s.peak_rss_mib, s.runs, &fmt_sig),
            ratio_of: &|s| s.peak_rss_mib.map(|v| v.median),
        },
    ];
    for metric in &tables {
        out.push_str(&metric_table(report, metric));
        out.push('\n');
    }
    out.push_str(&checks_table(report));
    let errors: Vec<String> = report
        .rows
        .iter()
        .flat_map(|r| {
            r.cells
                .iter()
                .flat_map(move |c| c.errors.iter().map(move |e| format!("- {} {}: {e}", r.id, c.system)))
        })
        .collect();
    if !errors.is_empty() {
        out.push_str("\n## Errors\n\n");
        out.push_str(&errors.join("\n"));
        out.push('\n');
    }
    out
}

/// Whether every run consumed exactly its tasks.
fn checks_table(report: &Report) -> String {
    let systems = report.ran();
    let mut out = String::from(
        "### Checks\n\nDistinct tasks consumed of those enqueued, summed over runs, and deliveries of a task \
         already consumed (duplicates). The null endpoint stores nothing: its check counts answered \
         enqueues.\n\n",
    );
    table_head(&mut out, &systems);
    for row in &report.rows {
        let _ = write!(out, "| {} {} |", row.scenario, row.title);
        for system in &systems {
            let text = match row.cell(&system.key).and_then(|c| c.summary.as_ref()) {
                None => "—".to_owned(),
                Some(s) => {
                    let mut text = format!("{}/{}", s.distinct, s.expected);
                    if s.lost > 0 {
                        let _ = write!(text, " **{} LOST**", s.lost);
                    }
                    if s.duplicates > 0 {
                        let _ = write!(text, ", {} dup", s.duplicates);
                    }
                    if s.strangers > 0 {
                        let _ = write!(text, ", {} foreign", s.strangers);
                    }
                    text
                }
            };
            let _ = write!(out, " {text} |");
        }
        out.push('\n');
    }
    out
}

/// `2026-11-28T04:35:00Z` for a Unix time in seconds.
pub fn rfc3339_utc(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let rem = unix_seconds % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}
