//! The machine's fsync rate: append 4 KiB to a file and `fdatasync` it, in a
//! loop, from one thread. This is the ceiling of any broker that syncs once per
//! acknowledgement without group commit, and the unit the others amortise.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::stats::{self, Percentiles};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FsyncProbe {
    /// The directory whose file system was probed.
    pub dir: String,
    pub syncs_per_second: f64,
    pub latency: Percentiles,
}

/// Runs the loop for `duration` in a temporary file inside `dir`.
///
/// # Errors
/// When the file cannot be created, written or synced.
pub fn run(dir: &Path, duration: Duration) -> Result<FsyncProbe> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("fsync-probe-{}.tmp", std::process::id()));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let block = [0x5au8; 4096];
    let mut histogram = stats::histogram();
    let started = Instant::now();
    let mut syncs = 0u64;
    let outcome = (|| -> Result<()> {
        while started.elapsed() < duration {
            let t = Instant::now();
            file.write_all(&block)?;
            file.sync_data()?;
            stats::record(&mut histogram, t.elapsed().as_micros() as u64);
            syncs += 1;
        }
        Ok(())
    })();
    let seconds = started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    outcome.context("append + fdatasync")?;
    Ok(FsyncProbe {
        dir: dir.display().to_string(),
        syncs_per_second: syncs as f64 / seconds,
        latency: Percentiles::of(&histogram),
    })
}
