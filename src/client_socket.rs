//! Whether a stream's client has closed its connection, asked of the kernel.
//!
//! actix reads a client's close (its FIN or RST) when the worker serving the
//! connection gets round to it; until then the stream's HTTP body looks
//! alive. The kernel knows as soon as the close arrives. The kick rule asks
//! it (see the `Kick` handler of herald-actors' `DeviceConnection`).

use std::{
    io::ErrorKind,
    mem::MaybeUninit,
    os::fd::{AsRawFd as _, BorrowedFd, RawFd},
    rc::Weak,
};

use actix_web::rt::net::TcpStream;
use socket2::SockRef;

/// An accepted connection's socket: noted by the server when it accepts the
/// connection, read by the stream route from the request's connection data.
#[derive(Debug, Clone, Copy)]
pub struct ClientSocket(RawFd);

impl ClientSocket {
    pub fn of(tcp: &TcpStream) -> Self {
        Self(tcp.as_raw_fd())
    }

    /// Answers whether the client has closed this connection. `body` is held
    /// by the stream's response body: once it is gone, so is the connection,
    /// and the answer is yes without asking.
    ///
    /// The probe is not `Send` (`Weak`), so it runs on the worker thread that
    /// serves the connection, where the stream's actor runs.
    pub fn probe(self, body: Weak<()>) -> Box<dyn Fn() -> bool> {
        Box::new(move || {
            let Some(_alive) = body.upgrade() else {
                return true;
            };
            // SAFETY: the descriptor is open. What holds `body` (the stream
            // route's handler, then the response body) lives, so does the
            // HTTP/1 dispatcher that owns both it and this socket (inside
            // `Watched`; actix drops them together, and the server serves
            // plain TCP as HTTP/1 only), and this runs on that dispatcher's
            // thread, so neither is dropped while it runs.
            let fd = unsafe { BorrowedFd::borrow_raw(self.0) };
            let mut byte = [MaybeUninit::uninit()];
            match SockRef::from(&fd).peek(&mut byte) {
                // The client's FIN: after its request, a stream's client sends
                // nothing else.
                Ok(0) => true,
                // More bytes (a pipelined request): a close behind them is out
                // of sight, so the connection counts as open.
                Ok(_) => false,
                // Nothing to read: open and quiet (the socket is non-blocking).
                Err(err)
                    if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) =>
                {
                    false
                }
                // Reset by the client.
                Err(_) => true,
            }
        })
    }
}
