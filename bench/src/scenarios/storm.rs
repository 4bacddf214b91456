//! **storm**: N streams with history are all cut at once and all reconnect
//! at once with their Last-Event-ID while broadcasts continue. Time until
//! every stream is live again, events replayed, gaps (must be 0),
//! connection errors.

use std::time::Duration;

use super::{Common, Scenario, Session, percentiles};
use crate::publisher::Mode;
use crate::report::{MemoryPoint, TargetResult, metric};
use crate::target::Target;

#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct StormArgs {
    /// Broadcasts every stream has seen before the cut.
    #[arg(long, default_value_t = 20)]
    pub history: u64,
    /// Broadcasts per second during the storm (1/s × 19,000 streams is
    /// well within what either server delivers when nothing else happens).
    #[arg(long, default_value_t = 1.0, value_parser = super::positive)]
    pub rate: f64,
    /// Seconds of publishing before the cut.
    #[arg(long, default_value_t = 3.0, value_parser = super::positive)]
    pub before_secs: f64,
    /// Seconds of publishing after the cut.
    #[arg(long, default_value_t = 12.0, value_parser = super::positive)]
    pub after_secs: f64,
}

/// Rate of the history broadcasts.
const HISTORY_RATE: f64 = 50.0;

impl Scenario for StormArgs {
    const NAME: &'static str = "storm";

    async fn run(&self, common: &Common, target: Target) -> Result<TargetResult, String> {
        Session::run(common, target, 0, false, async |session| {
            self.measure(common, session).await
        })
        .await
    }
}

impl StormArgs {
    async fn measure(
        &self,
        common: &Common,
        session: &mut Session,
    ) -> Result<TargetResult, String> {
        let streams = common.streams as u64;
        session.connect_all().await?;
        let mut publisher = session.publisher(Mode::Broadcast);
        let history = publisher
            .run(
                HISTORY_RATE,
                Duration::from_secs_f64(self.history as f64 / HISTORY_RATE),
            )
            .await?;
        let had = session
            .fleet
            .await_deliveries(history.accepted * streams, Duration::from_secs(30))
            .await?;
        if had < history.accepted * streams {
            return Err(format!(
                "history: {had} of {} deliveries",
                history.accepted * streams
            ));
        }
        session.fleet.reset().await?;
        let before = session.memory();

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
        let after = session.memory();
        let merged = session.fleet.report().await?;
        let tally = &merged.tally;
        let latency = percentiles(&merged.latency);
        let lost = expected.saturating_sub(tally.deliveries);
        let problems = [
            (again.missing, "streams never live again"),
            (tally.gaps, "gaps"),
            (tally.duplicates, "duplicates"),
            (lost, "lost"),
        ]
        .into_iter()
        .filter(|(count, _)| *count > 0)
        .map(|(count, what)| format!("{count} {what}"))
        .collect();
        Ok(TargetResult {
            target: session.target(),
            layout: session.fleet.layout.clone(),
            runs: 1,
            summary: vec![
                metric(
                    "all live again after the cut",
                    again.elapsed_ms / 1000.0,
                    "s",
                ),
                metric("connection errors", again.errors as f64, "count"),
                metric(
                    "events due while reconnecting (replayed)",
                    tally.replayed as f64,
                    "count",
                ),
                metric("gaps", tally.gaps as f64, "count"),
                metric("duplicates", tally.duplicates as f64, "count"),
                metric("lost", lost as f64, "count"),
                metric("resets", tally.resets as f64, "count"),
                metric("publishes refused", published.refused as f64, "count"),
                metric("publishes retried", published.retried as f64, "count"),
                metric("publish lag p99", published.send_lag_p99_ms, "ms"),
                metric("p99 latency through the storm", latency.p99_ms, "ms"),
                metric("max latency through the storm", latency.max_ms, "ms"),
                metric("server CPU", server_after - server_before, "s"),
                metric("client CPU", client_after - client_before, "s"),
            ],
            steps: Vec::new(),
            memory: vec![
                MemoryPoint {
                    label: "before the cut",
                    memory: before,
                },
                MemoryPoint {
                    label: "after the storm",
                    memory: after,
                },
            ],
            problems,
        })
    }
}
