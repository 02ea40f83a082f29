//! The configuration page (`/config`) and its JSON API (`/api/v1/config`): the site layer's
//! TOML in a text area with line numbers; "Check" shows every mistake under its line and in a
//! list, and the settings the text would change; "Apply" (admins) restarts the gateway on it
//! with automatic rollback; kept versions can be restored through the same path.
//!
//! Checking changes nothing, so viewers may check too; applying and restoring are admins'.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Form, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::json;

use crate::app::App;
use crate::editing::{ApplyRefusal, ApplyState, Change, Checked, Problem, SiteConfig};
use crate::pages::{Outcome, banner, layout, panels};
use crate::sessions::Session;
use crate::users::Role;

#[derive(Deserialize)]
pub(crate) struct TextForm {
    #[serde(default)]
    text: String,
}

#[derive(Deserialize)]
pub(crate) struct RestoreForm {
    number: u64,
}

/// What the page shows besides the stored configuration.
#[derive(Default)]
struct Shown<'a> {
    /// The text in the editor, when it is not the stored one (a checked proposal).
    text: Option<&'a str>,
    /// The check of that text.
    checked: Option<&'a Checked>,
    /// The answer to an action.
    outcome: Option<&'a Outcome>,
}

pub(crate) async fn page(
    State(app): State<Arc<App>>,
    Extension(session): Extension<Session>,
) -> Response {
    view(&app, &session, Shown::default()).into_response()
}

pub(crate) async fn check(
    State(app): State<Arc<App>>,
    Extension(session): Extension<Session>,
    Form(form): Form<TextForm>,
) -> Response {
    let text = normalise(&form.text);
    match app.gateway.check_config(&text) {
        Ok(checked) => {
            let status = if checked.is_valid() {
                StatusCode::OK
            } else {
                StatusCode::BAD_REQUEST
            };
            let shown = Shown {
                text: Some(&text),
                checked: Some(&checked),
                outcome: None,
            };
            (status, view(&app, &session, shown)).into_response()
        }
        Err(e) => answer(&app, &session, &text, Err(e)),
    }
}

pub(crate) async fn apply(
    State(app): State<Arc<App>>,
    Extension(session): Extension<Session>,
    Form(form): Form<TextForm>,
) -> Response {
    let text = normalise(&form.text);
    apply_from_page(&app, &session, &text)
}

pub(crate) async fn restore(
    State(app): State<Arc<App>>,
    Extension(session): Extension<Session>,
    Form(form): Form<RestoreForm>,
) -> Response {
    match app.gateway.kept_config(form.number) {
        Ok(text) => apply_from_page(&app, &session, &text),
        Err(e) => answer(&app, &session, "", Err(e)),
    }
}

/// Starts the apply and sends the browser to the page, which follows it; a refusal is shown
/// with the text as it was.
fn apply_from_page(app: &App, session: &Session, text: &str) -> Response {
    match app.gateway.apply_config(text, &session.user) {
        Ok(()) => Redirect::to("/config").into_response(),
        Err(ApplyRefusal::Invalid(checked)) => {
            let outcome = Err("Not applied: the configuration has mistakes (below).".to_owned());
            let shown = Shown {
                text: Some(text),
                checked: Some(&checked),
                outcome: Some(&outcome),
            };
            (StatusCode::BAD_REQUEST, view(app, session, shown)).into_response()
        }
        Err(ApplyRefusal::Busy) => {
            let outcome = Err(BUSY.to_owned());
            let shown = Shown {
                text: Some(text),
                outcome: Some(&outcome),
                ..Shown::default()
            };
            (StatusCode::CONFLICT, view(app, session, shown)).into_response()
        }
        Err(ApplyRefusal::Refused(why)) => {
            answer(app, session, text, Err(format!("Not applied: {why}")))
        }
    }
}

pub(crate) const BUSY: &str =
    "Another configuration is being applied: wait for its health check to end.";

fn answer(app: &App, session: &Session, text: &str, outcome: Outcome) -> Response {
    let shown = Shown {
        text: Some(text),
        outcome: Some(&outcome),
        ..Shown::default()
    };
    (crate::pages::status_of(&outcome), view(app, session, shown)).into_response()
}

/// Browsers send a text area's lines ended by CR LF; the file keeps LF.
fn normalise(text: &str) -> String {
    text.replace("\r\n", "\n")
}

fn view(app: &App, session: &Session, shown: Shown<'_>) -> Markup {
    let site = app.gateway.site_config();
    layout(
        "Configuration",
        Some(session),
        "/config",
        html! {
            (banner(shown.outcome))
            @match &site {
                Err(e) => p.message.bad { (e) }
                Ok(site) => {
                    (apply_state(&site.apply))
                    (editor(session, site, shown.text.unwrap_or(&site.text), shown.checked))
                    @if let Some(checked) = shown.checked { (check_result(checked)) }
                    (history(session, site))
                }
            }
        },
    )
}

pub(crate) fn apply_state(state: &ApplyState) -> Markup {
    html! {
        @match state {
            ApplyState::Idle => {}
            ApplyState::Applying { by, check_s, .. } => {
                // `data-applying`: the page's script reloads it until the apply has ended.
                p.message #apply-state data-applying="1" role="status" {
                    "Applying the configuration " (by) " saved: the gateway runs on it and is
                     being checked for " (check_s) " s. This page follows by itself."
                }
            }
            ApplyState::Kept { by, ended_s, summary } => {
                p.message.ok #apply-state role="status" {
                    "Applied and kept (" (by) ", " (panels::utc_date(*ended_s as i64)) "): " (summary)
                }
            }
            ApplyState::RolledBack { by, ended_s, why } => {
                p.message.bad #apply-state role="status" {
                    "Rolled back (" (by) ", " (panels::utc_date(*ended_s as i64)) "): " (why)
                    " The gateway runs on the previous configuration again."
                }
            }
        }
    }
}

fn editor(session: &Session, site: &SiteConfig, text: &str, checked: Option<&Checked>) -> Markup {
    let lines = text.split('\n').count().max(1);
    let numbers: String = (1..=lines).map(|n| format!("{n}\n")).collect();
    let problems = at_lines(checked);
    html! {
        section.panel {
            h2 { "Site configuration" }
            p.muted { "Read on top of the shipped file; saved in " code { (site.path) }
                ". Check shows every mistake at its line. Apply restarts the gateway on it (this
                 page keeps running) and keeps it only if the gateway stays healthy for "
                (site.check_s) " s; otherwise the previous configuration returns. Settings of
                 the web UI itself ([web] bind, port, certificate) are changed with "
                code { "fieldlink config set" } " and a service restart." }
            form method="post" action="/config/check" {
                input type="hidden" name="csrf" value=(session.csrf);
                div.editor {
                    pre.gutter #gutter aria-hidden="true" { (numbers) }
                    textarea #config-text name="text" rows=(lines + 1) wrap="off"
                        spellcheck="false" autocomplete="off" { (text) }
                }
                @if !problems.is_empty() {
                    (annotated(text, &problems))
                }
                div.actions {
                    button type="submit" formaction="/config/check" { "Check" }
                    @if session.role == Role::Admin {
                        button.danger type="submit" formaction="/config/apply" { "Apply" }
                    }
                }
            }
        }
    }
}

/// The proposal's own mistakes by line.
fn at_lines(checked: Option<&Checked>) -> BTreeMap<usize, Vec<&Problem>> {
    let mut by_line: BTreeMap<usize, Vec<&Problem>> = BTreeMap::new();
    for problem in checked.map(|c| c.problems.as_slice()).unwrap_or_default() {
        if let (true, Some(line)) = (problem.in_proposal, problem.line) {
            by_line.entry(line).or_default().push(problem);
        }
    }
    by_line
}

/// The checked text line by line, each mistake right under its line.
fn annotated(text: &str, problems: &BTreeMap<usize, Vec<&Problem>>) -> Markup {
    html! {
        table.listing #annotated {
            @for (i, line) in text.split('\n').enumerate() {
                @let n = i + 1;
                tr class=[problems.contains_key(&n).then_some("bad-line")] {
                    td.num { (n) } td { code { (line) } }
                }
                @for problem in problems.get(&n).map(Vec::as_slice).unwrap_or_default() {
                    tr.problem data-line=(n) {
                        td {} td { "↑ " (describe(problem)) }
                    }
                }
            }
        }
    }
}

fn describe(problem: &Problem) -> String {
    if problem.key.is_empty() {
        return problem.text.clone();
    }
    // The text starts with "= value: " when it shows the value written.
    let sep = if problem.text.starts_with("= ") {
        " "
    } else {
        ": "
    };
    let what = format!("{}{sep}{}", problem.key, problem.text);
    match problem.column {
        Some(column) => format!("column {column}, {what}"),
        None => what,
    }
}

fn check_result(checked: &Checked) -> Markup {
    html! {
        section.panel #check {
            @if checked.is_valid() {
                p.message.ok #check-result role="status" {
                    "Valid. " (checked.changes.len()) " setting" (if checked.changes.len() == 1 { "" } else { "s" })
                    " would change against the running configuration."
                }
                @if !checked.changes.is_empty() {
                    table #changes {
                        tr { th { "Setting" } th { "Running" } th { "Proposed" } }
                        @for change in &checked.changes { (change_row(change)) }
                    }
                }
            } @else {
                p.message.bad #check-result role="status" {
                    (checked.problems.len()) " problem" (if checked.problems.len() == 1 { "" } else { "s" })
                    ": nothing can be applied until every one is fixed."
                }
                ol #problems {
                    @for problem in &checked.problems {
                        li {
                            code { (problem.file) @if let Some(line) = problem.line { ":" (line) } }
                            " " (describe(problem))
                        }
                    }
                }
            }
        }
    }
}

fn change_row(change: &Change) -> Markup {
    html! {
        tr {
            td { code { (change.key) } }
            td { @match &change.old { Some(v) => code { (v) }, None => span.muted { "(default)" } } }
            td { @match &change.new { Some(v) => code { (v) }, None => span.muted { "(default)" } } }
        }
    }
}

fn history(session: &Session, site: &SiteConfig) -> Markup {
    let now = panels::now_s();
    html! {
        section.panel {
            h2 { "Earlier versions" }
            @if site.history.is_empty() { p.muted { "None kept yet." } } @else {
                table #history {
                    tr { th { "Version" } th { "Replaced" } th {} }
                    @for kept in &site.history {
                        tr {
                            td.num { (kept.number) }
                            td { (panels::age((now - kept.replaced_s as i64).max(0) as u64)) " ago" }
                            td {
                                @if session.role == Role::Admin {
                                    form method="post" action="/config/restore" {
                                        input type="hidden" name="csrf" value=(session.csrf);
                                        input type="hidden" name="number" value=(kept.number);
                                        button type="submit" { "Restore (apply with rollback)" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

// --- JSON API --------------------------------------------------------------------------------

fn problem_json(status: StatusCode, text: impl Into<String>) -> Response {
    (status, Json(json!({ "error": text.into() }))).into_response()
}

/// `GET /api/v1/config`: the site layer, its kept versions, the last apply.
pub(crate) async fn api_get(State(app): State<Arc<App>>) -> Response {
    match app.gateway.site_config() {
        Ok(site) => Json(site).into_response(),
        Err(e) => problem_json(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

#[derive(Deserialize)]
pub(crate) struct ApiText {
    text: String,
}

/// `POST /api/v1/config/check` `{"text": …}`: `valid`, `problems`, `changes`.
pub(crate) async fn api_check(State(app): State<Arc<App>>, Json(body): Json<ApiText>) -> Response {
    match app.gateway.check_config(&normalise(&body.text)) {
        Ok(checked) => Json(json!({
            "valid": checked.is_valid(),
            "problems": checked.problems,
            "changes": checked.changes,
        }))
        .into_response(),
        Err(e) => problem_json(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

#[derive(Deserialize)]
pub(crate) struct ApiApply {
    text: Option<String>,
    restore: Option<u64>,
}

/// `POST /api/v1/config/apply` `{"text": …}` or `{"restore": N}`: 202 when the apply started
/// (follow it with `GET /api/v1/config`), 400 with the problems, 409 while another runs.
pub(crate) async fn api_apply(
    State(app): State<Arc<App>>,
    Extension(session): Extension<Session>,
    Json(body): Json<ApiApply>,
) -> Response {
    let text = match (body.text, body.restore) {
        (Some(text), None) => normalise(&text),
        (None, Some(number)) => match app.gateway.kept_config(number) {
            Ok(text) => text,
            Err(e) => return problem_json(StatusCode::NOT_FOUND, e),
        },
        _ => {
            return problem_json(
                StatusCode::BAD_REQUEST,
                "send {\"text\": \"…\"} or {\"restore\": N}",
            );
        }
    };
    match app.gateway.apply_config(&text, &session.user) {
        Ok(()) => accepted(&app),
        Err(ApplyRefusal::Busy) => problem_json(StatusCode::CONFLICT, BUSY),
        Err(ApplyRefusal::Invalid(checked)) => (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "error": "the configuration has mistakes",
                "problems": checked.problems,
            })),
        )
            .into_response(),
        Err(ApplyRefusal::Refused(why)) => problem_json(StatusCode::BAD_REQUEST, why),
    }
}

/// `202` with the apply just started, to follow with `GET /api/v1/config`.
pub(crate) fn accepted(app: &App) -> Response {
    let apply = app
        .gateway
        .site_config()
        .map(|s| s.apply)
        .unwrap_or_default();
    (StatusCode::ACCEPTED, Json(json!({ "apply": apply }))).into_response()
}
