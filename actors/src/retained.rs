//! One device's retained events: the latest event of each name published with
//! `retain`, kept beyond the replay buffer and beyond the session itself, so a
//! device that lost its position gets the current state instead of a hole.
//! Owned by the [`SessionStore`](crate::SessionStore).
//!
//! They are state, not history: a stream sends them without an id, so they
//! never become a client's position. Each keeps the id it was published with,
//! only to recognise it among the buffered events.
//!
//! Invariant: at most one event per name, in the order they were published.

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

    /// The retained event named `name`, if any.
    pub fn named(&self, name: &EventName) -> Option<&StoredEvent> {
        self.events.iter().find(|e| &e.name == name)
    }

    /// Keeps `event` as the latest of its name; answers the one it replaced.
    pub fn keep(&mut self, event: StoredEvent) -> Option<StoredEvent> {
        let replaced = (self.events.iter())
            .position(|e| e.name == event.name)
            .map(|at| self.events.remove(at));
        self.events.push(event);
        replaced
    }

    pub fn events(&self) -> &[StoredEvent] {
        &self.events
    }
}

pub(crate) fn signed(bytes: usize) -> isize {
    isize::try_from(bytes).unwrap_or(isize::MAX)
}
