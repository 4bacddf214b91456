//! Authentication. Admin routes: a middleware, so a request is refused before
//! its body is even read. Device streams: a device token from the header, a
//! cookie or the query, checked against the device in the path.

use actix_web::{
    Error, HttpRequest, ResponseError as _,
    body::{EitherBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::header::{AUTHORIZATION, ORIGIN},
    middleware::Next,
    web,
};
use constant_time_eq::constant_time_eq;

use crate::{
    error::ApiError,
    tokens::{DeviceTokens, TokenRefusal},
};

/// The admin tokens from config.
pub struct AdminTokens(Vec<String>);

impl AdminTokens {
    pub fn new(tokens: Vec<String>) -> Self {
        Self(tokens)
    }

    /// Compares against every token in constant time, so timing reveals
    /// neither which token nor how much of one matched.
    fn accepts(&self, candidate: &str) -> bool {
        self.0.iter().fold(false, |found, token| {
            found | constant_time_eq(token.as_bytes(), candidate.as_bytes())
        })
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme matched
/// case-insensitively).
fn bearer(headers: &actix_web::http::header::HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

/// `401` without a bearer token, `403` with one that is not an admin token.
/// A refusal is an ordinary response, not an `Err`, so the CORS middleware
/// still decorates it and a browser console can read why.
pub async fn require_admin(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let tokens = req.app_data::<web::Data<AdminTokens>>();
    let refusal = match bearer(req.headers()).filter(|t| !t.is_empty()) {
        None => Some(ApiError::Unauthorized),
        Some(token) if !tokens.is_some_and(|tokens| tokens.accepts(token)) => {
            Some(ApiError::Forbidden)
        }
        Some(_) => None,
    };
    match refusal {
        Some(refusal) => Ok(req
            .into_response(refusal.error_response())
            .map_into_right_body()),
        None => Ok(next.call(req).await?.map_into_left_body()),
    }
}

/// How device streams are authorized: `tokens` is `None` when
/// `auth.devices = "open"`.
pub struct DeviceAuthorizer {
    pub tokens: Option<DeviceTokens>,
    pub cookie: String,
    /// Origins whose pages may use the cookie (`cors.allowed_origins`).
    pub allowed_origins: Vec<String>,
}

impl DeviceAuthorizer {
    /// `Ok` if the request may open `device`'s stream. The token comes from
    /// `Authorization: Bearer`, else the cookie, else the `token` query
    /// parameter. A refusal is logged with its reason, never with the token.
    pub fn authorize(
        &self,
        req: &HttpRequest,
        device: &herald_actors::DeviceId,
        query_token: Option<&str>,
    ) -> Result<(), ApiError> {
        let Some(tokens) = &self.tokens else {
            return Ok(());
        };
        let cookie = req.cookie(&self.cookie);
        let header = bearer(req.headers());
        let from_cookie = header.is_none() && cookie.is_some();
        let token = header
            .or(cookie.as_ref().map(|c| c.value()))
            .or(query_token)
            .filter(|t| !t.is_empty());
        let checked = token
            .ok_or(TokenRefusal::Missing)
            .and_then(|t| tokens.check(t, device));
        let refusal = match checked {
            // The browser attaches the cookie to any page's request; only
            // listed origins' pages may use it (a foreign page would kick
            // the device's real stream).
            Ok(()) if from_cookie && !self.origin_allowed(req) => "foreign_origin",
            Ok(()) => return Ok(()),
            Err(refusal) => refusal.as_str(),
        };
        let addr = req
            .peer_addr()
            .map_or_else(|| "-".to_owned(), |a| a.to_string());
        log::info!("auth.refused device={device} addr={addr} reason={refusal}");
        Err(match checked {
            Ok(()) => ApiError::OriginNotAllowed,
            Err(TokenRefusal::WrongDevice) => ApiError::WrongDevice,
            Err(_) => ApiError::DeviceUnauthorized,
        })
    }

    /// No `Origin` (not a cross-origin browser request) or a listed one.
    fn origin_allowed(&self, req: &HttpRequest) -> bool {
        req.headers().get(ORIGIN).is_none_or(|origin| {
            self.allowed_origins
                .iter()
                .any(|o| o.as_bytes() == origin.as_bytes())
        })
    }
}
