//! The report's chart, written by hand: two panels of horizontal grouped bars on
//! log scales — throughput and p99 latency — with a group per scenario row and a
//! bar per system (medians).

use std::fmt::Write as _;

use crate::report::{Report, Summary, fmt_count, fmt_sig};

const WIDTH: f64 = 1000.0;
const LABEL_WIDTH: f64 = 300.0;
const PLOT_LEFT: f64 = LABEL_WIDTH + 10.0;
const PLOT_RIGHT: f64 = WIDTH - 70.0;
const BAR: f64 = 9.0;
const BAR_GAP: f64 = 2.0;
const GROUP_GAP: f64 = 10.0;

fn color(system: &str) -> &'static str {
    match system {
        "cherga" => "#c0392b",
        "null" => "#95a5a6",
        "rabbitmq" => "#f39c12",
        "nats" => "#27ae60",
        "redis" => "#8e44ad",
        "postgres" => "#2980b9",
        _ => "#34495e",
    }
}

/// `1.00k` → `1k`, `0.100 ms` → `0.1 ms`: axis ticks are round numbers.
pub(crate) fn trim_zeros(label: &str) -> String {
    let digits_end = label.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(label.len());
    let (number, unit) = label.split_at(digits_end);
    let number =
        if number.contains('.') { number.trim_end_matches('0').trim_end_matches('.') } else { number };
    format!("{number}{unit}")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

struct Panel<'a> {
    title: &'a str,
    value: &'a dyn Fn(&Summary) -> f64,
    label: &'a dyn Fn(f64) -> String,
}

pub fn render(report: &Report) -> String {
    let systems: Vec<_> = report.ran().into_iter().map(|s| (s.key.clone(), s.name.clone())).collect();
    let panels = [
        Panel {
            title: "Throughput, tasks/s (median, log scale) — longer is better",
            value: &|s| s.tasks_per_second.median,
            label: &fmt_count,
        },
        Panel {
            title: "p99 latency, ms (median, log scale) — shorter is better",
            value: &|s| s.p99_ms.median,
            label: &|v| format!("{} ms", fmt_sig(v)),
        },
    ];
    let mut body = String::new();
    let mut y = 20.0;
    let _ = writeln!(
        body,
        r##"<text x="10" y="{y}" font-size="15" font-weight="bold">cherga side-by-side benchmark ({}) — {}</text>"##,
        escape(&report.mode),
        escape(&report.generated_at)
    );
    y += 18.0;
    let _ = writeln!(
        body,
        r##"<text x="10" y="{y}" font-size="11" fill="#555">{} × {} CPUs, {} MiB; every system fsyncs before it acknowledges</text>"##,
        escape(&report.machine.cpu_model),
        report.machine.nproc,
        report.machine.memory_mib
    );
    y += 16.0;
    // Legend.
    let mut x = 10.0;
    for (key, name) in &systems {
        let _ = writeln!(
            body,
            r##"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}" font-size="12">{}</text>"##,
            y,
            color(key),
            x + 16.0,
            y + 10.5,
            escape(name)
        );
        x += 30.0 + 7.0 * name.len() as f64;
    }
    y += 28.0;
    for panel in &panels {
        y = draw_panel(&mut body, report, &systems, panel, y) + 20.0;
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{y}\" viewBox=\"0 0 {WIDTH} {y}\" \
         font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n"
    )
}

/// Draws one panel from `top`; returns where it ends.
fn draw_panel(
    out: &mut String,
    report: &Report,
    systems: &[(String, String)],
    panel: &Panel<'_>,
    top: f64,
) -> f64 {
    let values: Vec<f64> = report
        .rows
        .iter()
        .flat_map(|r| r.cells.iter())
        .filter_map(|c| c.summary.as_ref())
        .map(panel.value)
        .filter(|v| *v > 0.0 && v.is_finite())
        .collect();
    let _ = writeln!(
        out,
        r##"<text x="10" y="{}" font-size="13" font-weight="bold">{}</text>"##,
        top + 12.0,
        escape(panel.title)
    );
    let mut y = top + 22.0;
    if values.is_empty() {
        let _ = writeln!(out, r##"<text x="10" y="{}" font-size="11">no data</text>"##, y + 10.0);
        return y + 20.0;
    }
    let low = values.iter().copied().fold(f64::INFINITY, f64::min).log10().floor();
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max).log10().ceil().max(low + 1.0);
    let scale = |v: f64| PLOT_LEFT + (v.log10() - low) / (high - low) * (PLOT_RIGHT - PLOT_LEFT);
    let axis_top = y;
    for row in &report.rows {
        let present: Vec<_> = systems
            .iter()
            .filter_map(|(key, _)| {
                row.cell(key).and_then(|c| c.summary.as_ref()).map(|s| (key, (panel.value)(s)))
            })
            .filter(|(_, v)| *v > 0.0 && v.is_finite())
            .collect();
        if present.is_empty() {
            continue;
        }
        let height = present.len() as f64 * (BAR + BAR_GAP);
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" font-size="11" text-anchor="end">{} {}</text>"##,
            LABEL_WIDTH,
            y + height / 2.0 + 4.0,
            escape(&row.scenario),
            escape(&row.title)
        );
        for (key, value) in present {
            let end = scale(value).max(PLOT_LEFT + 1.0);
            let _ = writeln!(
                out,
                r##"<rect x="{PLOT_LEFT}" y="{y:.1}" width="{:.1}" height="{BAR}" fill="{}"><title>{}: {}</title></rect><text x="{:.1}" y="{:.1}" font-size="9" fill="#333">{}</text>"##,
                end - PLOT_LEFT,
                color(key),
                escape(key),
                escape(&(panel.label)(value)),
                end + 3.0,
                y + BAR - 1.0,
                escape(&(panel.label)(value))
            );
            y += BAR + BAR_GAP;
        }
        y += GROUP_GAP;
    }
    // Decade grid lines and labels.
    let mut decade = low;
    while decade <= high {
        let x = scale(10f64.powf(decade));
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{axis_top}" x2="{x:.1}" y2="{y}" stroke="#ccc" stroke-width="0.5"/><text x="{x:.1}" y="{}" font-size="10" text-anchor="middle" fill="#555">{}</text>"##,
            y + 12.0,
            escape(&trim_zeros(&(panel.label)(10f64.powf(decade))))
        );
        decade += 1.0;
    }
    y + 16.0
}
