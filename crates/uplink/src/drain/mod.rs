//! The drain loop: connect, lease within the inflight window, publish, ack on PUBACK, and on
//! any failure give the rows in flight back and reconnect.

mod commands;
mod expiry_watch;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fieldlink_core::metrics::{
    UPLINK_LAST_ACK_TIMESTAMP_SECONDS, UPLINK_REJECTED_TOTAL, UPLINK_STALLS_TOTAL, UPLINK_STATE,
};
use fieldlink_core::ports::{Backlog, BacklogError, LocalBus, StoredMessage};
use fieldlink_core::shutdown::Shutdown;
use fieldlink_core::topic::TopicName;
pub use fieldlink_core::uplink_state::UplinkState;
use tokio::sync::{mpsc, watch};

use crate::backoff::Backoff;
use crate::config::{OnRejected, UplinkSettings};
use crate::connector::Connector;
use crate::credentials::{Credentials, Login};
pub use crate::dial::STAGGER;
use crate::session::{Session, SessionEvent};
use crate::status::{CredentialStatus, UplinkStatus};
use crate::{MIN_PLAUSIBLE_UNIX_TIME, backoff, bridge, diagnose};

/// How often the drain loop looks at timers (rejected retries, CRL changes, rates).
const TICK: Duration = Duration::from_secs(1);

/// How long a stopping uplink waits for the PUBACKs of what it has sent (within the
/// gateway's shutdown grace).
const SETTLE_AT_STOP: Duration = Duration::from_secs(1);

/// Batches of acknowledged ids waiting for the ack writer: past this, the drain stops reading
/// the cloud's answers until the queue has caught up (memory stays bounded whatever the rate:
/// a batch holds at most one window).
const ACKS_WAITING: usize = 64;

/// While messages are in flight, new ones are published once 1/this of the window is free,
/// rather than one for each PUBACK. One publish at a time, every stage wakes up for each
/// message: rumqttc, the bridge (a TLS record and a TCP write each), the cloud, and back,
/// each PUBACK on its own. In bursts, the bridge reads many publishes at once into one TLS
/// record and the cloud's PUBACKs come back together: measured on a drain
/// (docs/BENCHMARKS.md, "Uplink drain"), the tokio workers went from about 14 to 9 µs of CPU
/// per message. On a link whose round trip bounds the drain, the window is then on average
/// at least 7/8 full instead of full.
const BURST_OF_WINDOW: usize = 4;

/// The drain rate is measured over this many ticks (a 5 s sliding window): close to the true
/// rate two seconds into a drain, steady within it.
const RATE_TICKS: usize = 5;

/// A lease on its way from the queue (owned, so that it survives the select loop's turns).
type Leasing = Pin<Box<dyn Future<Output = Result<Vec<StoredMessage>, BacklogError>> + Send>>;

pub(crate) struct Drain {
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
    /// Most messages in flight: `uplink.inflight`, or the cloud's Receive Maximum when lower.
    window: u16,
    /// Leased ahead and not published yet (at most one window): a PUBACK frees room for the
    /// next message at once, without waiting for the queue (see [`Drain::lease_ahead`]).
    ready: VecDeque<StoredMessage>,
    /// The lease asked for, while the queue answers, and how many rows it asked for.
    leasing: Option<Leasing>,
    lease_asked: usize,
    /// The last lease came back short: the backlog is drained until the queue says it
    /// stored more (or the next tick).
    drained: bool,
    /// Refused by the cloud, to be retried after a delay.
    parked: Vec<(Instant, i64)>,
    acks: mpsc::Sender<Vec<i64>>,
    acks_rx: Option<mpsc::Receiver<Vec<i64>>>,
    /// Acknowledged (or dropped) this round, for the ack writer.
    acked_now: Vec<i64>,
    /// Acknowledged this round, for the status.
    acked_unreported: u64,
    warned: HashMap<String, u64>,
    /// Acknowledged since the last tick, and the acknowledgements of the last ticks with
    /// their durations (the drain rate's sliding window).
    acked_in_tick: u64,
    rate: VecDeque<(u64, Duration)>,
    last_tick: Option<Instant>,
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
    /// What the uplink logs in with, if anything.
    credentials: Option<Credentials>,
    /// When the current session's token is due for renewal.
    renew_at: Option<SystemTime>,
    /// Since when a renewal waits for what is in flight to be acknowledged (nothing new is
    /// sent meanwhile).
    renewing_since: Option<Instant>,
    /// The last session ended to renew its token: reconnect at once.
    renewed: bool,
    /// The last attempt's credentials were refused: wait `reconnect_max` before the next.
    login_refused: bool,
}

impl Drain {
    pub(crate) fn new(
        settings: UplinkSettings,
        backlog: Arc<dyn Backlog>,
        bus: Arc<dyn LocalBus>,
        connector: Connector,
        credentials: Option<Credentials>,
        status: watch::Sender<UplinkStatus>,
    ) -> Self {
        let (acks, acks_rx) = mpsc::channel(ACKS_WAITING);
        let window = settings.inflight;
        Self {
            backoff: Backoff::new(settings.reconnect_min, settings.reconnect_max),
            settings,
            backlog,
            bus,
            connector,
            status,
            unsent: VecDeque::new(),
            by_pkid: HashMap::new(),
            window,
            ready: VecDeque::new(),
            leasing: None,
            lease_asked: 0,
            drained: false,
            parked: Vec::new(),
            acks,
            acks_rx: Some(acks_rx),
            acked_now: Vec::new(),
            acked_unreported: 0,
            warned: HashMap::new(),
            acked_in_tick: 0,
            rate: VecDeque::with_capacity(RATE_TICKS),
            last_tick: None,
            ping_outstanding: false,
            awaiting_since: None,
            last_packet: None,
            silent_since: None,
            clock_synchronized: fieldlink_core::clock::synchronized(),
            credentials,
            renew_at: None,
            renewing_since: None,
            renewed: false,
            login_refused: false,
        }
    }

    /// Runs until `shutdown`, then writes the last acknowledgements before it returns.
    pub(crate) async fn run(mut self, shutdown: Shutdown) {
        // Acks go to the backlog beside the session, batched, so the session keeps flowing
        // while SQLite commits. The writer ends once the drain loop (the sender) has.
        let acks = self
            .acks_rx
            .take()
            .map(|rx| ack_writer(rx, self.backlog.clone()));
        let drain = self.connect_until(shutdown);
        match acks {
            Some(acks) => {
                tokio::join!(drain, acks);
            }
            None => drain.await,
        }
    }

    async fn connect_until(mut self, shutdown: Shutdown) {
        while !shutdown.is_triggered() {
            self.attempt(&shutdown).await;
            self.return_inflight().await;
            if shutdown.is_triggered() {
                break;
            }
            if std::mem::take(&mut self.renewed) {
                // A renewal is not an outage: no delay, no reconnect counted.
                self.status.send_modify(|s| s.renewals += 1);
                continue;
            }
            // A refused login waits the longest delay: retrying it soon changes nothing, and
            // a cloud that sees a burst of bad logins may ban the device.
            let delay = if std::mem::take(&mut self.login_refused) {
                self.settings.reconnect_max
            } else {
                self.backoff.next_delay()
            };
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
            s.time_to_empty = time_to_empty(draining, backlog, s.drain_rate);
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
        self.show_certificate_refusal();
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
        self.renewing_since = None;
        let login = match self.login() {
            Ok(login) => login,
            Err(why) => {
                self.fail(why);
                return;
            }
        };
        let mut session = Session::new(
            &self.settings,
            &host,
            port,
            transport,
            connect_limit(&self.settings),
            login.as_ref(),
        );
        // The password's buffer is wiped now (rumqttc keeps its own copy for the CONNECT).
        drop(login);
        let mut connected_at: Option<Instant> = None;
        let mut tick = tokio::time::interval(TICK);
        loop {
            let window_open = connected_at.is_some()
                && self.renewing_since.is_none()
                && self.inflight() < usize::from(self.window);
            tokio::select! {
                event = session.poll() => match event {
                    Ok(SessionEvent::Connected { receive_maximum }) => {
                        connected_at = Some(Instant::now());
                        // An MQTT 5 broker's Receive Maximum bounds the window (rumqttc holds
                        // back what is above it; the drain keeps no more than that in flight).
                        self.window = receive_maximum
                            .filter(|r| *r > 0)
                            .map_or(self.settings.inflight, |r| r.min(self.settings.inflight));
                        if self.window < self.settings.inflight {
                            tracing::info!(
                                inflight = self.settings.inflight,
                                receive_maximum = self.window,
                                "The cloud takes fewer unacknowledged messages than uplink.inflight: its Receive Maximum is the window"
                            );
                        }
                        // The drain rate is this connection's.
                        self.rate.clear();
                        self.last_tick = None;
                        self.last_packet = connected_at;
                        tracing::info!(host = %self.settings.host, "Uplink connected");
                        // The files this handshake used are proven (a renewed certificate
                        // is now the one in use).
                        self.connector.rotation.promote();
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
                        // The acknowledgements go on to the queue and the status in batches
                        // of half a window (or when the window runs low).
                        let half = usize::from(self.window).div_ceil(2);
                        if self.acked_now.len() >= half || self.inflight() <= half {
                            self.report_acks().await;
                        }
                        self.refill(&mut session).await;
                    }
                    Ok(_) => {}
                    Err(e) if diagnose::credentials_refused(e.as_ref()).is_some() => {
                        let code = diagnose::credentials_refused(e.as_ref()).unwrap_or_default();
                        if self.connector.rotation.cloud_refused(code) {
                            // New certificate files, not the login, may be why: try the
                            // previous ones before the long wait of a refused login.
                            self.fail_with(format!("the cloud refused the connection ({code})"), true);
                            self.connector.bridge.close_link();
                            return;
                        }
                        self.login_refused(code);
                        self.connector.bridge.close_link();
                        return;
                    }
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
                        if failure.refused {
                            self.connector.rotation.cloud_refused(&failure.text);
                        }
                        if !synchronized && failure.about_time {
                            self.wait_for_clock(failure.text);
                        } else {
                            self.fail_with(failure.text, failure.refused);
                        }
                        self.connector.bridge.close_link();
                        return;
                    }
                },
                () = self.backlog.stored(), if window_open => {
                    self.drained = false;
                    self.refill(&mut session).await;
                }
                leased = next_lease(&mut self.leasing) => {
                    self.leasing = None;
                    match leased {
                        Ok(rows) => {
                            self.drained = rows.len() < self.lease_asked;
                            self.ready.extend(rows);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "Uplink cannot read the queue");
                            self.drained = true;
                        }
                    }
                    if connected_at.is_some() {
                        self.refill(&mut session).await;
                    }
                }
                // Not while connecting: rumqttc's poll is not cancel-safe until the CONNACK
                // (a dropped poll abandons its half-open connection and the next one dials
                // again), so nothing but shutdown may interrupt it then.
                _ = tick.tick(), if connected_at.is_some() => {
                    self.report_acks().await;
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
                        // Whatever the queue said last, look again once a second.
                        self.drained = false;
                        self.refill(&mut session).await;
                    }
                    self.connector.review_crls_when_due();
                    self.start_renewal_when_due();
                    if self.renewing_since.is_none() && self.connector.renewed_identity() {
                        // Tried with the cloud at a quiet moment: nothing in flight.
                        tracing::info!("Renewed certificate files: reconnecting to use them");
                        self.renewing_since = Some(Instant::now());
                        self.set_state(UplinkState::RenewingCredentials);
                    }
                    self.show_certificate_refusal();
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
                        self.settle(&mut session).await;
                        session.disconnect().await;
                    }
                    return;
                }
            }
            self.update_awaiting();
            if self.renewal_ready() {
                tracing::info!(host = %self.settings.host, "Renewing the uplink's token: reconnecting with a fresh one");
                session.disconnect().await;
                self.renewed = true;
                return;
            }
        }
    }

    /// A refused candidate (renewed certificate files that failed the checks or that the
    /// cloud refused) is shown as the last error: the operator has to replace it.
    fn show_certificate_refusal(&mut self) {
        if let Some(why) = self.connector.rotation.take_refusal() {
            self.status.send_modify(|s| s.last_error = Some(why));
        }
    }

    /// A fresh login for the next connection (a token signed now, a password file read
    /// again), shown in the status without its secret.
    fn login(&mut self) -> Result<Option<Login>, String> {
        let Some(credentials) = &self.credentials else {
            return Ok(None);
        };
        let login = credentials
            .login(SystemTime::now())
            .map_err(|e| format!("cannot make the uplink's credentials: {e}"))?;
        self.renew_at = login.renew_at();
        let shown = CredentialStatus {
            kind: credentials.kind(),
            username: login.username.clone(),
            expires: login.validity.map(|(_, expires)| expires),
        };
        self.status.send_modify(|s| s.credentials = Some(shown));
        Ok(Some(login))
    }

    /// The cloud refused our credentials (or their absence): said as such, retried slowly.
    fn login_refused(&mut self, code: &str) {
        let why = match &self.credentials {
            Some(c) => format!(
                "the cloud refused the credentials for {} ({code})",
                c.username()
            ),
            None => format!(
                "the cloud refused a connection without credentials ({code}): set \
                 uplink.username and password_file, or a token"
            ),
        };
        self.login_refused = true;
        self.fail_with(why, true);
    }

    /// At 80 % of the token's life, stop sending and let what is in flight be acknowledged.
    fn start_renewal_when_due(&mut self) {
        if self.renewing_since.is_some() || self.renew_at.is_none_or(|at| SystemTime::now() < at) {
            return;
        }
        self.renewing_since = Some(Instant::now());
        self.set_state(UplinkState::RenewingCredentials);
    }

    /// Whether the renewal may end the session: nothing in flight, or the cloud took longer
    /// than `stall_timeout` to answer (then what is left goes back to the queue and is sent
    /// again on the new session).
    fn renewal_ready(&self) -> bool {
        self.renewing_since.is_some_and(|since| {
            self.inflight() == 0 || since.elapsed() >= self.settings.stall_timeout
        })
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

    /// Publishes what is leased while the window has room, and leases ahead.
    async fn refill(&mut self, session: &mut Session) {
        if self.renewing_since.is_some() {
            // Renewing: what is in flight is acknowledged first, nothing new is sent.
            return;
        }
        self.unpark().await;
        let window = usize::from(self.window);
        let inflight = self.inflight();
        if inflight > 0 && window.saturating_sub(inflight) < burst(window) {
            // Too little room for a burst: the next PUBACKs make it.
            self.lease_ahead();
            return;
        }
        let mut failed = Vec::new();
        while self.inflight() < window {
            let Some(stored) = self.ready.pop_front() else {
                break;
            };
            let id = stored.id;
            let StoredMessage { message, .. } = stored;
            let topic = cloud_topic(&self.settings, &message.topic);
            let tag = self
                .settings
                .message_id_property
                .as_deref()
                .map(|name| (name, id));
            if let Err(e) = session.publish(topic, message.payload, message.retain, tag) {
                // The request channel is sized for the window; this means the session is gone.
                tracing::warn!(error = %e, "Uplink publish not queued; it goes back to the queue");
                failed.push(id);
                continue;
            }
            self.unsent.push_back(Some(id));
        }
        if !failed.is_empty() {
            let _ = self.backlog.nack(failed).await;
        }
        self.lease_ahead();
    }

    /// Asks the queue for the next rows while half of the ready window is left, so that the
    /// lease (a round trip to the queue's writer and SQLite) is never what the link waits for:
    /// at most one window is leased ahead, at most one lease is on its way.
    fn lease_ahead(&mut self) {
        let window = usize::from(self.window);
        if self.leasing.is_some() || self.drained || self.ready.len() > window / 2 {
            return;
        }
        let asked = window - self.ready.len();
        let backlog = self.backlog.clone();
        self.lease_asked = asked;
        self.leasing = Some(Box::pin(async move { backlog.lease(asked).await }));
    }

    /// A PUBACK: the row is kept for the ack writer (see [`Drain::report_acks`]), or parked
    /// when the cloud refused it.
    fn acked(&mut self, pkid: u16, refused: Option<String>) {
        let Some(id) = self.by_pkid.remove(&pkid) else {
            return;
        };
        match refused {
            None => {
                self.acked_now.push(id);
                self.acked_unreported += 1;
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
                        self.acked_now.push(id);
                    }
                }
            }
        }
    }

    /// Hands the acknowledged rows to the ack writer (which deletes them) and counts them in
    /// the status, once for a batch: per message, the wake-ups of the writer and of every
    /// status watcher cost more than the rest of the drain.
    async fn report_acks(&mut self) {
        if !self.acked_now.is_empty() {
            let batch = std::mem::replace(
                &mut self.acked_now,
                Vec::with_capacity(usize::from(self.window)),
            );
            let _ = self.acks.send(batch).await;
        }
        let acked = std::mem::take(&mut self.acked_unreported);
        if acked == 0 {
            return;
        }
        self.acked_in_tick += acked;
        let now = SystemTime::now();
        self.status.send_modify(|s| {
            s.acked_total += acked;
            // Between the queue's counts (once a tick), the backlog follows the acknowledgements.
            s.backlog = s.backlog.saturating_sub(acked);
            s.time_to_empty = time_to_empty(s.time_to_empty.is_some(), s.backlog, s.drain_rate);
            s.last_ack = Some(now);
            s.inflight = self.unsent.len() + self.by_pkid.len();
        });
        if let Ok(t) = now.duration_since(UNIX_EPOCH) {
            metrics::gauge!(UPLINK_LAST_ACK_TIMESTAMP_SECONDS).set(t.as_secs_f64());
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
        // The rate over the last ticks, each as long as it really was (a busy loop may see a
        // tick late), counted from the connection: acknowledged / time covered.
        let now = Instant::now();
        let since = self
            .last_tick
            .filter(|t| connected_at.is_some_and(|c| *t >= c))
            .or(connected_at)
            .unwrap_or(now);
        self.last_tick = Some(now);
        if self.rate.len() == RATE_TICKS {
            self.rate.pop_front();
        }
        self.rate
            .push_back((std::mem::take(&mut self.acked_in_tick), now - since));
        let (acked, covered) = self
            .rate
            .iter()
            .fold((0, Duration::ZERO), |(n, d), (a, t)| (n + a, d + *t));
        let rate = if covered.is_zero() {
            0.0
        } else {
            acked as f64 / covered.as_secs_f64()
        };
        self.status.send_modify(|s| s.drain_rate = rate);
    }

    /// At shutdown: what the cloud has in hand gets its PUBACK, for up to [`SETTLE_AT_STOP`],
    /// so that it is deleted now rather than sent again after the restart. Nothing new is
    /// published.
    async fn settle(&mut self, session: &mut Session) {
        let deadline = tokio::time::Instant::now() + SETTLE_AT_STOP;
        while self.inflight() > 0 {
            let event = tokio::select! {
                event = session.poll() => event,
                () = tokio::time::sleep_until(deadline) => return,
            };
            match event {
                Ok(SessionEvent::Sent(pkid)) if pkid != 0 => {
                    if let Some(Some(id)) = self.unsent.pop_front() {
                        self.by_pkid.insert(pkid, id);
                    }
                }
                Ok(SessionEvent::Acked { pkid, refused }) => self.acked(pkid, refused),
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }

    /// Everything leased and not acknowledged goes back to the backlog, to be sent again in
    /// order after the next CONNACK.
    async fn return_inflight(&mut self) {
        // What the cloud has acknowledged is deleted, not sent again.
        self.report_acks().await;
        let mut ids: Vec<i64> = self.unsent.drain(..).flatten().collect();
        // A lease on its way is taken to its end: its rows are leased in the queue.
        if let Some(lease) = self.leasing.take()
            && let Ok(rows) = lease.await
        {
            ids.extend(rows.iter().map(|m| m.id));
        }
        ids.extend(self.ready.drain(..).map(|m| m.id));
        self.drained = false;
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

/// The least room in the window worth a publish while some are in flight (see
/// [`BURST_OF_WINDOW`]).
fn burst(window: usize) -> usize {
    (window / BURST_OF_WINDOW).max(1)
}

/// The time to empty `backlog` at `rate`, while draining at a measurable rate.
fn time_to_empty(draining: bool, backlog: u64, rate: f64) -> Option<Duration> {
    (draining && rate >= 1.0).then(|| Duration::from_secs_f64(backlog as f64 / rate))
}

/// The lease on its way, if any (pending for ever when there is none). Cancel-safe: the lease
/// itself stays in `leasing`.
async fn next_lease(leasing: &mut Option<Leasing>) -> Result<Vec<StoredMessage>, BacklogError> {
    match leasing {
        Some(lease) => lease.await,
        None => std::future::pending().await,
    }
}

async fn ack_writer(mut rx: mpsc::Receiver<Vec<i64>>, backlog: Arc<dyn Backlog>) {
    while let Some(mut batch) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            batch.extend(more);
        }
        if let Err(e) = backlog.ack(batch).await {
            // Not deleted: they will be sent again after a restart (at least once).
            tracing::warn!(error = %e, "Uplink could not delete acknowledged messages");
        }
    }
}
