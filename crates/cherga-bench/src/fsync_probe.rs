//! The machine's fsync rate: write 4 KiB to a file and `fdatasync` it, in a loop,
//! from one thread. This is the ceiling of any broker that syncs once per
//! acknowledgement without group commit, and the unit the others amortise.
//!
//! Two loops, because the file system makes them differ: appending, so that each
//! fdatasync also makes the file's new size durable, and overwriting blocks that
//! are already written (in place), as a log does that was preallocated or reused
//! (PostgreSQL's WAL segments, cherga's prepared SQLite WAL).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::stats::{self, Percentiles};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FsyncProbe {
    /// The directory whose file system was probed.
    pub dir: String,
    /// Appending 4 KiB each time.
    pub syncs_per_second: f64,
    pub latency: Percentiles,
    /// Overwriting 4 KiB of a file already written and synced; absent from
    /// reports made before it was measured.
    #[serde(default)]
    pub in_place: Option<SyncLoop>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyncLoop {
    pub syncs_per_second: f64,
    pub latency: Percentiles,
}

const BLOCK: [u8; 4096] = [0x5a; 4096];

/// Runs each loop for `duration` in a temporary file inside `dir`.
///
/// # Errors
/// When the file cannot be created, written or synced.
pub fn run(dir: &Path, duration: Duration) -> Result<FsyncProbe> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("fsync-probe-{}.tmp", std::process::id()));
    let outcome = probe(&path, duration);
    let _ = std::fs::remove_file(&path);
    let (append, in_place) = outcome?;
    Ok(FsyncProbe {
        dir: dir.display().to_string(),
        syncs_per_second: append.syncs_per_second,
        latency: append.latency,
        in_place: Some(in_place),
    })
}

fn probe(path: &Path, duration: Duration) -> Result<(SyncLoop, SyncLoop)> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let block = BLOCK.len() as u64;
    let (append, blocks) = sync_loop(&file, duration, |i| i * block).context("append + fdatasync")?;
    // The appended blocks, now written and synced, are what the second loop
    // overwrites, from the start and around again.
    let blocks = blocks.max(1);
    let (in_place, _) =
        sync_loop(&file, duration, |i| (i % blocks) * block).context("overwrite + fdatasync")?;
    Ok((append, in_place))
}

/// Writes 4 KiB at `offset(i)` and fdatasyncs, for i = 0, 1, … until `duration`
/// has passed: the rate, the latency of each write + sync, and how many there were.
fn sync_loop(file: &File, duration: Duration, offset: impl Fn(u64) -> u64) -> Result<(SyncLoop, u64)> {
    let mut histogram = stats::histogram();
    let started = Instant::now();
    let mut syncs = 0u64;
    while started.elapsed() < duration {
        let t = Instant::now();
        file.write_all_at(&BLOCK, offset(syncs))?;
        file.sync_data()?;
        stats::record(&mut histogram, t.elapsed().as_micros() as u64);
        syncs += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok((SyncLoop { syncs_per_second: syncs as f64 / seconds, latency: Percentiles::of(&histogram) }, syncs))
}
