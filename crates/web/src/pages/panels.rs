//! The dashboard's panels: rendered for the page and again for every live update.

use fieldlink_core::status::GatewayStatus;
use maud::{Markup, html};

/// Days left at or under which a certificate is shown as a warning, an alarm, and critical.
const NOTICE_DAYS: i64 = 30;
const WARN_DAYS: i64 = 7;
const CRITICAL_DAYS: i64 = 1;

/// The panels for `status` (`None` before the first snapshot).
pub(crate) fn render(status: Option<&GatewayStatus>) -> Markup {
    let Some(s) = status else {
        return html! { p.muted { "Waiting for the gateway's first status…" } };
    };
    let now_ms = u64::try_from(now_s()).unwrap_or(0) * 1000;
    html! {
        @if !s.alarms.is_empty() {
            section.panel #alarms {
                h2.bad { "Needs attention" }
                ul { @for alarm in &s.alarms { li { (alarm) } } }
            }
        }
        div.grid {
            section.panel #components {
                h2 { "Components" }
                table {
                    @for (name, health) in &s.components {
                        tr { th { (name) } td class=(health_class(health)) { (health) } }
                    }
                }
                @if !s.clock_synchronized {
                    p.warn { "The clock is not synchronized yet: ages count running time only." }
                }
            }
            section.panel #queue {
                h2 { "Queue" }
                table {
                    tr { th { "Messages" } td.num #queue-depth { (s.queue.messages) } }
                    tr { th { "Bytes" } td.num { (bytes(s.queue.bytes)) } }
                    tr { th { "Oldest" } td.num { (s.queue.oldest_age_s.map(age).unwrap_or_else(|| "—".into())) } }
                    tr { th { "Dropped" } td.num class=[(s.queue.dropped_total > 0).then_some("warn")] { (s.queue.dropped_total) } }
                    tr { th { "Refused" } td.num class=[(s.queue.refused_total > 0).then_some("warn")] { (s.queue.refused_total) } }
                }
            }
            section.panel #uplink {
                h2 { "Uplink" }
                @match &s.uplink {
                    None => p.muted { "No uplink configured: messages stay queued." }
                    Some(u) => table {
                        tr { th { "State" } td class=(if u.connected { "ok" } else { "warn" }) #uplink-state { (u.state_text) } }
                        @if let Some(error) = &u.last_error {
                            tr { th { "Last error" } td.bad { (error) } }
                        }
                        tr { th { "Delivering" } td.num { (format!("{:.0}", u.drain_rate)) " msgs/s" } }
                        tr { th { "Time to empty" } td.num { (u.time_to_empty_s.map(age).unwrap_or_else(|| "—".into())) } }
                        tr { th { "Last acknowledged" } td.num { (ago(u.last_ack_ms, now_ms)) } }
                        tr { th { "Delivered since start" } td.num { (u.acked_total) } }
                        @for (name, days) in &u.certificates {
                            tr { th { "Certificate " (name) } td.num { (days_badge(Some(*days))) } }
                        }
                    }
                }
            }
            @if let Some(ota) = &s.ota {
                section.panel #ota {
                    h2 { "Updates" }
                    table {
                        tr { th { "Booted slot" } td { (ota.booted.as_deref().unwrap_or("unknown yet")) } }
                        tr { th { "Version" } td { (ota.version.as_deref().unwrap_or("unknown")) } }
                        tr { th { "Last update" } td { (ota.last.as_deref().unwrap_or("none")) } }
                        @if let Some(phase) = &ota.phase {
                            tr { th { "Phase" } td class=(phase_class(phase)) #ota-phase { (phase) } }
                        }
                        @if let Some(result) = &ota.result {
                            tr { th { "Result" } td { (result) } }
                        }
                    }
                }
            }
            section.panel #disk {
                h2 { "Storage wear" }
                table {
                    tr { th { "Written since start" } td.num { (bytes(s.disk.written_bytes)) } }
                    tr { th { "At the current rate" } td.num { (bytes(s.disk.bytes_per_day)) " a day" } }
                }
            }
        }
        p.muted { "fieldlink " (s.version) " · status of " (utc_time(s.written_ms)) }
    }
}

fn phase_class(phase: &str) -> &'static str {
    match phase {
        "done" => "ok",
        "failed" | "rolled-back" | "marked-bad" => "bad",
        _ => "warn",
    }
}

fn health_class(health: &str) -> &'static str {
    if health == "up" {
        "ok"
    } else if health.starts_with("down") {
        "bad"
    } else {
        "warn"
    }
}

/// Days left, coloured at 30, 7 and 1 day.
pub(crate) fn days_badge(days: Option<i64>) -> Markup {
    let Some(days) = days else {
        return html! { span.muted { "unknown" } };
    };
    let class = if days <= CRITICAL_DAYS {
        "bad"
    } else if days <= WARN_DAYS {
        "warn"
    } else if days <= NOTICE_DAYS {
        "notice"
    } else {
        "ok"
    };
    html! { span.badge class=(class) { (days) " d" } }
}

/// `1.5 MiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `3 h 12 min`.
pub(crate) fn age(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min {} s", seconds / 60, seconds % 60),
        3600..86_400 => format!("{} h {} min", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{} d {} h", seconds / 86_400, seconds % 86_400 / 3600),
    }
}

fn ago(then_ms: Option<u64>, now_ms: u64) -> String {
    match then_ms {
        Some(then) => format!("{} ago", age(now_ms.saturating_sub(then) / 1000)),
        None => "never".into(),
    }
}

pub(crate) fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `2026-12-04` for Unix seconds.
pub(crate) fn utc_date(unix_s: i64) -> String {
    let (y, m, d) = crate::identity::civil_date(unix_s.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// `2026-12-04 16:42:05 UTC` for Unix milliseconds.
fn utc_time(unix_ms: u64) -> String {
    let s = (unix_ms / 1000) as i64;
    let t = s.rem_euclid(86_400);
    format!(
        "{} {:02}:{:02}:{:02} UTC",
        utc_date(s),
        t / 3600,
        t % 3600 / 60,
        t % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldlink_core::status::OtaView;

    #[test]
    fn the_dashboard_shows_updates_only_with_the_ota_agent() {
        let mut status = GatewayStatus {
            version: "t".into(),
            written_ms: 0,
            clock_synchronized: true,
            components: vec![],
            queue: Default::default(),
            uplink: None,
            disk: Default::default(),
            alarms: vec![],
            data_dir: None,
            ota: None,
        };
        assert!(!render(Some(&status)).into_string().contains("Updates"));
        status.ota = Some(OtaView {
            booted: Some("B".into()),
            phase: Some("rolled-back".into()),
            ..OtaView::default()
        });
        let html = render(Some(&status)).into_string();
        assert!(
            html.contains(r#"<td id="ota-phase" class="bad">rolled-back</td>"#),
            "{html}"
        );
    }
}
