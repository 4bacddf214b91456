//! The embedded store's tables and how one [`Change`] is written to them.
//!
//! Events are keyed by (storage batch, device): the batch numbers of
//! publishes only grow, so a commit appends at the end of the table whatever
//! devices it names (a broadcast's rows are one contiguous run), and events
//! leave by the keys the store remembers for them — no lookup, no read
//! before a write.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use crate::backend::Change;

/// Epoch, written seq, expiry (Unix ms; 0 while a stream is attached).
pub(super) type SessionRow = (u64, u64, u64);
/// Epoch, seq, payload id (0: inline), published, name, data.
pub(super) type EventRow = (u64, u64, u64, u64, &'static str, &'static str);
/// Epoch, seq, batch, payload id (0: inline), published, data.
pub(super) type RetainedRow = (u64, u64, u64, u64, u64, &'static str);

pub(super) const SESSIONS: TableDefinition<&str, SessionRow> = TableDefinition::new("sessions");
pub(super) const EVENTS: TableDefinition<(u64, &str), EventRow> = TableDefinition::new("events");
pub(super) const PAYLOADS: TableDefinition<u64, (&str, &str)> = TableDefinition::new("payloads");
pub(super) const RETAINED: TableDefinition<(&str, &str), RetainedRow> =
    TableDefinition::new("retained");
pub(super) const BLOCKS: TableDefinition<&str, u64> = TableDefinition::new("blocks");

/// The tables one write transaction works on, opened once per commit.
pub(super) struct Tables<'txn> {
    pub sessions: Table<'txn, &'static str, SessionRow>,
    pub events: Table<'txn, (u64, &'static str), EventRow>,
    pub payloads: Table<'txn, u64, (&'static str, &'static str)>,
    pub retained: Table<'txn, (&'static str, &'static str), RetainedRow>,
    pub blocks: Table<'txn, &'static str, u64>,
    /// Reference-count changes not yet committed.
    pub refs: Refs,
}

impl<'txn> Tables<'txn> {
    pub fn open(txn: &'txn WriteTransaction) -> Result<Self, redb::Error> {
        Ok(Self {
            sessions: txn.open_table(SESSIONS)?,
            events: txn.open_table(EVENTS)?,
            payloads: txn.open_table(PAYLOADS)?,
            retained: txn.open_table(RETAINED)?,
            blocks: txn.open_table(BLOCKS)?,
            refs: Refs::default(),
        })
    }

    /// Closes the tables (the transaction can commit); answers the
    /// reference-count changes made.
    pub fn close(self) -> Refs {
        self.refs
    }

    /// Writes `change`. `committed` are the payloads' counts before this
    /// transaction; `next_payload` numbers new shared payloads.
    pub fn apply(
        &mut self,
        change: &Change,
        committed: &HashMap<u64, u64>,
        next_payload: &mut u64,
    ) -> Result<(), redb::Error> {
        match change {
            Change::Append {
                batch,
                name,
                data,
                published,
                retain,
                to,
            } => {
                let published = unix_ms(*published);
                let payload = if to.len() > 1 {
                    let id = *next_payload;
                    *next_payload += 1;
                    self.payloads.insert(id, (name.as_str(), &**data))?;
                    id
                } else {
                    0
                };
                // A shared payload's rows hold no name or data of their own.
                let (inline_name, inline_data) = match payload {
                    0 => (name.as_str(), &**data),
                    _ => ("", ""),
                };
                for (device, id) in to {
                    let (device, epoch) = (device.as_str(), id.epoch.to_bits());
                    let row = (epoch, id.seq, payload, published, inline_name, inline_data);
                    self.events.insert((*batch, device), row)?;
                    self.refs.add(payload, 1);
                    if *retain {
                        let row = (epoch, id.seq, *batch, payload, published, inline_data);
                        if let Some(old) = self.retained.insert((device, name.as_str()), row)? {
                            self.refs.add(old.value().3, -1);
                        }
                        self.refs.add(payload, 1);
                    }
                }
            }
            Change::Evict { device, batches } => self.remove_events(device.as_str(), batches)?,
            Change::Attach { device, epoch } => {
                let current = self.sessions.get(device.as_str())?.map(|row| row.value());
                let written = match current {
                    Some((e, written, _)) if e == epoch.to_bits() => written,
                    _ => 0,
                };
                let row = (epoch.to_bits(), written, 0);
                self.sessions.insert(device.as_str(), row)?;
            }
            Change::Written {
                device,
                epoch,
                written,
            } => {
                let current = self.sessions.get(device.as_str())?.map(|row| row.value());
                let expires = match current {
                    Some((e, _, expires)) if e == epoch.to_bits() => expires,
                    _ => 0,
                };
                let row = (epoch.to_bits(), *written, expires);
                self.sessions.insert(device.as_str(), row)?;
            }
            Change::Detach {
                device,
                epoch,
                written,
                expires,
            } => {
                let row = (epoch.to_bits(), *written, unix_ms(*expires).max(1));
                self.sessions.insert(device.as_str(), row)?;
            }
            Change::Forget {
                device,
                batches,
                retained,
            } => {
                let device = device.as_str();
                self.sessions.remove(device)?;
                self.remove_events(device, batches)?;
                if *retained {
                    self.remove_retained(device)?;
                }
            }
            Change::Block { device, until } => {
                let until = unix_ms(*until).max(1);
                self.blocks.insert(device.as_str(), until)?;
            }
            Change::Unblock { device } => {
                self.blocks.remove(device.as_str())?;
            }
        }
        self.release_payloads(committed)
    }

    fn remove_events(&mut self, device: &str, batches: &[u64]) -> Result<(), redb::Error> {
        for batch in batches {
            if let Some(row) = self.events.remove((*batch, device))? {
                self.refs.add(row.value().2, -1);
            }
        }
        Ok(())
    }

    fn remove_retained(&mut self, device: &str) -> Result<(), redb::Error> {
        let mut names = Vec::new();
        for row in self.retained.range((device, "")..)? {
            let (key, value) = row?;
            let (owner, name) = key.value();
            if owner != device {
                break;
            }
            names.push(name.to_owned());
            self.refs.add(value.value().3, -1);
        }
        for name in &names {
            self.retained.remove((device, name.as_str()))?;
        }
        Ok(())
    }

    /// Deletes the shared payloads this transaction left without references.
    fn release_payloads(&mut self, committed: &HashMap<u64, u64>) -> Result<(), redb::Error> {
        let released: Vec<u64> = (self.refs.0.iter())
            .filter(|(id, delta)| **delta < 0 && self.refs.current(committed, **id) <= 0)
            .map(|(id, _)| *id)
            .collect();
        for id in released {
            self.payloads.remove(id)?;
        }
        Ok(())
    }
}

/// Reference-count changes made by one transaction, applied to the
/// writer's counts only once it commits.
#[derive(Default)]
pub(super) struct Refs(HashMap<u64, i64>);

impl Refs {
    pub fn add(&mut self, payload: u64, by: i64) {
        if payload != 0 {
            *self.0.entry(payload).or_default() += by;
        }
    }

    /// The payload's references, counting this transaction's changes.
    fn current(&self, committed: &HashMap<u64, u64>, payload: u64) -> i64 {
        let before = committed.get(&payload).map_or(0, |n| *n as i64);
        before + self.0.get(&payload).copied().unwrap_or(0)
    }

    pub fn merge_into(self, committed: &mut HashMap<u64, u64>) {
        for (payload, delta) in self.0 {
            let count = committed.entry(payload).or_default();
            *count = count.saturating_add_signed(delta);
            if *count == 0 {
                committed.remove(&payload);
            }
        }
    }
}

pub(super) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(super) fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}
