//! `cherga backup` and `cherga restore`: a consistent copy of the embedded
//! store, taken while it serves, and a data directory made from one (see
//! `cherga_store_sqlite::backup`). For PostgreSQL, `pg_dump` (docs/storage.md).

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The file to write (it must not exist).
    dest: PathBuf,
    /// The data directory of the embedded store; its server may be running.
    #[arg(long, env = "CHERGA_DATA_DIR", default_value = "./cherga-data")]
    data_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// A file written by `cherga backup`.
    source: PathBuf,
    /// The data directory to make the store in: missing, or without a store.
    #[arg(long)]
    data_dir: PathBuf,
}

pub fn backup(args: BackupArgs) -> Result<()> {
    let database = cherga_store_sqlite::Options::in_dir(&args.data_dir).path;
    cherga_store_sqlite::backup(&database, &args.dest)
        .with_context(|| format!("backing up {} to {}", args.data_dir.display(), args.dest.display()))?;
    let bytes = std::fs::metadata(&args.dest).map(|m| m.len()).unwrap_or(0);
    println!("backed up {} to {} ({bytes} bytes)", args.data_dir.display(), args.dest.display());
    Ok(())
}

pub async fn restore(args: RestoreArgs) -> Result<()> {
    cherga_store_sqlite::restore(&args.source, &args.data_dir)
        .await
        .with_context(|| format!("restoring {} into {}", args.source.display(), args.data_dir.display()))?;
    println!("restored {} into {}", args.source.display(), args.data_dir.display());
    Ok(())
}
