//! The coordinator's side of the worker processes: it starts them (each
//! re-running this binary as `herald-bench worker`, on its own 127.0.0.x
//! source address), sends every worker the same command and gathers the
//! replies.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::protocol::{self, Command, Live, Merged, Reply};
use crate::target::Target;

/// The first worker binds 127.0.0.10, the next 127.0.0.11, …
const FIRST_SOURCE: u8 = 10;
/// Sockets per worker at most: half the open files a process may have, so
/// even a storm that briefly holds old and new sockets stays under it.
const MAX_PER_WORKER: usize = 9_500;
/// How long a worker may take to answer a command (a Connect or Storm
/// answers within a minute).
const PATIENCE: Duration = Duration::from_secs(120);

/// How the streams are spread, as reported with every result.
#[derive(Clone, Debug, Serialize)]
pub struct Layout {
    pub streams: usize,
    pub workers: usize,
    pub per_worker: usize,
    pub sources: String,
    pub slow_every: usize,
}

pub struct Fleet {
    workers: Vec<WorkerProcess>,
    pub layout: Layout,
}

struct WorkerProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

pub struct Spec {
    pub target: Target,
    /// The certificate a TLS target serves (see the worker's `--ca`).
    pub ca: Option<std::path::PathBuf>,
    /// Where streams connect (see the worker's `--server`).
    pub servers: Vec<SocketAddr>,
    pub streams: usize,
    pub per_worker: usize,
    pub slow_every: usize,
    pub fanout: bool,
}

impl Fleet {
    pub fn spawn(spec: &Spec) -> Result<Self, String> {
        let per_worker = spec.per_worker.clamp(1, MAX_PER_WORKER);
        let count = spec.streams.div_ceil(per_worker).max(1);
        if count > usize::from(u8::MAX - FIRST_SOURCE) {
            return Err(format!("{count} workers: too many source addresses"));
        }
        let exe = std::env::current_exe().map_err(|err| err.to_string())?;
        let mut workers = Vec::with_capacity(count);
        for worker in 0..count {
            let first = worker * per_worker;
            let streams = per_worker.min(spec.streams - first);
            let source = Ipv4Addr::new(127, 0, 0, FIRST_SOURCE + worker as u8);
            let mut command = tokio::process::Command::new(&exe);
            command
                .arg("worker")
                .args(["--target", spec.target.name()])
                .args(
                    spec.servers
                        .iter()
                        .flat_map(|s| ["--server".to_owned(), s.to_string()]),
                )
                .args(["--source", &source.to_string()])
                .args(["--first", &first.to_string()])
                .args(["--count", &streams.to_string()])
                .args(["--slow-every", &spec.slow_every.to_string()])
                .args(spec.fanout.then_some("--fanout"))
                .args(
                    spec.ca
                        .iter()
                        .flat_map(|ca| [std::ffi::OsStr::new("--ca"), ca.as_os_str()]),
                )
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true);
            let mut child = command.spawn().map_err(|err| format!("worker: {err}"))?;
            let stdin = child.stdin.take().ok_or("worker stdin")?;
            let stdout = BufReader::new(child.stdout.take().ok_or("worker stdout")?).lines();
            workers.push(WorkerProcess {
                child,
                stdin,
                stdout,
            });
        }
        let last = FIRST_SOURCE as usize + count - 1;
        Ok(Self {
            workers,
            layout: Layout {
                streams: spec.streams,
                workers: count,
                per_worker,
                sources: format!("127.0.0.{FIRST_SOURCE}-127.0.0.{last}"),
                slow_every: spec.slow_every,
            },
        })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.workers.iter().filter_map(|w| w.child.id()).collect()
    }

    /// Sends `command` to every worker, then reads each one's reply.
    async fn ask(&mut self, command: &Command) -> Result<Vec<Reply>, String> {
        let mut line = serde_json::to_vec(command).map_err(|err| err.to_string())?;
        line.push(b'\n');
        for worker in &mut self.workers {
            worker
                .stdin
                .write_all(&line)
                .await
                .map_err(|err| format!("worker gone: {err}"))?;
        }
        let mut replies = Vec::with_capacity(self.workers.len());
        for worker in &mut self.workers {
            let line = tokio::time::timeout(PATIENCE, worker.stdout.next_line())
                .await
                .map_err(|_| format!("a worker did not answer {command:?} within {PATIENCE:?}"))?
                .map_err(|err| err.to_string())?
                .ok_or("a worker exited")?;
            replies.push(serde_json::from_str(&line).map_err(|err| format!("{line}: {err}"))?);
        }
        Ok(replies)
    }

    async fn live(&mut self, command: &Command) -> Result<Live, String> {
        let mut total: Option<Live> = None;
        for reply in self.ask(command).await? {
            let Reply::Live(live) = reply else {
                return Err(format!("unexpected answer to {command:?}: {reply:?}"));
            };
            total = Some(total.map_or(live, |sum| sum.add(live)));
        }
        Ok(total.unwrap_or_default())
    }

    /// Opens every stream, a bounded number of connects in flight per worker.
    pub async fn connect(&mut self) -> Result<Live, String> {
        self.live(&Command::Connect { concurrency: 256 }).await
    }

    /// Cuts every stream at once; all reconnect at once with Last-Event-ID.
    pub async fn storm(&mut self) -> Result<Live, String> {
        self.live(&Command::Storm).await
    }

    pub async fn reset(&mut self) -> Result<(), String> {
        self.ask(&Command::Reset).await.map(drop)
    }

    pub async fn close(&mut self) -> Result<(), String> {
        self.ask(&Command::Close).await.map(drop)
    }

    pub async fn deliveries(&mut self) -> Result<u64, String> {
        let mut total = 0;
        for reply in self.ask(&Command::Count).await? {
            let Reply::Count { deliveries } = reply else {
                return Err(format!("unexpected answer to a count: {reply:?}"));
            };
            total += deliveries;
        }
        Ok(total)
    }

    /// Waits until no delivery arrived for half a second (at most
    /// `patience`), so what one phase left in flight does not count in the
    /// next.
    pub async fn await_quiet(&mut self, patience: Duration) -> Result<(), String> {
        let deadline = Instant::now() + patience;
        let mut last = self.deliveries().await?;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = self.deliveries().await?;
            if now == last {
                break;
            }
            last = now;
        }
        Ok(())
    }

    /// Waits until `expected` deliveries were counted, or `patience` passed.
    pub async fn await_deliveries(
        &mut self,
        expected: u64,
        patience: Duration,
    ) -> Result<u64, String> {
        let deadline = Instant::now() + patience;
        loop {
            let delivered = self.deliveries().await?;
            if delivered >= expected || Instant::now() > deadline {
                return Ok(delivered);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn report(&mut self) -> Result<Merged, String> {
        let mut tallies = Vec::with_capacity(self.workers.len());
        for reply in self.ask(&Command::Report).await? {
            let Reply::Report(tally) = reply else {
                return Err(format!("unexpected answer to a report: {reply:?}"));
            };
            tallies.push(tally);
        }
        Ok(protocol::merge(tallies))
    }

    /// Tells every worker to exit (closing its stdin is enough) and waits
    /// for them; one that does not exit within 5 s is killed.
    pub async fn quit(self) {
        let mut children = Vec::with_capacity(self.workers.len());
        for worker in self.workers {
            drop(worker.stdin);
            children.push(worker.child);
        }
        for mut child in children {
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}
