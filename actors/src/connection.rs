//! DeviceConnection: one actor per live stream. It writes the stream's start
//! and its signals into the stream's bounded queue; the registry has the
//! live events written into the same queue, on this stream's worker thread,
//! once the start is written (see [`StreamQueue`]).
//!
//! Lifecycle: its mailbox is made by the stream route ([`Unstarted`]), the
//! store admits and attaches it and answers with its start ([`Opening`]),
//! and the route then starts it: the start (`hello`, an optional `reset`,
//! retained state, the replay) is written before the route returns its
//! response, so the response's first write carries it with the head. Once
//! the start is written, it lets the live events flow into the queue
//! ([`StreamQueue::flow`]): the registry hands them over from the moment the
//! stream is live, without passing through this actor's mailbox, and the
//! queue holds those that come before.
//! It stops when the client is gone (queue closed), when the client cannot
//! keep up (queue full), when it is kicked, or at shutdown. Stopping ends the
//! queue for every writer (the registry's live events and the heartbeat's
//! heartbeats are written on its worker, not through this actor) and drops
//! its sender; the HTTP response ends after the queued frames.
//!
//! It decides whether a replacement is a kick (see its [`Disconnect`]
//! handler): only a stream whose client is still there is kicked. The
//! metric, the `device.kicked` line, the admin view's count and the kick
//! rules ([`Kicked`], to the store) all follow from that one decision, and
//! all of them are recorded before `kicked` is written, so a client that
//! reads `kicked` and comes back finds its kick counted.
//!
//! Its mailbox is unbounded so that senders never wait on it; it only moves
//! frames into the bounded queue, so the mailbox does not grow.
//!
//! A replay whose older events are no longer in the store's memory comes in
//! two parts: the opening with the newer ones, and [`ConnectReplay`] with
//! the older ones, read by the storage backend (it may be in the mailbox
//! before the actor runs). Until it is here the stream writes nothing with
//! an id after `hello` (and the queue holds its live events); then it
//! writes the older part and the newer part, checked to be exactly the
//! events the store named (or it ends, `reason=storage`, and its client
//! resumes).

use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::{
    ConnectionId, DeviceId, Frame, Opening, Signal, Start, StoredEvent, Unread,
    backend::ReadError,
    feed,
    metrics::metrics,
    registry::{DeviceRegistry, Disconnected},
    session_store::{Kicked, SessionStore},
    stream_queue::{Refused, StreamQueue},
};

/// Why a stream ended; logged as `reason=` in `device.disconnected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    ClientGone,
    Kicked,
    Slow,
    Shutdown,
    /// The device was deleted through the admin API.
    Deleted,
    /// An operator ended the stream through the admin API.
    Admin,
    /// A live event arrived that would have left a hole in the stream.
    Gap,
    /// A newer stream of the device was attached, then gone before it went
    /// live; this one ends without `kicked`, and its client resumes.
    Superseded,
    /// Its replay's older events could not be read from storage.
    Storage,
    /// Its node lost its route from the shared storage for a while (the
    /// cluster backend's subscription): its client resumes and gets what it
    /// may have missed.
    Resync,
}

impl DisconnectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientGone => "client_gone",
            Self::Kicked => "kicked",
            Self::Slow => "slow",
            Self::Shutdown => "shutdown",
            Self::Deleted => "deleted",
            Self::Admin => "admin",
            Self::Gap => "gap",
            Self::Superseded => "superseded",
            Self::Storage => "storage",
            Self::Resync => "resync",
        }
    }
}

/// The older events of the stream's replay, read from storage (their
/// payloads had left the store's memory): written before the replay's
/// newer events. Sent by the storage backend, once, when the stream's
/// opening names `unread` events; it may come before the actor runs.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnectReplay {
    pub events: Result<Vec<StoredEvent>, ReadError>,
}

/// End the stream. Sent by the registry, through its outbox: after the live
/// events it handed this stream before (also when a live event found the
/// queue full).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub ending: Ending,
}

/// Why the registry ends a stream.
pub enum Ending {
    /// A newer stream of the device replaced it: a kick, if the client is
    /// still there.
    Replaced(Replacement),
    /// An operator ended it and asked the device not to come back for a
    /// while: a kick (`kicked`, reason `admin`), if the client is still there.
    Blocked,
    /// An operator ended it; the client may come straight back.
    Admin,
    /// The device was deleted.
    Deleted,
    /// The server is shutting down.
    Shutdown,
    /// Events for it may have been lost on their way to this node: the
    /// client resumes.
    Resync,
    /// A newer stream took the session over and was gone before it went
    /// live: no kick, the client just resumes.
    Superseded,
    /// Its queue was full when a live event was written to it (or, while
    /// its start was being written, more live events waited than it holds).
    Slow,
    /// A live event for it would have left a hole (see the registry).
    Gap,
}

/// A stream replaced by a newer one of its device: what the kick rules and
/// the `device.flapping` line need, should the replaced stream find its
/// client still there.
pub struct Replacement {
    /// The newer stream.
    pub by: ConnectionId,
    /// The replaced stream's instance, and the newer one's.
    pub instances: (Option<String>, Option<String>),
    /// The replaced stream's client address, and the newer one's.
    pub peers: (String, String),
}

/// Everything a connection needs, given by the stream route.
pub struct ConnectionParams {
    pub device: DeviceId,
    pub connection_id: ConnectionId,
    /// The client's address, for logs.
    pub peer: String,
    /// The HTTP version of the client's connection (`h1`, `h2`), for logs.
    pub proto: &'static str,
    /// The sending side of the stream's queue, which it shares with the
    /// registry and the heartbeat.
    pub queue: StreamQueue,
    pub registry: Addr<DeviceRegistry>,
    pub store: Addr<SessionStore>,
    /// Whether the client has closed its connection, as far as the server's
    /// kernel knows: that can be before the HTTP body notices. Asked only on
    /// the thread that created this connection.
    pub client_closed: Box<dyn Fn() -> bool>,
    /// Announced to the client in `hello`.
    pub heartbeat_timeout: Duration,
}

pub struct DeviceConnection {
    params: ConnectionParams,
    /// When its start was written; `None` for a stream that ends before it
    /// begins.
    began: Option<Instant>,
    /// The replay's older part, while it is read from storage.
    reading: Option<Reading>,
    reason: DisconnectReason,
}

/// The older part of a replay, read from storage, and what follows it.
struct Reading {
    /// The events to read.
    unread: Unread,
    /// The replay's newer part.
    replay: Vec<StoredEvent>,
}

/// A connection's mailbox (unbounded) before its actor runs: the store can
/// be handed the address while it decides on the connect, messages sent to it
/// meanwhile wait, and a refused connect never starts an actor.
///
/// Dropped without being started or discarded (its request went away while
/// the store decided), it reports `Disconnected` as a stopped connection
/// does: the registry may have made it live already, and would otherwise
/// hand events to a stream nobody writes, with its session attached to no
/// one.
pub struct Unstarted(Option<(Context<DeviceConnection>, ConnectionParams)>);

impl Unstarted {
    pub fn new(params: ConnectionParams) -> (Self, Addr<DeviceConnection>) {
        let mut ctx = Context::new();
        ctx.set_mailbox_capacity(0);
        let addr = ctx.address();
        (Self(Some((ctx, params))), addr)
    }

    /// Writes the stream's start, if the store answered with one (`None`:
    /// it ends before it begins, its `Disconnect` is in the mailbox), then
    /// runs the actor on this mailbox, on the current thread. The start is
    /// in the queue when this returns.
    pub fn start(mut self, opening: Option<Opening>) -> Addr<DeviceConnection> {
        let (ctx, params) = self
            .0
            .take()
            .expect("only start, discard and drop take it, each consuming self");
        let mut connection = DeviceConnection {
            params,
            began: None,
            reading: None,
            reason: DisconnectReason::ClientGone,
        };
        if let Some(opening) = opening {
            // A full queue is remembered there, and `started` ends the stream;
            // a closed one is noticed there too.
            let _ = connection.begin(opening);
        }
        ctx.run(connection)
    }

    /// The store refused the connect: nobody made it live, so it goes
    /// without a word.
    pub fn discard(mut self) {
        self.0.take();
    }
}

impl Drop for Unstarted {
    fn drop(&mut self) {
        if let Some((_, params)) = self.0.take() {
            params.registry.do_send(Disconnected {
                device: params.device,
                connection_id: params.connection_id,
            });
        }
    }
}

impl DeviceConnection {
    fn write(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        if let Err(refused) = self.params.queue.write(frame) {
            self.refused(refused, ctx);
        }
    }

    /// A write was refused: the stream ends.
    fn refused(&mut self, refused: Refused, ctx: &mut Context<Self>) {
        match refused {
            Refused::Full => self.slow(ctx),
            Refused::Closed => self.stop(DisconnectReason::ClientGone, ctx),
        }
    }

    /// Writes replayed events, if there are any.
    fn write_replay(&self, events: Vec<StoredEvent>) -> Result<(), Refused> {
        match events.is_empty() {
            true => Ok(()),
            false => self.params.queue.write(Frame::Replay(Box::new(events))),
        }
    }

    /// Writes the stream's start, before the actor runs: `hello`, a `reset`,
    /// retained state, and the replay, or as much of it as the store holds
    /// (the rest follows in [`ConnectReplay`]).
    fn begin(&mut self, opening: Opening) -> Result<(), Refused> {
        let Opening {
            start,
            state,
            unread,
            replay,
            through: _,
        } = opening;
        let p = &self.params;
        let resumed = start == Start::Resumed;
        log::info!(
            "device.connected device={} conn={} addr={} proto={} resumed={resumed} replayed={}",
            p.device,
            p.connection_id,
            p.peer,
            p.proto,
            replay.len() + unread.as_ref().map_or(0, |u| u.batches.len())
        );
        feed::tell("device.connected", &p.device, Some(p.connection_id), None);
        let timeout_ms = u64::try_from(p.heartbeat_timeout.as_millis()).unwrap_or(u64::MAX);
        let hello = Signal::hello(&p.device, p.connection_id, timeout_ms, resumed);
        self.began = Some(Instant::now());
        p.queue.write(Frame::Signal(Box::new(hello)))?;
        if let Start::Reset {
            reason,
            last_event_id,
        } = start
        {
            metrics().resets.with_label_values(&[reason.as_str()]).inc();
            feed::tell(
                "session.reset",
                &p.device,
                Some(p.connection_id),
                Some(reason.as_str()),
            );
            log::info!(
                "session.reset device={} conn={} reason={} last_event_id={}",
                p.device,
                p.connection_id,
                reason.as_str(),
                // Quoted and escaped as JSON: it comes from the client.
                last_event_id
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), quoted)
            );
            let reset = Signal::reset(reason, last_event_id.as_deref());
            p.queue.write(Frame::Signal(Box::new(reset)))?;
        }
        if !state.is_empty() {
            p.queue.write(Frame::State(Box::new(state)))?;
        }
        match unread {
            None => {
                self.write_replay(replay)?;
                p.queue.flow()
            }
            Some(unread) => {
                self.reading = Some(Reading { unread, replay });
                Ok(())
            }
        }
    }

    /// Its client does not keep up: the stream ends (and its client, once
    /// it reads again, resumes from the buffer).
    fn slow(&mut self, ctx: &mut Context<Self>) {
        if ctx.state() != ActorState::Running {
            return;
        }
        metrics().slow_consumers.inc();
        log::warn!(
            "stream.slow_consumer device={} conn={} queue={}",
            self.params.device,
            self.params.connection_id,
            self.params.queue.capacity()
        );
        self.stop(DisconnectReason::Slow, ctx);
    }

    /// The replay's older part is here: writes it, then the newer part.
    fn write_read(
        &mut self,
        reading: Reading,
        read: Result<Vec<StoredEvent>, ReadError>,
        ctx: &mut Context<Self>,
    ) {
        let Reading { unread, replay } = reading;
        let read = read.and_then(|events| match unread.is_answered_by(&events) {
            true => Ok(events),
            false => Err(ReadError::Missing {
                seq: unread.first_seq,
            }),
        });
        match read {
            Ok(events) => {
                let written = (self.params.queue.write(Frame::Replay(Box::new(events))))
                    .and_then(|()| self.write_replay(replay))
                    .and_then(|()| self.params.queue.flow());
                if let Err(refused) = written {
                    self.refused(refused, ctx);
                }
            }
            Err(error) => {
                log::error!(
                    "storage.read_failed device={} conn={} error=\"{error}\"",
                    self.params.device,
                    self.params.connection_id
                );
                self.stop(DisconnectReason::Storage, ctx);
            }
        }
    }

    /// Ends the stream: nothing is written after what this connection
    /// wrote last, by it or by the others that write to its queue.
    fn stop(&mut self, reason: DisconnectReason, ctx: &mut Context<Self>) {
        if ctx.state() == ActorState::Running {
            self.reason = reason;
            self.params.queue.end();
            ctx.stop();
        }
    }
}

/// Client text for a log line: a JSON string, so it cannot break the line
/// and the JSON log format reads it back exactly.
fn quoted(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

impl Actor for DeviceConnection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Its start, written before it ran, did not fit.
        if let Some(refused) = self.params.queue.activity().refusal() {
            return self.refused(refused, ctx);
        }
        // Notice a client that went away even while nothing is written.
        let queue = self.params.queue.clone();
        ctx.spawn(
            async move { queue.closed().await }
                .into_actor(self)
                .map(|(), act, ctx| act.stop(DisconnectReason::ClientGone, ctx)),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // Also after a panic, which skips `stop`.
        self.params.queue.end();
        let (device, connection_id) = (self.params.device.clone(), self.params.connection_id);
        if let Some(began) = self.began {
            log::info!(
                "device.disconnected device={device} conn={connection_id} reason={} duration_ms={}",
                self.reason.as_str(),
                began.elapsed().as_millis()
            );
            let reason = Some(self.reason.as_str());
            feed::tell("device.disconnected", &device, Some(connection_id), reason);
        }
        self.params.registry.do_send(Disconnected {
            device,
            connection_id,
        });
    }
}

impl Handler<ConnectReplay> for DeviceConnection {
    type Result = ();

    fn handle(&mut self, msg: ConnectReplay, ctx: &mut Self::Context) {
        // Not asked for (or the stream ended meanwhile): nothing is written.
        if let Some(reading) = self.reading.take() {
            self.write_read(reading, msg.events, ctx);
        }
    }
}

impl Handler<Disconnect> for DeviceConnection {
    type Result = ();

    /// Ends the stream; for a replacement or an operator's block, this is
    /// the one place that decides whether it is a kick.
    ///
    /// A kick ends a stream whose client is still there. A client that closed
    /// its stream and reopened at once (a page reload, an app restart) must
    /// not be kicked by its own new stream, yet the new stream can be
    /// registered before herald has noticed the close: the new request comes
    /// on another connection, often to another worker, while this stream's
    /// worker reads the close only when it gets round to it. So neither "the
    /// old stream is still registered" nor, alone, "its HTTP body is still
    /// open" tells (in the close-and-reopen test the body was often still open
    /// here). Asked here, on the worker thread that serves this stream's
    /// connection:
    /// - is the queue closed? Then the HTTP body saw the close and dropped its
    ///   receiver; it runs on this thread, so that is settled, not racing;
    /// - has the client's FIN or RST reached the kernel (`client_closed`)? A
    ///   client that closes and then reopens sends its FIN before its new
    ///   request, and this kick comes only after that request went through
    ///   the route, the store and the registry: the kernel has the FIN by
    ///   now. The order of the client's own actions decides, not timing
    ///   inside herald.
    ///
    /// Either way the stream just ends, as its client already has; so does a
    /// stream already ending for another reason. A close still on its way (a
    /// lost FIN being resent) or a client that vanished without one (a
    /// zombie) cannot be told from a live client: that is a kick, and one
    /// kick never makes a device flapping.
    fn handle(&mut self, msg: Disconnect, ctx: &mut Self::Context) {
        let replacement = match msg.ending {
            Ending::Replaced(replacement) => Some(replacement),
            Ending::Blocked => None,
            Ending::Admin => return self.stop(DisconnectReason::Admin, ctx),
            Ending::Deleted => return self.stop(DisconnectReason::Deleted, ctx),
            Ending::Shutdown => return self.stop(DisconnectReason::Shutdown, ctx),
            Ending::Resync => return self.stop(DisconnectReason::Resync, ctx),
            Ending::Superseded => return self.stop(DisconnectReason::Superseded, ctx),
            Ending::Slow => return self.slow(ctx),
            Ending::Gap => return self.stop(DisconnectReason::Gap, ctx),
        };
        let running = ctx.state() == ActorState::Running;
        if !running || self.params.queue.is_closed() || (self.params.client_closed)() {
            self.stop(DisconnectReason::ClientGone, ctx);
            return;
        }
        let p = &self.params;
        let by = replacement.as_ref().map(|r| r.by);
        let named = by.map_or_else(|| "admin".to_owned(), |by| by.to_string());
        log::info!(
            "device.kicked device={} conn={} by={named}",
            p.device,
            p.connection_id,
        );
        feed::tell(
            "device.kicked",
            &p.device,
            Some(p.connection_id),
            Some(&named),
        );
        metrics().kicks.inc();
        let recorded = p.store.send(Kicked {
            device: p.device.clone(),
            replacement,
        });
        // `kicked` only once the kick is recorded (on the cluster, in
        // Redis): a client that reads it and comes back, on any node, finds
        // its kick counted. No event is written meanwhile (the registry
        // handed this stream its last); a heartbeat may be, and should it
        // fill the queue, `kicked` is refused and the stream ends as slow.
        ctx.wait(recorded.into_actor(self).map(move |_, act, ctx| {
            act.write(Frame::Signal(Box::new(Signal::kicked(by))), ctx);
            act.stop(DisconnectReason::Kicked, ctx);
        }));
    }
}

#[cfg(test)]
mod tests;
