//! Reading events back from the file: the older part of a replay, whose
//! payloads left the store's memory, and (at start) retained events. What is
//! read is checked again, as the file is outside herald's trust.

use std::time::{Instant, SystemTime};

use bytestring::ByteString;
use redb::{Database, ReadableDatabase, ReadableTable};

use super::tables::{EVENTS, PAYLOADS, from_unix_ms};
use crate::{DeviceId, Epoch, EventId, EventName, StoredEvent, Unread, backend::ReadError};

/// The events `unread` names of `device`'s buffer, in order: each must be
/// there, of the epoch and at the seq the store expects.
pub(super) fn replay(
    db: &Database,
    device: &DeviceId,
    unread: &Unread,
) -> Result<Vec<StoredEvent>, ReadError> {
    let txn = db.begin_read().map_err(unavailable)?;
    let events = txn.open_table(EVENTS).map_err(unavailable)?;
    let payloads = txn.open_table(PAYLOADS).map_err(unavailable)?;
    let clock = Clock::now();
    let mut read = Vec::with_capacity(unread.batches.len());
    for (batch, seq) in unread.batches.iter().zip(unread.first_seq..) {
        let row = (events.get((*batch, device.as_str())))
            .map_err(unavailable)?
            .ok_or(ReadError::Missing { seq })?;
        let (epoch, stored_seq, payload, published, name, data) = row.value();
        if epoch != unread.epoch.to_bits() || stored_seq != seq {
            return Err(ReadError::Missing { seq });
        }
        let payload_of = stored_payload(&payloads, payload, name, data).map_err(unavailable)?;
        read.push(clock.event(epoch, seq, payload_of, published, *batch));
    }
    Ok(read)
}

fn unavailable(error: impl Into<redb::Error>) -> ReadError {
    ReadError::Unavailable(error.into().to_string())
}

/// An event's name and data: its own (`payload` 0) or the shared payload
/// it refers to.
pub(super) fn stored_payload(
    payloads: &impl ReadableTable<u64, (&'static str, &'static str)>,
    payload: u64,
    name: &str,
    data: &str,
) -> Result<(EventName, ByteString), redb::Error> {
    if payload == 0 {
        return Ok((name.parse_name()?, ByteString::from(data)));
    }
    let row = payloads.get(payload)?.ok_or_else(|| {
        redb::Error::Corrupted(format!(
            "an event refers to payload {payload}, which is missing"
        ))
    })?;
    let (name, data) = row.value();
    Ok((name.parse_name()?, ByteString::from(data)))
}

/// Stored names are checked again on the way in: the file is outside
/// herald's trust.
pub(super) trait ParseStored {
    fn parse_device(&self) -> Result<DeviceId, redb::Error>;
    fn parse_name(&self) -> Result<EventName, redb::Error>;
}

impl ParseStored for str {
    fn parse_device(&self) -> Result<DeviceId, redb::Error> {
        DeviceId::parse(self)
            .map_err(|e| redb::Error::Corrupted(format!("device id {self:?}: {e}")))
    }

    fn parse_name(&self) -> Result<EventName, redb::Error> {
        EventName::parse(self)
            .map_err(|e| redb::Error::Corrupted(format!("event name {self:?}: {e}")))
    }
}

/// Both clocks read once, to turn stored wall-clock publish times into
/// monotonic instants (for latency figures).
pub(super) struct Clock {
    wall: SystemTime,
    monotonic: Instant,
}

impl Clock {
    pub fn now() -> Self {
        Self {
            wall: SystemTime::now(),
            monotonic: Instant::now(),
        }
    }

    /// A stored event as the store holds it.
    pub fn event(
        &self,
        epoch: u64,
        seq: u64,
        (name, data): (EventName, ByteString),
        published_ms: u64,
        batch: u64,
    ) -> StoredEvent {
        StoredEvent {
            id: EventId {
                epoch: Epoch::from_bits(epoch),
                seq,
            },
            name,
            data,
            published_at: self.instant_of(published_ms),
            batch,
        }
    }

    fn instant_of(&self, published_ms: u64) -> Instant {
        let age = (self.wall)
            .duration_since(from_unix_ms(published_ms))
            .unwrap_or_default();
        self.monotonic.checked_sub(age).unwrap_or(self.monotonic)
    }
}
