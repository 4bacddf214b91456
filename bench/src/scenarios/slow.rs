//! **slow**: broadcasts at a fixed rate, once with every stream reading and
//! once with one stream in `every` no longer reading after its `200` (its
//! socket's receive buffer is small, so what it leaves unread backs up into
//! the server within the run). The healthy streams' p99 in both runs, the
//! server's peak memory, what its sockets hold unsent, and how many slow
//! streams it ended.

use std::cell::Cell;
use std::time::Duration;

use super::{Common, Scenario, Session, stream_problems};
use crate::procfs::{self, Memory, ServerSockets};
use crate::publisher::Mode;
use crate::report::{MemoryPoint, Step, TargetResult, metric};
use crate::target::Target;

#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct SlowArgs {
    /// Broadcasts per second (choose streams × rate within what both
    /// servers deliver, and payload × rate × secs well beyond what kernel
    /// buffers hold for a slow stream).
    #[arg(long, default_value_t = 10.0, value_parser = super::positive)]
    pub rate: f64,
    /// Seconds each run publishes.
    #[arg(long, default_value_t = 40.0, value_parser = super::positive)]
    pub secs: f64,
    /// One stream in this many stops reading.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..))]
    pub every: u64,
}

/// One run: its step, the server's peak memory, and its sockets at the end.
struct Run {
    step: Step,
    peak: Memory,
    sockets: ServerSockets,
}

impl Scenario for SlowArgs {
    const NAME: &'static str = "slow";

    async fn run(&self, common: &Common, target: Target) -> Result<TargetResult, String> {
        let baseline = Session::run(common, target, 0, false, async |s| {
            self.once(common, s, 0).await
        })
        .await?;
        let every = self.every as usize;
        let (slowed, layout) = Session::run(common, target, every, false, async |s| {
            Ok((self.once(common, s, every).await?, s.fleet.layout.clone()))
        })
        .await?;
        let slow_streams = common.streams.div_ceil(every) as u64;
        // Read after the publisher closed its connection: only streams are
        // left on the server's port.
        let ended = (common.streams as u64).saturating_sub(slowed.sockets.established);
        let offered_mib = self.rate * self.secs * common.payload_bytes as f64 / (1 << 20) as f64;
        let mut problems = stream_problems([&baseline.step, &slowed.step]);
        if slowed.step.lost > 0 {
            problems.push(format!(
                "{} deliveries to healthy streams lost",
                slowed.step.lost
            ));
        }
        if slowed.sockets.backed_up + ended < slow_streams / 2 {
            problems.push(format!(
                "the slow streams never backed up into the server ({offered_mib:.2} MiB offered to each): offer more bytes"
            ));
        }
        let mib = |memory: Memory| memory.pss_kib as f64 / 1024.0;
        let one_in = format!("1 in {every} slow");
        Ok(TargetResult {
            target,
            layout,
            runs: 1,
            summary: vec![
                metric("offered to each slow stream", offered_mib, "MiB"),
                metric(
                    "healthy p99, nobody slow",
                    baseline.step.latency.p99_ms,
                    "ms",
                ),
                metric(
                    format!("healthy p99, {one_in}"),
                    slowed.step.latency.p99_ms,
                    "ms",
                ),
                metric(
                    format!("healthy max, {one_in}"),
                    slowed.step.latency.max_ms,
                    "ms",
                ),
                metric(
                    format!("healthy deliveries lost, {one_in}"),
                    slowed.step.lost as f64,
                    "count",
                ),
                metric("peak server memory, nobody slow", mib(baseline.peak), "MiB"),
                metric(
                    format!("peak server memory, {one_in}"),
                    mib(slowed.peak),
                    "MiB",
                ),
                metric(
                    format!("unsent in server sockets at the end, {one_in}"),
                    slowed.sockets.send_queue_bytes as f64 / (1 << 20) as f64,
                    "MiB",
                ),
                metric("slow streams", slow_streams as f64, "count"),
                metric("slow streams the server ended", ended as f64, "count"),
            ],
            memory: vec![
                MemoryPoint {
                    label: "peak, nobody slow",
                    memory: baseline.peak,
                },
                MemoryPoint {
                    label: "peak, some slow",
                    memory: slowed.peak,
                },
            ],
            steps: vec![baseline.step, slowed.step],
            problems,
        })
    }
}

impl SlowArgs {
    async fn once(
        &self,
        common: &Common,
        session: &mut Session,
        every: usize,
    ) -> Result<Run, String> {
        session.connect_all().await?;
        let slow = if every == 0 {
            0
        } else {
            common.streams.div_ceil(every)
        };
        let healthy = (common.streams - slow) as u64;
        let mut publisher = session.publisher(Mode::Broadcast);
        let peak = Cell::new(Memory::default());
        let done = Cell::new(false);
        let pids = session.server.pids();
        let sampling = async {
            while !done.get() {
                let now = procfs::memory(&pids);
                if now.pss_kib > peak.get().pss_kib {
                    peak.set(now);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        };
        let publishing = async {
            let step = session
                .step(&mut publisher, self.rate, self.secs, healthy)
                .await;
            done.set(true);
            step
        };
        let (step, ()) = tokio::join!(publishing, sampling);
        Ok(Run {
            step: step?,
            peak: peak.get(),
            sockets: procfs::server_sockets(session.server.addr.port()),
        })
    }
}
