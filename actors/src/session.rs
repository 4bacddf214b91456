//! One device's session: its history (the replay buffer) and which stream, if
//! any, is attached to it. A plain data structure owned by the
//! [`SessionStore`](crate::SessionStore); all decisions about where a
//! connecting client's stream starts are made here.
//!
//! Invariants:
//! - ids in the buffer are consecutive, oldest first, and end at `last_seq`;
//! - every event up to [`Session::handed_out`] was written to some stream, so a
//!   connect without a usable position gets only what follows it. "Written"
//!   is a fact reported by the streams ([`Progress`]), not an assumption.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::{ConnectionId, Epoch, EventId, ResetReason, StoredEvent};

/// The highest sequence number a stream has written to its client's queue,
/// shared between the stream's connection (writer) and its session (reader).
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<AtomicU64>);

impl Progress {
    pub fn advance_to(&self, seq: u64) {
        self.0.fetch_max(seq, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Where a new stream starts, decided from the position the client claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// No position given: the events no stream was given follow, then live.
    Fresh,
    /// The position is in the buffer: the events after it follow, then live.
    Resumed,
    /// The position is gone — or, for a client that gave none, events meant
    /// for it were evicted unseen. The client must drop its state; the events
    /// no stream was given follow, then live.
    Reset {
        reason: ResetReason,
        /// What the client sent, if anything.
        last_event_id: Option<String>,
    },
}

/// How much one session's buffer may hold; the oldest events go first.
#[derive(Debug, Clone, Copy)]
pub struct BufferLimits {
    pub events: usize,
    pub bytes: usize,
}

impl BufferLimits {
    /// Whether a buffer of `count` events and `bytes` bytes must shed its
    /// oldest event. The newest event always stays, whatever its size.
    fn exceeded_by(self, count: usize, bytes: usize) -> bool {
        count > 1 && (count > self.events || bytes > self.bytes)
    }
}

/// A decided start and the events to write before live ones.
#[derive(Debug)]
pub struct Opening {
    pub start: Start,
    /// Retained events, sent without id (state, not a position).
    pub state: Vec<StoredEvent>,
    /// Events sent with their ids.
    pub replay: Vec<StoredEvent>,
    /// The session's last id when the stream attached (seq 0 before its
    /// first event): the replay ends here, and the stream's live events
    /// start right after it, in the same epoch.
    pub through: EventId,
}

#[derive(Debug)]
struct Attached {
    connection: ConnectionId,
    progress: Progress,
}

#[derive(Debug)]
pub struct Session {
    epoch: Epoch,
    last_seq: u64,
    buffer: VecDeque<StoredEvent>,
    /// Sum of [`StoredEvent::size`] over the buffer.
    bytes: usize,
    /// Highest seq written by streams that are no longer attached.
    written_before: u64,
    attached: Option<Attached>,
}

impl Session {
    pub fn new(epoch: Epoch) -> Self {
        Self {
            epoch,
            last_seq: 0,
            buffer: VecDeque::new(),
            bytes: 0,
            written_before: 0,
            attached: None,
        }
    }

    pub fn is_attached(&self) -> bool {
        self.attached.is_some()
    }

    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Bytes the buffer holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The oldest events that appending an event of `size` bytes under
    /// `limits` would evict. Changes nothing, so a caller can refuse a
    /// publish before anything happened.
    pub fn evicted_if_appended(
        &self,
        size: usize,
        limits: BufferLimits,
    ) -> impl Iterator<Item = &StoredEvent> {
        let (mut count, mut bytes) = (self.buffer.len() + 1, self.bytes + size);
        self.buffer.iter().take_while(move |oldest| {
            let evicted = limits.exceeded_by(count, bytes);
            count -= 1;
            bytes -= oldest.size();
            evicted
        })
    }

    /// The id of the last event published to this session.
    pub fn last_event_id(&self) -> Option<EventId> {
        (self.last_seq > 0).then_some(EventId {
            epoch: self.epoch,
            seq: self.last_seq,
        })
    }

    /// Where a stream attached now starts its live events from.
    fn through(&self) -> EventId {
        EventId {
            epoch: self.epoch,
            seq: self.last_seq,
        }
    }

    /// The stream attached to this session, if any.
    pub fn attached(&self) -> Option<ConnectionId> {
        self.attached.as_ref().map(|a| a.connection)
    }

    /// The highest seq any stream of this session has written.
    pub fn handed_out(&self) -> u64 {
        let attached = self.attached.as_ref().map_or(0, |a| a.progress.get());
        self.written_before.max(attached)
    }

    /// The id `ahead` events after the last one (ids reserved for events
    /// not yet committed come first).
    pub fn next_id(&self, ahead: u64) -> EventId {
        EventId {
            epoch: self.epoch,
            seq: self.last_seq + ahead + 1,
        }
    }

    /// Appends `event`, which carries the next id of this session, dropping
    /// the oldest beyond `limits` (never the new one: limits admit any single
    /// event). Answers the events dropped.
    pub fn append(&mut self, event: StoredEvent, limits: BufferLimits) -> Vec<StoredEvent> {
        debug_assert_eq!(event.id, self.next_id(0), "appended out of order");
        self.last_seq = event.id.seq;
        self.bytes += event.size();
        self.buffer.push_back(event);
        let mut evicted = Vec::new();
        while limits.exceeded_by(self.buffer.len(), self.bytes) {
            let Some(oldest) = self.buffer.pop_front() else {
                break;
            };
            self.bytes -= oldest.size();
            evicted.push(oldest);
        }
        evicted
    }

    /// The buffered events, oldest first.
    pub fn events(&self) -> impl Iterator<Item = &StoredEvent> {
        self.buffer.iter()
    }

    /// A session read back from storage: its events (oldest first) and what
    /// its streams had written. Answers it with the events beyond `limits`
    /// (lowered since they were stored), oldest first, which it dropped.
    pub fn restore(
        epoch: Epoch,
        written: u64,
        events: Vec<StoredEvent>,
        limits: BufferLimits,
    ) -> (Self, Vec<StoredEvent>) {
        let mut session = Self::new(epoch);
        session.last_seq = events.last().map_or(written, |e| e.id.seq.max(written));
        session.written_before = written;
        session.bytes = events.iter().map(StoredEvent::size).sum();
        session.buffer = events.into();
        let mut dropped = Vec::new();
        while limits.exceeded_by(session.buffer.len(), session.bytes) {
            let Some(oldest) = session.buffer.pop_front() else {
                break;
            };
            session.bytes -= oldest.size();
            dropped.push(oldest);
        }
        (session, dropped)
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Attaches a new stream (replacing any other) and decides how it starts.
    /// `last_event_id` is what the client sent, untrusted; `retained` are the
    /// device's retained events (in publish order), sent to a stream that has
    /// no usable position.
    pub fn attach(
        &mut self,
        connection: ConnectionId,
        progress: Progress,
        last_event_id: Option<&str>,
        retained: &[StoredEvent],
    ) -> Opening {
        self.written_before = self.handed_out();
        self.attached = Some(Attached {
            connection,
            progress,
        });
        let position = last_event_id.map(|raw| (raw, self.locate(raw)));
        let start = match position {
            Some((_, Ok(seq))) => {
                return Opening {
                    start: Start::Resumed,
                    state: Vec::new(),
                    replay: self.after(seq),
                    through: self.through(),
                };
            }
            Some((raw, Err(reason))) => Start::Reset {
                reason,
                last_event_id: Some(raw.to_owned()),
            },
            None if self.written_before + 1 < self.oldest_kept() => Start::Reset {
                reason: ResetReason::Evicted,
                last_event_id: None,
            },
            None => Start::Fresh,
        };
        let replay = self.after(self.written_before);
        // A retained event still waiting to be written goes out once, as
        // history with its id; the others are the state before it.
        let first_unwritten = replay.first().map_or(u64::MAX, |e| e.id.seq);
        let waiting = |e: &&StoredEvent| e.id.epoch == self.epoch && e.id.seq >= first_unwritten;
        let state = retained.iter().filter(|e| !waiting(e)).cloned().collect();
        Opening {
            start,
            state,
            replay,
            through: self.through(),
        }
    }

    /// Detaches `connection` if it is the attached one; a stream that was
    /// already replaced detaches nothing.
    pub fn detach(&mut self, connection: ConnectionId) -> bool {
        if self.attached.as_ref().map(|a| a.connection) != Some(connection) {
            return false;
        }
        self.written_before = self.handed_out();
        self.attached = None;
        true
    }

    /// The sequence number a client's id points at, if this session can
    /// continue from it.
    fn locate(&self, raw: &str) -> Result<u64, ResetReason> {
        let id = EventId::parse(raw).map_err(|_| ResetReason::Invalid)?;
        if id.epoch != self.epoch {
            return Err(if id.epoch.boot() == self.epoch.boot() {
                ResetReason::Expired
            } else {
                ResetReason::UnknownEpoch
            });
        }
        if id.seq > self.last_seq {
            return Err(ResetReason::Future);
        }
        if id.seq + 1 < self.oldest_kept() {
            return Err(ResetReason::Evicted);
        }
        Ok(id.seq)
    }

    /// The seq of the oldest buffered event (one past the last when empty).
    fn oldest_kept(&self) -> u64 {
        self.buffer.front().map_or(self.last_seq + 1, |e| e.id.seq)
    }

    /// The buffered events after `seq`, oldest first.
    fn after(&self, seq: u64) -> Vec<StoredEvent> {
        let skip = seq.saturating_sub(self.oldest_kept() - 1);
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        self.buffer.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests;
