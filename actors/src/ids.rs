//! Names that cross the trust boundary: device ids and event names come from
//! URLs and request bodies, so they are parsed once, at the edge, into types
//! that cannot hold anything else. Connection ids are minted by the server.

use std::fmt;

use bytestring::ByteString;
use smol_str::SmolStr;
use thiserror::Error;

use crate::event::RESERVED_EVENT_NAMES;

/// Longest device id or event name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// Why a device id or event name was refused. The messages are shown to API
/// clients as they are.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("may only contain A-Z a-z 0-9 . _ : -")]
    BadCharacter,
    #[error("`{0}` is reserved for the protocol")]
    Reserved(&'static str),
}

/// The shared character rule for device ids, event names and client instance
/// names: 1–128 of `A-Z a-z 0-9 . _ : -`. It keeps them safe to put in URLs,
/// log lines and SSE fields without escaping.
pub fn check_name(raw: &str) -> Result<(), NameError> {
    if raw.is_empty() {
        return Err(NameError::Empty);
    }
    if raw.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-');
    if raw.bytes().all(allowed) {
        Ok(())
    } else {
        Err(NameError::BadCharacter)
    }
}

/// A map keyed by ids, on the store's and the registry's hot paths (every
/// delivery looks its device up a few times). foldhash with a per-process
/// random seed: several times faster than std's SipHash on short keys, and
/// keys a client chooses still cannot be made to collide without knowing the
/// seed (hashbrown's own default).
pub(crate) type IdMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A device's identity: the key of its session and of its live connection.
///
/// Held inline up to 23 bytes (longer ones are shared): every delivery
/// looks its device up in the store's and the registry's maps, and an id
/// read from the map's own slot, not through a pointer to elsewhere, spares
/// each lookup a cache miss; a clone copies it without touching a shared
/// count.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(SmolStr);

/// Maps keyed by device id are searched with text read back from storage,
/// without building an id per lookup (the hash is the text's).
impl std::borrow::Borrow<str> for DeviceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl DeviceId {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        check_name(raw)?;
        Ok(Self(SmolStr::new(raw)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of a published event (the SSE `event:` field). Names the protocol
/// itself uses (`hello`, `heartbeat`, …) are refused so a publisher can never
/// impersonate the server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventName(ByteString);

impl EventName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        check_name(raw)?;
        if let Some(reserved) = RESERVED_EVENT_NAMES.iter().find(|r| **r == raw) {
            return Err(NameError::Reserved(reserved));
        }
        Ok(Self(ByteString::from(raw)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a shared string, for writing to a stream without copying.
    pub fn to_bytestring(&self) -> ByteString {
        self.0.clone()
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One stream's identity, minted by the server for every accepted stream. Log
/// lines and the `kicked` event name connections by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(uuid::Uuid);

impl ConnectionId {
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// A connection id as another node wrote it.
    pub fn parse(text: &str) -> Option<Self> {
        uuid::Uuid::parse_str(text).ok().map(Self)
    }
}

impl Default for ConnectionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// As its text, written straight into the output.
impl serde::Serialize for ConnectionId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_follow_the_character_rule() {
        for good in ["a", "edge-01", "site:7.rack_2", &"x".repeat(MAX_NAME_LEN)] {
            assert_eq!(
                DeviceId::parse(good).map(|d| d.to_string()),
                Ok(good.to_string())
            );
        }
        assert_eq!(DeviceId::parse(""), Err(NameError::Empty));
        assert_eq!(
            DeviceId::parse(&"x".repeat(MAX_NAME_LEN + 1)),
            Err(NameError::TooLong)
        );
        for bad in ["a b", "a/b", "é", "a\nb", "a\0", "a%20"] {
            assert_eq!(
                DeviceId::parse(bad),
                Err(NameError::BadCharacter),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn event_names_may_not_impersonate_the_protocol() {
        assert!(EventName::parse("config").is_ok());
        for reserved in RESERVED_EVENT_NAMES {
            assert_eq!(
                EventName::parse(reserved),
                Err(NameError::Reserved(reserved))
            );
        }
        assert_eq!(EventName::parse("con fig"), Err(NameError::BadCharacter));
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(20_000))]

            #[test]
            fn a_name_is_accepted_exactly_when_it_follows_the_rule(raw in "\\PC{0,140}|[A-Za-z0-9._:-]{0,140}") {
                let follows = !raw.is_empty()
                    && raw.len() <= MAX_NAME_LEN
                    && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(&b));
                prop_assert_eq!(DeviceId::parse(&raw).is_ok(), follows);
                let reserved = RESERVED_EVENT_NAMES.contains(&raw.as_str());
                prop_assert_eq!(EventName::parse(&raw).is_ok(), follows && !reserved);
            }
        }
    }
}
