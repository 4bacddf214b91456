//! Storage: what the [`SessionStore`](crate::SessionStore) keeps in memory —
//! every device's [`Session`] and [`Retained`] events, the expiry index, the
//! byte count — and the bounds on it. A plain data structure with one user,
//! the store actor. Every change that must outlive the process is recorded as
//! a [`Change`] for the store to hand to its [`Backend`](crate::backend::Backend),
//! and [`restore`](Storage::restore) takes back what a backend kept.
//!
//! Invariants:
//! - `held` counts every buffer's and every retained set's events, a payload
//!   shared by several devices once;
//! - `cache` knows every hot buffered event (payload in memory); the others
//!   are cold, their payload read from the backend when replayed;
//! - [`admit`](Storage::admit) refuses before anything changes, and what it
//!   admits [`append`](Storage::append) stores within the bounds;
//! - a detached session has exactly one entry in `expiries`, and sweeping
//!   visits only the entries that are due.

use std::{
    collections::{BTreeSet, HashSet},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
// tokio's clock, so tests can pause it and move it past a TTL without
// sleeping; in a running server it is the monotonic clock.
use tokio::time::Instant;

use crate::{
    BufferLimits, ConnectionId, DeviceId, Epoch, EventId, EventName, Footprint, Opening, Progress,
    Session, Start, StoredEvent,
    backend::{Change, Snapshot, WriteError, wall_in},
    held_bytes::HeldBytes,
    ids::IdMap,
    metrics::metrics,
    replay_cache::ReplayCache,
    retained::{Retained, signed},
};

/// The `[session]` config section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Events each session's replay buffer holds; the oldest are evicted first.
    pub buffer_events: usize,
    /// Bytes (names and data) each session's replay buffer holds.
    pub buffer_bytes: usize,
    /// Distinct event names a device may retain.
    pub retained_per_device: usize,
    /// Sessions the server holds at most.
    pub max_sessions: usize,
    /// Bytes all buffers and retained events hold together at most.
    pub max_total_bytes: usize,
    /// How long a session is kept after its last stream ended.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            buffer_events: 1000,
            buffer_bytes: 1 << 20,
            retained_per_device: 16,
            max_sessions: 100_000,
            max_total_bytes: 1 << 30,
            ttl: Duration::from_secs(5 * 60),
        }
    }
}

impl SessionConfig {
    fn limits(&self) -> BufferLimits {
        BufferLimits {
            events: self.buffer_events,
            bytes: self.buffer_bytes,
        }
    }
}

/// A bound that refused a request; nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the server already holds its maximum of {0} sessions")]
    TooManySessions(usize),
    #[error("the server's buffers already hold their maximum of {0} bytes")]
    StorageFull(usize),
    #[error("the device already retains its maximum of {0} event names")]
    RetainedLimit(usize),
    /// The storage backend could not make the event durable; it was not
    /// stored.
    #[error("{0}; the event was not stored")]
    Write(#[from] WriteError),
    /// Not available yet on the cluster (Redis) backend.
    #[error("{0} are not available on the redis backend yet")]
    NotOnCluster(&'static str),
}

struct Entry {
    session: Session,
    /// Set while detached: when the session ends.
    expires_at: Option<Instant>,
    history: History,
    /// What its streams had written when that was last recorded as a change.
    recorded_written: u64,
}

impl Entry {
    fn new(session: Session) -> Self {
        Self {
            recorded_written: session.handed_out(),
            session,
            expires_at: None,
            history: History {
                peer: None,
                connected_since: None,
                last_seen: SystemTime::now(),
                attaches: 0,
                kicks: 0,
                resets: 0,
            },
        }
    }
}

/// What an operator sees of a session's streams.
struct History {
    peer: Option<String>,
    connected_since: Option<SystemTime>,
    last_seen: SystemTime,
    attaches: u64,
    kicks: u64,
    resets: u64,
}

pub struct Storage {
    config: SessionConfig,
    boot: u32,
    sessions_created: u32,
    sessions: IdMap<DeviceId, Entry>,
    /// The devices of `sessions` in id order, so the admin list pages by
    /// cursor (lookups, once or more per delivery, go by hash).
    listed: BTreeSet<DeviceId>,
    retained: IdMap<DeviceId, Retained>,
    expiries: BTreeSet<(Instant, DeviceId)>,
    held: HeldBytes,
    cache: ReplayCache,
    /// Made since the store last took them.
    changes: Vec<Change>,
}

impl Storage {
    /// `cache_bytes`: what hot buffered events may take (`None`: no bound,
    /// the buffers are the only copy).
    pub fn new(config: SessionConfig, cache_bytes: Option<usize>) -> Self {
        Self {
            config,
            boot: fastrand::u32(..),
            sessions_created: 0,
            sessions: IdMap::default(),
            listed: BTreeSet::new(),
            retained: IdMap::default(),
            expiries: BTreeSet::new(),
            held: HeldBytes::default(),
            cache: ReplayCache::new(cache_bytes, 0),
            changes: Vec::new(),
        }
    }

    /// Takes back what a backend kept: sessions (their TTLs running again
    /// where they left off; one whose stream was attached when the process
    /// ended starts its TTL now), their events cold, and retained events.
    pub fn restore(&mut self, snapshot: Snapshot) {
        let limits = self.config.limits();
        let now = SystemTime::now();
        // A new session's epoch must not be one read back: this boot's
        // nonce differs from every restored one.
        let restored: HashSet<u32> = (snapshot.sessions.iter().map(|s| s.epoch.boot()))
            .chain(snapshot.retained.iter().map(|(_, e)| e.id.epoch.boot()))
            .collect();
        while restored.contains(&self.boot) {
            self.boot = fastrand::u32(..);
        }
        self.cache.cool_through(snapshot.last_batch);
        let shared_batches = snapshot.shared;
        let shared = |event: Footprint| shared_batches.contains(&event.batch);
        for saved in snapshot.sessions {
            let (session, dropped) = Session::restore(
                saved.epoch,
                saved.written,
                saved.last_seq,
                saved.events,
                limits,
            );
            if !dropped.is_empty() {
                self.changes.push(Change::Evict {
                    device: saved.device.clone(),
                    batches: dropped.iter().map(|e| e.batch).collect(),
                });
            }
            metrics().sessions.inc();
            metrics().buffered_events.add(session.buffered() as i64);
            for event in session.footprints() {
                self.held.hold(event, shared(event));
            }
            let device = saved.device;
            self.sessions.insert(device.clone(), Entry::new(session));
            self.listed.insert(device.clone());
            match saved.expires {
                Some(at) => {
                    let left = at.duration_since(now).unwrap_or_default();
                    let at = Instant::now() + left;
                    self.sessions.get_mut(&device).expect("inserted").expires_at = Some(at);
                    self.expiries.insert((at, device));
                }
                None => self.start_ttl(&device),
            }
        }
        for (device, event) in snapshot.retained {
            let footprint = event.footprint();
            self.held.hold(footprint, shared(footprint));
            if let Some(replaced) = self.retained.entry(device).or_default().keep(event) {
                self.held.release(replaced.footprint());
            }
        }
        metrics().buffered_bytes.set(self.held.total() as i64);
    }

    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty()
    }

    /// The changes made since the last call, in order.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    pub fn ttl(&self) -> Duration {
        self.config.ttl
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// How many sessions there are.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether a stream is attached to the device's session.
    pub fn is_attached(&self, device: &DeviceId) -> bool {
        self.sessions
            .get(device)
            .is_some_and(|entry| entry.session.is_attached())
    }

    /// Every device that has a session.
    pub fn devices(&self) -> Vec<DeviceId> {
        self.sessions.keys().cloned().collect()
    }

    /// Refuses a publish of `size` bytes named `name` to `devices` that would
    /// break a bound; answers the bytes it may add to the server-wide count
    /// (for the store to reserve until it is committed). `reserved_bytes`
    /// are those of publishes not yet committed.
    pub fn admit(
        &self,
        devices: &[DeviceId],
        name: &EventName,
        size: usize,
        retain: bool,
        reserved_bytes: usize,
    ) -> Result<usize, StoreError> {
        let config = &self.config;
        let mut growth: isize = 0;
        let mut new_sessions = 0;
        let count = devices.len();
        for device in devices {
            growth += match self.sessions.get(device) {
                // Not counted for several devices (see below): a broadcast
                // skips it for every one of them.
                Some(_) if count > 1 => 0,
                Some(entry) => {
                    let evicted = entry.session.evicted_if_appended(size, config.limits());
                    let freed: usize = evicted.map(|e| self.held.freed_by(e)).sum();
                    signed(size) - signed(freed)
                }
                None => {
                    new_sessions += 1;
                    signed(size)
                }
            };
            if retain {
                let retained = self.retained.get(device);
                let room =
                    retained.is_none_or(|r| r.has_room_for(name, config.retained_per_device));
                if !room {
                    return Err(StoreError::RetainedLimit(config.retained_per_device));
                }
                let replaced = retained.and_then(|r| r.named(name));
                let freed = replaced.map_or(0, |e| self.held.freed_by(e.footprint()));
                growth += signed(size) - signed(freed);
            }
        }
        if self.sessions.len() + new_sessions > config.max_sessions {
            return Err(StoreError::TooManySessions(config.max_sessions));
        }
        if count > 1 {
            // One shared payload; what evictions free is not counted on
            // (a shared payload goes only with its last copy).
            growth = signed(size);
        }
        let held = self.held.total() + reserved_bytes;
        if growth > 0 && held.saturating_add_signed(growth) > config.max_total_bytes {
            return Err(StoreError::StorageFull(config.max_total_bytes));
        }
        Ok(growth.max(0).unsigned_abs())
    }

    /// The device's session, created if it has none. Bounds are the caller's
    /// to check.
    fn session(&mut self, device: &DeviceId) -> &mut Entry {
        let Self {
            sessions,
            listed,
            boot,
            sessions_created,
            ..
        } = self;
        sessions.entry(device.clone()).or_insert_with(|| {
            listed.insert(device.clone());
            // Epochs repeat only after 2^32 sessions in one boot.
            let session = Session::new(Epoch::new(*boot, *sessions_created));
            *sessions_created = sessions_created.wrapping_add(1);
            log::debug!("session.created device={device}");
            metrics().sessions.inc();
            Entry::new(session)
        })
    }

    /// Reserves the next id of the device's session for a publish,
    /// creating the session if it has none. Bounds are the caller's to
    /// check.
    pub fn reserve_id(&mut self, device: &DeviceId) -> EventId {
        if let Some(entry) = self.sessions.get_mut(device) {
            return entry.session.reserve_id();
        }
        self.session(device);
        // A session created by a publish has no stream yet: it lives for
        // one TTL waiting for its device, like a session whose stream ended.
        self.start_ttl(device);
        self.session(device).session.reserve_id()
    }

    /// Every publish in flight failed: their ids are handed out again.
    pub fn release_reserved(&mut self) {
        (self.sessions.values_mut()).for_each(|entry| entry.session.release_reserved());
    }

    /// Appends a committed publish's events to their devices' sessions (and
    /// retained events), keeping the byte count; `reserved`: their ids are
    /// still counted as reserved (see [`reserve_id`](Self::reserve_id)).
    /// Pushes onto `appended` the events appended, in order, for the live
    /// streams: not those whose session ended while they were being
    /// committed. The metrics are updated once per publish, not per device:
    /// a broadcast appends to every session.
    pub fn append(
        &mut self,
        events: Vec<(DeviceId, StoredEvent)>,
        how: (bool, bool, bool),
        appended: &mut Vec<(DeviceId, StoredEvent)>,
    ) {
        let (mut published, mut buffered) = (0, 0);
        for (device, event) in events {
            if let Some(added) = self.append_one(&device, event.clone(), how) {
                published += 1;
                buffered += added;
                appended.push((device, event));
            }
        }
        let metrics = metrics();
        metrics.published.inc_by(published);
        metrics.buffered_events.add(buffered);
        metrics.buffered_bytes.set(self.held.total() as i64);
    }

    /// Appends one event; answers how many more events its session holds
    /// (fewer, if it evicted older ones), or `None`, changing nothing, if
    /// that session has ended.
    fn append_one(
        &mut self,
        device: &DeviceId,
        event: StoredEvent,
        (retain, shared, reserved): (bool, bool, bool),
    ) -> Option<i64> {
        let limits = self.config.limits();
        let entry =
            (self.sessions.get_mut(device)).filter(|entry| entry.session.epoch() == event.id.epoch);
        let Some(entry) = entry else {
            // The session ended (expired, deleted) while the event was
            // being committed: its stored copy goes too, or a restart
            // would bring the session back with it.
            self.changes.push(Change::Evict {
                device: device.clone(),
                batches: vec![event.batch],
            });
            return None;
        };
        let events_before = entry.session.buffered();
        let footprint = event.footprint();
        self.held.hold(footprint, shared);
        self.cache.hold(footprint);
        if retain {
            self.held.hold(footprint, shared);
            let retained = self.retained.entry(device.clone()).or_default();
            if let Some(replaced) = retained.keep(event.clone()) {
                self.held.release(replaced.footprint());
            }
        }
        if reserved {
            entry.session.unreserve();
        }
        let evicted = entry.session.append(event, limits);
        let events_after = entry.session.buffered();
        if !evicted.is_empty() {
            // Per publish to a full buffer, so debug; a client that needed
            // them learns it from its `reset` (counted by reason).
            log::debug!(
                "buffer.evicted device={device} events={} held={events_after}",
                evicted.len()
            );
            for event in &evicted {
                self.held.release(*event);
                self.cache.release(*event);
            }
            self.changes.push(Change::Evict {
                device: device.clone(),
                batches: evicted.iter().map(|e| e.batch).collect(),
            });
        }
        Some(events_after as i64 - events_before as i64)
    }

    /// Cools the oldest hot events if they take more than the cache's
    /// budget: their payloads leave memory, and a replay reads them from
    /// the backend. Called once per commit answer, not per event.
    pub fn cool(&mut self) {
        if let Some(through) = self.cache.cool() {
            let cooled: usize = (self.sessions.values_mut())
                .map(|entry| entry.session.cool(through))
                .sum();
            log::debug!("cache.cooled events={cooled} through_batch={through}");
        }
        metrics().cache_bytes.set(self.cache.bytes() as i64);
    }

    /// Starts the session's countdown, unless it is already counting down.
    fn start_ttl(&mut self, device: &DeviceId) {
        let at = Instant::now() + self.config.ttl;
        if let Some(entry) = self.sessions.get_mut(device)
            && entry.expires_at.is_none()
        {
            entry.expires_at = Some(at);
            self.expiries.insert((at, device.clone()));
            entry.recorded_written = entry.session.handed_out();
            self.changes.push(Change::Detach {
                device: device.clone(),
                epoch: entry.session.epoch(),
                written: entry.recorded_written,
                expires: wall_in(self.config.ttl),
            });
        }
    }

    fn remove_session(&mut self, device: &DeviceId) -> Option<Session> {
        let entry = self.sessions.remove(device)?;
        self.listed.remove(device);
        if let Some(at) = entry.expires_at {
            self.expiries.remove(&(at, device.clone()));
        }
        for event in entry.session.footprints() {
            self.held.release(event);
            self.cache.release(event);
        }
        let metrics = metrics();
        metrics.sessions.dec();
        metrics.buffered_events.sub(entry.session.buffered() as i64);
        metrics.buffered_bytes.set(self.held.total() as i64);
        Some(entry.session)
    }

    /// Attaches a stream to the device's session (creating it) and decides
    /// where the stream starts.
    pub fn attach(
        &mut self,
        device: &DeviceId,
        connection: ConnectionId,
        progress: Progress,
        last_event_id: Option<&str>,
        peer: &str,
    ) -> Result<Opening, StoreError> {
        if !self.sessions.contains_key(device) && self.sessions.len() >= self.config.max_sessions {
            return Err(StoreError::TooManySessions(self.config.max_sessions));
        }
        let retained = self
            .retained
            .get(device)
            .map_or_else(Vec::new, |r| r.events().to_vec());
        let entry = self.session(device);
        let was_due = entry.expires_at.take();
        let opening = entry
            .session
            .attach(connection, progress, last_event_id, &retained);
        let history = &mut entry.history;
        let now = SystemTime::now();
        (history.connected_since, history.last_seen) = (Some(now), now);
        history.peer = Some(peer.to_owned());
        history.attaches += 1;
        history.resets += u64::from(matches!(opening.start, Start::Reset { .. }));
        let epoch = entry.session.epoch();
        if let Some(at) = was_due {
            self.expiries.remove(&(at, device.clone()));
        }
        self.changes.push(Change::Attach {
            device: device.clone(),
            epoch,
        });
        Ok(opening)
    }

    /// Records what the attached streams have written since it was last
    /// recorded (a stream's end records it too), so that after a crash a
    /// fresh connect gets again at most what was written since.
    pub fn record_written(&mut self) {
        for (device, entry) in &mut self.sessions {
            let written = entry.session.handed_out();
            if entry.session.is_attached() && written > entry.recorded_written {
                entry.recorded_written = written;
                self.changes.push(Change::Written {
                    device: device.clone(),
                    epoch: entry.session.epoch(),
                    written,
                });
            }
        }
    }

    /// Counts a kick of the device's stream (decided by the stream itself);
    /// nothing if the device was forgotten meanwhile.
    pub fn count_kick(&mut self, device: &DeviceId) {
        if let Some(entry) = self.sessions.get_mut(device) {
            entry.history.kicks += 1;
        }
    }

    /// Detaches `connection` if it is the device's attached stream; the
    /// session's TTL starts.
    pub fn detach(&mut self, device: &DeviceId, connection: ConnectionId) {
        let Some(entry) = self.sessions.get_mut(device) else {
            return;
        };
        if entry.session.detach(connection) {
            (entry.history.connected_since, entry.history.last_seen) = (None, SystemTime::now());
            self.start_ttl(device);
        }
    }

    /// Forgets the device's session and retained events; answers whether
    /// there was anything to forget.
    pub fn delete(&mut self, device: &DeviceId) -> bool {
        let session = self.remove_session(device);
        let retained = self.retained.remove(device);
        self.changes.push(Change::Forget {
            device: device.clone(),
            batches: session
                .iter()
                .flat_map(Session::footprints)
                .map(|e| e.batch)
                .collect(),
            retained: true,
        });
        if let Some(retained) = &retained {
            for event in retained.events() {
                self.held.release(event.footprint());
            }
            metrics().buffered_bytes.set(self.held.total() as i64);
        }
        session.is_some() || retained.is_some()
    }

    /// Removes the sessions whose TTL passed by `now`; answers each with the
    /// number of events it still held.
    pub fn sweep(&mut self, now: Instant) -> Vec<(DeviceId, usize)> {
        let mut expired = Vec::new();
        while let Some((at, device)) = self.expiries.first().cloned() {
            if at > now {
                break;
            }
            self.expiries.remove(&(at, device.clone()));
            let due = self
                .sessions
                .get(&device)
                .is_some_and(|e| e.expires_at == Some(at));
            if due && let Some(session) = self.remove_session(&device) {
                self.changes.push(Change::Forget {
                    device: device.clone(),
                    batches: session.footprints().map(|e| e.batch).collect(),
                    retained: false,
                });
                expired.push((device, session.buffered()));
            }
        }
        expired
    }
}

mod views;

pub(crate) use views::MAX_SCAN;
pub use views::{DevicePage, DevicePeek, DeviceView};

#[cfg(test)]
mod tests;
