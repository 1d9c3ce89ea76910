//! `cherga serve`: settings are gathered from flags and environment, validated
//! into a [`ServeConfig`], and only then is anything opened: the address is
//! bound first, then the store opened. The store is the embedded SQLite one
//! unless `--store` names a PostgreSQL database.

use anyhow::{Context, Result, bail};
use cherga_server::ServerConfig;
use cherga_store::Store;
use cherga_store_postgres::PgStore;
use cherga_store_sqlite::{Options, SqliteStore};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CHERGA_ADDR", default_value = "127.0.0.1:7700")]
    addr: String,
    /// The store: `sqlite` (the embedded store in --data-dir) or a PostgreSQL URL
    /// such as `postgres://cherga@db:5432/cherga`, for several nodes on one database.
    #[arg(long, env = "CHERGA_STORE", default_value = "sqlite")]
    store: String,
    /// Directory of the embedded store.
    #[arg(long, env = "CHERGA_DATA_DIR", default_value = "./cherga-data")]
    data_dir: PathBuf,
    /// PostgreSQL only: keep cherga's tables in this schema (created if missing)
    /// instead of the connection's default search_path.
    #[arg(long, env = "CHERGA_PG_SCHEMA")]
    pg_schema: Option<String>,
    /// PostgreSQL only: most connections the node opens at once.
    #[arg(long, env = "CHERGA_PG_POOL_SIZE", default_value_t = cherga_store_postgres::DEFAULT_POOL_SIZE)]
    pg_pool_size: usize,
    /// Largest request body, in bytes.
    #[arg(long, env = "CHERGA_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Largest task payload or result, in bytes.
    #[arg(long, env = "CHERGA_MAX_PAYLOAD_BYTES", default_value_t = 1024 * 1024)]
    max_payload_bytes: usize,
    /// How long the event log (`GET /v1/events`) keeps events, e.g. `24h` or
    /// `7d`; `off` keeps no log and serves no event stream.
    #[arg(long, env = "CHERGA_EVENT_RETENTION", default_value = "24h")]
    event_retention: String,
    /// Log filter, e.g. `info` or `cherga_server=debug` (the debug level of
    /// `cherga_server::observe` logs a line per request).
    #[arg(long, env = "CHERGA_LOG", default_value = "info")]
    log: String,
    /// Log lines as plain `text` (colours only on a terminal) or as one JSON
    /// object per line (`json`), each with the request's span (id, method, route).
    #[arg(long, env = "CHERGA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    security: crate::security::SecurityArgs,
}

/// How log lines are written to stderr.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
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

/// Which store to open.
enum StoreConfig {
    Sqlite { data_dir: PathBuf, event_retention_ms: Option<i64> },
    Postgres(cherga_store_postgres::Options),
}

/// Validated settings of `serve`.
struct ServeConfig {
    addr: SocketAddr,
    store: StoreConfig,
    server: ServerConfig,
    security: crate::security::Security,
}

impl ServeArgs {
    fn validate(self) -> Result<ServeConfig> {
        let addr: SocketAddr = self
            .addr
            .parse()
            .with_context(|| format!("--addr {:?} is not an address like 127.0.0.1:7700", self.addr))?;
        if self.max_payload_bytes == 0 || self.max_body_bytes == 0 {
            bail!("--max-body-bytes and --max-payload-bytes must be positive");
        }
        if self.max_payload_bytes > self.max_body_bytes {
            bail!("--max-payload-bytes must not exceed --max-body-bytes");
        }
        let event_retention_ms = match self.event_retention.trim() {
            "off" => None,
            text => {
                let retention = humantime::parse_duration(text).with_context(|| {
                    format!("--event-retention {text:?} is not a duration such as 24h or 7d, nor `off`")
                })?;
                let ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
                if ms < 1_000 {
                    bail!("--event-retention must be at least 1s (or `off`)");
                }
                Some(ms)
            }
        };
        let store = match self.store.as_str() {
            "sqlite" => {
                if self.pg_schema.is_some() {
                    bail!("--pg-schema applies to a PostgreSQL --store only");
                }
                StoreConfig::Sqlite { data_dir: self.data_dir, event_retention_ms }
            }
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let options = cherga_store_postgres::Options {
                    schema: self.pg_schema,
                    pool_size: self.pg_pool_size,
                    event_retention_ms,
                    ..cherga_store_postgres::Options::new(url)
                };
                // Checked now, so a bad URL or schema fails before anything opens.
                options.connection_config().map_err(|e| anyhow::anyhow!("--store / --pg-schema: {e}"))?;
                StoreConfig::Postgres(options)
            }
            other => bail!("--store must be `sqlite` or a postgres:// URL, not {other:?}"),
        };
        let security = self.security.validate(&addr)?;
        Ok(ServeConfig {
            addr,
            store,
            server: security.server_config(self.max_body_bytes, self.max_payload_bytes),
            security,
        })
    }
}

pub async fn run(args: ServeArgs) -> Result<()> {
    init_log(&args.log, args.log_format)?;
    let config = args.validate()?;
    // Bound before the store opens: an address in use then stops the server
    // before it creates a data directory it would leave behind. Connections
    // that arrive while the store opens wait in the listen backlog.
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?;
    match &config.store {
        StoreConfig::Sqlite { data_dir, event_retention_ms } => {
            let options = Options { event_retention_ms: *event_retention_ms, ..Options::in_dir(data_dir) };
            let store = SqliteStore::open(options)
                .with_context(|| format!("opening the store in {}", data_dir.display()))?;
            tracing::info!(data_dir = %data_dir.display(), "embedded store open");
            serve_on(listener, store, config).await
        }
        StoreConfig::Postgres(options) => {
            // The URL may hold a password: it is not logged.
            let store = PgStore::open(options.clone()).await.context("opening the PostgreSQL store")?;
            tracing::info!(schema = ?options.schema, pool_size = options.pool_size, "PostgreSQL store open");
            serve_on(listener, store, config).await
        }
    }
}

/// Serves on `listener` with `store` until SIGINT or SIGTERM.
async fn serve_on<S: Store>(listener: tokio::net::TcpListener, store: S, config: ServeConfig) -> Result<()> {
    let local = listener.local_addr()?;
    config.security.log();
    // Before the line below: a SIGHUP sent once it is out must find the handler.
    config.security.reload_on_hangup();
    tracing::info!(addr = %local, "cherga listening");
    // One line on stdout that scripts and tests can read to learn the port.
    println!("listening on {}://{local}", config.security.scheme());
    cherga_server::serve(listener, Arc::new(store), config.server, shutdown_signal()).await?;
    Ok(())
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
