//! One device's session: its history (the replay buffer) and which stream, if
//! any, is attached to it. A plain data structure owned by the
//! [`SessionStore`](crate::SessionStore); all decisions about where a
//! connecting client's stream starts are made here.
//!
//! Invariants:
//! - ids in the buffer are consecutive, oldest first, and end at `last_seq`;
//! - `handed_out <= last_seq`: every event up to `handed_out` was handed to a
//!   stream, so a fresh connect (no position) does not see it again.

use std::collections::VecDeque;

use bytestring::ByteString;

use crate::{ConnectionId, Epoch, EventId, EventName, ResetReason, StoredEvent};

/// Where a new stream starts, decided from the position the client claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// No position given: events never handed to a stream follow, then live.
    Fresh,
    /// The position is in the buffer: the events after it follow, then live.
    Resumed,
    /// The position is gone: the client must drop its state and rebuild.
    Reset {
        reason: ResetReason,
        last_event_id: String,
    },
}

/// A decided start and the events to write before live ones.
#[derive(Debug)]
pub struct Opening {
    pub start: Start,
    pub replay: Vec<StoredEvent>,
}

#[derive(Debug)]
pub struct Session {
    epoch: Epoch,
    last_seq: u64,
    buffer: VecDeque<StoredEvent>,
    handed_out: u64,
    attached: Option<ConnectionId>,
}

impl Session {
    pub fn new(epoch: Epoch) -> Self {
        Self {
            epoch,
            last_seq: 0,
            buffer: VecDeque::new(),
            handed_out: 0,
            attached: None,
        }
    }

    pub fn is_attached(&self) -> bool {
        self.attached.is_some()
    }

    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Appends an event with the next id, dropping the oldest beyond
    /// `max_events`. While a stream is attached the event counts as handed
    /// out: the caller routes it to that stream.
    pub fn append(&mut self, name: EventName, data: ByteString, max_events: usize) -> StoredEvent {
        self.last_seq += 1;
        let event = StoredEvent {
            id: EventId {
                epoch: self.epoch,
                seq: self.last_seq,
            },
            name,
            data,
        };
        self.buffer.push_back(event.clone());
        while self.buffer.len() > max_events {
            self.buffer.pop_front();
        }
        if self.attached.is_some() {
            self.handed_out = self.last_seq;
        }
        event
    }

    /// Attaches a new stream (replacing any other) and decides how it starts.
    /// `last_event_id` is what the client sent, untrusted.
    pub fn attach(&mut self, connection: ConnectionId, last_event_id: Option<&str>) -> Opening {
        self.attached = Some(connection);
        let opening = match last_event_id {
            None => Opening {
                start: Start::Fresh,
                replay: self.after(self.handed_out),
            },
            Some(raw) => match self.locate(raw) {
                Ok(seq) => Opening {
                    start: Start::Resumed,
                    replay: self.after(seq),
                },
                Err(reason) => Opening {
                    start: Start::Reset {
                        reason,
                        last_event_id: raw.to_owned(),
                    },
                    replay: Vec::new(),
                },
            },
        };
        self.handed_out = self.last_seq;
        opening
    }

    /// Detaches `connection` if it is the attached one; a stream that was
    /// already replaced detaches nothing.
    pub fn detach(&mut self, connection: ConnectionId) -> bool {
        if self.attached == Some(connection) {
            self.attached = None;
            true
        } else {
            false
        }
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
        let oldest_kept = self.buffer.front().map_or(self.last_seq + 1, |e| e.id.seq);
        if id.seq + 1 < oldest_kept {
            return Err(ResetReason::Evicted);
        }
        Ok(id.seq)
    }

    /// The buffered events after `seq`, oldest first.
    fn after(&self, seq: u64) -> Vec<StoredEvent> {
        let oldest_kept = self.buffer.front().map_or(self.last_seq + 1, |e| e.id.seq);
        let skip = usize::try_from(seq.saturating_sub(oldest_kept - 1)).unwrap_or(usize::MAX);
        self.buffer.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: u32 = 7;

    fn session_with(events: u64, max_events: usize) -> Session {
        let mut session = Session::new(Epoch::new(BOOT, 1));
        for n in 1..=events {
            session.append(
                EventName::parse("e").unwrap(),
                n.to_string().into(),
                max_events,
            );
        }
        session
    }

    fn seqs(opening: &Opening) -> Vec<u64> {
        opening.replay.iter().map(|e| e.id.seq).collect()
    }

    fn id(session_no: u32, seq: u64) -> String {
        EventId {
            epoch: Epoch::new(BOOT, session_no),
            seq,
        }
        .to_string()
    }

    fn reset_reason(opening: Opening) -> ResetReason {
        match opening.start {
            Start::Reset { reason, .. } => reason,
            other => panic!("expected a reset, got {other:?}"),
        }
    }

    #[test]
    fn a_held_position_replays_what_follows_it() {
        let mut session = session_with(5, 10);
        let opening = session.attach(ConnectionId::new(), Some(&id(1, 2)));
        assert_eq!(opening.start, Start::Resumed);
        assert_eq!(seqs(&opening), [3, 4, 5]);
        let at_end = session.attach(ConnectionId::new(), Some(&id(1, 5)));
        assert_eq!((at_end.start, at_end.replay.len()), (Start::Resumed, 0));
    }

    #[test]
    fn the_position_just_before_the_oldest_kept_event_is_still_held() {
        let mut session = session_with(8, 3);
        let opening = session.attach(ConnectionId::new(), Some(&id(1, 5)));
        assert_eq!(seqs(&opening), [6, 7, 8]);
        let gone = session.attach(ConnectionId::new(), Some(&id(1, 4)));
        assert_eq!(reset_reason(gone), ResetReason::Evicted);
    }

    #[test]
    fn lost_positions_name_their_reason() {
        let mut session = session_with(3, 10);
        let cases = [
            (id(1, 4), ResetReason::Future),
            (id(0, 1), ResetReason::Expired),
            (
                EventId {
                    epoch: Epoch::new(BOOT + 1, 1),
                    seq: 1,
                }
                .to_string(),
                ResetReason::UnknownEpoch,
            ),
            ("garbage".to_owned(), ResetReason::Invalid),
        ];
        for (claimed, reason) in cases {
            let opening = session.attach(ConnectionId::new(), Some(&claimed));
            assert!(opening.replay.is_empty());
            assert_eq!(
                opening.start,
                Start::Reset {
                    reason,
                    last_event_id: claimed.clone()
                },
                "{claimed}"
            );
        }
    }

    #[test]
    fn a_fresh_connect_gets_only_what_no_stream_was_handed() {
        let mut session = session_with(2, 10);
        let first = session.attach(ConnectionId::new(), None);
        assert_eq!(seqs(&first), [1, 2]);
        let connection = ConnectionId::new();
        session.attach(connection, None);
        session.append(EventName::parse("e").unwrap(), "live".into(), 10);
        assert!(session.detach(connection));
        session.append(EventName::parse("e").unwrap(), "offline".into(), 10);
        let again = session.attach(ConnectionId::new(), None);
        assert_eq!(seqs(&again), [4]);
    }

    #[test]
    fn only_the_attached_stream_detaches() {
        let mut session = session_with(0, 10);
        let (old, new) = (ConnectionId::new(), ConnectionId::new());
        session.attach(old, None);
        session.attach(new, None);
        assert!(!session.detach(old));
        assert!(session.is_attached());
        assert!(session.detach(new));
        assert!(!session.is_attached());
    }
}
