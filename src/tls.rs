//! HTTPS: with `[server.tls]` set, every connection is TLS (rustls), and
//! ALPN picks HTTP/2 or HTTP/1.1. A browser then shares one HTTP/2
//! connection among all its streams to herald, instead of holding one of its
//! six HTTP/1.1 connections per site for each.
//!
//! The certificate is read at start (a bad one stops the start) and again on
//! SIGHUP: [`Certificates`] answers each new handshake with the key it holds
//! now, so a reload takes effect for the next connection, and open
//! connections keep the one they started with. A reload that fails (a
//! missing file, a key that does not match the certificate) keeps the old
//! certificate and says why in the log.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use actix_http::{Protocol, error::DispatchError};

use rustls::{
    ServerConfig,
    crypto::{CryptoProvider, ring},
    pki_types::{
        CertificateDer, PrivateKeyDer,
        pem::{self, PemObject as _},
    },
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use tokio_rustls::{TlsAcceptor, server::TlsStream};

use crate::{config::TlsSettings, watched::Watched};

/// ALPN protocol ids, in herald's order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("no certificate in {0}")]
    NoCertificate(PathBuf),
    #[error("key {key} does not fit certificate {cert}: {reason}")]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        reason: rustls::Error,
    },
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

/// The certificate and key served to new connections, replaced by
/// [`Certificates::reload`].
pub struct Certificates {
    files: TlsSettings,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Reads the certificate chain and key named in `files`.
    pub fn load(files: &TlsSettings) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(ring::default_provider());
        let certified = read(files, &provider)?;
        log_loaded("tls.loaded", files, &certified);
        Ok(Arc::new(Self {
            files: files.clone(),
            provider,
            current: RwLock::new(Arc::new(certified)),
        }))
    }

    /// Reads both files again; on success new connections get the new
    /// certificate, otherwise the current one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        match read(&self.files, &self.provider) {
            Ok(certified) => {
                let certified = Arc::new(certified);
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&certified);
                // Logged once in use: whoever reads the line gets the new one.
                log_loaded("tls.reloaded", &self.files, &certified);
                Ok(())
            }
            Err(error) => {
                log::error!(
                    "tls.reload_failed cert={} error=\"{error}\" (the previous certificate stays in use)",
                    self.files.cert.display()
                );
                Err(error)
            }
        }
    }

    /// The listener's TLS: this resolver for every handshake, HTTP/2
    /// preferred over HTTP/1.1.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// The accept stage after `connections.rs`: the TLS handshake, and the HTTP
/// version ALPN chose. It is bounded by the time rule's first deadline (the
/// handshake and the first request head together get
/// `limits.request_timeout`), as it reads through `Watched`.
pub async fn handshake(
    acceptor: TlsAcceptor,
    (socket, peer): (Watched, Option<SocketAddr>),
) -> Result<(TlsStream<Watched>, Protocol, Option<SocketAddr>), DispatchError> {
    let tls = acceptor.accept(socket).await.map_err(|error| {
        let addr = peer.map_or_else(|| "-".to_owned(), |a| a.to_string());
        log::debug!("tls.handshake_failed addr={addr} error=\"{error}\"");
        DispatchError::Io(error)
    })?;
    let proto = match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => {
            tls.get_ref().0.conn().set_multiplexed();
            Protocol::Http2
        }
        _ => Protocol::Http1,
    };
    Ok((tls, proto, peer))
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("cert", &self.files.cert)
            .finish_non_exhaustive()
    }
}

/// The error of reading the PEM file at `path` (`what` it should hold).
fn failed(what: &'static str, path: &Path) -> impl FnOnce(pem::Error) -> TlsError {
    let path = path.to_owned();
    move |err| TlsError::Read {
        what,
        path,
        reason: err.to_string(),
    }
}

/// The chain and key of `files`, checked to belong together.
fn read(files: &TlsSettings, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(failed("certificate", &files.cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(failed("certificate", &files.cert))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(files.cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(failed("key", &files.key))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|reason| TlsError::Unusable {
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason,
    })
}

fn log_loaded(event: &str, files: &TlsSettings, certified: &CertifiedKey) {
    log::info!(
        "{event} cert={} key={} chain={}",
        files.cert.display(),
        files.key.display(),
        certified.cert.len()
    );
}
