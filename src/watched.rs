//! The time rule for connections: a connection is either serving a request
//! or, within a bounded time, getting its next one.
//!
//! actix-http cannot say this. Its head timer is armed once per connection,
//! for the first request only, and its keep-alive timer is cleared by the
//! first byte of the next request: after `GET /healthz`, one byte held a
//! connection open for good, and enough of them used up every file
//! descriptor. Rather than fork actix-http, herald wraps each connection's
//! socket in [`Watched`], which owns one deadline:
//!
//! - from connecting, and from the first byte after a response: the request
//!   head must be complete within `limits.request_timeout` (`head`);
//! - after a response, with nothing received: `server.keep_alive`
//!   (`keep_alive`; actix-http's own keep-alive timer, set to the same
//!   value, normally closes such a connection first and more gently);
//! - a request's body, from its complete head: within
//!   `limits.request_timeout` too (`body`; only admin requests read bodies,
//!   of at most `server.max_body_bytes`);
//! - from the end of the request's body (at once, without one) to the end of
//!   its response body: none. A stream is a request in progress for as long
//!   as it streams, so streams are never cut by this rule; nor is a publish
//!   whose answer waits on storage.
//!
//! Over HTTP/2 several requests share the connection: the deadline is off
//! while any of them is in progress, and once the last one ends the
//! connection has `keep_alive` to start another (frames between requests,
//! such as pings, are not the start of a request head there).
//!
//! When the deadline passes, the socket's next read, or a write that cannot
//! proceed, fails with `TimedOut`, and actix-http drops the connection. The
//! socket cannot see where a request ends: [`track_requests`] wraps the app,
//! sees every request the dispatcher hands on and the end of its response
//! body, and tells the socket through the connection's shared [`Conn`].

use std::{
    cell::{Cell, RefCell},
    io,
    net::SocketAddr,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, Waker},
    time::Duration,
};

use actix_web::rt::net::TcpStream;
use herald_actors::metrics;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep, sleep_until},
};

use crate::{client_socket::ClientSocket, slots::Slot};

/// Where the timer waits while a request is in progress: far enough that it
/// practically never fires (if it does, the wake-up finds no deadline and
/// pushes it out again).
const IDLE_TIMER: Duration = Duration::from_secs(24 * 3600);

/// The two time limits of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// `limits.request_timeout`: to complete a request head.
    pub head: Duration,
    /// `server.keep_alive`: between a response and the next request.
    pub keep_alive: Duration,
}

/// Why a connection was closed (the `reason` of `connection.timed_out`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Head,
    Body,
    KeepAlive,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Head => "head",
            Self::Body => "body",
            Self::KeepAlive => "keep_alive",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    reason: Reason,
}

#[derive(Debug, Clone, Copy)]
struct State {
    /// `None` while a request is in progress (and its body, if any, has
    /// arrived).
    deadline: Option<Deadline>,
    /// Requests in progress: 0 or 1 over HTTP/1.1, any number over HTTP/2.
    in_progress: u32,
    /// HTTP/2: requests interleave, bytes between them are not a head.
    multiplexed: bool,
    /// Bytes arrived while the request was in progress: its body, or the
    /// start of the next request.
    received_during_request: bool,
    request_has_body: bool,
}

/// What the socket and the requests of one connection share. Single
/// threaded: a connection lives on one worker.
pub struct Conn {
    timeouts: Timeouts,
    state: Cell<State>,
    /// The connection task, woken when a response ends: the deadline set
    /// then must be registered by a poll of the socket.
    task: RefCell<Option<Waker>>,
}

impl Conn {
    fn new(timeouts: Timeouts) -> Rc<Self> {
        Rc::new(Self {
            timeouts,
            state: Cell::new(State {
                deadline: Some(Deadline {
                    at: Instant::now() + timeouts.head,
                    reason: Reason::Head,
                }),
                in_progress: 0,
                multiplexed: false,
                received_during_request: false,
                request_has_body: false,
            }),
            task: RefCell::new(None),
        })
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        let mut state = self.state.get();
        change(&mut state);
        self.state.set(state);
    }

    /// Bytes arrived. Between requests they start a head, which then has
    /// `limits.request_timeout` to complete, however slowly the rest comes.
    fn received(&self) {
        let head = self.timeouts.head;
        self.update(|state| {
            if state.in_progress > 0 {
                state.received_during_request = true;
            } else if state.multiplexed {
                // Pings and settings: the keep-alive deadline stands.
            } else if state.deadline.is_none_or(|d| d.reason != Reason::Head) {
                let at = Instant::now() + head;
                state.deadline = Some(Deadline {
                    at,
                    reason: Reason::Head,
                });
            }
        });
    }

    fn request_started(&self, has_body: bool) {
        let body = has_body.then(|| Deadline {
            at: Instant::now() + self.timeouts.head,
            reason: Reason::Body,
        });
        self.update(|state| {
            *state = State {
                deadline: body,
                in_progress: state.in_progress + 1,
                multiplexed: state.multiplexed,
                received_during_request: false,
                request_has_body: has_body,
            };
        });
    }

    /// The request's body has all arrived (or will not be read): from here
    /// to the end of the response, no deadline.
    fn body_received(&self) {
        self.update(|state| {
            if state.in_progress > 0 {
                state.deadline = None;
            }
        });
    }

    fn request_finished(&self) {
        let Timeouts { head, keep_alive } = self.timeouts;
        let mut idle = false;
        self.update(|state| {
            state.in_progress = state.in_progress.saturating_sub(1);
            if state.in_progress > 0 {
                return;
            }
            idle = true;
            // Bytes that came during a request without a body can only be
            // the next request's head, already started. Otherwise nothing is
            // known to be waiting (or bytes may be a body's, or a next head
            // read together with this request): the keep-alive bounds it.
            let next_head = state.received_during_request && !state.request_has_body;
            let deadline = if next_head && !state.multiplexed {
                (head, Reason::Head)
            } else {
                (keep_alive, Reason::KeepAlive)
            };
            state.deadline = Some(Deadline {
                at: Instant::now() + deadline.0,
                reason: deadline.1,
            });
        });
        if !idle {
            return;
        }
        if let Some(task) = self.task.borrow().as_ref() {
            task.wake_by_ref();
        }
    }

    /// The connection speaks HTTP/2 (from ALPN, before its first request).
    pub fn set_multiplexed(&self) {
        self.update(|state| state.multiplexed = true);
    }

    fn remember_task(&self, waker: &Waker) {
        let mut task = self.task.borrow_mut();
        if !task.as_ref().is_some_and(|known| known.will_wake(waker)) {
            *task = Some(waker.clone());
        }
    }
}

/// A connection's socket under the time rule; it also holds the
/// connection's slot, released when actix-http drops the socket.
pub struct Watched {
    tcp: TcpStream,
    conn: Rc<Conn>,
    /// Alive exactly as long as the socket: for those who keep the socket's
    /// descriptor, to know it is still this connection's.
    open: Rc<()>,
    timer: Pin<Box<Sleep>>,
    /// The timer is pushed out of the way (a request is in progress).
    parked: bool,
    peer: Option<SocketAddr>,
    timed_out: bool,
    _slot: Slot,
}

impl Watched {
    pub fn new(tcp: TcpStream, peer: Option<SocketAddr>, slot: Slot, timeouts: Timeouts) -> Self {
        let conn = Conn::new(timeouts);
        let first = conn
            .state
            .get()
            .deadline
            .map_or_else(Instant::now, |d| d.at);
        Self {
            tcp,
            conn,
            open: Rc::new(()),
            timer: Box::pin(sleep_until(first)),
            parked: false,
            peer,
            timed_out: false,
            _slot: slot,
        }
    }

    /// For the requests of this connection (actix's `on_connect_ext`).
    pub fn conn(&self) -> Rc<Conn> {
        Rc::clone(&self.conn)
    }

    /// The socket, for what the kernel knows of it (actix's
    /// `on_connect_ext`): valid for as long as this lives.
    pub fn client_socket(&self) -> ClientSocket {
        ClientSocket::new(&self.tcp, Rc::downgrade(&self.open))
    }

    /// Whether the deadline has passed; if not, the timer will wake the
    /// connection task when it does.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.timed_out {
            return true;
        }
        self.conn.remember_task(cx.waker());
        let Some(deadline) = self.conn.state.get().deadline else {
            // A request in progress (a stream, for its whole life): push the
            // timer out of the way once, or the deadline armed at connect
            // would still fire and wake every stream's connection for
            // nothing. Not on every poll: a stream's socket is polled once
            // per frame, and reading the clock each time was 2% of a
            // delivery's CPU. (A stream older than IDLE_TIMER gets one
            // spurious wake-up.)
            if !self.parked {
                self.timer.as_mut().reset(Instant::now() + IDLE_TIMER);
                self.parked = true;
            }
            return false;
        };
        self.parked = false;
        if self.timer.deadline() != deadline.at {
            self.timer.as_mut().reset(deadline.at);
        }
        if self.timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.timed_out = true;
        let reason = deadline.reason.as_str();
        let addr = self.peer.map_or_else(|| "-".to_owned(), |a| a.to_string());
        log::info!("connection.timed_out reason={reason} addr={addr}");
        metrics()
            .connections_timed_out
            .with_label_values(&[reason])
            .inc();
        true
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "no complete request in time")
}

/// actix-http's dispatcher reads whenever it is polled (also while a
/// response streams, and while idle), so reads are where the deadline is
/// checked; writes only when they cannot proceed (a client that does not
/// read what it was sent is held to the same deadline).
impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Err(timed_out()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.conn.received();
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.tcp).poll_write(cx, buf) {
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            written => written,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

mod requests;
#[cfg(test)]
mod tests;

pub use requests::{Tracked, track_requests};
