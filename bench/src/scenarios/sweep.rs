//! **fanout** (broadcasts to every stream) and **unicast** (publishes to
//! random single devices): a swept offered rate; delivered rate, latency
//! and loss per rate; the knee is the highest rate with p99 under 100 ms
//! and nothing lost. The sweep goes on past the knee while the server
//! still delivers what is offered, and stops once it no longer does.

use super::{Common, Scenario, Session};
use crate::publisher::{Mode, Publisher};
use crate::report::{Step, TargetResult, metric};
use crate::target::Target;

#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct SweepArgs {
    /// Offered publishes per second, in the order tried.
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// Seconds each rate is held.
    #[arg(long, default_value_t = 5.0)]
    pub step_secs: f64,
    /// Stop after this many rates in a row the server could not deliver
    /// in full (something lost, or under 90% of the offered rate).
    #[arg(long, default_value_t = 2)]
    pub misses: usize,
    /// Publisher connections (unicast; broadcasts use one, to keep order).
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
}

#[derive(serde::Serialize)]
pub struct Fanout(pub SweepArgs);
#[derive(serde::Serialize)]
pub struct Unicast(pub SweepArgs);

impl Scenario for Fanout {
    const NAME: &'static str = "fanout";
    const CHART: bool = true;

    async fn run(&self, common: &Common, target: Target) -> Result<TargetResult, String> {
        sweep(&self.0, common, target, true).await
    }
}

impl Scenario for Unicast {
    const NAME: &'static str = "unicast";
    const CHART: bool = true;

    async fn run(&self, common: &Common, target: Target) -> Result<TargetResult, String> {
        sweep(&self.0, common, target, false).await
    }
}

async fn sweep(
    args: &SweepArgs,
    common: &Common,
    target: Target,
    broadcast: bool,
) -> Result<TargetResult, String> {
    let mut session = Session::start(common, target, 0, broadcast).await?;
    let result = run_steps(args, common, &mut session, broadcast).await;
    session.finish().await;
    result
}

async fn run_steps(
    args: &SweepArgs,
    common: &Common,
    session: &mut Session,
    broadcast: bool,
) -> Result<TargetResult, String> {
    let live = session.fleet.connect().await?;
    if live.missing > 0 {
        return Err(format!("{} streams never connected", live.missing));
    }
    let (mode, per_publish) = if broadcast {
        (Mode::Broadcast, common.streams as u64)
    } else {
        let mode = Mode::Unicast {
            devices: common.streams,
            connections: args.connections,
        };
        (mode, 1)
    };
    let target = session.server.target;
    let mut publisher = Publisher::new(target, session.server.addr, mode, common.payload_bytes);
    let mut steps = Vec::new();
    let mut misses = 0;
    for rate in &args.rates {
        let step = session
            .step(&mut publisher, *rate, args.step_secs, per_publish)
            .await?;
        eprintln!(
            "{} {rate}/s: {:.0} delivered/s, p99 {:.1} ms, lost {}",
            target.name(),
            step.delivered_per_s,
            step.latency.p99_ms,
            step.lost
        );
        misses = if step.saturated() { misses + 1 } else { 0 };
        steps.push(step);
        if misses >= args.misses {
            break;
        }
    }
    let memory = session.memory();
    Ok(TargetResult {
        target,
        layout: session.fleet.layout.clone(),
        summary: summarize(&steps, memory.pss_kib),
        steps,
        memory: Vec::new(),
    })
}

fn summarize(steps: &[Step], pss_kib: u64) -> Vec<crate::report::Metric> {
    let knee = steps
        .iter()
        .filter(|s| s.healthy)
        .max_by(|a, b| a.offered_per_s.total_cmp(&b.offered_per_s));
    let best = steps.iter().map(|s| s.delivered_per_s).fold(0.0, f64::max);
    let sustained = steps
        .iter()
        .filter(|s| !s.saturated())
        .map(|s| s.offered_deliveries_per_s)
        .fold(0.0, f64::max);
    let first = steps.first();
    vec![
        metric(
            "knee (publishes/s)",
            knee.map_or(0.0, |s| s.offered_per_s),
            "1/s",
        ),
        metric(
            "knee (deliveries/s)",
            knee.map_or(0.0, |s| s.offered_deliveries_per_s),
            "deliveries/s",
        ),
        metric("highest rate delivered in full", sustained, "deliveries/s"),
        metric("best delivered rate", best, "deliveries/s"),
        metric(
            "p99 latency at the lowest rate",
            first.map_or(f64::NAN, |s| s.latency.p99_ms),
            "ms",
        ),
        metric(
            "server CPU per delivery at the knee",
            knee.map_or(f64::NAN, |s| s.server_cpu_us_per_delivery),
            "µs",
        ),
        metric(
            "server memory after the sweep (PSS)",
            pss_kib as f64 / 1024.0,
            "MiB",
        ),
    ]
}
