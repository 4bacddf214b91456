//! Publishes between their ids and their commit: what the
//! [`SessionStore`](crate::SessionStore) has handed its backend and not yet
//! heard back about. A plain data structure owned by the store.
//!
//! A publish reserves the next ids of its devices at once (so publishes that
//! overlap get consecutive ids) and bytes against the store's bound; its
//! events reach the sessions, and the streams, only once committed. The
//! backend answers batches in the order they were submitted.
//!
//! Invariants:
//! - `reserved[device]` counts the device's events submitted and not yet
//!   answered, and `reserved_bytes` their sizes; both drop back when a batch
//!   is answered, either way;
//! - after a failure, every batch submitted before the store learned of it
//!   fails too (it holds ids after the failed ones): the reservations are
//!   dropped at once and those answers only fail their publishes.

use std::collections::{HashMap, VecDeque};

use tokio::sync::oneshot;

use crate::{DeviceId, StoredEvent, storage::StoreError};

/// What a waiting publish is answered: for each of its events, in order,
/// whether it was handed to a live stream; or why nothing was stored.
pub type Outcome = Result<Vec<bool>, StoreError>;

/// One publish waiting for its commit.
pub struct Waiting {
    pub batch: u64,
    pub events: Vec<(DeviceId, StoredEvent)>,
    pub retain: bool,
    pub size: usize,
    pub reply: oneshot::Sender<Outcome>,
}

#[derive(Default)]
pub struct Commits {
    /// The number of the last batch submitted.
    last_batch: u64,
    /// Batches up to this one fail because of an earlier failure.
    failed_through: u64,
    reserved: HashMap<DeviceId, u64>,
    reserved_bytes: usize,
    waiting: VecDeque<Waiting>,
}

impl Commits {
    /// Batches numbered on from `last` (a backend's batch numbers are where
    /// it keeps events, so they never repeat).
    pub fn after(last: u64) -> Self {
        Self {
            last_batch: last,
            failed_through: last,
            ..Self::default()
        }
    }

    /// Numbers the next batch.
    pub fn next_batch(&mut self) -> u64 {
        self.last_batch += 1;
        self.last_batch
    }

    /// Reserves one event of `size` bytes for `device`; answers how many of
    /// its events were reserved before this one.
    pub fn reserve(&mut self, device: &DeviceId, size: usize) -> u64 {
        self.reserved_bytes += size;
        let count = self.reserved.entry(device.clone()).or_default();
        *count += 1;
        *count - 1
    }

    pub fn reserved_bytes(&self) -> usize {
        self.reserved_bytes
    }

    pub fn wait(&mut self, waiting: Waiting) {
        self.waiting.push_back(waiting);
    }

    /// The next publish among the batches up to `through`, now committed,
    /// its reservations released; `None` when none is left.
    pub fn committed(&mut self, through: u64) -> Option<Waiting> {
        let waiting = self.take(through)?;
        if waiting.batch > self.failed_through {
            self.reserved_bytes -= waiting.size * waiting.events.len();
            for (device, _) in &waiting.events {
                if let Some(count) = self.reserved.get_mut(device) {
                    *count -= 1;
                    if *count == 0 {
                        self.reserved.remove(device);
                    }
                }
            }
        }
        Some(waiting)
    }

    /// The batches up to `through` failed. Answers whether this is news
    /// (the backend must be told to resume): batches submitted after the
    /// last failure was learned of, which hold the only reservations left.
    pub fn failed(&mut self, through: u64) -> bool {
        let news = through > self.failed_through;
        if news {
            self.failed_through = self.last_batch;
            self.reserved.clear();
            self.reserved_bytes = 0;
        }
        news
    }

    /// The next publish waiting on a failed batch up to `through`.
    pub fn refused(&mut self, through: u64) -> Option<Waiting> {
        self.take(through)
    }

    fn take(&mut self, through: u64) -> Option<Waiting> {
        match self.waiting.front() {
            Some(front) if front.batch <= through => self.waiting.pop_front(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_on(commits: &mut Commits, device: &DeviceId) -> (u64, u64) {
        let batch = commits.next_batch();
        let ahead = commits.reserve(device, 5);
        let (reply, _) = oneshot::channel();
        commits.wait(Waiting {
            batch,
            events: vec![(device.clone(), crate::test_support::event(1))],
            retain: false,
            size: 5,
            reply,
        });
        (batch, ahead)
    }

    #[test]
    fn a_commit_releases_its_reservations_and_a_failure_every_one_made_before_it_was_known() {
        let device = DeviceId::parse("d").unwrap();
        let mut commits = Commits::after(10);
        let (first, ahead) = wait_on(&mut commits, &device);
        assert_eq!((first, ahead), (11, 0), "numbered on from the snapshot");
        assert!(commits.committed(first).is_some());
        assert_eq!(commits.reserved_bytes(), 0);

        // Two publishes in flight; the first fails, then the second because
        // of it: the store resumes the backend once.
        let (second, _) = wait_on(&mut commits, &device);
        let (third, ahead) = wait_on(&mut commits, &device);
        assert_eq!(ahead, 1, "ids after the reserved ones");
        assert!(commits.failed(second), "news: resume the backend");
        assert!(commits.refused(second).is_some());
        assert!(!commits.failed(third), "a consequence, not news");
        assert!(commits.refused(third).is_some());
        assert_eq!(commits.reserved_bytes(), 0);

        // The next publish gets the failed ones' ids again; a failure of it
        // is news again.
        let (fourth, ahead) = wait_on(&mut commits, &device);
        assert_eq!(ahead, 0);
        assert!(commits.failed(fourth));
    }
}
