//! The store on the cluster backend ([`Cluster`]): Redis holds the sessions
//! and gives ids, so the store keeps only which of this node's streams own
//! which device, under which generation, and holds what Redis routes to a
//! device while its stream is being attached.
//!
//! A connect's attach script and the events routed to this node travel on
//! different Redis connections, so an event published right after the
//! attach can arrive before the attach's answer: it waits in `attaching`
//! and follows the replay (the stream skips any it already has).

use std::collections::HashMap;

use actix::prelude::*;
use bytestring::ByteString;

use super::{BroadcastReceipt, Connect, ConnectError, PublishReceipt, SessionStore};
use crate::{
    ConnectionId, DeviceId, Epoch, EventId, EventName, Opening, Progress, Start, StoredEvent,
    cluster::{
        Attached, Cluster, DeliverRouted, DisconnectInterrupted, DisconnectTakenOver, TakenBy,
    },
    connection::{Disconnect, Ending, Replacement},
    kicks::Refusal,
    registry::{ConnectLive, DeliverEach, DisconnectLive},
    session::locate,
    storage::StoreError,
};

/// Which devices this node's streams own, and what waits for streams being
/// attached.
#[derive(Default)]
pub(super) struct Routing {
    owned: HashMap<DeviceId, Owned>,
    attaching: HashMap<DeviceId, Attaching>,
}

struct Owned {
    connection_id: ConnectionId,
    generation: u64,
    epoch: Epoch,
    progress: Progress,
}

struct Attaching {
    connection_id: ConnectionId,
    held: Vec<StoredEvent>,
}

impl SessionStore {
    /// A connect on the cluster: Redis makes this node the device's owner
    /// and answers the replay; then the stream goes live.
    pub(super) fn connect_on(
        &mut self,
        cluster: Cluster,
        msg: Connect,
    ) -> ResponseActFuture<Self, Result<(), ConnectError>> {
        let since = (msg.last_event_id.as_deref()).and_then(|raw| EventId::parse(raw).ok());
        let attaching = Attaching {
            connection_id: msg.connection_id,
            held: Vec::new(),
        };
        self.routing.attaching.insert(msg.device.clone(), attaching);
        let ttl = self.storage.ttl();
        let stream = (msg.connection_id, msg.peer.clone());
        let attach = cluster.attach(msg.device.clone(), since, stream, ttl);
        Box::pin(attach.into_actor(self).map(move |attached, act, _| {
            let held = match act.routing.attaching.get(&msg.device) {
                Some(mine) if mine.connection_id == msg.connection_id => {
                    act.routing.attaching.remove(&msg.device).map(|a| a.held)
                }
                _ => None,
            };
            let attached = attached.map_err(|e| ConnectError::Full(StoreError::Write(e)))?;
            let Some(attached) = attached else {
                log::info!(
                    "device.refused device={} addr={} instance={} reason={}",
                    msg.device,
                    msg.peer,
                    msg.instance.as_deref().unwrap_or("-"),
                    Refusal::Blocked.as_str()
                );
                return Err(ConnectError::Refused(Refusal::Blocked));
            };
            let newer = (act.routing.owned.get(&msg.device))
                .is_some_and(|owned| owned.generation > attached.generation);
            if newer {
                // A later connect of the device on this node went live
                // first: this one ends before it begins, and its client
                // resumes.
                msg.connection.do_send(Disconnect {
                    ending: Ending::Superseded,
                });
                return Ok(());
            }
            let owned = Owned {
                connection_id: msg.connection_id,
                generation: attached.generation,
                epoch: attached.epoch,
                progress: msg.progress,
            };
            act.routing.owned.insert(msg.device.clone(), owned);
            let opening = opening(attached, msg.last_event_id.as_deref());
            act.registry.do_send(ConnectLive {
                device: msg.device.clone(),
                connection_id: msg.connection_id,
                connection: msg.connection,
                instance: msg.instance,
                peer: msg.peer,
                opening,
            });
            if let Some(held) = held.filter(|held| !held.is_empty()) {
                let events = held.into_iter().map(|e| (msg.device.clone(), e)).collect();
                act.registry.do_send(DeliverEach { events });
            }
            Ok(())
        }))
    }

    /// A publish on the cluster: Redis gives the ids and routes the event.
    pub(super) fn publish_on(
        &self,
        cluster: Cluster,
        devices: Vec<DeviceId>,
        event: (EventName, ByteString),
        retain: bool,
    ) -> ResponseFuture<Result<Vec<PublishReceipt>, StoreError>> {
        let config = self.storage.config().clone();
        Box::pin(async move {
            let receipts = cluster.publish(devices, event, retain, &config).await?;
            Ok((receipts.into_iter())
                .map(|(id, delivered)| PublishReceipt { id, delivered })
                .collect())
        })
    }

    /// A broadcast on the cluster: to every device with a session, on every
    /// node. A retained broadcast is refused: its bound on retained names
    /// could not be checked for all devices at once.
    pub(super) fn broadcast_on(
        &self,
        cluster: Cluster,
        event: (EventName, ByteString),
        retain: bool,
    ) -> ResponseFuture<Result<BroadcastReceipt, StoreError>> {
        let config = self.storage.config().clone();
        Box::pin(async move {
            if retain {
                return Err(StoreError::NotOnCluster("retained broadcasts"));
            }
            let (buffered, delivered) = cluster.broadcast(event, &config).await?;
            Ok(BroadcastReceipt {
                buffered,
                delivered,
            })
        })
    }

    /// Ends the sessions whose TTL passed, on any node.
    pub(super) fn sweep_on(&self, cluster: Cluster) {
        let ttl = self.storage.ttl();
        actix::spawn(async move {
            if let Ok(ended) = cluster.sweep(ttl).await {
                for (device, buffered) in ended {
                    log::info!("session.expired device={device} buffered={buffered}");
                }
            }
        });
    }

    /// A stream of this node ended: unless another stream took the device
    /// over, the node gives it up and records what the stream wrote.
    pub(super) fn disconnect_on(
        &mut self,
        cluster: Cluster,
        device: DeviceId,
        connection_id: ConnectionId,
    ) {
        let mine =
            (self.routing.owned.get(&device)).is_some_and(|o| o.connection_id == connection_id);
        let Some(owned) = mine.then(|| self.routing.owned.remove(&device)).flatten() else {
            return;
        };
        let written = EventId {
            epoch: owned.epoch,
            seq: owned.progress.written(),
        };
        let ttl = self.storage.ttl();
        actix::spawn(async move {
            // Fenced (another node owns it now): only the position counts.
            let _ = (cluster.detach(device, (owned.generation, written), ttl)).await;
        });
    }
}

/// Where a stream starts, from what Redis answered and the position the
/// client claimed.
fn opening(attached: Attached, last_event_id: Option<&str>) -> Opening {
    let through = EventId {
        epoch: attached.epoch,
        seq: attached.last_seq,
    };
    let start = match last_event_id {
        _ if attached.resumed => Start::Resumed,
        Some(raw) => Start::Reset {
            reason: locate(raw, through, attached.oldest)
                .err()
                .unwrap_or(crate::ResetReason::Invalid),
            last_event_id: Some(raw.to_owned()),
        },
        None if attached.written + 1 < attached.oldest => Start::Reset {
            reason: crate::ResetReason::Evicted,
            last_event_id: None,
        },
        None => Start::Fresh,
    };
    // As on one node: a stream without a usable position gets the retained
    // state, except a retained event still to be written, which goes out
    // once, as history with its id.
    let state = match start {
        Start::Resumed => Vec::new(),
        _ => {
            let first_unwritten = attached.events.first().map_or(u64::MAX, |e| e.id.seq);
            let waiting =
                |e: &StoredEvent| e.id.epoch == through.epoch && e.id.seq >= first_unwritten;
            attached
                .retained
                .into_iter()
                .filter(|e| !waiting(e))
                .collect()
        }
    };
    Opening {
        start,
        state,
        unread: None,
        replay: attached.events,
        through,
    }
}

impl Handler<DeliverRouted> for SessionStore {
    type Result = ();

    fn handle(&mut self, msg: DeliverRouted, _: &mut Self::Context) {
        let mut live = Vec::with_capacity(msg.events.len());
        for (device, event) in msg.events {
            match self.routing.attaching.get_mut(&device) {
                Some(attaching) => attaching.held.push(event),
                None => live.push((device, event)),
            }
        }
        if !live.is_empty() {
            self.registry.do_send(DeliverEach { events: live });
        }
    }
}

impl Handler<DisconnectTakenOver> for SessionStore {
    type Result = ();

    fn handle(&mut self, msg: DisconnectTakenOver, _: &mut Self::Context) {
        let older = (self.routing.owned.get(&msg.device))
            .is_some_and(|owned| owned.generation < msg.generation);
        if !older {
            return;
        }
        // Its entry stays until the stream ends: its end still records what
        // it wrote (the ownership part is fenced).
        let ending = match msg.by {
            TakenBy::Stream(by) => Ending::Replaced(Replacement {
                by,
                instances: (None, None),
                peers: ("-".to_owned(), "another node".to_owned()),
            }),
            TakenBy::Admin => Ending::Admin,
            TakenBy::Blocked => Ending::Blocked,
            TakenBy::Deleted => Ending::Deleted,
        };
        self.registry.do_send(DisconnectLive {
            device: msg.device,
            ending,
        });
    }
}

impl Handler<DisconnectInterrupted> for SessionStore {
    type Result = ();

    fn handle(&mut self, _: DisconnectInterrupted, _: &mut Self::Context) {
        for (device, _) in self.routing.owned.drain() {
            self.registry.do_send(DisconnectLive {
                device,
                ending: Ending::Resync,
            });
        }
    }
}
