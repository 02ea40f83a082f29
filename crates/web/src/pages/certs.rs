//! The uplink's certificate from the Certificates page and the API (admins): a certificate
//! request to download (signed by the uplink's key, which never leaves the gateway or its
//! token), and a new certificate to upload, checked, then applied through the configuration's
//! restart, health check and rollback.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Form, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;

use crate::app::App;
use crate::editing::ApplyRefusal;
use crate::sessions::Session;

/// `GET /certificates/uplink.csr`: the request as a file to hand to the CA.
pub(crate) async fn csr_download(State(app): State<Arc<App>>) -> Response {
    match app.gateway.uplink_csr() {
        Ok(pem) => (
            [
                (header::CONTENT_TYPE, "application/pkcs10"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"uplink.csr\"",
                ),
            ],
            pem,
        )
            .into_response(),
        Err(e) => crate::pages::refused(StatusCode::BAD_REQUEST, &format!("No request: {e}")),
    }
}

#[derive(Deserialize)]
pub(crate) struct UploadForm {
    #[serde(default)]
    pem: String,
}

/// `POST /certificates/uplink`: on to the page, which follows the apply.
pub(crate) async fn upload(
    State(app): State<Arc<App>>,
    Extension(session): Extension<Session>,
    Form(form): Form<UploadForm>,
) -> Response {
    let outcome = match app.gateway.upload_uplink_cert(&form.pem, &session.user) {
        Ok(()) => return Redirect::to("/certificates").into_response(),
        Err(ApplyRefusal::Busy) => Err(crate::pages::config::BUSY.to_owned()),
        Err(ApplyRefusal::Refused(why)) => Err(format!("Not used: {why}")),
        Err(ApplyRefusal::Invalid(_)) => Err("Not used: the configuration has mistakes.".into()),
    };
    let status = if matches!(&outcome, Err(e) if e == crate::pages::config::BUSY) {
        StatusCode::CONFLICT
    } else {
        StatusCode::BAD_REQUEST
    };
    (
        status,
        crate::pages::certificates_view(&app, &session, Some(&outcome)),
    )
        .into_response()
}

/// `GET /api/v1/certificates/uplink/csr`: `{"csr": PEM}`.
pub(crate) async fn api_csr(State(app): State<Arc<App>>) -> Response {
    match app.gateway.uplink_csr() {
        Ok(pem) => Json(json!({ "csr": pem })).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))).into_response(),
    }
}

#[derive(Deserialize)]
pub(crate) struct ApiUpload {
    pem: String,
}

/// `POST /api/v1/certificates/uplink` `{"pem": …}`: 202 once applying (follow it with
/// `GET /api/v1/config`), 400 with why it is refused, 409 while another apply runs.
pub(crate) async fn api_upload(
    State(app): State<Arc<App>>,
    Extension(session): Extension<Session>,
    Json(body): Json<ApiUpload>,
) -> Response {
    let error =
        |status: StatusCode, text: &str| (status, Json(json!({ "error": text }))).into_response();
    match app.gateway.upload_uplink_cert(&body.pem, &session.user) {
        Ok(()) => crate::pages::config::accepted(&app),
        Err(ApplyRefusal::Busy) => error(StatusCode::CONFLICT, crate::pages::config::BUSY),
        Err(ApplyRefusal::Refused(why)) => error(StatusCode::BAD_REQUEST, &why),
        Err(ApplyRefusal::Invalid(_)) => {
            error(StatusCode::BAD_REQUEST, "the configuration has mistakes")
        }
    }
}
