//! Admin authentication: a middleware on every admin route, so a request is
//! refused before its body is even read.

use actix_web::{
    Error,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::header::AUTHORIZATION,
    middleware::Next,
    web,
};
use constant_time_eq::constant_time_eq;

use crate::error::ApiError;

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

/// `401` without a bearer token, `403` with one that is not an admin token.
pub async fn require_admin(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let bearer = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some(token) = bearer.filter(|t| !t.is_empty()) else {
        return Err(ApiError::Unauthorized.into());
    };
    let tokens = req
        .app_data::<web::Data<AdminTokens>>()
        .ok_or(ApiError::Unavailable)?;
    if !tokens.accepts(token) {
        return Err(ApiError::Forbidden.into());
    }
    next.call(req).await
}
