//! **storm**: N streams with history are all cut at once and all reconnect
//! at once with their Last-Event-ID while broadcasts continue. Time until
//! every stream is live again, events replayed, gaps (must be 0),
//! connection errors.

use std::time::Duration;

use super::{Common, Scenario, Session};
use crate::publisher::{Mode, Publisher};
use crate::report::{TargetResult, metric};
use crate::target::Target;

#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct StormArgs {
    /// Broadcasts every stream has seen before the cut.
    #[arg(long, default_value_t = 20)]
    pub history: u64,
    /// Broadcasts per second during the storm (1/s × 19,000 streams is
    /// well within what either server delivers when nothing else happens).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Seconds of publishing before the cut.
    #[arg(long, default_value_t = 3.0)]
    pub before_secs: f64,
    /// Seconds of publishing after the cut.
    #[arg(long, default_value_t = 12.0)]
    pub after_secs: f64,
}

impl Scenario for StormArgs {
    const NAME: &'static str = "storm";

    async fn run(&self, common: &Common, target: Target) -> Result<TargetResult, String> {
        let mut session = Session::start(common, target, 0, true).await?;
        let result = self.measure(common, &mut session).await;
        session.finish().await;
        result
    }

    fn violation(&self, result: &TargetResult) -> Option<String> {
        let failed = ["streams not live again", "gaps", "duplicates", "lost"]
            .into_iter()
            .filter_map(|name| result.summary.iter().find(|m| m.name == name))
            .find(|m| m.value > 0.0)?;
        Some(format!(
            "{}: {} {}",
            result.target.name(),
            failed.value,
            failed.name
        ))
    }
}

impl StormArgs {
    async fn measure(
        &self,
        common: &Common,
        session: &mut Session,
    ) -> Result<TargetResult, String> {
        let streams = common.streams as u64;
        let live = session.fleet.connect().await?;
        if live.missing > 0 {
            return Err(format!("{} streams never connected", live.missing));
        }
        let target = session.server.target;
        let mut publisher = Publisher::new(
            target,
            session.server.addr,
            Mode::Broadcast,
            common.payload_bytes,
        );
        let history = publisher
            .run(50.0, Duration::from_secs_f64(self.history as f64 / 50.0))
            .await?;
        session
            .fleet
            .await_deliveries(history.accepted * streams, Duration::from_secs(30))
            .await?;
        session.fleet.reset().await?;

        let (server_before, client_before) = session.cpu();
        let publishing = publisher.run(
            self.rate,
            Duration::from_secs_f64(self.before_secs + self.after_secs),
        );
        let fleet = &mut session.fleet;
        let storm = async {
            tokio::time::sleep(Duration::from_secs_f64(self.before_secs)).await;
            fleet.storm().await
        };
        let (published, again) = tokio::join!(publishing, storm);
        let (published, again) = (published?, again?);
        let expected = published.accepted * streams;
        session
            .fleet
            .await_deliveries(expected, Duration::from_secs(30))
            .await?;
        let (server_after, client_after) = session.cpu();
        let merged = session.fleet.report().await?;
        let tally = &merged.tally;
        let latency = super::percentiles(&merged.latency);
        Ok(TargetResult {
            target,
            layout: session.fleet.layout.clone(),
            summary: vec![
                metric(
                    "all live again after the cut",
                    again.elapsed_ms / 1000.0,
                    "s",
                ),
                metric("streams not live again", again.missing as f64, "streams"),
                metric("connection errors", again.errors as f64, "count"),
                metric("events replayed", tally.replayed as f64, "count"),
                metric("gaps", tally.gaps as f64, "count"),
                metric("duplicates", tally.duplicates as f64, "count"),
                metric(
                    "lost",
                    expected.saturating_sub(tally.deliveries) as f64,
                    "count",
                ),
                metric("resets", tally.resets as f64, "count"),
                metric("publishes refused", published.refused as f64, "count"),
                metric("publishes retried", published.retried as f64, "count"),
                metric("p99 latency through the storm", latency.p99_ms, "ms"),
                metric("max latency through the storm", latency.max_ms, "ms"),
                metric("server CPU", server_after - server_before, "s"),
                metric("client CPU", client_after - client_before, "s"),
            ],
            steps: Vec::new(),
            memory: Vec::new(),
        })
    }
}
