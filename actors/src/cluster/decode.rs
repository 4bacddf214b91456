//! Reading what the scripts answer: buffer entries, retained events, device
//! views, epochs and times.

use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use crate::{
    ConnectionId, DeviceId, Epoch, EventId, EventName, StoredEvent, backend::WriteError,
    storage::DeviceView,
};

/// One buffer entry: id `<seq>-0`, fields `n name p published d data`.
fn entry(
    epoch: Epoch,
    id: &str,
    fields: Vec<String>,
    now: (SystemTime, Instant),
) -> Result<StoredEvent, WriteError> {
    let seq = (id.split_once('-').and_then(|(seq, _)| seq.parse().ok()))
        .ok_or(WriteError::Unavailable)?;
    let [_, name, _, published, _, data] =
        <[String; 6]>::try_from(fields).map_err(|_| WriteError::Unavailable)?;
    Ok(StoredEvent {
        id: EventId { epoch, seq },
        name: EventName::parse(&name).map_err(|_| WriteError::Unavailable)?,
        data: data.into(),
        published_at: instant_of(published.parse().unwrap_or(0), now),
        batch: 0,
    })
}

/// A device as `view.lua` encodes it.
pub(super) fn view_of(encoded: &str) -> Result<DeviceView, WriteError> {
    #[derive(Deserialize)]
    struct Stored {
        device: String,
        epoch: String,
        seq: u64,
        node: String,
        connection: String,
        address: String,
        since: u64,
        seen: u64,
        bytes: usize,
        events: usize,
        retained: usize,
        attaches: u64,
        kicks: u64,
        flapping: bool,
    }
    let v: Stored = serde_json::from_str(encoded).map_err(|_| WriteError::Unavailable)?;
    let live = !v.node.is_empty();
    let at = |ms: u64| (ms > 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
    Ok(DeviceView {
        device: DeviceId::parse(&v.device).map_err(|_| WriteError::Unavailable)?,
        // The node's id, without the number its process drew at start.
        node: live.then(|| {
            v.node
                .rsplit_once('/')
                .map_or(&*v.node, |(id, _)| id)
                .to_owned()
        }),
        connection_id: live.then(|| ConnectionId::parse(&v.connection)).flatten(),
        address: (!v.address.is_empty()).then_some(v.address),
        connected_since: live.then(|| at(v.since)).flatten(),
        last_seen: if live {
            SystemTime::now()
        } else {
            at(v.seen).or(at(v.since)).unwrap_or(SystemTime::UNIX_EPOCH)
        },
        last_event_id: match (v.epoch.is_empty(), v.seq) {
            (false, 1..) => Some(EventId {
                epoch: parse_epoch(&v.epoch)?,
                seq: v.seq,
            }),
            _ => None,
        },
        buffered_events: v.events,
        buffered_bytes: v.bytes,
        retained: v.retained,
        reconnects: v.attaches.saturating_sub(1),
        kicks: v.kicks,
        resets: 0,
        flapping: v.flapping,
    })
}

/// Buffer entries (`XRANGE`'s `[id, fields]`) of a session in `epoch`.
pub(super) fn entries(
    epoch: Epoch,
    entries: Vec<(String, Vec<String>)>,
    now: (SystemTime, Instant),
) -> Result<Vec<StoredEvent>, WriteError> {
    (entries.into_iter())
        .map(|(id, fields)| entry(epoch, &id, fields, now))
        .collect()
}

/// A device's retained events (`HGETALL`'s name and encoded event pairs),
/// in publish order.
pub(super) fn retained(
    pairs: Vec<(String, String)>,
    now: (SystemTime, Instant),
) -> Result<Vec<StoredEvent>, WriteError> {
    let mut retained = (pairs.into_iter())
        .map(|(name, event)| retained_event(&name, &event, now))
        .collect::<Result<Vec<_>, _>>()?;
    retained.sort_by_key(|event| (event.published_at, event.id.seq));
    Ok(retained)
}

/// A retained event as `publish.lua` encodes it: `[epoch, seq, published,
/// data]`.
fn retained_event(
    name: &str,
    encoded: &str,
    now: (SystemTime, Instant),
) -> Result<StoredEvent, WriteError> {
    let (epoch, seq, published, data): (String, u64, u64, String) =
        serde_json::from_str(encoded).map_err(|_| WriteError::Unavailable)?;
    Ok(StoredEvent {
        id: EventId {
            epoch: parse_epoch(&epoch)?,
            seq,
        },
        name: EventName::parse(name).map_err(|_| WriteError::Unavailable)?,
        data: data.into(),
        published_at: instant_of(published, now),
        batch: 0,
    })
}

pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// An epoch as the scripts write it: `boot:session`.
pub(super) fn epoch_text(epoch: Epoch) -> String {
    format!("{}:{}", epoch.boot(), epoch.session())
}

/// `boot:session`, as the scripts write epochs.
pub(super) fn parse_epoch(text: &str) -> Result<Epoch, WriteError> {
    let (boot, session) = text.split_once(':').ok_or(WriteError::Unavailable)?;
    match (boot.parse(), session.parse()) {
        (Ok(boot), Ok(session)) => Ok(Epoch::new(boot, session)),
        _ => Err(WriteError::Unavailable),
    }
}

pub(super) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The monotonic instant of a wall-clock publish time, for latency figures.
pub(super) fn instant_of(published_ms: u64, (wall, monotonic): (SystemTime, Instant)) -> Instant {
    let age = Duration::from_millis(unix_ms(wall).saturating_sub(published_ms));
    monotonic.checked_sub(age).unwrap_or(monotonic)
}
