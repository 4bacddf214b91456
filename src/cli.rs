//! The command line: `herald [--config PATH] [--bind ADDR]` serves;
//! `herald token --device ID --ttl 1h` mints a device token;
//! `herald config check` validates the configuration and `herald config show`
//! prints it as TOML, secrets redacted.

use std::{io, path::PathBuf, sync::Arc, time::Duration};

use actix_web::rt::signal;
use clap::{Parser, Subcommand};
use herald_actors::{DeviceId, NameError};

use crate::{
    config::{ConfigError, Loaded, Settings},
    logging,
    startup::{Application, BuildError, Shutdown},
    tls::Certificates,
    tokens::DeviceTokens,
};

/// Server-Sent Events push server.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Configuration file (TOML), laid over the built-in defaults; without
    /// it, ./config.toml when there is one. HERALD_<SECTION>__<KEY>
    /// variables override both.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Listen address, overriding server.bind.
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a device token signed with the configured auth.secret.
    Token {
        /// The device the token opens.
        #[arg(long)]
        device: String,
        /// How long the token is valid, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Check or print the configuration (for deploy pipelines).
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration: exit 0, or print the error and exit 1.
    Check,
    /// Print the effective configuration as TOML, secrets redacted.
    Show,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid --device: {0}")]
    Device(NameError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("server failed: {0}")]
    Serve(io::Error),
    #[error("cannot listen for signals: {0}")]
    Signals(io::Error),
    #[error("cannot print the configuration: {0}")]
    Show(toml::ser::Error),
}

/// Runs the subcommand, or serves (until SIGTERM or SIGINT, then shuts down
/// gracefully).
pub async fn run(cli: Cli) -> Result<(), RunError> {
    let file = cli.config.as_deref();
    match cli.command {
        Some(Command::Token { device, ttl }) => {
            let loaded = layer(file)?;
            let device = DeviceId::parse(&device).map_err(RunError::Device)?;
            let secret = loaded.settings.token_secret()?;
            println!("{}", DeviceTokens::new(secret).mint(&device, ttl));
            Ok(())
        }
        Some(Command::Config(ConfigCommand::Check)) => Ok(layer(file)?.settings.validate()?),
        Some(Command::Config(ConfigCommand::Show)) => {
            let loaded = layer(file)?;
            let settings = &loaded.settings;
            let toml = toml::to_string(&settings.redacted()).map_err(RunError::Show)?;
            print!("{toml}");
            Ok(settings.validate()?)
        }
        None => {
            let mut loaded = Settings::load(file)?;
            if let Some(bind) = cli.bind {
                loaded.settings.server.bind = bind;
            }
            serve(loaded).await
        }
    }
}

/// Lays the configuration together without validating it (for subcommands
/// that need only part of it); ignored `HERALD_*` variables are reported on
/// stderr.
fn layer(file: Option<&std::path::Path>) -> Result<Loaded, ConfigError> {
    let loaded = Settings::layer_process_env(file)?;
    for variable in &loaded.ignored {
        eprintln!("herald: warning: ignoring {variable} (not HERALD_<SECTION>__<KEY>)");
    }
    Ok(loaded)
}

async fn serve(loaded: Loaded) -> Result<(), RunError> {
    let settings = loaded.settings.clone();
    exit_on_core_panic();
    logging::init(&settings.log.level, settings.log.format);
    for variable in &loaded.ignored {
        log::warn!("config.variable_ignored variable={variable}");
    }

    let bind = settings.server.bind.clone();
    let app = Application::build(settings).await?;
    let signals = Signals::listen().map_err(RunError::Signals)?;
    log::info!(
        "server.started node={} bind={bind} port={} version={} config={}",
        app.node_id(),
        app.port(),
        env!("CARGO_PKG_VERSION"),
        loaded.sources_field()
    );
    let shutting_down = actix_web::rt::spawn(on_signals(
        signals,
        app.shutdown_handle(),
        app.certificates(),
    ));
    app.run_until_stopped().await.map_err(RunError::Serve)?;
    // The server stops only by `shut_down`, which closes the storage after
    // the server stopped: returning now would exit before the last changes
    // (stream positions, blocks, deletes) are committed.
    let _ = shutting_down.await;
    log::info!("server.stopped");
    Ok(())
}

/// The store, the registry and the heartbeat run on the main thread and hold
/// the server's state, and the storage writer has a thread of its own; after
/// a panic on either the server could only answer 503 (or never answer a
/// publish). Exiting lets the process supervisor restart it, and clients
/// resume from what is stored. A panic on an HTTP worker thread ends only
/// the stream it hit.
fn exit_on_core_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("-");
        if CORE_THREADS.contains(&name) {
            log::error!("server.panicked thread={name} exit_code={PANIC_EXIT_CODE}");
            std::process::exit(PANIC_EXIT_CODE);
        }
    }));
}

/// Threads whose panic ends the process.
const CORE_THREADS: [&str; 2] = ["main", herald_actors::STORAGE_THREAD];

/// EX_SOFTWARE from sysexits.h: an internal error.
const PANIC_EXIT_CODE: i32 = 70;

/// SIGTERM and SIGINT (shut down), SIGHUP (reload the TLS certificate),
/// listened for from the moment this is made: a signal that arrives right
/// after `server.started` must be handled, not kill the process.
struct Signals {
    terminate: signal::unix::Signal,
    interrupt: signal::unix::Signal,
    hangup: signal::unix::Signal,
}

impl Signals {
    fn listen() -> io::Result<Self> {
        use signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}

async fn on_signals(
    mut signals: Signals,
    shutdown: Shutdown,
    certificates: Option<Arc<Certificates>>,
) {
    loop {
        let signal = signals.recv().await;
        log::info!("server.signal signal={signal}");
        if signal != "SIGHUP" {
            return shutdown.shut_down().await;
        }
        match &certificates {
            // Logs its outcome (`tls.reloaded`, `tls.reload_failed`).
            Some(certificates) => _ = certificates.reload(),
            None => {
                log::info!("server.reload_skipped reason=no_tls (SIGHUP reloads server.tls only)")
            }
        }
    }
}
