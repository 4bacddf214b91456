//! One device's retained events: the latest event of each name published with
//! `retain`, kept beyond the replay buffer and beyond the session itself, so a
//! device that lost its position gets the current state instead of a hole.
//! Owned by the [`SessionStore`](crate::SessionStore).
//!
//! Invariant: at most one event per name, and every event carries an id of
//! the device's current session (the store re-stamps them into a new session).

use crate::{EventName, StoredEvent};

#[derive(Debug, Default)]
pub struct Retained {
    events: Vec<StoredEvent>,
}

impl Retained {
    /// Whether an event named `name` can be kept without exceeding `max`
    /// names (replacing one of the same name always can).
    pub fn has_room_for(&self, name: &EventName, max: usize) -> bool {
        self.events.len() < max || self.events.iter().any(|e| &e.name == name)
    }

    /// How many bytes keeping an event of `size` bytes named `name` adds
    /// (negative when it replaces a larger one).
    pub fn growth_if_kept(&self, name: &EventName, size: usize) -> isize {
        let replaced = self
            .events
            .iter()
            .find(|e| &e.name == name)
            .map_or(0, StoredEvent::size);
        signed(size) - signed(replaced)
    }

    /// Keeps `event` as the latest of its name.
    pub fn keep(&mut self, event: StoredEvent) {
        match self.events.iter_mut().find(|e| e.name == event.name) {
            Some(slot) => *slot = event,
            None => self.events.push(event),
        }
    }

    pub fn events(&self) -> &[StoredEvent] {
        &self.events
    }

    pub fn bytes(&self) -> usize {
        self.events.iter().map(StoredEvent::size).sum()
    }

    /// Gives every event a place in a new history, oldest first: `publish`
    /// appends a copy to the new session and answers it with its new id.
    pub fn restamp(&mut self, mut publish: impl FnMut(&StoredEvent) -> StoredEvent) {
        self.events.sort_by_key(|e| e.id.seq);
        for event in &mut self.events {
            *event = publish(event);
        }
    }
}

pub(crate) fn signed(bytes: usize) -> isize {
    isize::try_from(bytes).unwrap_or(isize::MAX)
}
