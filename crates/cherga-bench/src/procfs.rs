//! What the benchmark reads from `/proc`: CPU time and peak memory of a server's
//! process tree, the block devices' flush counter, and the machine description.
//!
//! A server is measured as its whole process tree: PostgreSQL runs one process
//! per connection, RabbitMQ has helper processes, the others are one process with
//! threads. **Invariant:** nothing here changes the measured processes except
//! [`reset_peak_rss`], which only resets the kernel's high-water mark.

use std::collections::HashMap;
use std::fs;

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// One process's `stat` fields that matter here.
struct Stat {
    ppid: i32,
    /// utime + stime + cutime + cstime, in ticks: its own threads and the
    /// children it has reaped.
    ticks: u64,
}

fn read_stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after it.
    let after = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_ascii_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<i64>().ok());
    let ticks = [11, 12, 13, 14].iter().map(|&i| field(i).unwrap_or(0).max(0) as u64).sum();
    Some(Stat { ppid: field(1)? as i32, ticks })
}

/// `pid` and all its live descendants.
pub fn process_tree(pid: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(stat) = read_stat(child) {
                children.entry(stat.ppid).or_default().push(child);
            }
        }
    }
    let mut tree = vec![pid];
    let mut next = 0;
    while next < tree.len() {
        if let Some(kids) = children.get(&tree[next]) {
            tree.extend(kids);
        }
        next += 1;
    }
    tree
}

/// CPU-seconds used so far by `pid`'s process tree (user + system, reaped
/// children included), or `None` when the process is gone.
pub fn tree_cpu_seconds(pid: i32) -> Option<f64> {
    read_stat(pid)?;
    let ticks: u64 = process_tree(pid).into_iter().filter_map(read_stat).map(|s| s.ticks).sum();
    Some(ticks as f64 / ticks_per_second())
}

/// Resets the peak resident set size (`VmHWM`) of every process in the tree to
/// its current size. Needs root or the processes' owner; failure leaves the
/// lifetime peak in place, which the report then shows.
pub fn reset_peak_rss(pid: i32) {
    for p in process_tree(pid) {
        let _ = fs::write(format!("/proc/{p}/clear_refs"), "5");
    }
}

/// Sum of `VmHWM` over `pid`'s process tree, in KiB. For PostgreSQL this counts
/// the shared buffers once per process that touched them.
pub fn tree_peak_rss_kib(pid: i32) -> Option<u64> {
    let mut total = None;
    for p in process_tree(pid) {
        let Ok(status) = fs::read_to_string(format!("/proc/{p}/status")) else { continue };
        if let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            *total.get_or_insert(0) += kib;
        }
    }
    total
}

/// Flush requests completed by the machine's disks (`/proc/diskstats`, field 17
/// after the name; Linux ≥ 5.5), summed over whole disks, or `None` when the
/// kernel does not report them. An `fsync`/`fdatasync` that reaches the disk is
/// one flush, so the difference across a run counts the fsyncs of everything on
/// the machine during it — the measured server above all.
pub fn device_flushes() -> Option<u64> {
    let text = fs::read_to_string("/proc/diskstats").ok()?;
    let mut total = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let Some(name) = fields.get(2) else { continue };
        let whole_disk = fs::metadata(format!("/sys/block/{name}")).is_ok();
        if !whole_disk || ["loop", "ram", "zram", "dm-", "md"].iter().any(|p| name.starts_with(p)) {
            continue;
        }
        if let Some(flushes) = fields.get(2 + 16).and_then(|f| f.parse::<u64>().ok()) {
            *total.get_or_insert(0) += flushes;
        }
    }
    total
}

/// The machine, as the report describes it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub nproc: usize,
    pub memory_mib: u64,
    pub kernel: String,
}

pub fn machine() -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim()))
        .unwrap_or("unknown")
        .to_owned();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    Machine {
        cpu_model,
        nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        memory_mib: memory_kib / 1024,
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
    }
}

/// A snapshot of a server's counters, taken before and after a measured phase.
#[derive(Clone, Copy, Debug)]
pub struct Counters {
    cpu_seconds: Option<f64>,
    flushes: Option<u64>,
}

impl Counters {
    /// Reads the counters of `pid` (when the server has one) and of the disks.
    pub fn read(pid: Option<i32>) -> Self {
        Self { cpu_seconds: pid.and_then(tree_cpu_seconds), flushes: device_flushes() }
    }

    /// (server CPU-seconds, device flushes) from `self` to `later`.
    pub fn until(&self, later: &Counters) -> (Option<f64>, Option<u64>) {
        let cpu = match (self.cpu_seconds, later.cpu_seconds) {
            (Some(a), Some(b)) => Some((b - a).max(0.0)),
            _ => None,
        };
        let flushes = match (self.flushes, later.flushes) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        (cpu, flushes)
    }
}
