//! Stream slots: how many streams are open, in all and per remote address.
//! A stream claims a [`Slot`] before it starts and the response holds it, so
//! it is released exactly when the HTTP response ends, however it ends.

use herald_actors::metrics;
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
};

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefusal {
    /// `limits.max_streams` streams are open.
    ServerFull,
    /// `limits.max_streams_per_address` streams are open from this address.
    AddressFull,
}

pub struct StreamSlots {
    max_total: usize,
    max_per_address: usize,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

impl StreamSlots {
    pub fn new(max_total: usize, max_per_address: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_address,
            open: Mutex::default(),
        })
    }

    pub fn claim(self: &Arc<Self>, address: IpAddr) -> Result<Slot, SlotRefusal> {
        // The counts stay consistent even if a holder panicked.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= self.max_total {
            return Err(SlotRefusal::ServerFull);
        }
        let from_address = open.per_address.entry(address).or_default();
        if *from_address >= self.max_per_address {
            return Err(SlotRefusal::AddressFull);
        }
        *from_address += 1;
        open.total += 1;
        metrics().streams.inc();
        Ok(Slot {
            slots: Arc::clone(self),
            address,
        })
    }
}

/// One open stream's claim; released on drop.
pub struct Slot {
    slots: Arc<StreamSlots>,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        metrics().streams.dec();
        if let Some(count) = open.per_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.per_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_in_all_and_per_address_and_come_back_on_drop() {
        let slots = StreamSlots::new(3, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = slots.claim(a).unwrap();
        let _second = slots.claim(a).unwrap();
        assert_eq!(slots.claim(a).err(), Some(SlotRefusal::AddressFull));
        let _third = slots.claim(b).unwrap();
        assert_eq!(slots.claim(b).err(), Some(SlotRefusal::ServerFull));
        drop(first);
        assert!(slots.claim(a).is_ok());
    }
}
