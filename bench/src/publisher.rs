//! Publishing at a fixed offered rate (open loop): publish `i` is due at
//! `start + i / rate` whatever happened to the ones before it, and carries
//! its due time, so a server that falls behind shows as latency instead of
//! slowing the offered load down (no coordinated omission).
//!
//! Each device's publishes travel on one keep-alive connection, in order,
//! so a receiver can tell a gap from a reordering: broadcasts use a single
//! connection, unicast publishes spread devices over several.

use std::cell::{Cell, RefCell};
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::net::{self, ConnectionGuard, Wire};
use crate::protocol::{self, Payload, device_name, now_ns};
use crate::target::{PublishRequest, Target};

/// The address publishers connect from (the streams use 127.0.0.10 and up).
const PUBLISHER_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Tries per publish when the connection fails (not when the server answers
/// with an error): a backend would retry, and a sequence number given up on
/// would show as a gap in every stream. A retry whose first attempt the
/// server did carry out shows as a duplicate.
const ATTEMPTS: u32 = 20;
const RETRY_PAUSE: Duration = Duration::from_millis(50);

pub enum Mode {
    Broadcast,
    /// Each publish goes to one device picked at random among `devices`.
    Unicast {
        devices: usize,
        connections: usize,
    },
}

pub struct Publisher {
    target: Target,
    server: SocketAddr,
    wire: Wire,
    mode: Mode,
    padding: String,
    next_broadcast: u64,
    device_seq: Vec<u64>,
}

/// What one run of the publisher did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Published {
    pub sent: u64,
    pub accepted: u64,
    /// Answered with an error status, or failed on every attempt.
    pub refused: u64,
    /// Sent again on a new connection after the connection failed.
    pub retried: u64,
    /// How late publishes went out (sent minus due): the server answering
    /// slowly holds the next publish on its connection back. Latencies are
    /// measured from the due time, so this lag is part of them.
    pub send_lag_p99_ms: f64,
    pub send_lag_max_ms: f64,
    /// Broadcasts only: each sequence number and its due time (ns).
    #[serde(skip)]
    pub due: Vec<(u64, u64)>,
}

impl Publisher {
    /// Publishes to `server` over `wire`; `payload_bytes` pads each payload
    /// to about that size.
    pub fn new(
        target: Target,
        (server, wire): (SocketAddr, Wire),
        mode: Mode,
        payload_bytes: usize,
    ) -> Self {
        let devices = match mode {
            Mode::Broadcast => 0,
            Mode::Unicast { devices, .. } => devices,
        };
        Self {
            target,
            server,
            wire,
            mode,
            padding: "x".repeat(payload_bytes.saturating_sub(48)),
            next_broadcast: 0,
            device_seq: vec![0; devices],
        }
    }

    /// Publishes at `rate` per second for `duration`, then waits for the
    /// last answer.
    pub async fn run(&mut self, rate: f64, duration: Duration) -> Result<Published, String> {
        let connections = match self.mode {
            Mode::Broadcast => 1,
            Mode::Unicast { connections, .. } => connections.max(1),
        };
        let counts = Rc::new(Counts::default());
        let mut queues = Vec::with_capacity(connections);
        let mut senders = Vec::with_capacity(connections);
        for _ in 0..connections {
            let (queue, jobs) = mpsc::unbounded_channel();
            queues.push(queue);
            senders.push(tokio::task::spawn_local(send_all(
                self.server,
                self.wire.clone(),
                jobs,
                counts.clone(),
            )));
        }
        if !(rate > 0.0 && rate.is_finite()) {
            return Err(format!("publish rate {rate}: must be a positive number"));
        }
        let total = (rate * duration.as_secs_f64()).round() as u64;
        let interval = Duration::from_secs_f64(1.0 / rate);
        let start = Instant::now() + Duration::from_millis(5);
        let start_ns = now_ns() + 5_000_000;
        let mut published = Published::default();
        for i in 0..total {
            let offset = interval.mul_f64(i as f64);
            tokio::time::sleep_until((start + offset).into()).await;
            let due = start_ns + offset.as_nanos() as u64;
            let (queue, request) = self.next_request(due, connections, &mut published);
            published.sent += 1;
            let _ = queues[queue].send(Job { due, request });
        }
        drop(queues);
        for sender in senders {
            sender.await.map_err(|err| err.to_string())?;
        }
        published.accepted = counts.accepted.get();
        published.refused = counts.refused.get();
        published.retried = counts.retried.get();
        let lag = counts.send_lag_us.borrow();
        published.send_lag_p99_ms = lag.value_at_quantile(0.99) as f64 / 1000.0;
        published.send_lag_max_ms = lag.max() as f64 / 1000.0;
        Ok(published)
    }

    fn next_request(
        &mut self,
        due: u64,
        connections: usize,
        published: &mut Published,
    ) -> (usize, PublishRequest) {
        let (device, seq) = match self.mode {
            Mode::Broadcast => {
                self.next_broadcast += 1;
                published.due.push((self.next_broadcast, due));
                (None, self.next_broadcast)
            }
            Mode::Unicast { devices, .. } => {
                let device = fastrand::usize(..devices);
                self.device_seq[device] += 1;
                (Some(device), self.device_seq[device])
            }
        };
        let payload = Payload {
            s: seq,
            t: due,
            p: self.padding.as_str().into(),
        };
        let payload = serde_json::to_string(&payload).expect("payload serializes");
        let name = device.map(device_name);
        let request = self.target.publish_request(name.as_deref(), &payload);
        (device.map_or(0, |device| device % connections), request)
    }
}

struct Job {
    due: u64,
    request: PublishRequest,
}

struct Counts {
    accepted: Cell<u64>,
    refused: Cell<u64>,
    retried: Cell<u64>,
    send_lag_us: RefCell<Histogram<u64>>,
    /// Set once a publish failed on every attempt: the server is gone or
    /// refusing connections, and retrying each later publish 20 times
    /// would only make a dead run take hours.
    given_up: Cell<bool>,
}

impl Default for Counts {
    fn default() -> Self {
        Self {
            accepted: Cell::default(),
            refused: Cell::default(),
            retried: Cell::default(),
            send_lag_us: RefCell::new(protocol::new_histogram()),
            given_up: Cell::default(),
        }
    }
}

fn bump(counter: &Cell<u64>) {
    counter.set(counter.get() + 1);
}

/// Sends one connection's queue in order, reconnecting after a failure.
async fn send_all(
    server: SocketAddr,
    wire: Wire,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    counts: Rc<Counts>,
) {
    let host = server.to_string();
    let mut connection: Option<(SendRequest<Full<Bytes>>, ConnectionGuard)> = None;
    while let Some(Job { due, request: job }) = jobs.recv().await {
        let lag_us = now_ns().saturating_sub(due) / 1000;
        counts
            .send_lag_us
            .borrow_mut()
            .saturating_record(lag_us.max(1));
        let attempts = if counts.given_up.get() { 1 } else { ATTEMPTS };
        let mut answer = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                bump(&counts.retried);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            if connection.is_none() {
                connection = match net::connect(PUBLISHER_SOURCE, server, None).await {
                    Ok(stream) => net::handshake(&wire, stream).await.ok(),
                    Err(_) => None,
                };
            }
            let Some((sender, _)) = connection.as_mut() else {
                continue;
            };
            match net::post(sender, &host, &job.path, &job.headers, job.body.clone()).await {
                Ok(status) => {
                    answer = Some(status);
                    break;
                }
                Err(_) => connection = None,
            }
        }
        match answer {
            Some(status) if (200..300).contains(&status) => bump(&counts.accepted),
            Some(_) => bump(&counts.refused),
            None => {
                bump(&counts.refused);
                counts.given_up.set(true);
            }
        }
    }
}
