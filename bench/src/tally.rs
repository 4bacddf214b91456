//! Counting what one worker's streams received: latency, gaps, duplicates,
//! replays and per-broadcast fan-out, from the payload every event carries.

use std::collections::HashMap;

use hdrhistogram::Histogram;
use sse_stream::Sse;

use crate::protocol::{self, Payload, Tally};

/// What a stream remembers across its connections.
#[derive(Default)]
pub struct StreamState {
    pub last_event_id: Option<String>,
    /// Highest sequence number received.
    pub last_seq: u64,
    /// When the current connection's `200` arrived (ns since the epoch).
    pub live_at: u64,
    /// Connections opened so far: with several servers, the next one goes
    /// to the next server.
    pub opened: usize,
}

pub struct Counters {
    pub tally: Tally,
    latency: Histogram<u64>,
    /// Per broadcast sequence number: (streams reached, last receive ns).
    fanout: Option<HashMap<u64, (u64, u64)>>,
}

impl Counters {
    /// `fanout`: sequence numbers are global (broadcasts), so count how
    /// many streams each one reached.
    pub fn new(fanout: bool) -> Self {
        Self {
            tally: Tally::default(),
            latency: protocol::new_histogram(),
            fanout: fanout.then(HashMap::new),
        }
    }

    /// Counts one event a stream received at `now` (ns since the epoch).
    pub fn receive(&mut self, stream: &mut StreamState, event: Sse, now: u64) {
        match event.event.as_deref() {
            // herald's heartbeat; nchan's keep-alive is `event: ping`.
            Some("heartbeat" | "ping") => self.tally.heartbeats += 1,
            Some("reset") => self.tally.resets += 1,
            _ => {}
        }
        if let Some(id) = event.id {
            stream.last_event_id = Some(id);
        }
        let Some(data) = event.data else { return };
        let Ok(payload) = serde_json::from_str::<Payload>(&data) else {
            return;
        };
        let tally = &mut self.tally;
        if payload.s <= stream.last_seq {
            tally.duplicates += 1;
            return;
        }
        tally.gaps += payload.s - stream.last_seq - 1;
        stream.last_seq = payload.s;
        tally.deliveries += 1;
        if payload.t < stream.live_at {
            tally.replayed += 1;
        }
        self.latency
            .saturating_record((now.saturating_sub(payload.t) / 1000).max(1));
        if let Some(fanout) = &mut self.fanout {
            let entry = fanout.entry(payload.s).or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(now);
        }
    }

    pub fn report(&self) -> Tally {
        let mut tally = self.tally.clone();
        tally.latency_us = protocol::histogram_pairs(&self.latency);
        tally.fanout = self
            .fanout
            .iter()
            .flatten()
            .map(|(seq, (streams, last))| (*seq, *streams, *last))
            .collect();
        tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, due: u64) -> Sse {
        Sse::default().data(format!(r#"{{"s":{seq},"t":{due}}}"#))
    }

    #[test]
    fn gaps_duplicates_and_latency_come_from_the_sequence() {
        let mut counters = Counters::new(true);
        let mut stream = StreamState::default();
        for seq in [1, 2, 4, 4, 3, 5] {
            counters.receive(&mut stream, event(seq, 1_000_000), 3_000_000);
        }
        let tally = counters.report();
        assert_eq!((tally.deliveries, tally.gaps, tally.duplicates), (4, 1, 2));
        assert_eq!(tally.latency_us, vec![(2000, 4)]);
        // Fan-out counts each stream's first delivery of a broadcast only.
        let reached: Vec<u64> = tally
            .fanout
            .iter()
            .filter(|f| f.0 == 4)
            .map(|f| f.1)
            .collect();
        assert_eq!(reached, vec![1]);
        assert!(!tally.fanout.iter().any(|f| f.0 == 3));
    }

    #[test]
    fn events_due_before_the_stream_was_live_count_as_replayed() {
        let mut counters = Counters::new(false);
        let mut stream = StreamState {
            live_at: 5_000,
            ..StreamState::default()
        };
        counters.receive(&mut stream, event(1, 4_000), 6_000);
        counters.receive(&mut stream, event(2, 5_500), 6_000);
        let tally = counters.report();
        assert_eq!((tally.deliveries, tally.replayed), (2, 1));
        assert!(tally.fanout.is_empty());
    }

    #[test]
    fn ids_are_remembered_and_signals_counted() {
        let mut counters = Counters::new(false);
        let mut stream = StreamState::default();
        counters.receive(&mut stream, Sse::default().event("heartbeat").data("{}"), 0);
        counters.receive(&mut stream, Sse::default().event("ping"), 0);
        counters.receive(&mut stream, Sse::default().event("reset").data("{}"), 0);
        counters.receive(&mut stream, event(1, 0).id("e-1"), 0);
        assert_eq!(stream.last_event_id.as_deref(), Some("e-1"));
        let padded = Sse::default().data(r#"{"s":2,"t":0,"p":"xxxx"}"#);
        counters.receive(&mut stream, padded, 0);
        let tally = counters.report();
        assert_eq!(
            (tally.heartbeats, tally.resets, tally.deliveries),
            (2, 1, 2)
        );
    }
}
