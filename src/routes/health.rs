//! Probes and figures: `GET /healthz` (the process answers), `GET /readyz`
//! (the actors holding the state answer within a deadline, and the server is
//! not draining) and `GET /metrics` (Prometheus text). Unauthenticated, so an
//! orchestrator or a scraper can call them; they show no device.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use herald_actors::{CountLive, CountSessions};
use serde_json::json;

use super::AppState;
use crate::error::ApiError;

/// How long the actors may take to answer a readiness probe.
const READY_DEADLINE: Duration = Duration::from_secs(1);

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.is_draining() {
        return Err(ApiError::NotReady("draining"));
    }
    let answers = async {
        let sessions = state.actors.store.send(CountSessions).await.ok()?;
        let live = state.actors.registry.send(CountLive).await.ok()?;
        Some((sessions, live))
    };
    match tokio::time::timeout(READY_DEADLINE, answers).await {
        Ok(Some((sessions, live))) => Ok(HttpResponse::Ok()
            .json(json!({"status": "ready", "sessions": sessions, "streams": live}))),
        Ok(None) | Err(_) => Err(ApiError::NotReady("actors are not answering")),
    }
}

pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(herald_actors::metrics().render())
}

/// `GET /v1/stats` (admin): the totals the `server.stats` line reports.
pub async fn stats() -> HttpResponse {
    HttpResponse::Ok().json(crate::stats::totals())
}
