//! The scenarios, each run against every target in turn, the options they
//! share, and the rules that judge a step (healthy, saturated,
//! client-bound) in one place.

mod idle;
mod session;
mod slow;
mod storm;
mod sweep;

use std::path::PathBuf;

use crate::procfs;
use crate::report::{Step, TargetResult};
use crate::target::{ServerOptions, Target};

pub use idle::IdleArgs;
pub use session::{Session, percentiles};
pub use slow::SlowArgs;
pub use storm::StormArgs;
pub use sweep::{Fanout, SweepArgs, Unicast};

/// The knee's latency limit.
const KNEE_P99_MS: f64 = 100.0;
/// Share of the client CPUs above which a step is client-bound.
const CLIENT_BOUND_SHARE: f64 = 0.9;

/// Options every scenario takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Servers to measure, in this order, in one invocation (`--target
    /// herald` measures one).
    #[arg(
        long,
        alias = "target",
        value_enum,
        value_delimiter = ',',
        default_value = "herald,nchan"
    )]
    pub targets: Vec<Target>,
    /// Runs per target; every figure is the median over them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: u64,
    /// SSE streams (one device each).
    #[arg(long, default_value_t = 19_000)]
    pub streams: usize,
    /// Streams per worker process (each binds its own 127.0.0.x).
    #[arg(long, default_value_t = 5_000)]
    pub per_worker: usize,
    /// herald-cluster, nchan-cluster: streams connect to both nodes, and each reconnect of
    /// a stream moves it to the other node (otherwise they stream from one
    /// node and publishes go to the other).
    #[arg(long)]
    pub spread: bool,
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

/// A clap parser for rates and durations: finite and above zero.
pub fn positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 => Ok(value),
        _ => Err(format!("{text:?}: expected a number above 0")),
    }
}

/// One scenario run against one target.
pub trait Scenario {
    const NAME: &'static str;
    /// Whether the result is a rate sweep worth a chart.
    const CHART: bool = false;
    async fn run(&self, common: &Common, target: Target) -> Result<TargetResult, String>;
}

/// Within the knee's limits: p99 under 100 ms, nothing lost, refused,
/// skipped or repeated, and the harness itself not the bottleneck.
pub fn healthy(step: &Step) -> bool {
    step.latency.p99_ms < KNEE_P99_MS
        && step.lost == 0
        && step.gaps == 0
        && step.duplicates == 0
        && step.published.refused == 0
        && !client_bound(step)
}

/// The server did not keep up: something lost, or under 90% of the offered
/// deliveries per second delivered.
pub fn saturated(step: &Step) -> bool {
    step.lost > 0 || step.delivered_per_s < 0.9 * step.offered_deliveries_per_s
}

/// The harness's CPUs were nearly busy all the step long, so its figures
/// say as much about the client as about the server.
pub fn client_bound(step: &Step) -> bool {
    step.client_cpu_share > CLIENT_BOUND_SHARE
}

/// What must never happen in any step: a stream skipping or repeating an
/// event. (Loss past the knee is what a sweep looks for, not a problem.)
pub fn stream_problems<'a>(steps: impl IntoIterator<Item = &'a Step>) -> Vec<String> {
    steps
        .into_iter()
        .filter(|step| step.gaps + step.duplicates > 0)
        .map(|step| {
            format!(
                "at {}/s: {} gaps, {} duplicates",
                step.offered_per_s, step.gaps, step.duplicates
            )
        })
        .collect()
}
