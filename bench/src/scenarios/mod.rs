//! The scenarios, each run against every target in turn: a [`Session`] is
//! one started server with its fleet of streams; [`Session::step`] holds one
//! offered rate and measures what came of it.

mod idle;
mod slow;
mod storm;
mod sweep;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::fleet::{Fleet, Spec};
use crate::procfs::{self, Memory};
use crate::publisher::{Published, Publisher};
use crate::report::{Percentiles, Step, TargetResult};
use crate::target::{Server, ServerOptions, Target};

pub use idle::IdleArgs;
pub use slow::SlowArgs;
pub use storm::StormArgs;
pub use sweep::{Fanout, SweepArgs, Unicast};

/// How long after the last publish deliveries may still arrive.
const DRAIN_PATIENCE: Duration = Duration::from_secs(5);
/// The knee's latency limit.
const KNEE_P99_MS: f64 = 100.0;

/// Options every scenario takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Servers to measure, in this order, in one invocation.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "herald,nchan"
    )]
    pub targets: Vec<Target>,
    /// SSE streams (one device each).
    #[arg(long, default_value_t = 19_000)]
    pub streams: usize,
    /// Streams per worker process (each binds its own 127.0.0.x).
    #[arg(long, default_value_t = 5_000)]
    pub per_worker: usize,
    /// CPUs the server is pinned to (taskset syntax).
    #[arg(long, default_value = "0")]
    pub server_cpus: String,
    /// CPUs the harness (workers and publisher) is pinned to.
    #[arg(long, default_value = "1")]
    pub client_cpus: String,
    #[arg(long, default_value = "target/release/herald")]
    pub herald_bin: PathBuf,
    #[arg(long, default_value = "/usr/sbin/nginx")]
    pub nginx_bin: PathBuf,
    /// Replay buffer length per device, on both servers.
    #[arg(long, default_value_t = 1000)]
    pub buffer_events: usize,
    /// Idle seconds before a stream gets a keep-alive, on both servers.
    #[arg(long, default_value_t = 15)]
    pub keepalive_secs: u64,
    /// Approximate size of each event's data, in bytes.
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// herald's log level during the run.
    #[arg(long, default_value = "warn")]
    pub herald_log: String,
    /// Where the JSON, Markdown and PNG results go.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// Exit non-zero if any stream saw a gap, duplicate or loss, or any
    /// stream failed to connect (for CI's smoke runs).
    #[arg(long)]
    pub check: bool,
}

impl Common {
    pub fn server_options(&self) -> Result<ServerOptions, String> {
        Ok(ServerOptions {
            herald_bin: self.herald_bin.clone(),
            nginx_bin: self.nginx_bin.clone(),
            cpus: procfs::parse_cpus(&self.server_cpus)?,
            buffer_events: self.buffer_events,
            keepalive_secs: self.keepalive_secs,
            herald_log: self.herald_log.clone(),
        })
    }
}

/// One scenario run against one target.
pub trait Scenario {
    const NAME: &'static str;
    /// Whether the result is a rate sweep worth a chart.
    const CHART: bool = false;
    async fn run(&self, common: &Common, target: Target) -> Result<TargetResult, String>;
    /// Why the result breaks an invariant (gaps, loss, …), if it does.
    fn violation(&self, result: &TargetResult) -> Option<String> {
        steps_violation(result)
    }
}

fn steps_violation(result: &TargetResult) -> Option<String> {
    result.steps.iter().find_map(|step| {
        (step.gaps + step.duplicates + step.lost > 0).then(|| {
            format!(
                "{} at {}/s: {} gaps, {} duplicates, {} lost",
                result.target.name(),
                step.offered_per_s,
                step.gaps,
                step.duplicates,
                step.lost
            )
        })
    })
}

pub struct Session {
    pub server: Server,
    pub fleet: Fleet,
}

impl Session {
    pub async fn start(
        common: &Common,
        target: Target,
        slow_every: usize,
        fanout: bool,
    ) -> Result<Self, String> {
        let server = Server::start(target, &common.server_options()?).await?;
        let spec = Spec {
            target,
            server: server.addr,
            streams: common.streams,
            per_worker: common.per_worker,
            slow_every,
            fanout,
        };
        match Fleet::spawn(&spec) {
            Ok(fleet) => Ok(Self { server, fleet }),
            Err(err) => {
                server.stop().await;
                Err(err)
            }
        }
    }

    pub async fn finish(self) {
        self.fleet.quit().await;
        self.server.stop().await;
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

    /// Offers `rate` publishes/s for `secs`; each reaches `per_publish`
    /// streams.
    pub async fn step(
        &mut self,
        publisher: &mut Publisher,
        rate: f64,
        secs: f64,
        per_publish: u64,
    ) -> Result<Step, String> {
        self.fleet.reset().await?;
        let (server_before, client_before) = self.cpu();
        let started = Instant::now();
        let published = publisher.run(rate, Duration::from_secs_f64(secs)).await?;
        let expected = published.accepted * per_publish;
        self.fleet
            .await_deliveries(expected, DRAIN_PATIENCE)
            .await?;
        // The window is the step, or longer if deliveries trailed behind.
        let elapsed = started.elapsed().as_secs_f64().max(secs);
        let (server_after, client_after) = self.cpu();
        self.measure(
            rate,
            per_publish,
            published,
            elapsed,
            server_after - server_before,
            client_after - client_before,
        )
        .await
    }

    async fn measure(
        &mut self,
        rate: f64,
        per_publish: u64,
        published: Published,
        elapsed: f64,
        server_cpu_s: f64,
        client_cpu_s: f64,
    ) -> Result<Step, String> {
        let merged = self.fleet.report().await?;
        let tally = &merged.tally;
        let expected = published.accepted * per_publish;
        let latency = percentiles(&merged.latency);
        let fanout = (!merged.fanout.is_empty()).then(|| {
            let mut completion = crate::protocol::new_histogram();
            for (seq, due) in &published.due {
                if let Some((streams, last)) = merged.fanout.get(seq)
                    && *streams == per_publish
                {
                    completion.saturating_record((last.saturating_sub(*due) / 1000).max(1));
                }
            }
            percentiles(&completion)
        });
        let lost = expected.saturating_sub(tally.deliveries);
        Ok(Step {
            offered_per_s: rate,
            offered_deliveries_per_s: rate * per_publish as f64,
            expected,
            delivered: tally.deliveries,
            delivered_per_s: tally.deliveries as f64 / elapsed,
            lost,
            gaps: tally.gaps,
            duplicates: tally.duplicates,
            latency,
            fanout,
            server_cpu_s,
            client_cpu_s,
            server_cpu_us_per_delivery: server_cpu_s * 1e6 / tally.deliveries.max(1) as f64,
            healthy: latency.p99_ms < KNEE_P99_MS
                && lost == 0
                && tally.gaps == 0
                && published.refused == 0,
            published,
        })
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
