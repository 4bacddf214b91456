//! Heartbeat: keeps idle streams visibly alive.
//!
//! Every stream publishes the time of its last write in an [`Activity`] cell.
//! On each tick the heartbeat reads the cells of the streams due (no message
//! per stream) and has a `heartbeat` event written to those idle for
//! `timeout - margin`, one batch per worker thread per tick ([`Outbox`]); a
//! stream with traffic gets none. A stream is due when its last write, as
//! last read, is that old: a tick reads what is due, not every stream.
//!
//! A heartbeat is also what finds a peer that vanished without closing its
//! connection: writes to it back up until the stream's queue is full and
//! the stream is ended as slow.
//!
//! Invariants: a stream is watched from when it is live (the registry tells
//! the heartbeat, [`ConnectWatch`]) until its connection is gone
//! ([`DisconnectWatch`]); its queue drops heartbeats until its start is
//! written, so none comes before `hello` (nor while a replay's older part
//! is read from storage: its client sees the stream as dead only if that
//! read takes longer than `timeout`); and a connection that stops ends its
//! queue for writes ([`Activity::end`]), so none comes after `kicked`.
//!
//! Clients learn `timeout` in `hello` (`heartbeat_timeout_ms`): silence that
//! long means the stream is dead. The margin covers tick granularity and
//! network delay.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{
    ConnectionId,
    ids::IdMap,
    outbox::{LiveStream, Outbox},
    stream_queue::Refused,
};

/// The `[heartbeat]` config section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Silence after which a client should consider its stream dead.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long before `timeout` an idle stream gets its heartbeat.
    #[serde(with = "humantime_serde")]
    pub margin: Duration,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(20),
            margin: Duration::from_secs(5),
        }
    }
}

impl HeartbeatConfig {
    /// Idle time after which a stream gets a heartbeat.
    pub fn idle_after(&self) -> Duration {
        self.timeout.saturating_sub(self.margin)
    }

    /// How often idleness is checked: fine enough that a heartbeat goes out
    /// well inside the margin.
    pub fn tick(&self) -> Duration {
        (self.margin / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// When a stream last wrote, shared between its writers (its connection,
/// the registry's and the heartbeat's writes on its worker) and the
/// heartbeat (reader), or that it writes nothing more (and is never idle):
/// its queue refused a write as full, or its connection stopped.
/// Milliseconds since the process's first use of it.
#[derive(Debug, Clone, Default)]
pub struct Activity(Arc<AtomicU64>);

impl Activity {
    /// Stands for "refused as full": later than every time.
    const REFUSED: u64 = u64::MAX;
    /// Stands for "its connection stopped": later than every time, and
    /// below a refusal, which it must not hide (a refused stream ends as
    /// slow).
    const ENDED: u64 = u64::MAX - 1;

    fn now_ms() -> u64 {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let elapsed = ORIGIN.get_or_init(Instant::now).elapsed();
        u64::try_from(elapsed.as_millis()).unwrap_or(Self::ENDED - 1)
    }

    pub fn touch(&self) {
        self.touch_at(Self::now_ms());
    }

    /// The maximum, so neither the heartbeat marking it on another thread
    /// nor a clock read earlier can undo a refusal or an end.
    fn touch_at(&self, now_ms: u64) {
        self.0.fetch_max(now_ms, Ordering::Relaxed);
    }

    pub fn refuse(&self) {
        self.touch_at(Self::REFUSED);
    }

    /// Its connection stopped: nothing more is written.
    pub fn end(&self) {
        self.touch_at(Self::ENDED);
    }

    /// Why nothing more is written, if nothing is.
    pub fn refusal(&self) -> Option<Refused> {
        match self.0.load(Ordering::Relaxed) {
            Self::REFUSED => Some(Refused::Full),
            Self::ENDED => Some(Refused::Closed),
            _ => None,
        }
    }

    /// When it last wrote; `None` if it writes nothing more.
    fn last_write(&self) -> Option<u64> {
        let last = self.0.load(Ordering::Relaxed);
        (last < Self::ENDED).then_some(last)
    }
}

/// Watch a stream that went live: the last step of a connect. Sent by the
/// registry.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnectWatch {
    pub connection_id: ConnectionId,
    pub stream: Arc<LiveStream>,
}

/// Stop watching a stream whose connection is gone. Sent by the registry.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DisconnectWatch {
    pub connection_id: ConnectionId,
}

/// Check every watched stream once. Sent by the heartbeat to itself.
#[derive(Message)]
#[rtype(result = "()")]
struct Tick;

pub struct Heartbeat {
    config: HeartbeatConfig,
    watched: IdMap<ConnectionId, Arc<LiveStream>>,
    /// When each watched stream is next read (ms, see [`Activity`]): the
    /// earliest it can be idle. A stream no longer watched leaves its
    /// entry here until it comes due.
    due: BinaryHeap<Reverse<(u64, ConnectionId)>>,
    /// What this tick has written; sent at the end of the tick.
    outbox: Outbox,
}

impl Heartbeat {
    pub fn new(config: HeartbeatConfig) -> Self {
        Self {
            config,
            watched: IdMap::default(),
            due: BinaryHeap::new(),
            outbox: Outbox::default(),
        }
    }

    /// At least a millisecond: a stream given a heartbeat is due again
    /// later, not in the same tick (which would never end).
    fn idle_after_ms(&self) -> u64 {
        let ms = u64::try_from(self.config.idle_after().as_millis()).unwrap_or(u64::MAX / 2);
        ms.max(1)
    }
}

impl Actor for Heartbeat {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.config.tick(), |_, ctx| ctx.notify(Tick));
    }
}

impl Handler<ConnectWatch> for Heartbeat {
    type Result = ();

    fn handle(&mut self, msg: ConnectWatch, _: &mut Self::Context) {
        let due = Activity::now_ms() + self.idle_after_ms();
        self.due.push(Reverse((due, msg.connection_id)));
        self.watched.insert(msg.connection_id, msg.stream);
    }
}

impl Handler<DisconnectWatch> for Heartbeat {
    type Result = ();

    fn handle(&mut self, msg: DisconnectWatch, _: &mut Self::Context) {
        self.watched.remove(&msg.connection_id);
    }
}

impl Handler<Tick> for Heartbeat {
    type Result = ();

    fn handle(&mut self, _: Tick, _: &mut Self::Context) {
        let idle_after = self.idle_after_ms();
        // One clock reading per tick, not one per stream.
        let now = Activity::now_ms();
        while let Some(&Reverse((due, id))) = self.due.peek() {
            if due > now {
                break;
            }
            self.due.pop();
            let Some(stream) = self.watched.get(&id) else {
                continue;
            };
            let activity = stream.queue.activity();
            // It writes nothing more: it is ending, and is not read again.
            let Some(last) = activity.last_write() else {
                continue;
            };
            let next = if now.saturating_sub(last) >= idle_after {
                // Marked now, not when its worker gets to it, so a busy
                // worker is not handed a second one.
                activity.touch_at(now);
                self.outbox.heartbeat(stream);
                now + idle_after
            } else {
                last + idle_after
            };
            self.due.push(Reverse((next, id)));
        }
        self.outbox.send();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Frame, Signal, test_support::*};

    fn start_with_fast_heartbeat() -> crate::Actors {
        let session = session_config(Duration::from_secs(60));
        let heartbeat = HeartbeatConfig {
            timeout: Duration::from_millis(200),
            margin: Duration::from_millis(100),
        };
        crate::start(
            session,
            heartbeat,
            lenient_kicks(),
            crate::test_support::in_memory(),
        )
    }

    #[test]
    fn a_refusal_outlasts_every_later_touch_and_is_never_read_as_idle() {
        let activity = Activity::default();
        activity.touch_at(5);
        activity.refuse();
        // The heartbeat marking it on its own thread, after the refusal.
        activity.touch_at(10);
        // Its connection stopping, after the refusal: it still ends as slow.
        activity.end();
        assert_eq!(activity.refusal(), Some(Refused::Full));
        assert_eq!(activity.last_write(), None);
    }

    #[test]
    fn a_stream_given_a_heartbeat_is_due_again_at_least_a_millisecond_later() {
        // Valid config (margin below timeout) with an idle time under 1 ms:
        // due again "now" would keep a tick going for ever.
        let config = HeartbeatConfig {
            timeout: Duration::from_millis(1),
            margin: Duration::from_micros(500),
        };
        assert_eq!(Heartbeat::new(config).idle_after_ms(), 1);
    }

    #[test]
    fn an_end_outlasts_every_later_touch_and_is_never_read_as_idle() {
        let activity = Activity::default();
        activity.touch_at(5);
        activity.end();
        activity.touch_at(10);
        assert_eq!(activity.refusal(), Some(Refused::Closed));
        assert_eq!(activity.last_write(), None);
    }

    #[actix::test]
    async fn an_idle_stream_gets_a_heartbeat_each_time_it_has_been_idle() {
        let actors = start_with_fast_heartbeat();
        let (_conn, mut frames, _) = connect(&actors, &device("d1"), None, 8).await;
        expect_signal(&mut frames, "hello").await;

        // And again each time it has been idle that long again.
        for _ in 0..2 {
            match next(&mut frames).await {
                Some(Frame::Signal(signal)) => assert_eq!(*signal, Signal::heartbeat()),
                other => panic!("expected a heartbeat, got {other:?}"),
            }
        }
    }

    #[actix::test]
    async fn a_busy_stream_gets_no_heartbeat_until_it_is_idle() {
        let actors = start_with_fast_heartbeat();
        let dev = device("d1");
        let (_conn, mut frames, _) = connect(&actors, &dev, None, 8).await;
        expect_signal(&mut frames, "hello").await;

        let busy_until = Instant::now() + Duration::from_millis(400);
        while Instant::now() < busy_until {
            let receipt = publish_to(&actors, &dev, "tick").await;
            match next(&mut frames).await {
                Some(Frame::Event(event)) => assert_eq!(event.id, receipt.id),
                other => panic!("expected event {}, got {other:?}", receipt.id),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            frames.try_recv().is_err(),
            "a heartbeat followed the traffic"
        );
        // Idle from now on: it gets one.
        expect_signal(&mut frames, "heartbeat").await;
    }
}
