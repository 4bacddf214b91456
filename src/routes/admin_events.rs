//! `GET /v1/admin/events` (admin): what the admin page watches live, as
//! SSE. A `device` event for each lifecycle step on this node — a stream
//! connected, disconnected, kicked or reset, a device found flapping (see
//! herald-actors' `feed`) — and a `stats` event every [`STATS_EVERY`] with
//! the totals of `/v1/stats`. A reader that fell behind gets `lagged` with
//! how many steps it missed. The stream ends once the server drains.
//!
//! The admin token goes in the `Authorization` header like on every admin
//! endpoint, so browsers read this with `fetch` and a streaming body:
//! `EventSource` cannot send headers, and a token in the URL would end up in
//! logs and histories.

use std::{convert::Infallible, time::Duration};

use actix_web::{HttpRequest, HttpResponse, Responder as _, body::BoxBody, web};
use actix_web_lab::sse;
use futures_util::{StreamExt as _, stream};
use herald_actors::feed;
use serde_json::json;
use tokio_stream::wrappers::{BroadcastStream, IntervalStream, errors::BroadcastStreamRecvError};

use super::{AppState, drain_hint::DrainHint};
use crate::stats;

/// How often the totals are sent: often enough for a per-second chart.
const STATS_EVERY: Duration = Duration::from_secs(2);

pub async fn admin_events(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let steps = BroadcastStream::new(feed::subscribe()).map(|step| match step {
        Ok(step) => json_event("device", &step),
        Err(BroadcastStreamRecvError::Lagged(missed)) => {
            json_event("lagged", &json!({ "missed": missed }))
        }
    });
    let totals = IntervalStream::new(tokio::time::interval(STATS_EVERY))
        .map(|_| json_event("stats", &stats::totals()));
    // Ends at the first event after shutdown began (a `stats` at the
    // latest), with the drain's `retry:` hint.
    let draining = state.draining.clone();
    let open = move |_: &sse::Event| std::future::ready(!draining.is_set());
    let events = stream::select(steps, totals)
        .take_while(open)
        .map(Ok::<_, Infallible>);
    let (retry, draining) = (state.stream.jittered_retry(), state.draining.clone());
    sse::Sse::from_stream(events)
        .with_retry_duration(retry)
        .respond_to(&req)
        .map_body(|_, body| BoxBody::new(DrainHint::new(body, draining, retry)))
}

fn json_event(name: &'static str, data: &impl serde::Serialize) -> sse::Event {
    let data = sse::Data::new_json(data).unwrap_or_else(|_| sse::Data::new("{}"));
    data.event(name).into()
}
