//! The security settings of `cherga serve`: authentication, TLS and the limits
//! on connections and requests; validated into a [`Security`], and reloaded on
//! SIGHUP (the key file and the certificate) without a restart.
//!
//! **Invariant:** the server never runs without authentication on an address
//! other clients can reach, unless told so with `--insecure`; without
//! authentication it answers only requests addressed to loopback hosts and
//! those of `--allowed-hosts`.

use anyhow::{Context, Result, bail};
use cherga_auth::{KeySet, Policy, Verifier};
use cherga_server::{AllowedHosts, AuthConfig, HttpLimits, ServerConfig, TlsCerts, TokenKeys};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct SecurityArgs {
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
    /// TLS certificate chain (PEM, leaf first). Reloaded on SIGHUP.
    #[arg(long, env = "CHERGA_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1). Reloaded on SIGHUP.
    #[arg(long, env = "CHERGA_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
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
}

/// The deepest `--max-json-depth`: serde_json, the Rust client's parser, refuses
/// deeper JSON (its recursion limit is 128).
const MAX_JSON_DEPTH: usize = 128;

/// Validated security settings, and what SIGHUP reloads.
pub struct Security {
    /// Auth is off on an address other hosts can reach (`--insecure`).
    insecure: bool,
    /// `--insecure` was given: endpoints without authentication may listen on
    /// addresses other hosts can reach.
    insecure_allowed: bool,
    /// What other users of this machine may do with the key file, when they
    /// should not (see [`exposure_of`]).
    key_file_exposure: Option<String>,
    http: HttpLimits,
    max_json_depth: usize,
    allowed_hosts: AllowedHosts,
    auth: Option<(AuthConfig, PathBuf, Policy)>,
    tls: Option<Arc<TlsCerts>>,
}

impl SecurityArgs {
    /// Checks the settings and loads the key file and the certificate.
    ///
    /// # Errors
    /// A message naming the setting at fault.
    pub fn validate(self, addr: &SocketAddr) -> Result<Security> {
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
            _ => None,
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

impl Security {
    /// Whether `--insecure` allows an endpoint without authentication on an
    /// address other hosts can reach.
    pub fn insecure_allowed(&self) -> bool {
        self.insecure_allowed
    }

    /// The server settings with these limits, authentication and TLS.
    pub fn server_config(&self, max_body_bytes: usize, max_payload_bytes: usize) -> ServerConfig {
        ServerConfig {
            max_body_bytes,
            max_payload_bytes,
            max_json_depth: self.max_json_depth,
            http: self.http.clone(),
            auth: self.auth.as_ref().map(|(config, _, _)| config.clone()),
            allowed_hosts: self.allowed_hosts.clone(),
            tls: self.tls.clone(),
        }
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Logs what is protected and how (never key material).
    pub fn log(&self) {
        if let (Some((_, path, _)), Some(exposure)) = (&self.auth, &self.key_file_exposure) {
            tracing::warn!(keys = %path.display(), "{exposure}; make it readable by cherga's user only (chmod 600)");
        }
        match &self.auth {
            Some((config, path, policy)) => tracing::info!(
                keys = %path.display(),
                issuer = %policy.issuer,
                audience = %policy.audience,
                max_auth_failures = config.max_failures_per_minute,
                "authentication on"
            ),
            None if self.insecure => tracing::warn!(
                allowed_hosts = ?self.allowed_hosts.extra(),
                "authentication off (--insecure): every client may do everything, in requests addressed \
                 to localhost, a loopback address or an allowed host"
            ),
            None => tracing::info!(
                allowed_hosts = ?self.allowed_hosts.extra(),
                "authentication off (loopback only): every local client may do everything, in requests \
                 addressed to localhost, a loopback address or an allowed host"
            ),
        }
        if self.tls.is_some() {
            tracing::info!("TLS on");
        }
    }

    /// Reloads the key file and the certificate on every SIGHUP, until the
    /// process ends. A reload that fails keeps what was loaded before.
    pub fn reload_on_hangup(&self) {
        #[cfg(unix)]
        {
            let auth = self
                .auth
                .as_ref()
                .map(|(config, path, policy)| (config.keys.clone(), path.clone(), policy.clone()));
            let tls = self.tls.clone();
            if auth.is_none() && tls.is_none() {
                return;
            }
            let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(hangups) => hangups,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGHUP; keys and certificates will not reload");
                    return;
                }
            };
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    if let Some((keys, path, policy)) = &auth {
                        match KeySet::from_file(path) {
                            Ok(set) => {
                                let kids = set.kids().join(", ");
                                keys.replace(Verifier::new(set, policy.clone()));
                                tracing::info!(keys = %path.display(), %kids, "key file reloaded");
                            }
                            Err(error) => {
                                let error = &error as &dyn std::error::Error;
                                tracing::error!(error, "key file not reloaded; keeping the old keys")
                            }
                        }
                    }
                    if let Some(tls) = &tls {
                        match tls.reload() {
                            Ok(()) => tracing::info!("TLS certificate reloaded"),
                            Err(error) => {
                                tracing::error!(%error, "TLS certificate not reloaded; keeping the old one")
                            }
                        }
                    }
                }
            });
        }
    }
}

/// What other users of this machine may do with the key file at `path`, when
/// they should not: change it (and so add a key of their own), or read it while
/// it holds `private` keys (and so sign tokens). A file of public keys only may
/// be read by all. `None` when the file is private enough, or its mode cannot be
/// read (then loading it has failed already).
fn exposure_of(path: &std::path::Path, private: bool) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Some(format!(
                "the key file has mode {mode:04o}: other users of this machine can change it, and so add \
                 a key of their own"
            ));
        }
        if private && mode & 0o044 != 0 {
            return Some(format!(
                "the key file has mode {mode:04o}: other users of this machine can read its private keys, \
                 and so sign tokens"
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = (path, private);
    None
}
