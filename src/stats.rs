//! What the server has been doing: the totals of `GET /v1/stats`, and the
//! periodic `server.stats` log line with the same figures, counters as the change
//! since the previous line.

use std::time::Duration;

use actix_web::rt::time::interval;
use herald_actors::{Metrics, ResetReason, metrics};
use serde_json::{Map, Value, json};

const RESET_REASONS: [ResetReason; 5] = [
    ResetReason::Expired,
    ResetReason::Evicted,
    ResetReason::UnknownEpoch,
    ResetReason::Invalid,
    ResetReason::Future,
];

/// Every figure, gauges first, as `(name, value, is_counter)`.
fn figures(metrics: &Metrics) -> Vec<(String, u64, bool)> {
    let gauge =
        |name: &str, value: i64| (name.to_owned(), u64::try_from(value).unwrap_or(0), false);
    let counter = |name: &str, value: u64| (name.to_owned(), value, true);
    let mut figures = vec![
        gauge("streams", metrics.streams.get()),
        gauge("sessions", metrics.sessions.get()),
        gauge("buffered_events", metrics.buffered_events.get()),
        gauge("buffered_bytes", metrics.buffered_bytes.get()),
        counter("published", metrics.published.get()),
        counter("delivered", metrics.delivered.get()),
        counter("replayed", metrics.replayed.get()),
        counter("kicks", metrics.kicks.get()),
        counter("slow_consumers", metrics.slow_consumers.get()),
        counter("heartbeats", metrics.heartbeats.get()),
    ];
    for reason in RESET_REASONS {
        let resets = metrics.resets.with_label_values(&[reason.as_str()]).get();
        figures.push(counter(&format!("resets_{}", reason.as_str()), resets));
    }
    figures
}

/// The totals since start, for `GET /v1/stats`.
pub fn totals() -> Value {
    let totals: Map<String, Value> = figures(metrics())
        .into_iter()
        .map(|(name, value, _)| (name, json!(value)))
        .collect();
    Value::Object(totals)
}

/// Logs a `server.stats` line every `every`, for as long as the server runs.
pub async fn log_every(every: Duration) {
    let mut ticks = interval(every);
    ticks.tick().await;
    let mut previous = figures(metrics());
    loop {
        ticks.tick().await;
        let current = figures(metrics());
        let fields: Vec<String> = current
            .iter()
            .zip(&previous)
            .map(|((name, value, counter), (_, before, _))| {
                let shown = if *counter {
                    value.saturating_sub(*before)
                } else {
                    *value
                };
                format!("{name}={shown}")
            })
            .collect();
        log::info!("server.stats {}", fields.join(" "));
        previous = current;
    }
}
