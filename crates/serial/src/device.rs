//! What every device has, whatever its protocol: its metrics, the last published value of each
//! point, online/offline tracking, and turning values into messages.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fieldlink_core::message::{Message, QoS};
use fieldlink_core::metrics as names;
use fieldlink_core::ports::{Health, Ingress, StatusReporter};
use fieldlink_core::topic::TopicName;
use metrics::{Counter, Gauge, Histogram};

use crate::codec::Value;
use crate::config::{BridgeSettings, DeviceSettings, TemplateVars};
use crate::deadband::LastPublished;
use crate::payload;

/// The error kinds counted per device (the `kind` label).
pub const ERROR_KINDS: [&str; 9] = [
    "checksum",
    "crc",
    "decode",
    "exception",
    "garbage",
    "overlong",
    "protocol",
    "timeout",
    "transport",
];

/// Which devices are offline, shown as one entry on the status board.
#[derive(Debug)]
pub struct Board {
    reporter: StatusReporter,
    offline: Mutex<BTreeSet<String>>,
}

impl Board {
    /// The bridge's entry on the status board.
    pub fn new(reporter: StatusReporter) -> Self {
        reporter.set(Health::Up);
        Self {
            reporter,
            offline: Mutex::new(BTreeSet::new()),
        }
    }

    fn set(&self, device: &str, online: bool) {
        let Ok(mut offline) = self.offline.lock() else {
            return; // a panic elsewhere poisoned it; the board is only informative
        };
        if online {
            offline.remove(device);
        } else {
            offline.insert(device.to_owned());
        }
        let health = if offline.is_empty() {
            Health::Up
        } else {
            let list: Vec<&str> = offline.iter().map(String::as_str).collect();
            Health::Degraded(format!("offline: {}", list.join(", ")))
        };
        self.reporter.set(health);
    }

    /// Marks the bridge stopped (shutdown).
    pub fn stopped(&self) {
        self.reporter.set(Health::Stopped);
    }
}

/// Everything a device task shares with the others.
#[derive(Clone)]
pub struct Shared {
    /// `[bridge]`.
    pub bridge: Arc<BridgeSettings>,
    /// Where values go.
    pub ingress: Arc<dyn Ingress>,
    /// The status board entry.
    pub board: Arc<Board>,
}

/// One device's running state.
pub struct Device {
    /// Its settings.
    pub cfg: DeviceSettings,
    shared: Shared,
    last: Vec<LastPublished>,
    /// Failed polls (or silent windows) in a row.
    failures: u32,
    /// `None` until the first poll settles it.
    online: Option<bool>,
    /// The topic of each point's value, rendered once.
    value_topics: Vec<TopicName>,
    metrics: DeviceMetrics,
}

struct DeviceMetrics {
    polls_ok: Counter,
    polls_failed: Counter,
    requests: Counter,
    latency: Histogram,
    values: Counter,
    errors: Vec<Counter>,
    online: Gauge,
}

impl Device {
    /// Prepares a device; topics are rendered once here.
    pub fn new(cfg: DeviceSettings, shared: Shared) -> Self {
        let device = cfg.name.clone();
        let value_topics = cfg
            .points
            .iter()
            .map(|p| {
                topic(
                    &shared.bridge.value_topic,
                    &shared.bridge.site,
                    &cfg.name,
                    &p.name,
                )
            })
            .collect();
        let metrics = DeviceMetrics {
            polls_ok: metrics::counter!(names::SERIAL_POLLS_TOTAL, "device" => device.clone(), "result" => "ok"),
            polls_failed: metrics::counter!(names::SERIAL_POLLS_TOTAL, "device" => device.clone(), "result" => "failed"),
            requests: metrics::counter!(names::SERIAL_REQUESTS_TOTAL, "device" => device.clone()),
            latency: metrics::histogram!(names::SERIAL_REQUEST_SECONDS, "device" => device.clone()),
            values: metrics::counter!(names::SERIAL_VALUES_TOTAL, "device" => device.clone()),
            errors: ERROR_KINDS
                .iter()
                .map(|kind| metrics::counter!(names::SERIAL_ERRORS_TOTAL, "device" => device.clone(), "kind" => *kind))
                .collect(),
            online: metrics::gauge!(names::SERIAL_DEVICE_ONLINE, "device" => device),
        };
        Self {
            last: cfg
                .points
                .iter()
                .map(|_| LastPublished::default())
                .collect(),
            cfg,
            shared,
            failures: 0,
            online: None,
            value_topics,
            metrics,
        }
    }

    /// Whether the device is offline now.
    pub fn is_offline(&self) -> bool {
        self.online == Some(false)
    }

    /// Counts an error of `kind` (one of [`ERROR_KINDS`]).
    pub fn error(&self, kind: &str) {
        if let Some(i) = ERROR_KINDS.iter().position(|k| *k == kind) {
            self.metrics.errors[i].increment(1);
        }
    }

    /// Counts one request and its latency.
    pub fn request(&self, started: Instant) {
        self.metrics.requests.increment(1);
        self.metrics.latency.record(started.elapsed().as_secs_f64());
    }

    /// Adds the message for point `i`'s `value` to `out` if it is worth publishing.
    pub fn offer(
        &mut self,
        i: usize,
        value: &Value,
        now: Instant,
        ts: payload::Stamp,
        out: &mut Vec<Message>,
    ) {
        let (Some(point), Some(last), Some(topic)) = (
            self.cfg.points.get(i),
            self.last.get_mut(i),
            self.value_topics.get(i),
        ) else {
            return;
        };
        if last.offer(value, now, point.deadband.0, point.heartbeat) {
            self.metrics.values.increment(1);
            out.push(Message {
                topic: topic.clone(),
                payload: payload::value(Some(value), point.unit.as_deref(), ts),
                qos: self.shared.bridge.qos,
                retain: self.shared.bridge.retain,
            });
        }
    }

    /// Adds the device's snapshot of `values` to `out`, if it publishes snapshots.
    pub fn snapshot(&self, values: &[(usize, Value)], ts: payload::Stamp, out: &mut Vec<Message>) {
        if !self.cfg.snapshot || values.is_empty() {
            return;
        }
        let named = values
            .iter()
            .filter_map(|(i, v)| Some((self.cfg.points.get(*i)?.name.as_str(), v)));
        out.push(Message {
            topic: topic(
                &self.shared.bridge.snapshot_topic,
                &self.shared.bridge.site,
                &self.cfg.name,
                "",
            ),
            payload: payload::snapshot(named, ts),
            qos: self.shared.bridge.qos,
            retain: self.shared.bridge.retain,
        });
    }

    /// Records a poll's outcome: online again after a success, offline after `offline_after`
    /// failures in a row. Status changes are added to `out`.
    pub fn poll_done(&mut self, ok: bool, out: &mut Vec<Message>) {
        if ok {
            self.metrics.polls_ok.increment(1);
            self.failures = 0;
            if self.online != Some(true) {
                self.set_online(true, out);
            }
        } else {
            self.metrics.polls_failed.increment(1);
            self.failures = self.failures.saturating_add(1);
            if self.failures >= self.cfg.offline_after && self.online != Some(false) {
                self.set_online(false, out);
            }
        }
    }

    fn set_online(&mut self, online: bool, out: &mut Vec<Message>) {
        self.online = Some(online);
        self.metrics.online.set(if online { 1.0 } else { 0.0 });
        self.shared.board.set(&self.cfg.name, online);
        if online {
            tracing::info!(device = %self.cfg.name, "Device answers: online");
        } else {
            tracing::warn!(device = %self.cfg.name, failures = self.failures, "Device does not answer: offline");
            // Each point gets a bad reading, and its next good one is published whatever the
            // deadband says.
            let ts = payload::Stamp::now();
            for (i, point) in self.cfg.points.iter().enumerate() {
                if let (Some(topic), Some(last)) = (self.value_topics.get(i), self.last.get_mut(i))
                {
                    last.reset();
                    out.push(Message {
                        topic: topic.clone(),
                        payload: payload::value(None, point.unit.as_deref(), ts),
                        qos: self.shared.bridge.qos,
                        retain: self.shared.bridge.retain,
                    });
                }
            }
        }
        out.push(Message {
            topic: topic(
                &self.shared.bridge.status_topic,
                &self.shared.bridge.site,
                &self.cfg.name,
                "",
            ),
            payload: if online {
                b"online".to_vec()
            } else {
                b"offline".to_vec()
            },
            qos: QoS::AtLeastOnce,
            retain: true,
        });
    }

    /// Publishes `messages` through ingress (stored first when routed); failures are logged.
    pub async fn publish(&self, messages: Vec<Message>) {
        if messages.is_empty() {
            return;
        }
        if let Err(e) = self.shared.ingress.publish(messages).await {
            tracing::warn!(device = %self.cfg.name, error = %e, "Values not published");
        }
    }

    /// The bridge-wide settings.
    pub fn bridge(&self) -> &BridgeSettings {
        &self.shared.bridge
    }
}

/// Renders a template into a topic. Validated templates with validated names always give a
/// valid topic; should one not, the fallback keeps the device's values apart from others'.
pub fn topic(
    template: &crate::config::Template,
    site: &str,
    device: &str,
    point: &str,
) -> TopicName {
    let rendered = template.render(TemplateVars {
        site,
        device,
        point,
    });
    TopicName::new(rendered)
        .or_else(|_| TopicName::new(format!("fieldlink/{device}/{point}")))
        .or_else(|_| TopicName::new("fieldlink/invalid"))
        .unwrap_or_else(|_| unreachable_topic())
}

#[allow(clippy::expect_used)]
fn unreachable_topic() -> TopicName {
    // "fieldlink" is a valid topic name: no wildcard, not empty, no NUL.
    TopicName::new("fieldlink").expect("a constant valid topic")
}
