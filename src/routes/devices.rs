//! Admin device management: `DELETE /v1/devices/{device_id}`.

use actix_web::{HttpResponse, web};
use herald_actors::{DeleteDevice, DeviceId};

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
