//! Client sockets and HTTP exchanges (hyper's low-level client, so the
//! harness controls every socket it opens): HTTP/1.1 over plain TCP or TLS,
//! and HTTP/2 over TLS, which carries many streams on one connection.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::AbortHandle;
use tokio_rustls::TlsConnector;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// What the harness's connections speak over TCP.
#[derive(Clone)]
pub enum Wire {
    Plain,
    /// TLS, trusting only the server's test certificate, offering one ALPN
    /// protocol (`http/1.1` or `h2`).
    Tls(TlsConnector),
}

impl Wire {
    /// TLS trusting only the PEM certificate in `ca`, offering `alpn`.
    pub fn tls(ca: &Path, alpn: &[u8]) -> Result<Self, Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(ca)?)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Self::Tls(TlsConnector::from(Arc::new(config))))
    }
}

/// Connects from `source` (a 127.0.0.x address) to `server`. The local port
/// is chosen at connect time (`IP_BIND_ADDRESS_NO_PORT`): a plain bind to
/// port 0 would search the whole port range per socket, which grows with
/// the number of sockets already bound and makes opening 19,000 of them
/// quadratic. `receive_buffer` caps the socket's receive buffer (set before
/// connecting, so the window the server sees is small from the start).
pub async fn connect(
    source: Ipv4Addr,
    server: SocketAddr,
    receive_buffer: Option<u32>,
) -> Result<TcpStream, Error> {
    let socket = TcpSocket::new_v4()?;
    if let Some(size) = receive_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    let enable: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int option of the size given.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const enable).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Ends the task driving a connection when its owner goes away, so dropping
/// (or aborting) a stream's task closes its socket.
pub struct ConnectionGuard(AbortHandle);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens an HTTP/1.1 connection over `wire` whose requests have body type
/// `B`; the connection is driven by a local task that lives as long as the
/// guard.
pub async fn handshake<B>(
    wire: &Wire,
    stream: TcpStream,
) -> Result<(http1::SendRequest<B>, ConnectionGuard), Error>
where
    B: hyper::body::Body + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, task) = match wire {
        Wire::Plain => {
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
            (
                sender,
                tokio::task::spawn_local(async move { _ = connection.await }),
            )
        }
        Wire::Tls(tls) => {
            let stream = tls
                .connect(ServerName::try_from("localhost")?, stream)
                .await?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
            (
                sender,
                tokio::task::spawn_local(async move { _ = connection.await }),
            )
        }
    };
    Ok((sender, ConnectionGuard(task.abort_handle())))
}

/// Opens an HTTP/2 connection over `wire` (TLS, ALPN `h2`), driven like
/// [`handshake`]'s.
pub async fn handshake_h2(
    wire: &Wire,
    stream: TcpStream,
) -> Result<(http2::SendRequest<Empty<Bytes>>, ConnectionGuard), Error> {
    let Wire::Tls(tls) = wire else {
        return Err("HTTP/2 needs TLS".into());
    };
    let stream = tls
        .connect(ServerName::try_from("localhost")?, stream)
        .await?;
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    let task = tokio::task::spawn_local(async move { _ = connection.await });
    Ok((sender, ConnectionGuard(task.abort_handle())))
}

/// A stream's request on an HTTP/1.1 or an HTTP/2 connection.
pub enum StreamSender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

/// `GET path` with `Accept: text/event-stream` and, when resuming, the
/// `Last-Event-ID` header, as EventSource sends it.
pub async fn open_stream(
    sender: &mut StreamSender,
    host: &str,
    path: &str,
    last_event_id: Option<&str>,
) -> Result<Response<Incoming>, Error> {
    let uri = match sender {
        StreamSender::H1(_) => path.to_owned(),
        // HTTP/2 names the authority in the request itself.
        StreamSender::H2(_) => format!("https://{host}{path}"),
    };
    let mut request = Request::get(uri)
        .header("accept", "text/event-stream")
        .header("cache-control", "no-cache");
    if matches!(sender, StreamSender::H1(_)) {
        request = request.header("host", host);
    }
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let request = request.body(Empty::new())?;
    Ok(match sender {
        StreamSender::H1(sender) => sender.send_request(request).await?,
        StreamSender::H2(sender) => {
            sender.ready().await?;
            sender.send_request(request).await?
        }
    })
}

/// `POST path` with a body; answers the status once the response body was
/// read to its end (so the connection can carry the next request).
pub async fn post(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    host: &str,
    path: &str,
    headers: &[(&'static str, String)],
    body: Bytes,
) -> Result<u16, Error> {
    let mut request = Request::post(path).header("host", host);
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let response = sender.send_request(request.body(Full::new(body))?).await?;
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    Ok(status)
}
