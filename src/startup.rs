//! Startup and shutdown. [`Application::build`] binds the listener first (so
//! a taken address fails before anything starts), opens the storage backend
//! (so a store in use or corrupt fails before anything is served), then
//! starts the actors and the HTTP server. Tests build it on port 0 and read
//! the port back.

use std::{
    io,
    net::{SocketAddr, TcpListener, ToSocketAddrs as _},
    num::NonZeroUsize,
    sync::Arc,
    time::{Duration, Instant},
};

use actix_cors::Cors;
use actix_http::{HttpServiceBuilder, Request, Response};
use actix_server::GracefulShutdownSignal;
use actix_service::{Service, ServiceFactory, ServiceFactoryExt as _, map_config};
use actix_web::{
    App,
    body::BoxBody,
    dev::{AppConfig, Extensions, Server, ServerHandle, fn_service},
    http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderName},
    middleware::{DefaultHeaders, from_fn},
};
use herald_actors::{Actors, BackendError, CloseStorage, DisconnectAll, Opened};
use socket2::{Domain, Socket, Type};
use tokio_rustls::server::TlsStream;

use crate::{
    access_log::access_log,
    config::{CorsSettings, Settings},
    connections::{Gate, Plan},
    routes::{Draining, Shared, configure_routes},
    shutdown_signal::ShutdownSignal,
    stats,
    tls::{self, Certificates, TlsError},
    watched::{Timeouts, Watched, track_requests},
};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot listen on {bind}: {source}")]
    Bind { bind: String, source: io::Error },
    #[error("cannot open storage: {0}")]
    Storage(#[from] BackendError),
    #[error("cannot serve HTTPS: {0}")]
    Tls(#[from] TlsError),
}

pub struct Application {
    port: u16,
    node_id: String,
    server: Server,
    shutdown: Shutdown,
    certificates: Option<Arc<Certificates>>,
}

/// actix-http's disconnect timeout, as actix-web's `HttpServer` sets it: how
/// long a closing connection may take to flush and shut down.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

impl Application {
    /// The server is assembled here rather than by actix-web's `HttpServer`,
    /// which cannot put anything between accepting a socket and serving it:
    /// herald needs to refuse connections over its limits (`connections.rs`)
    /// and to wrap each socket in a deadline (`watched.rs`). What follows is
    /// what `HttpServer::listen` does, with those two in place.
    pub async fn build(mut settings: Settings) -> Result<Self, BuildError> {
        if settings.server.node_id.is_empty() {
            settings.server.node_id = format!("node-{:08x}", fastrand::u32(..));
        }
        let bind = |source| BuildError::Bind {
            bind: settings.server.bind.clone(),
            source,
        };
        let listener = listen(&settings.server.bind, settings.server.backlog).map_err(bind)?;
        let local_addr = listener.local_addr().map_err(bind)?;
        let workers = match settings.server.workers {
            // As actix-server counts them by default.
            0 => std::thread::available_parallelism()
                .map_or(2, NonZeroUsize::get)
                .min(512),
            n => n,
        };
        let plan = Plan::new(&settings.limits, workers).map_err(bind)?;
        let timeouts = Timeouts {
            head: settings.limits.request_timeout,
            keep_alive: settings.server.keep_alive,
        };
        let tls_files = &settings.server.tls;
        let certificates = (tls_files.enabled())
            .then(|| Certificates::load(tls_files))
            .transpose()?;
        let gate = Gate::new(&plan, timeouts, certificates.is_some());
        let storage = open_storage(&settings).await?;
        let actors = herald_actors::start(
            settings.session.clone(),
            settings.heartbeat.clone(),
            settings.kicks.clone(),
            storage,
        );
        let shared = Shared::new(&settings, actors.clone());
        let draining = shared.draining.clone();
        let routes_settings = settings.clone();
        let app = move || {
            App::new()
                .wrap(cors(&routes_settings.cors))
                // API answers (device views, tokens' results) are never
                // kept by a browser or a proxy; what sets its own caching
                // (streams, the admin page's files) keeps it.
                .wrap(DefaultHeaders::new().add((CACHE_CONTROL, "no-store")))
                .wrap(from_fn(access_log))
                .configure(|cfg| configure_routes(cfg, &routes_settings, shared.clone()))
        };
        let mut builder = Server::build()
            .workers(workers)
            // Shutdown is ours: streams must be ended before the server waits
            // for in-flight responses, or it waits for the timeout.
            .disable_signals()
            .shutdown_timeout(settings.server.shutdown_timeout.as_secs().max(1));
        if let Some(per_worker) = plan.per_worker {
            builder = builder.max_concurrent_connections(per_worker);
        }
        let http = Http {
            keep_alive: settings.server.keep_alive,
            local_addr,
            stopping: builder.graceful_shutdown_signal(),
            draining: draining.clone(),
        };
        let app = move || track_requests(map_config(app(), |()| AppConfig::default()));
        let server = match &certificates {
            None => builder.listen("herald", listener, move || {
                let gate = gate.on_worker();
                let http = http
                    .builder::<Watched, _>()
                    .on_connect_ext(|socket: &Watched, data: &mut Extensions| note(socket, data))
                    // HTTP/1.1 only: browsers speak HTTP/2 over TLS alone.
                    .h1(app());
                fn_service(move |tcp| std::future::ready(gate.admit(tcp))).and_then(http)
            }),
            Some(certificates) => {
                let acceptor = certificates.acceptor()?;
                builder.listen("herald", listener, move || {
                    let gate = gate.on_worker();
                    let acceptor = acceptor.clone();
                    let http = http
                        .builder::<TlsStream<Watched>, _>()
                        .secure()
                        .on_connect_ext(|tls: &TlsStream<Watched>, data: &mut Extensions| {
                            note(tls.get_ref().0, data);
                        })
                        .finish(app());
                    fn_service(move |tcp| std::future::ready(gate.admit(tcp)))
                        .and_then(fn_service(move |socket| {
                            tls::handshake(acceptor.clone(), socket)
                        }))
                        .and_then(http)
                })
            }
        }
        .map_err(bind)?
        .run();
        actix_web::rt::spawn(stats::log_every(settings.log.stats_interval));
        let shutdown = Shutdown {
            server: server.handle(),
            actors,
            draining,
            window: settings.server.drain_window,
        };
        Ok(Self {
            port: local_addr.port(),
            node_id: settings.server.node_id,
            server,
            shutdown,
            certificates,
        })
    }

    /// The HTTPS certificate, when `server.tls` is set (to reload it).
    pub fn certificates(&self) -> Option<Arc<Certificates>> {
        self.certificates.clone()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// This node's id: `server.node_id`, or the one drawn at start.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// A handle that shuts this application down gracefully.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Serves until shut down.
    pub async fn run_until_stopped(self) -> io::Result<()> {
        self.server.await
    }
}

/// What every connection's HTTP service shares, over TLS or not.
#[derive(Clone)]
struct Http {
    keep_alive: Duration,
    local_addr: SocketAddr,
    /// Tells keep-alive connections to close when the server stops, as
    /// `HttpServer` does (actix-http's hook for it is doc-hidden).
    stopping: GracefulShutdownSignal,
    /// Set before `stopping` fires.
    draining: Draining,
}

impl Http {
    fn builder<T, S>(&self) -> HttpServiceBuilder<T, S>
    where
        S: ServiceFactory<Request, Config = ()>,
        S::Error: Into<Response<BoxBody>> + 'static,
        S::InitError: std::fmt::Debug,
        <S::Service as Service<Request>>::Future: 'static,
    {
        let (stopping, draining) = (self.stopping.clone(), self.draining.clone());
        HttpServiceBuilder::default()
            // Equal to the keep-alive of `Watched`, which only backs it up:
            // actix-http's closes an idle connection gently.
            .keep_alive(self.keep_alive)
            // Disabled: it covers only a connection's first request;
            // `Watched` bounds every request head.
            .client_request_timeout(Duration::ZERO)
            .client_disconnect_timeout(DISCONNECT_TIMEOUT)
            // End a stream as soon as its client closes the connection,
            // rather than at the next failed write.
            .h1_allow_half_closed(false)
            .local_addr(self.local_addr)
            .graceful_shutdown_signal(move || ShutdownSignal::new(&stopping, draining.clone()))
    }
}

/// What a connection's requests learn of it (actix's `on_connect_ext`).
fn note(socket: &Watched, data: &mut Extensions) {
    data.insert(socket.conn());
    // For the kick rule: did a stream's client close? (see `client_socket`).
    data.insert(socket.client_socket());
}

/// Opens the configured backend and reads back what it holds.
async fn open_storage(
    settings: &Settings,
) -> Result<(Opened, herald_actors::Snapshot), BackendError> {
    let started = Instant::now();
    let opened = Opened::open(&settings.storage, &settings.server.node_id).await?;
    let snapshot = &opened.1;
    log::info!(
        "storage.opened node={} backend={} path={} sessions={} events={} retained={} ms={}",
        settings.server.node_id,
        settings.storage.backend.as_str(),
        settings.storage.path.display(),
        snapshot.sessions.len(),
        snapshot
            .sessions
            .iter()
            .map(|s| s.events.len())
            .sum::<usize>(),
        snapshot.retained.len(),
        started.elapsed().as_millis()
    );
    Ok(opened)
}

/// Cross-origin access for the configured origins only, with credentials
/// (cookies for `withCredentials` EventSource); never a wildcard.
fn cors(settings: &CorsSettings) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods(["GET", "POST", "DELETE"])
        .allowed_headers([
            AUTHORIZATION,
            CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
        ])
        .supports_credentials()
        .max_age(3600);
    for origin in &settings.allowed_origins {
        cors = cors.allowed_origin(origin);
    }
    cors
}

/// Binds `bind` with an accept backlog of `backlog`: the standard library's
/// fixed 128 overflows when thousands of clients reconnect at once, and a
/// dropped SYN costs each of them a second or more.
fn listen(bind: &str, backlog: u32) -> io::Result<TcpListener> {
    let addr: SocketAddr = bind.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "address resolves to nothing")
    })?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// Graceful shutdown: stop accepting, end every stream, then let the HTTP
/// server finish the remaining requests.
#[derive(Clone)]
pub struct Shutdown {
    server: ServerHandle,
    actors: Actors,
    draining: Draining,
    /// Over how long open streams are ended.
    window: Duration,
}

impl Shutdown {
    /// Stops taking work: publishes are refused, new streams end at once,
    /// no new connections are accepted, and the open streams are ended,
    /// spread over the drain window. Answers how many streams were open.
    pub async fn drain(&self) -> usize {
        self.draining.start();
        self.server.pause().await;
        let disconnect_all = DisconnectAll { over: self.window };
        let streams = self.actors.registry.send(disconnect_all).await.unwrap_or(0);
        let window_ms = self.window.as_millis();
        log::info!("server.draining streams={streams} window_ms={window_ms}");
        streams
    }

    /// Drains, waits until the last stream's scheduled end, lets the HTTP
    /// server finish the remaining requests, then waits for the storage
    /// backend to commit what it was given (streams' positions and TTLs).
    pub async fn shut_down(&self) {
        let streams = self.drain().await;
        if streams > 1 {
            let last_close = self.window.mul_f64((streams - 1) as f64 / streams as f64);
            actix_web::rt::time::sleep(last_close).await;
        }
        self.server.stop(true).await;
        if let Ok(Err(error)) = self.actors.registry.send(CloseStorage).await {
            log::error!("storage.close_failed error=\"{error}\"");
        }
    }
}
