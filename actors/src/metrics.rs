//! herald's metrics, recorded where things happen and read by `/metrics`
//! (Prometheus text), the periodic `stats` log line and `/v1/stats`. One
//! process-wide registry: every counter describes the whole server.

use std::sync::OnceLock;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    /// Open streams.
    pub streams: IntGauge,
    /// Streams opened, by HTTP version (`h1`, `h2`).
    pub streams_opened: IntCounterVec,
    pub sessions: IntGauge,
    pub buffered_events: IntGauge,
    pub buffered_bytes: IntGauge,
    /// Events published, one per device they were published to.
    pub published: IntCounter,
    /// Live events written to a stream.
    pub delivered: IntCounter,
    /// Events written to a stream as part of a replay.
    pub replayed: IntCounter,
    pub heartbeats: IntCounter,
    pub kicks: IntCounter,
    /// Streams that started with `reset`, by reason.
    pub resets: IntCounterVec,
    /// Streams ended because their client did not read.
    pub slow_consumers: IntCounter,
    /// Requests answered with an error, by error code.
    pub rejected: IntCounterVec,
    /// Open HTTP connections (streams and every other).
    pub connections: IntGauge,
    /// Connections closed because no request came in time, by reason
    /// (`head`, `keep_alive`).
    pub connections_timed_out: IntCounterVec,
    /// From a publish to the write of the event to a live stream.
    pub publish_to_write: Histogram,
    /// Commits of the embedded storage backend, each covering one or more
    /// batches of changes (a publish is one batch).
    pub storage_commits: IntCounter,
    pub storage_batches: IntCounter,
    /// How long each commit took, its sync included.
    pub storage_commit: Histogram,
    /// What buffered events held whole in memory take (the replay cache).
    pub cache_bytes: IntGauge,
    /// Events of replays read from storage (their payloads had left memory).
    pub storage_read: IntCounter,
}

/// The process's metrics, registered on first use.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| register(&registry, IntGauge::new(name, help));
        let counter = |name: &str, help: &str| register(&registry, IntCounter::new(name, help));
        let labelled = |name: &str, help: &str, label: &str| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), &[label]),
            )
        };
        let buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        let commit = HistogramOpts::new(
            "herald_storage_commit_seconds",
            "Time one commit of the embedded storage takes, its fsync included",
        )
        .buckets(buckets.clone());
        let latency = HistogramOpts::new(
            "herald_publish_to_write_seconds",
            "Time from a publish until the live stream's HTTP body takes the event to write it",
        )
        .buckets(buckets);
        Self {
            storage_commits: counter(
                "herald_storage_commits_total",
                "Commits of the embedded storage backend",
            ),
            storage_batches: counter(
                "herald_storage_batches_total",
                "Batches of changes committed (or failed) by the embedded storage backend; one publish is one batch",
            ),
            storage_commit: register(&registry, Histogram::with_opts(commit)),
            cache_bytes: gauge(
                "herald_storage_cache_bytes",
                "Bytes of buffered events held whole in memory (storage.cache_bytes bounds them)",
            ),
            storage_read: counter(
                "herald_storage_read_events_total",
                "Replayed events read from storage because they had left memory",
            ),
            streams: gauge("herald_streams", "Open event streams"),
            streams_opened: labelled(
                "herald_streams_opened_total",
                "Event streams opened, by HTTP version of their connection (h1, h2)",
                "proto",
            ),
            sessions: gauge("herald_sessions", "Device sessions held"),
            buffered_events: gauge("herald_buffered_events", "Events held in replay buffers"),
            buffered_bytes: gauge(
                "herald_buffered_bytes",
                "Bytes held in replay buffers and retained events",
            ),
            published: counter(
                "herald_events_published_total",
                "Events published, per device",
            ),
            delivered: counter(
                "herald_events_delivered_total",
                "Live events written to streams",
            ),
            replayed: counter(
                "herald_events_replayed_total",
                "Events written to streams by replays",
            ),
            heartbeats: counter(
                "herald_heartbeats_total",
                "Heartbeats written to idle streams",
            ),
            kicks: counter(
                "herald_kicks_total",
                "Streams kicked while their client was connected: replaced by a newer one, or by an operator",
            ),
            resets: labelled(
                "herald_resets_total",
                "Streams that started with reset",
                "reason",
            ),
            slow_consumers: counter(
                "herald_slow_consumers_total",
                "Streams ended because their client did not read",
            ),
            rejected: labelled(
                "herald_rejected_requests_total",
                "Requests answered with an error",
                "reason",
            ),
            connections: gauge("herald_connections", "Open HTTP connections"),
            connections_timed_out: labelled(
                "herald_connections_timed_out_total",
                "Connections closed because no complete request came in time",
                "reason",
            ),
            publish_to_write: register(&registry, Histogram::with_opts(latency)),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_default()
    }
}

/// Registers a metric whose name is fixed above: it cannot collide.
fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("a valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once");
    metric
}
