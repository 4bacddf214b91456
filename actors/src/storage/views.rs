//! What the admin API shows of the store's sessions: one device, its
//! newest events, or a page of the device list in id order.

use std::{ops::Bound, time::SystemTime};

use super::{Entry, Storage};
use crate::{ConnectionId, DeviceId, EventId, StoredEvent};

/// Sessions one device-list page looks at, at most.
pub(crate) const MAX_SCAN: usize = 10_000;

/// A page of the device list.
#[derive(Debug, Clone)]
pub struct DevicePage {
    pub devices: Vec<DeviceView>,
    /// The cursor of the following page, if there is one.
    pub next: Option<DeviceId>,
}

/// What a device's stream would get: its newest buffered events and its
/// retained ones.
#[derive(Debug, Clone)]
pub struct DevicePeek {
    /// The newest buffered events asked for, oldest first.
    pub events: Vec<StoredEvent>,
    /// Whether `events` holds all of them: the embedded backend keeps older
    /// events' payloads on disk only (see `storage.cache_bytes`).
    pub complete: bool,
    /// Retained events, in publish order.
    pub retained: Vec<StoredEvent>,
}

/// One device as the admin API shows it.
#[derive(Debug, Clone)]
pub struct DeviceView {
    pub device: DeviceId,
    /// The node holding its live stream, among several on one Redis.
    pub node: Option<String>,
    pub connection_id: Option<ConnectionId>,
    /// The address of the attached stream's client, or of the last one.
    pub address: Option<String>,
    pub connected_since: Option<SystemTime>,
    /// When a stream last attached or detached (now, while attached).
    pub last_seen: SystemTime,
    pub last_event_id: Option<EventId>,
    pub buffered_events: usize,
    pub buffered_bytes: usize,
    pub retained: usize,
    /// Streams attached after the first.
    pub reconnects: u64,
    /// Streams kicked while their client was there: replaced by a newer
    /// one, or ended by an operator's kick.
    pub kicks: u64,
    /// Streams that started with `reset`.
    pub resets: u64,
    /// Found flapping recently (filled in by the store's kick rules).
    pub flapping: bool,
}

impl Storage {
    /// The device as the admin API shows it, if herald holds anything for it.
    pub fn view(&self, device: &DeviceId) -> Option<DeviceView> {
        let retained = self.retained.get(device).map_or(0, |r| r.events().len());
        match self.sessions.get(device) {
            Some(entry) => Some(Self::describe(device, entry, retained)),
            None if retained > 0 => Some(DeviceView {
                device: device.clone(),
                node: None,
                connection_id: None,
                address: None,
                connected_since: None,
                last_seen: SystemTime::UNIX_EPOCH,
                last_event_id: None,
                buffered_events: 0,
                buffered_bytes: 0,
                retained,
                reconnects: 0,
                kicks: 0,
                resets: 0,
                flapping: false,
            }),
            None => None,
        }
    }

    /// Up to `limit` sessions after the device `after` whose ids start with
    /// `prefix`, in device-id order; `connected` keeps only attached
    /// (`true`) or detached (`false`) ones.
    /// At most [`MAX_SCAN`] sessions are looked at, so a sparse filter costs
    /// several bounded requests instead of one long one: `next` is where the
    /// following page starts (`None` at the end).
    pub fn page(
        &self,
        connected: Option<bool>,
        (after, prefix): (Option<&DeviceId>, &str),
        limit: usize,
    ) -> DevicePage {
        // From the cursor, or from the first id with the prefix if that
        // comes later.
        let start = match after {
            Some(after) if after.as_str() >= prefix => Bound::Excluded(after.as_str()),
            _ => Bound::Included(prefix),
        };
        let mut sessions = (self.listed.range::<str, _>((start, Bound::Unbounded)))
            .take_while(|device| device.as_str().starts_with(prefix))
            .filter_map(|device| Some((device, self.sessions.get(device)?)));
        let (mut devices, mut last) = (Vec::new(), None);
        for _ in 0..MAX_SCAN {
            let Some((device, entry)) = sessions.next() else {
                return DevicePage {
                    devices,
                    next: None,
                };
            };
            last = Some(device.clone());
            if connected.is_none_or(|c| c == entry.session.is_attached()) {
                let retained = self.retained.get(device).map_or(0, |r| r.events().len());
                devices.push(Self::describe(device, entry, retained));
                if devices.len() == limit {
                    break;
                }
            }
        }
        let more = sessions.next().is_some();
        DevicePage {
            devices,
            next: last.filter(|_| more),
        }
    }

    /// The device's newest `limit` events and retained ones, if herald
    /// holds anything for it.
    pub fn peek(&self, device: &DeviceId, limit: usize) -> Option<DevicePeek> {
        let retained = self.retained.get(device).map(|r| r.events().to_vec());
        let (events, complete) = match self.sessions.get(device) {
            Some(entry) => entry.session.newest(limit),
            None if retained.is_some() => (Vec::new(), true),
            None => return None,
        };
        Some(DevicePeek {
            events,
            complete,
            retained: retained.unwrap_or_default(),
        })
    }

    fn describe(device: &DeviceId, entry: &Entry, retained: usize) -> DeviceView {
        let (session, history) = (&entry.session, &entry.history);
        let attached = session.attached();
        DeviceView {
            device: device.clone(),
            node: None,
            connection_id: attached,
            address: history.peer.clone(),
            connected_since: history.connected_since,
            last_seen: if attached.is_some() {
                SystemTime::now()
            } else {
                history.last_seen
            },
            last_event_id: session.last_event_id(),
            buffered_events: session.buffered(),
            buffered_bytes: session.bytes(),
            retained,
            reconnects: history.attaches.saturating_sub(1),
            kicks: history.kicks,
            resets: history.resets,
            flapping: false,
        }
    }
}
