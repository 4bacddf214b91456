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

/// CPU seconds (user + system) one thread of `pid` has used.
pub fn thread_cpu_seconds(pid: u32, tid: u32) -> f64 {
    let ticks = stat_ticks_at(&format!("/proc/{pid}/task/{tid}/stat")).unwrap_or(0);
    ticks as f64 / ticks_per_second()
}

fn stat_ticks(pid: u32) -> Option<u64> {
    stat_ticks_at(&format!("/proc/{pid}/stat"))
}

fn stat_ticks_at(path: &str) -> Option<u64> {
    let stat = fs::read_to_string(path).ok()?;
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

/// The server's side of its TCP connections (`/proc/net/tcp`, local port
/// `port`): how many are established, and what their send queues hold.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ServerSockets {
    pub established: u64,
    /// Sockets (any state) with bytes the client has not taken yet.
    pub backed_up: u64,
    pub send_queue_bytes: u64,
}

pub fn server_sockets(port: u16) -> ServerSockets {
    let table = fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    count_sockets(&table, port)
}

fn count_sockets(table: &str, port: u16) -> ServerSockets {
    let suffix = format!(":{port:04X}");
    let mut sockets = ServerSockets::default();
    for fields in table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
    {
        let (Some(local), Some(state), Some(queues)) =
            (fields.get(1), fields.get(3), fields.get(4))
        else {
            continue;
        };
        // The listening socket has the port too, in state 0A (LISTEN).
        if !local.ends_with(&suffix) || *state == "0A" {
            continue;
        }
        // State 01 is ESTABLISHED.
        sockets.established += u64::from(*state == "01");
        let queued = queues
            .split(':')
            .next()
            .and_then(|tx| u64::from_str_radix(tx, 16).ok())
            .unwrap_or(0);
        sockets.backed_up += u64::from(queued > 0);
        sockets.send_queue_bytes += queued;
    }
    sockets
}

/// A CPU list as `taskset -c` takes it: `0`, `0,1`, `0-3`; every CPU must
/// be online.
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
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    match cpus.iter().find(|cpu| **cpu >= online) {
        _ if cpus.is_empty() => Err(format!("CPU list {list:?} names no CPU")),
        Some(cpu) => Err(format!(
            "CPU {cpu} in {list:?}: this machine has CPUs 0-{}",
            online - 1
        )),
        None => Ok(cpus),
    }
}

/// Pins the calling process (and what it spawns later) to `cpus`.
pub fn pin_self(cpus: &[usize]) -> std::io::Result<()> {
    set_affinity(cpus)
}

/// Pins the process `command` will start to `cpus`, as `taskset -c` would,
/// and has the kernel kill it if this process dies first, so a crashed run
/// never leaves a server behind.
pub fn pin(command: &mut Command, cpus: &[usize]) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    if cpus.iter().any(|cpu| *cpu >= libc::CPU_SETSIZE as usize) {
        return Err(format!("CPUs {cpus:?}: beyond what a CPU set holds"));
    }
    let cpus = cpus.to_vec();
    // SAFETY: the closure runs between fork and exec and only makes the
    // async-signal-safe prctl and sched_setaffinity calls.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            set_affinity(&cpus)
        });
    }
    Ok(())
}

fn set_affinity(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data, zeroed is the empty set; every CPU
    // was checked to be below CPU_SETSIZE; sched_setaffinity(0, ..) applies to
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
        assert!(parse_cpus("zero").is_err());
        assert!(parse_cpus("1-0").is_err(), "an empty range names no CPU");
        assert!(parse_cpus("0,100000").is_err(), "no such CPU here");
    }

    #[test]
    fn server_sockets_are_counted_by_local_port_and_state() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
            0: 0100007F:1F90 00000000:0000 0A 00000000:00000000\n\
            1: 0100007F:1F90 0A00007F:9C40 01 00000200:00000000\n\
            2: 0100007F:1F90 0A00007F:9C41 04 00001000:00000000\n\
            3: 0A00007F:9C40 0100007F:1F90 01 00000000:00000010\n";
        let sockets = count_sockets(table, 8080);
        assert_eq!((sockets.established, sockets.backed_up), (1, 2));
        assert_eq!(sockets.send_queue_bytes, 0x200 + 0x1000);
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
