//! The sending side of one stream's bounded queue (its receiving side is the
//! HTTP body), shared by the two that write to it:
//! - its [`DeviceConnection`](crate::DeviceConnection) writes the stream's
//!   start (`hello`, a `reset`, retained state, the replay) and its signals
//!   (heartbeats, `kicked`);
//! - the [`DeviceRegistry`](crate::DeviceRegistry) writes the live events,
//!   once the connection has said its start is written: a live event goes
//!   from the registry to the HTTP body in one hop, not through the
//!   connection's mailbox.
//!
//! Every write records the same things whoever makes it: the stream's
//! position (its session reads it), when it last wrote (the heartbeat reads
//! it) and the metrics.

use tokio::sync::mpsc::{Sender, error::TrySendError};

use crate::{Frame, Progress, event::HEARTBEAT, heartbeat::Activity, metrics::metrics};

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The client does not keep up: the queue is full.
    Full,
    /// The client is gone: the HTTP body dropped the queue.
    Closed,
}

#[derive(Clone)]
pub struct StreamQueue {
    queue: Sender<Frame>,
    progress: Progress,
    activity: Activity,
}

impl StreamQueue {
    pub fn new(queue: Sender<Frame>, progress: Progress) -> Self {
        Self {
            queue,
            progress,
            activity: Activity::default(),
        }
    }

    /// Queues `frame` without waiting, and records the write.
    pub fn write(&self, frame: Frame) -> Result<(), Refused> {
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
            Err(TrySendError::Full(_)) => Err(Refused::Full),
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

    /// When the stream last wrote, for the heartbeat.
    pub fn activity(&self) -> Activity {
        self.activity.clone()
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
