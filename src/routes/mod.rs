//! HTTP routes, shared by the server and the tests through
//! [`configure_routes`]. Routes are thin: extract, send a message, map the
//! reply.

mod admin_events;
mod admin_page;
mod auth;
mod devices;
mod drain_hint;
mod health;
mod publish;
mod stream;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use actix_web::{
    FromRequest, Handler, HttpRequest, HttpResponse, Resource, Responder, Route, http::Method,
    middleware::from_fn, web,
};
use herald_actors::Actors;

use crate::{
    config::{DeviceAuth, Settings},
    error::ApiError,
    slots::Slots,
    tokens::DeviceTokens,
};
use auth::{AdminTokens, DeviceAuthorizer, require_admin};

/// What every worker's routes share: created once per server.
#[derive(Clone)]
pub struct Shared {
    pub actors: Actors,
    pub draining: Draining,
    pub slots: Arc<Slots>,
}

impl Shared {
    pub fn new(settings: &Settings, actors: Actors) -> Self {
        let limits = &settings.limits;
        Self {
            actors,
            draining: Draining::default(),
            slots: Slots::new(
                limits.max_streams,
                limits.max_streams_per_address,
                herald_actors::metrics().streams.clone(),
            ),
        }
    }
}

/// What the routes of one worker see.
pub struct AppState {
    pub actors: Actors,
    pub stream: crate::config::StreamSettings,
    /// The buffer bounds, shown beside each device's occupancy.
    pub session: herald_actors::SessionConfig,
    pub heartbeat_timeout: Duration,
    pub max_event_bytes: usize,
    pub max_devices_per_publish: usize,
    authorizer: DeviceAuthorizer,
    slots: Arc<Slots>,
    draining: Draining,
}

impl AppState {
    fn is_draining(&self) -> bool {
        self.draining.is_set()
    }
}

/// Set when shutdown begins; from then on publishes are refused and new
/// streams end at once.
#[derive(Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn start(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

pub fn configure_routes(cfg: &mut web::ServiceConfig, settings: &Settings, shared: Shared) {
    let tokens = (settings.auth.devices == DeviceAuth::Token)
        .then(|| DeviceTokens::new(&settings.auth.secret));
    let state = AppState {
        actors: shared.actors,
        stream: settings.stream.clone(),
        session: settings.session.clone(),
        heartbeat_timeout: settings.heartbeat.timeout,
        max_event_bytes: settings.limits.max_event_bytes,
        max_devices_per_publish: settings.limits.max_devices_per_publish,
        authorizer: DeviceAuthorizer {
            tokens,
            cookie: settings.auth.cookie.clone(),
            allowed_origins: settings.cors.allowed_origins.clone(),
        },
        slots: shared.slots,
        draining: shared.draining,
    };
    let limit = settings.server.max_body_bytes;
    cfg.app_data(web::Data::new(state))
        .app_data(web::Data::new(AdminTokens::new(
            settings.admin.tokens.clone(),
        )))
        .app_data(
            web::JsonConfig::default()
                .limit(limit)
                .error_handler(move |err, _| ApiError::from_json(err, limit).into()),
        )
        .app_data(
            web::QueryConfig::default().error_handler(|err, _| ApiError::from_query(err).into()),
        )
        .configure(register_endpoints);
    if settings.admin.ui {
        cfg.configure(admin_page::configure);
    }
    cfg.default_service(web::to(not_found));
}

async fn not_found(_: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

async fn method_not_allowed(_: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Public,
    /// Needs an admin token, checked before anything is read.
    Admin,
}

struct Endpoint {
    method: Method,
    path: &'static str,
    access: Access,
    route: Route,
}

fn endpoint<F, Args>(method: Method, path: &'static str, access: Access, handler: F) -> Endpoint
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    Endpoint {
        method,
        path,
        access,
        route: web::route().to(handler),
    }
}

/// Every endpoint. `configure_routes` registers exactly these, and the
/// OpenAPI document (`openapi.json`) lists exactly these (a test checks).
fn endpoints() -> Vec<Endpoint> {
    use Access::{Admin, Public};
    vec![
        endpoint(Method::GET, "/healthz", Public, health::healthz),
        endpoint(Method::GET, "/readyz", Public, health::readyz),
        endpoint(Method::GET, "/metrics", Public, health::metrics),
        endpoint(Method::GET, "/v1/openapi.json", Public, openapi),
        endpoint(Method::GET, "/v1/stats", Admin, health::stats),
        endpoint(
            Method::GET,
            "/v1/devices/{device_id}/events",
            Public,
            stream::open_stream,
        ),
        endpoint(
            Method::POST,
            "/v1/devices/{device_id}/events",
            Admin,
            publish::publish,
        ),
        endpoint(Method::GET, "/v1/devices", Admin, devices::list_devices),
        endpoint(
            Method::GET,
            "/v1/devices/{device_id}",
            Admin,
            devices::get_device,
        ),
        endpoint(
            Method::DELETE,
            "/v1/devices/{device_id}",
            Admin,
            devices::delete_device,
        ),
        endpoint(
            Method::GET,
            "/v1/devices/{device_id}/buffer",
            Admin,
            devices::get_buffer,
        ),
        endpoint(
            Method::DELETE,
            "/v1/devices/{device_id}/connection",
            Admin,
            devices::disconnect,
        ),
        endpoint(
            Method::GET,
            "/v1/admin/events",
            Admin,
            admin_events::admin_events,
        ),
        endpoint(Method::POST, "/v1/publish", Admin, publish::publish_many),
        endpoint(Method::POST, "/v1/broadcast", Admin, publish::broadcast),
    ]
}

/// One resource per path with its endpoints; any other method gets `405`.
fn register_endpoints(cfg: &mut web::ServiceConfig) {
    let mut paths: Vec<(&str, Vec<Route>)> = Vec::new();
    for Endpoint {
        method,
        path,
        access,
        route,
    } in endpoints()
    {
        let route = route.method(method);
        let route = match access {
            Access::Public => route,
            Access::Admin => route.wrap(from_fn(require_admin)),
        };
        match paths.iter_mut().find(|(known, _)| *known == path) {
            Some((_, routes)) => routes.push(route),
            None => paths.push((path, vec![route])),
        }
    }
    for (path, routes) in paths {
        let resource = routes
            .into_iter()
            .fold(web::resource(path), Resource::route);
        cfg.service(resource.default_service(web::to(method_not_allowed)));
    }
}

/// The OpenAPI 3 document of every endpoint.
const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    #[test]
    fn the_openapi_document_lists_exactly_the_registered_endpoints_and_their_access() {
        let document: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(
            document["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3."))
        );
        let documented: BTreeSet<(String, String, bool)> = document["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, operations)| {
                let operations = operations.as_object().expect("operations").iter();
                // Path-level `parameters` is not an operation.
                let operations = operations.filter(|(key, _)| *key != "parameters");
                operations.map(move |(method, operation)| {
                    let admin = operation.get("security").is_some();
                    (method.to_uppercase(), path.clone(), admin)
                })
            })
            .collect();
        let registered: BTreeSet<(String, String, bool)> = endpoints()
            .into_iter()
            .map(|e| {
                (
                    e.method.to_string(),
                    e.path.to_owned(),
                    e.access == Access::Admin,
                )
            })
            .collect();
        assert_eq!(documented, registered);
    }
}
