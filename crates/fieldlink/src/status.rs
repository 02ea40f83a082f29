//! The gateway's status for operators: every component's health, the queue and the uplink,
//! written as `status.json` into the runtime directory every few seconds, and read back by
//! `fieldlink status`.
//!
//! A file rather than a socket: it needs no server in the gateway, a reader can never stall
//! it, and it lives in the runtime directory (tmpfs under systemd), so the SD card is not
//! worn by it. The web UI reads the same snapshot in-process.

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fieldlink_core::ports::{Health, StatusBoard};
use fieldlink_core::shutdown::Shutdown;
pub use fieldlink_core::status::{
    DiskView, GatewayStatus, LoginView, OtaView, QueueView, UplinkView,
};
use fieldlink_queue::Queue;
use fieldlink_uplink::UplinkStatus;

/// The file name in the runtime directory.
pub const STATUS_FILE: &str = "status.json";

/// How often the file is rewritten; a file older than three periods means a stopped gateway.
pub const STATUS_EVERY: Duration = Duration::from_secs(2);

/// Follows `/proc/self/io` between snapshots.
#[derive(Debug, Default)]
pub(crate) struct WearMeter {
    start: Option<u64>,
    last: Option<(u64, std::time::Instant)>,
    /// Bytes per second, smoothed over about five minutes.
    rate: Option<f64>,
}

impl WearMeter {
    /// The view now (zero where the kernel does not tell).
    pub(crate) fn read(&mut self) -> DiskView {
        let Some(now) = written_bytes() else {
            return DiskView::default();
        };
        let start = *self.start.get_or_insert(now);
        let at = std::time::Instant::now();
        if let Some((before, then)) = self.last {
            let seconds = at.duration_since(then).as_secs_f64();
            if seconds > 0.0 {
                let sample = now.saturating_sub(before) as f64 / seconds;
                // An exponential average with a time constant of about five minutes.
                let weight = (seconds / 300.0).min(1.0);
                self.rate = Some(self.rate.map_or(sample, |r| r + weight * (sample - r)));
            }
        }
        self.last = Some((now, at));
        let view = DiskView {
            written_bytes: now - start,
            bytes_per_day: self.rate.map_or(0, |r| (r * 86_400.0) as u64),
        };
        metrics::counter!(fieldlink_core::metrics::DISK_WRITTEN_BYTES_TOTAL)
            .absolute(view.written_bytes);
        metrics::gauge!(fieldlink_core::metrics::DISK_WRITTEN_BYTES_PER_DAY)
            .set(view.bytes_per_day as f64);
        view
    }
}

/// `write_bytes` of this process, if the kernel tells (task I/O accounting).
fn written_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The uplink's status as the snapshot shows it.
fn uplink_view(s: &UplinkStatus, now_s: i64) -> UplinkView {
    UplinkView {
        state: s.state.name().to_owned(),
        state_text: s.state.to_string(),
        connected: s.state.is_connected(),
        last_error: s.last_error.clone(),
        last_ack_ms: s.last_ack.map(unix_ms),
        last_heard_ms: s.last_heard.map(unix_ms),
        reconnects: s.reconnects,
        stalls: s.stalls,
        acked_total: s.acked_total,
        rejected_total: s.rejected_total,
        drain_rate: s.drain_rate,
        backlog: s.backlog,
        time_to_empty_s: s.time_to_empty.map(|d| d.as_secs()),
        certificates: s
            .certificates
            .iter()
            .map(|(name, not_after)| (name.clone(), (not_after - now_s).div_euclid(86_400)))
            .collect(),
        refused_subscriptions: s.refused_subscriptions.clone(),
        commands_total: s.commands_total,
        login: s.credentials.as_ref().map(|c| LoginView {
            kind: c.kind.clone(),
            username: c.username.clone(),
            expires_ms: c.expires.map(unix_ms),
        }),
        renewals: s.renewals,
    }
}

fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// "12 s ago", or "never".
fn ago(then_ms: Option<u64>, now_ms: u64) -> String {
    match then_ms {
        Some(t) => format!("{} s ago", now_ms.saturating_sub(t) / 1000),
        None => "never".into(),
    }
}

fn health_words(health: &Health) -> String {
    match health {
        Health::Starting => "starting".into(),
        Health::Up => "up".into(),
        Health::Degraded(why) => format!("degraded: {why}"),
        Health::Down(why) => format!("down: {why}"),
        Health::Stopped => "stopped".into(),
    }
}

/// A snapshot now.
pub async fn snapshot(
    board: &StatusBoard,
    queue: &Queue,
    uplink: Option<&UplinkStatus>,
    disk: DiskView,
) -> GatewayStatus {
    let written_ms = now_ms();
    // The queue lives in the data directory: it names the instance.
    let queue_dir = queue.path().parent().map(Path::to_path_buf);
    let queue = match queue.stats().await {
        Ok(stats) => QueueView {
            messages: stats.messages,
            bytes: stats.bytes,
            oldest_age_s: stats.oldest_age.map(|a| a.as_secs()),
            dropped_total: stats.dropped_total.values().sum(),
            refused_total: stats.refused_total.values().sum(),
            recovered_at_start: stats.replayed_at_open,
        },
        Err(e) => {
            tracing::debug!(error = %e, "No queue statistics for the status file");
            QueueView::default()
        }
    };
    GatewayStatus {
        version: crate::VERSION.into(),
        written_ms,
        clock_synchronized: fieldlink_core::clock::synchronized(),
        components: board
            .snapshot()
            .iter()
            .map(|(name, health)| ((*name).to_owned(), health_words(health)))
            .collect(),
        queue,
        uplink: uplink.map(|s| uplink_view(s, (written_ms / 1000) as i64)),
        disk,
        alarms: fieldlink_core::alarms::all(),
        data_dir: queue_dir,
        ota: None,
    }
}

/// Rewrites `dir/status.json` every [`STATUS_EVERY`] until `shutdown`, then removes it.
pub(crate) async fn publish(
    dir: PathBuf,
    board: StatusBoard,
    queue: Queue,
    uplink: Option<tokio::sync::watch::Receiver<UplinkStatus>>,
    share: tokio::sync::watch::Sender<Option<std::sync::Arc<GatewayStatus>>>,
    ota_dir: Option<PathBuf>,
    shutdown: Shutdown,
) {
    let path = dir.join(STATUS_FILE);
    let mut tick = tokio::time::interval(STATUS_EVERY);
    let mut wear = WearMeter::default();
    // A component going down is shown at once, not at the next tick (the file is on tmpfs).
    let mut health = board.watch();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = health.changed() => if changed.is_err() { break },
            () = shutdown.cancelled() => break,
        }
        let uplink_status = uplink.as_ref().map(|rx| rx.borrow().clone());
        let mut status = snapshot(&board, &queue, uplink_status.as_ref(), wear.read()).await;
        status.ota = ota_dir.as_deref().map(ota_view);
        if let Err(e) = write_atomically(&path, &status) {
            tracing::warn!(path = %path.display(), error = %e, "Cannot write the status file");
        }
        // The web UI's dashboard: the same snapshot, no second collection.
        share.send_replace(Some(std::sync::Arc::new(status)));
    }
    let _ = std::fs::remove_file(&path);
}

/// The OTA agent's state file in `dir`, as the status shows it (read, never written, here).
fn ota_view(dir: &Path) -> OtaView {
    let state = match fieldlink_ota::state::load(dir) {
        Ok(state) => state,
        Err(e) => {
            return OtaView {
                result: Some(e.to_string()),
                ..OtaView::default()
            };
        }
    };
    let job = state.job.as_ref();
    OtaView {
        booted: state.booted.clone(),
        version: state.running_version().map(str::to_owned),
        last: job.map(|j| format!("{} ({})", j.request.id, j.request.version)),
        phase: job.and_then(|j| {
            serde_json::to_value(j.phase)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
        }),
        result: job.and_then(|j| j.result.clone()),
    }
}

fn write_atomically(path: &Path, status: &GatewayStatus) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    // 0600 whatever the umask: the service's own business.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    std::io::Write::write_all(&mut file, &text)?;
    drop(file);
    // rename is atomic: a reader sees the old file or the new one, never half of one.
    std::fs::rename(&tmp, path)
}

/// Where the gateway that keeps its state in `data_dir` writes its status (see
/// [`crate::runtime_dir`]): the CLI reads that instance's file, never another's. A status file
/// in `$RUNTIME_DIRECTORY` (set for whatever systemd started) counts only if it says it is this
/// data directory's; else the instance's own place is read.
pub fn find_status_file(data_dir: &Path) -> PathBuf {
    let own = crate::instance_runtime_dir(data_dir).join(STATUS_FILE);
    let from_env = crate::runtime_dir(data_dir).join(STATUS_FILE);
    if from_env == own {
        return own;
    }
    let belongs = read(&from_env).is_ok_and(|(status, _)| {
        status
            .data_dir
            .as_deref()
            .is_none_or(|dir| same_dir(dir, data_dir))
    });
    if belongs { from_env } else { own }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Reads a status file; the error names the file and what to do.
pub fn read(path: &Path) -> anyhow::Result<(GatewayStatus, Duration)> {
    use anyhow::Context as _;
    let text = std::fs::read(path).with_context(|| {
        format!(
            "no status at {}: is the gateway running? (`systemctl status fieldlink`)",
            path.display()
        )
    })?;
    let status: GatewayStatus = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not a fieldlink status file", path.display()))?;
    let age = Duration::from_millis(now_ms().saturating_sub(status.written_ms));
    Ok((status, age))
}

/// "12.3 MB", for people.
fn bytes(n: u64) -> String {
    let n = n as f64;
    match n {
        n if n >= 1e9 => format!("{:.1} GB", n / 1e9),
        n if n >= 1e6 => format!("{:.1} MB", n / 1e6),
        n if n >= 1e3 => format!("{:.1} kB", n / 1e3),
        n => format!("{n:.0} B"),
    }
}

/// The status in words, for a terminal.
pub fn render(status: &GatewayStatus, age: Duration) -> String {
    let mut out = format!("fieldlink {}\n", status.version);
    if age > STATUS_EVERY * 3 {
        out += &format!(
            "NOT RUNNING: this status is {}s old (the gateway stopped or hangs)\n",
            age.as_secs()
        );
    }
    for (name, health) in &status.components {
        out += &format!("{name:<8} {health}\n");
    }
    for alarm in &status.alarms {
        out += &format!("ALARM    {alarm}\n");
    }
    if !status.clock_synchronized {
        out += "clock    NOT synchronized: message ages count the time the gateway has run; \
                certificate dates are not judged until time sync\n";
    }
    let q = &status.queue;
    out += &format!("queue    {} messages, {} bytes", q.messages, q.bytes);
    if let Some(age) = q.oldest_age_s {
        out += &format!(", oldest {age}s");
    }
    out += &format!(
        "; {} dropped, {} refused since start",
        q.dropped_total, q.refused_total
    );
    if q.recovered_at_start > 0 {
        out += &format!(
            "; {} recovered after an unclean stop (those acknowledged just before it are sent \
             again)",
            q.recovered_at_start
        );
    }
    out += "\n";
    let d = &status.disk;
    out += &format!(
        "disk     {} written since start, ~{}/day at the recent rate\n",
        bytes(d.written_bytes),
        bytes(d.bytes_per_day)
    );
    match &status.uplink {
        None => out += "uplink   not configured: messages stay queued\n",
        Some(u) => {
            out += &format!("uplink   {}", u.state_text);
            out += &format!(
                "; {} reconnects, {} stalls, {} delivered, {} refused, {:.0} msgs/s",
                u.reconnects, u.stalls, u.acked_total, u.rejected_total, u.drain_rate
            );
            match u.time_to_empty_s {
                Some(s) => out += &format!(", backlog {} (empty in ~{s}s)\n", u.backlog),
                None => out += &format!(", backlog {}\n", u.backlog),
            }
            // Times relative to when the snapshot was written: a stopped gateway's file
            // keeps telling what it last knew.
            out += &format!(
                "         last acknowledged by the cloud: {}; last heard from it: {}\n",
                ago(u.last_ack_ms, status.written_ms),
                ago(u.last_heard_ms, status.written_ms)
            );
            if let Some(e) = &u.last_error {
                out += &format!("         last error: {e}\n");
            }
            if let Some(login) = &u.login {
                out += &format!("         login: {} as {}", login.kind, login.username);
                if let Some(expires) = login.expires_ms {
                    let left = expires.saturating_sub(status.written_ms) / 1000;
                    out += &format!(
                        "; token expires in {left}s (renewed at 80 %, {} renewals)",
                        u.renewals
                    );
                }
                out += "\n";
            }
            for (name, days) in &u.certificates {
                let warn = if *days < 30 && status.clock_synchronized {
                    "  RENEW"
                } else {
                    ""
                };
                out += &format!("         certificate {name}: {days} days left{warn}\n");
            }
            for refused in &u.refused_subscriptions {
                out += &format!("         command subscription refused: {refused}\n");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldlink_ota::state::{Job, Phase, State};

    #[test]
    fn the_ota_view_shows_the_booted_slot_and_the_last_update() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            ota_view(dir.path()),
            OtaView::default(),
            "no state file yet"
        );
        let state = State {
            job: Some(Job {
                request: fieldlink_ota::request::InstallRequest {
                    id: "u-42".into(),
                    url: "https://updates.example/b.raucb".into(),
                    sha256: "00".repeat(32),
                    version: "2.1.0".into(),
                    not_before: None,
                    allow_downgrade: false,
                },
                phase: Phase::RolledBack,
                from_slot: Some("A".into()),
                from_version: Some("2.0.0".into()),
                to_slot: Some("B".into()),
                result: Some("the health check failed: uplink not connected".into()),
                started_ms: 0,
                finished_ms: None,
                reboot_asked_in: None,
                check_began: None,
            }),
            booted: Some("A".into()),
            slots: vec![],
        };
        fieldlink_ota::state::save(dir.path(), &state).unwrap();
        let view = ota_view(dir.path());
        assert_eq!(view.booted.as_deref(), Some("A"));
        assert_eq!(view.last.as_deref(), Some("u-42 (2.1.0)"));
        assert_eq!(view.phase.as_deref(), Some("rolled-back"));
        assert!(view.result.unwrap().contains("health check failed"));
        std::fs::write(dir.path().join("state.json"), "{").unwrap();
        assert!(ota_view(dir.path()).result.unwrap().contains("unreadable"));
    }
}
