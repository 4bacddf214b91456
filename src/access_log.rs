//! The access log: one `http.request` line per request when its response
//! head is ready — for a stream, that is its connect line, and
//! `device.disconnected` is its close line, with the duration. Paths only:
//! query strings (which may hold tokens) are never logged. Probes log at
//! debug so they do not drown the rest.

use std::time::Instant;

use actix_web::{
    Error,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::Version,
    middleware::Next,
};

const PROBES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

pub async fn access_log(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let (method, path) = (req.method().clone(), req.path().to_owned());
    let proto = proto(req.version());
    let peer = req
        .peer_addr()
        .map_or_else(|| "-".to_owned(), |a| a.to_string());
    let response = next.call(req).await?;
    let level = if PROBES.contains(&path.as_str()) {
        log::Level::Debug
    } else {
        log::Level::Info
    };
    log::log!(
        level,
        "http.request method={method} path={} status={} addr={peer} proto={proto} duration_ms={}",
        // A JSON string: the path is client text.
        serde_json::Value::from(path.as_str()),
        response.status().as_u16(),
        started.elapsed().as_millis()
    );
    Ok(response)
}

/// The HTTP version as logs and metrics name it: `h2`, or `h1` (HTTP/1.1
/// and 1.0).
pub fn proto(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "h2",
        _ => "h1",
    }
}
