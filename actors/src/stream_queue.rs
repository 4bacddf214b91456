//! The sending side of one stream's bounded queue (its receiving side is the
//! HTTP body), shared by the three that write to it:
//! - its [`DeviceConnection`](crate::DeviceConnection) writes the stream's
//!   start (`hello`, a `reset`, retained state, the replay) and `kicked`;
//! - the [`DeviceRegistry`](crate::DeviceRegistry) has the live events
//!   written, and the [`Heartbeat`](crate::Heartbeat) its heartbeats: they
//!   go to the HTTP body through one batch per worker thread (see
//!   [`Outbox`](crate::outbox::Outbox)), not through the connection's
//!   mailbox.
//!
//! All of them write on the stream's [`Worker`], the thread that serves its HTTP
//! connection. Every write records the same things whoever makes it: the
//! stream's position (its session reads it), when it last wrote (the
//! heartbeat reads it) and the metrics.
//!
//! Live events follow the start: the registry hands them over from the
//! moment the stream is live, and those that reach the worker before the
//! connection has written the start wait here ([`StreamQueue::write_live`]),
//! in order and counted against the queue's bound, until the connection lets
//! them flow ([`StreamQueue::flow`]). Heartbeats that come before then are
//! dropped: none may precede `hello`.
//!
//! A write refused as full is the stream's last: every later one is refused
//! too, so a client whose queue drained a little never gets an event past
//! the one it missed; its stream ends as slow and its client resumes. A
//! connection that stops ends its queue the same way ([`StreamQueue::end`]).

use std::sync::{
    Arc, Mutex, MutexGuard, PoisonError,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use actix::{Arbiter, dev::ArbiterHandle};
use tokio::sync::mpsc::{Sender, error::TrySendError};

use crate::{
    Frame, Progress, Signal, StoredEvent, event::HEARTBEAT, heartbeat::Activity, metrics::metrics,
};

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The client does not keep up: the queue is full.
    Full,
    /// The client is gone: the HTTP body dropped the queue.
    Closed,
}

/// A worker thread: an actix arbiter, with a number to tell it from others.
#[derive(Clone)]
pub struct Worker {
    id: usize,
    arbiter: ArbiterHandle,
}

impl Worker {
    /// The current thread's. Panics outside an actix arbiter: every actix
    /// system is one, and so is every HTTP worker of a server started inside
    /// one (herald's is: its actors need the system too).
    fn current() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static ID: usize = NEXT.fetch_add(1, Ordering::Relaxed);
        }
        Self {
            id: ID.with(|id| *id),
            arbiter: Arbiter::current(),
        }
    }

    /// Runs `work` on this worker thread; false if the worker has stopped.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) -> bool {
        self.arbiter.spawn(work)
    }
}

impl PartialEq for Worker {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

#[derive(Clone)]
pub struct StreamQueue {
    queue: Sender<Frame>,
    progress: Progress,
    activity: Activity,
    worker: Worker,
    gate: Arc<Gate>,
}

/// Live events that came before the stream's start was written. Only the
/// stream's worker thread touches it (the atomic and the lock are there for
/// `Sync`, never contended), so a plain load sees every store.
#[derive(Default)]
struct Gate {
    /// Set once the start is written: live events go straight in.
    open: AtomicBool,
    held: Mutex<Held>,
}

/// The live events handed over before the start, in order.
#[derive(Default)]
struct Held {
    events: Vec<StoredEvent>,
    /// More came than the queue holds: the stream ends as slow, after its
    /// start (which is still written, so its client hears `hello`).
    overflowed: bool,
}

impl StreamQueue {
    /// Made on the worker thread that serves the stream: it writes there.
    pub fn new(queue: Sender<Frame>, progress: Progress) -> Self {
        Self {
            queue,
            progress,
            activity: Activity::default(),
            worker: Worker::current(),
            gate: Arc::default(),
        }
    }

    /// Writes a live event, handed over by the registry; one that comes
    /// before the start is written waits for [`StreamQueue::flow`], and
    /// counts against the queue's bound meanwhile (past it, this and every
    /// later live event is refused as full, and so is the flow).
    pub fn write_live(&self, event: StoredEvent) -> Result<(), Refused> {
        if self.gate.open.load(Ordering::Relaxed) {
            return self.write(Frame::Event(Box::new(event)));
        }
        if let Some(refused) = self.activity.refusal() {
            return Err(refused);
        }
        let mut held = self.held();
        if held.overflowed || held.events.len() == self.capacity() {
            *held = Held {
                events: Vec::new(),
                overflowed: true,
            };
            return Err(Refused::Full);
        }
        held.events.push(event);
        Ok(())
    }

    /// Writes a heartbeat, unless the start is not written yet.
    pub fn write_heartbeat(&self) -> Result<(), Refused> {
        match self.gate.open.load(Ordering::Relaxed) {
            true => self.write(Frame::Signal(Box::new(Signal::heartbeat()))),
            false => Ok(()),
        }
    }

    /// The stream's start is written: the live events held so far follow
    /// it, in order, and later ones go straight in. Refused as full (and
    /// every later write with it) if more were held than the queue holds.
    pub fn flow(&self) -> Result<(), Refused> {
        let held = std::mem::take(&mut *self.held());
        self.gate.open.store(true, Ordering::Relaxed);
        if held.overflowed {
            self.activity.refuse();
            return Err(Refused::Full);
        }
        (held.events.into_iter()).try_for_each(|event| self.write(Frame::Event(Box::new(event))))
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.gate
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `frame` without waiting, and records the write. Once a write
    /// was refused as full, refuses every later one; once the queue is
    /// ended, too.
    pub fn write(&self, frame: Frame) -> Result<(), Refused> {
        if let Some(refused) = self.activity.refusal() {
            return Err(refused);
        }
        let seq = frame.last_seq();
        let written = Written::of(&frame);
        match self.queue.try_send(frame) {
            Ok(()) => {
                self.activity.touch();
                if let Some(seq) = seq {
                    self.progress.advance_to(seq);
                }
                written.record();
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                self.activity.refuse();
                Err(Refused::Full)
            }
            Err(TrySendError::Closed(_)) => Err(Refused::Closed),
        }
    }

    /// How many frames the queue holds at most.
    pub fn capacity(&self) -> usize {
        self.queue.max_capacity()
    }

    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// Resolves once the client is gone.
    pub async fn closed(&self) {
        self.queue.closed().await
    }

    /// Where the stream reports what it wrote, for its session.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// The thread its writes happen on.
    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    /// When the stream last wrote, for the heartbeat.
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    /// Its connection stopped: every later write is refused as `Closed`,
    /// so nothing follows what the connection wrote last (`kicked`). Called
    /// on the stream's worker, where every write happens.
    pub fn end(&self) {
        self.activity.end();
    }
}

/// What a written frame adds to the metrics.
enum Written {
    Live,
    Replayed(u64),
    Heartbeat,
    Other,
}

impl Written {
    fn of(frame: &Frame) -> Self {
        match frame {
            Frame::Event(_) => Self::Live,
            Frame::Replay(events) => Self::Replayed(events.len() as u64),
            Frame::Signal(signal) if signal.name == HEARTBEAT => Self::Heartbeat,
            Frame::State(_) | Frame::Signal(_) => Self::Other,
        }
    }

    fn record(self) {
        let metrics = metrics();
        match self {
            Self::Live => metrics.delivered.inc(),
            Self::Replayed(count) => metrics.replayed.inc_by(count),
            Self::Heartbeat => metrics.heartbeats.inc(),
            Self::Other => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::Signal;

    fn heartbeat() -> Frame {
        Frame::Signal(Box::new(Signal::heartbeat()))
    }

    #[actix::test]
    async fn a_write_refused_as_full_is_the_last_the_queue_takes() {
        let (sender, mut receiver) = mpsc::channel(1);
        let queue = StreamQueue::new(sender, Progress::default());
        assert_eq!(queue.write(heartbeat()), Ok(()));
        assert_eq!(queue.write(heartbeat()), Err(Refused::Full));

        // The client reads: there is room again, but it missed a frame, and
        // nothing may follow that.
        assert!(receiver.recv().await.is_some());
        assert_eq!(queue.write(heartbeat()), Err(Refused::Full));
        assert!(receiver.try_recv().is_err());
    }

    #[actix::test]
    async fn live_events_before_the_start_follow_it_and_heartbeats_before_it_are_dropped() {
        let (sender, mut receiver) = mpsc::channel(8);
        let queue = StreamQueue::new(sender, Progress::default());
        let event = |seq| crate::test_support::event(seq);
        assert_eq!(queue.write_live(event(1)), Ok(()));
        assert_eq!(queue.write_heartbeat(), Ok(()));
        assert_eq!(queue.write_live(event(2)), Ok(()));
        assert!(receiver.try_recv().is_err(), "written before the start");

        queue
            .write(Frame::Signal(Box::new(Signal::hello(
                &crate::DeviceId::parse("d1").unwrap(),
                crate::ConnectionId::new(),
                1_000,
                false,
            ))))
            .unwrap();
        assert_eq!(queue.flow(), Ok(()));
        assert_eq!(queue.write_live(event(3)), Ok(()));
        let mut names = Vec::new();
        while let Ok(frame) = receiver.try_recv() {
            names.push(match frame {
                Frame::Signal(signal) => signal.name.to_owned(),
                Frame::Event(event) => event.id.seq.to_string(),
                other => panic!("unexpected {other:?}"),
            });
        }
        assert_eq!(names, ["hello", "1", "2", "3"]);
    }

    #[actix::test]
    async fn live_events_held_before_the_start_count_against_the_bound() {
        let (sender, _receiver) = mpsc::channel(2);
        let queue = StreamQueue::new(sender, Progress::default());
        let event = |seq| crate::test_support::event(seq);
        assert_eq!(queue.write_live(event(1)), Ok(()));
        assert_eq!(queue.write_live(event(2)), Ok(()));
        assert_eq!(queue.write_live(event(3)), Err(Refused::Full));
        // The start is still written, so the client hears `hello`; then the
        // stream ends, and nothing is written after the refusal.
        assert_eq!(queue.write(heartbeat()), Ok(()));
        assert_eq!(queue.flow(), Err(Refused::Full));
        assert_eq!(queue.write(heartbeat()), Err(Refused::Full));
    }
}
