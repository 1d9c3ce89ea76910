//! `cherga serve`: the settings (flags, environment, `--config` file) are
//! validated into one [`Config`] (see [`crate::config`]), and only then is
//! anything opened: the address is bound first, then the store opened. The
//! store is the embedded SQLite one unless `--store` names a PostgreSQL database.

use crate::config::{Config, LogFormat, Settings, StoreConfig};
use anyhow::{Context, Result};
use cherga_store::Store;
use cherga_store_postgres::PgStore;
use cherga_store_sqlite::{Options, SqliteStore};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A TOML file of settings, keyed by the long flags' names
    /// (`max-body-bytes = 1048576`). Flags and environment variables win over it.
    #[arg(long, env = "CHERGA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
}

pub async fn run(args: ServeArgs) -> Result<()> {
    let config = args.settings.validate()?;
    init_log(&config.log, config.log_format)?;
    if let Some(file) = &args.config {
        tracing::info!(config = %file.display(), "settings from the file, under flags and environment");
    }
    // Bound before the store opens: an address in use then stops the server
    // before it creates a data directory it would leave behind. Connections
    // that arrive while the store opens wait in the listen backlog.
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?;
    let sqs_listener = match &config.sqs {
        Some(sqs) => Some(
            tokio::net::TcpListener::bind(sqs.addr)
                .await
                .with_context(|| format!("binding --sqs-addr {}", sqs.addr))?,
        ),
        None => None,
    };
    match &config.store {
        StoreConfig::Sqlite { data_dir, event_retention_ms } => {
            let options = Options { event_retention_ms: *event_retention_ms, ..Options::in_dir(data_dir) };
            let store = SqliteStore::open(options)
                .with_context(|| format!("opening the store in {}", data_dir.display()))?;
            tracing::info!(data_dir = %data_dir.display(), "embedded store open");
            serve_on(listener, sqs_listener, store, config).await
        }
        StoreConfig::Postgres(options) => {
            // The URL may hold a password: it is not logged.
            let store = PgStore::open(options.clone()).await.context("opening the PostgreSQL store")?;
            tracing::info!(schema = ?options.schema, pool_size = options.pool_size, "PostgreSQL store open");
            serve_on(listener, sqs_listener, store, config).await
        }
    }
}

/// Installs the log subscriber: `filter` to stderr, in `format`.
fn init_log(filter: &str, format: LogFormat) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).context("--log is not a valid filter")?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        // Colour codes only for a person at a terminal, not in files or collectors.
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
    }
    Ok(())
}

/// Serves on `listener` with `store` until SIGINT or SIGTERM.
async fn serve_on<S: Store>(
    listener: tokio::net::TcpListener,
    sqs_listener: Option<tokio::net::TcpListener>,
    store: S,
    mut config: Config,
) -> Result<()> {
    let local = listener.local_addr()?;
    let extra = match (sqs_listener, config.sqs.take()) {
        (Some(listener), Some(sqs)) => {
            let sqs_local = listener.local_addr()?;
            tracing::info!(addr = %sqs_local, signed = sqs.config.keys.is_some(), "SQS endpoint listening");
            let router: cherga_server::MakeRouter<S> =
                Box::new(move |app| cherga_sqs::router(Arc::new(SqsHost(app)), sqs.config));
            Some((sqs_local, cherga_server::Endpoint { listener, router }))
        }
        _ => None,
    };
    config.security.log();
    // Before the line below: a SIGHUP sent once it is out must find the handler.
    config.security.reload_on_hangup();
    tracing::info!(addr = %local, "cherga listening");
    // One line on stdout that scripts and tests can read to learn the port.
    println!("listening on {}://{local}", config.security.scheme());
    // The SQS endpoint's line second, so readers of the first are unchanged.
    let scheme = config.security.scheme();
    let extra = extra.map(|(sqs_local, endpoint)| {
        println!("sqs listening on {scheme}://{sqs_local}");
        endpoint
    });
    cherga_server::serve_with(listener, Arc::new(store), config.server, shutdown_signal(), extra).await?;
    Ok(())
}

/// The server as the SQS endpoint's host: its store, its one apply path for
/// effects, its long-poll wake-ups and its shutdown.
struct SqsHost<S: Store>(Arc<cherga_server::App<S>>);

impl<S: Store> cherga_sqs::Host for SqsHost<S> {
    type Store = S;
    fn store(&self) -> &S {
        self.0.store()
    }
    fn apply(&self, effects: &cherga_store::Effects) {
        self.0.apply(effects);
    }
    fn long_polls(&self, queue: &str) -> Arc<tokio::sync::Notify> {
        self.0.long_polls(queue)
    }
    fn shutting_down(&self) -> tokio::sync::watch::Receiver<bool> {
        self.0.shutting_down()
    }
    fn max_wait_ms(&self) -> u64 {
        self.0.max_wait_ms()
    }
    fn now_ms(&self) -> i64 {
        cherga_server::now_ms()
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
