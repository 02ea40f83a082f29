//! Live data: the local broker's messages on a topic filter, streamed to the page as
//! server-sent events while it is open.
//!
//! The filter is checked as the broker checks a local client's SUBSCRIBE (the account's name
//! against `[[broker.acl]]`), so the UI shows no more than that account could subscribe to
//! with an MQTT client. What one page costs is bounded: [`MAX_STREAMS`] streams at once for the
//! whole UI, [`MAX_RATE`] messages a second to each (the rest are counted and said, not sent),
//! payloads cut at [`MAX_PAYLOAD`] bytes; the subscription ends with the page.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Extension, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use fieldlink_core::topic::TopicFilter;
use maud::html;
use serde::Deserialize;
use tokio::sync::OwnedSemaphorePermit;

use crate::app::App;
use crate::pages::layout;
use crate::sessions::Session;

/// Live streams open at once, all pages together.
pub(crate) const MAX_STREAMS: usize = 4;
/// Messages a second sent to one page.
pub(crate) const MAX_RATE: u32 = 20;
/// Bytes of a payload shown.
pub(crate) const MAX_PAYLOAD: usize = 1024;

#[derive(Deserialize)]
pub(crate) struct Filter {
    #[serde(default)]
    filter: String,
}

pub(crate) async fn page(
    Extension(session): Extension<Session>,
    Query(query): Query<Filter>,
) -> Response {
    let filter = query.filter.trim().to_owned();
    layout(
        "Live data",
        Some(&session),
        "/live",
        html! {
            form.stack method="get" action="/live" {
                label { "Topic filter (MQTT wildcards + and #)"
                    input name="filter" value=(filter) placeholder="site/#" required; }
                button type="submit" { "Watch" }
            }
            @if !filter.is_empty() {
                p.muted { "Watching " code { (filter) } ": " span #live-data-state { "connecting…" }
                    " (at most " (MAX_RATE) " messages a second are shown; it stops when you leave the page)" }
                table #live-data data-filter=(filter) {
                    thead { tr { th { "Received" } th { "Topic" } th { "Payload" } } }
                    tbody {}
                }
            }
        },
    )
    .into_response()
}

#[derive(serde::Serialize)]
struct Shown<'a> {
    topic: &'a str,
    payload: String,
    bytes: usize,
    qos: u8,
    retain: bool,
    /// Messages not shown (over the rate) since the one before.
    skipped_before: u64,
}

pub(crate) async fn events(
    State(app): State<Arc<App>>,
    Extension(session): Extension<Session>,
    Query(query): Query<Filter>,
) -> Response {
    let filter = match TopicFilter::new(query.filter.trim()) {
        Ok(filter) => filter,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let Ok(permit) = app.live_streams.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_STREAMS} live views are open already: close one and try again\n"),
        )
            .into_response();
    };
    let messages = match app.gateway.watch_topics(&session.user, &filter) {
        Ok(messages) => messages,
        Err(why) => return (StatusCode::FORBIDDEN, format!("{why}\n")).into_response(),
    };
    tracing::info!(user = %session.user, %filter, "Web UI live view opened");
    let state = Stream {
        messages,
        stop: app.shutdown.clone(),
        _permit: permit,
        window: (Instant::now(), 0),
        skipped: 0,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        let event = s.next().await?;
        Some((Ok::<_, Infallible>(event), s))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

struct Stream {
    messages: tokio::sync::mpsc::Receiver<fieldlink_core::message::Message>,
    stop: fieldlink_core::shutdown::Shutdown,
    /// Holds one of the UI's live-stream slots while the page is open.
    _permit: OwnedSemaphorePermit,
    /// The current second and the messages sent in it.
    window: (Instant, u32),
    /// Messages not sent since the last one that was.
    skipped: u64,
}

impl Stream {
    async fn next(&mut self) -> Option<Event> {
        loop {
            let message = tokio::select! {
                message = self.messages.recv() => message?,
                () = self.stop.cancelled() => return None,
            };
            let now = Instant::now();
            if now.duration_since(self.window.0) >= Duration::from_secs(1) {
                self.window = (now, 0);
            }
            if self.window.1 >= MAX_RATE {
                self.skipped += 1;
                continue;
            }
            self.window.1 += 1;
            let cut = &message.payload[..message.payload.len().min(MAX_PAYLOAD)];
            let shown = Shown {
                topic: message.topic.as_str(),
                payload: String::from_utf8_lossy(cut).into_owned(),
                bytes: message.payload.len(),
                qos: message.qos as u8,
                retain: message.retain,
                // Said with the next message shown, so the page knows it missed some.
                skipped_before: std::mem::take(&mut self.skipped),
            };
            let data = serde_json::to_string(&shown).unwrap_or_default();
            return Some(Event::default().event("message").data(data));
        }
    }
}
