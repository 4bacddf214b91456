//! The cluster backend: several herald nodes share one Redis, which holds
//! every device's session (epoch, sequence, buffer, owner) and routes each
//! published event to the node that holds the device's live stream.
//!
//! Redis, not a node, gives ids: a publish on any node runs one script
//! ([`publish.lua`](cluster/publish.lua)) that appends the event to each
//! device's buffer at the device's next seq and `PUBLISH`es it to the node
//! channel of the device's owner, atomically. A connect runs another
//! ([`attach.lua`](cluster/attach.lua)) that makes the connecting node the
//! owner under a new generation (a fencing token that only grows), tells
//! the previous owner to kick its stream, and reads the buffer after the
//! stream's start, atomically: every event appended before it is in the
//! answer, every one after it is published to the new owner. A stream's end
//! ([`detach.lua`](cluster/detach.lua)) writes only while the node still owns
//! the device under the generation it attached with, so a node that lost a
//! device can never write to it again.
//!
//! Keys (`P` the configured prefix, `D` a device id):
//!
//! | key          | type   | holds                                                  |
//! |--------------|--------|--------------------------------------------------------|
//! | `P{D}:s`     | hash   | `ep` epoch, `sq` last seq, `gen` generation, `own` owner node, `wr` written seq, `by` buffered bytes; for the admin view `cid`, `addr`, `at`, `seen`, `att`, `kicks` |
//! | `P{D}:k`     | string | exists while the device's connects are refused (`reconnect=false`) |
//! | `P{D}:b`     | stream | the buffer: entry `<seq>-0`, fields `n` name, `p` published (Unix ms), `d` data |
//! | `Psessions`  | string | sessions created, numbering epochs                     |
//! | `P{D}:r`     | hash   | retained events: name → `[epoch, seq, published, data]` (JSON) |
//! | `Pdevices`   | set    | devices with a session or retained events              |
//! | `Pexpiry`    | zset   | sessions by when their TTL runs out (Unix ms)          |
//! | `Palive:<N>` | string | exists while node `N` runs (refreshed, expires)        |
//! | `Pinstance`  | string | this Redis data set's id: the boot part of its epochs   |
//! | `Pnode:<N>`  | channel| events and kicks for the streams node `N` holds        |

use std::{
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use bytestring::ByteString;
use redis::{Script, aio::ConnectionManager};
use serde::{Deserialize, Serialize};

mod channel;
mod decode;
mod health;
mod views;

pub use channel::{
    DeliverRouted, DisconnectInterrupted, DisconnectTakenOver, Subscription, TakenBy,
};
use decode::{epoch_text, millis, parse_epoch, unix_ms};
use health::Health;

use crate::{
    ConnectionId, DeviceId, Epoch, EventId, EventName, FlappingPolicy, KickConfig, Refusal,
    SessionConfig, StoredEvent, backend::WriteError, storage::StoreError,
};

/// The `[storage.redis]` config section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    /// Put before every key and channel, so several herald clusters (or
    /// other programs) can share one Redis.
    pub prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".to_owned(),
            prefix: "herald:".to_owned(),
        }
    }
}

static PUBLISH: LazyLock<Script> =
    LazyLock::new(|| with_functions(include_str!("cluster/publish.lua")));
static BROADCAST: LazyLock<Script> =
    LazyLock::new(|| with_functions(include_str!("cluster/broadcast.lua")));
static ATTACH: LazyLock<Script> =
    LazyLock::new(|| with_functions(include_str!("cluster/attach.lua")));
static DETACH: LazyLock<Script> =
    LazyLock::new(|| with_functions(include_str!("cluster/detach.lua")));
static DISCONNECT: LazyLock<Script> =
    LazyLock::new(|| with_functions(include_str!("cluster/disconnect.lua")));
static VIEW: LazyLock<Script> = LazyLock::new(|| with_functions(include_str!("cluster/view.lua")));
static KICKED: LazyLock<Script> =
    LazyLock::new(|| with_functions(include_str!("cluster/kicked.lua")));
static SWEEP: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("cluster/sweep.lua")));

/// Devices one broadcast chunk appends to at most: the script blocks
/// Redis while it runs.
const BROADCAST_CHUNK: usize = 200;

/// A script: `functions.lua`, then `body`.
fn with_functions(body: &str) -> Script {
    Script::new(&format!(
        "{}\n{body}",
        include_str!("cluster/functions.lua")
    ))
}

/// How long a node's `alive:` key outlives its last refresh: a node gone
/// this long no longer protects its devices' sessions from expiry.
const ALIVE_FOR: Duration = Duration::from_secs(10);
/// Sessions one sweep ends at most (a script blocks Redis while it runs).
const SWEEP_LIMIT: usize = 200;

/// How long one Redis command may take before the node counts Redis as
/// unavailable.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the cluster backend could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach Redis at {url}: {source}")]
pub struct ConnectError {
    url: String,
    source: redis::RedisError,
}

/// This node's handle on the shared Redis. Cheap to clone: every clone
/// shares one connection.
#[derive(Clone)]
pub struct Cluster {
    conn: ConnectionManager,
    health: Arc<Health>,
    /// Whether this node has told Redis it is alive yet.
    alive: Arc<AtomicBool>,
    prefix: Arc<str>,
    /// This process's name on the node channels: the node id and a
    /// number drawn at start, so a restarted node never takes its previous
    /// life's ownerships for its own.
    node: Arc<str>,
}

/// Why a connect was not attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAttached {
    /// The kick rules or an operator's block.
    Refused(Refusal),
    /// It needs a new session, and there are `session.max_sessions`.
    Full,
}

/// A stream's start, as Redis decided it.
#[derive(Debug)]
pub struct Attached {
    pub epoch: Epoch,
    pub last_seq: u64,
    pub generation: u64,
    /// The seq of the oldest event the buffer keeps (one past `last_seq`
    /// when it is empty).
    pub oldest: u64,
    /// What the device's streams had written, as of the last one's end.
    pub written: u64,
    /// Whether `events` follow the client's position (otherwise they follow
    /// `written`).
    pub resumed: bool,
    pub events: Vec<StoredEvent>,
    /// The device's retained events, in publish order.
    pub retained: Vec<StoredEvent>,
}

impl Cluster {
    /// Connects to Redis as node `node_id`: learns the data set's id (made
    /// if Redis has none) and subscribes to the node's channel, so nothing
    /// routed to it from now on is missed.
    pub async fn connect(
        config: &RedisConfig,
        node_id: &str,
    ) -> Result<(Self, Subscription), ConnectError> {
        let failed = |source| ConnectError {
            url: config.url.clone(),
            source,
        };
        let client = redis::Client::open(config.url.as_str()).map_err(failed)?;
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let mut conn =
            (client.get_connection_manager_with_config(manager).await).map_err(failed)?;
        let () = (redis::cmd("PING").query_async(&mut conn).await).map_err(failed)?;
        let node = format!("{node_id}/{:08x}", fastrand::u32(..));
        let mut pubsub = client.get_async_pubsub().await.map_err(failed)?;
        let channel = format!("{}node:{node}", config.prefix);
        pubsub.subscribe(&channel).await.map_err(failed)?;
        let health = Arc::new(Health::default());
        let cluster = Self {
            conn,
            health: health.clone(),
            alive: Arc::default(),
            prefix: config.prefix.as_str().into(),
            node: node.into(),
        };
        let subscription = Subscription {
            client,
            conn: cluster.conn.clone(),
            channel,
            messages: pubsub.into_on_message(),
            health,
        };
        Ok((cluster, subscription))
    }

    /// Appends one event to each device (sessions made where missing) and
    /// routes it to their streams' nodes. Answers each device's id, and
    /// whether a node held its live stream.
    pub async fn publish(
        mut self,
        devices: Vec<DeviceId>,
        (name, data): (EventName, ByteString),
        retain: bool,
        config: &SessionConfig,
    ) -> Result<Vec<(EventId, bool)>, StoreError> {
        let mut invocation = PUBLISH.prepare_invoke();
        self.event_args(&mut invocation, (&name, &data), retain, config);
        for device in &devices {
            invocation.arg(device.as_str());
        }
        // Stored (0: a retained bound refused it), then epoch, seq, live per device.
        type Answer = (u8, Vec<(String, u64, u8)>);
        let answer: redis::RedisResult<Answer> = invocation.invoke_async(&mut self.conn).await;
        let (stored, answers) = self.health.check(answer)?;
        match stored {
            0 => return Err(StoreError::RetainedLimit(config.retained_per_device)),
            2 => return Err(StoreError::TooManySessions(config.max_sessions)),
            _ => {}
        }
        answers
            .into_iter()
            .map(|(epoch, seq, live)| {
                Ok((
                    EventId {
                        epoch: parse_epoch(&epoch)?,
                        seq,
                    },
                    live == 1,
                ))
            })
            .collect::<Result<_, WriteError>>()
            .map_err(StoreError::Write)
    }

    /// Appends one event to every device with a session, a chunk of
    /// devices at a time, and routes it to their streams' nodes. Answers
    /// how many sessions buffered it and how many live streams it was
    /// handed to.
    pub async fn broadcast(
        mut self,
        (name, data): (EventName, ByteString),
        config: &SessionConfig,
    ) -> Result<(usize, usize), StoreError> {
        let (mut buffered, mut delivered, mut cursor) = (0, 0, String::new());
        loop {
            let mut invocation = BROADCAST.prepare_invoke();
            self.event_args(&mut invocation, (&name, &data), false, config);
            invocation.arg(&cursor).arg(BROADCAST_CHUNK);
            let answer = invocation.invoke_async(&mut self.conn).await;
            let chunk: (usize, usize, usize, String) = self.health.check(answer)?;
            buffered += chunk.1;
            delivered += chunk.2;
            cursor = chunk.3;
            if cursor.is_empty() {
                return Ok((buffered, delivered));
            }
        }
    }

    /// The prefix and the event as `append.lua`'s `event_of` reads them.
    fn event_args(
        &self,
        invocation: &mut redis::ScriptInvocation<'_>,
        (name, data): (&EventName, &ByteString),
        retain: bool,
        config: &SessionConfig,
    ) {
        invocation
            .arg(&*self.prefix)
            .arg(name.as_str())
            .arg(&**data)
            .arg(unix_ms(SystemTime::now()))
            .arg(config.buffer_events)
            .arg(config.buffer_bytes)
            .arg(fastrand::u32(..))
            .arg(millis(config.ttl))
            .arg(u8::from(retain))
            .arg(config.retained_per_device)
            .arg(config.max_sessions);
    }

    /// Makes this node the device's owner for stream `connection` and reads
    /// the buffer after `since` (the client's position, if it gave one
    /// this data set could honour) or else after what streams wrote.
    pub async fn attach(
        mut self,
        device: DeviceId,
        since: Option<EventId>,
        (connection, address, instance): (ConnectionId, String, Option<String>),
        (ttl, instance_window, max_sessions): (Duration, Duration, usize),
    ) -> Result<Result<Attached, NotAttached>, WriteError> {
        let (since_epoch, since_seq) =
            since.map_or((String::new(), 0), |id| (epoch_text(id.epoch), id.seq));
        type Entries = Vec<(String, Vec<String>)>;
        type Answer = (
            u8,
            String,
            u64,
            u64,
            u64,
            u64,
            u64,
            Entries,
            Vec<(String, String)>,
        );
        let answer: redis::RedisResult<Answer> = ATTACH
            .arg(&*self.prefix)
            .arg(device.as_str())
            .arg(&*self.node)
            .arg(fastrand::u32(..))
            .arg(since_epoch)
            .arg(since_seq)
            .arg(connection.to_string())
            .arg(millis(ttl))
            .arg(address)
            .arg(instance.unwrap_or_default())
            .arg(millis(instance_window))
            .arg(max_sessions)
            .invoke_async(&mut self.conn)
            .await;
        let (admitted, epoch, last_seq, generation, oldest, written, resumed, entries, retained) =
            self.health.check(answer)?;
        match admitted {
            0 => return Ok(Err(NotAttached::Refused(Refusal::Blocked))),
            2 => return Ok(Err(NotAttached::Refused(Refusal::KickedInstance))),
            3 => return Ok(Err(NotAttached::Refused(Refusal::Flapping))),
            4 => return Ok(Err(NotAttached::Full)),
            _ => {}
        }
        let epoch = parse_epoch(&epoch)?;
        let now = (SystemTime::now(), Instant::now());
        let events = decode::entries(epoch, entries, now)?;
        let retained = decode::retained(retained, now)?;
        Ok(Ok(Attached {
            epoch,
            last_seq,
            generation,
            oldest,
            written,
            resumed: resumed == 1,
            events,
            retained,
        }))
    }

    /// The device's stream here ended, having written up to `written` of
    /// `epoch`: recorded, and ownership given up, unless another stream
    /// took the device over since `generation`. Answers whether this node
    /// still owned it.
    pub async fn detach(
        mut self,
        device: DeviceId,
        (generation, written): (u64, EventId),
        ttl: Duration,
    ) -> Result<bool, WriteError> {
        let answer: redis::RedisResult<u8> = DETACH
            .arg(&*self.prefix)
            .arg(device.as_str())
            .arg(&*self.node)
            .arg(generation)
            .arg(written.seq)
            .arg(epoch_text(written.epoch))
            .arg(millis(ttl))
            .invoke_async(&mut self.conn)
            .await;
        let owned = self.health.check(answer)?;
        Ok(owned == 1)
    }

    /// Ends the sessions whose TTL passed, on whichever node; answers each
    /// with the events it held, and whether this node's liveness had lapsed
    /// (then its streams' sessions may have been ended under them). Also
    /// tells Redis this node is still alive, which keeps those sessions.
    pub async fn sweep(
        mut self,
        ttl: Duration,
    ) -> Result<(Vec<(String, usize)>, bool), WriteError> {
        let alive = format!("{}alive:{}", self.prefix, self.node);
        let refresh = redis::cmd("SET")
            .arg(alive)
            .arg(1)
            .arg("PX")
            .arg(millis(ALIVE_FOR))
            .arg("GET")
            .query_async::<Option<String>>(&mut self.conn)
            .await;
        let before = self.health.check(refresh)?;
        let lapsed = before.is_none() && self.alive.swap(true, Ordering::Relaxed);
        let answer: redis::RedisResult<Vec<(String, usize)>> = SWEEP
            .arg(&*self.prefix)
            .arg(millis(ttl))
            .arg(SWEEP_LIMIT)
            .invoke_async(&mut self.conn)
            .await;
        let ended = self.health.check(answer)?;
        Ok((ended, lapsed))
    }

    /// Records a kick of the device's stream (`old` kicked by `new`, their
    /// instances) under the kick rules, kept in Redis for every node;
    /// answers whether the device is flapping now.
    pub async fn record_kick(
        mut self,
        device: DeviceId,
        (old, new): (Option<String>, Option<String>),
        kicks: &KickConfig,
    ) -> Result<bool, WriteError> {
        let answer: redis::RedisResult<u8> = KICKED
            .arg(&*self.prefix)
            .arg(device.as_str())
            .arg(old.unwrap_or_default())
            .arg(new.unwrap_or_default())
            .arg(millis(kicks.instance_window))
            .arg(kicks.flapping_kicks)
            .arg(millis(kicks.flapping_window))
            .arg(millis(kicks.flapping_cooldown))
            .arg(u8::from(kicks.flapping_policy == FlappingPolicy::Refuse))
            .invoke_async(&mut self.conn)
            .await;
        Ok(self.health.check(answer)? == 1)
    }

    /// Ends the device's live stream wherever it is (see `disconnect.lua`);
    /// answers whether there was one (for `Deleted`: anything to forget).
    pub async fn disconnect(
        mut self,
        device: DeviceId,
        ending: TakenBy,
        (block, ttl): (Duration, Duration),
    ) -> Result<bool, WriteError> {
        let ending = match ending {
            TakenBy::Stream(..) | TakenBy::Admin => "admin",
            TakenBy::Blocked => "blocked",
            TakenBy::Deleted => "deleted",
        };
        let answer: redis::RedisResult<u8> = DISCONNECT
            .arg(&*self.prefix)
            .arg(device.as_str())
            .arg(ending)
            .arg(millis(block))
            .arg(millis(ttl))
            .invoke_async(&mut self.conn)
            .await;
        Ok(self.health.check(answer)? == 1)
    }
}
