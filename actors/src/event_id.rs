//! Event ids: `<epoch>-<seq>`, e.g. `9c1f03aa00000011-42`.
//!
//! The epoch names one history of one device's session. Its high 32 bits are
//! the server process's boot nonce (random at start), its low 32 bits count the
//! sessions created since boot. So an id from before a restart is recognisably
//! foreign (`unknown_epoch`), and an id from an earlier session of this boot
//! means that session expired (`expired`) — without keeping tombstones.
//!
//! The sequence number starts at 1 in every epoch and grows by one per event.
//! Ids are compared as numbers, never as strings. Clients treat them as opaque;
//! the server parses them strictly because they arrive from the network.

use std::fmt;

use thiserror::Error;

/// One history of one session. Formatted as 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch(u64);

impl Epoch {
    pub fn new(boot: u32, session: u32) -> Self {
        Self((u64::from(boot) << 32) | u64::from(session))
    }

    /// The epoch as stored.
    pub fn to_bits(self) -> u64 {
        self.0
    }

    pub fn from_bits(bits: u64) -> Self {
        Self(bits)
    }

    /// The boot nonce of the process that created this epoch.
    pub fn boot(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// Which of its boot's sessions it is.
    pub fn session(self) -> u32 {
        self.0 as u32
    }
}

/// A position in a session's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventId {
    pub epoch: Epoch,
    pub seq: u64,
}

/// Why a client-supplied id could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("not an event id issued by herald (expected `<16 hex digits>-<sequence>`)")]
pub struct EventIdError;

impl EventId {
    const EPOCH_DIGITS: usize = 16;

    /// Parses exactly what [`Display`](fmt::Display) writes: 16 lowercase hex
    /// digits, `-`, and a decimal sequence number ≥ 1 without sign or leading
    /// zeros. Anything else — padding, upper case, overflow — is refused, so
    /// every valid id has exactly one spelling.
    pub fn parse(raw: &str) -> Result<Self, EventIdError> {
        let (epoch, seq) = raw.split_once('-').ok_or(EventIdError)?;
        let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if epoch.len() != Self::EPOCH_DIGITS || !epoch.bytes().all(lower_hex) {
            return Err(EventIdError);
        }
        if seq.is_empty() || seq.starts_with('0') || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(EventIdError);
        }
        let epoch = u64::from_str_radix(epoch, 16).map_err(|_| EventIdError)?;
        let seq = seq.parse::<u64>().map_err(|_| EventIdError)?;
        Ok(Self {
            epoch: Epoch(epoch),
            seq,
        })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.epoch.0, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_text() {
        let id = EventId {
            epoch: Epoch::new(0x9c1f_03aa, 17),
            seq: 42,
        };
        assert_eq!(id.to_string(), "9c1f03aa00000011-42");
        assert_eq!(EventId::parse("9c1f03aa00000011-42"), Ok(id));
        assert_eq!(id.epoch.boot(), 0x9c1f_03aa);
        let max = EventId {
            epoch: Epoch(u64::MAX),
            seq: u64::MAX,
        };
        assert_eq!(EventId::parse(&max.to_string()), Ok(max));
    }

    #[test]
    fn anything_but_the_canonical_spelling_is_refused() {
        for bad in [
            "",
            "-",
            "42",
            "9c1f03aa00000011",
            "9c1f03aa00000011-",
            "9c1f03aa00000011-0",
            "9c1f03aa00000011-042",
            "9c1f03aa00000011-+42",
            "9c1f03aa00000011--42",
            "9C1F03AA00000011-42",
            "9c1f03aa0000011-42",
            "09c1f03aa00000011-42",
            "9c1f03aa00000011-18446744073709551616",
            "9c1f03aa00000011-4 2",
            "9c1f03aa00000011-42\n",
            "zzzzzzzzzzzzzzzz-1",
        ] {
            assert_eq!(EventId::parse(bad), Err(EventIdError), "{bad:?}");
        }
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(20_000))]

            #[test]
            fn every_issued_id_parses_back_to_itself(epoch: u64, seq in 1..=u64::MAX) {
                let id = EventId { epoch: Epoch(epoch), seq };
                prop_assert_eq!(EventId::parse(&id.to_string()), Ok(id));
            }

            #[test]
            fn any_text_either_is_refused_or_is_the_canonical_spelling(raw in "\\PC{0,48}|[0-9a-fA-F]{14,18}-[0-9+-]{0,22}") {
                if let Ok(id) = EventId::parse(&raw) {
                    prop_assert_eq!(id.to_string(), raw);
                }
            }
        }
    }
}
