//! Client sockets and HTTP/1.1 exchanges (hyper's low-level client, one
//! connection per socket, so the harness controls every socket it opens).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::AbortHandle;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

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

/// Opens an HTTP/1.1 connection whose requests have body type `B`; the
/// connection is driven by a local task that lives as long as the guard.
pub async fn handshake<B>(stream: TcpStream) -> Result<(SendRequest<B>, ConnectionGuard), Error>
where
    B: hyper::body::Body + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    let task = tokio::task::spawn_local(async move {
        let _ = connection.await;
    });
    Ok((sender, ConnectionGuard(task.abort_handle())))
}

/// `GET path` with `Accept: text/event-stream` and, when resuming, the
/// `Last-Event-ID` header, as EventSource sends it.
pub async fn open_stream(
    sender: &mut SendRequest<Empty<Bytes>>,
    host: &str,
    path: &str,
    last_event_id: Option<&str>,
) -> Result<Response<Incoming>, Error> {
    let mut request = Request::get(path)
        .header("host", host)
        .header("accept", "text/event-stream")
        .header("cache-control", "no-cache");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    Ok(sender.send_request(request.body(Empty::new())?).await?)
}

/// `POST path` with a body; answers the status once the response body was
/// read to its end (so the connection can carry the next request).
pub async fn post(
    sender: &mut SendRequest<Full<Bytes>>,
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
