//! `cherga`: the broker binary. `cherga serve` runs the server on the embedded
//! store or on PostgreSQL; the other subcommands talk to a running server over HTTP.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod backup;
mod bench;
mod bulk;
mod cli;
mod config;
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
    Serve(Box<serve::ServeArgs>),
    /// Checks a configuration file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Enqueues one task.
    Enqueue(cli::EnqueueArgs),
    /// Lists queues with their counts per state.
    Queues(cli::QueuesArgs),
    /// Writes a consistent copy of the embedded store, while it serves or not.
    Backup(backup::BackupArgs),
    /// Makes a data directory's store from a backup.
    Restore(backup::RestoreArgs),
    /// Asks a running server whether it is up (`GET /healthz`); fails if not.
    Health(cli::HealthArgs),
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
    /// Shows a queue, pauses or resumes it, changes its settings, deletes it.
    Queue {
        #[command(subcommand)]
        command: cli::queue::QueueCommand,
    },
    /// Follows the event stream: one line per task transition.
    Tail(cli::tail::TailArgs),
    /// Leases one task and prints it with its lease token (for scripts).
    Lease(cli::script::LeaseArgs),
    /// Acknowledges a leased task: it succeeded.
    Ack(cli::script::AckArgs),
    /// Gives a leased task back as failed: retried later, or dead.
    Nack(cli::script::NackArgs),
    /// Enqueues the tasks of an NDJSON file in batches; running it again creates nothing new.
    Import(cli::transfer::ImportArgs),
    /// Writes a queue's tasks as NDJSON.
    Export(cli::transfer::ExportArgs),
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

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validates a configuration file (with the environment and any `serve`
    /// flags given) without starting, and prints each setting and its source.
    Check {
        /// The TOML file.
        file: std::path::PathBuf,
        #[command(flatten)]
        settings: Box<config::Settings>,
    },
}

/// Where the subcommands that take the settings of `serve` find a file of them.
const CONFIG_FILES: [config::FileArg; 2] = [
    config::FileArg { path: &["serve"], arg: "config" },
    config::FileArg { path: &["config", "check"], arg: "file" },
];

fn main() -> std::process::ExitCode {
    match config::parse::<Args>(&CONFIG_FILES).and_then(|(args, matches)| run(args, &matches)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            if let Some(exit) = error.downcast_ref::<cli::Exit>() {
                eprintln!("{exit}");
                return std::process::ExitCode::from(exit.status);
            }
            // The chain of causes, one line, without a backtrace: these are
            // user-facing errors.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args, matches: &clap::ArgMatches) -> Result<()> {
    if let Command::Config { command: ConfigCommand::Check { file, settings } } = args.command {
        let matches = matches
            .subcommand_matches("config")
            .and_then(|m| m.subcommand_matches("check"))
            .expect("the matches of `config check`");
        return config::check(&file, *settings, matches);
    }
    if matches!(args.command, Command::Serve(_)) {
        no_transparent_huge_pages();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match args.command {
            Command::Serve(a) => serve::run(*a).await,
            Command::Enqueue(a) => cli::enqueue(a).await,
            Command::Queues(a) => cli::queues(a).await,
            Command::Health(a) => cli::health(a).await,
            Command::Backup(a) => backup::backup(a),
            Command::Restore(a) => backup::restore(a).await,
            Command::Task { command } => cli::task(command).await,
            Command::Retry(a) => bulk::run(bulk::Action::Retry, a).await,
            Command::Cancel(a) => bulk::run(bulk::Action::Cancel, a).await,
            Command::Purge(a) => bulk::run(bulk::Action::Purge, a).await,
            Command::Queue { command } => cli::queue::run(command).await,
            Command::Tail(a) => cli::tail::run(a).await,
            Command::Lease(a) => cli::script::lease(a).await,
            Command::Ack(a) => cli::script::ack(a).await,
            Command::Nack(a) => cli::script::nack(a).await,
            Command::Import(a) => cli::transfer::import(a).await,
            Command::Export(a) => cli::transfer::export(a).await,
            Command::Bench(a) => bench::run(a).await,
            Command::Keygen(a) => token::keygen(a),
            Command::Token { command } => token::token(command).await,
            Command::Config { .. } => unreachable!("answered above"),
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Clap checks the whole command line (unique names, valid defaults) here
    /// rather than when a user first runs the subcommand.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Args::command().debug_assert();
    }
}
