//! Whether a stream's client has closed its connection, asked of the kernel.
//!
//! actix reads a client's close (its FIN or RST) when the worker serving the
//! connection gets round to it; until then the stream's HTTP body looks
//! alive. The kernel knows as soon as the close arrives. The kick rule asks
//! it (see the `Kick` handler of herald-actors' `DeviceConnection`).
//!
//! Over HTTP/2 a client can also end one stream and keep the connection; the
//! kernel cannot see that, and the stream's body tells at its next write.

use std::{
    os::fd::{AsRawFd as _, RawFd},
    rc::Weak,
};

use actix_web::rt::net::TcpStream;

/// An accepted connection's socket: noted by the server when it accepts the
/// connection, read by the stream route from the request's connection data.
#[derive(Debug, Clone)]
pub struct ClientSocket {
    fd: RawFd,
    /// Gone once the socket is closed (held by `Watched`, which owns it):
    /// from then on the descriptor may be another connection's.
    open: Weak<()>,
}

impl ClientSocket {
    /// `open` must be gone once `tcp` is closed.
    pub fn new(tcp: &TcpStream, open: Weak<()>) -> Self {
        Self {
            fd: tcp.as_raw_fd(),
            open,
        }
    }

    /// Answers whether the client has closed this connection. `body` is held
    /// by the stream's response body: once it is gone, the stream has ended
    /// and the answer is yes without asking.
    ///
    /// The probe is not `Send` (`Weak`), so it runs on the worker thread that
    /// serves the connection, where the stream's actor runs.
    pub fn probe(self, body: Weak<()>) -> Box<dyn Fn() -> bool> {
        Box::new(move || {
            let (Some(_stream), Some(_socket)) = (body.upgrade(), self.open.upgrade()) else {
                return true;
            };
            // The socket is open: `Watched` owns it and lives (checked just
            // above, on the only thread that could drop it). POLLRDHUP is
            // set by the client's FIN even while bytes it sent before are
            // unread (a pipelined request, TLS records, HTTP/2 frames).
            let mut socket = libc::pollfd {
                fd: self.fd,
                events: libc::POLLRDHUP,
                revents: 0,
            };
            // SAFETY: one valid pollfd, a zero timeout (it never blocks).
            let ready = unsafe { libc::poll(&raw mut socket, 1, 0) };
            ready > 0 && socket.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
        })
    }
}
