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
    time::SystemTime,
};

use redb::{ReadableTable, WriteTransaction};

use super::{
    read::{Clock, ParseStored, stored_payload},
    tables::{BLOCKS, EVENTS, PAYLOADS, RETAINED, SESSIONS, SessionRow, from_unix_ms, unix_ms},
};
use crate::{
    DeviceId, Epoch, Footprint,
    backend::{SavedSession, Snapshot},
};

/// One stored event as start reads it: no payload, which stays on disk.
struct Row {
    payload: u64,
    batch: u64,
    epoch: u64,
    seq: u64,
    size: u32,
}

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
    // Each shared payload's size; the payloads themselves stay on disk.
    let mut payload_sizes = HashMap::new();
    for row in txn.open_table(PAYLOADS)?.iter()? {
        let (id, value) = row?;
        let (name, data) = value.value();
        payload_sizes.insert(id.value(), size_of(name, data));
    }
    let mut rows: HashMap<DeviceId, SessionRow> = HashMap::new();
    for row in txn.open_table(SESSIONS)?.iter()? {
        let (device, value) = row?;
        rows.insert(device.value().parse_device()?, value.value());
    }
    // Every device's events, in storage order (which is its id order).
    let mut events: HashMap<DeviceId, Vec<Row>> = HashMap::new();
    let mut last_batch = 0;
    let mut shared_batches = HashSet::new();
    for row in txn.open_table(EVENTS)?.iter()? {
        let (key, value) = row?;
        let (batch, device) = key.value();
        let (epoch, seq, payload, _, name, data) = value.value();
        let size = match payload {
            0 => size_of(name, data),
            id => *payload_sizes.get(&id).ok_or_else(|| {
                redb::Error::Corrupted(format!("an event refers to payload {id}, which is missing"))
            })?,
        };
        let row = Row {
            payload,
            batch,
            epoch,
            seq,
            size,
        };
        last_batch = last_batch.max(batch);
        if payload != 0 {
            shared_batches.insert(batch);
        }
        match events.get_mut(device) {
            Some(list) => list.push(row),
            None => drop(events.insert(device.parse_device()?, vec![row])),
        }
    }

    let mut snapshot = Snapshot {
        last_batch,
        shared: shared_batches,
        ..Snapshot::default()
    };
    let (mut dropped_rows, mut dropped_events) = (Vec::new(), Vec::new());
    let mut drop_events = |device: &DeviceId, events: Vec<Row>| {
        (dropped_events).extend(events.into_iter().map(|row| (row.batch, device.clone())));
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
            (mine.into_iter()).partition(|row| row.epoch == epoch);
        drop_events(&device, stale);
        let run = (kept.windows(2).rev())
            .take_while(|pair| pair[0].seq + 1 == pair[1].seq)
            .count();
        let first = kept.len().saturating_sub(run + 1);
        drop_events(&device, kept.drain(..first).collect());
        kept.iter().for_each(|row| count(row.payload));
        snapshot.sessions.push(SavedSession {
            device,
            epoch: Epoch::from_bits(epoch),
            written,
            expires: (expires != 0).then(|| from_unix_ms(expires)),
            last_seq: kept.last().map_or(0, |row| row.seq),
            events: (kept.iter())
                .map(|row| Footprint {
                    batch: row.batch,
                    size: row.size,
                })
                .collect(),
        });
    }
    // Events of a device without a session row: its session ended (the
    // row goes first) or was never recorded.
    for (device, orphans) in events {
        drop_events(&device, orphans);
    }

    let mut retained = Vec::new();
    let clock = Clock::now();
    let payloads = txn.open_table(PAYLOADS)?;
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
    drop(payloads);
    let mut table = txn.open_table(PAYLOADS)?;
    for id in payload_sizes.keys() {
        if !refs.contains_key(id) {
            table.remove(*id)?;
        }
    }
    let next_payload = payload_sizes.keys().max().map_or(1, |id| id + 1);
    Ok(Loaded {
        snapshot,
        refs,
        next_payload,
    })
}

/// What an event of this name and data weighs in a buffer
/// ([`StoredEvent::size`](crate::StoredEvent::size)).
fn size_of(name: &str, data: &str) -> u32 {
    u32::try_from(name.len() + data.len()).unwrap_or(u32::MAX)
}
