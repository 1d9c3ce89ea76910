//! `cherga`: the broker binary. `cherga serve` runs the server on the embedded
//! store or on PostgreSQL; the other subcommands talk to a running server over HTTP.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
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
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match args.command {
            Command::Serve(a) => serve::run(a).await,
            Command::Enqueue(a) => cli::enqueue(a).await,
            Command::Queues(a) => cli::queues(a).await,
            Command::Task { command } => cli::task(command).await,
            Command::Bench(a) => bench::run(a).await,
            Command::Keygen(a) => token::keygen(a),
            Command::Token { command } => token::token(command).await,
        }
    })
}
