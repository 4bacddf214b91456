//! A scenario's result: the JSON record, the Markdown table (the targets
//! side by side, with the first one's ratio to each other) and the machine
//! it ran on.

use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use crate::fleet::Layout;
use crate::procfs::Memory;
use crate::publisher::Published;
use crate::target::Target;

#[derive(Serialize)]
pub struct Run {
    pub scenario: &'static str,
    pub command: String,
    pub machine: Machine,
    pub setup: serde_json::Value,
    pub targets: Vec<TargetResult>,
}

#[derive(Serialize)]
pub struct TargetResult {
    pub target: Target,
    pub layout: Layout,
    /// Runs folded into this result (see `median`).
    pub runs: usize,
    pub summary: Vec<Metric>,
    pub steps: Vec<Step>,
    pub memory: Vec<MemoryPoint>,
    /// What went wrong that must not (gaps, loss at a sustainable rate,
    /// streams that never connected); `--check` fails on any.
    pub problems: Vec<String>,
}

#[derive(Serialize, Clone)]
pub struct Metric {
    pub name: String,
    /// The median over the runs.
    pub value: f64,
    pub unit: &'static str,
    /// Lowest and highest over the runs, when there were several.
    pub range: Option<(f64, f64)>,
}

pub fn metric(name: impl Into<String>, value: f64, unit: &'static str) -> Metric {
    Metric {
        name: name.into(),
        value,
        unit,
        range: None,
    }
}

#[derive(Serialize)]
pub struct MemoryPoint {
    pub label: &'static str,
    pub memory: Memory,
}

#[derive(Serialize, Clone, Copy, Default)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// One offered rate held for a while.
#[derive(Serialize)]
pub struct Step {
    /// Publishes per second offered.
    pub offered_per_s: f64,
    /// Deliveries per second that rate asks for (× streams for broadcasts).
    pub offered_deliveries_per_s: f64,
    pub published: Published,
    pub expected: u64,
    pub delivered: u64,
    pub delivered_per_s: f64,
    pub lost: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub latency: Percentiles,
    /// Broadcasts: publish until the last stream had it, over the
    /// broadcasts that reached every stream.
    pub fanout: Option<Percentiles>,
    /// Broadcasts that did not reach every stream within the drain time.
    pub incomplete_fanouts: u64,
    /// Streams the server ended during the step (each resumed).
    pub ended: u64,
    pub resets: u64,
    /// Failed connects and non-200 answers to streams (each retried).
    pub errors: u64,
    /// Every server process's CPU: herald's, nginx's, or the cluster's two
    /// nodes and Redis.
    pub server_cpu_s: f64,
    /// Of `server_cpu_s`, the cluster's Redis.
    pub redis_cpu_s: Option<f64>,
    /// Of `server_cpu_s`, herald's store and registry thread (its main
    /// thread): the serial part, which more cores would not spread.
    pub store_thread_cpu_s: Option<f64>,
    pub client_cpu_s: f64,
    /// Client CPU time over the step's duration and the client's CPUs: near
    /// 1, the harness rather than the server limited the step.
    pub client_cpu_share: f64,
    pub server_cpu_us_per_delivery: f64,
    /// Within the knee's limits (see `scenarios::healthy`).
    pub healthy: bool,
}

#[derive(Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub kernel: String,
    pub commit: String,
    pub date: String,
    pub open_files_limit: u64,
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_default();
        let commit = std::process::Command::new("git")
            .args(["describe", "--always", "--dirty", "--abbrev=10"])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .unwrap_or_default();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        Self {
            // Not available_parallelism: the harness is pinned to its CPUs.
            // SAFETY: sysconf has no preconditions.
            cores: unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(0) as usize,
            cpu,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            commit,
            date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            open_files_limit: limit.rlim_cur,
        }
    }
}

/// Writes `<scenario>.json` and `<scenario>.md` into `dir`; answers the
/// Markdown.
pub fn write(run: &Run, dir: &Path) -> Result<String, String> {
    std::fs::create_dir_all(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    let json = serde_json::to_string_pretty(run).map_err(|err| err.to_string())?;
    let markdown = markdown(run);
    for (extension, text) in [("json", json + "\n"), ("md", markdown.clone())] {
        let path = dir.join(format!("{}.{extension}", run.scenario));
        std::fs::write(&path, text).map_err(|err| format!("{}: {err}", path.display()))?;
    }
    Ok(markdown)
}

fn markdown(run: &Run) -> String {
    let mut out = String::new();
    let machine = &run.machine;
    let _ = writeln!(out, "# herald-bench {}\n", run.scenario);
    let _ = writeln!(out, "`{}`\n", run.command);
    let _ = writeln!(
        out,
        "{} cores ({}), kernel {}, commit {}, {}, open files ≤ {}.\n",
        machine.cores,
        machine.cpu,
        machine.kernel,
        machine.commit,
        machine.date,
        machine.open_files_limit
    );
    if let Some(first) = run.targets.first() {
        let layout = &first.layout;
        let _ = writeln!(
            out,
            "{} streams over {} worker processes (≤ {} sockets each, sources {}); setup: `{}`\n",
            layout.streams, layout.workers, layout.per_worker, layout.sources, run.setup
        );
        let _ = writeln!(
            out,
            "Each figure is the median of {} runs per target (targets taken in turn), with the range in brackets; each swept rate shows the run with the median p99.\n",
            first.runs
        );
    }
    for target in &run.targets {
        for problem in &target.problems {
            let _ = writeln!(out, "**{}: {problem}**\n", target.target.name());
        }
    }
    summary_table(&mut out, &run.targets);
    steps_table(&mut out, &run.targets);
    memory_table(&mut out, &run.targets);
    out
}

/// The targets' columns, then the first target's ratio to each other one
/// (herald/nchan, herald/floor, …).
fn header(out: &mut String, first: &str, targets: &[TargetResult]) {
    let names: Vec<&str> = targets.iter().map(|t| t.target.name()).collect();
    let ratios: String = (names.iter().skip(1))
        .map(|other| format!(" {}/{other} |", names[0]))
        .collect();
    let _ = writeln!(out, "| {first} | {} |{ratios}", names.join(" | "));
    let columns = names.len() + names.len().saturating_sub(1);
    let _ = writeln!(out, "|---|{}", "---|".repeat(columns));
}

/// The first value divided by each of the others.
fn ratio(values: &[f64]) -> String {
    let Some((first, others)) = values.split_first() else {
        return String::new();
    };
    (others.iter())
        .map(
            |other| match first.is_finite() && other.is_finite() && *other != 0.0 {
                true => format!(" {:.2} |", first / other),
                false => " – |".to_owned(),
            },
        )
        .collect()
}

fn summary_table(out: &mut String, targets: &[TargetResult]) {
    let Some(first) = targets.first() else { return };
    let _ = writeln!(out, "## Summary\n");
    header(out, "metric", targets);
    for (row, metric) in first.summary.iter().enumerate() {
        let metrics: Vec<Option<&Metric>> = targets.iter().map(|t| t.summary.get(row)).collect();
        let values: Vec<f64> = metrics
            .iter()
            .map(|m| m.map_or(f64::NAN, |m| m.value))
            .collect();
        let cells: Vec<String> = metrics
            .iter()
            .map(|m| m.map_or("–".to_owned(), cell))
            .collect();
        let _ = writeln!(
            out,
            "| {} ({}) | {} |{}",
            metric.name,
            metric.unit,
            cells.join(" | "),
            ratio(&values)
        );
    }
    out.push('\n');
}

/// A median, with the range over the runs when it was not one value.
fn cell(metric: &Metric) -> String {
    match metric.range {
        Some((low, high)) if low < high => format!(
            "{} ({}–{})",
            format_value(metric.value),
            format_value(low),
            format_value(high)
        ),
        _ => format_value(metric.value),
    }
}

fn steps_table(out: &mut String, targets: &[TargetResult]) {
    if targets.iter().all(|t| t.steps.is_empty()) {
        return;
    }
    let _ = writeln!(out, "## Offered rates\n");
    let _ = writeln!(
        out,
        "| target | offered/s | deliveries/s offered | delivered/s | p50 ms | p99 ms | max ms | fan-out p99 ms | publish lag p99 ms | lost | gaps | dups | refused | streams ended | server CPU s | client CPU s (share) | server µs/delivery | within knee limits |"
    );
    let _ = writeln!(out, "|{}", "---|".repeat(18));
    for target in targets {
        for step in &target.steps {
            let fanout = step
                .fanout
                .map_or("–".to_owned(), |f| format_value(f.p99_ms));
            let cells = [
                target.target.name().to_owned(),
                format_value(step.offered_per_s),
                format_value(step.offered_deliveries_per_s),
                format_value(step.delivered_per_s),
                format_value(step.latency.p50_ms),
                format_value(step.latency.p99_ms),
                format_value(step.latency.max_ms),
                fanout,
                format_value(step.published.send_lag_p99_ms),
                step.lost.to_string(),
                step.gaps.to_string(),
                step.duplicates.to_string(),
                step.published.refused.to_string(),
                step.ended.to_string(),
                match (step.redis_cpu_s, step.store_thread_cpu_s) {
                    (Some(redis), _) => format!(
                        "{} (Redis {})",
                        format_value(step.server_cpu_s),
                        format_value(redis)
                    ),
                    (None, Some(store)) => format!(
                        "{} (store thread {:.0}%)",
                        format_value(step.server_cpu_s),
                        store / step.server_cpu_s * 100.0
                    ),
                    (None, None) => format_value(step.server_cpu_s),
                },
                format!(
                    "{} ({:.0}%)",
                    format_value(step.client_cpu_s),
                    step.client_cpu_share * 100.0
                ),
                format_value(step.server_cpu_us_per_delivery),
                if step.healthy { "yes" } else { "no" }.to_owned(),
            ];
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
    }
    out.push('\n');
}

fn memory_table(out: &mut String, targets: &[TargetResult]) {
    let Some(first) = targets.first() else { return };
    if first.memory.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## Server memory (MiB: PSS, then anonymous / shared memory in brackets)\n"
    );
    header(out, "when", targets);
    for (row, point) in first.memory.iter().enumerate() {
        let memories: Vec<Memory> = targets
            .iter()
            .map(|t| t.memory.get(row).map_or_else(Memory::default, |p| p.memory))
            .collect();
        let cells: Vec<String> = memories
            .iter()
            .map(|m| {
                let mib = |kib: u64| kib as f64 / 1024.0;
                format!(
                    "{:.1} ({:.1} / {:.1})",
                    mib(m.pss_kib),
                    mib(m.anon_kib),
                    mib(m.shmem_kib)
                )
            })
            .collect();
        let values: Vec<f64> = memories.iter().map(|m| m.pss_kib as f64).collect();
        let _ = writeln!(
            out,
            "| {} | {} |{}",
            point.label,
            cells.join(" | "),
            ratio(&values)
        );
    }
    out.push('\n');
}

/// Three significant figures, no exponent for the magnitudes seen here.
pub fn format_value(value: f64) -> String {
    if value.is_nan() {
        return "–".to_owned();
    }
    let magnitude = value.abs();
    if magnitude >= 100.0 || value == value.trunc() && magnitude < 1e15 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_about_three_significant_figures() {
        assert_eq!(format_value(1234.6), "1235");
        assert_eq!(format_value(12.345), "12.3");
        assert_eq!(format_value(1.2345), "1.23");
        assert_eq!(format_value(0.01234), "0.012");
        assert_eq!(format_value(7.0), "7");
        assert_eq!(format_value(f64::NAN), "–");
    }

    #[test]
    fn ratios_divide_the_first_target_by_each_other_one() {
        assert_eq!(ratio(&[3.0, 2.0]), " 1.50 |");
        assert_eq!(ratio(&[3.0, 0.0]), " – |");
        assert_eq!(ratio(&[f64::NAN, 2.0]), " – |");
        assert_eq!(ratio(&[3.0]), "");
        assert_eq!(ratio(&[3.0, 2.0, 1.5]), " 1.50 | 2.00 |");
    }
}
