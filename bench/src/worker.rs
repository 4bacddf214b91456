//! A worker process: holds a share of the streams (one source address, at
//! most a few thousand sockets, well under the 20,000 open files a process
//! may have), parses every event and counts what arrived. It behaves like
//! EventSource: a stream the server ends is reopened at once with its
//! Last-Event-ID. Driven by [`Command`]s on stdin; single-threaded, so the
//! counters need no locks.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use sse_stream::{Sse, SseStream};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::net;
use crate::protocol::{self, Command, Payload, Reply, Tally};
use crate::target::Target;

/// How long a `Connect` or `Storm` waits for the last stream to be live.
const LIVE_PATIENCE: Duration = Duration::from_secs(60);
/// Pause before retrying a refused or failed connect.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Receive buffer of a slow stream's socket: small, so what the stream
/// leaves unread backs up into the server within a short run rather than
/// into megabytes of kernel buffers.
const SLOW_RECEIVE_BUFFER: u32 = 4096;

#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    #[arg(long, value_enum)]
    pub target: Target,
    #[arg(long)]
    pub server: SocketAddr,
    /// Local address every socket of this worker is bound to.
    #[arg(long)]
    pub source: Ipv4Addr,
    /// Index of this worker's first device.
    #[arg(long)]
    pub first: usize,
    #[arg(long)]
    pub count: usize,
    /// Every n-th device (by index) stops reading after its `200`; 0: none.
    #[arg(long, default_value_t = 0)]
    pub slow_every: usize,
    /// Track per-broadcast fan-out completion (sequence numbers are global).
    #[arg(long)]
    pub fanout: bool,
}

/// The name of device number `index`.
pub fn device_name(index: usize) -> String {
    format!("d{index:05}")
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

pub fn run(args: WorkerArgs) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, serve(args))
}

struct Worker {
    args: WorkerArgs,
    host: String,
    streams: Vec<RefCell<StreamState>>,
    counters: RefCell<Counters>,
    tasks: RefCell<Vec<JoinHandle<()>>>,
    /// Streams not yet live in the current Connect or Storm.
    pending: Cell<usize>,
    all_live: Notify,
    phase_started: Cell<Instant>,
    last_live: Cell<Instant>,
    phase_errors: Cell<u64>,
}

#[derive(Default)]
struct StreamState {
    last_event_id: Option<String>,
    last_seq: u64,
    /// When the current connection's `200` arrived (ns since the epoch).
    live_at: u64,
}

struct Counters {
    tally: Tally,
    latency: Histogram<u64>,
    fanout: HashMap<u64, (u64, u64)>,
}

impl Counters {
    fn new() -> Self {
        Self {
            tally: Tally::default(),
            latency: protocol::new_histogram(),
            fanout: HashMap::new(),
        }
    }
}

async fn serve(args: WorkerArgs) -> std::io::Result<()> {
    let worker = Rc::new(Worker {
        host: args.server.to_string(),
        streams: (0..args.count).map(|_| RefCell::default()).collect(),
        counters: RefCell::new(Counters::new()),
        tasks: RefCell::default(),
        pending: Cell::new(0),
        all_live: Notify::new(),
        phase_started: Cell::new(Instant::now()),
        last_live: Cell::new(Instant::now()),
        phase_errors: Cell::new(0),
        args,
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let command: Command = serde_json::from_str(&line)
            .map_err(|err| std::io::Error::other(format!("bad command {line:?}: {err}")))?;
        let quit = matches!(command, Command::Quit);
        let reply = worker.handle(command).await;
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer(&mut stdout, &reply)?;
        stdout.write_all(b"\n")?;
        stdout.flush()?;
        if quit {
            break;
        }
    }
    worker.close();
    Ok(())
}

impl Worker {
    async fn handle(self: &Rc<Self>, command: Command) -> Reply {
        match command {
            Command::Connect { concurrency } => self.open_all(concurrency.max(1)).await,
            Command::Storm => {
                self.close();
                self.open_all(self.args.count.max(1)).await
            }
            Command::Count => Reply::Count {
                deliveries: self.counters.borrow().tally.deliveries,
            },
            Command::Report => Reply::Report(self.report()),
            Command::Reset => {
                *self.counters.borrow_mut() = Counters::new();
                Reply::Done
            }
            Command::Close | Command::Quit => {
                self.close();
                Reply::Done
            }
        }
    }

    /// Starts every stream's task and waits until each is live.
    async fn open_all(self: &Rc<Self>, concurrency: usize) -> Reply {
        self.pending.set(self.args.count);
        self.phase_errors.set(0);
        self.phase_started.set(Instant::now());
        self.last_live.set(Instant::now());
        let gate = Arc::new(Semaphore::new(concurrency));
        let tasks: Vec<_> = (0..self.args.count)
            .map(|index| tokio::task::spawn_local(run_stream(self.clone(), index, gate.clone())))
            .collect();
        self.tasks.borrow_mut().extend(tasks);
        let _ = tokio::time::timeout(LIVE_PATIENCE, async {
            while self.pending.get() > 0 {
                self.all_live.notified().await;
            }
        })
        .await;
        let elapsed = self.last_live.get() - self.phase_started.get();
        Reply::Live {
            elapsed_ms: elapsed.as_secs_f64() * 1000.0,
            errors: self.phase_errors.get(),
            missing: self.pending.get() as u64,
        }
    }

    fn close(&self) {
        for task in self.tasks.borrow_mut().drain(..) {
            task.abort();
        }
    }

    fn stream_live(&self) {
        self.last_live.set(Instant::now());
        let pending = self.pending.get().saturating_sub(1);
        self.pending.set(pending);
        if pending == 0 {
            self.all_live.notify_one();
        }
    }

    fn count_error(&self) {
        self.phase_errors.set(self.phase_errors.get() + 1);
        self.counters.borrow_mut().tally.errors += 1;
    }

    fn report(&self) -> Tally {
        let counters = self.counters.borrow();
        let mut tally = counters.tally.clone();
        tally.latency_us = protocol::histogram_pairs(&counters.latency);
        tally.fanout = counters
            .fanout
            .iter()
            .map(|(seq, (streams, last))| (*seq, *streams, *last))
            .collect();
        tally
    }

    /// Counts one event of stream `index`.
    fn receive(&self, index: usize, event: Sse) {
        let mut stream = self.streams[index].borrow_mut();
        let mut counters = self.counters.borrow_mut();
        match event.event.as_deref() {
            // herald's heartbeat; nchan's keep-alive is `event: ping`.
            Some("heartbeat" | "ping") => counters.tally.heartbeats += 1,
            Some("reset") => counters.tally.resets += 1,
            _ => {}
        }
        if let Some(id) = event.id {
            stream.last_event_id = Some(id);
        }
        let Some(payload) = event
            .data
            .and_then(|data| serde_json::from_str::<Payload>(&data).ok())
        else {
            return;
        };
        let now = now_ns();
        let counters = &mut *counters;
        counters
            .latency
            .saturating_record((now.saturating_sub(payload.t) / 1000).max(1));
        let tally = &mut counters.tally;
        tally.deliveries += 1;
        if payload.s > stream.last_seq + 1 {
            tally.gaps += payload.s - stream.last_seq - 1;
        } else if payload.s <= stream.last_seq {
            tally.duplicates += 1;
        }
        stream.last_seq = stream.last_seq.max(payload.s);
        if payload.t < stream.live_at {
            tally.replayed += 1;
        }
        if self.args.fanout {
            let entry = counters.fanout.entry(payload.s).or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(now);
        }
    }
}

/// One device's stream, reopened whenever it ends, until aborted.
async fn run_stream(worker: Rc<Worker>, index: usize, gate: Arc<Semaphore>) {
    let device = worker.args.first + index;
    let path = worker.args.target.stream_path(&device_name(device));
    let slow = worker.args.slow_every > 0 && device % worker.args.slow_every == 0;
    let mut permit = gate.acquire_owned().await.ok();
    let mut counted = false;
    loop {
        match session(&worker, index, &path, slow, &mut counted, &mut permit).await {
            Ok(()) => worker.counters.borrow_mut().tally.ended += 1,
            Err(_) => {
                worker.count_error();
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// One connection: open it, mark the stream live, read it to its end. A
/// slow stream reads nothing after its `200`, keeping the socket open.
async fn session(
    worker: &Rc<Worker>,
    index: usize,
    path: &str,
    slow: bool,
    counted: &mut bool,
    permit: &mut Option<OwnedSemaphorePermit>,
) -> Result<(), net::Error> {
    let receive_buffer = slow.then_some(SLOW_RECEIVE_BUFFER);
    let stream = net::connect(worker.args.source, worker.args.server, receive_buffer).await?;
    let (mut sender, _guard) = net::handshake(stream).await?;
    let last_event_id = worker.streams[index].borrow().last_event_id.clone();
    let response =
        net::open_stream(&mut sender, &worker.host, path, last_event_id.as_deref()).await?;
    if response.status() != hyper::StatusCode::OK {
        return Err(format!("status {}", response.status()).into());
    }
    worker.streams[index].borrow_mut().live_at = now_ns();
    if !std::mem::replace(counted, true) {
        worker.stream_live();
    }
    permit.take();
    if slow {
        std::future::pending::<()>().await;
    }
    let mut events = SseStream::new(response.into_body());
    while let Some(event) = events.next().await {
        worker.receive(index, event?);
    }
    Ok(())
}
