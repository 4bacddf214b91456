//! herald: a Server-Sent Events push server on actix actors.
//!
//! # Layout
//!
//! | file                 | concern                                                  |
//! |----------------------|----------------------------------------------------------|
//! | `main.rs`            | the binary: parses the command line, calls [`cli::run`]  |
//! | `cli.rs`             | flags, logging setup, signals                            |
//! | `config.rs`          | typed configuration: file, environment, validation       |
//! | `startup.rs`         | [`startup::Application`]: bind, start actors, serve, shut down |
//! | `routes/mod.rs`      | [`routes::configure_routes`], shared by server and tests |
//! | `routes/stream.rs`   | `GET /v1/devices/{id}/events`: the SSE stream            |
//! | `routes/publish.rs`  | admin publish and broadcast                              |
//! | `routes/auth.rs`     | admin bearer tokens; device tokens on streams            |
//! | `routes/devices.rs`  | admin device management                                  |
//! | `tokens.rs`          | device tokens (JWT): mint and check                      |
//! | `stats.rs`           | totals for `/v1/stats` and the periodic `server.stats` line |
//! | `slots.rs`           | open-stream and connection counts, in all and per address |
//! | `connections.rs`     | the accept stage: connection limits, refusals            |
//! | `tls.rs`             | HTTPS: the certificate, reloaded on SIGHUP; ALPN h2/http1.1 |
//! | `watched.rs`         | the time rule: a connection serves a request or gets one soon |
//! | `shutdown_signal.rs` | the graceful-shutdown signal, polled cheaply per connection |
//! | `open_files.rs`      | the open-file limit, raised at start                     |
//! | `client_socket.rs`   | whether a stream's client closed, asked of the kernel    |
//! | `access_log.rs`      | one `http.request` line per request (paths only)         |
//! | `logging.rs`         | log output: text, or one JSON object per line            |
//! | `error.rs`           | [`error::ApiError`]: every HTTP error, status and JSON   |
//!
//! The actors, the event model and the delivery guarantees live in the
//! `herald-actors` crate (`actors/`), which knows nothing of HTTP.

pub mod access_log;
pub mod cli;
pub mod client_socket;
pub mod config;
pub mod connections;
pub mod error;
pub mod logging;
pub mod open_files;
pub mod routes;
pub mod shutdown_signal;
pub mod slots;
pub mod startup;
pub mod stats;
pub mod tls;
pub mod tokens;
pub mod watched;
