//! The admin page at `/admin/` (`admin.ui`, on by default): the files in
//! `admin_page/`, built into the binary, that run in the operator's browser
//! and do everything through the documented admin API with the token the
//! operator signs in with. The page holds no data itself, so it is served
//! without a token; what it shows needs one.
//!
//! Its headers fit an admin page: a Content-Security-Policy that allows
//! only these files (no inline script or style, nothing from elsewhere), no
//! framing, no sniffing, no referrer, and revalidation on every load.

use actix_web::{
    HttpResponse,
    http::header::{self, HeaderValue},
    web,
};

/// Each file of the page: its name under `/admin/`, type and content.
const FILES: [(&str, &str, &str); 5] = [
    (
        "",
        "text/html; charset=utf-8",
        include_str!("admin_page/index.html"),
    ),
    ("app.js", JAVASCRIPT, include_str!("admin_page/app.js")),
    ("api.js", JAVASCRIPT, include_str!("admin_page/api.js")),
    (
        "charts.js",
        JAVASCRIPT,
        include_str!("admin_page/charts.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("admin_page/app.css"),
    ),
];
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'";

/// Registers `/admin` (a redirect) and the page's files.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin", web::get().to(redirect));
    for (name, content_type, body) in FILES {
        let serve = move || async move { page_file(body, content_type) };
        cfg.route(&format!("/admin/{name}"), web::get().to(serve));
    }
}

async fn redirect() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/admin/"))
        .finish()
}

fn page_file(body: &'static str, content_type: &'static str) -> HttpResponse {
    let mut response = HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body);
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
