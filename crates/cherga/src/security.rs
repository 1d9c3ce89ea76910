//! The security of `cherga serve` once configured (see [`crate::config`] for
//! the settings and their checks): what is logged about it, and the key file
//! and the certificate reloaded on SIGHUP without a restart.
//!
//! **Invariant:** the server never runs without authentication on an address
//! other clients can reach, unless told so with `--insecure`; without
//! authentication it answers only requests addressed to loopback hosts and
//! those of `--allowed-hosts`.

use cherga_auth::{KeySet, Policy, Verifier};
use cherga_server::{AllowedHosts, AuthConfig, HttpLimits, TlsCerts};
use std::path::PathBuf;
use std::sync::Arc;

/// Validated security settings, and what SIGHUP reloads.
pub struct Security {
    /// Auth is off on an address other hosts can reach (`--insecure`).
    pub(crate) insecure: bool,
    /// `--insecure` was given: endpoints without authentication may listen on
    /// addresses other hosts can reach.
    pub(crate) insecure_allowed: bool,
    /// What other users of this machine may do with the key file, when they
    /// should not (see [`exposure_of`]).
    pub(crate) key_file_exposure: Option<String>,
    pub(crate) http: HttpLimits,
    pub(crate) max_json_depth: usize,
    pub(crate) allowed_hosts: AllowedHosts,
    pub(crate) auth: Option<(AuthConfig, PathBuf, Policy)>,
    pub(crate) tls: Option<Arc<TlsCerts>>,
}

impl Security {
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
pub(crate) fn exposure_of(path: &std::path::Path, private: bool) -> Option<String> {
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
