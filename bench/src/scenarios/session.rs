//! One started server with its fleet of streams, and the measurement of one
//! offered rate held for a while ([`Session::step`]).

use std::time::{Duration, Instant};

use super::{Common, healthy};
use crate::fleet::{Fleet, Spec};
use crate::net::Wire;
use crate::procfs::{self, Memory};
use crate::protocol::{self, Live};
use crate::publisher::{Mode, Publisher};
use crate::report::{Percentiles, Step};
use crate::target::{Server, Target};

/// How long after the last publish deliveries may still arrive.
const DRAIN_PATIENCE: Duration = Duration::from_secs(5);
/// How long a step waits for what the previous one left in flight.
const QUIET_PATIENCE: Duration = Duration::from_secs(10);

pub struct Session {
    pub server: Server,
    pub fleet: Fleet,
    /// How publishes reach the server.
    publish_wire: Wire,
    payload_bytes: usize,
    client_cpus: usize,
}

impl Session {
    async fn start(
        common: &Common,
        target: Target,
        slow_every: usize,
        fanout: bool,
    ) -> Result<Self, String> {
        let server = Server::start(target, &common.server_options()?).await?;
        // The storm's streams spread over the cluster's two nodes, each
        // reconnect moving to the other; the other scenarios stream from
        // one node and publish on the other.
        let servers = match common.spread {
            true if server.publish_addr != server.addr => vec![server.addr, server.publish_addr],
            _ => vec![server.addr],
        };
        let spec = Spec {
            target,
            ca: server.ca.clone(),
            servers,
            streams: common.streams,
            per_worker: common.per_worker,
            slow_every,
            fanout,
        };
        Ok(Self {
            fleet: Fleet::spawn(&spec)?,
            publish_wire: server.publish_wire()?,
            server,
            payload_bytes: common.payload_bytes,
            client_cpus: procfs::parse_cpus(&common.client_cpus)?.len(),
        })
    }

    /// Runs `measure` on a fresh session, then ends it whatever happened.
    pub async fn run<T>(
        common: &Common,
        target: Target,
        slow_every: usize,
        fanout: bool,
        measure: impl AsyncFnOnce(&mut Session) -> Result<T, String>,
    ) -> Result<T, String> {
        let mut session = Self::start(common, target, slow_every, fanout).await?;
        let result = measure(&mut session).await;
        session.fleet.quit().await;
        session.server.stop().await;
        result
    }

    pub fn target(&self) -> Target {
        self.server.target
    }

    pub fn publisher(&self, mode: Mode) -> Publisher {
        Publisher::new(
            self.server.target,
            (self.server.publish_addr, self.publish_wire.clone()),
            mode,
            self.payload_bytes,
        )
    }

    /// Opens every stream; an error if some never became live.
    pub async fn connect_all(&mut self) -> Result<Live, String> {
        let live = self.fleet.connect().await?;
        if live.missing > 0 {
            return Err(format!("{} streams never connected", live.missing));
        }
        Ok(live)
    }

    pub fn memory(&self) -> Memory {
        procfs::memory(&self.server.pids())
    }

    /// Server and client CPU seconds used so far.
    pub fn cpu(&self) -> (f64, f64) {
        let mut clients = self.fleet.pids();
        clients.push(std::process::id());
        (
            procfs::cpu_seconds(&self.server.pids()),
            procfs::cpu_seconds(&clients),
        )
    }

    /// CPU seconds so far of the thread holding herald's store and
    /// registry: the part of the work that does not spread over cores.
    fn store_thread_cpu(&self) -> Option<f64> {
        let pid = self.server.store_thread()?;
        Some(procfs::thread_cpu_seconds(pid, pid))
    }

    /// The cluster's Redis CPU seconds so far (part of the server's).
    fn redis_cpu(&self) -> Option<f64> {
        let redis = self.server.redis_pid()?;
        Some(procfs::cpu_seconds(&[redis]))
    }

    /// Offers `rate` publishes/s for `secs`; each should reach
    /// `per_publish` streams.
    pub async fn step(
        &mut self,
        publisher: &mut Publisher,
        rate: f64,
        secs: f64,
        per_publish: u64,
    ) -> Result<Step, String> {
        self.server.check_alive()?;
        self.fleet.await_quiet(QUIET_PATIENCE).await?;
        self.fleet.reset().await?;
        let (server_before, client_before) = self.cpu();
        let redis_before = self.redis_cpu();
        let store_before = self.store_thread_cpu();
        let started = Instant::now();
        let published = publisher.run(rate, Duration::from_secs_f64(secs)).await?;
        let expected = published.accepted * per_publish;
        self.fleet
            .await_deliveries(expected, DRAIN_PATIENCE)
            .await?;
        // The window is the step, or longer if deliveries trailed behind.
        let elapsed = started.elapsed().as_secs_f64().max(secs);
        let (server_after, client_after) = self.cpu();
        let redis_cpu_s = self.redis_cpu().zip(redis_before).map(|(a, b)| a - b);
        let store_thread_cpu_s = (self.store_thread_cpu())
            .zip(store_before)
            .map(|(a, b)| a - b);
        self.server.check_alive()?;
        let merged = self.fleet.report().await?;
        let tally = &merged.tally;
        let latency = percentiles(&merged.latency);
        let (fanout, incomplete_fanouts) = if merged.fanout.is_empty() {
            (None, 0)
        } else {
            let mut completion = protocol::new_histogram();
            let mut incomplete = 0;
            for (seq, due) in &published.due {
                match merged.fanout.get(seq) {
                    Some((streams, last)) if *streams == per_publish => {
                        completion.saturating_record((last.saturating_sub(*due) / 1000).max(1));
                    }
                    _ => incomplete += 1,
                }
            }
            (Some(percentiles(&completion)), incomplete)
        };
        let server_cpu_s = server_after - server_before;
        let client_cpu_s = client_after - client_before;
        let mut step = Step {
            offered_per_s: rate,
            offered_deliveries_per_s: rate * per_publish as f64,
            expected,
            delivered: tally.deliveries,
            delivered_per_s: tally.deliveries as f64 / elapsed,
            lost: expected.saturating_sub(tally.deliveries),
            gaps: tally.gaps,
            duplicates: tally.duplicates,
            latency,
            fanout,
            incomplete_fanouts,
            ended: tally.ended,
            resets: tally.resets,
            errors: tally.errors,
            server_cpu_s,
            redis_cpu_s,
            store_thread_cpu_s,
            client_cpu_s,
            client_cpu_share: client_cpu_s / elapsed / self.client_cpus.max(1) as f64,
            server_cpu_us_per_delivery: if tally.deliveries == 0 {
                f64::NAN
            } else {
                server_cpu_s * 1e6 / tally.deliveries as f64
            },
            healthy: false,
            published,
        };
        step.healthy = healthy(&step);
        Ok(step)
    }
}

pub fn percentiles(histogram: &hdrhistogram::Histogram<u64>) -> Percentiles {
    if histogram.is_empty() {
        return Percentiles {
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            max_ms: f64::NAN,
        };
    }
    Percentiles {
        p50_ms: histogram.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: histogram.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: histogram.max() as f64 / 1000.0,
    }
}
