//! The store's publish path: ids reserved, the event submitted to the
//! backend, and once the backend answers, the event appended to its sessions
//! and handed to the registry — or the publish refused with the backend's
//! error and its reservations dropped (see [`Commits`](crate::commits::Commits)).

use std::time::SystemTime;

use actix::prelude::*;
use bytestring::ByteString;
use tokio::sync::oneshot;

use super::{PublishReceipt, SessionStore};
use crate::{
    DeviceId, EventName, StoredEvent,
    backend::{Change, WriteError},
    commits::Waiting,
    registry::DeliverEach,
    storage::StoreError,
};

impl SessionStore {
    /// Hands the backend, as batch `batch`, the changes made since the last
    /// call and `more`.
    pub(super) fn submit(&mut self, batch: u64, more: Option<Change>) {
        // Those of failed batches first: they were made before.
        let mut changes = self.commits.take_lost();
        changes.extend(self.storage.take_changes());
        changes.extend(more);
        self.send(batch, changes);
    }

    fn send(&mut self, batch: u64, changes: Vec<Change>) {
        if self.closed {
            // After `CloseStorage`: a stream that ended late, a timer.
            return;
        }
        if self.backend.keeps_nothing() {
            // Nothing to wait for: the memory backend keeps nothing.
            self.committed(batch, Ok(()));
            return;
        }
        self.commits.track(batch, &changes);
        self.backend.submit(batch, changes);
    }

    /// Saves a change to a reconnect block, with the changes before it.
    pub(super) fn save_block(&mut self, change: Change) {
        let batch = self.commits.next_batch();
        self.submit(batch, Some(change));
    }

    /// Hands the backend the changes made since the last call, and those of
    /// failed batches, if any.
    pub(super) fn save(&mut self) {
        if self.storage.has_changes() || self.commits.has_lost() {
            let batch = self.commits.next_batch();
            self.submit(batch, None);
        }
    }

    /// The backend's answer for the batches up to `through`: committed
    /// publishes reach their sessions and the registry (in commit order,
    /// which is id order); failed ones are refused with the backend's error.
    pub(super) fn committed(&mut self, through: u64, result: Result<(), WriteError>) {
        if let Err(error) = result {
            if self.commits.failed(through) {
                // Every publish in flight fails: their ids are given again.
                self.storage.release_reserved();
                self.backend.resume();
            }
            while let Some(waiting) = self.commits.refused(through) {
                let _ = waiting.reply.send(Err(error.into()));
            }
            return;
        }
        // One delivery for everything the commit covered; each publish is
        // answered its share of the registry's answer.
        let (mut events, mut replies) = (Vec::new(), Vec::new());
        while let Some((waiting, reserved)) = self.commits.committed(through) {
            let how = (waiting.retain, waiting.events.len() > 1, reserved);
            let before = events.len();
            (self.storage).append(waiting.events, how, &mut events);
            replies.push((waiting.reply, events.len() - before));
        }
        self.save();
        if replies.is_empty() {
            return;
        }
        let delivery = self.registry.send(DeliverEach { events });
        actix::spawn(async move {
            let delivered = delivery.await.unwrap_or_default();
            let mut delivered = delivered.into_iter().chain(std::iter::repeat(false));
            for (reply, count) in replies {
                let _ = reply.send(Ok(delivered.by_ref().take(count).collect()));
            }
        });
    }

    /// Publishes one event to each of `devices` — all of them or, if a bound
    /// refuses, none: reserves their ids and submits the event to the
    /// backend; once committed, it goes to the sessions and, through the
    /// registry's unbounded mailbox (FIFO with `ConnectLive`), to the live
    /// streams. Only the answers are awaited.
    pub(super) fn publish(
        &mut self,
        devices: Vec<DeviceId>,
        name: EventName,
        data: ByteString,
        retain: bool,
    ) -> ResponseFuture<Result<Vec<PublishReceipt>, StoreError>> {
        let size = name.as_str().len() + data.len();
        let reserved = self.commits.reserved_bytes();
        let admitted = (self.storage).admit(&devices, &name, size, retain, reserved);
        let bytes = match admitted {
            Ok(growth) => growth,
            Err(refused) => return Box::pin(async move { Err(refused) }),
        };
        let published_at = std::time::Instant::now();
        let batch = self.commits.next_batch();
        let events: Vec<_> = devices
            .into_iter()
            .map(|device| {
                let event = StoredEvent {
                    id: self.storage.reserve_id(&device),
                    name: name.clone(),
                    data: data.clone(),
                    published_at,
                    batch,
                };
                (device, event)
            })
            .collect();
        let ids: Vec<_> = events.iter().map(|(_, event)| event.id).collect();
        let append = Change::Append {
            batch,
            to: events.iter().map(|(d, e)| (d.clone(), e.id)).collect(),
            name,
            data,
            published: SystemTime::now(),
            retain,
        };
        let (reply, outcome) = oneshot::channel();
        self.commits.wait(Waiting {
            batch,
            events,
            retain,
            bytes,
            reply,
        });
        self.submit(batch, Some(append));
        Box::pin(async move {
            let outcome = outcome.await.map_err(|_| WriteError::Unavailable)?;
            let delivered = outcome?.into_iter().chain(std::iter::repeat(false));
            Ok(ids
                .into_iter()
                .zip(delivered)
                .map(|(id, delivered)| PublishReceipt { id, delivered })
                .collect())
        })
    }
}
