//! `/api/v1`: the pages' data and actions as JSON, with the same sessions (a script logs in
//! with `POST /login`, keeps the cookie, reads `/api/v1/session` for its CSRF token and sends
//! it as `X-CSRF-Token` with every change); `/metrics` and `/healthz`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::app::App;
use crate::pages::{delete_user, save_user};
use crate::sessions::Session;

fn problem(status: StatusCode, text: impl Into<String>) -> Response {
    (status, Json(json!({ "error": text.into() }))).into_response()
}

/// 200 and `ok` while every component serves (up or degraded), else 503 and the first that
/// does not, in words. No session needed: load balancers and the watchdog of a supervisor
/// ask it; it tells no more than "the gateway works".
pub(crate) async fn healthz(State(app): State<Arc<App>>) -> Response {
    let status = app.gateway.status().borrow().clone();
    let Some(status) = status else {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response();
    };
    match status
        .components
        .iter()
        .find(|(_, health)| !(health == "up" || health.starts_with("degraded")))
    {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some((name, health)) => {
            let first_word = health.split(':').next().unwrap_or_default();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{name}: {first_word}\n"),
            )
                .into_response()
        }
    }
}

/// Prometheus' text format.
pub(crate) async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.gateway.metrics(),
    )
        .into_response()
}

/// Who is logged in, and the CSRF token for changes.
pub(crate) async fn session(Extension(session): Extension<Session>) -> Response {
    Json(json!({
        "user": session.user,
        "role": session.role,
        "csrf": session.csrf,
    }))
    .into_response()
}

pub(crate) async fn status(State(app): State<Arc<App>>) -> Response {
    match app.gateway.status().borrow().clone() {
        Some(status) => Json(status.as_ref().clone()).into_response(),
        None => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "no status yet: the gateway is starting",
        ),
    }
}

pub(crate) async fn queue(State(app): State<Arc<App>>) -> Response {
    match app.gateway.queue().await {
        Ok(detail) => Json(detail).into_response(),
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

#[derive(Deserialize)]
pub(crate) struct Purge {
    #[serde(default)]
    confirm: String,
}

pub(crate) async fn purge(
    State(app): State<Arc<App>>,
    Extension(session): Extension<Session>,
    Json(body): Json<Purge>,
) -> Response {
    if body.confirm != "purge" {
        return problem(
            StatusCode::BAD_REQUEST,
            "nothing deleted: send {\"confirm\": \"purge\"}",
        );
    }
    match app.gateway.purge_queue().await {
        Ok(n) => {
            tracing::warn!(user = %session.user, messages = n, "Queue purged through the API");
            Json(json!({ "deleted": n })).into_response()
        }
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

pub(crate) async fn users(State(app): State<Arc<App>>) -> Response {
    let list: Vec<_> = app
        .accounts
        .current()
        .list()
        .into_iter()
        .map(|(name, role)| json!({ "name": name, "role": role }))
        .collect();
    Json(list).into_response()
}

#[derive(Deserialize)]
pub(crate) struct NewUser {
    name: String,
    role: String,
    password: String,
}

pub(crate) async fn add_user(State(app): State<Arc<App>>, Json(user): Json<NewUser>) -> Response {
    match save_user(&app, &user.name, &user.role, &user.password, None).await {
        Ok(_) => Json(json!({ "name": user.name, "role": user.role })).into_response(),
        Err(e) => problem(StatusCode::BAD_REQUEST, e),
    }
}

pub(crate) async fn remove_user(
    State(app): State<Arc<App>>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
) -> Response {
    match delete_user(&app, &session, &name).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => problem(StatusCode::BAD_REQUEST, e),
    }
}
