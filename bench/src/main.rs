//! `herald-bench`: measures herald side by side with nginx + nchan on the
//! same machine, in the same invocation.
//!
//! Layout:
//! - `scenarios/`: idle, fanout and unicast (`sweep`), storm, slow; each
//!   runs against every target and yields a [`report::TargetResult`].
//! - `target`: starting and stopping herald and nginx (pinned to the server
//!   CPUs), and how each is subscribed to and published to.
//! - `fleet` / `worker`: the streams live in worker processes (this binary
//!   again, `herald-bench worker`), a few thousand sockets each on their own
//!   127.0.0.x, commanded over stdin/stdout (`protocol`).
//! - `publisher`: publishing at a fixed offered rate.
//! - `net`: client sockets and HTTP/1.1 exchanges; `procfs`: CPU seconds,
//!   memory and pinning.
//! - `report` / `chart`: JSON, Markdown and PNG results.

mod chart;
mod fleet;
mod net;
mod procfs;
mod protocol;
mod publisher;
mod report;
mod scenarios;
mod target;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use scenarios::{Common, IdleArgs, Scenario, SlowArgs, StormArgs, SweepArgs};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Hold N idle streams: memory per stream, CPU while idle.
    Idle {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: IdleArgs,
    },
    /// Broadcast to N streams at swept rates: delivered rate, latency, loss, knee.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: SweepArgs,
    },
    /// Publish to random single devices at swept rates.
    Unicast {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: SweepArgs,
    },
    /// Cut every stream at once; all resume with Last-Event-ID.
    Storm {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: StormArgs,
    },
    /// Every tenth stream stops reading: healthy p99 and server memory.
    Slow {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: SlowArgs,
    },
    /// (internal) One worker process of streams.
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::Worker(args) => worker::run(args).map_err(|err| err.to_string()),
        Command::Idle { common, args } => coordinate(&common, args),
        Command::Fanout { common, args } => {
            coordinate(&common, scenarios::Fanout(args.or_rates(FANOUT_RATES)))
        }
        Command::Unicast { common, args } => {
            coordinate(&common, scenarios::Unicast(args.or_rates(UNICAST_RATES)))
        }
        Command::Storm { common, args } => coordinate(&common, args),
        Command::Slow { common, args } => coordinate(&common, args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("herald-bench: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Broadcasts per second tried by default (× 19,000 streams: 19k to 3.8M
/// deliveries/s).
const FANOUT_RATES: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0];
/// Unicast publishes per second tried by default.
const UNICAST_RATES: &[f64] = &[1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 40000.0];

impl SweepArgs {
    fn or_rates(mut self, defaults: &[f64]) -> Self {
        if self.rates.is_empty() {
            self.rates = defaults.to_vec();
        }
        self
    }
}

/// Runs `scenario` against every target, writes and prints the results.
fn coordinate<S: Scenario + serde::Serialize>(common: &Common, scenario: S) -> Result<(), String> {
    procfs::pin_self(&procfs::parse_cpus(&common.client_cpus)?)
        .map_err(|err| format!("pinning: {err}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| err.to_string())?;
    let local = tokio::task::LocalSet::new();
    let targets = local.block_on(&runtime, async {
        let mut results = Vec::new();
        for target in &common.targets {
            eprintln!("{}: {} against {}", S::NAME, common.streams, target.name());
            results.push(scenario.run(common, *target).await?);
        }
        Ok::<_, String>(results)
    })?;
    let setup = serde_json::json!({
        "scenario": &scenario,
        "server_cpus": common.server_cpus,
        "client_cpus": common.client_cpus,
        "buffer_events": common.buffer_events,
        "keepalive_secs": common.keepalive_secs,
        "payload_bytes": common.payload_bytes,
        "herald_log": common.herald_log,
        "herald_overrides": target::herald_overrides(&common.server_options()?),
    });
    let run = report::Run {
        scenario: S::NAME,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: report::Machine::read(),
        setup,
        targets,
    };
    let markdown = report::write(&run, &common.out)?;
    if S::CHART {
        chart::write(&common.out, S::NAME, &run.targets)?;
    }
    println!("{markdown}");
    if common.check
        && let Some(violation) = run
            .targets
            .iter()
            .find_map(|result| scenario.violation(result))
    {
        return Err(format!("check failed: {violation}"));
    }
    Ok(())
}
