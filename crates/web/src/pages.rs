//! The HTML pages, rendered on the server with maud (every value escaped by construction).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, Form, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use crate::app::App;
use crate::server::Peer;
use crate::sessions::{Session, cleared_cookie, cookie};
use crate::users::{self, Role};

pub(crate) use crate::MIN_PASSWORD;

/// A page with the navigation for `session`'s role; `here` is the current path.
pub(crate) fn layout(title: &str, session: Option<&Session>, here: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · fieldlink" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body {
                header {
                    span.brand { "fieldlink" }
                    @if let Some(session) = session {
                        @for (path, name) in nav(session.role) {
                            a href=(path) class=[(path == here).then_some("here")] { (name) }
                        }
                        form method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            button type="submit" { "Log out " (session.user) }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

fn nav(role: Role) -> Vec<(&'static str, &'static str)> {
    let mut links = vec![
        ("/", "Dashboard"),
        ("/devices", "Devices"),
        ("/queue", "Queue"),
        ("/live", "Live data"),
        ("/certificates", "Certificates"),
        ("/config", "Configuration"),
    ];
    if role == Role::Admin {
        links.push(("/users", "Users"));
    }
    links
}

/// A short page saying why a request was refused.
pub(crate) fn refused(status: StatusCode, why: &str) -> Response {
    let page = layout(
        "Not allowed",
        None,
        "",
        html! { p.message.bad { (why) } p { a href="/" { "Back to the dashboard" } } },
    );
    (status, page).into_response()
}

/// What a form's action did, in words: said at the top of the page it answers with.
pub(crate) type Outcome = Result<String, String>;

/// The banner for `outcome` (`#outcome`, for people and for the browser tests).
pub(crate) fn banner(outcome: Option<&Outcome>) -> Markup {
    html! {
        @match outcome {
            Some(Ok(text)) => p.message.ok role="status" #outcome { (text) }
            Some(Err(text)) => p.message.bad role="status" #outcome { (text) }
            None => {}
        }
    }
}

/// 200 for a done action, 400 for one refused.
pub(crate) fn status_of(outcome: &Outcome) -> StatusCode {
    if outcome.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    }
}

// --- login, setup, logout ---------------------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    username: String,
    password: String,
}

fn login_form(problem: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        "",
        html! {
            @if let Some(problem) = problem { p.message.bad role="alert" { (problem) } }
            form.stack method="post" action="/login" {
                label { "User name" input name="username" autocomplete="username" required autofocus; }
                label { "Password" input name="password" type="password" autocomplete="current-password" required; }
                button type="submit" { "Log in" }
            }
        },
    )
}

pub(crate) async fn login_page(State(app): State<Arc<App>>) -> Response {
    if app.setup_pending() && app.accounts.current().is_empty() {
        return Redirect::to("/setup").into_response();
    }
    login_form(None).into_response()
}

pub(crate) async fn login(
    State(app): State<Arc<App>>,
    Extension(Peer(peer)): Extension<Peer>,
    Form(form): Form<LoginForm>,
) -> Response {
    if let Err(wait) = app.throttle.check(peer.ip()) {
        return too_many(wait);
    }
    let users = app.accounts.current();
    let Ok(_permit) = app.verifications.clone().acquire_owned().await else {
        return refused(StatusCode::SERVICE_UNAVAILABLE, "The gateway is stopping.");
    };
    let name = form.username.clone();
    let role = tokio::task::spawn_blocking(move || users.verify(&name, form.password.as_bytes()))
        .await
        .ok()
        .flatten();
    let Some(role) = role else {
        app.throttle.failed(peer.ip());
        tracing::info!(%peer, "Web UI login refused: wrong user name or password");
        return (
            StatusCode::UNAUTHORIZED,
            login_form(Some("Wrong user name or password.")),
        )
            .into_response();
    };
    app.throttle.succeeded(peer.ip());
    tracing::info!(%peer, user = %form.username, "Web UI login");
    let token = app.sessions.start(&form.username, role);
    logged_in(&token, app.session_max)
}

fn logged_in(token: &str, max: Duration) -> Response {
    (
        [(header::SET_COOKIE, cookie(token, max))],
        Redirect::to("/"),
    )
        .into_response()
}

fn too_many(wait: Duration) -> Response {
    let seconds = wait.as_secs().max(1);
    let mut response = refused(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("Too many failed attempts: try again in {seconds} s."),
    );
    if let Ok(value) = seconds.to_string().parse() {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

#[derive(Deserialize)]
pub(crate) struct SetupForm {
    token: String,
    username: String,
    password: String,
    confirm: String,
}

fn setup_form(problem: Option<&str>) -> Markup {
    layout(
        "First admin",
        None,
        "",
        html! {
            p { "No account exists yet. The one-time setup token is in the gateway's log ("
                code { "journalctl -u fieldlink | grep 'setup token'" } ")." }
            @if let Some(problem) = problem { p.message.bad role="alert" { (problem) } }
            form.stack method="post" action="/setup" {
                label { "Setup token" input name="token" autocomplete="off" required autofocus; }
                label { "Admin user name" input name="username" autocomplete="username" required; }
                label { "Password (at least " (MIN_PASSWORD) " characters)"
                    input name="password" type="password" autocomplete="new-password" required; }
                label { "Password again" input name="confirm" type="password" autocomplete="new-password" required; }
                button type="submit" { "Create the admin" }
            }
        },
    )
}

pub(crate) async fn setup_page(State(app): State<Arc<App>>) -> Response {
    if !app.setup_pending() || !app.accounts.current().is_empty() {
        return Redirect::to("/login").into_response();
    }
    setup_form(None).into_response()
}

pub(crate) async fn setup(
    State(app): State<Arc<App>>,
    Extension(Peer(peer)): Extension<Peer>,
    Form(form): Form<SetupForm>,
) -> Response {
    if !app.accounts.current().is_empty() {
        return refused(StatusCode::FORBIDDEN, "An account exists already: log in.");
    }
    if let Err(wait) = app.throttle.check(peer.ip()) {
        return too_many(wait);
    }
    if let Some(problem) = password_problem(&form.password, &form.confirm) {
        return (StatusCode::BAD_REQUEST, setup_form(Some(problem))).into_response();
    }
    let Some(token) = app.claim_setup_token(form.token.trim()) else {
        app.throttle.failed(peer.ip());
        tracing::warn!(%peer, "Web UI setup refused: wrong or used setup token");
        return (
            StatusCode::FORBIDDEN,
            setup_form(Some("This is not the setup token, or it was used already.")),
        )
            .into_response();
    };
    let path = app.accounts.path().to_owned();
    let name = form.username.clone();
    let made = tokio::task::spawn_blocking(move || {
        users::set_user(&path, &name, Role::Admin, form.password.as_bytes())
    })
    .await;
    match made {
        Ok(Ok(())) => {
            tracing::info!(%peer, user = %form.username, "Web UI: first admin made with the setup token");
            let token = app.sessions.start(&form.username, Role::Admin);
            logged_in(&token, app.session_max)
        }
        Ok(Err(e)) => {
            app.return_setup_token(token);
            (StatusCode::BAD_REQUEST, setup_form(Some(&e.to_string()))).into_response()
        }
        Err(_) => {
            app.return_setup_token(token);
            refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The account could not be made.",
            )
        }
    }
}

fn password_problem(password: &str, confirm: &str) -> Option<&'static str> {
    if password.chars().count() < MIN_PASSWORD {
        Some("The password is too short: give at least 10 characters.")
    } else if password != confirm {
        Some("The two passwords differ.")
    } else {
        None
    }
}

pub(crate) async fn logout(
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Some(token) = crate::sessions::token_in(&headers) {
        app.sessions.end(token);
    }
    (
        [(header::SET_COOKIE, cleared_cookie())],
        Redirect::to("/login"),
    )
        .into_response()
}

// --- dashboard -----------------------------------------------------------------------------

pub(crate) async fn dashboard(
    State(app): State<Arc<App>>,
    Extension(session): Extension<Session>,
) -> Markup {
    let status = app.gateway.status().borrow().clone();
    layout(
        "Dashboard",
        Some(&session),
        "/",
        html! {
            p.muted { "Updates by itself: " span #live-state { "loading…" } }
            div #live { (crate::pages::panels::render(status.as_deref())) }
        },
    )
}

/// The dashboard's panels again whenever the status changes, until the page closes or the
/// gateway stops.
pub(crate) async fn events(
    State(app): State<Arc<App>>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let start = (app.gateway.status(), app.shutdown.clone(), true);
    let stream = futures_util::stream::unfold(start, |(mut feed, stop, first)| async move {
        if !first {
            tokio::select! {
                changed = feed.changed() => changed.ok()?,
                () = stop.cancelled() => return None,
            }
        }
        let html = panels::render(feed.borrow_and_update().as_deref()).into_string();
        let event = Event::default().event("panels").data(html);
        Some((Ok(event), (feed, stop, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

pub(crate) mod certs;
pub(crate) mod config;
pub(crate) mod panels;

// --- queue ---------------------------------------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct PurgeForm {
    #[serde(default)]
    confirm: String,
}

pub(crate) async fn queue_page(
    State(app): State<Arc<App>>,
    Extension(session): Extension<Session>,
) -> Markup {
    queue_view(&app, &session, None).await
}

async fn queue_view(app: &App, session: &Session, outcome: Option<&Outcome>) -> Markup {
    let detail = app.gateway.queue().await;
    layout(
        "Queue",
        Some(session),
        "/queue",
        html! {
            (banner(outcome))
            @match detail {
                Err(e) => p.message.bad { "The queue cannot be read: " (e) }
                Ok(q) => {
                    div.grid {
                        section.panel {
                            h2 { "Held" }
                            table {
                                tr { th { "Messages" } td.num #queue-messages { (q.messages) } }
                                tr { th { "Bytes" } td.num { (panels::bytes(q.bytes)) } }
                                tr { th { "Sent, awaiting the cloud's acknowledgement" } td.num { (q.leased) } }
                            }
                        }
                        section.panel {
                            h2 { "Per stream" }
                            table {
                                tr { th { "Stream (route)" } th { "Messages" } th { "Bytes" } }
                                @for s in &q.streams {
                                    tr { td { (s.name) } td.num { (s.messages) } td.num { (panels::bytes(s.bytes)) } }
                                }
                            }
                        }
                    }
                    section.panel {
                        h2 { "Next to go" }
                        @if q.next.is_empty() { p.muted { "Nothing queued." } } @else {
                            table {
                                tr { th { "Id" } th { "Stream" } th { "Topic" } th { "Size" } th { "Waiting" } }
                                @for m in &q.next {
                                    tr { td.num { (m.id) } td { (m.stream) } td { code { (m.topic) } }
                                         td.num { (m.bytes) " B" } td.num { (panels::age(m.age_s)) } }
                                }
                            }
                        }
                    }
                    @if session.role == Role::Admin {
                        section.panel {
                            h2 { "Purge" }
                            p { "Deletes every queued message: they will never reach the cloud. Type "
                                code { "purge" } " to confirm." }
                            form.stack method="post" action="/queue/purge" {
                                input type="hidden" name="csrf" value=(session.csrf);
                                label { "Confirmation" input name="confirm" autocomplete="off" required; }
                                button.danger type="submit" { "Delete every queued message" }
                            }
                        }
                    }
                }
            }
        },
    )
}

pub(crate) async fn purge(
    State(app): State<Arc<App>>,
    Extension(session): Extension<Session>,
    Form(form): Form<PurgeForm>,
) -> Response {
    let outcome = if form.confirm.trim() != "purge" {
        Err("Nothing deleted: type purge to confirm.".to_owned())
    } else {
        match app.gateway.purge_queue().await {
            Ok(n) => {
                tracing::warn!(user = %session.user, messages = n, "Queue purged from the web UI");
                Ok(format!("Deleted {n} queued messages."))
            }
            Err(e) => Err(format!("The queue could not be purged: {e}")),
        }
    };
    let page = queue_view(&app, &session, Some(&outcome)).await;
    (status_of(&outcome), page).into_response()
}

// --- certificates --------------------------------------------------------------------------

pub(crate) async fn certificates(
    State(app): State<Arc<App>>,
    Extension(session): Extension<Session>,
) -> Markup {
    certificates_view(&app, &session, None)
}

pub(crate) fn certificates_view(app: &App, session: &Session, outcome: Option<&Outcome>) -> Markup {
    let status = app.gateway.status().borrow().clone();
    let now_s = panels::now_s();
    let apply = app
        .gateway
        .site_config()
        .map(|s| s.apply)
        .unwrap_or_default();
    layout(
        "Certificates",
        Some(session),
        "/certificates",
        html! {
            (banner(outcome))
            (config::apply_state(&apply))
            section.panel {
                h2 { "This web UI" }
                table {
                    tr { th { "Subject" } th { "Issuer" } th { "Not after" } th { "Days left" } }
                    @for cert in &app.chain {
                        @let end = fieldlink_core::x509::not_after(cert);
                        tr {
                            td { (fieldlink_core::x509::subject_text(cert).unwrap_or_default()) }
                            td { (fieldlink_core::x509::issuer_text(cert).unwrap_or_default()) }
                            td { (end.map(panels::utc_date).unwrap_or_default()) }
                            td.num { (panels::days_badge(end.map(|e| (e - now_s).div_euclid(86_400)))) }
                        }
                    }
                }
                p { "SHA-256 fingerprint: " code #fingerprint { (app.fingerprint) } }
            }
            section.panel {
                h2 { "Uplink" }
                @match status.as_ref().and_then(|s| s.uplink.as_ref()) {
                    None => p.muted { "No uplink configured." }
                    Some(u) if u.certificates.is_empty() => p.muted { "The uplink presents and pins no certificate of ours." }
                    Some(u) => table {
                        tr { th { "Certificate" } th { "Days left" } }
                        @for (name, days) in &u.certificates {
                            tr { td { (name) } td.num { (panels::days_badge(Some(*days))) } }
                        }
                    }
                }
                @if session.role == Role::Admin && status.as_ref().is_some_and(|s| s.uplink.is_some()) {
                    h2 { "Renew the uplink's certificate" }
                    p { a #uplink-csr href="/certificates/uplink.csr" { "Download a certificate request" }
                        " (signed by the uplink's key, its subject the uplink's client id) for your CA; then paste
                         the certificate it issues. It is used only if it matches the key, chains to "
                        code { "[keys] ca_file" } " and is valid now; the gateway then restarts on it and goes
                         back to the previous certificate if the uplink does not connect again." }
                    form.stack method="post" action="/certificates/uplink" {
                        input type="hidden" name="csrf" value=(session.csrf);
                        label { "Certificate (PEM, the uplink's first, then intermediates)"
                            textarea name="pem" rows="8" spellcheck="false" {} }
                        button type="submit" { "Use this certificate" }
                    }
                }
            }
        },
    )
}

// --- users ---------------------------------------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct UserForm {
    name: String,
    role: String,
    password: String,
    #[serde(default)]
    confirm: String,
}

#[derive(Deserialize)]
pub(crate) struct RemoveForm {
    name: String,
}

pub(crate) async fn users_page(
    State(app): State<Arc<App>>,
    Extension(session): Extension<Session>,
) -> Markup {
    users_view(&app, &session, None)
}

fn users_view(app: &App, session: &Session, outcome: Option<&Outcome>) -> Markup {
    let users = app.accounts.current();
    layout(
        "Users",
        Some(session),
        "/users",
        html! {
            (banner(outcome))
            section.panel {
                h2 { "Accounts" }
                table {
                    tr { th { "Name" } th { "Role" } th {} }
                    @for (name, role) in users.list() {
                        tr {
                            td { (name) } td { (role.as_str()) }
                            td {
                                @if name != session.user {
                                    form method="post" action="/users/remove" {
                                        input type="hidden" name="csrf" value=(session.csrf);
                                        input type="hidden" name="name" value=(name);
                                        button.danger type="submit" { "Remove" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section.panel {
                h2 { "Add an account or set its password" }
                form.stack method="post" action="/users" {
                    input type="hidden" name="csrf" value=(session.csrf);
                    label { "Name" input name="name" required autocomplete="off"; }
                    label { "Role" select name="role" { option value="viewer" { "viewer (sees, changes nothing)" } option value="admin" { "admin" } } }
                    label { "Password (at least " (MIN_PASSWORD) " characters)" input name="password" type="password" autocomplete="new-password" required; }
                    label { "Password again" input name="confirm" type="password" autocomplete="new-password" required; }
                    button type="submit" { "Save" }
                }
            }
        },
    )
}

pub(crate) async fn add_user(
    State(app): State<Arc<App>>,
    Extension(session): Extension<Session>,
    Form(form): Form<UserForm>,
) -> Response {
    let result = save_user(
        &app,
        &form.name,
        &form.role,
        &form.password,
        Some(&form.confirm),
    )
    .await;
    respond_users(&app, &session, result)
}

pub(crate) async fn remove_user(
    State(app): State<Arc<App>>,
    Extension(session): Extension<Session>,
    Form(form): Form<RemoveForm>,
) -> Response {
    let result = delete_user(&app, &session, &form.name).await;
    respond_users(&app, &session, result)
}

fn respond_users(app: &App, session: &Session, outcome: Outcome) -> Response {
    (
        status_of(&outcome),
        users_view(app, session, Some(&outcome)),
    )
        .into_response()
}

/// Adds `name` or sets its role and password; its other sessions end. Shared with the API.
pub(crate) async fn save_user(
    app: &App,
    name: &str,
    role: &str,
    password: &str,
    confirm: Option<&str>,
) -> Result<String, String> {
    let role = Role::parse(role).ok_or("The role is neither admin nor viewer.")?;
    if let Some(problem) = password_problem(password, confirm.unwrap_or(password)) {
        return Err(problem.into());
    }
    let path = app.accounts.path().to_owned();
    let (owned_name, password) = (name.to_owned(), password.to_owned());
    tokio::task::spawn_blocking(move || {
        users::set_user(&path, &owned_name, role, password.as_bytes())
    })
    .await
    .map_err(|_| "The account could not be saved.".to_owned())?
    .map_err(|e| e.to_string())?;
    app.sessions.end_user(name);
    tracing::info!(user = name, role = role.as_str(), "Web UI account saved");
    Ok(format!("Saved {name} ({}).", role.as_str()))
}

/// Removes `name` (not oneself) and ends its sessions. Shared with the API.
pub(crate) async fn delete_user(
    app: &App,
    session: &Session,
    name: &str,
) -> Result<String, String> {
    if name == session.user {
        return Err("You cannot remove your own account.".into());
    }
    users::remove_user(app.accounts.path(), name).map_err(|e| e.to_string())?;
    app.sessions.end_user(name);
    tracing::info!(user = name, by = %session.user, "Web UI account removed");
    Ok(format!("Removed {name}."))
}
