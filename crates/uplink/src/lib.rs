//! fieldlink's uplink: the TLS session to the cloud MQTT broker, draining the durable queue.
//!
//! # Delivery
//! Messages are leased from the [`Backlog`] within the inflight window, published at QoS 1,
//! and acknowledged to the backlog (deleted) only on the cloud's PUBACK; an MQTT 5 PUBACK with
//! a failure reason is never taken for success ([`config::OnRejected`] decides). rumqttc's `publish`
//! gives no packet id, so the order of `Outgoing::Publish(pkid)` events maps packet ids back to
//! rows. rumqttc forgets its unacknowledged publishes on a clean session, so on every failure
//! the leased rows go back to the backlog (nack) and are published again, in order, after the
//! next CONNACK: duplicates are possible only within one inflight window per reconnect, and each
//! message's queue id lets the cloud side drop them.
//!
//! # Drain speed
//! The window (`uplink.inflight`, lowered to an MQTT 5 cloud's Receive Maximum) is kept full:
//! up to one more window is leased ahead, so a PUBACK frees room for the next publish at once
//! and the lease (a round trip to the queue's writer and SQLite) is never what the link waits
//! for. Acknowledgements go to the queue and the status in batches of half a window. The
//! queue's streams take turns, so a live message on one route goes out within a window or two
//! of another route's backlog.
//!
//! # TLS
//! Every mode is built by `fieldlink_core::tls::TlsPolicy` (TLS 1.2 minimum or 1.3 only, AEAD
//! only): server-auth and mutual TLS with rustls (CA file or the system's roots, CRLs re-read
//! when they change), PSK with openssl through a private Unix socket ([`psk`]).
//! A clock earlier than this release is refused with a clear error: certificate checks on a
//! board without RTC, before time sync, would fail in confusing ways.
//!
//! # The connection
//! rumqttc speaks MQTT over a private Unix socket to our [`bridge`], which makes the real
//! connection: every address of the host raced with its own timeout ([`dial`]), the socket
//! tuned (`TCP_USER_TIMEOUT`, keepalive), TLS checked against the configured host name, and the
//! time of the last byte from the cloud recorded.
//!
//! # Stalls
//! A link that goes silent (a NAT entry expired, a modem handover, a Wi-Fi route lost) keeps
//! its TCP connection open with nothing coming back. While a publish or a keep-alive ping
//! awaits the cloud's answer, `uplink.stall_timeout` without a single byte from the cloud
//! (counted from the later of the last byte and the start of the wait) makes the state
//! [`UplinkState::Stalled`]; the connection is given up, what was in flight goes back to the
//! queue and is sent again after the next CONNACK. A slow link whose answers still trickle in
//! is never stalled: every byte counts. When idle, rumqttc's keep-alive ping starts the wait,
//! so an idle dead link is seen within `keep_alive + stall_timeout`.
//!
//! # State
//! [`UplinkStatus::state`] is the one state model ([`UplinkState`], in core) that the status
//! file, the CLI, the component health and the `fieldlink_uplink_state` gauge show.
//!
//! # Where things are
//! The drain loop is `drain/mod.rs`, with the cloud's commands
//! (`drain/commands.rs`) and the certificate expiry watch (`drain/expiry_watch.rs`);
//! `connector.rs` builds the TLS configuration for each attempt; `status.rs` and `error.rs`
//! hold what the uplink reports and why it cannot start; `config` owns `[uplink]`.
//!
//! # Reconnects
//! Exponential backoff with full jitter, reset only after a connection lasted
//! [`backoff::STABLE_AFTER`], so a broker that kicks us right after CONNACK sees growing delays.

mod backoff;
mod bridge;
pub mod config;
mod connector;
mod credentials;
mod diagnose;
mod dial;
mod drain;
mod error;
pub mod expiry;
mod psk;
mod rotation;
mod session;
mod status;
pub mod tokens;

use std::path::Path;
use std::sync::Arc;

use fieldlink_core::ports::{Backlog, LocalBus};
use fieldlink_core::shutdown::Shutdown;
use fieldlink_core::tls::{FileKeys, KeyResolver};
pub use fieldlink_core::uplink_state::UplinkState;
use tokio::sync::watch;

use crate::config::UplinkSettings;
use crate::connector::Connector;
pub use crate::dial::{Resolve, STAGGER, SystemResolver};
use crate::drain::Drain;
pub use crate::error::UplinkError;
pub use crate::status::{CredentialStatus, UplinkStatus};

/// No correct clock reads earlier than this (2026-11-01T00:00:00Z, before this release).
pub const MIN_PLAUSIBLE_UNIX_TIME: u64 = 1_793_491_200;

/// A running uplink.
#[derive(Debug)]
pub struct Uplink {
    status: watch::Receiver<UplinkStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl Uplink {
    /// Checks the credentials, then starts draining `backlog` to the cloud until `shutdown`,
    /// and publishes the cloud's commands on `bus`. `runtime_dir` holds the private PSK socket.
    pub fn start(
        settings: UplinkSettings,
        backlog: Arc<dyn Backlog>,
        bus: Arc<dyn LocalBus>,
        runtime_dir: &Path,
        shutdown: Shutdown,
    ) -> Result<Self, UplinkError> {
        Self::start_with_resolver(
            settings,
            backlog,
            bus,
            runtime_dir,
            shutdown,
            Arc::new(SystemResolver),
        )
    }

    /// [`Uplink::start`], with host names resolved by `resolver` (the server's certificate
    /// is still checked against `settings.host`).
    pub fn start_with_resolver(
        settings: UplinkSettings,
        backlog: Arc<dyn Backlog>,
        bus: Arc<dyn LocalBus>,
        runtime_dir: &Path,
        shutdown: Shutdown,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Self, UplinkError> {
        Self::start_with_keys(
            settings,
            backlog,
            bus,
            runtime_dir,
            shutdown,
            resolver,
            Arc::new(FileKeys),
        )
    }

    /// [`Uplink::start_with_resolver`], with the mutual-TLS key (`uplink.key_file` or
    /// `uplink.key_uri`) resolved by `keys`: the binary passes one that reaches PKCS#11 tokens.
    /// The key is resolved again for each connection attempt, so a token that goes away makes
    /// attempts fail ("hardware key unavailable: …", retried with the usual backoff) until it
    /// is back.
    pub fn start_with_keys(
        settings: UplinkSettings,
        backlog: Arc<dyn Backlog>,
        bus: Arc<dyn LocalBus>,
        runtime_dir: &Path,
        shutdown: Shutdown,
        resolver: Arc<dyn Resolve>,
        keys: Arc<dyn KeyResolver>,
    ) -> Result<Self, UplinkError> {
        let credentials = credentials::Credentials::load(&settings, &keys)?;
        let connector = Connector::new(&settings, runtime_dir, resolver, &shutdown, keys)?;
        let (status_tx, status) = watch::channel(UplinkStatus::default());
        let drain = Drain::new(settings, backlog, bus, connector, credentials, status_tx);
        let task = shutdown.spawn_vital(
            "uplink",
            "the uplink's drain loop",
            drain.run(shutdown.clone()),
        );
        Ok(Self { status, task })
    }

    /// The status now.
    pub fn status(&self) -> UplinkStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch(&self) -> watch::Receiver<UplinkStatus> {
        self.status.clone()
    }

    /// Whether the drain task has ended (after shutdown).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}
