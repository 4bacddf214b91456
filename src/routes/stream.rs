//! `GET /v1/devices/{device_id}/events`: a device's event stream.
//!
//! The route validates the request, starts the stream's DeviceConnection and
//! asks the store to attach it; everything the client then receives is
//! written into the stream's queue (the start and signals by that actor,
//! live events handed over by the registry), which this module turns into
//! SSE (framing by actix-web-lab).

use std::{net::IpAddr, rc::Rc, vec};

use actix_web::{
    HttpRequest, HttpResponse, Responder as _,
    body::BoxBody,
    http::header::{HeaderName, HeaderValue},
    web,
};
use actix_web_lab::sse;
use futures_util::{StreamExt as _, stream};
use herald_actors::{
    Connect, ConnectError, ConnectionId, ConnectionParams, DeviceId, Frame, Progress, Refusal,
    StoreError, StoredEvent, StreamQueue, Unstarted, check_name, metrics,
};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{AppState, drain_hint::DrainHint};
use crate::{access_log, client_socket::ClientSocket, error::ApiError, slots::SlotRefusal};

#[derive(Deserialize)]
pub struct StreamQuery {
    /// For clients that cannot set the `Last-Event-ID` header.
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
    /// A device token, for clients that cannot set headers.
    token: Option<String>,
    /// The client's own name for itself, picked once (e.g. per browser tab).
    instance: Option<String>,
}

/// The most of a client's claimed position that is used, echoed in `reset`
/// and logged; a real id is at most 37 characters.
const MAX_ECHOED_POSITION: usize = 128;

pub async fn open_stream(
    req: HttpRequest,
    device: web::Path<String>,
    query: web::Query<StreamQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let device = DeviceId::parse(&device).map_err(ApiError::InvalidDeviceId)?;
    let query = query.into_inner();
    state
        .authorizer
        .authorize(&req, &device, query.token.as_deref())?;
    let client = Client::of(&req, query)?;
    let slot = state
        .slots
        .claim(client.address)
        .map_err(|refusal| match refusal {
            SlotRefusal::ServerFull => ApiError::ServerFull,
            SlotRefusal::AddressFull => ApiError::TooManyStreamsFromAddress,
        })?;
    let (queue, frames) = mpsc::channel(state.stream.queue_frames);
    // Held by the response body: while it lives, the connection's socket is
    // open, and the stream's actor may ask the kernel about it.
    let body = Rc::new(());
    if state.is_draining() {
        // Not an error status: EventSource would stop reconnecting. The
        // stream ends after `retry:`, and the client comes back after it.
        drop(queue);
    } else {
        let client_closed = match req.conn_data::<ClientSocket>() {
            Some(socket) => socket.clone().probe(Rc::downgrade(&body)),
            // Not a TCP connection: the HTTP body alone tells.
            None => Box::new(|| false),
        };
        match connect(&state, device, client, queue, client_closed).await? {
            Ok(()) => {}
            // The one answer that tells EventSource to stop without an error.
            Err(ConnectError::Refused(Refusal::Blocked)) => {
                return Ok(HttpResponse::NoContent().finish());
            }
            Err(ConnectError::Refused(refusal)) => return Err(ApiError::Refused(refusal)),
            // The shared storage (the cluster's Redis) is away: like a
            // draining server, 200 and `retry:` then the end, so EventSource
            // keeps coming back until it is there again.
            Err(ConnectError::Full(StoreError::Write(_))) => {}
            // A stream only ever needs a new session; the other bounds guard
            // publishes. A full server is a passing state: 503 with
            // Retry-After.
            Err(ConnectError::Full(_)) => return Err(ApiError::ServerFull),
        }
    }
    // The response holds the slot: it is released when the response ends.
    let events = ReceiverStream::new(frames).flat_map(move |frame| {
        let _held = (&slot, &body);
        stream::iter(FrameEvents::from(frame))
    });
    let sse =
        sse::Sse::from_infallible_stream(events).with_retry_duration(state.stream.jittered_retry());
    let hint = (state.draining.clone(), state.stream.jittered_retry());
    let mut response = sse
        .respond_to(&req)
        .map_body(|_, body| BoxBody::new(DrainHint::new(body, hint.0, hint.1)));
    // Tell nginx not to buffer the stream.
    let no_buffering = (
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    response
        .headers_mut()
        .insert(no_buffering.0, no_buffering.1);
    Ok(response)
}

/// What a stream request says about its client.
struct Client {
    peer: String,
    /// `h2` or `h1` (HTTP/1.1 or 1.0).
    proto: &'static str,
    address: IpAddr,
    instance: Option<String>,
    /// The claimed position, untrusted (capped at [`MAX_ECHOED_POSITION`]).
    last_event_id: Option<String>,
}

impl Client {
    fn of(req: &HttpRequest, query: StreamQuery) -> Result<Self, ApiError> {
        let instance = query.instance.filter(|i| !i.is_empty());
        if let Some(instance) = &instance {
            check_name(instance).map_err(ApiError::InvalidInstance)?;
        }
        let peer_addr = req.peer_addr();
        Ok(Self {
            peer: peer_addr.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            proto: access_log::proto(req.version()),
            address: peer_addr.map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip()),
            instance,
            last_event_id: claimed_position(req, query.last_event_id),
        })
    }
}

/// Has the store connect the stream (admission and attach in one turn) and,
/// once admitted, starts its connection actor, which writes the stream's
/// start before this returns (so the response's first write carries it
/// with the head); answers the store's refusal, if any.
async fn connect(
    state: &AppState,
    device: DeviceId,
    client: Client,
    queue: mpsc::Sender<Frame>,
    client_closed: Box<dyn Fn() -> bool>,
) -> Result<Result<(), ConnectError>, ApiError> {
    let connection_id = ConnectionId::new();
    let queue = StreamQueue::new(queue, Progress::default());
    // What the store is sent, beside what the connection keeps.
    let (store_device, store_queue, store_peer) =
        (device.clone(), queue.clone(), client.peer.clone());
    // The actor runs only once admitted; what is sent to it before (a
    // replay read from storage, an ending) waits in its mailbox.
    let (unstarted, connection) = Unstarted::new(ConnectionParams {
        device,
        connection_id,
        peer: client.peer,
        proto: client.proto,
        queue,
        registry: state.actors.registry.clone(),
        store: state.actors.store.clone(),
        client_closed,
        heartbeat_timeout: state.heartbeat_timeout,
    });
    let connect = Connect {
        device: store_device,
        connection_id,
        connection,
        queue: store_queue,
        last_event_id: client.last_event_id,
        instance: client.instance,
        peer: store_peer,
    };
    let admitted = state
        .actors
        .store
        .send(connect)
        .await
        .map_err(|_| ApiError::Unavailable)?;
    let opening = match admitted {
        Ok(opening) => opening,
        Err(refused) => {
            unstarted.discard();
            return Ok(Err(refused));
        }
    };
    metrics()
        .streams_opened
        .with_label_values(&[client.proto])
        .inc();
    unstarted.start(opening);
    Ok(Ok(()))
}

/// The `Last-Event-ID` header, else the `lastEventId` query parameter. Empty
/// means none (EventSource sends no header before it has seen an id).
fn claimed_position(req: &HttpRequest, query: Option<String>) -> Option<String> {
    let header = req
        .headers()
        .get("Last-Event-ID")
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let given = |id: &String| !id.is_empty();
    let mut position = header.filter(given).or(query.filter(given))?;
    if position.len() > MAX_ECHOED_POSITION {
        let cut = (0..=MAX_ECHOED_POSITION)
            .rev()
            .find(|&i| position.is_char_boundary(i))
            .unwrap_or(0);
        position.truncate(cut);
    }
    Some(position)
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
            Frame::Event(event) => {
                // The HTTP body takes the event off the queue to write it now.
                let waited = event.published_at.elapsed().as_secs_f64();
                metrics().publish_to_write.observe(waited);
                Self::One(Some(with_id(*event)))
            }
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
