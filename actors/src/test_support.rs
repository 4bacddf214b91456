//! Shared by the actor tests: real actors, real connections, real queues.

use std::time::{Duration, Instant};

use actix::Addr;
use tokio::sync::mpsc::{Receiver, channel};

use crate::{
    Actors, Connect, ConnectError, ConnectionId, ConnectionParams, CountLive, DeviceConnection,
    DeviceId, EventName, FlappingPolicy, Frame, HeartbeatConfig, KickConfig, Progress, Publish,
    PublishReceipt, SessionConfig, StreamQueue, Unstarted,
};

/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(2);

/// A heartbeat that never fires during a test.
pub(crate) fn quiet_heartbeat() -> HeartbeatConfig {
    HeartbeatConfig {
        timeout: Duration::from_secs(60),
        margin: Duration::from_secs(10),
    }
}

/// Roomy sessions kept for `ttl`.
pub(crate) fn session_config(ttl: Duration) -> SessionConfig {
    SessionConfig {
        buffer_events: 16,
        buffer_bytes: 1 << 20,
        retained_per_device: 4,
        max_sessions: 100,
        max_total_bytes: 1 << 24,
        ttl,
    }
}

/// Kick rules that never refuse during a test.
pub(crate) fn lenient_kicks() -> KickConfig {
    KickConfig {
        instance_window: Duration::from_secs(30),
        flapping_kicks: 1000,
        flapping_window: Duration::from_secs(10),
        flapping_cooldown: Duration::from_secs(30),
        flapping_policy: FlappingPolicy::Allow,
        reconnect_block: Duration::from_secs(60),
    }
}

/// The store, registry and heartbeat with sessions kept for `ttl`.
/// The memory backend, empty.
pub(crate) fn in_memory() -> (crate::Opened, crate::Snapshot) {
    (crate::Opened::Memory, crate::Snapshot::default())
}

/// The embedded backend on a file under `dir`, holding at most
/// `cache_bytes` of buffered events whole in memory.
pub(crate) async fn on_file(
    dir: &std::path::Path,
    cache_bytes: usize,
) -> (crate::Opened, crate::Snapshot) {
    let config = crate::StorageConfig {
        backend: crate::BackendKind::Embedded,
        path: dir.to_owned(),
        cache_bytes,
        ..crate::StorageConfig::default()
    };
    crate::Opened::open(&config, "test").await.unwrap()
}

pub(crate) fn start_actors(ttl: Duration) -> Actors {
    crate::start(
        session_config(ttl),
        quiet_heartbeat(),
        lenient_kicks(),
        in_memory(),
    )
}

pub(crate) fn device(name: &str) -> DeviceId {
    DeviceId::parse(name).unwrap()
}

pub(crate) fn publish(device: &DeviceId, data: &str) -> Publish {
    Publish {
        devices: vec![device.clone()],
        name: EventName::parse("note").unwrap(),
        data: data.into(),
        retain: false,
    }
}

/// Publishes through the store and answers its receipt.
pub(crate) async fn publish_to(actors: &Actors, device: &DeviceId, data: &str) -> PublishReceipt {
    let receipts = actors.store.send(publish(device, data)).await.unwrap();
    receipts.unwrap()[0]
}

/// Spawns a connection for `device` whose queue holds `capacity` frames and
/// attaches it through the store, as the stream route does; the test holds
/// the queue's receiving end, as the HTTP response would.
pub(crate) async fn connect(
    actors: &Actors,
    device: &DeviceId,
    last_event_id: Option<String>,
    capacity: usize,
) -> (Addr<DeviceConnection>, Receiver<Frame>, ConnectionId) {
    match try_connect(actors, device, last_event_id, capacity).await {
        Ok(connected) => connected,
        Err(refusal) => panic!("connect refused: {refusal}"),
    }
}

/// Like [`connect`], but a refusal is an answer. As the stream route does,
/// the connection's actor starts only once the store admitted it.
pub(crate) async fn try_connect(
    actors: &Actors,
    device: &DeviceId,
    last_event_id: Option<String>,
    capacity: usize,
) -> Result<(Addr<DeviceConnection>, Receiver<Frame>, ConnectionId), ConnectError> {
    let (queue, frames) = channel(capacity);
    let queue = StreamQueue::new(queue, Progress::default());
    let connection_id = ConnectionId::new();
    let (unstarted, addr) = Unstarted::new(params(actors, device, connection_id, queue.clone()));
    let connect = connect_message(device, connection_id, addr.clone(), queue, last_event_id);
    match actors.store.send(connect).await.unwrap() {
        Ok(opening) => unstarted.start(opening),
        Err(refusal) => {
            unstarted.discard();
            return Err(refusal);
        }
    };
    Ok((addr, frames, connection_id))
}

/// What the stream route gives a connection, for one whose queue's
/// receiving end the test holds (dropping it is the client's close).
pub(crate) fn params(
    actors: &Actors,
    device: &DeviceId,
    connection_id: ConnectionId,
    queue: StreamQueue,
) -> ConnectionParams {
    ConnectionParams {
        device: device.clone(),
        connection_id,
        peer: "test".to_owned(),
        proto: "h1",
        queue,
        registry: actors.registry.clone(),
        store: actors.store.clone(),
        client_closed: Box::new(|| false),
        heartbeat_timeout: Duration::from_secs(60),
    }
}

/// A connect whose client is gone before the store hands it on (its
/// connection's mailbox closed), as when a client closes right after its
/// request.
pub(crate) async fn connect_gone(actors: &Actors, device: &DeviceId) {
    let (queue, _) = channel(1);
    let queue = StreamQueue::new(queue, Progress::default());
    let connection_id = ConnectionId::new();
    let (unstarted, addr) = Unstarted::new(params(actors, device, connection_id, queue.clone()));
    drop(unstarted);
    let connect = connect_message(device, connection_id, addr, queue, None);
    actors.store.send(connect).await.unwrap().unwrap();
}

/// The `Connect` the stream route sends for a connection at `addr`.
pub(crate) fn connect_message(
    device: &DeviceId,
    connection_id: ConnectionId,
    addr: Addr<DeviceConnection>,
    queue: StreamQueue,
    last_event_id: Option<String>,
) -> Connect {
    Connect {
        device: device.clone(),
        connection_id,
        connection: addr,
        queue,
        last_event_id,
        instance: None,
        peer: "test".to_owned(),
    }
}

/// The next frame, or `None` once the queue ended; panics if nothing comes.
pub(crate) async fn next(frames: &mut Receiver<Frame>) -> Option<Frame> {
    tokio::time::timeout(PATIENCE, frames.recv())
        .await
        .expect("no frame arrived in time")
}

/// The next frame, which must be the signal `name`; answers its data.
pub(crate) async fn expect_signal(frames: &mut Receiver<Frame>, name: &str) -> serde_json::Value {
    match next(frames).await {
        Some(Frame::Signal(signal)) if signal.name == name => {
            serde_json::from_str(&signal.data).unwrap()
        }
        other => panic!("expected the `{name}` signal, got {other:?}"),
    }
}

pub(crate) async fn count_live(actors: &Actors) -> usize {
    actors.registry.send(CountLive).await.unwrap()
}

/// Waits for an actor to stop (its mailbox to close), which happens
/// asynchronously after the cause.
pub(crate) async fn stopped(addr: &Addr<DeviceConnection>) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while addr.connected() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// An event at `seq` of some epoch, for tests that need one as a value.
pub(crate) fn event(seq: u64) -> crate::StoredEvent {
    crate::StoredEvent {
        id: crate::EventId {
            epoch: crate::Epoch::new(1, 1),
            seq,
        },
        name: crate::EventName::parse("note").unwrap(),
        data: "data".into(),
        published_at: std::time::Instant::now(),
        batch: 0,
    }
}
