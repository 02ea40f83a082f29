//! fieldlink's uplink: the TLS session to the cloud MQTT broker, draining the durable queue.
//!
//! # Delivery
//! Messages are leased from the [`Backlog`] within the inflight window, published at QoS 1,
//! and acknowledged to the backlog (deleted) only on the cloud's PUBACK; an MQTT 5 PUBACK with
//! a failure reason is never taken for success ([`OnRejected`] decides). rumqttc's `publish`
//! gives no packet id, so the order of `Outgoing::Publish(pkid)` events maps packet ids back to
//! rows. rumqttc forgets its unacknowledged publishes on a clean session, so on every failure
//! the leased rows go back to the backlog (nack) and are published again, in order, after the
//! next CONNACK: duplicates are possible only within one inflight window per reconnect, and each
//! message's queue id lets the cloud side drop them.
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
//! # Reconnects
//! Exponential backoff with full jitter, reset only after a connection lasted
//! [`backoff::STABLE_AFTER`], so a broker that kicks us right after CONNACK sees growing delays.

mod backoff;
mod bridge;
pub mod config;
mod diagnose;
mod dial;
mod error;
pub mod expiry;
mod psk;
mod session;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fieldlink_core::message::{Message, QoS};
use fieldlink_core::metrics::{
    UPLINK_CERT_EXPIRY_SECONDS, UPLINK_COMMANDS_TOTAL, UPLINK_LAST_ACK_TIMESTAMP_SECONDS,
    UPLINK_REJECTED_TOTAL, UPLINK_STALLS_TOTAL, UPLINK_STATE,
};
use fieldlink_core::ports::{Backlog, LocalBus, StoredMessage};
use fieldlink_core::shutdown::Shutdown;
use fieldlink_core::tls::{
    ClientTls, FileKey, KeySource, PeerChain, TlsPolicy, read_certs, read_crls,
};
use fieldlink_core::topic::TopicName;
pub use fieldlink_core::uplink_state::UplinkState;
use rumqttc::Transport;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName};
use tokio::sync::{mpsc, watch};

use crate::backoff::Backoff;
use crate::bridge::{Bridge, Target, Tunnel};
use crate::config::{OnRejected, UplinkSettings, UplinkTls};
use crate::dial::SocketTuning;
pub use crate::dial::{Resolve, STAGGER, SystemResolver};
pub use crate::error::UplinkError;
use crate::psk::Psk;
use crate::session::{Session, SessionEvent};

/// No correct clock reads earlier than this (2026-11-01T00:00:00Z, before this release).
pub const MIN_PLAUSIBLE_UNIX_TIME: u64 = 1_793_491_200;

/// The uplink as the CLI and the web UI see it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UplinkStatus {
    /// Where the uplink stands: connected, connecting, stalled, refused, disconnected.
    pub state: UplinkState,
    /// The last failure, in plain words (kept after a reconnect, so a past stall or refusal
    /// stays visible).
    pub last_error: Option<String>,
    /// When the cloud last acknowledged one of our messages (PUBACK).
    pub last_ack: Option<SystemTime>,
    /// When the last byte from the cloud arrived (to the second).
    pub last_heard: Option<SystemTime>,
    /// Connection attempts that failed or ended.
    pub reconnects: u64,
    /// Connections given up because nothing came back from the cloud.
    pub stalls: u64,
    /// Messages acknowledged by the cloud.
    pub acked_total: u64,
    /// Messages the cloud refused (MQTT 5 negative PUBACK).
    pub rejected_total: u64,
    /// Messages published and not yet acknowledged.
    pub inflight: usize,
    /// Messages per second acknowledged, smoothed.
    pub drain_rate: f64,
    /// Messages waiting in the queue.
    pub backlog: u64,
    /// Time to empty the backlog at the current drain rate (`None` while nothing drains).
    pub time_to_empty: Option<Duration>,
    /// Certificates in use and when they expire (Unix seconds).
    pub certificates: Vec<(String, i64)>,
    /// Command filters the cloud refused to subscribe us to, with its reason.
    pub refused_subscriptions: Vec<String>,
    /// Commands from the cloud published on the local broker.
    pub commands_total: u64,
}

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
        let connector = Connector::new(&settings, runtime_dir, resolver)?;
        let (status_tx, status) = watch::channel(UplinkStatus::default());
        let drain = Drain::new(settings, backlog, bus, connector, status_tx);
        let task = shutdown.spawn(drain.run(shutdown.clone()));
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

/// Builds a fresh TLS configuration for each connection attempt, so that renewed
/// certificates and updated CRLs are picked up, and hands it to the bridge.
struct Connector {
    policy: TlsPolicy,
    tls: UplinkTls,
    crl_files: Vec<PathBuf>,
    alpn: Vec<Vec<u8>>,
    server_name: ServerName<'static>,
    bridge: Bridge,
    crl_stamps: Vec<Option<SystemTime>>,
    /// When a CRL in use reaches its nextUpdate: look at the files again then, so that a CRL
    /// going stale under a live session raises its alarm on time.
    crl_recheck_at: Option<SystemTime>,
    /// The cloud's chain, as verified in the last handshake.
    peer_chain: PeerChain,
}

impl Connector {
    fn new(
        settings: &UplinkSettings,
        runtime_dir: &Path,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Self, UplinkError> {
        let policy = TlsPolicy {
            min_version: settings.min_tls_version,
            stale_crl: settings.stale_crl,
        };
        let server_name = ServerName::try_from(settings.host.clone())
            .map_err(|_| UplinkError::HostName(settings.host.clone()))?;
        let bridge = Bridge::start(
            runtime_dir,
            Target {
                host: settings.host.clone(),
                port: settings.port,
                resolver,
                connect_timeout: settings.connect_timeout,
                tuning: SocketTuning {
                    // A backstop behind the drain loop's own stall detection.
                    user_timeout: settings.stall_timeout * 2,
                    // Longer than any silence of a healthy session (its pings come first).
                    keepalive_idle: settings.keep_alive + settings.stall_timeout,
                },
            },
        )?;
        if let UplinkTls::Psk { psk_file } = &settings.tls {
            let connector = psk::connector(Psk::read(psk_file)?, settings.min_tls_version)
                .map_err(UplinkError::Psk)?;
            bridge.set_tunnel(Tunnel::Psk(connector));
        }
        let mut connector = Self {
            policy,
            tls: settings.tls.clone(),
            crl_files: settings.crl_files.clone(),
            alpn: settings
                .alpn
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect(),
            server_name,
            bridge,
            crl_stamps: Vec::new(),
            crl_recheck_at: None,
            peer_chain: PeerChain::default(),
        };
        // Fail at start on unreadable files, rather than at the first connection.
        connector.transport()?;
        Ok(connector)
    }

    /// Host, port and transport for rumqttc's next attempt: always our bridge's socket.
    fn transport(&mut self) -> Result<(String, u16, Transport), UplinkError> {
        let socket = (
            self.bridge.socket().display().to_string(),
            0,
            Transport::Unix,
        );
        if matches!(self.tls, UplinkTls::Psk { .. }) {
            return Ok(socket);
        }
        self.crl_stamps = self.crl_files.iter().map(|p| modified(p)).collect();
        let (ca_file, identity) = match &self.tls {
            UplinkTls::ServerAuth { ca_file } => (ca_file.as_deref(), None),
            UplinkTls::Mutual {
                ca_file,
                cert_file,
                key_file,
            } => {
                let chain = read_certs(cert_file)?;
                let key: Arc<dyn KeySource> = Arc::new(FileKey(key_file.clone()));
                (ca_file.as_deref(), Some((chain, key)))
            }
            UplinkTls::Psk { .. } => unreachable!("handled above"),
        };
        let roots = roots(ca_file)?;
        let mut crls = Vec::new();
        self.crl_recheck_at = None;
        for path in self.crl_files.clone() {
            let read = read_crls(&path)?;
            self.review_crl(&path, &read);
            crls.extend(read);
        }
        let config = self.policy.client_config_with(ClientTls {
            roots,
            crls,
            identity,
            alpn: self.alpn.clone(),
            peer_chain: Some(self.peer_chain.clone()),
        })?;
        self.bridge.set_tunnel(Tunnel::Rustls {
            config: Arc::new(config),
            name: self.server_name.clone(),
        });
        Ok(socket)
    }

    /// Raises or clears `path`'s stale-CRL alarm and notes when to look again.
    fn review_crl(&mut self, path: &Path, crls: &[CertificateRevocationListDer<'_>]) {
        let next =
            fieldlink_core::crl::review(path, crls, self.policy.stale_crl, SystemTime::now());
        self.crl_recheck_at = match (self.crl_recheck_at, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Looks at the CRL files again once one of them has reached its nextUpdate. The live
    /// session stays: a stale CRL concerns new handshakes only.
    fn review_crls_when_due(&mut self) {
        if self.crl_recheck_at.is_none_or(|at| SystemTime::now() < at) {
            return;
        }
        self.crl_recheck_at = None;
        for path in self.crl_files.clone() {
            match read_crls(&path) {
                Ok(crls) => self.review_crl(&path, &crls),
                Err(e) => tracing::warn!(error = %e, "Cannot read a CRL file again"),
            }
        }
    }

    /// Whether a CRL file changed since the transport was built.
    fn crls_changed(&self) -> bool {
        self.crl_files
            .iter()
            .map(|p| modified(p))
            .ne(self.crl_stamps.iter().copied())
    }

    /// Certificates in use, for the expiry monitor.
    fn certificates(&self) -> Vec<(String, CertificateDer<'static>)> {
        let mut out = Vec::new();
        let (ca_file, cert_file) = match &self.tls {
            UplinkTls::ServerAuth { ca_file } => (ca_file, None),
            UplinkTls::Mutual {
                ca_file, cert_file, ..
            } => (ca_file, Some(cert_file)),
            UplinkTls::Psk { .. } => (&None, None),
        };
        if let Some(chain) = cert_file.and_then(|p| read_certs(p).ok()) {
            out.extend(
                chain
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| (chain_role("client", i), c)),
            );
        }
        let server_chain = self.peer_chain.latest();
        let anchor_subject = server_chain.last().and_then(expiry::issuer);
        out.extend(
            server_chain
                .into_iter()
                .enumerate()
                .map(|(i, c)| (chain_role("server", i), c)),
        );
        if let Some(cas) = ca_file.as_ref().and_then(|p| read_certs(p).ok()) {
            // A bundle of many CAs (a system-style bundle) is not ours to watch: only the CA
            // that anchors the server's chain is. A small trust file is watched whole until
            // the first handshake tells which one anchors.
            let watch_all = anchor_subject.is_none() && cas.len() <= SMALL_TRUST_FILE;
            out.extend(
                cas.into_iter()
                    .enumerate()
                    .filter(|(_, ca)| {
                        watch_all
                            || (anchor_subject.is_some() && expiry::subject(ca) == anchor_subject)
                    })
                    .map(|(i, c)| (format!("ca-{i}"), c)),
            );
        }
        out
    }

    /// Why the bridge could not connect, if it could not.
    fn take_link_error(&self) -> Option<bridge::LinkError> {
        self.bridge.take_error()
    }
}

/// Up to this many CAs in `uplink.ca_file` are all watched for expiry before the first
/// handshake.
const SMALL_TRUST_FILE: usize = 8;

/// "client", "client-chain-1", ...: the end entity, then the intermediates.
fn chain_role(side: &str, i: usize) -> String {
    if i == 0 {
        side.to_owned()
    } else {
        format!("{side}-chain-{i}")
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, UplinkError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in read_certs(path)? {
                roots
                    .add(cert)
                    .map_err(|source| UplinkError::CaCertificate {
                        path: path.to_owned(),
                        source,
                    })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(UplinkError::NoSystemRoots);
            }
        }
    }
    Ok(roots)
}

/// How often the drain loop looks at timers (rejected retries, CRL changes, rates).
const TICK: Duration = Duration::from_secs(1);

struct Drain {
    settings: UplinkSettings,
    backlog: Arc<dyn Backlog>,
    bus: Arc<dyn LocalBus>,
    connector: Connector,
    status: watch::Sender<UplinkStatus>,
    backoff: Backoff,
    /// Published, in publish order, until rumqttc tells their packet ids: queue rows, and
    /// `None` for an alarm, so that an alarm's packet id is never paired with a row (its
    /// PUBACK would delete a row the cloud has not confirmed).
    unsent: VecDeque<Option<i64>>,
    /// Packet id → queue id, for what awaits its PUBACK.
    by_pkid: HashMap<u16, i64>,
    /// Refused by the cloud, to be retried after a delay.
    parked: Vec<(Instant, i64)>,
    acks: mpsc::UnboundedSender<i64>,
    acks_rx: Option<mpsc::UnboundedReceiver<i64>>,
    warned: HashMap<String, u64>,
    acked_in_tick: u64,
    /// A keep-alive ping awaits its answer.
    ping_outstanding: bool,
    /// Since when something (a publish, a ping) awaits the cloud's answer.
    awaiting_since: Option<Instant>,
    /// The last packet from the cloud, as rumqttc reported it (the bridge sees every byte).
    last_packet: Option<Instant>,
    /// Since when nothing came from the cloud, once a stall is reported.
    silent_since: Option<Instant>,
    /// Whether the wall clock was synchronized at the last look.
    clock_synchronized: bool,
}

impl Drain {
    fn new(
        settings: UplinkSettings,
        backlog: Arc<dyn Backlog>,
        bus: Arc<dyn LocalBus>,
        connector: Connector,
        status: watch::Sender<UplinkStatus>,
    ) -> Self {
        let (acks, acks_rx) = mpsc::unbounded_channel();
        Self {
            backoff: Backoff::new(settings.reconnect_min, settings.reconnect_max),
            settings,
            backlog,
            bus,
            connector,
            status,
            unsent: VecDeque::new(),
            by_pkid: HashMap::new(),
            parked: Vec::new(),
            acks,
            acks_rx: Some(acks_rx),
            warned: HashMap::new(),
            acked_in_tick: 0,
            ping_outstanding: false,
            awaiting_since: None,
            last_packet: None,
            silent_since: None,
            clock_synchronized: fieldlink_core::clock::synchronized(),
        }
    }

    async fn run(mut self, shutdown: Shutdown) {
        // Acks go to the backlog from their own task, batched, so the session keeps flowing
        // while SQLite commits.
        if let Some(rx) = self.acks_rx.take() {
            tokio::spawn(ack_writer(rx, self.backlog.clone()));
        }
        while !shutdown.is_triggered() {
            self.attempt(&shutdown).await;
            self.return_inflight().await;
            if shutdown.is_triggered() {
                break;
            }
            let delay = self.backoff.next_delay();
            self.status.send_modify(|s| s.reconnects += 1);
            tracing::debug!(?delay, "Uplink reconnect delay");
            let wake = tokio::time::Instant::now() + delay;
            loop {
                // The backlog matters most during an outage: it keeps being counted.
                self.refresh_backlog(false).await;
                // A stalled link stays "stalled" until the next attempt, its silence growing.
                let stalled = matches!(self.status.borrow().state, UplinkState::Stalled { .. });
                if let (true, Some(since)) = (stalled, self.silent_since) {
                    let silent_for = since.elapsed();
                    self.status
                        .send_modify(|s| s.state = UplinkState::Stalled { silent_for });
                }
                tokio::select! {
                    () = tokio::time::sleep_until(wake.min(tokio::time::Instant::now() + TICK)) => {}
                    () = shutdown.cancelled() => break,
                }
                if tokio::time::Instant::now() >= wake {
                    break;
                }
            }
        }
        self.return_inflight().await;
        self.set_state(UplinkState::Disconnected {
            reason: "the gateway is shutting down".into(),
        });
    }

    /// Counts the backlog for the status; the time to empty it only while `draining`.
    async fn refresh_backlog(&mut self, draining: bool) {
        let Ok(backlog) = self.backlog.depth().await else {
            return;
        };
        self.status.send_modify(|s| {
            s.backlog = backlog;
            s.time_to_empty = (draining && s.drain_rate >= 1.0)
                .then(|| Duration::from_secs_f64(backlog as f64 / s.drain_rate));
        });
    }

    /// One connection, from the TLS setup to its end.
    async fn attempt(&mut self, shutdown: &Shutdown) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now < MIN_PLAUSIBLE_UNIX_TIME {
            self.wait_for_clock(
                "the system clock is wrong (earlier than this release): waiting for time sync \
                 before checking certificates"
                    .into(),
            );
            return;
        }
        self.watch_expiry(None);
        let (host, port, transport) = match self.connector.transport() {
            Ok(t) => t,
            Err(e) => {
                self.fail(e.to_string());
                return;
            }
        };
        // A failure's state (stalled, refused, disconnected) stays while the next attempt is
        // made: it is the latest thing known, and "connecting" in between would hide it from
        // whoever looks at the status at the wrong moment.
        if self.status.borrow().state.is_connected() {
            self.set_state(UplinkState::Connecting);
        }
        // An error of an earlier connection is not this one's.
        let _ = self.connector.take_link_error();
        self.ping_outstanding = false;
        self.awaiting_since = None;
        self.last_packet = None;
        let mut session = Session::new(
            &self.settings,
            &host,
            port,
            transport,
            connect_limit(&self.settings),
        );
        let mut connected_at: Option<Instant> = None;
        let mut tick = tokio::time::interval(TICK);
        loop {
            let window_open =
                connected_at.is_some() && self.inflight() < usize::from(self.settings.inflight);
            tokio::select! {
                event = session.poll() => match event {
                    Ok(SessionEvent::Connected) => {
                        connected_at = Some(Instant::now());
                        self.last_packet = connected_at;
                        tracing::info!(host = %self.settings.host, "Uplink connected");
                        // last_error stays: a past stall or refusal remains visible.
                        self.set_state(UplinkState::Connected);
                        // Anything leased before is back in the backlog (see return_inflight):
                        // start from the oldest.
                        self.return_inflight().await;
                        self.watch_expiry(Some(&session));
                        self.subscribe_commands(&session);
                        self.refill(&mut session).await;
                    }
                    Ok(SessionEvent::Subscribed(codes)) => {
                        self.last_packet = Some(Instant::now());
                        self.subscribed(&codes);
                    }
                    Ok(SessionEvent::Received { topic, payload }) => {
                        self.last_packet = Some(Instant::now());
                        self.command(topic, payload).await;
                    }
                    Ok(SessionEvent::PingSent) => self.ping_outstanding = true,
                    Ok(SessionEvent::PingAnswered) => {
                        self.last_packet = Some(Instant::now());
                        self.ping_outstanding = false;
                    }
                    Ok(SessionEvent::Sent(pkid)) if pkid != 0 => {
                        if let Some(Some(id)) = self.unsent.pop_front() {
                            self.by_pkid.insert(pkid, id);
                        }
                    }
                    Ok(SessionEvent::Acked { pkid, refused }) => {
                        self.last_packet = Some(Instant::now());
                        self.acked(pkid, refused);
                        if self.inflight() <= usize::from(self.settings.inflight) / 2 {
                            self.refill(&mut session).await;
                        }
                    }
                    Ok(_) => {}
                    Err(e) if diagnose::is_unanswered_ping(e.as_ref()) => {
                        let silent_for = self
                            .last_heard()
                            .map_or(self.settings.keep_alive, |h| h.elapsed());
                        self.report_stall(silent_for);
                        self.connector.bridge.demote_link();
                        self.connector.bridge.close_link();
                        return;
                    }
                    Err(e) => {
                        // The bridge's own failure (unreachable, TLS) says more than rumqttc's
                        // "connection closed".
                        let synchronized = fieldlink_core::clock::synchronized();
                        let failure = self.connector.take_link_error().unwrap_or_else(|| {
                            bridge::LinkError::of(e.as_ref(), synchronized)
                        });
                        if !synchronized && failure.about_time {
                            self.wait_for_clock(failure.text);
                        } else {
                            self.fail_with(failure.text, failure.refused);
                        }
                        self.connector.bridge.close_link();
                        return;
                    }
                },
                () = self.backlog.stored(), if window_open => self.refill(&mut session).await,
                // Not while connecting: rumqttc's poll is not cancel-safe until the CONNACK
                // (a dropped poll abandons its half-open connection and the next one dials
                // again), so nothing but shutdown may interrupt it then.
                _ = tick.tick(), if connected_at.is_some() => {
                    self.on_tick(connected_at);
                    if self.stalled() {
                        self.connector.bridge.demote_link();
                        self.connector.bridge.close_link();
                        return;
                    }
                    if self.clock_became_synchronized() {
                        // Expiry alarms wait for a clock that can be trusted.
                        self.watch_expiry(Some(&session));
                    }
                    self.refresh_backlog(true).await;
                    if connected_at.is_some() {
                        self.refill(&mut session).await;
                    }
                    self.connector.review_crls_when_due();
                    if self.connector.crls_changed() {
                        tracing::info!("A CRL file changed: reconnecting to check the server against it");
                        session.disconnect().await;
                        self.set_state(UplinkState::Disconnected {
                            reason: "reconnecting to check the server against a changed CRL".into(),
                        });
                        return;
                    }
                }
                () = shutdown.cancelled() => {
                    // Only a live session says goodbye: driving one that is still connecting
                    // would dial again.
                    if connected_at.is_some() {
                        session.disconnect().await;
                    }
                    return;
                }
            }
            self.update_awaiting();
        }
    }

    /// Starts or ends the wait for the cloud's answer.
    fn update_awaiting(&mut self) {
        let outstanding = self.ping_outstanding || self.inflight() > 0;
        match (outstanding, self.awaiting_since) {
            (true, None) => self.awaiting_since = Some(Instant::now()),
            (false, Some(_)) => self.awaiting_since = None,
            _ => {}
        }
    }

    /// When the cloud was last heard from: its last byte as the bridge saw it, or its last
    /// packet as rumqttc reported it, whichever is later.
    fn last_heard(&self) -> Option<Instant> {
        let bytes = self.connector.bridge.link().and_then(|l| l.last_heard());
        bytes.max(self.last_packet)
    }

    /// Whether the link is stalled: an answer is awaited and nothing at all came back from the
    /// cloud for `stall_timeout` (counted from the later of the last byte and the start of
    /// the wait). Reports it when so.
    fn stalled(&mut self) -> bool {
        let heard = self.last_heard();
        if let Some(heard) = heard {
            let wall = SystemTime::now().checked_sub(heard.elapsed());
            self.status.send_modify(|s| s.last_heard = wall);
        }
        let Some(waiting) = self.awaiting_since else {
            return false;
        };
        let silent_for = heard.map_or(waiting, |h| h.max(waiting)).elapsed();
        if silent_for < self.settings.stall_timeout {
            return false;
        }
        self.report_stall(silent_for);
        true
    }

    /// The link is given up as stalled: state, counters, log.
    fn report_stall(&mut self, silent_for: Duration) {
        self.silent_since = Instant::now().checked_sub(silent_for);
        let state = UplinkState::Stalled { silent_for };
        tracing::warn!(
            host = %self.settings.host,
            silent_s = silent_for.as_secs(),
            inflight = self.inflight(),
            "Uplink stalled: nothing from the cloud; reconnecting and sending what was in flight again"
        );
        metrics::counter!(UPLINK_STALLS_TOTAL).increment(1);
        let text = state.to_string();
        self.set_state(state);
        self.status.send_modify(|s| {
            s.stalls += 1;
            s.last_error = Some(text);
        });
    }

    /// The one place the state changes; the gauge follows it.
    fn set_state(&mut self, state: UplinkState) {
        let old = self.status.borrow().state.name();
        if old != state.name() {
            metrics::gauge!(UPLINK_STATE, "state" => old).set(0.0);
            tracing::debug!(from = old, to = state.name(), "Uplink state");
        }
        metrics::gauge!(UPLINK_STATE, "state" => state.name()).set(1.0);
        self.status.send_modify(|s| s.state = state);
    }

    fn inflight(&self) -> usize {
        self.unsent.len() + self.by_pkid.len()
    }

    /// Leases what fits in the window and publishes it.
    async fn refill(&mut self, session: &mut Session) {
        self.unpark().await;
        let room = usize::from(self.settings.inflight).saturating_sub(self.inflight());
        if room == 0 {
            return;
        }
        let leased = match self.backlog.lease(room).await {
            Ok(leased) => leased,
            Err(e) => {
                tracing::error!(error = %e, "Uplink cannot read the queue");
                return;
            }
        };
        for message in leased {
            let id = message.id;
            let StoredMessage { message, .. } = message;
            let topic = cloud_topic(&self.settings, &message.topic);
            let tag = self
                .settings
                .message_id_property
                .as_deref()
                .map(|name| (name, id));
            if let Err(e) = session.publish(topic, message.payload, message.retain, tag) {
                // The request channel is sized for the window; this means the session is gone.
                tracing::warn!(error = %e, "Uplink publish not queued; it goes back to the queue");
                let _ = self.backlog.nack(vec![id]).await;
                continue;
            }
            self.unsent.push_back(Some(id));
        }
        self.status
            .send_modify(|s| s.inflight = self.unsent.len() + self.by_pkid.len());
    }

    /// Subscribes to the command filters; on every CONNACK, as a clean session forgets them.
    fn subscribe_commands(&self, session: &Session) {
        if self.settings.commands.is_empty() {
            return;
        }
        let filters: Vec<String> = self
            .settings
            .commands
            .iter()
            .map(|c| c.filter().to_string())
            .collect();
        if let Err(e) = session.subscribe(&filters) {
            tracing::warn!(error = %e, "Uplink could not subscribe to its command topics");
        }
    }

    fn subscribed(&mut self, codes: &[Option<String>]) {
        let refused: Vec<String> = self
            .settings
            .commands
            .iter()
            .zip(codes)
            .filter_map(|(rule, code)| {
                code.as_ref().map(|why| {
                    tracing::error!(filter = %rule.filter(), reason = %why, "The cloud refused our command subscription: check its ACL for this client");
                    format!("{}: {why}", rule.filter())
                })
            })
            .collect();
        self.status
            .send_modify(|s| s.refused_subscriptions = refused);
    }

    /// A command from the cloud: published on the local broker under its local topic.
    async fn command(&mut self, topic: String, payload: Vec<u8>) {
        let Ok(topic) = TopicName::new(topic) else {
            tracing::warn!("The cloud sent a message with an invalid topic; ignored");
            return;
        };
        let Some(local) = self.settings.commands.iter().find_map(|c| c.apply(&topic)) else {
            tracing::debug!(%topic, "A cloud message matches no command rule; ignored");
            return;
        };
        tracing::debug!(cloud = %topic, local = %local, "Command from the cloud");
        let message = Message {
            topic: local,
            payload,
            qos: QoS::AtLeastOnce,
            // A retained command would be replayed to every new local subscriber.
            retain: false,
        };
        match self.bus.publish(message).await {
            Ok(()) => {
                metrics::counter!(UPLINK_COMMANDS_TOTAL).increment(1);
                self.status.send_modify(|s| s.commands_total += 1);
            }
            Err(e) => tracing::warn!(error = %e, "A cloud command could not be published locally"),
        }
    }

    fn acked(&mut self, pkid: u16, refused: Option<String>) {
        let Some(id) = self.by_pkid.remove(&pkid) else {
            return;
        };
        match refused {
            None => {
                let _ = self.acks.send(id);
                self.acked_in_tick += 1;
                let now = SystemTime::now();
                self.status.send_modify(|s| {
                    s.acked_total += 1;
                    s.last_ack = Some(now);
                });
                if let Ok(t) = now.duration_since(UNIX_EPOCH) {
                    metrics::gauge!(UPLINK_LAST_ACK_TIMESTAMP_SECONDS).set(t.as_secs_f64());
                }
            }
            Some(reason) => {
                self.status.send_modify(|s| s.rejected_total += 1);
                metrics::counter!(UPLINK_REJECTED_TOTAL).increment(1);
                match self.settings.on_rejected {
                    OnRejected::Retry => {
                        tracing::warn!(id, %reason, "The cloud refused a message; it stays queued and is retried");
                        self.parked.push((
                            Instant::now()
                                + self.settings.reconnect_min.max(Duration::from_secs(1)),
                            id,
                        ));
                    }
                    OnRejected::Drop => {
                        tracing::error!(id, %reason, "The cloud refused a message; dropped as uplink.on_rejected = \"drop\" says");
                        let _ = self.acks.send(id);
                    }
                }
            }
        }
    }

    /// Refused messages whose delay is over go back to the backlog.
    async fn unpark(&mut self) {
        let now = Instant::now();
        let due: Vec<i64> = self
            .parked
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|(_, id)| *id)
            .collect();
        if !due.is_empty() {
            self.parked.retain(|(at, _)| *at > now);
            let _ = self.backlog.nack(due).await;
        }
    }

    fn on_tick(&mut self, connected_at: Option<Instant>) {
        if connected_at.is_some_and(|at| at.elapsed() >= backoff::STABLE_AFTER) {
            self.backoff.reset();
        }
        let acked = std::mem::take(&mut self.acked_in_tick) as f64 / TICK.as_secs_f64();
        self.status
            .send_modify(|s| s.drain_rate = 0.7 * s.drain_rate + 0.3 * acked);
    }

    /// Everything leased and not acknowledged goes back to the backlog, to be sent again in
    /// order after the next CONNACK.
    async fn return_inflight(&mut self) {
        let mut ids: Vec<i64> = self.unsent.drain(..).flatten().collect();
        ids.extend(self.by_pkid.drain().map(|(_, id)| id));
        ids.extend(self.parked.drain(..).map(|(_, id)| id));
        if !ids.is_empty() {
            let _ = self.backlog.nack(ids).await;
        }
        self.status.send_modify(|s| s.inflight = 0);
    }

    /// A certificate that reads as expired or not yet valid while the clock is not
    /// synchronized: said once, calmly, and retried on the usual backoff.
    fn wait_for_clock(&mut self, why: String) {
        if self.status.borrow().last_error.as_deref() != Some(why.as_str()) {
            tracing::info!(host = %self.settings.host, reason = %why, "Uplink waits for time sync");
        }
        // Not a refusal: the cloud may be right and our clock wrong.
        self.set_state(UplinkState::ClockUnsynchronized {
            reason: why.clone(),
        });
        self.status.send_modify(|s| s.last_error = Some(why));
    }

    /// Whether the wall clock has become synchronized since the last look.
    fn clock_became_synchronized(&mut self) -> bool {
        let now = fieldlink_core::clock::synchronized();
        let became = now && !self.clock_synchronized;
        self.clock_synchronized = now;
        became
    }

    fn fail(&mut self, why: String) {
        self.fail_with(why, false);
    }

    /// A failed or lost connection: refused (the cloud said no) or disconnected.
    fn fail_with(&mut self, why: String, refused: bool) {
        tracing::warn!(host = %self.settings.host, reason = %why, refused, "Uplink connection failed");
        self.set_state(if refused {
            UplinkState::Refused {
                reason: why.clone(),
            }
        } else {
            UplinkState::Disconnected {
                reason: why.clone(),
            }
        });
        self.status.send_modify(|s| s.last_error = Some(why));
    }

    /// Expiry gauges and warnings for every certificate in use; alarms to the cloud when
    /// connected and a new threshold is crossed.
    fn watch_expiry(&mut self, session: Option<&Session>) {
        let now = SystemTime::now();
        // A clock that is not synchronized may be days off: the dates are shown, but no
        // warning or alarm is raised from it (the tick looks again once it is synchronized).
        self.clock_synchronized = fieldlink_core::clock::synchronized();
        let judge = self.clock_synchronized;
        let mut seen = Vec::new();
        for (role, cert) in self.connector.certificates() {
            let Some(not_after) = expiry::not_after(&cert) else {
                continue;
            };
            seen.push((role.clone(), not_after));
            let left = not_after
                - now
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
            if !judge {
                continue;
            }
            metrics::gauge!(UPLINK_CERT_EXPIRY_SECONDS, "certificate" => role.clone())
                .set(left as f64);
            let Some(level) = expiry::warning_level(not_after, now) else {
                continue;
            };
            if self.warned.get(&role) == Some(&level) {
                continue;
            }
            tracing::warn!(certificate = %role, days_left = left / 86_400, "Certificate expires within {level} days: renew it");
            match (session, &self.settings.alarm_topic) {
                (Some(session), Some(topic)) => {
                    let alarm = format!(
                        "{{\"alarm\":\"certificate_expiry\",\"certificate\":\"{role}\",\"not_after\":{not_after},\"days_left\":{}}}",
                        left / 86_400
                    );
                    // QoS 1 without a queue row: its place in `unsent` says so.
                    if session
                        .publish(topic.to_string(), alarm.into_bytes(), false, None)
                        .is_ok()
                    {
                        self.unsent.push_back(None);
                        self.warned.insert(role, level);
                    }
                }
                (_, None) => {
                    self.warned.insert(role, level);
                }
                (None, Some(_)) => {} // alarm once connected
            }
        }
        self.status.send_modify(|s| s.certificates = seen);
    }
}

/// rumqttc's own limit up to the CONNACK (and per flush): a backstop behind the bridge's
/// resolve, dial and TLS timeouts, longer than all three.
fn connect_limit(settings: &UplinkSettings) -> Duration {
    settings.connect_timeout * 3 + STAGGER * 8 + Duration::from_secs(5)
}

/// The cloud topic for a local one: the first rewrite rule that matches, else the prefix.
fn cloud_topic(settings: &UplinkSettings, local: &TopicName) -> String {
    settings
        .rewrites
        .iter()
        .find_map(|r| r.apply(local))
        .map_or_else(
            || format!("{}{local}", settings.topic_prefix),
            |t| t.as_str().to_owned(),
        )
}

async fn ack_writer(mut rx: mpsc::UnboundedReceiver<i64>, backlog: Arc<dyn Backlog>) {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while let Ok(id) = rx.try_recv() {
            batch.push(id);
        }
        if let Err(e) = backlog.ack(std::mem::take(&mut batch)).await {
            // Not deleted: they will be sent again after a restart (at least once).
            tracing::warn!(error = %e, "Uplink could not delete acknowledged messages");
        }
    }
}
