//! One device's session: its history (the replay buffer) and which stream, if
//! any, is attached to it. A plain data structure owned by the
//! [`SessionStore`](crate::SessionStore); all decisions about where a
//! connecting client's stream starts are made here.
//!
//! Invariants:
//! - ids in the buffer are consecutive, oldest first, and end at `last_seq`;
//! - the buffer is a run of cold events (only their [`Footprint`] in memory,
//!   the payload in storage) followed by a run of hot ones (held whole):
//!   cooling moves the oldest hot events to the cold run, never the reverse;
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

    /// The highest seq written so far.
    pub(crate) fn written(&self) -> u64 {
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

/// What a session keeps of a buffered event whose payload left memory (a
/// cold event): where storage holds it and what it weighs. Its id follows
/// from its place in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// The storage batch that stored it.
    pub batch: u64,
    /// [`StoredEvent::size`].
    pub size: u32,
}

/// The older part of a replay, whose payloads only storage holds: consecutive
/// events of one epoch from `first_seq` on, one storage batch each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unread {
    pub epoch: Epoch,
    pub first_seq: u64,
    pub batches: Vec<u64>,
}

impl Unread {
    /// Whether `events` are exactly the events this names, in order.
    pub fn is_answered_by(&self, events: &[StoredEvent]) -> bool {
        events.len() == self.batches.len()
            && (events.iter().zip(self.first_seq..)).all(|(event, seq)| {
                event.id
                    == EventId {
                        epoch: self.epoch,
                        seq,
                    }
            })
    }
}

/// A decided start and the events to write before live ones.
#[derive(Debug)]
pub struct Opening {
    pub start: Start,
    /// Retained events, sent without id (state, not a position).
    pub state: Vec<StoredEvent>,
    /// The replay's older events, to be read from storage and written
    /// before `replay`.
    pub unread: Option<Unread>,
    /// Events sent with their ids (after `unread`'s).
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
    /// The buffer's older events, whose payloads only storage holds.
    cold: VecDeque<Footprint>,
    /// The buffer's newer events, held whole.
    hot: VecDeque<StoredEvent>,
    /// Sum of [`StoredEvent::size`] over the buffer.
    bytes: usize,
    /// Highest seq written by streams that are no longer attached.
    written_before: u64,
    attached: Option<Attached>,
    /// Ids handed to publishes not yet committed: they follow `last_seq`.
    reserved: u64,
}

impl Session {
    pub fn new(epoch: Epoch) -> Self {
        Self {
            epoch,
            last_seq: 0,
            cold: VecDeque::new(),
            hot: VecDeque::new(),
            bytes: 0,
            written_before: 0,
            attached: None,
            reserved: 0,
        }
    }

    pub fn is_attached(&self) -> bool {
        self.attached.is_some()
    }

    pub fn buffered(&self) -> usize {
        self.cold.len() + self.hot.len()
    }

    /// Every buffered event's footprint, oldest first.
    pub fn footprints(&self) -> impl Iterator<Item = Footprint> + '_ {
        (self.cold.iter().copied()).chain(self.hot.iter().map(StoredEvent::footprint))
    }

    /// The newest `limit` buffered events held in memory, oldest first, and
    /// whether they are all of the newest `limit` (older ones may be held
    /// by storage alone).
    pub fn newest(&self, limit: usize) -> (Vec<StoredEvent>, bool) {
        let skip = self.hot.len().saturating_sub(limit);
        let events: Vec<_> = self.hot.iter().skip(skip).cloned().collect();
        let complete = events.len() == limit.min(self.buffered());
        (events, complete)
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
    ) -> impl Iterator<Item = Footprint> + '_ {
        let (mut count, mut bytes) = (self.buffered() + 1, self.bytes + size);
        self.footprints().take_while(move |oldest| {
            let evicted = limits.exceeded_by(count, bytes);
            count -= 1;
            bytes -= oldest.size as usize;
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
        let attached = self.attached.as_ref().map_or(0, |a| a.progress.written());
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

    /// Hands the next id to a publish, which holds it until it is
    /// committed ([`unreserve`](Self::unreserve), once appended) or every
    /// publish in flight failed ([`release_reserved`](Self::release_reserved)).
    pub fn reserve_id(&mut self) -> EventId {
        let id = self.next_id(self.reserved);
        self.reserved += 1;
        id
    }

    /// A reserved id was committed (and its event appended).
    pub fn unreserve(&mut self) {
        self.reserved = self.reserved.saturating_sub(1);
    }

    /// The publishes holding ids failed: the ids are handed out again.
    pub fn release_reserved(&mut self) {
        self.reserved = 0;
    }

    /// Appends `event`, which carries the next id of this session, dropping
    /// the oldest beyond `limits` (never the new one: limits admit any single
    /// event). Answers the events dropped.
    pub fn append(&mut self, event: StoredEvent, limits: BufferLimits) -> Vec<Footprint> {
        debug_assert_eq!(event.id, self.next_id(0), "appended out of order");
        self.last_seq = event.id.seq;
        self.bytes += event.size();
        self.hot.push_back(event);
        self.shed(limits)
    }

    /// Drops the oldest events beyond `limits`; answers them.
    fn shed(&mut self, limits: BufferLimits) -> Vec<Footprint> {
        let mut dropped = Vec::new();
        while limits.exceeded_by(self.buffered(), self.bytes) {
            let oldest = match self.cold.pop_front() {
                Some(cold) => cold,
                None => match self.hot.pop_front() {
                    Some(hot) => hot.footprint(),
                    None => break,
                },
            };
            self.bytes -= oldest.size as usize;
            dropped.push(oldest);
        }
        dropped
    }

    /// Drops from memory the payloads of the hot events stored in batches up
    /// to `batch`: they become cold, read from storage when replayed.
    /// Answers how many did.
    pub fn cool(&mut self, batch: u64) -> usize {
        let cooled = self.hot.iter().take_while(|e| e.batch <= batch).count();
        (self.cold).extend(self.hot.drain(..cooled).map(|e| e.footprint()));
        cooled
    }

    /// A session read back from storage, every event cold: the footprints
    /// of its events, oldest first and ending at `last_seq`, and what its
    /// streams had written. Answers it with the events beyond `limits`
    /// (lowered since they were stored), oldest first, which it dropped.
    pub fn restore(
        epoch: Epoch,
        written: u64,
        last_seq: u64,
        events: Vec<Footprint>,
        limits: BufferLimits,
    ) -> (Self, Vec<Footprint>) {
        let mut session = Self::new(epoch);
        session.last_seq = last_seq.max(written);
        session.written_before = written;
        session.bytes = events.iter().map(|e| e.size as usize).sum();
        session.cold = events.into();
        let dropped = session.shed(limits);
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
                let (unread, replay) = self.after(seq);
                return Opening {
                    start: Start::Resumed,
                    state: Vec::new(),
                    unread,
                    replay,
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
        let (unread, replay) = self.after(self.written_before);
        // A retained event still waiting to be written goes out once, as
        // history with its id; the others are the state before it.
        let first_unwritten = match &unread {
            Some(unread) => unread.first_seq,
            None => replay.first().map_or(u64::MAX, |e| e.id.seq),
        };
        let waiting = |e: &&StoredEvent| e.id.epoch == self.epoch && e.id.seq >= first_unwritten;
        let state = retained.iter().filter(|e| !waiting(e)).cloned().collect();
        Opening {
            start,
            state,
            unread,
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
        locate(raw, self.through(), self.oldest_kept())
    }

    /// The seq of the oldest buffered event (one past the last when empty).
    fn oldest_kept(&self) -> u64 {
        self.last_seq + 1 - self.buffered() as u64
    }

    /// The buffered events after `seq`, oldest first: the cold ones to read
    /// from storage, then the hot ones.
    fn after(&self, seq: u64) -> (Option<Unread>, Vec<StoredEvent>) {
        let oldest = self.oldest_kept();
        let skip = seq.saturating_sub(oldest - 1);
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        let unread = (skip < self.cold.len()).then(|| Unread {
            epoch: self.epoch,
            first_seq: oldest + skip as u64,
            batches: self.cold.iter().skip(skip).map(|e| e.batch).collect(),
        });
        let skip_hot = skip.saturating_sub(self.cold.len());
        (unread, self.hot.iter().skip(skip_hot).cloned().collect())
    }
}

/// The sequence number the client's id `raw` points at in a history that
/// ends at `through` and keeps events from seq `oldest` on, if a stream can
/// continue from it; otherwise why not.
pub(crate) fn locate(raw: &str, through: EventId, oldest: u64) -> Result<u64, ResetReason> {
    let id = EventId::parse(raw).map_err(|_| ResetReason::Invalid)?;
    if id.epoch != through.epoch {
        return Err(if id.epoch.boot() == through.epoch.boot() {
            ResetReason::Expired
        } else {
            ResetReason::UnknownEpoch
        });
    }
    if id.seq > through.seq {
        return Err(ResetReason::Future);
    }
    if id.seq + 1 < oldest {
        return Err(ResetReason::Evicted);
    }
    Ok(id.seq)
}

#[cfg(test)]
mod tests;
