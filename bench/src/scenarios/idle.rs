//! **idle**: hold N streams with keep-alives on. Server memory idle, with
//! the streams open, after a burst of broadcasts and after every client
//! left; memory per stream; CPU while nothing but keep-alives happens.

use std::time::Duration;

use super::{Common, Scenario, Session};
use crate::publisher::Mode;
use crate::report::{MemoryPoint, TargetResult, metric};
use crate::target::Target;

#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct IdleArgs {
    /// Seconds the streams are held idle (more than the keep-alive period,
    /// so keep-alives are part of the figure).
    #[arg(long, default_value_t = 20)]
    pub hold_secs: u64,
    /// Broadcasts of the burst (sent within one second).
    #[arg(long, default_value_t = 100)]
    pub burst: u64,
}

/// Lets the server settle (start-up, freeing what a phase left) before a
/// reading.
const SETTLE: Duration = Duration::from_secs(2);

impl Scenario for IdleArgs {
    const NAME: &'static str = "idle";

    async fn run(&self, common: &Common, target: Target) -> Result<TargetResult, String> {
        Session::run(common, target, 0, false, async |session| {
            self.measure(common, session).await
        })
        .await
    }
}

impl IdleArgs {
    async fn measure(
        &self,
        common: &Common,
        session: &mut Session,
    ) -> Result<TargetResult, String> {
        tokio::time::sleep(SETTLE).await;
        let at_start = session.memory();
        let (server_before, _) = session.cpu();
        let live = session.connect_all().await?;
        let (server_connected, _) = session.cpu();
        tokio::time::sleep(SETTLE).await;
        let with_streams = session.memory();

        session.fleet.reset().await?;
        let (server_idle, client_idle) = session.cpu();
        tokio::time::sleep(Duration::from_secs(self.hold_secs)).await;
        let (server_held, client_held) = session.cpu();
        let held = session.fleet.report().await?.tally;

        let mut publisher = session.publisher(Mode::Broadcast);
        let published = publisher
            .run(self.burst as f64, Duration::from_secs(1))
            .await?;
        let expected = published.accepted * common.streams as u64;
        let delivered = session
            .fleet
            .await_deliveries(expected, Duration::from_secs(30))
            .await?;
        tokio::time::sleep(SETTLE).await;
        let after_burst = session.memory();

        session.fleet.close().await?;
        tokio::time::sleep(SETTLE).await;
        let after_leave = session.memory();

        let streams = common.streams as f64;
        let per_stream = |with: u64, without: u64| with.saturating_sub(without) as f64 / streams;
        let hold = self.hold_secs as f64;
        let lost = expected.saturating_sub(delivered);
        let problems = if lost > 0 {
            vec![format!("{lost} burst deliveries lost")]
        } else {
            Vec::new()
        };
        Ok(TargetResult {
            target: session.target(),
            layout: session.fleet.layout.clone(),
            runs: 1,
            summary: vec![
                metric("time to open all", live.elapsed_ms / 1000.0, "s"),
                metric("connect errors", live.errors as f64, "count"),
                metric(
                    "server CPU to open all",
                    server_connected - server_before,
                    "s",
                ),
                metric(
                    "memory per idle stream (PSS)",
                    per_stream(with_streams.pss_kib, at_start.pss_kib),
                    "KiB",
                ),
                metric(
                    "anonymous memory per idle stream",
                    per_stream(with_streams.anon_kib, at_start.anon_kib),
                    "KiB",
                ),
                metric(
                    "shared memory per idle stream",
                    per_stream(with_streams.shmem_kib, at_start.shmem_kib),
                    "KiB",
                ),
                metric(
                    "server CPU while idle",
                    (server_held - server_idle) / hold * 100.0,
                    "% of a core",
                ),
                metric(
                    "client CPU while idle",
                    (client_held - client_idle) / hold * 100.0,
                    "% of a core",
                ),
                metric(
                    "keep-alive events per stream",
                    held.heartbeats as f64 / streams,
                    "count",
                ),
                metric("burst deliveries", delivered as f64, "count"),
                metric("burst deliveries lost", lost as f64, "count"),
            ],
            steps: Vec::new(),
            memory: vec![
                MemoryPoint {
                    label: "idle",
                    memory: at_start,
                },
                MemoryPoint {
                    label: "N idle streams",
                    memory: with_streams,
                },
                MemoryPoint {
                    label: "after burst",
                    memory: after_burst,
                },
                MemoryPoint {
                    label: "after all left",
                    memory: after_leave,
                },
            ],
            problems,
        })
    }
}
