//! **fanout** (broadcasts to every stream) and **unicast** (publishes to
//! random single devices): a swept offered rate; delivered rate, latency
//! and loss per rate. The knee is the last rate, going up, within the
//! limits of [`healthy`] (p99 under 100 ms, nothing lost). The sweep goes
//! on past the knee while the server still delivers what is offered, and
//! stops once it no longer does.

use super::{Common, Scenario, Session, healthy, saturated, stream_problems};
use crate::publisher::Mode;
use crate::report::{Metric, Step, TargetResult, metric};
use crate::target::Target;

/// Broadcasts per second tried by default (× 19,000 streams: 19k to 3.8M
/// deliveries/s).
const FANOUT_RATES: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0];
/// Unicast publishes per second tried by default.
const UNICAST_RATES: &[f64] = &[1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 40000.0];

#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct SweepArgs {
    /// Offered publishes per second, in the order tried (ascending).
    #[arg(long, value_delimiter = ',', value_parser = super::positive)]
    pub rates: Vec<f64>,
    /// Seconds each rate is held.
    #[arg(long, default_value_t = 5.0, value_parser = super::positive)]
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

impl Fanout {
    pub fn new(args: SweepArgs) -> Self {
        Self(args.or_rates(FANOUT_RATES))
    }
}

impl Unicast {
    pub fn new(args: SweepArgs) -> Self {
        Self(args.or_rates(UNICAST_RATES))
    }
}

impl SweepArgs {
    fn or_rates(mut self, defaults: &[f64]) -> Self {
        if self.rates.is_empty() {
            self.rates = defaults.to_vec();
        }
        self
    }
}

impl Scenario for Fanout {
    const NAME: &'static str = "fanout";
    const CHART: bool = true;

    async fn run(&self, common: &Common, target: Target) -> Result<TargetResult, String> {
        Session::run(common, target, 0, true, async |session| {
            sweep(&self.0, session, Mode::Broadcast, common.streams as u64).await
        })
        .await
    }
}

impl Scenario for Unicast {
    const NAME: &'static str = "unicast";
    const CHART: bool = true;

    async fn run(&self, common: &Common, target: Target) -> Result<TargetResult, String> {
        let mode = Mode::Unicast {
            devices: common.streams,
            connections: self.0.connections,
        };
        Session::run(common, target, 0, false, async |session| {
            sweep(&self.0, session, mode, 1).await
        })
        .await
    }
}

async fn sweep(
    args: &SweepArgs,
    session: &mut Session,
    mode: Mode,
    per_publish: u64,
) -> Result<TargetResult, String> {
    session.connect_all().await?;
    let target = session.target();
    let mut publisher = session.publisher(mode);
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
        misses = if saturated(&step) { misses + 1 } else { 0 };
        steps.push(step);
        if misses >= args.misses {
            break;
        }
    }
    let mut problems = stream_problems(&steps);
    if let Some(first) = steps.first().filter(|step| step.lost > 0) {
        problems.push(format!("{} lost at the lowest rate", first.lost));
    }
    Ok(TargetResult {
        target,
        layout: session.fleet.layout.clone(),
        runs: 1,
        summary: summarize(&steps, session.memory().pss_kib),
        steps,
        memory: Vec::new(),
        problems,
    })
}

fn summarize(steps: &[Step], pss_kib: u64) -> Vec<Metric> {
    let knee = steps.iter().take_while(|step| healthy(step)).last();
    let best = steps.iter().map(|s| s.delivered_per_s).fold(0.0, f64::max);
    let sustained = steps
        .iter()
        .filter(|step| !saturated(step))
        .map(|step| step.offered_deliveries_per_s)
        .fold(0.0, f64::max);
    let first = steps.first();
    let best_step = (steps.iter()).max_by(|a, b| a.delivered_per_s.total_cmp(&b.delivered_per_s));
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
            "fan-out p99 at the lowest rate",
            first.and_then(|s| s.fanout).map_or(f64::NAN, |f| f.p99_ms),
            "ms",
        ),
        metric(
            "server CPU per delivery at the knee",
            knee.map_or(f64::NAN, |s| s.server_cpu_us_per_delivery),
            "µs",
        ),
        metric(
            "server CPU per delivery at the best rate",
            best_step.map_or(f64::NAN, |s| s.server_cpu_us_per_delivery),
            "µs",
        ),
        metric(
            "of which on herald's store thread, at the best rate",
            (best_step.and_then(|s| Some(s.store_thread_cpu_s? / s.server_cpu_s * 100.0)))
                .unwrap_or(f64::NAN),
            "%",
        ),
        metric(
            "server memory after the sweep (PSS)",
            pss_kib as f64 / 1024.0,
            "MiB",
        ),
    ]
}
