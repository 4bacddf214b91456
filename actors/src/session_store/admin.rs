//! The store's side of the admin API's device endpoints: end a device's
//! stream, forget a device, describe one, show its newest and retained
//! events, list them. On the cluster backend
//! each is one script in Redis, so it sees and reaches every node.

use std::time::Instant;

use actix::prelude::*;

use super::SessionStore;
use crate::{
    DeviceId,
    backend::{Change, wall_in},
    cluster::TakenBy,
    connection::Ending,
    registry::DisconnectLive,
    storage::{DevicePage, DevicePeek, DeviceView, StoreError},
};

/// End a device's live stream through the admin API. With `reconnect`, the
/// stream just ends (the client comes back); without, it gets `kicked`
/// (reason `admin`) and the device's connects are refused for
/// `kicks.reconnect_block`. Answers whether there was a live stream. Sent by
/// the admin route.
#[derive(Message)]
#[rtype(result = "Result<bool, StoreError>")]
pub struct DisconnectDevice {
    pub device: DeviceId,
    pub reconnect: bool,
}

/// Forget a device: its session, buffer and retained events; its stream is
/// ended. Answers whether there was anything to forget. Sent by the admin
/// delete route.
#[derive(Message)]
#[rtype(result = "Result<bool, StoreError>")]
pub struct DeleteDevice {
    pub device: DeviceId,
}

/// One device as the admin API shows it; `None` if herald holds nothing for
/// it. Sent by the admin device route.
#[derive(Message)]
#[rtype(result = "Result<Option<DeviceView>, StoreError>")]
pub struct DescribeDevice {
    pub device: DeviceId,
}

/// A device's newest `limit` buffered events and its retained events;
/// `None` if herald holds nothing for it. Sent by the admin device buffer
/// route.
#[derive(Message)]
#[rtype(result = "Result<Option<DevicePeek>, StoreError>")]
pub struct PeekDevice {
    pub device: DeviceId,
    pub limit: usize,
}

/// A page of devices that have a session, in device-id order after `after`,
/// their ids starting with `prefix` (see `Storage::page`).
/// Sent by the admin device list route.
#[derive(Message)]
#[rtype(result = "Result<DevicePage, StoreError>")]
pub struct ListDevices {
    /// Only attached (`true`) or detached (`false`) sessions.
    pub connected: Option<bool>,
    pub after: Option<DeviceId>,
    /// Only devices whose id starts with this (empty: all).
    pub prefix: String,
    pub limit: usize,
}

impl Handler<DisconnectDevice> for SessionStore {
    type Result = ResponseActFuture<Self, Result<bool, StoreError>>;

    fn handle(&mut self, msg: DisconnectDevice, _: &mut Self::Context) -> Self::Result {
        if let Some(cluster) = self.backend.cluster() {
            let ending = match msg.reconnect {
                true => TakenBy::Admin,
                false => TakenBy::Blocked,
            };
            let block = self.kicks.reconnect_block();
            let ttl = self.storage.ttl();
            let ended = cluster.disconnect(msg.device, ending, (block, ttl));
            return Box::pin(fut::wrap_future(async move { Ok(ended.await?) }));
        }
        if !self.storage.is_attached(&msg.device) {
            return Box::pin(fut::ready(Ok(false)));
        }
        let ending = if msg.reconnect {
            Ending::Admin
        } else {
            // Blocked in the same turn as the stream is told to end, so its
            // client's next connect is refused.
            let blocked_for = self.kicks.block(&msg.device, Instant::now());
            self.save_block(Change::Block {
                device: msg.device.clone(),
                until: wall_in(blocked_for),
            });
            Ending::Blocked
        };
        let device = msg.device.clone();
        let disconnect = self.registry.send(DisconnectLive {
            device: msg.device,
            ending,
        });
        Box::pin(disconnect.into_actor(self).map(move |ended, act, _| {
            let ended = ended.unwrap_or(false);
            // The stream ended on its own meanwhile: the operator is told
            // there was none (404), so nothing of the request may stay.
            if !ended && !msg.reconnect {
                act.kicks.unblock(&device);
                act.save_block(Change::Unblock { device });
            }
            Ok(ended)
        }))
    }
}

impl Handler<DeleteDevice> for SessionStore {
    type Result = ResponseFuture<Result<bool, StoreError>>;

    fn handle(&mut self, msg: DeleteDevice, _: &mut Self::Context) -> Self::Result {
        if let Some(cluster) = self.backend.cluster() {
            let ttl = self.storage.ttl();
            let device = msg.device.clone();
            let deleted = cluster.disconnect(msg.device, TakenBy::Deleted, (ttl, ttl));
            return Box::pin(async move {
                let existed = deleted.await?;
                if existed {
                    log::info!("device.deleted device={device}");
                }
                Ok(existed)
            });
        }
        let existed = self.storage.delete(&msg.device);
        self.save();
        if existed {
            log::info!("device.deleted device={}", msg.device);
            self.registry.do_send(DisconnectLive {
                device: msg.device,
                ending: Ending::Deleted,
            });
        }
        Box::pin(async move { Ok(existed) })
    }
}

impl Handler<DescribeDevice> for SessionStore {
    type Result = ResponseFuture<Result<Option<DeviceView>, StoreError>>;

    fn handle(&mut self, msg: DescribeDevice, _: &mut Self::Context) -> Self::Result {
        if let Some(cluster) = self.backend.cluster() {
            let view = cluster.describe(msg.device);
            return Box::pin(async move { Ok(view.await?) });
        }
        let view = self.storage.view(&msg.device).map(|v| self.flagged(v));
        Box::pin(async move { Ok(view) })
    }
}

impl Handler<ListDevices> for SessionStore {
    type Result = ResponseFuture<Result<DevicePage, StoreError>>;

    fn handle(&mut self, msg: ListDevices, _: &mut Self::Context) -> Self::Result {
        if let Some(cluster) = self.backend.cluster() {
            let page = cluster.page(msg.connected, (msg.after, msg.prefix), msg.limit);
            return Box::pin(async move { Ok(page.await?) });
        }
        let mut page =
            (self.storage).page(msg.connected, (msg.after.as_ref(), &msg.prefix), msg.limit);
        page.devices = page.devices.into_iter().map(|v| self.flagged(v)).collect();
        Box::pin(async move { Ok(page) })
    }
}

impl Handler<PeekDevice> for SessionStore {
    type Result = ResponseFuture<Result<Option<DevicePeek>, StoreError>>;

    fn handle(&mut self, msg: PeekDevice, _: &mut Self::Context) -> Self::Result {
        if let Some(cluster) = self.backend.cluster() {
            let peek = cluster.peek(msg.device, msg.limit);
            return Box::pin(async move { Ok(peek.await?) });
        }
        let peek = self.storage.peek(&msg.device, msg.limit);
        Box::pin(async move { Ok(peek) })
    }
}
