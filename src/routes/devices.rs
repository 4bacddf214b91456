//! Admin device management: `DELETE /v1/devices/{device_id}` and
//! `DELETE /v1/devices/{device_id}/connection`.

use actix_web::{HttpResponse, web};
use herald_actors::{DeleteDevice, DeviceId, Disconnect};
use serde::Deserialize;

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
        .map_err(|_| ApiError::Unavailable)?;
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
    let disconnect = Disconnect {
        device: device.clone(),
        reconnect,
    };
    let ended = state
        .actors
        .registry
        .send(disconnect)
        .await
        .map_err(|_| ApiError::Unavailable)?;
    if ended {
        log::info!("device.disconnected_by_admin device={device} reconnect={reconnect}");
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::NotConnected)
    }
}
