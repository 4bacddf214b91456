//! The embedded backend: one redb file, `<storage.path>/herald.redb`, written
//! by one thread of its own so the actors' thread never waits on a disk.
//!
//! The writer takes every batch waiting in its queue, applies them in one
//! write transaction and commits once (redb syncs on commit), then answers
//! them all with one [`Committed`], in submission order: concurrent
//! publishes share one fsync. Batches of session bookkeeping alone (streams
//! attached, detached, their positions), which nobody waits for, wait up to
//! [`BOOKKEEPING_WAIT`] for more to share their commit, and commit at once
//! with anything else that comes meanwhile (see [`gather`]).
//!
//! A failed commit writes nothing of its batches; the writer then fails
//! every batch the store submitted before it learned of the failure (they
//! hold ids reserved after the failed ones) until the store's
//! [`Job::Resume`] arrives, so no id is ever committed after a gap.
//!
//! Tables (device ids and names as text, times as Unix milliseconds; see
//! [`tables`] for how a change is written and [`load`] for how they are read
//! back):
//!
//! | table      | key             | value                                        |
//! |------------|-----------------|----------------------------------------------|
//! | `sessions` | device          | epoch, written seq, expiry (0: attached)     |
//! | `events`   | (batch, device) | epoch, seq, payload id (0: inline), published, name, data |
//! | `payloads` | payload id      | name, data — one event to several devices    |
//! | `retained` | (device, name)  | epoch, seq, batch, payload id, published, data |
//! | `blocks`   | device          | blocked until                                 |
//!
//! A payload's reference count (its `events` and `retained` rows) lives in
//! the writer's memory, rebuilt at open; the row goes when the count does.
//!
//! The same thread reads the older part of replays ([`read`]): redb lets a
//! process open its file once, and the writer reopens it after a failure.
//! A read runs when its turn in the queue comes, before the commit of
//! anything submitted after it, so no eviction submitted later can take
//! an event it was asked for.

mod load;
mod read;
mod tables;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    fs, io,
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use actix::{Addr, Recipient};
use redb::{Database, DatabaseError, StorageError};
use tokio::sync::oneshot;

use crate::{
    DeviceId, SessionStore, StoredEvent, Unread,
    backend::{Change, Committed, ReadError, Snapshot, WriteError},
    connection::ConnectReplay,
    metrics::metrics,
};

pub const FILE_NAME: &str = "herald.redb";
/// redb's page cache: it serves the writer's lookups and the replays read
/// back (the newest events' pages are the likeliest to be in it).
const CACHE_BYTES: usize = 64 << 20;
/// Batches one commit takes at most, so one commit's answer is not held
/// back by an endless stream of newer ones.
const MAX_GROUP: usize = 4096;
/// How long a group of session bookkeeping alone waits for more. Nobody
/// waits for it: a stream's attach, detach or position is not acknowledged
/// to anyone, and what a crash takes of the last few milliseconds of it
/// leaves no gap (a publish commits it with itself: the writer keeps
/// submission order). A burst of connects then shares commits (each costs
/// a sync and redb's rewrite of its page tree) instead of paying one per
/// few streams.
const BOOKKEEPING_WAIT: Duration = Duration::from_millis(10);
/// How often a group that waits looks for more.
const BOOKKEEPING_STEP: Duration = Duration::from_millis(1);

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
    /// Read the events `unread` names and send them to a stream.
    Read {
        device: DeviceId,
        unread: Unread,
        to: Recipient<ConnectReplay>,
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
        // The writer outlives every sender; a panic on it ends the process
        // (the server binary's panic hook).
        let _ = self.jobs.send(Job::Batch { id, changes });
    }

    pub(crate) fn read(&self, device: DeviceId, unread: Unread, to: Recipient<ConnectReplay>) {
        let _ = self.jobs.send(Job::Read { device, unread, to });
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
        let db = open_database(&file, true).map_err(|error| match error {
            DatabaseError::DatabaseAlreadyOpen => OpenError::InUse {
                dir: dir.to_owned(),
            },
            DatabaseError::Storage(StorageError::Io(source)) => OpenError::Io {
                path: file.clone(),
                source,
            },
            other => corrupt(&file, other),
        })?;
        let txn = db.begin_write().map_err(|e| corrupt(&file, e))?;
        let loaded = load::load(&txn)
            .and_then(|loaded| Ok(txn.commit().map(|()| loaded)?))
            .map_err(|e| corrupt(&file, e))?;
        let embedded = Self {
            db: Some(db),
            file,
            refs: loaded.refs,
            next_payload: loaded.next_payload,
            closed: false,
        };
        Ok((embedded, loaded.snapshot))
    }

    pub(crate) fn spawn(self, store: Addr<SessionStore>) -> Writer {
        let (jobs, queue) = mpsc::channel();
        thread::Builder::new()
            .name(crate::STORAGE_THREAD.to_owned())
            .spawn(move || self.run(&queue, &store))
            .expect("spawning the storage thread");
        Writer { jobs }
    }

    fn run(mut self, queue: &mpsc::Receiver<Job>, store: &Addr<SessionStore>) {
        let mut failed = None;
        while let Ok(first) = queue.recv() {
            let mut group = Vec::new();
            let jobs = gather(first, queue, Instant::now() + BOOKKEEPING_WAIT);
            for job in jobs {
                match (job, failed) {
                    // What came before the store's resume was submitted while
                    // nothing had failed: it commits, or is a new failure.
                    (Job::Resume, _) => failed = self.commit(&mut group, store),
                    (Job::Read { device, unread, to }, _) => {
                        let events = self.read(&device, &unread);
                        to.do_send(ConnectReplay { events });
                    }
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
        let metrics = metrics();
        let timer = metrics.storage_commit.start_timer();
        let result = self.write(group);
        timer.observe_duration();
        metrics.storage_commits.inc();
        metrics.storage_batches.inc_by(group.len() as u64);
        let result = result.map_err(|error| {
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

    /// The file, reopened if a failure closed it.
    fn database(&mut self) -> Result<&Database, redb::Error> {
        if self.closed {
            return Err(redb::Error::DatabaseClosed);
        }
        if self.db.is_none() {
            // Checked whole at start, and written only by this thread since.
            self.db = Some(open_database(&self.file, false)?);
        }
        self.db.as_ref().ok_or(redb::Error::DatabaseClosed)
    }

    /// What was committed of the events `unread` names (the stream that
    /// asked logs a failure).
    fn read(&mut self, device: &DeviceId, unread: &Unread) -> Result<Vec<StoredEvent>, ReadError> {
        let db = (self.database()).map_err(|e| ReadError::Unavailable(e.to_string()))?;
        let events = read::replay(db, device, unread)?;
        metrics().storage_read.inc_by(events.len() as u64);
        Ok(events)
    }

    fn write(&mut self, group: &[(u64, Vec<Change>)]) -> Result<(), redb::Error> {
        let txn = self.database()?.begin_write()?;
        let mut tables = tables::Tables::open(&txn)?;
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
}

impl Job {
    /// Session bookkeeping alone, which nobody waits for.
    fn may_wait(&self) -> bool {
        let bookkeeping = |change: &Change| {
            matches!(
                change,
                Change::Attach { .. } | Change::Written { .. } | Change::Detach { .. }
            )
        };
        matches!(self, Self::Batch { changes, .. } if changes.iter().all(bookkeeping))
    }
}

/// `first` and up to [`MAX_GROUP`] jobs queued behind it; if all of it
/// may wait, also what comes until `deadline` or until something comes
/// that may not (a publish, a read, a close), looked for every
/// [`BOOKKEEPING_STEP`]: a wake per step, not one per stream, and a publish
/// that comes meanwhile waits at most a step.
fn gather(first: Job, queue: &mpsc::Receiver<Job>, deadline: Instant) -> Vec<Job> {
    let mut jobs = vec![first];
    jobs.extend(queue.try_iter().take(MAX_GROUP));
    let mut waiting = jobs.iter().all(Job::may_wait);
    while waiting && jobs.len() <= MAX_GROUP {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        thread::sleep(left.min(BOOKKEEPING_STEP));
        for job in queue.try_iter().take(MAX_GROUP + 1 - jobs.len()) {
            waiting &= job.may_wait();
            jobs.push(job);
        }
    }
    jobs
}

/// Opens (or creates) the file; `check`: read it whole first, so that a
/// file altered behind redb's back fails here instead of being trusted (a
/// plain open may read garbage and panic later).
fn open_database(file: &Path, check: bool) -> Result<Database, DatabaseError> {
    Database::builder()
        .set_cache_size(CACHE_BYTES)
        .set_check_integrity_on_open(check)
        .create(file)
}

fn corrupt(file: &Path, error: impl std::fmt::Display) -> OpenError {
    OpenError::Corrupt {
        file: file.to_owned(),
        reason: error.to_string(),
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
