//! Admin publishing: `POST /v1/devices/{device_id}/events`,
//! `POST /v1/publish` (to a list of devices) and `POST /v1/broadcast`. All
//! take `{"event": "<name>", "data": <JSON>, "retain": <bool, optional>}`.

use std::collections::HashSet;

use actix_web::{HttpResponse, web};
use bytestring::ByteString;
use herald_actors::{Broadcast, DeviceId, EventName, Publish, PublishReceipt};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use crate::error::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    event: String,
    /// A string is sent as is; any other JSON value as compact JSON.
    data: Value,
    /// Keep it as the device's latest event of this name.
    #[serde(default)]
    retain: bool,
}

impl PublishRequest {
    fn into_parts(self, max_event_bytes: usize) -> Result<(EventName, ByteString, bool), ApiError> {
        let name = EventName::parse(&self.event).map_err(ApiError::InvalidEventName)?;
        let data = match self.data {
            // SSE turns a CR into a line break, so it could not arrive intact.
            Value::String(text) if text.contains('\r') => return Err(ApiError::InvalidData),
            Value::String(text) => text,
            other => other.to_string(),
        };
        if name.as_str().len() + data.len() > max_event_bytes {
            return Err(ApiError::EventTooLarge {
                limit: max_event_bytes,
            });
        }
        Ok((name, data.into(), self.retain))
    }
}

pub async fn publish(
    device: web::Path<String>,
    body: web::Json<PublishRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let device = DeviceId::parse(&device).map_err(ApiError::InvalidDeviceId)?;
    let receipts = publish_to(vec![device], body.into_inner(), &state).await?;
    let receipt = receipts.first().ok_or(ApiError::Unavailable)?;
    Ok(HttpResponse::Accepted().json(json!({
        "id": receipt.id.to_string(),
        "delivered": receipt.delivered,
        "buffered": true,
    })))
}

/// `POST /v1/publish`: a [`PublishRequest`] plus the devices to send it to.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishManyRequest {
    devices: Vec<String>,
    event: String,
    data: Value,
    #[serde(default)]
    retain: bool,
}

/// The same event to each listed device (one named twice gets it once), all
/// or none; one receipt per device, in the order listed.
pub async fn publish_many(
    body: web::Json<PublishManyRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let PublishManyRequest {
        devices,
        event,
        data,
        retain,
    } = body.into_inner();
    let limit = state.max_devices_per_publish;
    if devices.is_empty() || devices.len() > limit {
        return Err(ApiError::DeviceCount { limit });
    }
    let mut seen = HashSet::with_capacity(devices.len());
    let mut distinct = Vec::with_capacity(devices.len());
    for device in &devices {
        let device = DeviceId::parse(device).map_err(ApiError::InvalidDeviceId)?;
        if seen.insert(device.clone()) {
            distinct.push(device);
        }
    }
    let request = PublishRequest {
        event,
        data,
        retain,
    };
    let receipts = publish_to(distinct.clone(), request, &state).await?;
    let results: Vec<_> = distinct
        .iter()
        .zip(&receipts)
        .map(|(device, receipt)| {
            let id = receipt.id.to_string();
            json!({"device": device.as_str(), "id": id, "delivered": receipt.delivered})
        })
        .collect();
    Ok(HttpResponse::Accepted().json(json!({ "results": results })))
}

/// Publishes, and logs `publish.rejected` with the error code if refused.
async fn publish_to(
    devices: Vec<DeviceId>,
    request: PublishRequest,
    state: &AppState,
) -> Result<Vec<PublishReceipt>, ApiError> {
    let count = devices.len();
    try_publish(devices, request, state)
        .await
        .inspect_err(|refusal| {
            log::info!("publish.rejected reason={} devices={count}", refusal.code());
        })
}

async fn try_publish(
    devices: Vec<DeviceId>,
    request: PublishRequest,
    state: &AppState,
) -> Result<Vec<PublishReceipt>, ApiError> {
    let (name, data, retain) = request.into_parts(state.max_event_bytes)?;
    refuse_while_draining(state)?;
    let publish = Publish {
        devices,
        name,
        data,
        retain,
    };
    let receipts = state
        .actors
        .store
        .send(publish)
        .await
        .map_err(|_| ApiError::Unavailable)?;
    receipts.map_err(ApiError::Bound)
}

pub async fn broadcast(
    body: web::Json<PublishRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let broadcast = async {
        let (name, data, retain) = body.into_inner().into_parts(state.max_event_bytes)?;
        refuse_while_draining(&state)?;
        let broadcast = Broadcast { name, data, retain };
        let receipt = state
            .actors
            .store
            .send(broadcast)
            .await
            .map_err(|_| ApiError::Unavailable)?;
        let receipt = receipt.map_err(ApiError::Bound)?;
        Ok(HttpResponse::Accepted().json(json!({
            "delivered": receipt.delivered,
            "buffered": receipt.buffered,
        })))
    };
    broadcast.await.inspect_err(|refusal: &ApiError| {
        log::info!("publish.rejected reason={} devices=all", refusal.code());
    })
}

/// Events accepted now would be lost with the process's memory: the publisher
/// must send them to a server that stays.
fn refuse_while_draining(state: &AppState) -> Result<(), ApiError> {
    if state.is_draining() {
        Err(ApiError::Unavailable)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LIMIT: usize = 64;

    fn parse(body: &[u8]) -> Result<(EventName, ByteString, bool), ApiError> {
        let request: PublishRequest =
            serde_json::from_slice(body).map_err(|e| ApiError::InvalidBody(e.to_string()))?;
        request.into_parts(LIMIT)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn any_body_is_refused_or_yields_a_sendable_event(body in prop::collection::vec(any::<u8>(), 0..200)) {
            check(&body)?;
        }

        #[test]
        fn json_shaped_bodies_are_refused_or_yield_a_sendable_event(
            event in "\\PC{0,12}|[a-z]{1,10}",
            data in "\\PC{0,80}|\\\\[rn0]|-?[0-9]{1,30}(\\.[0-9]{1,5})?(e[+-]?[0-9]{1,4})?",
            quoted: bool,
            retain: bool,
        ) {
            let data = if quoted { serde_json::to_string(&data).unwrap() } else { data };
            let body = format!(r#"{{"event":{},"data":{data},"retain":{retain}}}"#, serde_json::to_string(&event).unwrap());
            check(body.as_bytes())?;
        }
    }

    /// Whatever the body, parsing does not panic, and what it accepts can be
    /// written to a stream intact.
    fn check(body: &[u8]) -> Result<(), TestCaseError> {
        if let Ok((name, data, _)) = parse(body) {
            prop_assert!(EventName::parse(name.as_str()).is_ok());
            prop_assert!(!data.contains('\r'));
            prop_assert!(name.as_str().len() + data.len() <= LIMIT);
        }
        Ok(())
    }
}
