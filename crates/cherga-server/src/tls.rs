//! TLS: the certificate and key files, loaded into rustls (with the `ring`
//! provider), and swapped in place by [`TlsCerts::reload`] without a restart.
//!
//! **Invariant:** a reload that fails (unreadable file, key not matching the
//! certificate) changes nothing: the server keeps the certificate it had.
//! Handshakes in progress and open connections keep the one they started with.

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// What went wrong loading a certificate or key. Messages name files, not contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {problem}")]
    Certificates { path: String, problem: String },
    #[error("cannot read a private key from {path}: {problem}")]
    Key { path: String, problem: String },
    #[error("the key in {key} does not fit the certificate in {cert}: {problem}")]
    Mismatch { cert: String, key: String, problem: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The server's certificate, reloadable.
#[derive(Debug)]
pub struct TlsCerts {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Arc<RwLock<Arc<CertifiedKey>>>,
    config: Arc<rustls::ServerConfig>,
}

#[derive(Debug)]
struct Resolver(Arc<RwLock<Arc<CertifiedKey>>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().expect("certificate lock").clone())
    }
}

impl TlsCerts {
    /// Loads a PEM certificate chain (leaf first) and its PEM private key (PKCS#8,
    /// PKCS#1 or SEC1).
    ///
    /// # Errors
    /// [`TlsError`] naming the file at fault.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = load_pair(cert_path, key_path, &provider)?;
        let current = Arc::new(RwLock::new(Arc::new(certified)));
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(current.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current,
            config: Arc::new(config),
        }))
    }

    /// Reads the files again and serves the new certificate to new handshakes.
    ///
    /// # Errors
    /// [`TlsError`]; the old certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let certified = load_pair(&self.cert_path, &self.key_path, &self.provider)?;
        *self.current.write().expect("certificate lock") = Arc::new(certified);
        Ok(())
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }
}

fn load_pair(cert_path: &Path, key_path: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_error =
        |problem: String| TlsError::Certificates { path: cert_path.display().to_string(), problem };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_error("no CERTIFICATE block".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| TlsError::Key { path: key_path.display().to_string(), problem: e.to_string() })?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| TlsError::Mismatch {
        cert: cert_path.display().to_string(),
        key: key_path.display().to_string(),
        problem: e.to_string(),
    })
}
