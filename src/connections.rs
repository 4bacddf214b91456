//! Who may hold a connection. Every connection costs a file descriptor,
//! whatever it does — a stream, a probe, a publish, or nothing at all — so
//! connections, not only streams, are bounded: server-wide
//! (`limits.max_connections`) and per remote address
//! (`limits.max_connections_per_address`), and each in time (`watched.rs`).
//!
//! The limits sit above the stream limits, so an address whose streams are
//! at their limit can still publish and probe, and the server can be probed
//! when it holds all the streams it may; and within the open-file limit
//! (`open_files.rs`), so the process never runs out of descriptors: that
//! would stop it accepting anyone at all.
//!
//! A connection over a limit is answered at once, before any request is
//! read, with the documented error (`429 too_many_connections` from its
//! address, `503 server_full` server-wide, each with `Retry-After`), and
//! closed. Over TLS (`server.tls`) it is closed without an answer: none
//! could be read before a handshake, and a handshake is what an overloaded
//! server should not spend. This is the accept stage, in front of
//! actix-http.

use std::{
    cell::Cell,
    io,
    net::{IpAddr, SocketAddr},
    rc::Rc,
    sync::Arc,
    time::Duration,
};

use actix_http::error::DispatchError;
use actix_web::{HttpResponse, ResponseError as _, body::MessageBody as _, rt::net::TcpStream};
use herald_actors::metrics;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{
    config::LimitSettings,
    error::ApiError,
    open_files,
    slots::{SlotRefusal, Slots},
    watched::{Timeouts, Watched},
};

/// How long a refused connection is kept to let its client read the answer.
const LINGER: Duration = Duration::from_secs(1);
/// Refused connections one worker keeps at once. A client that never closes
/// could otherwise make each refusal hold a descriptor for [`LINGER`]; past
/// this many, a refusal is written and closed at once.
const MAX_LINGERING: usize = 32;

/// The connection limits in force: as configured, or lowered to fit the
/// open-file limit.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub max_connections: usize,
    pub max_per_address: usize,
    /// Sockets one actix worker may hold, refusals included (actix-server
    /// stops handing a full worker connections; they wait in the backlog).
    /// `None`: no open-file limit to respect.
    pub per_worker: Option<usize>,
}

impl Plan {
    /// Raises the open-file limit and plans within it. Logs a warning when
    /// the configured `limits.max_connections` does not fit; fails when no
    /// connection would.
    pub fn new(limits: &LimitSettings, workers: usize) -> io::Result<Self> {
        let configured = limits.max_connections;
        let Some(open_files) = open_files::raise_to_hard_limit() else {
            return Ok(Self {
                max_connections: configured,
                max_per_address: limits.max_connections_per_address,
                per_worker: None,
            });
        };
        let sockets = open_files.saturating_sub(open_files::reserved(workers));
        let fit = sockets.saturating_sub(workers * MAX_LINGERING);
        if fit == 0 {
            return Err(io::Error::other(format!(
                "the open-file limit ({open_files}) leaves no room for connections"
            )));
        }
        if fit < configured {
            log::warn!(
                "server.open_file_limit open_files={open_files} max_connections={fit} configured={configured}"
            );
        }
        Ok(Self {
            max_connections: configured.min(fit),
            max_per_address: limits.max_connections_per_address,
            per_worker: Some(sockets / workers),
        })
    }
}

/// The accept stage's shared part: the connection counts, for all workers.
#[derive(Clone)]
pub struct Gate {
    slots: Arc<Slots>,
    timeouts: Timeouts,
    /// Whether connections speak TLS: a refusal is then closed unanswered.
    tls: bool,
}

impl Gate {
    pub fn new(plan: &Plan, timeouts: Timeouts, tls: bool) -> Self {
        Self {
            slots: Slots::new(
                plan.max_connections,
                plan.max_per_address,
                metrics().connections.clone(),
            ),
            timeouts,
            tls,
        }
    }

    /// One worker's accept stage.
    pub fn on_worker(&self) -> WorkerGate {
        WorkerGate {
            gate: self.clone(),
            lingering: Rc::default(),
        }
    }
}

#[derive(Clone)]
pub struct WorkerGate {
    gate: Gate,
    /// Refused connections this worker keeps.
    lingering: Rc<Cell<usize>>,
}

impl WorkerGate {
    /// Takes a new connection in, under the time rule, or refuses it.
    ///
    /// Not `async`: actix-server keeps this stage's future for as long as the
    /// connection it lets in lives (its state machine is sized for the
    /// largest step), so a refusal's buffers here would cost every stream
    /// several KiB. A refusal is answered on a task of its own.
    pub fn admit(&self, tcp: TcpStream) -> Result<(Watched, Option<SocketAddr>), DispatchError> {
        // Events are small writes that must leave at once; Nagle's algorithm
        // would hold one back until the previous write is acknowledged.
        let _ = tcp.set_nodelay(true);
        let peer = tcp.peer_addr().ok();
        let address = peer.map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        let refusal = match self.gate.slots.claim(address) {
            Ok(slot) => return Ok((Watched::new(tcp, peer, slot, self.gate.timeouts), peer)),
            Err(SlotRefusal::ServerFull) => ApiError::ConnectionsFull,
            Err(SlotRefusal::AddressFull) => ApiError::TooManyConnectionsFromAddress,
        };
        let addr = peer.map_or_else(|| "-".to_owned(), |a| a.to_string());
        log::info!("connection.refused reason={} addr={addr}", refusal.code());
        let error = DispatchError::Io(io::Error::other(refusal.to_string()));
        if !self.gate.tls {
            actix_web::rt::spawn(self.clone().refuse(tcp, refusal));
        }
        Err(error)
    }

    /// Writes the refusal and closes. Closing a socket with unread input
    /// resets the connection, and a reset can make the client's system drop
    /// the answer before the client reads it: what the client sent is read
    /// and dropped first, and, while few are, the socket is kept until the
    /// client closes, for at most [`LINGER`].
    async fn refuse(self, mut tcp: TcpStream, refusal: ApiError) {
        let answer = canned(refusal.error_response());
        let mut sink = [0; 4096];
        while tcp.try_read(&mut sink).is_ok_and(|n| n > 0) {}
        if self.lingering.get() >= MAX_LINGERING {
            let _ = tcp.try_write(&answer);
            return;
        }
        let _lingering = Lingering::count(&self.lingering);
        let answer_and_wait = async {
            tcp.write_all(&answer).await?;
            tcp.shutdown().await?;
            while tcp.read(&mut sink).await? > 0 {}
            io::Result::Ok(())
        };
        let _ = tokio::time::timeout(LINGER, answer_and_wait).await;
    }
}

/// One refused connection being kept, counted while it lives.
struct Lingering(Rc<Cell<usize>>);

impl Lingering {
    fn count(lingering: &Rc<Cell<usize>>) -> Self {
        lingering.set(lingering.get() + 1);
        Self(Rc::clone(lingering))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// An error response as HTTP/1.1 bytes, closing the connection: the same
/// status, headers and JSON body the error gets anywhere else (`error.rs`).
fn canned(response: HttpResponse) -> Vec<u8> {
    let status = response.status();
    let mut bytes = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or_default()
    )
    .into_bytes();
    for (name, value) in response.headers() {
        for part in [name.as_str().as_bytes(), b": ", value.as_bytes(), b"\r\n"] {
            bytes.extend_from_slice(part);
        }
    }
    let body = response.into_body().try_into_bytes().unwrap_or_default();
    bytes.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    bytes.extend_from_slice(&body);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canned_refusal_is_the_error_response_of_error_rs_closing_the_connection() {
        let bytes = canned(ApiError::TooManyConnectionsFromAddress.error_response());
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        assert_eq!(lines.next(), Some("HTTP/1.1 429 Too Many Requests"));
        let headers: Vec<&str> = lines.collect();
        assert!(
            headers.contains(&"content-type: application/json"),
            "{head}"
        );
        assert!(headers.contains(&"connection: close"), "{head}");
        assert!(headers.contains(&format!("content-length: {}", body.len()).as_str()));
        assert!(
            headers.iter().any(|h| h.starts_with("retry-after: ")),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "too_many_connections");
    }
}
