//! Which buffered events the store holds whole in memory (hot) and which
//! only by their [`Footprint`](crate::Footprint), their payload left to
//! storage (cold): a bound on the memory replay buffers take beyond the
//! footprints, `storage.cache_bytes`. Owned by
//! [`Storage`](crate::storage::Storage).
//!
//! Events cool in the order they were stored, a storage batch at a time: an
//! event is hot exactly when its batch is above [`ReplayCache::cooled_through`].
//! Live delivery never needs the buffer (a live stream gets each event as it
//! is committed); a replay's cold part is read from storage.
//!
//! Invariant: `bytes` is the sum of the `cost`s of the hot events, kept per
//! batch in batch order.

use std::collections::VecDeque;

use crate::{Footprint, StoredEvent};

#[derive(Debug)]
pub struct ReplayCache {
    /// `None`: nothing ever cools (the memory backend, whose buffers are
    /// the only copy).
    budget: Option<usize>,
    cooled_through: u64,
    /// The hot events per storage batch, oldest first.
    batches: VecDeque<HotBatch>,
    bytes: usize,
    /// How many hot events there are, to know when `batches` holds many
    /// emptied entries (events evicted while hot).
    events: usize,
}

#[derive(Debug)]
struct HotBatch {
    batch: u64,
    bytes: usize,
    events: usize,
}

impl ReplayCache {
    /// A cache of `budget` bytes; every batch up to `cooled_through` is
    /// cold already (what a backend read back).
    pub fn new(budget: Option<usize>, cooled_through: u64) -> Self {
        Self {
            budget,
            cooled_through,
            batches: VecDeque::new(),
            bytes: 0,
            events: 0,
        }
    }

    /// What a hot event costs: the event as a buffer holds it, and its
    /// payload (a shared payload is counted with every copy: a bound, not an
    /// exact count).
    pub fn cost(event: Footprint) -> usize {
        size_of::<StoredEvent>() + event.size as usize
    }

    /// Whether events of `batch` are held whole.
    pub fn is_hot(&self, batch: u64) -> bool {
        batch > self.cooled_through
    }

    /// A hot event was appended; batches come in the order they were stored.
    pub fn hold(&mut self, event: Footprint) {
        if self.budget.is_none() {
            return;
        }
        let cost = Self::cost(event);
        self.bytes += cost;
        self.events += 1;
        match self.batches.back_mut() {
            Some(last) if last.batch == event.batch => {
                last.bytes += cost;
                last.events += 1;
            }
            _ => self.batches.push_back(HotBatch {
                batch: event.batch,
                bytes: cost,
                events: 1,
            }),
        }
    }

    /// A buffered event left its buffer (evicted, its session gone).
    pub fn release(&mut self, event: Footprint) {
        if self.budget.is_none() || !self.is_hot(event.batch) {
            return;
        }
        let found = (self.batches).binary_search_by_key(&event.batch, |hot| hot.batch);
        if let Ok(at) = found {
            let hot = &mut self.batches[at];
            let cost = Self::cost(event).min(hot.bytes);
            hot.bytes -= cost;
            hot.events = hot.events.saturating_sub(1);
            self.bytes -= cost;
            self.events = self.events.saturating_sub(1);
        }
        // Emptied entries go, so the index stays the size of what is hot.
        if self.batches.len() > 2 * self.events + 64 {
            self.batches.retain(|hot| hot.events > 0);
        }
    }

    /// If the hot events take more than the budget: the batch through which
    /// events must now cool (the sessions are the caller's to visit).
    pub fn cool(&mut self) -> Option<u64> {
        let budget = self.budget?;
        if self.bytes <= budget {
            return None;
        }
        // Down to three quarters of the budget, so that one cooling pass (a
        // visit of every session) serves many publishes.
        let target = budget - budget / 4;
        while self.bytes > target {
            let Some(oldest) = self.batches.pop_front() else {
                break;
            };
            self.bytes -= oldest.bytes;
            self.events -= oldest.events;
            self.cooled_through = oldest.batch;
        }
        Some(self.cooled_through)
    }

    /// Every batch up to `batch` is cold (read back by a backend).
    pub fn cool_through(&mut self, batch: u64) {
        self.cooled_through = self.cooled_through.max(batch);
    }

    /// Bytes the hot events take.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::event;

    fn in_batch(batch: u64) -> Footprint {
        Footprint {
            batch,
            ..event(batch).footprint()
        }
    }

    #[test]
    fn over_budget_the_oldest_batches_cool_down_to_three_quarters() {
        let cost = ReplayCache::cost(in_batch(1));
        let mut cache = ReplayCache::new(Some(4 * cost), 0);
        for batch in 1..=4 {
            cache.hold(in_batch(batch));
        }
        assert_eq!(cache.cool(), None, "at the budget, nothing cools");
        cache.hold(in_batch(5));
        assert_eq!(cache.cool(), Some(2), "5 events down to at most 3");
        assert!(!cache.is_hot(2) && cache.is_hot(3));
        assert_eq!(cache.bytes(), 3 * cost);
    }

    #[test]
    fn released_events_no_longer_count() {
        let cost = ReplayCache::cost(in_batch(1));
        let mut cache = ReplayCache::new(Some(2 * cost), 0);
        cache.hold(in_batch(1));
        cache.hold(in_batch(2));
        cache.release(in_batch(1));
        cache.hold(in_batch(3));
        assert_eq!(cache.cool(), None, "two hot events, one released");
        assert_eq!(cache.bytes(), 2 * cost);
    }

    #[test]
    fn without_a_budget_nothing_cools() {
        let mut cache = ReplayCache::new(None, 0);
        for batch in 1..=1000 {
            cache.hold(in_batch(batch));
        }
        assert_eq!(cache.cool(), None);
        assert!(cache.is_hot(1));
    }
}
