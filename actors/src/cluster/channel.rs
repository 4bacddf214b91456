//! This node's channel on Redis (`<prefix>node:<node>`): what the scripts
//! route to the streams this node holds, handed to the store as messages.
//! A lost subscription is taken up again by itself; what was routed here
//! meanwhile may be lost, so the store then ends the node's streams and
//! their clients resume.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use actix::prelude::*;
use bytestring::ByteString;
use futures_util::StreamExt as _;
use redis::aio::ConnectionManager;
use serde::Deserialize;

use super::{
    decode::{instant_of, parse_epoch},
    health::Health,
};
use crate::{ConnectionId, DeviceId, EventId, EventName, SessionStore, StoredEvent};

/// This node's channel, subscribed.
pub struct Subscription {
    pub(super) client: redis::Client,
    /// The commands' connection, checked before the node counts Redis back.
    pub(super) conn: ConnectionManager,
    pub(super) channel: String,
    pub(super) messages: redis::aio::PubSubStream,
    pub(super) health: Arc<Health>,
}

/// How often a node whose subscription was lost tries to subscribe again.
const RESUBSCRIBE_EVERY: Duration = Duration::from_millis(250);

impl Subscription {
    /// Hands what arrives on the node's channel to `store`, from now on.
    /// When the subscription is lost (Redis gone, the connection cut), what
    /// was routed here meanwhile is lost with it: once subscribed again,
    /// the store ends this node's streams and their clients resume.
    pub fn forward_to(self, store: Addr<SessionStore>) {
        let Self {
            client,
            mut conn,
            channel,
            mut messages,
            health,
        } = self;
        actix::spawn(async move {
            loop {
                while let Some(message) = messages.next().await {
                    let Ok(payload) = message.get_payload::<String>() else {
                        continue;
                    };
                    match serde_json::from_str(&payload) {
                        Ok(routed) => route(routed, &store),
                        Err(error) => {
                            log::error!("cluster.unreadable channel={channel} error=\"{error}\"")
                        }
                    }
                }
                health.failed(&"the subscription to this node's channel was lost");
                messages = loop {
                    tokio::time::sleep(RESUBSCRIBE_EVERY).await;
                    if let Ok(mut pubsub) = client.get_async_pubsub().await
                        && pubsub.subscribe(&channel).await.is_ok()
                    {
                        break pubsub.into_on_message();
                    }
                };
                // The commands' connection reconnects on the first command
                // that fails: one that succeeds shows it is back too.
                while (redis::cmd("PING").query_async::<()>(&mut conn).await).is_err() {
                    tokio::time::sleep(RESUBSCRIBE_EVERY).await;
                }
                health.answered();
                store.do_send(DisconnectInterrupted);
            }
        });
    }
}

/// The node's subscription was lost and is back: what was routed to its
/// streams meanwhile may be lost, so they end and their clients resume.
/// Sent by the subscription to the store, and by the store to itself when
/// its liveness in Redis had lapsed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DisconnectInterrupted;

/// What a node channel carries, as `publish.lua` and `attach.lua` encode it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Routed {
    Event {
        name: String,
        data: String,
        published: u64,
        /// Device, epoch, seq.
        to: Vec<(String, String, u64)>,
    },
    Kick {
        device: String,
        generation: u64,
        /// `replaced`, `admin`, `blocked` or `deleted`.
        ending: String,
        /// The newer stream's connection, for `replaced`.
        by: Option<String>,
        /// The newer stream's instance, for `replaced`.
        instance: Option<String>,
    },
}

/// Events Redis routed to this node, for the streams it holds. Sent by the
/// node channel's listener to the store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeliverRouted {
    pub events: Vec<(DeviceId, StoredEvent)>,
}

/// The device's stream here must end if it is older than `generation`:
/// another node took the device over, or an operator ended it there. Sent
/// by the node channel's listener to the store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DisconnectTakenOver {
    pub device: DeviceId,
    pub generation: u64,
    pub by: TakenBy,
}

/// Who ended a stream through Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakenBy {
    /// A newer stream of the device, on another node, and its instance.
    Stream(ConnectionId, Option<String>),
    /// An operator; the client may come straight back.
    Admin,
    /// An operator, who also blocked the device's connects.
    Blocked,
    /// The device was deleted.
    Deleted,
}

/// Hands what a node channel carried to the store; text that is not a
/// device id or an event name is dropped (only herald writes there).
fn route(routed: Routed, store: &Addr<SessionStore>) {
    match routed {
        Routed::Event {
            name,
            data,
            published,
            to,
        } => {
            let Ok(name) = EventName::parse(&name) else {
                return;
            };
            let data = ByteString::from(data);
            let published_at = instant_of(published, (SystemTime::now(), Instant::now()));
            let events = (to.into_iter())
                .filter_map(|(device, epoch, seq)| {
                    let device = DeviceId::parse(&device).ok()?;
                    let event = StoredEvent {
                        id: EventId {
                            epoch: parse_epoch(&epoch).ok()?,
                            seq,
                        },
                        name: name.clone(),
                        data: data.clone(),
                        published_at,
                        batch: 0,
                    };
                    Some((device, event))
                })
                .collect();
            store.do_send(DeliverRouted { events });
        }
        Routed::Kick {
            device,
            generation,
            ending,
            by,
            instance,
        } => {
            let by = match ending.as_str() {
                "admin" => Some(TakenBy::Admin),
                "blocked" => Some(TakenBy::Blocked),
                "deleted" => Some(TakenBy::Deleted),
                _ => (by.as_deref().and_then(ConnectionId::parse))
                    .map(|by| TakenBy::Stream(by, instance.filter(|i| !i.is_empty()))),
            };
            if let (Ok(device), Some(by)) = (DeviceId::parse(&device), by) {
                store.do_send(DisconnectTakenOver {
                    device,
                    generation,
                    by,
                });
            }
        }
    }
}
