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
//!   127.0.0.x, commanded over stdin/stdout (`protocol`); `tally` counts
//!   what each stream received.
//! - `publisher`: publishing at a fixed offered rate.
//! - `floor`: the `floor` target, a minimal server for what the machine can
//!   physically do (this binary again, `herald-bench floor`).
//! - `net`: client sockets and HTTP/1.1 exchanges; `procfs`: CPU seconds,
//!   memory and pinning.
//! - `report` / `chart`: JSON, Markdown and PNG results.

mod chart;
mod fleet;
mod floor;
mod median;
mod net;
mod procfs;
mod protocol;
mod publisher;
mod report;
mod scenarios;
mod tally;
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
    /// Some streams stop reading: healthy p99 and server memory.
    Slow {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: SlowArgs,
    },
    /// (internal) One worker process of streams.
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
    /// (internal) The `floor` target's server.
    #[command(hide = true)]
    Floor(floor::FloorArgs),
}

fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::Worker(args) => worker::run(args).map_err(|err| err.to_string()),
        Command::Floor(args) => floor::run(args).map_err(|err| err.to_string()),
        Command::Idle { common, args } => coordinate(&common, args),
        Command::Fanout { common, args } => coordinate(&common, scenarios::Fanout::new(args)),
        Command::Unicast { common, args } => coordinate(&common, scenarios::Unicast::new(args)),
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

/// Runs `scenario` against every target, writes and prints the results.
fn coordinate<S: Scenario + serde::Serialize>(common: &Common, scenario: S) -> Result<(), String> {
    procfs::pin_self(&procfs::parse_cpus(&common.client_cpus)?)
        .map_err(|err| format!("pinning: {err}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| err.to_string())?;
    let local = tokio::task::LocalSet::new();
    // Targets in turn within each run, so drift on a shared machine falls
    // on both alike.
    let mut runs: Vec<Vec<report::TargetResult>> =
        common.targets.iter().map(|_| Vec::new()).collect();
    local.block_on(&runtime, async {
        for run in 1..=common.runs {
            for (target, results) in common.targets.iter().zip(&mut runs) {
                eprintln!(
                    "{} run {run}/{}: {} streams against {}",
                    S::NAME,
                    common.runs,
                    common.streams,
                    target.name()
                );
                results.push(scenario.run(common, *target).await?);
            }
        }
        Ok::<_, String>(())
    })?;
    let targets = runs.into_iter().filter_map(median::combine).collect();
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
    let problems: Vec<String> = run
        .targets
        .iter()
        .flat_map(|result| {
            result
                .problems
                .iter()
                .map(|p| format!("{}: {p}", result.target.name()))
        })
        .collect();
    if common.check && !problems.is_empty() {
        return Err(format!("check failed: {}", problems.join("; ")));
    }
    Ok(())
}
