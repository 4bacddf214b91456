//! The command line: `herald [--config PATH] [--bind ADDR]` serves;
//! `herald token --device ID --ttl 1h` mints a device token.

use std::{io, path::PathBuf, time::Duration};

use actix_web::rt::signal;
use clap::{Parser, Subcommand};
use herald_actors::{DeviceId, NameError};

use crate::{
    config::{ConfigError, Settings},
    logging,
    startup::{Application, Shutdown},
    tokens::DeviceTokens,
};

/// Server-Sent Events push server.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Configuration file (TOML); HERALD_SECTION__KEY variables override it.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = "config.toml"
    )]
    pub config: PathBuf,
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
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid --device: {0}")]
    Device(NameError),
    #[error("cannot listen on {bind}: {source}")]
    Bind { bind: String, source: io::Error },
    #[error("server failed: {0}")]
    Serve(io::Error),
}

/// Loads the configuration, then serves (until SIGTERM or SIGINT, then shuts
/// down gracefully) or runs the subcommand.
pub async fn run(cli: Cli) -> Result<(), RunError> {
    let mut settings = Settings::load(&cli.config)?;
    if let Some(Command::Token { device, ttl }) = cli.command {
        let device = DeviceId::parse(&device).map_err(RunError::Device)?;
        println!(
            "{}",
            DeviceTokens::new(&settings.auth.secret).mint(&device, ttl)
        );
        return Ok(());
    }
    if let Some(bind) = cli.bind {
        settings.server.bind = bind;
    }
    exit_on_core_panic();
    logging::init(&settings.log.level, settings.log.format);

    let bind = settings.server.bind.clone();
    let app = Application::build(settings).map_err(|source| RunError::Bind {
        bind: bind.clone(),
        source,
    })?;
    log::info!(
        "server.started bind={bind} port={} version={}",
        app.port(),
        env!("CARGO_PKG_VERSION")
    );
    actix_web::rt::spawn(shut_down_on_signal(app.shutdown_handle()));
    app.run_until_stopped().await.map_err(RunError::Serve)?;
    log::info!("server.stopped");
    Ok(())
}

/// The store, the registry and the heartbeat run on the main thread and hold
/// the server's state; after a panic there the server could only answer 503.
/// Exiting lets the process supervisor restart it, and clients resume with
/// `reset`. A panic on an HTTP worker thread ends only the stream it hit.
fn exit_on_core_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        if std::thread::current().name() == Some("main") {
            log::error!("server.panicked thread=main exit_code={PANIC_EXIT_CODE}");
            std::process::exit(PANIC_EXIT_CODE);
        }
    }));
}

/// EX_SOFTWARE from sysexits.h: an internal error.
const PANIC_EXIT_CODE: i32 = 70;

async fn shut_down_on_signal(shutdown: Shutdown) {
    let signal = wait_for_signal().await;
    log::info!("server.signal signal={signal}");
    shutdown.shut_down().await;
}

async fn wait_for_signal() -> &'static str {
    let Ok(mut terminate) = signal::unix::signal(signal::unix::SignalKind::terminate()) else {
        // Without a SIGTERM handler, SIGINT still works.
        let _ = signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = signal::ctrl_c() => "SIGINT",
    }
}
