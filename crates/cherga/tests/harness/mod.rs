//! Starts the real `cherga` binary on a free port, on either store: the embedded
//! one in a temporary data directory, or PostgreSQL in a fresh schema of the
//! database named by `CHERGA_TEST_POSTGRES_URL` (`--store <url> --pg-schema
//! <schema>`; the schema is dropped when the test ends). Several servers started
//! on one [`Backend`] are several nodes on one database.
//!
//! A server's log (its stderr) is kept in memory, not printed: tests that cut
//! connections or refuse clients on purpose make it log errors and warnings, which
//! in a passing run would only hide real failures. A test that fails prints the
//! logs of its servers (when a [`Server`] is dropped while the test panics), and a
//! test may wait for a line to appear ([`Server::wait_for_log`]).

use serde_json::Value;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Warnings and errors, and the debug lines tests wait for: a long poll that
/// waits (`cherga_server::routes`), a PostgreSQL listener that listens.
const LOG_FILTER: &str =
    "warn,cherga_server::routes=debug,cherga_server::observe=debug,cherga_store_postgres=debug";

/// What the server logs (at debug, which [`LOG_FILTER`] turns on) when a long
/// poll starts to wait: from then on a wake-up reaches it.
pub const LONG_POLL_WAITING: &str = "long poll waiting";

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("http client")
}

/// Waits until `condition` holds, looking every 10 ms; panics naming `what` when it
/// still does not hold after `within`. Tests wait for what they need this way,
/// never for a fixed time.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !condition().await {
        assert!(started.elapsed() < within, "waited {within:?} for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The store the servers of one test run on.
#[derive(Clone)]
pub enum Backend {
    Sqlite,
    Postgres(PgBackend),
}

/// A PostgreSQL schema of one test and the URL its nodes connect with.
#[derive(Clone)]
pub struct PgBackend {
    /// What the nodes connect to: the database, or a proxy in front of it.
    pub url: String,
    pub schema: Arc<PgSchema>,
}

/// A schema dropped, with everything in it, when the last server and test using
/// it are done.
pub struct PgSchema {
    /// The database itself, for what tests do behind the nodes' backs.
    pub admin_url: String,
    pub name: String,
    nodes: AtomicUsize,
}

impl Backend {
    pub fn sqlite() -> Self {
        Backend::Sqlite
    }

    /// A fresh schema in the test database, or `None` when
    /// `CHERGA_TEST_POSTGRES_URL` is unset: the caller then skips its test, and
    /// the skip is recorded (or is a failure in CI; see
    /// [`cherga_store::testkit::postgres_url`]).
    pub fn postgres() -> Option<Self> {
        let url = cherga_store::testkit::postgres_url()?;
        let name = format!("cherga_e2e_{:016x}", fastrand::u64(..));
        let schema = Arc::new(PgSchema { admin_url: url.clone(), name, nodes: AtomicUsize::new(0) });
        Some(Backend::Postgres(PgBackend { url, schema }))
    }

    pub fn pg(&self) -> &PgBackend {
        match self {
            Backend::Postgres(pg) => pg,
            Backend::Sqlite => panic!("this test needs the PostgreSQL backend"),
        }
    }

    /// The same schema reached through another URL (a proxy in front of the database).
    pub fn through(&self, url: String) -> Self {
        Backend::Postgres(PgBackend { url, schema: self.pg().schema.clone() })
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // A thread and runtime of their own: this may run inside a test's runtime.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let client = admin(&url).await;
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).await
            })?;
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("could not drop test schema {}: {error}", self.name);
        }
    }
}

/// A plain client on the test database.
pub async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(connection);
    client
}

fn with_param(url: &str, key: &str, value: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{key}={value}")
}

/// What a server process wrote to stderr, every start of it, line by line.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<String>>);

impl Log {
    /// Collects `stderr` on a thread of its own until the process closes it.
    fn collect(&self, stderr: std::process::ChildStderr) {
        let log = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
    }

    fn note(&self, line: &str) {
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        log.push_str(line);
        log.push('\n');
    }

    /// How many lines so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).lines().filter(|l| l.contains(needle)).count()
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub struct Server {
    child: Option<Child>,
    pub base: String,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    /// The `--store` arguments; for PostgreSQL with an `application_name` of this
    /// node's own, so a test can find (and kill) its connections.
    store_args: Vec<String>,
    /// This node's `application_name` on PostgreSQL.
    pub application_name: Option<String>,
    /// Keeps the schema alive while the server runs.
    _backend: Backend,
    client: reqwest::Client,
    /// Printed only if the test fails.
    pub log: Log,
}

impl Server {
    pub async fn start(backend: &Backend) -> Self {
        Self::start_with(backend, &[]).await
    }

    pub async fn start_with(backend: &Backend, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store_args, application_name) = match backend {
            Backend::Sqlite => (Vec::new(), None),
            Backend::Postgres(pg) => {
                let node = pg.schema.nodes.fetch_add(1, Ordering::Relaxed);
                let app = format!("{}_n{node}", pg.schema.name);
                let url = with_param(&pg.url, "application_name", &app);
                let args = vec![
                    "--store".to_owned(),
                    url,
                    "--pg-schema".to_owned(),
                    pg.schema.name.clone(),
                    "--pg-pool-size".to_owned(),
                    "8".to_owned(),
                ];
                (args, Some(app))
            }
        };
        let mut server = Server {
            child: None,
            base: String::new(),
            dir,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            store_args,
            application_name,
            _backend: backend.clone(),
            client: http(),
            log: Log::default(),
        };
        server.restart().await;
        server
    }

    /// Starts the binary on the same store (after a kill or a stop).
    pub async fn restart(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cherga"))
            .args(["serve", "--addr", "127.0.0.1:0", "--log", LOG_FILTER, "--data-dir"])
            .arg(self.dir.path())
            .args(&self.store_args)
            .args(&self.extra)
            // Plain text: the log is read by tests and people, not a terminal.
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cherga");
        self.log.note(&format!("[harness] cherga started, pid {}", child.id()));
        self.log.collect(child.stderr.take().expect("stderr"));
        let stdout = child.stdout.take().expect("stdout");
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await
        .unwrap()
        .expect("read the listening line");
        self.base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        self.child = Some(child);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Waits until a line of the server's log contains `needle` `times` times in
    /// all (a count, so a test can wait for the next of several such lines).
    pub async fn wait_for_log(&self, needle: &str, times: usize) {
        let started = Instant::now();
        while self.log.count(needle) < times {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "waited 10 s for {times} log line(s) with {needle:?}; log:\n{}",
                self.log.text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The process id of the running server, to send it signals.
    #[allow(dead_code)] // Used by tests/security.rs, not by every test binary.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no chance to flush or close anything.
    pub async fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill -9");
        tokio::task::spawn_blocking(move || child.wait()).await.unwrap().expect("reaped");
    }

    /// SIGTERM, then wait for the exit.
    pub async fn sigterm(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM failed");
        tokio::task::spawn_blocking(move || child.wait()).await.unwrap().expect("exit status")
    }

    pub async fn request(&self, method: &str, path: &str, body: String) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = self
            .client
            .request(method, self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
        };
        (status, value)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.request("POST", path, body.to_string()).await
    }

    pub async fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        self.request("POST", path, body.to_owned()).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.request("PUT", path, body.to_string()).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, String::new()).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.request("DELETE", path, String::new()).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- log of the cherga server at {} ----\n{}---- end of log ----",
                self.base,
                self.log.text()
            );
        }
    }
}

/// A TCP proxy in front of PostgreSQL that a test can cut, to give a node a
/// database outage without touching the machine's PostgreSQL: while down it
/// closes every connection through it and refuses new ones.
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::Notify::new());
        let accept = {
            let (up, cut) = (up.clone(), cut.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else { return };
                    if !up.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let (upstream, cut) = (upstream.clone(), cut.clone());
                    tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            () = cut.notified() => {}
                        }
                    });
                }
            })
        };
        Self { port, up, cut, accept }
    }

    /// Cuts every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut.notify_waiters();
    }
}

/// `url` (a `postgres://` URL) with its host and port replaced by `127.0.0.1:port`.
pub fn via_port(url: &str, port: u16) -> String {
    let config: tokio_postgres::Config = url.parse().expect("a PostgreSQL URL");
    let user = config.get_user().unwrap_or("postgres");
    let password =
        config.get_password().map(|p| format!(":{}", String::from_utf8_lossy(p))).unwrap_or_default();
    let dbname = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}{password}@127.0.0.1:{port}/{dbname}")
}

/// `host:port` of the database `url` names.
pub fn upstream_of(url: &str) -> String {
    let config: tokio_postgres::Config = url.parse().expect("a PostgreSQL URL");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}
