//! Every route and who may use it, in one table, and the one middleware that enforces it: a
//! route cannot be added without saying its [`Access`], and the tests walk the table, so a new
//! route cannot escape them either.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Redirect, Response};
use axum::routing::{MethodFilter, MethodRouter};

use crate::app::App;
use crate::sessions::{Session, same_secret, token_in};
use crate::users::Role;
use crate::{api, assets, pages};

/// Who may use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: the login and setup pages, static assets, `/healthz`.
    Public,
    /// Any logged-in account. A request that changes state (not GET) must carry the session's
    /// CSRF token.
    Session,
    /// Admins only; likewise with the CSRF token.
    Admin,
}

/// One route of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    /// Its method.
    pub method: Method,
    /// Its path as the router matches it (`/api/v1/users/{name}`).
    pub path: &'static str,
    /// Who may use it.
    pub access: Access,
}

/// The header a script or API client gives the CSRF token in; forms send a `csrf` field.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The largest request body taken (forms and JSON are small).
pub const MAX_BODY: usize = 64 * 1024;

struct Table {
    routes: BTreeMap<&'static str, MethodRouter<Arc<App>>>,
    list: Vec<RouteInfo>,
}

impl Table {
    fn add<H, T>(mut self, method: Method, path: &'static str, access: Access, handler: H) -> Self
    where
        H: Handler<T, Arc<App>>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
        let entry = self.routes.remove(path).unwrap_or_default();
        self.routes.insert(path, entry.on(filter, handler));
        self.list.push(RouteInfo {
            method,
            path,
            access,
        });
        self
    }
}

fn table() -> Table {
    use Access::{Admin, Public, Session};
    let (get, post, delete) = (Method::GET, Method::POST, Method::DELETE);
    Table {
        routes: BTreeMap::new(),
        list: Vec::new(),
    }
    .add(get.clone(), "/healthz", Public, api::healthz)
    .add(get.clone(), "/static/app.css", Public, assets::css)
    .add(get.clone(), "/static/app.js", Public, assets::js)
    .add(get.clone(), "/login", Public, pages::login_page)
    .add(post.clone(), "/login", Public, pages::login)
    .add(get.clone(), "/setup", Public, pages::setup_page)
    .add(post.clone(), "/setup", Public, pages::setup)
    .add(post.clone(), "/logout", Session, pages::logout)
    .add(get.clone(), "/", Session, pages::dashboard)
    .add(get.clone(), "/events", Session, pages::events)
    .add(get.clone(), "/queue", Session, pages::queue_page)
    .add(post.clone(), "/queue/purge", Admin, pages::purge)
    .add(get.clone(), "/certificates", Session, pages::certificates)
    .add(
        get.clone(),
        "/certificates/uplink.csr",
        Admin,
        pages::certs::csr_download,
    )
    .add(
        post.clone(),
        "/certificates/uplink",
        Admin,
        pages::certs::upload,
    )
    .add(get.clone(), "/devices", Session, crate::devices::page)
    .add(
        post.clone(),
        "/devices/write",
        Admin,
        crate::devices::write_from_form,
    )
    .add(get.clone(), "/live", Session, crate::live::page)
    .add(get.clone(), "/live/events", Session, crate::live::events)
    .add(get.clone(), "/config", Session, pages::config::page)
    .add(post.clone(), "/config/check", Session, pages::config::check)
    .add(post.clone(), "/config/apply", Admin, pages::config::apply)
    .add(
        post.clone(),
        "/config/restore",
        Admin,
        pages::config::restore,
    )
    .add(get.clone(), "/users", Admin, pages::users_page)
    .add(post.clone(), "/users", Admin, pages::add_user)
    .add(post.clone(), "/users/remove", Admin, pages::remove_user)
    .add(get.clone(), "/metrics", Session, api::metrics)
    .add(get.clone(), "/api/v1/session", Session, api::session)
    .add(get.clone(), "/api/v1/status", Session, api::status)
    .add(
        get.clone(),
        "/api/v1/devices",
        Session,
        crate::devices::api_list,
    )
    .add(
        post.clone(),
        "/api/v1/devices/{device}/{point}",
        Admin,
        crate::devices::api_write,
    )
    .add(get.clone(), "/api/v1/queue", Session, api::queue)
    .add(post.clone(), "/api/v1/queue/purge", Admin, api::purge)
    .add(
        get.clone(),
        "/api/v1/config",
        Session,
        pages::config::api_get,
    )
    .add(
        post.clone(),
        "/api/v1/config/check",
        Session,
        pages::config::api_check,
    )
    .add(
        post.clone(),
        "/api/v1/config/apply",
        Admin,
        pages::config::api_apply,
    )
    .add(
        get.clone(),
        "/api/v1/certificates/uplink/csr",
        Admin,
        pages::certs::api_csr,
    )
    .add(
        post.clone(),
        "/api/v1/certificates/uplink",
        Admin,
        pages::certs::api_upload,
    )
    .add(get.clone(), "/api/v1/users", Admin, api::users)
    .add(post.clone(), "/api/v1/users", Admin, api::add_user)
    .add(delete, "/api/v1/users/{name}", Admin, api::remove_user)
}

/// Every route the UI serves, with its access.
pub fn route_table() -> Vec<RouteInfo> {
    table().list
}

/// The router: the table, its guard, the security headers.
pub(crate) fn router(app: Arc<App>) -> Router {
    let Table { routes, list } = table();
    let access: Arc<HashMap<(Method, &'static str), Access>> = Arc::new(
        list.into_iter()
            .map(|r| ((r.method, r.path), r.access))
            .collect(),
    );
    let mut router = Router::new();
    for (path, methods) in routes {
        router = router.route(path, methods);
    }
    router
        .route_layer(axum::middleware::from_fn_with_state(
            (app.clone(), access),
            guard,
        ))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such page\n") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(app)
}

type GuardState = (Arc<App>, Arc<HashMap<(Method, &'static str), Access>>);

/// Lets a request through only with the session, role and CSRF token its route needs.
async fn guard(
    State((app, table)): State<GuardState>,
    path: MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    // HEAD is served by GET's handler.
    let lookup = if method == Method::HEAD {
        Method::GET
    } else {
        method.clone()
    };
    let Some(&access) = table.get(&(lookup, path.as_str())) else {
        // Cannot happen (the router and the table are built together): refuse rather than
        // serve a route nobody declared.
        return (StatusCode::FORBIDDEN, "forbidden\n").into_response();
    };
    if method != Method::GET && method != Method::HEAD && from_another_site(request.headers()) {
        // A form another site makes a browser post: refused even where no session is needed
        // (a login or setup planted from elsewhere would log the victim into the attacker's
        // account); SameSite=Strict and the CSRF token guard the rest.
        return pages::refused(
            StatusCode::FORBIDDEN,
            "This request came from another site.",
        );
    }
    if access == Access::Public {
        return next.run(request).await;
    }
    let wants_page = !(path.as_str().starts_with("/api/")
        || path.as_str() == "/metrics"
        || path.as_str().ends_with("/events"));
    let session = token_in(request.headers()).and_then(|token| app.sessions.touch(token));
    let Some(mut session) = session else {
        return if wants_page && method == Method::GET {
            Redirect::to("/login").into_response()
        } else {
            (StatusCode::UNAUTHORIZED, "log in first\n").into_response()
        };
    };
    // The accounts file decides, not the session: a removed account or a changed role takes
    // effect at the next request.
    match app.accounts.current().role(&session.user) {
        Some(role) => session.role = role,
        None => {
            app.sessions.end_user(&session.user);
            return (StatusCode::UNAUTHORIZED, "this account no longer exists\n").into_response();
        }
    }
    if access == Access::Admin && session.role != Role::Admin {
        return pages::refused(StatusCode::FORBIDDEN, "Only an admin may do this.");
    }
    let request = if method == Method::GET || method == Method::HEAD {
        request
    } else {
        match checked_csrf(request, &session).await {
            Ok(request) => request,
            Err(response) => return response,
        }
    };
    let mut request = request;
    request.extensions_mut().insert(session);
    next.run(request).await
}

/// Whether the browser says the request comes from another origin: `Sec-Fetch-Site:
/// cross-site` (or `same-site`: another host of the same site), or an `Origin` whose host is
/// not the `Host` asked for. Clients that send neither (scripts, curl) are judged by their
/// session and CSRF token alone.
fn from_another_site(headers: &axum::http::HeaderMap) -> bool {
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if matches!(fetch_site, Some("cross-site" | "same-site")) {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    origin == "null" || origin_host.is_none() || origin_host != host
}

/// The request, if it carries the session's CSRF token: in the `X-CSRF-Token` header, or as the
/// `csrf` field of a form (the body is read, within [`MAX_BODY`], and given back).
async fn checked_csrf(request: Request, session: &Session) -> Result<Request, Response> {
    let refused = || {
        pages::refused(
            StatusCode::FORBIDDEN,
            "The form has expired or did not come from this UI: reload the page and try again.",
        )
    };
    if let Some(token) = request.headers().get(CSRF_HEADER) {
        return match token.to_str() {
            Ok(token) if same_secret(token, &session.csrf) => Ok(request),
            _ => Err(refused()),
        };
    }
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(refused());
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| (StatusCode::PAYLOAD_TOO_LARGE, "request too large\n").into_response())?;
    let found = csrf_field(&bytes);
    match found {
        Some(token) if same_secret(&token, &session.csrf) => {
            Ok(Request::from_parts(parts, Body::from(bytes)))
        }
        _ => Err(refused()),
    }
}

/// The `csrf` field of an `application/x-www-form-urlencoded` body.
fn csrf_field(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Csrf {
        csrf: Option<String>,
    }
    serde_urlencoded::from_bytes::<Csrf>(body)
        .ok()
        .and_then(|f| f.csrf)
}

/// Headers on every response: a strict content security policy (our own scripts and styles
/// only, no framing), HSTS, no sniffing, no referrer to other sites, and no caching of anything
/// but assets.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let mut set = |name: header::HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; \
         object-src 'none'",
    );
    set(header::X_FRAME_OPTIONS, "DENY");
    set(header::STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    // Not `no-referrer`: with it a browser sends `Origin: null` on the UI's own form posts,
    // which the cross-site check must refuse. `same-origin` still tells no other site anything.
    set(header::REFERRER_POLICY, "same-origin");
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}
