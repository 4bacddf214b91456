//! HTTPS for tests: self-signed certificates made at test time (rcgen), and
//! real TLS clients (rustls) that trust exactly the certificate given, so a
//! handshake tells which certificate the server presented.

use std::{path::Path, sync::Arc};

use actix_web::web::Bytes;
use http_body_util::{BodyDataStream, BodyExt as _, Full};
use hyper::{Request, client::conn::http2::SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use reqwest::StatusCode;
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName},
};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::*;

/// A certificate for `localhost` and 127.0.0.1, with its key, as PEM files.
pub struct TestCertificate {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// What a client that trusts this certificate puts in its root store.
    pub der: CertificateDer<'static>,
}

impl TestCertificate {
    /// A new key pair and self-signed certificate, written to
    /// `dir/<name>.crt` and `dir/<name>.key`.
    pub fn make(dir: &Path, name: &str) -> Self {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let made = rcgen::generate_simple_self_signed(names).expect("a self-signed certificate");
        let this = Self {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            der: made.cert.der().clone(),
        };
        std::fs::write(&this.cert, made.cert.pem()).expect("certificate written");
        std::fs::write(&this.key, made.signing_key.serialize_pem()).expect("key written");
        this
    }

    /// Copies this certificate and key over the files of `other` (as an
    /// operator renewing a certificate in place does).
    pub fn install_as(&self, other: &TestCertificate) {
        std::fs::copy(&self.cert, &other.cert).expect("certificate copied");
        std::fs::copy(&self.key, &other.key).expect("key copied");
    }

    /// The environment that makes herald serve HTTPS with this certificate.
    pub fn env(&self) -> [(&'static str, &str); 2] {
        [
            (
                "HERALD_SERVER__TLS__CERT",
                self.cert.to_str().expect("UTF-8"),
            ),
            ("HERALD_SERVER__TLS__KEY", self.key.to_str().expect("UTF-8")),
        ]
    }
}

/// A TLS connection to `127.0.0.1:port` offering `alpn`, trusting only
/// `trusted`; the handshake's error if the server's certificate is not it.
pub async fn tls_connect(
    port: u16,
    trusted: &CertificateDer<'static>,
    alpn: &[u8],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.clone()).expect("a usable root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("localhost").expect("a server name");
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// `GET path` over HTTP/1.1 on a TLS connection of its own; answers the
/// status line.
pub async fn http1_get(port: u16, trusted: &CertificateDer<'static>, path: &str) -> String {
    let mut tls = tls_connect(port, trusted, b"http/1.1")
        .await
        .expect("TLS handshake");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.expect("request");
    let mut answer = Vec::new();
    let read = tls.read_to_end(&mut answer);
    let _ = tokio::time::timeout(PATIENCE, read)
        .await
        .expect("an answer");
    let answer = String::from_utf8_lossy(&answer);
    answer.lines().next().unwrap_or_default().to_owned()
}

/// One HTTP/2 connection: every request of this client goes over it.
pub struct H2Connection {
    sender: SendRequest<Full<Bytes>>,
}

impl H2Connection {
    /// Connects, trusting only `trusted`; fails if the server presents
    /// another certificate or does not choose HTTP/2.
    pub async fn connect(port: u16, trusted: &CertificateDer<'static>) -> std::io::Result<Self> {
        let tls = tls_connect(port, trusted, b"h2").await?;
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "the server chose HTTP/2"
        );
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        Ok(Self { sender })
    }

    async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> hyper::Response<hyper::body::Incoming> {
        let sent = async {
            self.sender.ready().await?;
            self.sender.send_request(request).await
        };
        tokio::time::timeout(PATIENCE, sent)
            .await
            .expect("an answer in time")
            .expect("the connection carries the request")
    }

    /// Opens `device`'s stream on this connection; or the refusal's status
    /// and JSON body.
    pub async fn open(&mut self, device: &str) -> Result<EventStream, (StatusCode, Value)> {
        let request = Request::get(format!("https://localhost/v1/devices/{device}/events"))
            .header("accept", "text/event-stream")
            .body(Full::default())
            .expect("a request");
        let response = self.send(request).await;
        let (parts, body) = response.into_parts();
        if parts.status != StatusCode::OK {
            let bytes = body.collect().await.expect("refusal body").to_bytes();
            return Err((
                parts.status,
                serde_json::from_slice(&bytes).unwrap_or_default(),
            ));
        }
        Ok(EventStream::of_body(
            parts.headers,
            BodyDataStream::new(body),
        ))
    }

    /// An admin request with the shipped config's token; answers status and
    /// JSON body (`Null` when empty).
    pub async fn admin(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"));
        let body = match body {
            Some(json) => {
                request = request.header("content-type", "application/json");
                Full::new(Bytes::from(json.to_string()))
            }
            None => Full::default(),
        };
        let response = self.send(request.body(body).expect("a request")).await;
        let status = response.status();
        let bytes = tokio::time::timeout(PATIENCE, response.into_body().collect())
            .await
            .expect("a body in time")
            .expect("a body")
            .to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    /// `GET /metrics` on this connection.
    pub async fn metrics(&mut self) -> String {
        let request = Request::get("https://localhost/metrics")
            .body(Full::default())
            .expect("a request");
        let body = self.send(request).await.into_body().collect().await;
        String::from_utf8_lossy(&body.expect("a body").to_bytes()).into_owned()
    }
}
