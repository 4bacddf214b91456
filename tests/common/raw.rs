//! Raw TCP: hostile requests, and streams on a connection the test closes
//! itself.

use actix_web::web::Bytes;
use reqwest::{
    StatusCode,
    header::{HeaderMap, HeaderName, HeaderValue},
};

use super::*;

/// Sends `request` as raw bytes on a new connection and answers everything
/// the server sent before it closed the connection (a reset counts as a
/// close: the server may close before reading all of a hostile request).
/// Fails the test if the connection is still open after [`PATIENCE`].
pub async fn raw_exchange(addr: &str, request: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may refuse and close before taking all of it.
    let _ = tcp.write_all(request).await;
    let mut answer = Vec::new();
    let read_to_close = async {
        let mut buf = [0; 8192];
        while let Ok(n @ 1..) = tcp.read(&mut buf).await {
            answer.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(PATIENCE, read_to_close)
        .await
        .unwrap_or_else(|_| panic!("the server closes the connection within {PATIENCE:?}"));
    answer
}

/// The status code of a raw HTTP/1.1 answer, if it holds one.
pub fn raw_status(answer: &[u8]) -> Option<u16> {
    let answer = String::from_utf8_lossy(answer);
    let rest = answer.strip_prefix("HTTP/1.1 ")?;
    rest.get(..3)?.parse().ok()
}

/// A stream request (with these headers) on a TCP connection of the test's
/// own to `addr`, so that the test knows when its socket is closed (see
/// [`RawStream::close`]); answers the stream, or the refusal.
pub async fn try_open_raw(
    addr: &str,
    device: &str,
    headers: &[(&str, &str)],
) -> Result<RawStream, Refusal> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = tcp.into_split();
    let mut request = format!(
        "GET /v1/devices/{device}/events HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        addr
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    write
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
    let mut received = Vec::new();
    let head_end = loop {
        if let Some(at) = find(&received, b"\r\n\r\n") {
            break at + 4;
        }
        let mut buf = [0; 8192];
        let n = tokio::time::timeout(PATIENCE, read.read(&mut buf))
            .await
            .expect("a response head within the patience")
            .expect("read");
        assert!(n > 0, "the server closed without answering");
        received.extend_from_slice(&buf[..n]);
    };
    let status = raw_status(&received).expect("a status line");
    let status = StatusCode::from_u16(status).expect("a status code");
    let headers = raw_headers(&received[..head_end]);
    let mut body = received.split_off(head_end);
    if status != StatusCode::OK {
        // `Connection: close`: the body ends with the connection.
        tokio::time::timeout(PATIENCE, read.read_to_end(&mut body))
            .await
            .expect("the refusal within the patience")
            .expect("read");
        let body = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("refusal body is JSON: {}", String::from_utf8_lossy(&body)));
        return Err(Refusal {
            status,
            headers,
            body,
        });
    }
    assert_eq!(
        headers.get("transfer-encoding").map(|v| v.as_bytes()),
        Some(&b"chunked"[..]),
        "a stream is sent in chunks"
    );
    Ok(RawStream {
        stream: EventStream::of_body(headers, dechunked(read, body)),
        write,
    })
}

/// The header lines of a raw HTTP/1.1 head.
fn raw_headers(head: &[u8]) -> HeaderMap {
    let head = std::str::from_utf8(head).expect("an ASCII head");
    let lines = head.split("\r\n").skip(1).filter(|line| !line.is_empty());
    lines
        .map(|line| {
            let (name, value) = line.split_once(':').expect("a header line");
            let name = HeaderName::from_bytes(name.as_bytes()).expect("a header name");
            (
                name,
                HeaderValue::from_str(value.trim()).expect("a header value"),
            )
        })
        .collect()
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The decoded body of a chunked response read from `read`, starting with
/// `buffered` (what came with the head). Ends when the server closes the
/// connection (or resets it).
fn dechunked(
    read: tokio::net::tcp::OwnedReadHalf,
    buffered: Vec<u8>,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    use tokio::io::AsyncReadExt as _;

    futures_util::stream::unfold((read, buffered), |(mut read, mut buffered)| async move {
        loop {
            if let Some((data, taken)) = first_chunk(&buffered) {
                buffered.drain(..taken);
                return Some((Ok(data), (read, buffered)));
            }
            let mut buf = [0; 8192];
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buffered.extend_from_slice(&buf[..n]),
            }
        }
    })
}

/// The data of the first complete chunk in `buffered`, and how many bytes
/// the chunk takes there.
fn first_chunk(buffered: &[u8]) -> Option<(Bytes, usize)> {
    let line_end = find(buffered, b"\r\n")?;
    let line = std::str::from_utf8(&buffered[..line_end]).expect("a chunk size line");
    let size = line.split(';').next().unwrap_or_default().trim();
    let size = usize::from_str_radix(size, 16).expect("a chunk size");
    let (start, end) = (line_end + 2, line_end + 2 + size);
    let data = buffered.get(start..end)?;
    (buffered.len() >= end + 2).then(|| (Bytes::copy_from_slice(data), end + 2))
}

/// A stream on a TCP connection of the test's own (see
/// [`try_open_raw`]), read like any [`EventStream`].
pub struct RawStream {
    stream: EventStream,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl RawStream {
    /// Closes the connection, as a client closing its stream does: when this
    /// returns, the socket is closed and its FIN (or, with events still
    /// unread, its reset) is sent.
    pub fn close(self) {
        drop(self);
    }
}

impl std::ops::Deref for RawStream {
    type Target = EventStream;

    fn deref(&self) -> &EventStream {
        &self.stream
    }
}

impl std::ops::DerefMut for RawStream {
    fn deref_mut(&mut self) -> &mut EventStream {
        &mut self.stream
    }
}
