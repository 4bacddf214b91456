//! Storage: what the [`SessionStore`](crate::SessionStore) keeps — every
//! device's [`Session`] and [`Retained`] events, the expiry index, the byte
//! count — and the bounds on it. A plain in-memory data structure with one
//! user, the store actor: a persistent or shared storage replaces this file,
//! not the store's messages.
//!
//! Invariants:
//! - `total_bytes` is the sum of every buffer's and every retained set's bytes;
//! - [`admit`](Storage::admit) refuses before anything changes, and what it
//!   admits [`append`](Storage::append) stores within the bounds;
//! - a detached session has exactly one entry in `expiries`, and sweeping
//!   visits only the entries that are due.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use bytestring::ByteString;
use serde::Deserialize;

use crate::{
    BufferLimits, ConnectionId, DeviceId, Epoch, EventName, Opening, Progress, Session,
    StoredEvent,
    retained::{Retained, signed},
};

/// The `[session]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
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
}

struct Entry {
    session: Session,
    /// Set while detached: when the session ends.
    expires_at: Option<Instant>,
}

pub struct Storage {
    config: SessionConfig,
    boot: u32,
    sessions_created: u32,
    sessions: HashMap<DeviceId, Entry>,
    retained: HashMap<DeviceId, Retained>,
    expiries: BTreeSet<(Instant, DeviceId)>,
    total_bytes: usize,
}

impl Storage {
    pub fn new(config: SessionConfig) -> Self {
        Self {
            config,
            boot: fastrand::u32(..),
            sessions_created: 0,
            sessions: HashMap::new(),
            retained: HashMap::new(),
            expiries: BTreeSet::new(),
            total_bytes: 0,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.config.ttl
    }

    /// How many sessions there are.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Every device that has a session.
    pub fn devices(&self) -> Vec<DeviceId> {
        self.sessions.keys().cloned().collect()
    }

    /// Refuses a publish of `size` bytes named `name` to `devices` that would
    /// break a bound.
    pub fn admit<'a>(
        &self,
        devices: impl Iterator<Item = &'a DeviceId>,
        name: &EventName,
        size: usize,
        retain: bool,
    ) -> Result<(), StoreError> {
        let config = &self.config;
        let mut growth: isize = 0;
        let mut new_sessions = 0;
        for device in devices {
            let retained = self.retained.get(device);
            growth += match self.sessions.get(device) {
                Some(entry) => entry.session.growth_if_appended(size, config.limits()),
                None => {
                    new_sessions += 1;
                    signed(size)
                }
            };
            if retain {
                let room =
                    retained.is_none_or(|r| r.has_room_for(name, config.retained_per_device));
                if !room {
                    return Err(StoreError::RetainedLimit(config.retained_per_device));
                }
                growth += retained.map_or(signed(size), |r| r.growth_if_kept(name, size));
            }
        }
        if self.sessions.len() + new_sessions > config.max_sessions {
            return Err(StoreError::TooManySessions(config.max_sessions));
        }
        if growth > 0 && self.total_bytes.saturating_add_signed(growth) > config.max_total_bytes {
            return Err(StoreError::StorageFull(config.max_total_bytes));
        }
        Ok(())
    }

    /// The device's session, created if it has none. Bounds are the caller's
    /// to check.
    fn session(&mut self, device: &DeviceId) -> &mut Entry {
        let Self {
            sessions,
            boot,
            sessions_created,
            ..
        } = self;
        sessions.entry(device.clone()).or_insert_with(|| {
            // Epochs repeat only after 2^32 sessions in one boot.
            let session = Session::new(Epoch::new(*boot, *sessions_created));
            *sessions_created = sessions_created.wrapping_add(1);
            log::debug!("session.created device={device}");
            Entry {
                session,
                expires_at: None,
            }
        })
    }

    /// Appends to the device's session (and retained events), keeping the
    /// byte count; the caller has admitted it.
    pub fn append(
        &mut self,
        device: &DeviceId,
        name: EventName,
        data: ByteString,
        retain: bool,
    ) -> StoredEvent {
        let limits = self.config.limits();
        let entry = self.session(device);
        let before = entry.session.bytes();
        let event = entry.session.append(name, data, limits);
        let after = entry.session.bytes();
        // A session created by a publish has no stream yet: it lives for one
        // TTL waiting for its device, like a session whose stream ended.
        let detached = !entry.session.is_attached();
        self.total_bytes = self.total_bytes + after - before;
        if retain {
            let retained = self.retained.entry(device.clone()).or_default();
            let before = retained.bytes();
            retained.keep(event.clone());
            self.total_bytes = self.total_bytes + retained.bytes() - before;
        }
        if detached {
            self.start_ttl(device);
        }
        event
    }

    /// Starts the session's countdown, unless it is already counting down.
    fn start_ttl(&mut self, device: &DeviceId) {
        let at = Instant::now() + self.config.ttl;
        if let Some(entry) = self.sessions.get_mut(device)
            && entry.expires_at.is_none()
        {
            entry.expires_at = Some(at);
            self.expiries.insert((at, device.clone()));
        }
    }

    fn remove_session(&mut self, device: &DeviceId) -> Option<Session> {
        let entry = self.sessions.remove(device)?;
        if let Some(at) = entry.expires_at {
            self.expiries.remove(&(at, device.clone()));
        }
        self.total_bytes = self.total_bytes.saturating_sub(entry.session.bytes());
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
        if let Some(at) = was_due {
            self.expiries.remove(&(at, device.clone()));
        }
        Ok(opening)
    }

    /// Detaches `connection` if it is the device's attached stream; the
    /// session's TTL starts.
    pub fn detach(&mut self, device: &DeviceId, connection: ConnectionId) {
        let detached = self
            .sessions
            .get_mut(device)
            .is_some_and(|entry| entry.session.detach(connection));
        if detached {
            self.start_ttl(device);
        }
    }

    /// Forgets the device's session and retained events; answers whether
    /// there was anything to forget.
    pub fn delete(&mut self, device: &DeviceId) -> bool {
        let session = self.remove_session(device);
        let retained = self.retained.remove(device);
        if let Some(retained) = &retained {
            self.total_bytes = self.total_bytes.saturating_sub(retained.bytes());
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
                expired.push((device, session.buffered()));
            }
        }
        expired
    }
}
