//! `GET /v1/devices/{device_id}/events`: a device's event stream.
//!
//! The route validates the request, starts the stream's DeviceConnection and
//! asks the store to attach it; everything the client then receives is
//! written by that actor into the stream's queue, which this module turns
//! into SSE (framing by actix-web-lab).

use std::{net::IpAddr, vec};

use actix_web::{HttpRequest, Responder, web};
use actix_web_lab::sse;
use futures_util::{StreamExt as _, stream};
use herald_actors::{
    Attach, ConnectionId, ConnectionParams, DeviceConnection, DeviceId, Frame, Progress,
    StoredEvent,
};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::AppState;
use crate::{error::ApiError, slots::SlotRefusal};

#[derive(Deserialize)]
pub struct StreamQuery {
    /// For clients that cannot set the `Last-Event-ID` header.
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
    /// A device token, for clients that cannot set headers.
    token: Option<String>,
}

pub async fn open_stream(
    req: HttpRequest,
    device: web::Path<String>,
    query: web::Query<StreamQuery>,
    state: web::Data<AppState>,
) -> Result<impl Responder, ApiError> {
    let device = DeviceId::parse(&device).map_err(ApiError::InvalidDeviceId)?;
    let query = query.into_inner();
    state
        .authorizer
        .authorize(&req, &device, query.token.as_deref())?;
    let address = req
        .peer_addr()
        .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let slot = state
        .slots
        .claim(address)
        .map_err(|refusal| match refusal {
            SlotRefusal::ServerFull => ApiError::ServerFull,
            SlotRefusal::AddressFull => ApiError::TooManyStreamsFromAddress,
        })?;
    let last_event_id = claimed_position(&req, query.last_event_id);
    let (queue, frames) = mpsc::channel(state.stream.queue_frames);
    if state.is_draining() {
        // Not an error status: EventSource would stop reconnecting. The
        // stream ends after `retry:`, and the client comes back after it.
        drop(queue);
    } else {
        attach(&req, device, last_event_id, queue, &state).await?;
    }
    // The response holds the slot: it is released when the response ends.
    let events = ReceiverStream::new(frames).flat_map(move |frame| {
        let _held = &slot;
        stream::iter(FrameEvents::from(frame))
    });
    Ok(sse::Sse::from_infallible_stream(events)
        .with_retry_duration(state.stream.jittered_retry())
        .customize()
        .insert_header(("X-Accel-Buffering", "no")))
}

/// Starts the stream's connection actor and has the store attach it.
async fn attach(
    req: &HttpRequest,
    device: DeviceId,
    last_event_id: Option<String>,
    queue: mpsc::Sender<Frame>,
    state: &AppState,
) -> Result<(), ApiError> {
    let connection_id = ConnectionId::new();
    let progress = Progress::default();
    let connection = DeviceConnection::spawn(ConnectionParams {
        device: device.clone(),
        connection_id,
        peer: req
            .peer_addr()
            .map_or_else(|| "-".to_owned(), |a| a.to_string()),
        queue,
        registry: state.actors.registry.clone(),
        heartbeat: state.actors.heartbeat.clone(),
        heartbeat_timeout: state.heartbeat_timeout,
        progress: progress.clone(),
    });
    state
        .actors
        .store
        .send(Attach {
            device,
            connection_id,
            connection,
            progress,
            last_event_id,
        })
        .await
        .map_err(|_| ApiError::Unavailable)?
        // A stream only ever needs a new session; the other bounds guard
        // publishes. A full server is a passing state: 503 with Retry-After.
        .map_err(|_| ApiError::ServerFull)
}

/// The `Last-Event-ID` header, else the `lastEventId` query parameter. Empty
/// means none (EventSource sends no header before it has seen an id).
fn claimed_position(req: &HttpRequest, query: Option<String>) -> Option<String> {
    let header = req
        .headers()
        .get("Last-Event-ID")
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let given = |id: &String| !id.is_empty();
    header.filter(given).or(query.filter(given))
}

/// The SSE events one queued frame becomes.
enum FrameEvents {
    One(Option<sse::Event>),
    History(vec::IntoIter<StoredEvent>),
    State(vec::IntoIter<StoredEvent>),
}

impl From<Frame> for FrameEvents {
    fn from(frame: Frame) -> Self {
        match frame {
            Frame::Event(event) => Self::One(Some(with_id(event))),
            Frame::Replay(events) => Self::History(events.into_iter()),
            Frame::State(events) => Self::State(events.into_iter()),
            Frame::Signal(signal) => {
                Self::One(Some(sse::Data::new(signal.data).event(signal.name).into()))
            }
        }
    }
}

impl Iterator for FrameEvents {
    type Item = sse::Event;

    fn next(&mut self) -> Option<sse::Event> {
        match self {
            Self::One(event) => event.take(),
            Self::History(events) => events.next().map(with_id),
            Self::State(events) => events.next().map(|e| without_id(e).into()),
        }
    }
}

fn without_id(event: StoredEvent) -> sse::Data {
    sse::Data::new(event.data).event(event.name.to_bytestring())
}

fn with_id(event: StoredEvent) -> sse::Event {
    let id = event.id.to_string();
    without_id(event).id(id).into()
}
