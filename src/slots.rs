//! Slots: how many of something are open, in all and per remote address —
//! streams (`limits.max_streams…`) and connections (`limits.max_connections…`).
//! A stream claims a [`Slot`] before it starts and the response holds it, so
//! it is released exactly when the HTTP response ends, however it ends; a
//! connection's slot is held by its socket.

use prometheus::IntGauge;
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
};

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefusal {
    /// The server-wide limit is reached.
    ServerFull,
    /// The limit for this address is reached.
    AddressFull,
}

pub struct Slots {
    max_total: usize,
    max_per_address: usize,
    /// Shows how many are open (e.g. `herald_streams`).
    gauge: IntGauge,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

impl Slots {
    pub fn new(max_total: usize, max_per_address: usize, gauge: IntGauge) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_address,
            gauge,
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
        self.gauge.inc();
        Ok(Slot {
            slots: Arc::clone(self),
            address,
        })
    }
}

/// One claim; released on drop.
pub struct Slot {
    slots: Arc<Slots>,
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
        self.slots.gauge.dec();
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
        let gauge = IntGauge::new("test_open", "open").unwrap();
        let slots = Slots::new(3, 2, gauge.clone());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = slots.claim(a).unwrap();
        let _second = slots.claim(a).unwrap();
        assert_eq!(slots.claim(a).err(), Some(SlotRefusal::AddressFull));
        let _third = slots.claim(b).unwrap();
        assert_eq!(slots.claim(b).err(), Some(SlotRefusal::ServerFull));
        assert_eq!(gauge.get(), 3);
        drop(first);
        assert_eq!(gauge.get(), 2);
        assert!(slots.claim(a).is_ok());
    }
}
