//! A worker process: holds a share of the streams (one source address,
//! at most 9,500 sockets, well under the 20,000 open files a process may
//! have), parses every event and counts what arrived. It behaves like
//! EventSource: a stream the server ends is reopened at once with its
//! Last-Event-ID. Driven by [`Command`]s on stdin; single-threaded, so the
//! counters need no locks.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sse_stream::SseStream;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::net;
use crate::protocol::{Command, Live, Reply, device_name, now_ns};
use crate::tally::{Counters, StreamState};
use crate::target::Target;

/// How long a `Connect` or `Storm` waits for the last stream to be live.
const LIVE_PATIENCE: Duration = Duration::from_secs(60);
/// Pause before retrying a refused or failed connect.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Receive buffer of a slow stream's socket: small, so what the stream
/// leaves unread backs up into the server rather than into the client's
/// kernel buffers.
const SLOW_RECEIVE_BUFFER: u32 = 4096;

#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    #[arg(long, value_enum)]
    pub target: Target,
    /// Where streams connect; given more than once, each connection of a
    /// stream goes to the next one (stream `i`'s `n`th to `(i + n) % len`),
    /// so a reconnect moves the stream to another server.
    #[arg(long, required = true)]
    pub server: Vec<SocketAddr>,
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
    /// The server's certificate (PEM), for a target that serves TLS.
    #[arg(long)]
    pub ca: Option<std::path::PathBuf>,
}

pub fn run(args: WorkerArgs) -> std::io::Result<()> {
    raise_open_files_limit()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, serve(args))
}

/// Lifts the soft limit on open files to the hard one (often 1024 against
/// 20,000 or more), so a worker's sockets fit.
fn raise_open_files_limit() -> std::io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

struct Worker {
    args: WorkerArgs,
    hosts: Vec<String>,
    wire: net::Wire,
    /// HTTP/2 targets: the connection each group of streams shares (stream
    /// `i` uses group `i / streams_per_connection`), made by the first of
    /// them to need it.
    shared: Vec<tokio::sync::Mutex<Option<SharedConnection>>>,
    streams: Vec<RefCell<StreamState>>,
    counters: RefCell<Counters>,
    tasks: RefCell<Vec<JoinHandle<()>>>,
    /// Streams not yet live in the current Connect or Storm.
    pending: Cell<usize>,
    all_live: Notify,
    last_live: Cell<Instant>,
    phase_errors: Cell<u64>,
}

/// One HTTP/2 connection and the task that drives it.
type SharedConnection = (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    net::ConnectionGuard,
);

async fn serve(args: WorkerArgs) -> std::io::Result<()> {
    let per_connection = args.target.streams_per_connection();
    let wire = match &args.ca {
        None => net::Wire::Plain,
        Some(ca) => {
            let alpn: &[u8] = if per_connection > 1 {
                b"h2"
            } else {
                b"http/1.1"
            };
            net::Wire::tls(ca, alpn).map_err(std::io::Error::other)?
        }
    };
    let groups = if per_connection > 1 {
        args.count.div_ceil(per_connection)
    } else {
        0
    };
    let worker = Rc::new(Worker {
        hosts: args.server.iter().map(SocketAddr::to_string).collect(),
        wire,
        shared: (0..groups).map(|_| tokio::sync::Mutex::default()).collect(),
        streams: (0..args.count).map(|_| RefCell::default()).collect(),
        counters: RefCell::new(Counters::new(args.fanout)),
        tasks: RefCell::default(),
        pending: Cell::new(0),
        all_live: Notify::new(),
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
    worker.close().await;
    Ok(())
}

impl Worker {
    async fn handle(self: &Rc<Self>, command: Command) -> Reply {
        match command {
            Command::Connect { concurrency } => {
                Reply::Live(self.open_all(concurrency.max(1)).await)
            }
            Command::Storm => {
                self.close().await;
                Reply::Live(self.open_all(self.args.count.max(1)).await)
            }
            Command::Count => Reply::Count {
                deliveries: self.counters.borrow().tally.deliveries,
            },
            Command::Report => Reply::Report(self.counters.borrow().report()),
            Command::Reset => {
                *self.counters.borrow_mut() = Counters::new(self.args.fanout);
                Reply::Done
            }
            Command::Close | Command::Quit => {
                self.close().await;
                Reply::Done
            }
        }
    }

    /// Starts every stream's task and waits until each is live.
    async fn open_all(self: &Rc<Self>, concurrency: usize) -> Live {
        self.pending.set(self.args.count);
        self.phase_errors.set(0);
        let started = Instant::now();
        self.last_live.set(started);
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
        let missing = self.pending.get() as u64;
        Live {
            elapsed_ms: if missing > 0 {
                f64::NAN
            } else {
                (self.last_live.get() - started).as_secs_f64() * 1000.0
            },
            errors: self.phase_errors.get(),
            missing,
        }
    }

    /// Ends every stream and waits until their tasks are gone, so their
    /// sockets are closed before any new one is opened.
    async fn close(&self) {
        let tasks: Vec<_> = self.tasks.borrow_mut().drain(..).collect();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        for connection in &self.shared {
            *connection.lock().await = None;
        }
        // The connection tasks were aborted with their streams; let the
        // runtime drop them (and close their sockets).
        tokio::task::yield_now().await;
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
}

/// One device's stream, reopened whenever it ends, until aborted.
async fn run_stream(worker: Rc<Worker>, index: usize, gate: Arc<Semaphore>) {
    let device = worker.args.first + index;
    let path = worker.args.target.stream_path(&device_name(device));
    let slow = worker.args.slow_every > 0 && device.is_multiple_of(worker.args.slow_every);
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
    let (last_event_id, at) = {
        let mut state = worker.streams[index].borrow_mut();
        state.opened += 1;
        let servers = worker.args.server.len();
        let at = (worker.args.first + index + state.opened - 1) % servers;
        (state.last_event_id.clone(), at)
    };
    let server = worker.args.server[at];
    let host = &worker.hosts[at];
    let (mut sender, _guard) = match worker.shared.is_empty() {
        true => {
            let stream = net::connect(worker.args.source, server, receive_buffer).await?;
            let (sender, guard) = net::handshake(&worker.wire, stream).await?;
            (net::StreamSender::H1(sender), Some(guard))
        }
        false => {
            let group = index / worker.args.target.streams_per_connection();
            let mut shared = worker.shared[group].lock().await;
            if shared.as_ref().is_none_or(|(sender, _)| sender.is_closed()) {
                let stream = net::connect(worker.args.source, server, receive_buffer).await?;
                *shared = Some(net::handshake_h2(&worker.wire, stream).await?);
            }
            let sender = shared.as_ref().map(|(sender, _)| sender.clone());
            (net::StreamSender::H2(sender.ok_or("no connection")?), None)
        }
    };
    let response = net::open_stream(&mut sender, host, path, last_event_id.as_deref()).await?;
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
        let event = event?;
        let mut stream = worker.streams[index].borrow_mut();
        worker
            .counters
            .borrow_mut()
            .receive(&mut stream, event, now_ns());
    }
    Ok(())
}
