//! The bytes the store's buffers and retained events hold, as the
//! server-wide bound (`session.max_total_bytes`) counts them: an event
//! published to several devices at once (a broadcast, a multi-device
//! publish) shares one payload, counted once however many buffers and
//! retained sets hold it. Owned by [`Storage`](crate::storage::Storage).
//!
//! Invariant: `total` is the sum of the unshared events held (once per
//! copy) and of each shared payload (once while any copy is held).

use crate::{Footprint, ids::IdMap};

#[derive(Debug, Default)]
pub struct HeldBytes {
    total: usize,
    /// Copies held of each shared payload, by its storage batch, and its size.
    shared: IdMap<u64, (usize, u32)>,
}

impl HeldBytes {
    pub fn total(&self) -> usize {
        self.total
    }

    /// One more copy of `event` is held; `shared` if its payload went to
    /// several devices.
    pub fn hold(&mut self, event: Footprint, shared: bool) {
        let event_size = event.size as usize;
        if !shared {
            self.total += event_size;
            return;
        }
        let (size, copies) = self.shared.entry(event.batch).or_insert((event_size, 0));
        if *copies == 0 {
            self.total += *size;
        }
        *copies += 1;
    }

    /// What releasing one copy of `event` would give back: its size, or for
    /// a shared payload, its size only if this is its last copy.
    pub fn freed_by(&self, event: Footprint) -> usize {
        match self.shared.get(&event.batch) {
            Some((size, 1)) => *size,
            Some(_) => 0,
            None => event.size as usize,
        }
    }

    /// One copy of `event` is no longer held.
    pub fn release(&mut self, event: Footprint) {
        match self.shared.get_mut(&event.batch) {
            Some((size, copies)) => {
                *copies -= 1;
                if *copies == 0 {
                    self.total = self.total.saturating_sub(*size);
                    self.shared.remove(&event.batch);
                }
            }
            None => self.total = self.total.saturating_sub(event.size as usize),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(batch: u64, data: &str) -> Footprint {
        Footprint {
            batch,
            size: 1 + data.len() as u32,
        }
    }

    #[test]
    fn a_shared_payload_counts_once_until_its_last_copy_goes() {
        let mut held = HeldBytes::default();
        let broadcast = event(7, "123456789");
        for _ in 0..3 {
            held.hold(broadcast, true);
        }
        assert_eq!(held.total(), 10);
        let unicast = event(8, "1234");
        held.hold(unicast, false);
        held.hold(unicast, false);
        assert_eq!(held.total(), 20, "unshared copies count each");
        held.release(broadcast);
        held.release(broadcast);
        assert_eq!(held.total(), 20);
        held.release(broadcast);
        held.release(unicast);
        assert_eq!(held.total(), 5);
    }
}
