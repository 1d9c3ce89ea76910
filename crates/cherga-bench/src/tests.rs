//! Unit tests of the report math and rendering, the payload format and the ledger.

use crate::payload::{self, PAYLOAD_BYTES, Stamp};
use crate::peers::PeerFile;
use crate::procfs::Machine;
use crate::report::{self, Cell, Options, Report, Row, SystemEntry, fmt_count, fmt_sig};
use crate::scenario::{Job, Measured};
use crate::stats::{self, Percentiles, Spread, ratio};
use crate::tally::{Check, Tally};

#[test]
fn merged_worker_histograms_have_the_percentiles_of_all_values() {
    // Three workers see different latencies; the merge must equal one histogram of
    // everything, which an average of per-worker percentiles would not.
    let mut all = stats::histogram();
    let mut workers = vec![stats::histogram(), stats::histogram(), stats::histogram()];
    for v in 1..=10_000u64 {
        let worker = (v % 3) as usize;
        // Worker 2 is the slow one.
        let latency = if worker == 2 { v * 10 } else { v };
        stats::record(&mut workers[worker], latency);
        stats::record(&mut all, latency);
    }
    let merged = stats::merge(workers).unwrap();
    assert_eq!(Percentiles::of(&merged), Percentiles::of(&all));
    assert_eq!(merged.len(), 10_000);
    let p = Percentiles::of(&merged);
    assert!(p.p50_us <= p.p99_us && p.p99_us <= p.p999_us && p.p999_us <= p.max_us, "{p:?}");
}

#[test]
fn percentiles_are_within_the_histogram_precision() {
    let mut h = stats::histogram();
    for v in 1..=1000u64 {
        stats::record(&mut h, v * 100); // 100 µs .. 100 ms, uniform
    }
    let p = Percentiles::of(&h);
    let close = |got: u64, want: u64| (got as f64 - want as f64).abs() / want as f64 <= 0.001;
    assert!(close(p.p50_us, 50_000), "{p:?}");
    assert!(close(p.p99_us, 99_000), "{p:?}");
    assert!(close(p.p999_us, 99_900), "{p:?}");
    assert_eq!(p.count, 1000);
    assert_eq!(Percentiles::of(&stats::histogram()), Percentiles::default());
}

#[test]
fn zero_and_huge_latencies_are_clamped_not_dropped() {
    let mut h = stats::histogram();
    stats::record(&mut h, 0);
    stats::record(&mut h, u64::MAX);
    assert_eq!(h.len(), 2);
}

#[test]
fn spread_is_median_with_min_and_max() {
    assert_eq!(Spread::of(&[]), None);
    assert_eq!(Spread::of(&[5.0]), Some(Spread { median: 5.0, min: 5.0, max: 5.0 }));
    assert_eq!(Spread::of(&[9.0, 1.0, 5.0]), Some(Spread { median: 5.0, min: 1.0, max: 9.0 }));
    // Even count: the mean of the middle two.
    assert_eq!(Spread::of(&[4.0, 1.0, 3.0, 10.0]), Some(Spread { median: 3.5, min: 1.0, max: 10.0 }));
    assert_eq!(Spread::of(&[f64::NAN, 2.0]), Some(Spread { median: 2.0, min: 2.0, max: 2.0 }));
    assert_eq!(Spread::of_present(&[None, Some(1.0), None, Some(3.0)]).map(|s| s.median), Some(2.0));
    assert_eq!(Spread::of_present(&[None, None]), None);
}

#[test]
fn ratio_needs_both_values_and_a_nonzero_peer() {
    assert_eq!(ratio(Some(10.0), Some(4.0)), Some(2.5));
    assert_eq!(ratio(Some(10.0), Some(0.0)), None);
    assert_eq!(ratio(None, Some(1.0)), None);
    assert_eq!(ratio(Some(1.0), None), None);
}

#[test]
fn numbers_have_three_significant_digits() {
    assert_eq!(fmt_count(950.0), "950");
    assert_eq!(fmt_count(12_345.0), "12.3k");
    assert_eq!(fmt_count(123_456.0), "123k");
    assert_eq!(fmt_count(2_500_000.0), "2.50M");
    assert_eq!(fmt_sig(0.0123), "0.0123");
    assert_eq!(fmt_sig(1.234), "1.23");
    assert_eq!(fmt_sig(0.0), "0");
    assert_eq!(report::fmt_ratio(Some(0.5)), "×0.500");
}

#[test]
fn dates_are_rfc3339_utc() {
    assert_eq!(report::rfc3339_utc(0), "1970-01-01T00:00:00Z");
    assert_eq!(report::rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(report::rfc3339_utc(1_795_840_500), "2026-11-28T04:35:00Z");
}

fn measured(tasks_per_second: f64, p99_us: u64, cpu: Option<f64>, lost: u64) -> Measured {
    let tasks = 1000;
    Measured {
        tasks,
        seconds: tasks as f64 / tasks_per_second,
        tasks_per_second,
        latency: Percentiles {
            count: tasks,
            p50_us: p99_us / 2,
            p99_us,
            p999_us: p99_us * 2,
            max_us: p99_us * 3,
        },
        server_cpu_seconds: cpu,
        device_flushes: Some(10),
        peak_rss_kib: Some(10 * 1024),
        check: Check { expected: tasks, distinct: tasks - lost, duplicates: 0, lost, strangers: 0 },
        checked_by: "consumed".into(),
    }
}

fn system(key: &str, name: &str, status: &str) -> SystemEntry {
    SystemEntry {
        key: key.into(),
        name: name.into(),
        version: "1".into(),
        settings: "fsync".into(),
        status: status.into(),
    }
}

fn sample_report() -> Report {
    let row = Row {
        id: "S1-b1-c1".into(),
        scenario: "S1".into(),
        title: "enqueue, batch 1, 1 client".into(),
        latency: "per request".into(),
        cells: vec![
            Cell::new(
                "cherga",
                vec![
                    measured(3000.0, 2000, Some(0.2), 0),
                    measured(1000.0, 4000, Some(0.4), 0),
                    measured(2000.0, 1000, Some(0.3), 0),
                ],
                vec![],
            ),
            Cell::new("redis", vec![measured(1000.0, 1000, Some(0.1), 0)], vec![]),
            Cell::new("nats", vec![], vec!["run 1: connection refused".into()]),
        ],
    };
    let drain = Row {
        id: "S2-b1-w1".into(),
        scenario: "S2".into(),
        title: "drain, batch 1, 1 worker".into(),
        latency: "per lease + ack".into(),
        cells: vec![Cell::new("cherga", vec![measured(500.0, 1000, None, 2)], vec![])],
    };
    Report {
        mode: "quick".into(),
        generated_at: "2026-11-28T04:35:00Z".into(),
        machine: Machine { cpu_model: "Test CPU".into(), nproc: 2, memory_mib: 1024, kernel: "6.1".into() },
        options: Options {
            runs: 3,
            bulk_runs: 1,
            tasks: 1000,
            bulk_tasks: 5000,
            rates: vec![500],
            rate_seconds: 1.0,
            warmup_tasks: 10,
            payload_bytes: PAYLOAD_BYTES,
            separate_acks: false,
        },
        fsync_probe: None,
        systems: vec![
            system("cherga", "cherga", "ok"),
            system("redis", "Redis streams", "ok"),
            system("nats", "NATS JetStream", "ok"),
            system("rabbitmq", "RabbitMQ", "skipped: not started"),
        ],
        rows: vec![row, drain],
    }
}

#[test]
fn summary_takes_medians_over_runs() {
    let report = sample_report();
    let summary = report.rows[0].cell("cherga").unwrap().summary.clone().unwrap();
    assert_eq!(summary.runs, 3);
    assert_eq!(summary.tasks_per_second, Spread { median: 2000.0, min: 1000.0, max: 3000.0 });
    assert_eq!(summary.p99_ms, Spread { median: 2.0, min: 1.0, max: 4.0 });
    // 0.3 CPU-seconds for 1000 tasks is 0.3 per 1k.
    let cpu = summary.cpu_seconds_per_1k.unwrap();
    assert!((cpu.median - 0.3).abs() < 1e-9, "{cpu:?}");
    assert_eq!(summary.device_flushes_per_1k.unwrap().median, 10.0);
    assert_eq!(summary.peak_rss_mib.unwrap().median, 10.0);
    assert_eq!((summary.expected, summary.distinct, summary.lost), (3000, 3000, 0));
    assert!(report.rows[0].cell("nats").unwrap().summary.is_none());
    assert_eq!(report.lost(None), 2);
    assert_eq!(report.lost(Some("cherga")), 2);
    assert_eq!(report.lost(Some("redis")), 0);
    assert_eq!(report.cherga_errors(), 0);
}

#[test]
fn throughput_table_shows_ratio_cherga_over_peer() {
    let report = sample_report();
    let table = report::metric_table(
        &report,
        &report::Metric {
            title: "Throughput",
            explain: "more is better",
            text: &|s| Some(format!("{}", s.tasks_per_second.median)),
            ratio_of: &|s| Some(s.tasks_per_second.median),
        },
    );
    let lines: Vec<&str> = table.lines().collect();
    // Skipped systems get no column.
    assert_eq!(lines[4], "| scenario | cherga | Redis streams | NATS JetStream |", "{table}");
    assert_eq!(lines[5], "|---|---:|---:|---:|");
    // cherga 2000/s over Redis 1000/s; NATS failed; not-run cells are dashes.
    assert_eq!(lines[6], "| S1 enqueue, batch 1, 1 client | 2000 | 1000 · ×2.00 | failed |", "{table}");
    assert_eq!(lines[7], "| S2 drain, batch 1, 1 worker | 500 | — | — |", "{table}");
}

#[test]
fn markdown_report_has_every_section_and_flags_losses() {
    let md = report::markdown(&sample_report());
    for needle in [
        "# cherga side-by-side benchmark (quick)",
        "Test CPU × 2 CPUs",
        "| RabbitMQ | 1 | fsync | skipped: not started |",
        "### Throughput, tasks/s",
        "| S1 enqueue, batch 1, 1 client | 2.00k (1.00k–3.00k) | 1.00k · ×2.00 | failed |",
        "### Latency p50 / p99 / p99.9, ms",
        // p50 spread of cherga, then p99 and p99.9 medians; Redis p99 1 ms vs 2 ms.
        "| S1 enqueue, batch 1, 1 client | 1.00 (0.500–2.00) / 2.00 / 4.00 | 0.500 / 1.00 / 2.00 · ×2.00 | failed |",
        "### Server CPU-seconds per 1k tasks",
        "0.300 (0.200–0.400) | 0.100 · ×3.00",
        "| S2 drain, batch 1, 1 worker | n/a | — | — |",
        "### Checks",
        "998/1000 **2 LOST**",
        "## Errors",
        "- S1-b1-c1 nats: run 1: connection refused",
    ] {
        assert!(md.contains(needle), "missing {needle:?} in\n{md}");
    }
}

#[test]
fn fsync_probe_times_appends_and_overwrites_and_leaves_no_file() {
    let dir = std::env::temp_dir().join(format!("cherga-bench-probe-test-{}", std::process::id()));
    let probe = crate::fsync_probe::run(&dir, std::time::Duration::from_millis(50)).expect("probe");
    let in_place = probe.in_place.as_ref().expect("the in-place loop ran");
    assert!(probe.syncs_per_second > 0.0 && in_place.syncs_per_second > 0.0, "{probe:?}");
    assert!(probe.latency.p50_us <= probe.latency.p99_us, "{probe:?}");
    let left: Vec<_> = std::fs::read_dir(&dir).expect("dir").collect();
    assert!(left.is_empty(), "the probe's file is removed: {left:?}");
    std::fs::remove_dir(&dir).expect("remove the empty dir");

    let mut report = sample_report();
    report.fsync_probe = Some(probe);
    let md = report::markdown(&report);
    assert!(md.contains("4 KiB append + fdatasync in one thread: **"), "{md}");
    assert!(md.contains("4 KiB overwritten in place + fdatasync: **"), "{md}");
}

#[test]
fn svg_is_well_formed_enough() {
    let svg = crate::svg::render(&sample_report());
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    assert!(svg.contains("S1 enqueue, batch 1, 1 client"));
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
}

#[test]
fn report_survives_a_json_round_trip() {
    let report = sample_report();
    let text = serde_json::to_string(&report).unwrap();
    let back: Report = serde_json::from_str(&text).unwrap();
    assert_eq!(report::markdown(&back), report::markdown(&report));
}

#[test]
fn payloads_are_fixed_size_json_with_a_parseable_stamp() {
    let mut buffer = Vec::new();
    for (seq, at) in [(0u64, 0u64), (7, 123_456_789), (1_999_999, u64::MAX / 2)] {
        payload::make(seq, at, &mut buffer);
        assert_eq!(buffer.len(), PAYLOAD_BYTES);
        let value: serde_json::Value = serde_json::from_slice(&buffer).expect("valid JSON");
        assert_eq!(value["seq"], seq);
        assert_eq!(payload::parse(&buffer), Some(Stamp { seq, at_ns: at }));
    }
    let mut other = Vec::new();
    payload::make(8, 123_456_789, &mut other);
    payload::make(7, 123_456_789, &mut buffer);
    assert_ne!(buffer[30..], other[30..], "different tasks have different fillers");
    // As PostgreSQL's jsonb prints it back: reordered keys, spaces after colons.
    assert_eq!(payload::parse(br#"{"v": "abc", "at": 5, "seq": 42}"#), Some(Stamp { seq: 42, at_ns: 5 }));
    assert_eq!(payload::parse(b"{}"), None);
}

#[test]
fn tally_counts_distinct_duplicates_and_strangers() {
    let tally = Tally::new(130);
    for seq in 0..130 {
        tally.record(seq);
    }
    assert!(tally.is_complete() && tally.completed_at().is_some());
    tally.record(5);
    tally.record(129);
    tally.record(130);
    assert_eq!(tally.check(), Check { expected: 130, distinct: 130, duplicates: 2, lost: 0, strangers: 1 });

    let partial = Tally::new(10);
    partial.record(3);
    assert!(!partial.is_complete() && partial.completed_at().is_none());
    assert_eq!(partial.check().lost, 9);
}

#[test]
fn peer_files_parse_and_missing_ones_skip() {
    let peer = PeerFile::parse("url=http://127.0.0.1:7710\npid=42\nversion=0.0.0 (abc)\nsettings=a=b, c\n");
    assert_eq!(peer.url.as_deref(), Some("http://127.0.0.1:7710"));
    assert_eq!(peer.pid, Some(42));
    assert_eq!(peer.settings, "a=b, c");
    assert_eq!(peer.skip, None);
    let skipped = PeerFile::parse("skip=nats-server 2.9 has no sync_interval\n");
    assert_eq!(skipped.skip.as_deref(), Some("nats-server 2.9 has no sync_interval"));
    let missing = PeerFile::read(std::path::Path::new("/nonexistent"), "redis");
    assert!(missing.skip.unwrap().starts_with("not started"));
}

#[test]
fn every_job_names_its_rows() {
    assert_eq!(Job::Enqueue { clients: 16, batch: 1 }.rows()[0].0, "S1-b1-c16");
    assert_eq!(Job::Drain { workers: 8, batch: 100 }.rows()[0].0, "S2-b100-w8");
    assert_eq!(Job::Steady { rate: 500, seconds: 1.0 }.rows()[0].0, "S3-r500");
    let bulk: Vec<String> = Job::Bulk.rows().into_iter().map(|r| r.0).collect();
    assert_eq!(bulk, ["S4-enqueue", "S4-drain"]);
    assert!(!Job::Enqueue { clients: 1, batch: 1 }.consumes());
    assert!(Job::Bulk.consumes());
}

#[test]
fn axis_ticks_drop_trailing_zeros() {
    assert_eq!(crate::svg::trim_zeros("1.00k"), "1k");
    assert_eq!(crate::svg::trim_zeros("0.100 ms"), "0.1 ms");
    assert_eq!(crate::svg::trim_zeros("100"), "100");
    assert_eq!(crate::svg::trim_zeros("10.0k"), "10k");
}

#[test]
fn scenarios_select_whole_scenarios_or_single_cells() {
    use clap::Parser as _;
    let jobs_of = |scenarios: &str| {
        let cli =
            crate::Cli::try_parse_from(["cherga-bench", "run", "--scenarios", scenarios]).expect("parse");
        let crate::Command::Run(args) = cli.command else { panic!("not run") };
        let (plan, ..) = args.plan().expect("plan");
        crate::jobs(&plan).iter().map(|job| job.rows()[0].0.clone()).collect::<Vec<_>>()
    };
    assert_eq!(jobs_of("S2"), ["S2-b1-w1", "S2-b1-w8", "S2-b100-w1", "S2-b100-w8"]);
    assert_eq!(jobs_of("s2-b100-w8,S1-b100-c4"), ["S1-b100-c4", "S2-b100-w8"]);
    assert_eq!(jobs_of("S4-drain"), ["S4-enqueue"], "a bulk cell selects the bulk job");
    assert!(jobs_of("S9").is_empty());
}
