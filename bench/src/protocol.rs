//! What the coordinator and its worker processes say to each other: one
//! JSON [`Command`] per line on the worker's stdin, one JSON [`Reply`] per
//! line on its stdout.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The payload every published event carries: a sequence number (per device
/// for unicast, global for broadcasts) and the time it was due to be
/// published, in nanoseconds since the Unix epoch, so a receiver in another
/// process measures publish-to-receive latency. `p` pads it to a size; it
/// is borrowed both ways, so neither the publisher nor a receiver copies
/// the padding per event.
#[derive(Serialize, Deserialize)]
pub struct Payload<'a> {
    pub s: u64,
    pub t: u64,
    #[serde(default, borrow, skip_serializing_if = "str::is_empty")]
    pub p: Cow<'a, str>,
}

/// The name of device number `index`.
pub fn device_name(index: usize) -> String {
    format!("d{index:05}")
}

/// Wall-clock nanoseconds: publisher and receivers are different processes,
/// so the only clock they share is the system's.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Open every stream (at most `concurrency` connects in flight); answer
    /// once each is live (its `200` arrived).
    Connect { concurrency: usize },
    /// Drop every connection at once and reconnect them all immediately,
    /// each with its Last-Event-ID; answer once each is live again.
    Storm,
    /// How many deliveries were counted since the last `Reset`.
    Count,
    /// Everything counted since the last `Reset`.
    Report,
    /// Start counting afresh.
    Reset,
    /// Close every stream (the clients leave).
    Close,
    /// Exit.
    Quit,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Live(Live),
    Count { deliveries: u64 },
    Report(Tally),
    Done,
}

/// The answer to `Connect` and `Storm`; for the fleet, the slowest worker's
/// time and the sums.
#[derive(Serialize, Deserialize, Debug, Default, Clone, Copy)]
pub struct Live {
    /// Time from the command until the last stream was live; NaN if some
    /// never were.
    pub elapsed_ms: f64,
    /// Connect failures and non-200 answers on the way (each retried).
    pub errors: u64,
    /// Streams still not live when the worker stopped waiting (60 s).
    pub missing: u64,
}

impl Live {
    pub fn add(self, other: Live) -> Live {
        Live {
            elapsed_ms: if self.elapsed_ms.is_nan() || other.elapsed_ms.is_nan() {
                f64::NAN
            } else {
                self.elapsed_ms.max(other.elapsed_ms)
            },
            errors: self.errors + other.errors,
            missing: self.missing + other.missing,
        }
    }
}

/// What a worker's streams saw. Slow streams (those told to stop reading)
/// read nothing, so only their connection errors and ends count here.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub struct Tally {
    /// Events delivered for the first time to their stream.
    pub deliveries: u64,
    /// Sequence numbers skipped (a later one arrived first).
    pub gaps: u64,
    /// Sequence numbers that arrived again, or out of order (not counted
    /// in `deliveries`).
    pub duplicates: u64,
    /// Deliveries due (by the publisher's schedule) before their stream's
    /// current connection was live: replayed from the server's buffer, or
    /// held at the publisher across the reconnect.
    pub replayed: u64,
    pub heartbeats: u64,
    /// herald `reset` events (a position the server could not resume).
    pub resets: u64,
    /// Streams the server ended (each then resumed).
    pub ended: u64,
    /// Connect failures and non-200 answers.
    pub errors: u64,
    /// Publish-to-receive latency, µs: `(value, count)` pairs.
    pub latency_us: Vec<(u64, u64)>,
    /// Per broadcast sequence number: streams that got it (first delivery
    /// only), and when the last of them did (ns since the epoch). Empty for
    /// unicast.
    pub fanout: Vec<(u64, u64, u64)>,
}

/// A latency histogram in µs, 1 µs to 10 minutes, 3 significant figures.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// The whole fleet's tally, merged.
pub struct Merged {
    pub tally: Tally,
    pub latency: Histogram<u64>,
    /// Per broadcast: (streams reached, last receive ns).
    pub fanout: HashMap<u64, (u64, u64)>,
}

pub fn merge(tallies: Vec<Tally>) -> Merged {
    let mut merged = Merged {
        tally: Tally::default(),
        latency: new_histogram(),
        fanout: HashMap::new(),
    };
    for tally in tallies {
        let sum = &mut merged.tally;
        sum.deliveries += tally.deliveries;
        sum.gaps += tally.gaps;
        sum.duplicates += tally.duplicates;
        sum.replayed += tally.replayed;
        sum.heartbeats += tally.heartbeats;
        sum.resets += tally.resets;
        sum.ended += tally.ended;
        sum.errors += tally.errors;
        for (value, count) in tally.latency_us {
            merged.latency.saturating_record_n(value, count);
        }
        for (seq, streams, last) in tally.fanout {
            let entry = merged.fanout.entry(seq).or_default();
            entry.0 += streams;
            entry.1 = entry.1.max(last);
        }
    }
    merged
}

/// `(value, count)` pairs of a histogram's recorded values.
pub fn histogram_pairs(histogram: &Histogram<u64>) -> Vec<(u64, u64)> {
    histogram
        .iter_recorded()
        .map(|value| (value.value_iterated_to(), value.count_at_value()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_counts_and_keeps_the_latest_fanout_receive() {
        let mut histogram = new_histogram();
        histogram.record(100).unwrap();
        let one = Tally {
            deliveries: 2,
            latency_us: histogram_pairs(&histogram),
            fanout: vec![(1, 1, 50)],
            ..Tally::default()
        };
        histogram.record(300).unwrap();
        let two = Tally {
            deliveries: 3,
            gaps: 1,
            latency_us: histogram_pairs(&histogram),
            fanout: vec![(1, 2, 70), (2, 1, 90)],
            ..Tally::default()
        };
        let merged = merge(vec![one, two]);
        assert_eq!((merged.tally.deliveries, merged.tally.gaps), (5, 1));
        assert_eq!(merged.latency.len(), 3);
        assert_eq!(merged.fanout[&1], (3, 70));
        assert_eq!(merged.fanout[&2], (1, 90));
    }
}
