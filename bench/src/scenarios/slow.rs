//! **slow**: broadcasts at a fixed rate, once with every stream reading and
//! once with every tenth stream no longer reading after its `200`. The
//! healthy streams' p99 in both runs, and the server's memory at its peak
//! (how much a stuck reader may cost it).

use std::cell::Cell;
use std::time::Duration;

use super::{Common, Scenario, Session};
use crate::procfs::Memory;
use crate::publisher::{Mode, Publisher};
use crate::report::{MemoryPoint, Step, TargetResult, metric};
use crate::target::Target;

#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct SlowArgs {
    /// Broadcasts per second (2/s × 19,000 streams is within what either
    /// server delivers).
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Seconds each run publishes.
    #[arg(long, default_value_t = 30.0)]
    pub secs: f64,
    /// Every n-th stream stops reading.
    #[arg(long, default_value_t = 10)]
    pub every: usize,
}

impl Scenario for SlowArgs {
    const NAME: &'static str = "slow";

    async fn run(&self, common: &Common, target: Target) -> Result<TargetResult, String> {
        let (baseline, baseline_peak) = self.once(common, target, 0).await?;
        let (slowed, slowed_peak) = self.once(common, target, self.every).await?;
        let layout = crate::fleet::Layout {
            slow_every: self.every,
            ..slowed.1
        };
        let (baseline, slowed) = (baseline.0, slowed.0);
        let mib = |memory: Memory| memory.pss_kib as f64 / 1024.0;
        Ok(TargetResult {
            target,
            layout,
            summary: vec![
                metric("healthy p99, nobody slow", baseline.latency.p99_ms, "ms"),
                metric("healthy p99, 10% slow", slowed.latency.p99_ms, "ms"),
                metric("healthy max, 10% slow", slowed.latency.max_ms, "ms"),
                metric(
                    "healthy deliveries lost, 10% slow",
                    slowed.lost as f64,
                    "count",
                ),
                metric("gaps, 10% slow", slowed.gaps as f64, "count"),
                metric("peak server memory, nobody slow", mib(baseline_peak), "MiB"),
                metric("peak server memory, 10% slow", mib(slowed_peak), "MiB"),
            ],
            steps: vec![baseline, slowed],
            memory: vec![
                MemoryPoint {
                    label: "peak, nobody slow",
                    memory: baseline_peak,
                },
                MemoryPoint {
                    label: "peak, 10% slow",
                    memory: slowed_peak,
                },
            ],
        })
    }
}

impl SlowArgs {
    /// One run on a fresh server: its step and the server's peak memory.
    async fn once(
        &self,
        common: &Common,
        target: Target,
        every: usize,
    ) -> Result<((Step, crate::fleet::Layout), Memory), String> {
        let mut session = Session::start(common, target, every, false).await?;
        let result = self.publish(common, &mut session, every).await;
        session.finish().await;
        result
    }

    async fn publish(
        &self,
        common: &Common,
        session: &mut Session,
        every: usize,
    ) -> Result<((Step, crate::fleet::Layout), Memory), String> {
        let live = session.fleet.connect().await?;
        if live.missing > 0 {
            return Err(format!("{} streams never connected", live.missing));
        }
        let slow = if every == 0 {
            0
        } else {
            common.streams.div_ceil(every)
        };
        let healthy = (common.streams - slow) as u64;
        let mut publisher = Publisher::new(
            session.server.target,
            session.server.addr,
            Mode::Broadcast,
            common.payload_bytes,
        );
        let peak = Cell::new(Memory::default());
        let done = Cell::new(false);
        let pids = session.server.pids();
        let sampling = async {
            while !done.get() {
                let now = crate::procfs::memory(&pids);
                if now.pss_kib > peak.get().pss_kib {
                    peak.set(now);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        };
        let layout = session.fleet.layout.clone();
        let publishing = async {
            let step = session
                .step(&mut publisher, self.rate, self.secs, healthy)
                .await;
            done.set(true);
            step
        };
        let (step, ()) = tokio::join!(publishing, sampling);
        Ok(((step?, layout), peak.get()))
    }
}
