//! `cherga serve`: settings are gathered from flags and environment, validated
//! into a [`ServeConfig`], and only then is anything opened.

use anyhow::{Context, Result, bail};
use cherga_server::ServerConfig;
use cherga_store::Store;
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
    /// Directory of the embedded store.
    #[arg(long, env = "CHERGA_DATA_DIR", default_value = "./cherga-data")]
    data_dir: PathBuf,
    /// Largest request body, in bytes.
    #[arg(long, env = "CHERGA_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Largest task payload or result, in bytes.
    #[arg(long, env = "CHERGA_MAX_PAYLOAD_BYTES", default_value_t = 1024 * 1024)]
    max_payload_bytes: usize,
    /// Log filter, e.g. `info` or `cherga_server=debug`.
    #[arg(long, env = "CHERGA_LOG", default_value = "info")]
    log: String,
}

/// Validated settings of `serve`.
struct ServeConfig {
    addr: SocketAddr,
    data_dir: PathBuf,
    server: ServerConfig,
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
        Ok(ServeConfig {
            addr,
            data_dir: self.data_dir,
            server: ServerConfig {
                max_body_bytes: self.max_body_bytes,
                max_payload_bytes: self.max_payload_bytes,
            },
        })
    }
}

pub async fn run(args: ServeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).context("--log is not a valid filter")?,
        )
        .with_writer(std::io::stderr)
        .init();
    let config = args.validate()?;
    let store = SqliteStore::open(Options::in_dir(&config.data_dir))
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    tracing::info!(data_dir = %config.data_dir.display(), "embedded store open");
    serve_on(store, config).await
}

/// Binds the address and serves with `store` until SIGINT or SIGTERM.
async fn serve_on<S: Store>(store: S, config: ServeConfig) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "cherga listening");
    // One line on stdout that scripts and tests can read to learn the port.
    println!("listening on http://{local}");
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
