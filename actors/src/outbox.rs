//! Outbox: the registry's (and the heartbeat's) writes to live streams,
//! handed to the worker threads that serve the streams, one batch per worker
//! per turn.
//!
//! Why: the registry's thread is the one serial part of every delivery (the
//! store runs there too). Writing a stream's queue from it would cost that
//! thread, per delivery, the queue's write, the clock read and the metrics
//! of [`StreamQueue::write`] and the wake of the HTTP body on another
//! thread. Handed over in batches, it costs one message per worker thread
//! per turn, and the writes run in parallel on the workers.
//!
//! Invariants:
//! - what the registry hands over for one stream keeps its order: it all
//!   goes to one worker thread (the stream's, [`Worker`]), batches to a
//!   worker run in the order they were sent, and a batch in its own order;
//! - ending a stream ([`Disconnect`]) is handed over the same way, after its
//!   writes: no live event reaches a client after `kicked`;
//! - a write its queue refuses as full ends the stream as slow, and the
//!   queue refuses every later write (see [`StreamQueue`]): a client never
//!   gets an event past one it missed.
//!
//! The heartbeat hands over its heartbeats the same way, in an outbox of its
//! own: a heartbeat has no id, so its order among a stream's live events
//! does not matter.
//!
//! A batch waits in its worker's (unbounded) arbiter channel until the worker
//! runs it: a worker short of CPU holds there what was handed to it, and the
//! streams' queue bounds apply when it writes.

use std::sync::Arc;

use actix::Addr;

use crate::{
    DeviceConnection, StoredEvent,
    connection::{Disconnect, Ending},
    stream_queue::{Refused, StreamQueue, Worker},
};

/// A live stream as the registry hands writes to it: its queue, and its
/// connection for its ending.
pub struct LiveStream {
    pub queue: StreamQueue,
    pub connection: Addr<DeviceConnection>,
}

/// One thing handed to a stream.
enum Handed {
    Event(Arc<LiveStream>, StoredEvent),
    Heartbeat(Arc<LiveStream>),
    End(Arc<LiveStream>, Ending),
}

/// What an actor hands over in its current turn, by worker thread.
#[derive(Default)]
pub struct Outbox {
    batches: Vec<(Worker, Vec<Handed>)>,
}

impl Outbox {
    /// Hands `event` to the stream, to be written into its queue.
    pub fn write(&mut self, stream: &Arc<LiveStream>, event: StoredEvent) {
        self.batch(stream)
            .push(Handed::Event(stream.clone(), event));
    }

    /// Hands the stream a heartbeat, to be written into its queue.
    pub fn heartbeat(&mut self, stream: &Arc<LiveStream>) {
        self.batch(stream).push(Handed::Heartbeat(stream.clone()));
    }

    /// Hands the stream its ending, after what was handed to it before.
    pub fn end(&mut self, stream: &Arc<LiveStream>, ending: Ending) {
        self.batch(stream).push(Handed::End(stream.clone(), ending));
    }

    /// Sends each worker its batch. Its owner calls it at the end of every
    /// turn that handed something over.
    pub fn send(&mut self) {
        for (worker, batch) in self.batches.drain(..) {
            // A worker that has stopped took its streams with it.
            worker.spawn(async move { batch.into_iter().for_each(Handed::run) });
        }
    }

    fn batch(&mut self, stream: &LiveStream) -> &mut Vec<Handed> {
        let worker = stream.queue.worker();
        // As many batches as worker threads: a scan is cheaper than a map.
        let at = match self.batches.iter().position(|(w, _)| w == worker) {
            Some(at) => at,
            None => {
                self.batches.push((worker.clone(), Vec::new()));
                self.batches.len() - 1
            }
        };
        &mut self.batches[at].1
    }
}

impl Handed {
    /// On the stream's worker thread.
    fn run(self) {
        let (stream, written) = match self {
            Self::Event(stream, event) => {
                let written = stream.queue.write_live(event);
                (stream, written)
            }
            Self::Heartbeat(stream) => {
                let written = stream.queue.write_heartbeat();
                (stream, written)
            }
            Self::End(stream, ending) => return stream.connection.do_send(Disconnect { ending }),
        };
        // Closed: its connection notices too (or has stopped), and says so.
        if written == Err(Refused::Full) {
            let slow = Disconnect {
                ending: Ending::Slow,
            };
            stream.connection.do_send(slow);
        }
    }
}
