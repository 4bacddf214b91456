//! SessionStore: the single entry point for publishing and for attaching a
//! stream. It owns the [`Storage`] (every device's session, replay buffer,
//! id sequence and retained events) and routes what it stores to the
//! [`DeviceRegistry`].
//!
//! Invariants:
//! - every published event is appended here first and gets the next id of its
//!   session, whether or not the device is connected;
//! - the store forwards to the [`DeviceRegistry`] with FIFO sends from this one
//!   actor, so a stream's replay (sent in `Register`) always reaches it before
//!   any event published after the replay was cut: nothing lost, nothing twice;
//! - a publish that would break a bound (sessions, bytes, retained names) is
//!   refused before anything changes;
//! - a session with no attached stream is removed `ttl` after it detached; the
//!   sweep visits only sessions that are due (an index ordered by expiry).
//!   Retained events outlive it.

use std::time::Duration;

use actix::prelude::*;
use bytestring::ByteString;

use crate::{
    ConnectionId, DeviceConnection, DeviceId, EventId, EventName, Progress,
    registry::{CloseDevice, DeliverEach, DeviceRegistry, Register},
    storage::{DevicePage, DeviceView, SessionConfig, Storage, StoreError},
};

/// Attach a new stream to its device's session (creating the session if
/// needed). The store decides where the stream starts and hands the stream,
/// with its replay, to the registry. Sent by the stream route.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct Attach {
    pub device: DeviceId,
    pub connection_id: ConnectionId,
    pub connection: Addr<DeviceConnection>,
    /// Where the connection reports what it wrote.
    pub progress: Progress,
    /// The client's claimed position, untrusted.
    pub last_event_id: Option<String>,
    /// The client's own name for itself, if it gave one.
    pub instance: Option<String>,
    /// The client's address, for logs.
    pub peer: String,
}

/// Publish one event to each of these devices: all or, if a bound refuses,
/// none. Answers one receipt per device, in order. Sent by the admin publish
/// routes.
#[derive(Message)]
#[rtype(result = "Result<Vec<PublishReceipt>, StoreError>")]
pub struct Publish {
    /// Distinct devices (a device named twice would get the event twice).
    pub devices: Vec<DeviceId>,
    pub name: EventName,
    pub data: ByteString,
    /// Also keep it as the device's latest event of this name.
    pub retain: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishReceipt {
    pub id: EventId,
    /// Handed to the device's live stream (otherwise it waits in the buffer).
    pub delivered: bool,
}

/// Publish one event to every device that has a session. Sent by the admin
/// broadcast route.
#[derive(Message)]
#[rtype(result = "Result<BroadcastReceipt, StoreError>")]
pub struct Broadcast {
    pub name: EventName,
    pub data: ByteString,
    pub retain: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BroadcastReceipt {
    /// Sessions that buffered the event.
    pub buffered: usize,
    /// Of those, how many had a live stream it was handed to.
    pub delivered: usize,
}

/// A stream ended; its session starts counting down its TTL unless another
/// stream is already attached. Sent by the registry.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Detach {
    pub device: DeviceId,
    pub connection_id: ConnectionId,
}

/// A stream of this device was kicked while its client was there; the admin
/// view counts it. Sent by the kicked connection, before it writes `kicked`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CountKick {
    pub device: DeviceId,
}

/// Forget a device: its session, buffer and retained events; its stream is
/// ended. Answers whether there was anything to forget. Sent by the admin
/// delete route.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct DeleteDevice {
    pub device: DeviceId,
}

/// One device as the admin API shows it; `None` if herald holds nothing for
/// it. Sent by the admin device route.
#[derive(Message)]
#[rtype(result = "Option<DeviceView>")]
pub struct DescribeDevice {
    pub device: DeviceId,
}

/// A page of devices that have a session, in device-id order after `after`
/// (see `Storage::page`).
/// Sent by the admin device list route.
#[derive(Message)]
#[rtype(result = "DevicePage")]
pub struct ListDevices {
    /// Only attached (`true`) or detached (`false`) sessions.
    pub connected: Option<bool>,
    pub after: Option<DeviceId>,
    pub limit: usize,
}

/// How many sessions the store holds. Sent by the readiness probe; that it
/// is answered at all is what the probe checks.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CountSessions;

/// Ends sessions whose TTL has passed. Sent by the store to itself on a timer
/// and by tests.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SweepExpired;

pub struct SessionStore {
    storage: Storage,
    registry: Addr<DeviceRegistry>,
}

impl SessionStore {
    pub fn new(config: SessionConfig, registry: Addr<DeviceRegistry>) -> Self {
        Self {
            storage: Storage::new(config),
            registry,
        }
    }

    /// Publishes one event to each of `devices` — all of them or, if a bound
    /// refuses, none — and routes each to its live stream. `send` enqueues at
    /// once (the registry's mailbox is unbounded), keeping FIFO order with
    /// `Register`; only the answer is awaited.
    fn publish(
        &mut self,
        devices: Vec<DeviceId>,
        name: EventName,
        data: ByteString,
        retain: bool,
    ) -> ResponseFuture<Result<Vec<PublishReceipt>, StoreError>> {
        let size = name.as_str().len() + data.len();
        if let Err(refused) = self.storage.admit(devices.iter(), &name, size, retain) {
            return Box::pin(async move { Err(refused) });
        }
        let events: Vec<_> = devices
            .into_iter()
            .map(|device| {
                let event = self
                    .storage
                    .append(&device, name.clone(), data.clone(), retain);
                (device, event)
            })
            .collect();
        let ids: Vec<_> = events.iter().map(|(_, event)| event.id).collect();
        let delivery = self.registry.send(DeliverEach { events });
        Box::pin(async move {
            let delivered = delivery.await.unwrap_or_default();
            let delivered = delivered.into_iter().chain(std::iter::repeat(false));
            Ok(ids
                .into_iter()
                .zip(delivered)
                .map(|(id, delivered)| PublishReceipt { id, delivered })
                .collect())
        })
    }
}

impl Actor for SessionStore {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let sweep_every =
            (self.storage.ttl() / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
        ctx.run_interval(sweep_every, |_, ctx| ctx.notify(SweepExpired));
    }
}

impl Handler<Attach> for SessionStore {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, msg: Attach, _: &mut Self::Context) -> Self::Result {
        let last_event_id = msg.last_event_id.as_deref();
        let opening = self.storage.attach(
            &msg.device,
            msg.connection_id,
            msg.progress,
            last_event_id,
            &msg.peer,
        )?;
        self.registry.do_send(Register {
            device: msg.device,
            connection_id: msg.connection_id,
            connection: msg.connection,
            instance: msg.instance,
            peer: msg.peer,
            opening,
        });
        Ok(())
    }
}

impl Handler<Publish> for SessionStore {
    type Result = ResponseFuture<Result<Vec<PublishReceipt>, StoreError>>;

    fn handle(&mut self, msg: Publish, _: &mut Self::Context) -> Self::Result {
        self.publish(msg.devices, msg.name, msg.data, msg.retain)
    }
}

impl Handler<Broadcast> for SessionStore {
    type Result = ResponseFuture<Result<BroadcastReceipt, StoreError>>;

    fn handle(&mut self, msg: Broadcast, _: &mut Self::Context) -> Self::Result {
        let published = self.publish(self.storage.devices(), msg.name, msg.data, msg.retain);
        Box::pin(async move {
            let receipts = published.await?;
            Ok(BroadcastReceipt {
                buffered: receipts.len(),
                delivered: receipts.iter().filter(|r| r.delivered).count(),
            })
        })
    }
}

impl Handler<Detach> for SessionStore {
    type Result = ();

    fn handle(&mut self, msg: Detach, _: &mut Self::Context) {
        self.storage.detach(&msg.device, msg.connection_id);
    }
}

impl Handler<CountKick> for SessionStore {
    type Result = ();

    fn handle(&mut self, msg: CountKick, _: &mut Self::Context) {
        self.storage.count_kick(&msg.device);
    }
}

impl Handler<DeleteDevice> for SessionStore {
    type Result = bool;

    fn handle(&mut self, msg: DeleteDevice, _: &mut Self::Context) -> bool {
        let existed = self.storage.delete(&msg.device);
        if existed {
            log::info!("device.deleted device={}", msg.device);
            self.registry.do_send(CloseDevice { device: msg.device });
        }
        existed
    }
}

impl Handler<DescribeDevice> for SessionStore {
    type Result = Option<DeviceView>;

    fn handle(&mut self, msg: DescribeDevice, _: &mut Self::Context) -> Self::Result {
        self.storage.view(&msg.device)
    }
}

impl Handler<ListDevices> for SessionStore {
    type Result = MessageResult<ListDevices>;

    fn handle(&mut self, msg: ListDevices, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.storage
                .page(msg.connected, msg.after.as_ref(), msg.limit),
        )
    }
}

impl Handler<CountSessions> for SessionStore {
    type Result = usize;

    fn handle(&mut self, _: CountSessions, _: &mut Self::Context) -> usize {
        self.storage.len()
    }
}

impl Handler<SweepExpired> for SessionStore {
    type Result = ();

    fn handle(&mut self, _: SweepExpired, _: &mut Self::Context) {
        for (device, buffered) in self.storage.sweep(tokio::time::Instant::now()) {
            log::info!("session.expired device={device} buffered={buffered}");
        }
    }
}

#[cfg(test)]
mod tests;
