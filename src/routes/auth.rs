//! Authentication. Admin routes: a middleware, so a request is refused before
//! its body is even read. Device streams: a device token from the header, a
//! cookie or the query, checked against the device in the path.

use actix_web::{
    Error, HttpRequest, ResponseError as _,
    body::{EitherBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::header::AUTHORIZATION,
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
    let refusal = match (bearer(req.headers()).filter(|t| !t.is_empty()), tokens) {
        (None, _) => Some(ApiError::Unauthorized),
        (Some(_), None) => Some(ApiError::Unavailable),
        (Some(token), Some(tokens)) if !tokens.accepts(token) => Some(ApiError::Forbidden),
        _ => None,
    };
    match refusal {
        Some(refusal) => Ok(req
            .into_response(refusal.error_response())
            .map_into_right_body()),
        None => Ok(next.call(req).await?.map_into_left_body()),
    }
}

/// How device streams are authorized: `None` when `auth.devices = "open"`.
pub struct DeviceAuthorizer {
    pub tokens: Option<DeviceTokens>,
    pub cookie: String,
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
        let token = bearer(req.headers())
            .or(cookie.as_ref().map(|c| c.value()))
            .or(query_token)
            .filter(|t| !t.is_empty());
        let checked = token
            .ok_or(TokenRefusal::Missing)
            .and_then(|t| tokens.check(t, device));
        checked.map_err(|refusal| {
            let addr = req
                .peer_addr()
                .map_or_else(|| "-".to_owned(), |a| a.to_string());
            log::info!(
                "auth.refused device={device} addr={addr} reason={}",
                refusal.as_str()
            );
            match refusal {
                TokenRefusal::WrongDevice => ApiError::WrongDevice,
                _ => ApiError::DeviceUnauthorized,
            }
        })
    }
}
