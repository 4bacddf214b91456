//! The embedded backend: one redb file, `<storage.path>/herald.redb`, written
//! by one thread of its own so the actors' thread never waits on a disk.
//!
//! The writer takes every batch waiting in its queue, applies them in one
//! write transaction and commits once (redb syncs on commit), then answers
//! each batch with [`Committed`] in submission order: concurrent publishes
//! share one fsync. A failed commit writes nothing of its batches; the writer
//! then fails every batch the store submitted before it learned of the
//! failure (they hold ids reserved after the failed ones) until the store's
//! [`Job::Resume`] arrives, so no id is ever committed after a gap.
//!
//! Tables (device ids and names as text, times as Unix milliseconds):
//!
//! | table      | key            | value                                        |
//! |------------|----------------|----------------------------------------------|
//! | `sessions` | device         | epoch, written seq, expiry (0: attached)     |
//! | `events`   | (device, seq)  | payload id (0: inline), published, name, data |
//! | `payloads` | payload id     | name, data — one event to several devices    |
//! | `retained` | (device, name) | epoch, seq, payload id, published, data      |
//! | `blocks`   | device         | blocked until                                 |
//!
//! A payload's reference count (its `events` and `retained` rows) lives in
//! the writer's memory, rebuilt at open; the row goes when the count does.

use std::{
    collections::HashMap,
    fs, io,
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use actix::Addr;
use bytestring::ByteString;
use redb::{
    Database, DatabaseError, ReadableTable, StorageError, Table, TableDefinition, WriteTransaction,
};
use tokio::sync::oneshot;

use crate::{
    DeviceId, Epoch, EventId, EventName, SessionStore, StoredEvent,
    backend::{Change, Committed, SavedSession, Snapshot, WriteError},
};

const SESSIONS: TableDefinition<&str, (u64, u64, u64)> = TableDefinition::new("sessions");
const EVENTS: TableDefinition<(&str, u64), (u64, u64, &str, &str)> = TableDefinition::new("events");
const PAYLOADS: TableDefinition<u64, (&str, &str)> = TableDefinition::new("payloads");
/// Epoch, seq, payload id, published, data.
type RetainedRow = (u64, u64, u64, u64, &'static str);
const RETAINED: TableDefinition<(&str, &str), RetainedRow> = TableDefinition::new("retained");
const BLOCKS: TableDefinition<&str, u64> = TableDefinition::new("blocks");

pub const FILE_NAME: &str = "herald.redb";
/// redb's page cache. Replays come from the store's memory; the cache
/// serves the writer's lookups.
const CACHE_BYTES: usize = 64 << 20;
/// Batches one commit takes at most, so one commit's answer is not held
/// back by an endless stream of newer ones.
const MAX_GROUP: usize = 4096;

/// Why the embedded store could not be opened. Each names what to look at.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{dir} is in use by another herald process (one process per storage.path)")]
    InUse { dir: PathBuf },
    #[error(
        "{file} is corrupt or not a herald store ({reason}); move it aside to start empty, see README \"Storage\""
    )]
    Corrupt { file: PathBuf, reason: String },
    #[error("cannot open {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// The opened store, before its writer runs.
pub struct Embedded {
    db: Option<Database>,
    file: PathBuf,
    /// References to each shared payload.
    refs: HashMap<u64, u64>,
    next_payload: u64,
    closed: bool,
}

enum Job {
    Batch {
        id: u64,
        changes: Vec<Change>,
    },
    /// The store has learned of a failure and rolled back what it reserved.
    Resume,
    /// Commit what came before, then close the file; answers how that went.
    Close(oneshot::Sender<Result<(), WriteError>>),
}

/// The store's handle on the writer thread. Dropping it ends the thread
/// after the batches already submitted.
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    pub(crate) fn submit(&self, id: u64, changes: Vec<Change>) {
        // The writer outlives every sender; if it panicked, the batch is
        // never answered and its publish fails with `unavailable`.
        let _ = self.jobs.send(Job::Batch { id, changes });
    }

    pub(crate) fn resume(&self) {
        let _ = self.jobs.send(Job::Resume);
    }

    pub(crate) fn close(&self) -> oneshot::Receiver<Result<(), WriteError>> {
        let (done, closed) = oneshot::channel();
        let _ = self.jobs.send(Job::Close(done));
        closed
    }
}

impl Embedded {
    /// Opens (or creates) the store under `dir`, checks it whole, and reads
    /// it back. Sessions whose TTL passed meanwhile, events of sessions that
    /// are gone and blocks that ended are removed here.
    pub fn open(dir: &Path) -> Result<(Self, Snapshot), OpenError> {
        let io_error = |source| OpenError::Io {
            path: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(io_error)?;
        let file = dir.join(FILE_NAME);
        let db = open_database(&file).map_err(|error| match error {
            DatabaseError::DatabaseAlreadyOpen => OpenError::InUse {
                dir: dir.to_owned(),
            },
            DatabaseError::Storage(StorageError::Io(source)) => OpenError::Io {
                path: file.clone(),
                source,
            },
            other => corrupt(&file, other),
        })?;
        let mut embedded = Self {
            db: Some(db),
            file,
            refs: HashMap::new(),
            next_payload: 1,
            closed: false,
        };
        let snapshot = embedded.load().map_err(|e| corrupt(&embedded.file, e))?;
        Ok((embedded, snapshot))
    }

    pub(crate) fn spawn(self, store: Addr<SessionStore>) -> Writer {
        let (jobs, queue) = mpsc::channel();
        thread::Builder::new()
            .name("herald-storage".to_owned())
            .spawn(move || self.run(&queue, &store))
            .expect("spawning the storage thread");
        Writer { jobs }
    }

    fn run(mut self, queue: &mpsc::Receiver<Job>, store: &Addr<SessionStore>) {
        let mut failed = None;
        while let Ok(first) = queue.recv() {
            let mut group = Vec::new();
            for job in std::iter::once(first).chain(queue.try_iter().take(MAX_GROUP)) {
                match (job, failed) {
                    // What came before the store's resume was submitted while
                    // nothing had failed: it commits, or is a new failure.
                    (Job::Resume, _) => failed = self.commit(&mut group, store),
                    (Job::Close(done), _) => {
                        let result = match self.commit(&mut group, store).or(failed) {
                            Some(error) => Err(error),
                            None => Ok(()),
                        };
                        // Released for the next process (or test server);
                        // whatever comes later fails.
                        self.db = None;
                        self.closed = true;
                        let _ = done.send(result);
                    }
                    (Job::Batch { id, .. }, Some(error)) => store.do_send(Committed {
                        through: id,
                        result: Err(error),
                    }),
                    (Job::Batch { id, changes }, None) => group.push((id, changes)),
                }
            }
            if let Some(error) = self.commit(&mut group, store) {
                failed = Some(error);
            }
        }
    }

    /// Commits `group` in one transaction and answers each batch; answers
    /// the error it failed with, if it did.
    fn commit(
        &mut self,
        group: &mut Vec<(u64, Vec<Change>)>,
        store: &Addr<SessionStore>,
    ) -> Option<WriteError> {
        if group.is_empty() {
            return None;
        }
        let result = self.write(group).map_err(|error| {
            let kind = write_error(&error);
            log::error!(
                "storage.write_failed file={} error={kind} cause=\"{error}\"",
                self.file.display()
            );
            // redb asks for a reopen after a failed commit.
            self.db = None;
            kind
        });
        // A group is a run of consecutive batches: one answer for all.
        let through = group.last().map_or(0, |(id, _)| *id);
        group.clear();
        store.do_send(Committed {
            through,
            result: result.map(|_| ()),
        });
        result.err()
    }

    fn write(&mut self, group: &[(u64, Vec<Change>)]) -> Result<(), redb::Error> {
        if self.closed {
            return Err(redb::Error::DatabaseClosed);
        }
        if self.db.is_none() {
            self.db = Some(open_database(&self.file)?);
        }
        let db = self.db.as_ref().expect("opened above");
        let txn = db.begin_write()?;
        let mut tables = Tables::open(&txn)?;
        let mut next_payload = self.next_payload;
        for (_, changes) in group {
            for change in changes {
                tables.apply(change, &self.refs, &mut next_payload)?;
            }
        }
        let refs = tables.close();
        txn.commit()?;
        self.next_payload = next_payload;
        refs.merge_into(&mut self.refs);
        Ok(())
    }

    fn load(&mut self) -> Result<Snapshot, redb::Error> {
        let db = self.db.as_ref().expect("open");
        let txn = db.begin_write()?;
        let now = unix_ms(SystemTime::now());
        let mut snapshot = Snapshot::default();
        let mut payloads = HashMap::new();
        {
            let table = txn.open_table(PAYLOADS)?;
            for row in table.iter()? {
                let (id, value) = row?;
                let (name, data) = value.value();
                payloads.insert(id.value(), (name.parse_name()?, ByteString::from(data)));
            }
        }
        let mut sessions = HashMap::new();
        let mut gone = Vec::new();
        {
            let table = txn.open_table(SESSIONS)?;
            for row in table.iter()? {
                let (device, value) = row?;
                let (epoch, written, expires) = value.value();
                let device = device.value().parse_device()?;
                if expires != 0 && expires <= now {
                    gone.push(device);
                    continue;
                }
                sessions.insert(device.clone(), snapshot.sessions.len());
                snapshot.sessions.push(SavedSession {
                    device,
                    epoch: Epoch::from_bits(epoch),
                    written,
                    expires: (expires != 0).then(|| from_unix_ms(expires)),
                    events: Vec::new(),
                });
            }
        }
        let (mut orphans, mut retained) = (Vec::new(), Vec::new());
        {
            let table = txn.open_table(EVENTS)?;
            for row in table.iter()? {
                let (key, value) = row?;
                let (device, seq) = key.value();
                let (payload, published, name, data) = value.value();
                let device = device.parse_device()?;
                let Some(&at) = sessions.get(&device) else {
                    orphans.push((device, seq));
                    continue;
                };
                let session = &mut snapshot.sessions[at];
                let (name, data) = stored_payload(&payloads, payload, name, data)?;
                self.count(payload, 1);
                session.events.push(StoredEvent {
                    id: EventId {
                        epoch: session.epoch,
                        seq,
                    },
                    name,
                    data,
                    published_at: instant_of(published),
                });
            }
        }
        {
            let table = txn.open_table(RETAINED)?;
            for row in table.iter()? {
                let (key, value) = row?;
                let (device, name) = key.value();
                let (epoch, seq, payload, published, data) = value.value();
                let (name, data) = stored_payload(&payloads, payload, name, data)?;
                self.count(payload, 1);
                let event = StoredEvent {
                    id: EventId {
                        epoch: Epoch::from_bits(epoch),
                        seq,
                    },
                    name,
                    data,
                    published_at: instant_of(published),
                };
                retained.push((device.parse_device()?, published, event));
            }
        }
        // Publish order, as the store keeps them.
        retained
            .sort_by_key(|(device, published, event)| (device.clone(), *published, event.id.seq));
        snapshot.retained = retained.into_iter().map(|(d, _, e)| (d, e)).collect();
        let mut ended_blocks = Vec::new();
        {
            let table = txn.open_table(BLOCKS)?;
            for row in table.iter()? {
                let (device, until) = row?;
                let device = device.value().parse_device()?;
                match until.value() {
                    until if until > now => snapshot.blocks.push((device, from_unix_ms(until))),
                    _ => ended_blocks.push(device),
                }
            }
        }
        // The cleaning up: what the snapshot left out goes. The events of
        // expired sessions are among the orphans; retained events stay.
        {
            let mut table = txn.open_table(SESSIONS)?;
            for device in &gone {
                table.remove(device.as_str())?;
            }
        }
        {
            let mut table = txn.open_table(EVENTS)?;
            for (device, seq) in &orphans {
                table.remove((device.as_str(), *seq))?;
            }
        }
        {
            let mut table = txn.open_table(BLOCKS)?;
            for device in &ended_blocks {
                table.remove(device.as_str())?;
            }
        }
        {
            let mut table = txn.open_table(PAYLOADS)?;
            for id in payloads.keys() {
                if self.refs.get(id).copied().unwrap_or(0) == 0 {
                    table.remove(*id)?;
                }
            }
        }
        txn.commit()?;
        self.next_payload = payloads.keys().max().map_or(1, |id| id + 1);
        Ok(snapshot)
    }

    fn count(&mut self, payload: u64, by: u64) {
        if payload != 0 {
            *self.refs.entry(payload).or_default() += by;
        }
    }
}

fn open_database(file: &Path) -> Result<Database, DatabaseError> {
    Database::builder()
        .set_cache_size(CACHE_BYTES)
        // A file altered behind redb's back fails here instead of being
        // trusted (a plain open may read garbage and panic later).
        .set_check_integrity_on_open(true)
        .create(file)
}

fn corrupt(file: &Path, error: impl std::fmt::Display) -> OpenError {
    OpenError::Corrupt {
        file: file.to_owned(),
        reason: error.to_string(),
    }
}

/// Reference-count changes made by one transaction, applied to the
/// writer's counts only once it commits.
#[derive(Default)]
struct Refs(HashMap<u64, i64>);

impl Refs {
    fn add(&mut self, payload: u64, by: i64) {
        if payload != 0 {
            *self.0.entry(payload).or_default() += by;
        }
    }

    /// The payload's references, counting this transaction's changes.
    fn current(&self, committed: &HashMap<u64, u64>, payload: u64) -> i64 {
        committed.get(&payload).map_or(0, |n| *n as i64)
            + self.0.get(&payload).copied().unwrap_or(0)
    }

    fn merge_into(self, committed: &mut HashMap<u64, u64>) {
        for (payload, delta) in self.0 {
            let count = committed.entry(payload).or_default();
            *count = count.saturating_add_signed(delta);
            if *count == 0 {
                committed.remove(&payload);
            }
        }
    }
}

/// The tables one write transaction works on, opened once per commit.
struct Tables<'txn> {
    sessions: Table<'txn, &'static str, (u64, u64, u64)>,
    events: Table<'txn, (&'static str, u64), (u64, u64, &'static str, &'static str)>,
    payloads: Table<'txn, u64, (&'static str, &'static str)>,
    retained: Table<'txn, (&'static str, &'static str), RetainedRow>,
    blocks: Table<'txn, &'static str, u64>,
    /// Reference-count changes not yet committed.
    refs: Refs,
}

impl Tables<'_> {
    /// Closes the tables (the transaction can commit); answers the
    /// reference-count changes made.
    fn close(self) -> Refs {
        self.refs
    }
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, redb::Error> {
        Ok(Self {
            sessions: txn.open_table(SESSIONS)?,
            events: txn.open_table(EVENTS)?,
            payloads: txn.open_table(PAYLOADS)?,
            retained: txn.open_table(RETAINED)?,
            blocks: txn.open_table(BLOCKS)?,
            refs: Refs::default(),
        })
    }

    fn apply(
        &mut self,
        change: &Change,
        committed: &HashMap<u64, u64>,
        next_payload: &mut u64,
    ) -> Result<(), redb::Error> {
        match change {
            Change::Append {
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
                    let device = device.as_str();
                    let epoch = self.sessions.get(device)?.map(|row| row.value().0);
                    if epoch != Some(id.epoch.to_bits()) {
                        // A session this file does not know yet, or an
                        // older one whose end did not reach it.
                        self.remove_events(device, u64::MAX)?;
                        self.sessions.insert(device, (id.epoch.to_bits(), 0, 0))?;
                    }
                    let row = (payload, published, inline_name, inline_data);
                    self.events.insert((device, id.seq), row)?;
                    self.refs.add(payload, 1);
                    if *retain {
                        let row = (id.epoch.to_bits(), id.seq, payload, published, inline_data);
                        if let Some(old) = self.retained.insert((device, name.as_str()), row)? {
                            self.refs.add(old.value().2, -1);
                        }
                        self.refs.add(payload, 1);
                    }
                }
            }
            Change::Evict {
                device,
                epoch,
                through,
            } => {
                let current = self.sessions.get(device.as_str())?.map(|row| row.value().0);
                if current == Some(epoch.to_bits()) {
                    self.remove_events(device.as_str(), *through)?;
                }
            }
            Change::Attach { device, epoch } => {
                let current = self.sessions.get(device.as_str())?.map(|row| row.value());
                let written = match current {
                    Some((e, written, _)) if e == epoch.to_bits() => written,
                    _ => 0,
                };
                self.sessions
                    .insert(device.as_str(), (epoch.to_bits(), written, 0))?;
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
            Change::Forget { device, retained } => self.forget(device.as_str(), *retained)?,
            Change::Block { device, until } => {
                self.blocks
                    .insert(device.as_str(), unix_ms(*until).max(1))?;
            }
            Change::Unblock { device } => {
                self.blocks.remove(device.as_str())?;
            }
        }
        self.release_payloads(committed)
    }

    /// Removes the device's session and events, and its retained events
    /// too if `retained`.
    fn forget(&mut self, device: &str, retained: bool) -> Result<(), redb::Error> {
        self.sessions.remove(device)?;
        self.remove_events(device, u64::MAX)?;
        if retained {
            let mut names = Vec::new();
            for row in self.retained.range((device, "")..)? {
                let (key, value) = row?;
                let (owner, name) = key.value();
                if owner != device {
                    break;
                }
                names.push(name.to_owned());
                self.refs.add(value.value().2, -1);
            }
            for name in &names {
                self.retained.remove((device, name.as_str()))?;
            }
        }
        Ok(())
    }

    /// Removes the device's events up to `through`.
    fn remove_events(&mut self, device: &str, through: u64) -> Result<(), redb::Error> {
        let range = (device, 0)..=(device, through);
        for row in self.events.extract_from_if(range, |_, _| true)? {
            let (_, value) = row?;
            self.refs.add(value.value().0, -1);
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

fn write_error(error: &redb::Error) -> WriteError {
    let io = match error {
        redb::Error::Io(io) => Some(io),
        _ => None,
    };
    match io.map(io::Error::kind) {
        Some(
            io::ErrorKind::StorageFull | io::ErrorKind::FileTooLarge | io::ErrorKind::QuotaExceeded,
        ) => WriteError::DiskFull,
        _ => WriteError::Unavailable,
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The monotonic instant of a wall-clock publish time (for latency figures).
fn instant_of(published_ms: u64) -> std::time::Instant {
    let age = SystemTime::now()
        .duration_since(from_unix_ms(published_ms))
        .unwrap_or_default();
    let now = std::time::Instant::now();
    now.checked_sub(age).unwrap_or(now)
}
