//! Publishes between their ids and their commit: what the
//! [`SessionStore`](crate::SessionStore) has handed its backend and not yet
//! heard back about. A plain data structure owned by the store.
//!
//! A publish reserves the next ids of its devices at once (so publishes that
//! overlap get consecutive ids; each session counts its own, see
//! [`Session::reserve_id`](crate::Session::reserve_id)) and bytes against the
//! store's bound; its events reach the sessions, and the streams, only once
//! committed. The backend answers batches in the order they were submitted.
//!
//! Invariants:
//! - `reserved_bytes` counts the bytes of publishes submitted and not yet
//!   answered; it drops back when a batch is answered, either way, as the
//!   sessions' reserved ids do;
//! - after a failure, every batch submitted before the store learned of it
//!   fails too (it holds ids after the failed ones): the reservations are
//!   dropped at once (the store releases the sessions' ids) and those
//!   answers only fail their publishes;
//! - the changes of unanswered batches that are not publishes (positions,
//!   TTLs, evictions, deletes, blocks: state the store already has) are
//!   kept until answered, so a failure hands them back to be submitted
//!   again rather than lost.

use std::collections::VecDeque;

use tokio::sync::oneshot;

use crate::{DeviceId, StoredEvent, backend::Change, storage::StoreError};

/// What a waiting publish is answered: for each of its events, in order,
/// whether it was handed to a live stream; or why nothing was stored.
pub type Outcome = Result<Vec<bool>, StoreError>;

/// One publish waiting for its commit.
pub struct Waiting {
    pub batch: u64,
    pub events: Vec<(DeviceId, StoredEvent)>,
    pub retain: bool,
    /// What it reserved against the server-wide byte bound.
    pub bytes: usize,
    pub reply: oneshot::Sender<Outcome>,
}

#[derive(Default)]
pub struct Commits {
    /// The number of the last batch submitted.
    last_batch: u64,
    /// Batches up to this one fail because of an earlier failure.
    failed_through: u64,
    reserved_bytes: usize,
    waiting: VecDeque<Waiting>,
    /// The changes other than publishes of each unanswered batch.
    unanswered: VecDeque<(u64, Vec<Change>)>,
    /// Those of failed batches, to go first in the next batch.
    lost: Vec<Change>,
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

    pub fn reserved_bytes(&self) -> usize {
        self.reserved_bytes
    }

    /// A publish, its ids and `bytes` reserved, waits for batch `batch`.
    pub fn wait(&mut self, waiting: Waiting) {
        self.reserved_bytes += waiting.bytes;
        self.waiting.push_back(waiting);
    }

    /// Batch `batch` was submitted with `changes`: those that are not
    /// publishes are kept until it is answered.
    pub fn track(&mut self, batch: u64, changes: &[Change]) {
        let kept: Vec<_> = (changes.iter())
            .filter(|change| !matches!(change, Change::Append { .. }))
            .cloned()
            .collect();
        if !kept.is_empty() {
            self.unanswered.push_back((batch, kept));
        }
    }

    /// The next publish among the batches up to `through`, now committed,
    /// its bytes released, and whether its ids are still counted as
    /// reserved (not if a failure released them); `None` when none is left.
    pub fn committed(&mut self, through: u64) -> Option<(Waiting, bool)> {
        self.forget_answered(through);
        let waiting = self.take(through)?;
        let reserved = waiting.batch > self.failed_through;
        if reserved {
            self.reserved_bytes -= waiting.bytes;
        }
        Some((waiting, reserved))
    }

    /// The batches up to `through` failed. Answers whether this is news
    /// (the backend must be told to resume). The changes other than
    /// publishes of every batch submitted so far — all of them fail — are
    /// kept to go first in the next batch ([`take_lost`](Self::take_lost)):
    /// not at once, which would retry as fast as the disk refuses.
    pub fn failed(&mut self, through: u64) -> bool {
        if through <= self.failed_through {
            self.forget_answered(through);
            return false;
        }
        self.failed_through = self.last_batch;
        self.reserved_bytes = 0;
        let lost = self.unanswered.drain(..).flat_map(|(_, changes)| changes);
        self.lost.extend(lost);
        true
    }

    pub fn has_lost(&self) -> bool {
        !self.lost.is_empty()
    }

    /// The changes of failed batches, to be submitted again.
    pub fn take_lost(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.lost)
    }

    /// The next publish waiting on a failed batch up to `through`.
    pub fn refused(&mut self, through: u64) -> Option<Waiting> {
        self.take(through)
    }

    fn forget_answered(&mut self, through: u64) {
        while self.unanswered.front().is_some_and(|(b, _)| *b <= through) {
            self.unanswered.pop_front();
        }
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

    fn wait_on(commits: &mut Commits, device: &DeviceId) -> u64 {
        let batch = commits.next_batch();
        let event = crate::test_support::event(1);
        let (reply, _) = oneshot::channel();
        commits.wait(Waiting {
            batch,
            events: vec![(device.clone(), event)],
            retain: false,
            bytes: 5,
            reply,
        });
        batch
    }

    #[test]
    fn a_commit_releases_its_reservations_and_a_failure_every_one_made_before_it_was_known() {
        let device = DeviceId::parse("d").unwrap();
        let mut commits = Commits::after(10);
        let first = wait_on(&mut commits, &device);
        assert_eq!(first, 11, "numbered on from the snapshot");
        assert_eq!(commits.reserved_bytes(), 5);
        let (_, reserved) = commits.committed(first).unwrap();
        assert!(
            reserved,
            "its ids were still reserved: the store releases them"
        );
        assert_eq!(commits.reserved_bytes(), 0);

        // Two publishes in flight; the first fails, then the second because
        // of it: the store resumes the backend (and releases every
        // session's reserved ids) once.
        let second = wait_on(&mut commits, &device);
        let third = wait_on(&mut commits, &device);
        let block = Change::Unblock {
            device: device.clone(),
        };
        commits.track(third, std::slice::from_ref(&block));
        assert!(commits.failed(second), "news: resume the backend");
        let lost = commits.take_lost();
        assert!(
            matches!(&lost[..], [Change::Unblock { .. }]),
            "the third's change comes back to be submitted again: {lost:?}"
        );
        assert!(commits.refused(second).is_some());
        assert!(!commits.failed(third), "a consequence, not news");
        assert!(commits.refused(third).is_some());
        assert_eq!(commits.reserved_bytes(), 0);

        // A failure of the next publish is news again.
        let fourth = wait_on(&mut commits, &device);
        assert!(commits.failed(fourth));
    }
}
