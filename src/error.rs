//! Every error an HTTP client can get, and the one place that maps them to a
//! status and a JSON body: `{"error":{"code":"...","message":"..."}}`. The
//! codes are part of the API (README, "Errors").

use actix_web::{
    HttpResponse, ResponseError,
    error::{JsonPayloadError, QueryPayloadError},
    http::StatusCode,
};
use herald_actors::{NameError, Refusal, StoreError, WriteError, metrics};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid device id: {0}")]
    InvalidDeviceId(NameError),
    #[error("invalid event name: {0}")]
    InvalidEventName(NameError),
    #[error("invalid request body: {0}")]
    InvalidBody(String),
    #[error(
        "event data may not contain a carriage return (SSE cannot carry it); use \\n line breaks or JSON"
    )]
    InvalidData,
    #[error("invalid query string: {0}")]
    InvalidQuery(String),
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("an admin bearer token is required (Authorization: Bearer <token>)")]
    Unauthorized,
    #[error("the bearer token is not an admin token")]
    Forbidden,
    #[error("this stream needs a valid device token (Authorization: Bearer, cookie, or ?token=)")]
    DeviceUnauthorized,
    #[error("the device token is for another device")]
    WrongDevice,
    #[error("the device cookie may only be used by pages of the allowed origins")]
    OriginNotAllowed,
    #[error("too many streams are open from this address")]
    TooManyStreamsFromAddress,
    /// Answered by the accept stage (`connections.rs`), before any request.
    #[error("too many connections are open from this address")]
    TooManyConnectionsFromAddress,
    #[error("the server holds as many connections as it may; try again later")]
    ConnectionsFull,
    #[error("the event is larger than {limit} bytes (name and data)")]
    EventTooLarge { limit: usize },
    #[error("no such route")]
    NotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("the server is shutting down or an internal component is unavailable")]
    Unavailable,
    #[error("the server holds as many streams or sessions as it may; try again later")]
    ServerFull,
    #[error("{0}")]
    Bound(StoreError),
    #[error("no such device")]
    UnknownDevice,
    #[error("the device has no live stream")]
    NotConnected,
    #[error("not ready: {0}")]
    NotReady(&'static str),
    #[error("a multi-device publish names 1 to {limit} devices")]
    DeviceCount { limit: usize },
    #[error("invalid instance: {0}")]
    InvalidInstance(NameError),
    #[error("{0}")]
    Refused(Refusal),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidDeviceId(_) => "invalid_device_id",
            Self::InvalidEventName(_) => "invalid_event_name",
            Self::InvalidBody(_) => "invalid_body",
            Self::InvalidData => "invalid_data",
            Self::InvalidQuery(_) => "invalid_query",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::DeviceUnauthorized => "unauthorized",
            Self::WrongDevice => "wrong_device",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::TooManyStreamsFromAddress => "too_many_streams",
            Self::TooManyConnectionsFromAddress => "too_many_connections",
            Self::EventTooLarge { .. } => "event_too_large",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unavailable => "unavailable",
            Self::ServerFull | Self::ConnectionsFull => "server_full",
            Self::Bound(StoreError::TooManySessions(_)) => "too_many_sessions",
            Self::Bound(StoreError::StorageFull(_)) => "storage_full",
            Self::Bound(StoreError::RetainedLimit(_)) => "retained_limit",
            Self::Bound(StoreError::Write(WriteError::DiskFull)) => "storage_full",
            Self::Bound(StoreError::Write(WriteError::Unavailable)) => "storage_unavailable",
            Self::Bound(StoreError::NotOnCluster(_)) => "not_on_redis",
            Self::UnknownDevice => "unknown_device",
            Self::NotReady(_) => "not_ready",
            Self::NotConnected => "not_connected",
            Self::InvalidInstance(_) => "invalid_instance",
            Self::DeviceCount { .. } => "invalid_device_count",
            Self::Refused(refusal) => refusal.as_str(),
        }
    }

    /// Maps the JSON extractor's failures (wired in by `configure_routes`).
    pub fn from_json(err: JsonPayloadError, limit: usize) -> Self {
        match err {
            JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
                Self::BodyTooLarge { limit }
            }
            JsonPayloadError::ContentType => Self::UnsupportedMediaType,
            JsonPayloadError::Deserialize(e) => Self::InvalidBody(e.to_string()),
            other => Self::InvalidBody(other.to_string()),
        }
    }

    pub fn from_query(err: QueryPayloadError) -> Self {
        Self::InvalidQuery(err.to_string())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidDeviceId(_)
            | Self::InvalidEventName(_)
            | Self::InvalidBody(_)
            | Self::InvalidData
            | Self::InvalidQuery(_)
            | Self::InvalidInstance(_)
            | Self::DeviceCount { .. } => StatusCode::BAD_REQUEST,
            Self::Refused(_) => StatusCode::CONFLICT,
            Self::BodyTooLarge { .. } | Self::EventTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthorized | Self::DeviceUnauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden | Self::WrongDevice | Self::OriginNotAllowed => StatusCode::FORBIDDEN,
            Self::TooManyStreamsFromAddress | Self::TooManyConnectionsFromAddress => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::NotFound | Self::UnknownDevice | Self::NotConnected => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable | Self::ServerFull | Self::ConnectionsFull | Self::NotReady(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Bound(StoreError::Write(WriteError::Unavailable)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Bound(StoreError::NotOnCluster(_)) => StatusCode::NOT_IMPLEMENTED,
            Self::Bound(_) => StatusCode::INSUFFICIENT_STORAGE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        metrics().rejected.with_label_values(&[self.code()]).inc();
        let mut response = HttpResponse::build(self.status_code());
        match self {
            Self::Unauthorized | Self::DeviceUnauthorized => {
                response.insert_header(("WWW-Authenticate", "Bearer"));
            }
            // Spread the retries of a full server's clients over a minute.
            Self::ServerFull
            | Self::TooManyStreamsFromAddress
            | Self::ConnectionsFull
            | Self::TooManyConnectionsFromAddress => {
                response.insert_header(("Retry-After", fastrand::u32(10..=60).to_string()));
            }
            _ => {}
        }
        response.json(json!({ "error": { "code": self.code(), "message": self.to_string() } }))
    }
}
