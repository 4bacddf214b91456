//! The event model: what a session stores and what a stream carries.
//!
//! A [`StoredEvent`] is a published event with its place in a session's
//! history. A [`Frame`] is one item on a stream's queue; the HTTP layer turns
//! frames into SSE fields (this crate does not know the wire format).
//! [`Signal`]s are the protocol's own events; they never carry an id, so they
//! never move a client's `Last-Event-ID`.

use std::time::Instant;

use bytestring::ByteString;
use serde_json::json;

use crate::{ConnectionId, DeviceId, EventId, EventName, Footprint};

pub const HELLO: &str = "hello";
pub const HEARTBEAT: &str = "heartbeat";
pub const KICKED: &str = "kicked";
pub const RESET: &str = "reset";

/// Event names publishers may not use.
pub const RESERVED_EVENT_NAMES: [&str; 4] = [HELLO, HEARTBEAT, KICKED, RESET];

/// A published event as a session holds it. Cloning is cheap: name and data
/// are shared, so a broadcast stores one copy of the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: EventId,
    pub name: EventName,
    pub data: ByteString,
    /// When it was published, for the publish-to-write latency.
    pub published_at: Instant,
    /// Where the storage backend keeps it: the number of the batch that
    /// stored it (one publish is one batch), so that removing it from
    /// storage needs no lookup.
    pub batch: u64,
}

impl StoredEvent {
    /// Bytes this event holds in a buffer (name and payload).
    pub fn size(&self) -> usize {
        self.name.as_str().len() + self.data.len()
    }

    /// What a session keeps of it once its payload left memory.
    pub fn footprint(&self) -> Footprint {
        Footprint {
            batch: self.batch,
            size: u32::try_from(self.size()).unwrap_or(u32::MAX),
        }
    }
}

/// One item on a stream's bounded queue.
///
/// Every variant is one pointer, so a frame is two words: a stream's queue
/// allocates its slots in blocks of 32 up front, and 19,000 idle streams
/// would otherwise each hold ~3 KiB of empty slots (a vector inline would
/// make each idle stream's block 512 bytes bigger).
#[derive(Debug)]
#[allow(clippy::box_collection)]
pub enum Frame {
    /// A live event.
    Event(Box<StoredEvent>),
    /// A replay: written as one queue slot, so a long replay never trips the
    /// slow-consumer bound on its own.
    Replay(Box<Vec<StoredEvent>>),
    /// Retained events, written without ids (state, not a position).
    State(Box<Vec<StoredEvent>>),
    /// A protocol event without id.
    Signal(Box<Signal>),
}

const _: () = assert!(std::mem::size_of::<Frame>() == 16);

impl Frame {
    /// The sequence number of the last event this frame carries, if any.
    pub fn last_seq(&self) -> Option<u64> {
        match self {
            Self::Event(event) => Some(event.id.seq),
            Self::Replay(events) => events.last().map(|e| e.id.seq),
            Self::State(_) | Self::Signal(_) => None,
        }
    }
}

/// Why a client's resume position could not be honoured. Sent to the client in
/// the `reset` event and logged; the names are part of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The session this id belongs to ended (its TTL passed).
    Expired,
    /// The session still exists but no longer holds the events after this id.
    Evicted,
    /// The id comes from another server process's history (a restart).
    UnknownEpoch,
    /// The id is not one herald issues.
    Invalid,
    /// The id is ahead of the last one issued: forged or corrupted.
    Future,
}

impl ResetReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Evicted => "evicted",
            Self::UnknownEpoch => "unknown_epoch",
            Self::Invalid => "invalid",
            Self::Future => "future",
        }
    }
}

/// A protocol event: a name from [`RESERVED_EVENT_NAMES`] and JSON data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    pub name: &'static str,
    pub data: String,
}

impl Signal {
    /// First event of every stream.
    pub fn hello(
        device: &DeviceId,
        connection: ConnectionId,
        heartbeat_timeout_ms: u64,
        resumed: bool,
    ) -> Self {
        // Typed, not `json!`: written once per stream opened, and a map of
        // values costs several allocations more.
        #[derive(serde::Serialize)]
        struct Hello<'a> {
            connection_id: ConnectionId,
            device_id: &'a str,
            heartbeat_timeout_ms: u64,
            resumed: bool,
        }
        let hello = Hello {
            connection_id: connection,
            device_id: device.as_str(),
            heartbeat_timeout_ms,
            resumed,
        };
        Self {
            name: HELLO,
            data: serde_json::to_string(&hello).expect("a struct of strings and numbers"),
        }
    }

    /// Sent on a stream that has been idle, so the client knows it is alive.
    pub fn heartbeat() -> Self {
        Self {
            name: HEARTBEAT,
            data: "{}".to_owned(),
        }
    }

    /// Last event of a stream replaced by a newer connection of its device
    /// (`by`), or ended by an operator who wants it not to come back.
    pub fn kicked(by: Option<ConnectionId>) -> Self {
        let data = match by {
            Some(by) => json!({ "reason": "replaced", "connection_id": by.to_string() }),
            None => json!({ "reason": "admin" }),
        };
        Self {
            name: KICKED,
            data: data.to_string(),
        }
    }

    /// Tells the client its position is gone; what follows is the current
    /// state. `last_event_id` is what the client sent (`null` if nothing).
    pub fn reset(reason: ResetReason, last_event_id: Option<&str>) -> Self {
        let data = json!({ "reason": reason.as_str(), "last_event_id": last_event_id });
        Self {
            name: RESET,
            data: data.to_string(),
        }
    }
}
