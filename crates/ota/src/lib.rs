//! fieldlink's OTA update agent.
//!
//! The cloud asks, through the uplink's command mapping, for a signed RAUC bundle to be
//! installed; the agent downloads it over HTTPS (resumable, under the gateway's TLS policy),
//! checks its SHA-256, has RAUC check its signature and install it into the other slot
//! through RAUC's D-Bus API, reboots through logind, checks the gateway's health after the
//! boot and marks the slot good, or bad and reboots so that the bootloader falls back. Every
//! step is reported to the cloud through the durable queue.
//!
//! - [`config`] — the `[ota]` section;
//! - [`request`] — the install request and its checks;
//! - [`download`] — HTTPS GET with `Range`, the free-space check, SHA-256;
//! - [`rauc`] — RAUC's D-Bus API;
//! - [`health`] — the health check over the status board;
//! - [`state`] — what survives restarts and reboots (also read by `fieldlink ota status`);
//! - [`boot`] — which boot this is, and how long it has run;
//! - [`report`] — the reports on the status topic;
//! - [`tls`] — the download's TLS client configuration;
//! - [`agent`] — the agent itself.

pub mod agent;
pub mod boot;
pub mod config;
pub mod download;
pub mod health;
pub mod rauc;
pub mod reboot;
pub mod report;
pub mod request;
pub mod state;
pub mod tls;
pub mod version;

pub use agent::{OtaError, Ports, start};
