//! The store on the cluster backend ([`Cluster`]): Redis holds the sessions
//! and gives ids, so the store keeps only which of this node's streams own
//! which device, under which generation, and holds what Redis routes to a
//! device while its stream is being attached.
//!
//! A connect's attach script and the events routed to this node travel on
//! different Redis connections, so an event published right after the
//! attach can arrive before the attach's answer: every connect waiting for
//! its answer keeps a copy of what arrives for its device, which follows
//! its replay (the stream skips any it already has); what arrives goes to
//! the device's live stream here too, which may be an older one still in
//! charge. A kick or a lost subscription that comes while a connect waits
//! is noted on it, and ends its stream before it begins if it concerns it.

use std::collections::HashMap;

use actix::prelude::*;
use bytestring::ByteString;

use super::{BroadcastReceipt, Connect, ConnectError, PublishReceipt, SessionStore};
use crate::{
    ConnectionId, DeviceId, Epoch, EventId, EventName, Opening, Progress, Start, StoredEvent,
    cluster::{
        Attached, Cluster, DeliverRouted, DisconnectInterrupted, DisconnectTakenOver, NotAttached,
        TakenBy,
    },
    connection::{Disconnect, Ending, Replacement},
    feed,
    registry::{ConnectLive, DeliverEach, DisconnectLive},
    session::locate,
    storage::StoreError,
};

/// Which devices this node's streams own, and what waits for streams being
/// attached.
#[derive(Default)]
pub(super) struct Routing {
    owned: HashMap<DeviceId, Owned>,
    /// Connects waiting for their attach's answer, per device.
    attaching: HashMap<DeviceId, Vec<Attaching>>,
    /// Times the node's subscription was lost and taken up again.
    interruptions: u64,
}

struct Owned {
    connection_id: ConnectionId,
    /// The client's name for itself, for the kick rules.
    instance: Option<String>,
    generation: u64,
    epoch: Epoch,
    progress: Progress,
}

struct Attaching {
    connection_id: ConnectionId,
    held: Vec<StoredEvent>,
    /// The highest generation a kick of the device named meanwhile.
    kicked: u64,
    /// `Routing::interruptions` when the connect began.
    interruptions: u64,
}

impl Routing {
    /// Takes the waiting connect `connection_id` of `device` out.
    fn take_attaching(
        &mut self,
        device: &DeviceId,
        connection_id: ConnectionId,
    ) -> Option<Attaching> {
        let waiting = self.attaching.get_mut(device)?;
        let at = waiting
            .iter()
            .position(|a| a.connection_id == connection_id)?;
        let attaching = waiting.swap_remove(at);
        if waiting.is_empty() {
            self.attaching.remove(device);
        }
        Some(attaching)
    }
}

impl SessionStore {
    /// A connect on the cluster: Redis makes this node the device's owner
    /// and answers the replay; then the stream goes live.
    pub(super) fn connect_on(
        &mut self,
        cluster: Cluster,
        msg: Connect,
    ) -> ResponseActFuture<Self, Result<Option<Opening>, ConnectError>> {
        let since = (msg.last_event_id.as_deref()).and_then(|raw| EventId::parse(raw).ok());
        let attaching = Attaching {
            connection_id: msg.connection_id,
            held: Vec::new(),
            kicked: 0,
            interruptions: self.routing.interruptions,
        };
        (self.routing.attaching.entry(msg.device.clone()))
            .or_default()
            .push(attaching);
        let ttl = self.storage.ttl();
        let stream = (msg.connection_id, msg.peer.clone(), msg.instance.clone());
        let max_sessions = self.storage.config().max_sessions;
        let windows = (ttl, self.kicks.config().instance_window, max_sessions);
        let attach = cluster.attach(msg.device.clone(), since, stream, windows);
        Box::pin(attach.into_actor(self).map(move |attached, act, _| {
            let waited = act.routing.take_attaching(&msg.device, msg.connection_id);
            let attached = attached.map_err(|e| ConnectError::Full(StoreError::Write(e)))?;
            let attached = attached.map_err(|not| match not {
                NotAttached::Full => ConnectError::Full(StoreError::TooManySessions(max_sessions)),
                NotAttached::Refused(refusal) => {
                    log::info!(
                        "device.refused device={} addr={} instance={} reason={}",
                        msg.device,
                        msg.peer,
                        msg.instance.as_deref().unwrap_or("-"),
                        refusal.as_str()
                    );
                    ConnectError::Refused(refusal)
                }
            })?;
            let waited = waited.unwrap_or(Attaching {
                connection_id: msg.connection_id,
                held: Vec::new(),
                kicked: 0,
                interruptions: act.routing.interruptions,
            });
            let newer = (act.routing.owned.get(&msg.device))
                .is_some_and(|owned| owned.generation > attached.generation);
            if newer || waited.kicked > attached.generation {
                // A later connect of the device, here or on another node,
                // took it over first: this one ends before it begins, and
                // its client resumes.
                msg.connection.do_send(Disconnect {
                    ending: Ending::Superseded,
                });
                return Ok(None);
            }
            if waited.interruptions != act.routing.interruptions {
                // The subscription was lost while it waited: what was
                // routed to it meanwhile may be lost.
                msg.connection.do_send(Disconnect {
                    ending: Ending::Resync,
                });
                return Ok(None);
            }
            let held = waited.held;
            let owned = Owned {
                connection_id: msg.connection_id,
                instance: msg.instance.clone(),
                generation: attached.generation,
                epoch: attached.epoch,
                progress: msg.queue.progress(),
            };
            act.routing.owned.insert(msg.device.clone(), owned);
            let opening = opening(attached, msg.last_event_id.as_deref());
            act.registry.do_send(ConnectLive {
                device: msg.device.clone(),
                connection_id: msg.connection_id,
                connection: msg.connection,
                queue: msg.queue,
                instance: msg.instance,
                peer: msg.peer,
                through: opening.through,
            });
            if !held.is_empty() {
                let events = held.into_iter().map(|e| (msg.device.clone(), e)).collect();
                act.registry.do_send(DeliverEach { events });
            }
            Ok(Some(opening))
        }))
    }

    /// A kick found its stream's client there: the kick rules, in Redis.
    pub(super) fn record_kick_on(
        &self,
        cluster: Cluster,
        device: DeviceId,
        replacement: Replacement,
    ) -> ResponseFuture<()> {
        let config = self.kicks.config().clone();
        let policy = self.kicks.policy_name();
        let Replacement {
            instances, peers, ..
        } = replacement;
        Box::pin(async move {
            let flapping = cluster
                .record_kick(device.clone(), instances, &config)
                .await;
            if flapping.unwrap_or(false) {
                log::warn!(
                    "device.flapping device={device} addrs={},{} policy={policy}",
                    peers.0,
                    peers.1
                );
                feed::tell("device.flapping", &device, None, Some(policy));
            }
        })
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

    /// Ends the sessions whose TTL passed, on any node. Should this node's
    /// liveness have lapsed (it could not reach Redis for a while), its
    /// streams' sessions may be gone: they end as after a lost
    /// subscription, and their clients resume.
    pub(super) fn sweep_on(&self, cluster: Cluster, me: Addr<Self>) {
        let ttl = self.storage.ttl();
        actix::spawn(async move {
            if let Ok((ended, lapsed)) = cluster.sweep(ttl).await {
                for (device, buffered) in ended {
                    log::info!("session.expired device={device} buffered={buffered}");
                }
                if lapsed {
                    me.do_send(DisconnectInterrupted);
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
        for (device, event) in &msg.events {
            for waiting in self.routing.attaching.get_mut(device).into_iter().flatten() {
                waiting.held.push(event.clone());
            }
        }
        self.registry.do_send(DeliverEach { events: msg.events });
    }
}

impl Handler<DisconnectTakenOver> for SessionStore {
    type Result = ();

    fn handle(&mut self, msg: DisconnectTakenOver, _: &mut Self::Context) {
        for waiting in self
            .routing
            .attaching
            .get_mut(&msg.device)
            .into_iter()
            .flatten()
        {
            waiting.kicked = waiting.kicked.max(msg.generation);
        }
        let Some(owned) =
            (self.routing.owned.get(&msg.device)).filter(|owned| owned.generation < msg.generation)
        else {
            return;
        };
        // Its entry stays until the stream ends: its end still records what
        // it wrote (the ownership part is fenced).
        let ending = match msg.by {
            TakenBy::Stream(by, instance) => Ending::Replaced(Replacement {
                by,
                instances: (owned.instance.clone(), instance),
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
        self.routing.interruptions += 1;
        // The entries stay until the streams' ends, which record what they
        // wrote and give the devices up (or are fenced).
        for device in self.routing.owned.keys() {
            self.registry.do_send(DisconnectLive {
                device: device.clone(),
                ending: Ending::Resync,
            });
        }
    }
}
