//! HTTP routes, shared by the server and the tests through
//! [`configure_routes`]. Routes are thin: extract, send a message, map the
//! reply.

mod auth;
mod devices;
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

use actix_web::{HttpRequest, HttpResponse, Resource, Route, middleware::from_fn, web};
use herald_actors::Actors;

use crate::{
    config::{DeviceAuth, Settings},
    error::ApiError,
    slots::StreamSlots,
    tokens::DeviceTokens,
};
use auth::{AdminTokens, DeviceAuthorizer, require_admin};

/// What every worker's routes share: created once per server.
#[derive(Clone)]
pub struct Shared {
    pub actors: Actors,
    pub draining: Draining,
    pub slots: Arc<StreamSlots>,
}

impl Shared {
    pub fn new(settings: &Settings, actors: Actors) -> Self {
        let limits = &settings.limits;
        Self {
            actors,
            draining: Draining::default(),
            slots: StreamSlots::new(limits.max_streams, limits.max_streams_per_address),
        }
    }
}

/// What the routes of one worker see.
pub struct AppState {
    pub actors: Actors,
    pub stream: crate::config::StreamSettings,
    pub heartbeat_timeout: Duration,
    pub max_event_bytes: usize,
    pub max_devices_per_publish: usize,
    authorizer: DeviceAuthorizer,
    slots: Arc<StreamSlots>,
    draining: Draining,
}

impl AppState {
    fn is_draining(&self) -> bool {
        self.draining.0.load(Ordering::Relaxed)
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
}

pub fn configure_routes(cfg: &mut web::ServiceConfig, settings: &Settings, shared: Shared) {
    let tokens = (settings.auth.devices == DeviceAuth::Token)
        .then(|| DeviceTokens::new(&settings.auth.secret));
    let state = AppState {
        actors: shared.actors,
        stream: settings.stream.clone(),
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
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(health::metrics))
        .service(resource("/v1/stats", [admin(web::get().to(health::stats))]))
        .service(resource(
            "/v1/devices/{device_id}/events",
            [
                web::get().to(stream::open_stream),
                admin(web::post().to(publish::publish)),
            ],
        ))
        .service(resource(
            "/v1/devices",
            [admin(web::get().to(devices::list_devices))],
        ))
        .service(resource(
            "/v1/devices/{device_id}/connection",
            [admin(web::delete().to(devices::disconnect))],
        ))
        .service(resource(
            "/v1/devices/{device_id}",
            [
                admin(web::get().to(devices::get_device)),
                admin(web::delete().to(devices::delete_device)),
            ],
        ))
        .service(resource(
            "/v1/publish",
            [admin(web::post().to(publish::publish_many))],
        ))
        .service(resource(
            "/v1/broadcast",
            [admin(web::post().to(publish::broadcast))],
        ))
        .default_service(web::to(not_found));
}

async fn not_found(_: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

async fn method_not_allowed(_: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

/// A resource with these routes; any other method gets `405`.
fn resource<const N: usize>(path: &str, routes: [Route; N]) -> Resource {
    routes
        .into_iter()
        .fold(web::resource(path), |resource, route| resource.route(route))
        .default_service(web::to(method_not_allowed))
}

/// A route that needs an admin token (checked before anything is read).
fn admin(route: Route) -> Route {
    route.wrap(from_fn(require_admin))
}
