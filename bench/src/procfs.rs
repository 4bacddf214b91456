//! What the kernel says about a set of processes: CPU seconds from
//! `/proc/PID/stat`, memory from `/proc/PID/status` and `smaps_rollup`, and
//! CPU pinning (what `taskset -c` does, done before `exec`).

use std::fs;
use std::process::Command;

use serde::Serialize;

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// User plus system CPU seconds the processes have used so far. A process
/// that is gone counts nothing.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks: u64 = pids.iter().filter_map(|pid| stat_ticks(*pid)).sum();
    ticks as f64 / ticks_per_second()
}

fn stat_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields are counted
    // from the last ')'. utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The processes whose parent is `pid` (nginx's workers under its master).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|candidate| parent_of(*candidate) == Some(pid))
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].split(' ').nth(1)?.parse().ok()
}

/// Memory of a set of processes, in KiB, summed over them.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Memory {
    /// Resident set size (`VmRSS`); shared pages count once per process.
    pub rss_kib: u64,
    /// Proportional set size (`Pss` in smaps_rollup): shared pages split
    /// between the processes sharing them, so a sum over processes is fair.
    pub pss_kib: u64,
    /// Anonymous memory (`Anonymous` in smaps_rollup): heap and stacks.
    pub anon_kib: u64,
    /// Shared memory (`RssShmem`): nchan's message store lives there.
    pub shmem_kib: u64,
}

pub fn memory(pids: &[u32]) -> Memory {
    let mut total = Memory::default();
    for pid in pids {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        total.rss_kib += field_kib(&status, "VmRSS:");
        total.shmem_kib += field_kib(&status, "RssShmem:");
        total.pss_kib += field_kib(&rollup, "Pss:");
        total.anon_kib += field_kib(&rollup, "Anonymous:");
    }
    total
}

fn field_kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A CPU list as `taskset -c` takes it: `0`, `0,1`, `0-3`.
pub fn parse_cpus(list: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let bad = || format!("bad CPU list {list:?} (expected e.g. 0 or 0-1 or 0,2)");
        match part.split_once('-') {
            Some((low, high)) => {
                let (low, high): (usize, usize) = (
                    low.trim().parse().map_err(|_| bad())?,
                    high.trim().parse().map_err(|_| bad())?,
                );
                cpus.extend(low..=high);
            }
            None => cpus.push(part.trim().parse().map_err(|_| bad())?),
        }
    }
    Ok(cpus)
}

/// Pins the calling process (and what it spawns later) to `cpus`.
pub fn pin_self(cpus: &[usize]) -> std::io::Result<()> {
    set_affinity(cpus)
}

/// Pins the process `command` will start to `cpus`, as `taskset -c` would.
pub fn pin(command: &mut Command, cpus: &[usize]) {
    use std::os::unix::process::CommandExt;
    let cpus = cpus.to_vec();
    // SAFETY: the closure runs between fork and exec and only makes the
    // async-signal-safe sched_setaffinity call.
    unsafe {
        command.pre_exec(move || set_affinity(&cpus));
    }
}

fn set_affinity(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data, zeroed is the empty set; CPU_SET
    // ignores CPUs beyond the set's size; sched_setaffinity(0, ..) applies to
    // the calling thread's process before any other thread exists in it
    // (pre_exec) or to the main thread (pin_self at start-up).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in cpus {
            libc::CPU_SET(*cpu, &mut set);
        }
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_like_taskset() {
        assert_eq!(parse_cpus("0").unwrap(), vec![0]);
        assert_eq!(parse_cpus("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_cpus("zero").is_err());
    }

    #[test]
    fn this_process_has_memory_and_spends_cpu() {
        let me = std::process::id();
        let memory = memory(&[me]);
        assert!(memory.rss_kib > 0 && memory.pss_kib > 0 && memory.anon_kib > 0);
        let before = cpu_seconds(&[me]);
        let mut x = 0u64;
        while cpu_seconds(&[me]) == before {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(cpu_seconds(&[me]) > before && x > 0);
    }
}
