//! The devices page: each field device's status, its points' last values with quality and
//! age, its errors by kind; and writing a writable point (typed, range-checked, confirmed, the
//! device's answer shown).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use crate::app::App;
use crate::pages::{Outcome, banner, layout, panels, status_of};
use crate::sessions::Session;
use crate::users::Role;

/// A field device as the page shows it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct DeviceView {
    /// Its name in `[[devices]]`.
    pub name: String,
    /// `Some(true)` online, `Some(false)` offline, `None` not known yet.
    pub online: Option<bool>,
    /// Its points, in configuration order.
    pub points: Vec<PointView>,
    /// Errors since start by kind (`timeout`, `exception`, `crc`, …).
    pub errors: Vec<(String, u64)>,
}

/// One point of a device.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PointView {
    /// Its name.
    pub name: String,
    /// Its unit, if any.
    pub unit: Option<String>,
    /// Whether it takes writes, and what they may be.
    pub write: Option<Writable>,
    /// The last value read (JSON as published), if any yet.
    pub value: Option<serde_json::Value>,
    /// `good` or `bad`.
    pub quality: Option<String>,
    /// Seconds since that reading.
    pub age_s: Option<u64>,
}

/// What a write to a point may be.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Writable {
    /// A coil or a boolean register: true or false; else a number.
    pub boolean: bool,
    /// The lowest value allowed, in engineering units.
    pub min: Option<f64>,
    /// The highest value allowed.
    pub max: Option<f64>,
}

/// A value to write, typed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WriteValue {
    /// For a coil or boolean point.
    Bool(bool),
    /// For a numeric point.
    Number(f64),
}

impl WriteValue {
    /// `value` (as typed in the form) for `point`, or why it cannot be written.
    pub fn parse(text: &str, write: &Writable) -> Result<Self, String> {
        let text = text.trim();
        if write.boolean {
            return match text {
                "true" | "1" | "on" => Ok(Self::Bool(true)),
                "false" | "0" | "off" => Ok(Self::Bool(false)),
                _ => Err(format!("{text:?} is not true or false")),
            };
        }
        let number: f64 = text
            .parse()
            .ok()
            .filter(|n: &f64| n.is_finite())
            .ok_or_else(|| format!("{text:?} is not a number"))?;
        if write.min.is_some_and(|min| number < min) || write.max.is_some_and(|max| number > max) {
            return Err(format!(
                "{number} is outside the allowed range {} to {}",
                write.min.map_or("-∞".into(), |m| m.to_string()),
                write.max.map_or("+∞".into(), |m| m.to_string())
            ));
        }
        Ok(Self::Number(number))
    }

    /// As JSON, for the command.
    pub fn to_json(self) -> serde_json::Value {
        match self {
            Self::Bool(b) => b.into(),
            Self::Number(n) => {
                serde_json::Number::from_f64(n).map_or(serde_json::Value::Null, Into::into)
            }
        }
    }
}

fn find<'a>(devices: &'a [DeviceView], device: &str, point: &str) -> Option<&'a PointView> {
    devices
        .iter()
        .find(|d| d.name == device)?
        .points
        .iter()
        .find(|p| p.name == point)
}

/// Checks and writes; `Ok` with the device's answer in words, `Err` with why not.
async fn write(
    app: &App,
    user: &str,
    device: &str,
    point: &str,
    text: &str,
) -> Result<String, String> {
    let devices = app.gateway.devices();
    let write = find(&devices, device, point)
        .ok_or_else(|| format!("there is no point {point:?} on a device {device:?}"))?
        .write
        .ok_or_else(|| format!("{device}/{point} does not take writes"))?;
    let value = WriteValue::parse(text, &write)?;
    tracing::info!(user, device, point, value = %value.to_json(), "Device write from the web UI");
    app.gateway.write_point(device, point, value).await
}

pub(crate) async fn page(
    State(app): State<Arc<App>>,
    Extension(session): Extension<Session>,
) -> Markup {
    view(&app, &session, None)
}

fn view(app: &App, session: &Session, outcome: Option<&Outcome>) -> Markup {
    let devices = app.gateway.devices();
    layout(
        "Devices",
        Some(session),
        "/devices",
        html! {
            (banner(outcome))
            @if devices.is_empty() { p.muted { "No field devices are configured ([[devices]])." } }
            @for device in &devices {
                section.panel id=(format!("device-{}", device.name)) {
                    h2 { (device.name) " "
                        @match device.online {
                            Some(true) => span.badge.ok { "online" }
                            Some(false) => span.badge.bad { "offline" }
                            None => span.badge.muted { "no reading yet" }
                        }
                    }
                    table {
                        tr { th { "Point" } th { "Value" } th { "Quality" } th { "Age" } @if session.role == Role::Admin { th { "Write" } } }
                        @for point in &device.points {
                            tr {
                                td { (point.name) }
                                td.num data-point=(point.name) {
                                    (point.value.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "—".into()))
                                    @if let Some(unit) = &point.unit { " " (unit) }
                                }
                                td class=(match point.quality.as_deref() { Some("good") => "ok", Some(_) => "bad", None => "muted" }) {
                                    (point.quality.as_deref().unwrap_or("—"))
                                }
                                td.num { (point.age_s.map(panels::age).unwrap_or_else(|| "—".into())) }
                                @if session.role == Role::Admin {
                                    td { @if let Some(w) = point.write { (write_form(session, &device.name, &point.name, &w)) } }
                                }
                            }
                        }
                    }
                    @if !device.errors.is_empty() {
                        p.muted { "Errors since start: "
                            @for (i, (kind, n)) in device.errors.iter().enumerate() {
                                @if i > 0 { ", " } (kind) " " (n)
                            }
                        }
                    }
                }
            }
        },
    )
}

fn write_form(session: &Session, device: &str, point: &str, write: &Writable) -> Markup {
    html! {
        form.write method="post" action="/devices/write" {
            input type="hidden" name="csrf" value=(session.csrf);
            input type="hidden" name="device" value=(device);
            input type="hidden" name="point" value=(point);
            @if write.boolean {
                select name="value" aria-label=(format!("New value of {point}")) { option value="true" { "true" } option value="false" { "false" } }
            } @else {
                input name="value" type="number" step="any" required aria-label=(format!("New value of {point}"))
                    min=[write.min] max=[write.max];
            }
            label.confirm { input type="checkbox" name="confirm" value="yes" required; " confirm" }
            button type="submit" { "Write" }
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct WriteForm {
    device: String,
    point: String,
    value: String,
    #[serde(default)]
    confirm: String,
}

pub(crate) async fn write_from_form(
    State(app): State<Arc<App>>,
    Extension(session): Extension<Session>,
    Form(form): Form<WriteForm>,
) -> Response {
    let outcome = if form.confirm != "yes" {
        Err("Nothing written: tick confirm to write.".to_owned())
    } else {
        write(&app, &session.user, &form.device, &form.point, &form.value)
            .await
            .map(|answer| format!("{}/{}: {answer}", form.device, form.point))
            .map_err(|why| format!("{}/{}: {why}", form.device, form.point))
    };
    (status_of(&outcome), view(&app, &session, Some(&outcome))).into_response()
}

pub(crate) async fn api_list(State(app): State<Arc<App>>) -> Response {
    Json(app.gateway.devices()).into_response()
}

#[derive(Deserialize)]
pub(crate) struct ApiWrite {
    value: serde_json::Value,
}

pub(crate) async fn api_write(
    State(app): State<Arc<App>>,
    Extension(session): Extension<Session>,
    Path((device, point)): Path<(String, String)>,
    Json(body): Json<ApiWrite>,
) -> Response {
    let text = match &body.value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match write(&app, &session.user, &device, &point, &text).await {
        Ok(answer) => Json(serde_json::json!({ "result": answer })).into_response(),
        Err(why) => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": why })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_typed_and_range_checked() {
        let number = Writable {
            boolean: false,
            min: Some(5.0),
            max: Some(30.0),
        };
        assert_eq!(
            WriteValue::parse(" 21.5 ", &number),
            Ok(WriteValue::Number(21.5))
        );
        assert!(
            WriteValue::parse("31", &number)
                .unwrap_err()
                .contains("outside")
        );
        assert!(
            WriteValue::parse("4.9", &number)
                .unwrap_err()
                .contains("outside")
        );
        assert!(
            WriteValue::parse("NaN", &number)
                .unwrap_err()
                .contains("not a number")
        );
        assert!(
            WriteValue::parse("warm", &number)
                .unwrap_err()
                .contains("not a number")
        );
        let coil = Writable {
            boolean: true,
            min: None,
            max: None,
        };
        assert_eq!(WriteValue::parse("true", &coil), Ok(WriteValue::Bool(true)));
        assert!(WriteValue::parse("2", &coil).is_err());
    }
}
