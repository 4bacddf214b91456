//! Reading the embedded store back at start, and cleaning up what it should
//! no longer hold: sessions whose TTL ran out while herald was down (their
//! retained events stay), events of another epoch than their device's
//! latest (left by a change whose commit failed), reconnect blocks that
//! ended, payloads nothing refers to.
//!
//! A device's session is its `sessions` row (epoch, what its streams wrote,
//! when it expires): a session's row is committed with or before its first
//! event, and removed first when it ends. Its buffer is the run of
//! consecutive ids of that epoch that ends with the newest; any other row
//! is a leftover of a change that was not written (a crash between a
//! commit and the eviction it caused) and is removed here.

use std::{
    collections::{HashMap, HashSet},
    time::{Instant, SystemTime},
};

use bytestring::ByteString;
use redb::{ReadableTable, WriteTransaction};

use super::tables::{
    BLOCKS, EVENTS, PAYLOADS, RETAINED, SESSIONS, SessionRow, from_unix_ms, unix_ms,
};
use crate::{
    DeviceId, Epoch, EventId, EventName, StoredEvent,
    backend::{SavedSession, Snapshot},
};

/// What was read, with each shared payload's references counted.
pub(super) struct Loaded {
    pub snapshot: Snapshot,
    pub refs: HashMap<u64, u64>,
    pub next_payload: u64,
}

pub(super) fn load(txn: &WriteTransaction) -> Result<Loaded, redb::Error> {
    let now = unix_ms(SystemTime::now());
    let mut refs: HashMap<u64, u64> = HashMap::new();
    let mut count = |payload: u64| {
        if payload != 0 {
            *refs.entry(payload).or_default() += 1;
        }
    };
    let mut payloads = HashMap::new();
    for row in txn.open_table(PAYLOADS)?.iter()? {
        let (id, value) = row?;
        let (name, data) = value.value();
        payloads.insert(id.value(), (name.parse_name()?, ByteString::from(data)));
    }
    let mut rows: HashMap<DeviceId, SessionRow> = HashMap::new();
    for row in txn.open_table(SESSIONS)?.iter()? {
        let (device, value) = row?;
        rows.insert(device.value().parse_device()?, value.value());
    }
    // Every device's events, in storage order (which is its id order).
    let mut events: HashMap<DeviceId, Vec<(u64, u64, StoredEvent)>> = HashMap::new();
    let (mut last_batch, clock) = (0, Clock::now());
    let mut shared_batches = HashSet::new();
    // A broadcast's rows are consecutive and share their payload.
    let mut shared: Option<(u64, EventName, ByteString)> = None;
    for row in txn.open_table(EVENTS)?.iter()? {
        let (key, value) = row?;
        let (batch, device) = key.value();
        let (epoch, seq, payload, published, name, data) = value.value();
        let (name, data) = match &shared {
            Some((id, name, data)) if *id == payload => (name.clone(), data.clone()),
            _ => {
                let (name, data) = stored_payload(&payloads, payload, name, data)?;
                if payload != 0 {
                    shared = Some((payload, name.clone(), data.clone()));
                }
                (name, data)
            }
        };
        let event = clock.event(epoch, seq, (name, data), published, batch);
        last_batch = last_batch.max(batch);
        if payload != 0 {
            shared_batches.insert(batch);
        }
        match events.get_mut(device) {
            Some(list) => list.push((payload, batch, event)),
            None => drop(events.insert(device.parse_device()?, vec![(payload, batch, event)])),
        }
    }

    let mut snapshot = Snapshot {
        last_batch,
        shared: shared_batches,
        ..Snapshot::default()
    };
    let (mut dropped_rows, mut dropped_events) = (Vec::new(), Vec::new());
    let mut drop_events = |device: &DeviceId, events: Vec<(u64, u64, StoredEvent)>| {
        (dropped_events).extend(
            events
                .into_iter()
                .map(|(_, batch, _)| (batch, device.clone())),
        );
    };
    for (device, row) in rows {
        let mine = events.remove(&device).unwrap_or_default();
        let (epoch, written, expires) = row;
        if expires != 0 && expires <= now {
            drop_events(&device, mine);
            dropped_rows.push(device);
            continue;
        }
        // The row is the session: events of another epoch are left from
        // one that ended, and only the consecutive run of ids that ends
        // with the newest is its buffer (an older leftover, whose eviction
        // was not yet written, would read as a gap).
        let (mut kept, stale): (Vec<_>, Vec<_>) =
            (mine.into_iter()).partition(|(_, _, e)| e.id.epoch.to_bits() == epoch);
        drop_events(&device, stale);
        let run = (kept.windows(2).rev())
            .take_while(|pair| pair[0].2.id.seq + 1 == pair[1].2.id.seq)
            .count();
        let first = kept.len().saturating_sub(run + 1);
        drop_events(&device, kept.drain(..first).collect());
        kept.iter().for_each(|(payload, _, _)| count(*payload));
        snapshot.sessions.push(SavedSession {
            device,
            epoch: Epoch::from_bits(epoch),
            written,
            expires: (expires != 0).then(|| from_unix_ms(expires)),
            events: kept.into_iter().map(|(_, _, e)| e).collect(),
        });
    }
    // Events of a device without a session row: its session ended (the
    // row goes first) or was never recorded.
    for (device, orphans) in events {
        drop_events(&device, orphans);
    }

    let mut retained = Vec::new();
    for row in txn.open_table(RETAINED)?.iter()? {
        let (key, value) = row?;
        let (device, name) = key.value();
        let (epoch, seq, batch, payload, published, data) = value.value();
        let payload_of = stored_payload(&payloads, payload, name, data)?;
        count(payload);
        let event = clock.event(epoch, seq, payload_of, published, batch);
        if payload != 0 {
            snapshot.shared.insert(batch);
        }
        // Batch numbers go on after every one in use, retained ones too.
        snapshot.last_batch = snapshot.last_batch.max(batch);
        retained.push((device.parse_device()?, published, event));
    }
    // Publish order, as the store keeps them.
    retained.sort_by_key(|(device, published, event)| (device.clone(), *published, event.id.seq));
    snapshot.retained = retained.into_iter().map(|(d, _, e)| (d, e)).collect();

    let mut ended_blocks = Vec::new();
    for row in txn.open_table(BLOCKS)?.iter()? {
        let (device, until) = row?;
        let device = device.value().parse_device()?;
        match until.value() {
            until if until > now => snapshot.blocks.push((device, from_unix_ms(until))),
            _ => ended_blocks.push(device),
        }
    }

    let mut table = txn.open_table(SESSIONS)?;
    for device in &dropped_rows {
        table.remove(device.as_str())?;
    }
    let mut table = txn.open_table(EVENTS)?;
    for (batch, device) in &dropped_events {
        table.remove((*batch, device.as_str()))?;
    }
    let mut table = txn.open_table(BLOCKS)?;
    for device in &ended_blocks {
        table.remove(device.as_str())?;
    }
    let mut table = txn.open_table(PAYLOADS)?;
    for id in payloads.keys() {
        if !refs.contains_key(id) {
            table.remove(*id)?;
        }
    }
    let next_payload = payloads.keys().max().map_or(1, |id| id + 1);
    Ok(Loaded {
        snapshot,
        refs,
        next_payload,
    })
}

fn stored_payload(
    payloads: &HashMap<u64, (EventName, ByteString)>,
    payload: u64,
    name: &str,
    data: &str,
) -> Result<(EventName, ByteString), redb::Error> {
    match payload {
        0 => Ok((name.parse_name()?, ByteString::from(data))),
        id => payloads.get(&id).cloned().ok_or_else(|| {
            redb::Error::Corrupted(format!("an event refers to payload {id}, which is missing"))
        }),
    }
}

/// Stored names are checked again on the way in: the file is outside
/// herald's trust.
trait ParseStored {
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
struct Clock {
    wall: SystemTime,
    monotonic: Instant,
}

impl Clock {
    fn now() -> Self {
        Self {
            wall: SystemTime::now(),
            monotonic: Instant::now(),
        }
    }

    /// A stored event as the store holds it.
    fn event(
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
