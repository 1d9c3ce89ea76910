//! The configuration of `cherga serve`, in two phases.
//!
//! 1. **Raw settings.** [`Settings`] is every setting `serve` takes, each one
//!    field: its flag, its environment variable and its default. A TOML file
//!    (`--config FILE`) supplies values too, under the flags' names
//!    (`max-body-bytes = 1048576`): [`with_file`] makes them the defaults of
//!    the flags, so clap's own order gives flags > environment > file >
//!    built-in default, and clap's own parsers check file values as they check
//!    flags. Nothing is opened or started in this phase.
//! 2. **Validation.** [`Settings::validate`] checks the settings together and
//!    loads what they name (key file, certificate) into one [`Config`], which
//!    is all `serve` is passed. `cherga config check FILE` stops there.
//!
//! A new setting is a field of [`Settings`] (and its use in
//! [`Settings::validate`]); the file, the environment and the check follow.
//!
//! **Invariant:** the server never runs without authentication on an address
//! other clients can reach, unless told so with `--insecure` (see
//! [`crate::security`]).

use anyhow::{Context, Result, anyhow, bail};
use cherga_auth::{KeySet, Policy, Verifier};
use cherga_server::{AllowedHosts, AuthConfig, HttpLimits, ServerConfig, TlsCerts, TokenKeys};
use clap::{ArgAction, Args};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::security::{Security, exposure_of};

// Every setting of `cherga serve`. Its long flag names, without the dashes,
// are the keys of the configuration file. (A plain comment: clap would show a
// doc comment of a flattened struct as the subcommand's description.)
#[derive(Args, Debug, Clone)]
pub struct Settings {
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
    /// Key file of the keys tokens may be signed with (JSON, see `cherga keygen`).
    /// Turns authentication on: every request but /healthz and /v1/openapi.json
    /// then needs `Authorization: Bearer <token>`. Reloaded on SIGHUP.
    #[arg(long, env = "CHERGA_AUTH_KEYS", value_name = "FILE")]
    auth_keys: Option<PathBuf>,
    /// The issuer (`iss`) every token must name.
    #[arg(long, env = "CHERGA_AUTH_ISSUER", default_value = "cherga")]
    auth_issuer: String,
    /// The audience (`aud`) every token must include.
    #[arg(long, env = "CHERGA_AUTH_AUDIENCE", default_value = "cherga")]
    auth_audience: String,
    /// Failed authentications a client (IP address; IPv6 /64) may make per minute
    /// before it is refused (429) for the rest of the minute. 0: no limit.
    #[arg(long, env = "CHERGA_MAX_AUTH_FAILURES", default_value_t = 30)]
    max_auth_failures: u32,
    /// Serve without authentication on an address that is not loopback. Without
    /// it, such a server refuses to start.
    #[arg(long, env = "CHERGA_INSECURE")]
    insecure: bool,
    /// Host names and IP addresses (comma-separated, no ports) that requests may
    /// be addressed to besides localhost and loopback addresses, when
    /// authentication is off; also the hosts whose web pages (`Origin`) may send
    /// requests. Other hosts get 403, so that no web page reaches the server
    /// through a name of its own (DNS rebinding).
    #[arg(long, env = "CHERGA_ALLOWED_HOSTS", value_name = "HOSTS", default_value = "")]
    allowed_hosts: String,
    /// TLS certificate chain (PEM, leaf first); with --tls-key. Reloaded on SIGHUP.
    #[arg(long, env = "CHERGA_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1); with --tls-cert. Reloaded on SIGHUP.
    #[arg(long, env = "CHERGA_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Most connections open at once; more are closed as soon as they are accepted.
    #[arg(long, env = "CHERGA_MAX_CONNECTIONS", default_value_t = HttpLimits::DEFAULT.max_connections)]
    max_connections: usize,
    /// Most connections open at once from one client (IP address; IPv6 /64).
    /// Behind a proxy every client is the proxy: raise it there.
    #[arg(long, env = "CHERGA_MAX_CONNECTIONS_PER_CLIENT", default_value_t = HttpLimits::DEFAULT.max_connections_per_client)]
    max_connections_per_client: usize,
    /// Longest wait for a request's headers (and between requests on an idle
    /// connection, and for a TLS handshake): slow clients are cut off.
    #[arg(long, env = "CHERGA_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    header_read_timeout: Duration,
    /// Largest request head (request line and headers), in bytes.
    #[arg(long, env = "CHERGA_MAX_HEADER_BYTES", default_value_t = HttpLimits::DEFAULT.max_header_bytes)]
    max_header_bytes: usize,
    /// Longest a request may take, body and long poll included (long polls wait
    /// at most this less one second).
    #[arg(long, env = "CHERGA_REQUEST_TIMEOUT", default_value = "90s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// Most long polls (leases with wait_ms) waiting at once; more get 429.
    #[arg(long, env = "CHERGA_MAX_WAITING_LEASES", default_value_t = HttpLimits::DEFAULT.max_waiting_leases)]
    max_waiting_leases: usize,
    /// Deepest nesting of arrays and objects in a request body, its own braces
    /// included (a payload may nest one level less); deeper bodies get 400.
    #[arg(long, env = "CHERGA_MAX_JSON_DEPTH", default_value_t = cherga_server::DEFAULT_MAX_JSON_DEPTH)]
    max_json_depth: usize,
    /// Also serve an SQS-compatible endpoint on this address (JSON 1.0 and query
    /// protocols; docs/sqs.md), e.g. `127.0.0.1:9324`. Off by default.
    #[arg(long, env = "CHERGA_SQS_ADDR")]
    sqs_addr: Option<String>,
    /// Access keys of the SQS endpoint, one a line: `<access key id> <secret>
    /// <scope>...` (`cherga token issue --sqs` prints one). Turns SigV4
    /// verification on; without it the endpoint serves loopback addresses only
    /// (or any with --insecure).
    #[arg(long, env = "CHERGA_SQS_KEYS", value_name = "FILE")]
    sqs_keys: Option<PathBuf>,
    /// The region the SQS endpoint names in queue ARNs.
    #[arg(long, env = "CHERGA_SQS_REGION", default_value = "us-east-1")]
    sqs_region: String,
}

/// The deepest `--max-json-depth`: serde_json, the Rust client's parser, refuses
/// deeper JSON (its recursion limit is 128).
const MAX_JSON_DEPTH: usize = 128;

/// How log lines are written to stderr.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Which store to open.
pub enum StoreConfig {
    Sqlite { data_dir: PathBuf, event_retention_ms: Option<i64> },
    Postgres(cherga_store_postgres::Options),
}

/// Validated settings of the SQS endpoint.
pub struct SqsServe {
    pub addr: SocketAddr,
    pub config: cherga_sqs::SqsConfig,
}

/// The validated settings of `serve`: everything the server is started with.
pub struct Config {
    pub addr: SocketAddr,
    /// The SQS endpoint, when `--sqs-addr` asks for one.
    pub sqs: Option<SqsServe>,
    /// The log filter (checked to be one).
    pub log: String,
    pub log_format: LogFormat,
    pub store: StoreConfig,
    pub server: ServerConfig,
    pub security: Security,
}

impl Settings {
    /// Checks the settings together and loads the key file and the certificate.
    ///
    /// # Errors
    /// A message naming the setting at fault.
    pub fn validate(self) -> Result<Config> {
        let addr: SocketAddr = self
            .addr
            .parse()
            .with_context(|| format!("--addr {:?} is not an address like 127.0.0.1:7700", self.addr))?;
        tracing_subscriber::EnvFilter::try_new(&self.log)
            .with_context(|| format!("--log {:?} is not a valid filter", self.log))?;
        let log = self.log.clone();
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
                StoreConfig::Sqlite { data_dir: self.data_dir.clone(), event_retention_ms }
            }
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let options = cherga_store_postgres::Options {
                    schema: self.pg_schema.clone(),
                    pool_size: self.pg_pool_size,
                    event_retention_ms,
                    ..cherga_store_postgres::Options::new(url)
                };
                // Checked now, so a bad URL or schema fails before anything opens.
                options.connection_config().map_err(|e| anyhow!("--store / --pg-schema: {e}"))?;
                StoreConfig::Postgres(options)
            }
            other => bail!("--store must be `sqlite` or a postgres:// URL, not {other:?}"),
        };
        let security = self.security(&addr)?;
        let server = ServerConfig {
            max_body_bytes: self.max_body_bytes,
            max_payload_bytes: self.max_payload_bytes,
            max_json_depth: security.max_json_depth,
            http: security.http.clone(),
            auth: security.auth.as_ref().map(|(config, _, _)| config.clone()),
            allowed_hosts: security.allowed_hosts.clone(),
            tls: security.tls.clone(),
        };
        let sqs = self.sqs(&security)?;
        Ok(Config { addr, sqs, log, log_format: self.log_format, store, server, security })
    }

    /// The SQS endpoint's address, access keys and region.
    fn sqs(&self, security: &Security) -> Result<Option<SqsServe>> {
        let Some(text) = &self.sqs_addr else {
            if self.sqs_keys.is_some() {
                bail!("--sqs-keys applies to the SQS endpoint: give --sqs-addr too");
            }
            return Ok(None);
        };
        let addr: SocketAddr = text
            .parse()
            .with_context(|| format!("--sqs-addr {text:?} is not an address like 127.0.0.1:9324"))?;
        let keys = match &self.sqs_keys {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading --sqs-keys {}", path.display()))?;
                let keys = cherga_sqs::AccessKeys::parse(&text)
                    .map_err(|e| anyhow!("--sqs-keys {}: {e}", path.display()))?;
                Some(std::sync::Arc::new(keys))
            }
            None if addr.ip().is_loopback() || security.insecure_allowed => None,
            None => bail!(
                "refusing to serve the SQS endpoint without authentication on {addr}, which is \
                 not a loopback address: give --sqs-keys (`cherga token issue --sqs`), or --insecure"
            ),
        };
        if self.sqs_region.is_empty()
            || !self.sqs_region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            bail!("--sqs-region must be a region name such as us-east-1");
        }
        let loopback_only = keys.is_none() && addr.ip().is_loopback();
        let config = cherga_sqs::SqsConfig { keys, region: self.sqs_region.clone(), loopback_only };
        Ok(Some(SqsServe { addr, config }))
    }

    /// Authentication, TLS and the limits on connections and requests.
    fn security(&self, addr: &SocketAddr) -> Result<Security> {
        if self.auth_issuer.is_empty() || self.auth_audience.is_empty() {
            bail!("--auth-issuer and --auth-audience must not be empty");
        }
        let mut key_file_exposure = None;
        let auth = match &self.auth_keys {
            Some(path) => {
                let policy = Policy {
                    issuer: self.auth_issuer.clone(),
                    audience: self.auth_audience.clone(),
                    leeway_s: cherga_auth::LEEWAY_S,
                };
                let keys = KeySet::from_file(path).context("--auth-keys")?;
                let private = keys.kids().iter().any(|kid| keys.get(kid).is_some_and(|key| key.can_sign()));
                key_file_exposure = exposure_of(path, private);
                let config = AuthConfig {
                    keys: TokenKeys::new(Verifier::new(keys, policy.clone())),
                    max_failures_per_minute: self.max_auth_failures,
                };
                Some((config, path.clone(), policy))
            }
            None if addr.ip().is_loopback() || self.insecure => None,
            None => bail!(
                "refusing to serve without authentication on {addr}, which is not a loopback address: \
                 give --auth-keys (make a key with `cherga keygen`), or --insecure if the network is \
                 protected some other way"
            ),
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsCerts::load(cert, key).context("--tls-cert / --tls-key")?),
            (None, None) => None,
            _ => bail!("--tls-cert and --tls-key go together: give both or neither"),
        };
        if self.max_connections == 0 || self.max_connections_per_client == 0 || self.max_waiting_leases == 0 {
            bail!(
                "--max-connections, --max-connections-per-client and --max-waiting-leases must be positive"
            );
        }
        if !(1024..=1024 * 1024).contains(&self.max_header_bytes) {
            bail!("--max-header-bytes must be between 1024 and 1048576");
        }
        if self.header_read_timeout.is_zero() {
            bail!("--header-read-timeout must be positive");
        }
        if self.request_timeout < Duration::from_secs(2) {
            bail!("--request-timeout must be at least 2s");
        }
        let allowed_hosts = AllowedHosts::parse(&self.allowed_hosts).context("--allowed-hosts")?;
        // Four: a lease's acks (body, list, ack) with a result that is an array.
        if !(4..=MAX_JSON_DEPTH).contains(&self.max_json_depth) {
            bail!("--max-json-depth must be between 4 and {MAX_JSON_DEPTH}");
        }
        Ok(Security {
            insecure: auth.is_none() && !addr.ip().is_loopback(),
            insecure_allowed: self.insecure,
            key_file_exposure,
            http: HttpLimits {
                max_connections: self.max_connections,
                max_connections_per_client: self.max_connections_per_client,
                header_read_timeout: self.header_read_timeout,
                max_header_bytes: self.max_header_bytes,
                request_timeout: self.request_timeout,
                max_waiting_leases: self.max_waiting_leases,
            },
            max_json_depth: self.max_json_depth,
            allowed_hosts,
            auth,
            tls,
        })
    }
}

/// Where a subcommand that takes [`Settings`] finds its configuration file: the
/// argument `arg` (an id of clap's, such as `config`) of the subcommand at
/// `path` (such as `["serve"]`).
pub struct FileArg {
    pub path: &'static [&'static str],
    pub arg: &'static str,
}

/// `command` (the whole CLI) with the settings of the TOML file at `file` made
/// the defaults of the flags of the subcommand `at`.
///
/// # Errors
/// The file cannot be read or is not TOML, or a key is not a setting, or a
/// value is not one its flag takes: each message names the file and the key.
pub fn with_file(command: clap::Command, at: &FileArg, file: &Path) -> Result<clap::Command> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not TOML", file.display()))?;
    let mut sub = &command;
    for name in at.path {
        sub = sub.find_subcommand(name).expect("the subcommand of a FileArg exists");
    }
    let mut defaults = Vec::new();
    for (key, value) in &table {
        let arg = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && a.get_id() != at.arg && a.get_id() != "help")
            .ok_or_else(|| {
                let keys: Vec<&str> = sub
                    .get_arguments()
                    .filter(|a| a.get_id() != at.arg && a.get_id() != "help")
                    .filter_map(|a| a.get_long())
                    .collect();
                anyhow!("{}: `{key}` is not a setting; the settings are: {}", file.display(), keys.join(", "))
            })?;
        let text = value_text(arg, value).map_err(|e| anyhow!("{}: {key}: {e}", file.display()))?;
        defaults.push((arg.get_id().to_string(), text));
    }
    let apply = move |mut sub: clap::Command| {
        for (id, text) in defaults {
            // Leaked once per process: clap keeps defaults as `&'static str`.
            let text: &'static str = Box::leak(text.into_boxed_str());
            sub = sub.mut_arg(id, |a| a.default_value(text));
        }
        sub
    };
    Ok(match at.path {
        [one] => command.mut_subcommand(one, apply),
        [one, two] => command.mut_subcommand(one, |c| c.mut_subcommand(two, apply)),
        _ => unreachable!("FileArg paths are one or two subcommands deep"),
    })
}

/// Parses the command line of `A`, with the settings of a configuration file
/// when one of `files` names one: a first pass finds the file, a second reads
/// the flags again with the file's settings as their defaults. `--help` and
/// errors in the flags end the process, as clap does.
///
/// # Errors
/// The file is not a valid configuration file (see [`with_file`]).
pub fn parse<A: clap::Parser>(files: &[FileArg]) -> Result<(A, clap::ArgMatches)> {
    let matches = A::command().get_matches();
    for at in files {
        let mut sub = Some(&matches);
        for name in at.path {
            sub = sub.and_then(|m| m.subcommand_matches(name));
        }
        if let Some(file) = sub.and_then(|m| m.get_one::<PathBuf>(at.arg)) {
            let matches = with_file(A::command(), at, file)?.get_matches();
            return Ok((A::from_arg_matches(&matches)?, matches));
        }
    }
    Ok((A::from_arg_matches(&matches)?, matches))
}

/// `cherga config check FILE`: the settings `serve` would run with here (the
/// file, then the environment and the flags given; `matches` are those of the
/// `check` subcommand), validated, and each printed with where it came from.
/// Opens no store and binds no address.
///
/// # Errors
/// The settings are not valid, with a message naming the one at fault.
pub fn check(file: &Path, settings: Settings, matches: &clap::ArgMatches) -> Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not TOML", file.display()))?;
    let config =
        settings.validate().with_context(|| format!("{}, with the environment and flags", file.display()))?;
    println!("# {}: valid. The settings `cherga serve` would run with here:", file.display());
    let args = <Settings as Args>::augment_args(clap::Command::new("settings"));
    for arg in args.get_arguments() {
        let (id, Some(key)) = (arg.get_id().as_str(), arg.get_long()) else { continue };
        let Some(values) = matches.get_raw(id) else {
            println!("# {key}: not set");
            continue;
        };
        let value = values.map(|v| v.to_string_lossy().into_owned()).collect::<Vec<_>>().join(",");
        let value = if key == "store" { without_password(&value) } else { value };
        let source = match matches.value_source(id) {
            Some(clap::parser::ValueSource::CommandLine) => "flag",
            Some(clap::parser::ValueSource::EnvVariable) => "environment",
            _ if table.contains_key(key) => "file",
            _ => "default",
        };
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            println!("{key} = {value}  # {source}");
        } else {
            println!("{key} = {value:?}  # {source}");
        }
    }
    if let Some(exposure) = &config.security.key_file_exposure {
        println!("# warning: {exposure}");
    }
    Ok(())
}

/// A URL with the password in its user info, if any, replaced by `***`.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((userinfo, host)) = rest.split_once('@') else { return url.to_owned() };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// A TOML value as the text its flag would take, checked by the flag's own
/// parser.
fn value_text(arg: &clap::Arg, value: &toml::Value) -> Result<String> {
    let long = arg.get_long().expect("settings have long flags");
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return match value {
            toml::Value::Boolean(b) => Ok(b.to_string()),
            _ => bail!("must be true or false"),
        };
    }
    let text = match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        // A list setting such as allowed-hosts is a comma-separated string on
        // the command line; a TOML array of strings says the same.
        toml::Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or_else(|| anyhow!("must be a list of strings")))
            .collect::<Result<Vec<_>>>()?
            .join(","),
        _ => bail!("must be a string or an integer"),
    };
    // The flag's parser, alone: a value it refuses fails here, naming the file.
    let probe = clap::Command::new("probe").no_binary_name(true).arg(arg.clone().env(None::<&str>));
    if let Err(error) = probe.try_get_matches_from([format!("--{long}={text}")]) {
        let message = error.to_string();
        let first = message.lines().next().unwrap_or_default().trim_start_matches("error: ");
        bail!("{first}");
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Sub {
        Serve {
            #[arg(long)]
            config: Option<PathBuf>,
            #[command(flatten)]
            settings: Settings,
        },
    }

    const AT: FileArg = FileArg { path: &["serve"], arg: "config" };

    fn file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    fn parse(file: &Path, args: &[&str]) -> Result<Settings> {
        let command = with_file(Cli::command(), &AT, file)?;
        let matches = command.try_get_matches_from(["cherga", "serve"].iter().chain(args))?;
        let Sub::Serve { settings, .. } = Cli::from_arg_matches(&matches)?.command;
        Ok(settings)
    }

    #[test]
    fn the_file_sets_what_flags_do_not() {
        let f = file(
            "max-connections = 77\nheader-read-timeout = \"5s\"\nallowed-hosts = [\"a.example\", \"b.example\"]\n\
             insecure = true\nstore = \"postgres://db/cherga\"\n",
        );
        let s = parse(f.path(), &["--max-connections", "9"]).unwrap();
        assert_eq!(s.max_connections, 9, "a flag beats the file");
        assert_eq!(s.header_read_timeout, Duration::from_secs(5));
        assert_eq!(s.allowed_hosts, "a.example,b.example");
        assert!(s.insecure);
        assert_eq!(s.store, "postgres://db/cherga");
        assert_eq!(s.max_json_depth, cherga_server::DEFAULT_MAX_JSON_DEPTH, "built-in default");
    }

    #[test]
    fn a_false_in_the_file_turns_a_switch_off_and_the_flag_on() {
        let f = file("insecure = false\n");
        assert!(!parse(f.path(), &[]).unwrap().insecure);
        assert!(parse(f.path(), &["--insecure"]).unwrap().insecure);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file_and_the_key() {
        let f = file("max-conections = 5\n");
        let error = format!("{:#}", parse(f.path(), &[]).unwrap_err());
        assert!(error.contains("`max-conections` is not a setting"), "{error}");
        assert!(error.contains("max-connections"), "the list of settings: {error}");
        for (text, needle) in [
            ("max-connections = \"many\"\n", "max-connections: invalid value 'many'"),
            ("header-read-timeout = 5\n", "header-read-timeout: invalid value '5'"),
            ("insecure = \"yes\"\n", "insecure: must be true or false"),
            ("max-connections = 1.5\n", "max-connections: must be a string or an integer"),
            ("config = \"other.toml\"\n", "`config` is not a setting"),
            ("addr = \n", "is not TOML"),
        ] {
            let f = file(text);
            let error = format!("{:#}", parse(f.path(), &[]).unwrap_err());
            assert!(error.contains(needle), "{text:?}: {error}");
            assert!(error.contains(&f.path().display().to_string()), "{error}");
        }
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(without_password("postgres://u:secret@db/x"), "postgres://u:***@db/x");
        assert_eq!(without_password("postgres://u@db/x"), "postgres://u@db/x");
        assert_eq!(without_password("sqlite"), "sqlite");
    }

    #[test]
    fn validation_checks_settings_together() {
        let f = file("tls-cert = \"cert.pem\"\n");
        let error = format!("{:#}", parse(f.path(), &[]).unwrap().validate().err().unwrap());
        assert!(error.contains("--tls-cert and --tls-key go together"), "{error}");
        let f = file("max-payload-bytes = 2048\nmax-body-bytes = 1024\n");
        let error = format!("{:#}", parse(f.path(), &[]).unwrap().validate().err().unwrap());
        assert!(error.contains("must not exceed"), "{error}");
        let f = file("addr = \"0.0.0.0:7700\"\n");
        let error = format!("{:#}", parse(f.path(), &[]).unwrap().validate().err().unwrap());
        assert!(error.contains("refusing to serve without authentication"), "{error}");
    }
}
