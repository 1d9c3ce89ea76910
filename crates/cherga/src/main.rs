//! `cherga`: the broker binary. `cherga serve` runs the server on the embedded
//! store or on PostgreSQL; the other subcommands talk to a running server over HTTP.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod bulk;
mod cli;
mod security;
mod serve;
mod token;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// cherga: a durable task broker.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the broker, on its embedded store or on PostgreSQL (`--store`).
    Serve(serve::ServeArgs),
    /// Enqueues one task.
    Enqueue(cli::EnqueueArgs),
    /// Lists queues with their counts per state.
    Queues(cli::QueuesArgs),
    /// Shows tasks.
    Task {
        #[command(subcommand)]
        command: cli::TaskCommand,
    },
    /// Sends the dead tasks of a queue that match a filter back to ready.
    Retry(bulk::BulkArgs),
    /// Cancels the scheduled and ready tasks of a queue that match a filter.
    Cancel(bulk::BulkArgs),
    /// Deletes the finished tasks of a queue that match a filter.
    Purge(bulk::BulkArgs),
    /// Acts on a queue.
    Queue {
        #[command(subcommand)]
        command: bulk::QueueCommand,
    },
    /// Makes a signing key for tokens (prints a key file, or adds to one).
    Keygen(token::KeygenArgs),
    /// Issues or revokes bearer tokens.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// Measures enqueue → lease → ack throughput and latency against a running server.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The chain of causes, one line, without a backtrace: these are
            // user-facing errors.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    if matches!(args.command, Command::Serve(_)) {
        no_transparent_huge_pages();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match args.command {
            Command::Serve(a) => serve::run(a).await,
            Command::Enqueue(a) => cli::enqueue(a).await,
            Command::Queues(a) => cli::queues(a).await,
            Command::Task { command } => cli::task(command).await,
            Command::Retry(a) => bulk::run(bulk::Action::Retry, a).await,
            Command::Cancel(a) => bulk::run(bulk::Action::Cancel, a).await,
            Command::Purge(a) => bulk::run(bulk::Action::Purge, a).await,
            Command::Queue { command } => bulk::queue(command).await,
            Command::Bench(a) => bench::run(a).await,
            Command::Keygen(a) => token::keygen(a),
            Command::Token { command } => token::token(command).await,
        }
    })
}

/// Turns transparent huge pages off for this process, before the threads start.
///
/// mimalloc asks the kernel for them (`MADV_HUGEPAGE`), and the first touch of
/// each 2 MiB page has the kernel zero all of it on the thread that touched it.
/// On the writer thread, with the index and the dirty tasks growing, that was
/// most of the writer's stalls under load: 12 % of its `perf` samples were
/// `clear_page_erms` under `do_huge_pmd_anonymous_page`, and one-cell runs of
/// `S1-b1-c64` with 200,000 tasks had p99.9 of 9.0–18.1 ms with them and
/// 3.4–8.9 ms without (`docs/storage.md`). With 4 KiB pages the same zeroing
/// comes in pieces too small to stall anyone. A kernel without the call (or one
/// that refuses it) leaves things as they were.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and touches no
    // memory of this process; its result is only a status.
    let refused = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0;
    #[cfg(target_os = "linux")]
    if refused {
        eprintln!(
            "note: transparent huge pages could not be turned off: {}",
            std::io::Error::last_os_error()
        );
    }
}
