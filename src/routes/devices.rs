//! Admin device views and actions: `GET /v1/devices`, `GET`/`DELETE
//! /v1/devices/{device_id}`, `GET /v1/devices/{device_id}/buffer`, `DELETE
//! /v1/devices/{device_id}/connection`.

use actix_web::{HttpResponse, web};
use std::time::SystemTime;

use herald_actors::{
    DeleteDevice, DescribeDevice, DeviceId, DeviceView, DisconnectDevice, ListDevices, PeekDevice,
    StoredEvent, check_name,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use crate::error::ApiError;

/// Forgets the device: its session, buffer and retained events; its live
/// stream ends (reason `deleted`). `204`, or `404` if herald knows no such
/// device.
pub async fn delete_device(
    device: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let device = DeviceId::parse(&device).map_err(ApiError::InvalidDeviceId)?;
    let existed = state
        .actors
        .store
        .send(DeleteDevice { device })
        .await
        .map_err(|_| ApiError::Unavailable)?
        .map_err(ApiError::Bound)?;
    if existed {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::UnknownDevice)
    }
}

#[derive(Deserialize)]
pub struct DisconnectQuery {
    /// `false`: the device is asked not to come back for a while.
    #[serde(default = "reconnect_by_default")]
    reconnect: bool,
}

fn reconnect_by_default() -> bool {
    true
}

/// Ends the device's live stream. By default the client reconnects at once
/// (this clears a zombie connection); with `?reconnect=false` the stream gets
/// `kicked` (reason `admin`) and the device's streams are answered `204`
/// for `kicks.reconnect_block`. `204`, or `404` without a live stream.
pub async fn disconnect(
    device: web::Path<String>,
    query: web::Query<DisconnectQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let device = DeviceId::parse(&device).map_err(ApiError::InvalidDeviceId)?;
    let reconnect = query.reconnect;
    let disconnect = DisconnectDevice {
        device: device.clone(),
        reconnect,
    };
    let ended = state
        .actors
        .store
        .send(disconnect)
        .await
        .map_err(|_| ApiError::Unavailable)?
        .map_err(ApiError::Bound)?;
    if ended {
        log::info!("device.disconnected_by_admin device={device} reconnect={reconnect}");
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::NotConnected)
    }
}

/// Devices on one page of `GET /v1/devices`, unless `limit` says fewer.
const PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

#[derive(Deserialize)]
pub struct ListQuery {
    connected: Option<bool>,
    /// Only devices whose id starts with this.
    prefix: Option<String>,
    /// The last device of the previous page (its `next`).
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/devices?connected=&prefix=&after=&limit=`: devices that have a
/// session, in device-id order; `next` is the cursor of the following page
/// (a page may hold fewer than `limit` when the filter is sparse: follow
/// `next`).
pub async fn list_devices(
    query: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let after = query
        .after
        .map(|a| DeviceId::parse(&a))
        .transpose()
        .map_err(ApiError::InvalidDeviceId)?;
    let prefix = query.prefix.unwrap_or_default();
    if !prefix.is_empty() {
        check_name(&prefix).map_err(ApiError::InvalidDeviceId)?;
    }
    let limit = query.limit.unwrap_or(PAGE).clamp(1, MAX_PAGE);
    let list = ListDevices {
        connected: query.connected,
        after,
        prefix,
        limit,
    };
    let page = state
        .actors
        .store
        .send(list)
        .await
        .map_err(|_| ApiError::Unavailable)?
        .map_err(ApiError::Bound)?;
    let next = page.next.map(|device| device.to_string());
    let devices: Vec<Value> = page.devices.iter().map(to_json).collect();
    Ok(HttpResponse::Ok().json(json!({ "devices": devices, "next": next })))
}

/// `GET /v1/devices/{device_id}`: one device, or `404 unknown_device`.
pub async fn get_device(
    device: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let device = DeviceId::parse(&device).map_err(ApiError::InvalidDeviceId)?;
    let view = state
        .actors
        .store
        .send(DescribeDevice { device })
        .await
        .map_err(|_| ApiError::Unavailable)?
        .map_err(ApiError::Bound)?;
    let view = view.ok_or(ApiError::UnknownDevice)?;
    let mut body = to_json(&view);
    let bounds = &state.session;
    body["limits"] = json!({
        "buffer_events": bounds.buffer_events,
        "buffer_bytes": bounds.buffer_bytes,
        "retained": bounds.retained_per_device,
    });
    Ok(HttpResponse::Ok().json(body))
}

/// Events one buffer request shows, unless `limit` says fewer.
const BUFFER_PAGE: usize = 20;
const MAX_BUFFER_PAGE: usize = 200;

#[derive(Deserialize)]
pub struct BufferQuery {
    limit: Option<usize>,
}

/// `GET /v1/devices/{device_id}/buffer?limit=`: what the device's stream
/// would get — its newest buffered events (oldest first, with ids) and its
/// retained events — or `404 unknown_device`. `complete` is `false` when
/// some of the newest events are held on disk only (the embedded backend's
/// `storage.cache_bytes`): those are left out.
pub async fn get_buffer(
    device: web::Path<String>,
    query: web::Query<BufferQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let device = DeviceId::parse(&device).map_err(ApiError::InvalidDeviceId)?;
    let limit = query.limit.unwrap_or(BUFFER_PAGE).clamp(1, MAX_BUFFER_PAGE);
    let peek = state
        .actors
        .store
        .send(PeekDevice { device, limit })
        .await
        .map_err(|_| ApiError::Unavailable)?
        .map_err(ApiError::Bound)?;
    let peek = peek.ok_or(ApiError::UnknownDevice)?;
    let event = |e: &StoredEvent, id: bool| {
        let mut json = json!({ "event": e.name.as_str(), "data": &*e.data });
        if id {
            json["id"] = json!(e.id.to_string());
        }
        json
    };
    Ok(HttpResponse::Ok().json(json!({
        "events": peek.events.iter().map(|e| event(e, true)).collect::<Vec<_>>(),
        "complete": peek.complete,
        "retained": peek.retained.iter().map(|e| event(e, false)).collect::<Vec<_>>(),
    })))
}

fn to_json(view: &DeviceView) -> Value {
    let time = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
    json!({
        "device": view.device.as_str(),
        "connected": view.connection_id.is_some(),
        "node": view.node,
        "connection_id": view.connection_id.map(|c| c.to_string()),
        "address": view.address,
        "connected_since": view.connected_since.map(time),
        "last_seen": (view.last_seen != SystemTime::UNIX_EPOCH).then(|| time(view.last_seen)),
        "last_event_id": view.last_event_id.map(|id| id.to_string()),
        "buffered_events": view.buffered_events,
        "buffered_bytes": view.buffered_bytes,
        "retained": view.retained,
        "reconnects": view.reconnects,
        "kicks": view.kicks,
        "resets": view.resets,
        "flapping": view.flapping,
    })
}
