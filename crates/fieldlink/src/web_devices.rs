//! What the web UI's devices page needs from the field bridge, taken from the local broker as
//! any client would: the values, the retained status and the write answers the bridge
//! publishes, and write commands published on its command topics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fieldlink_core::message::{Message, QoS};
use fieldlink_core::ports::LocalBus;
use fieldlink_core::shutdown::Shutdown;
use fieldlink_core::topic::{TopicFilter, TopicName};
use fieldlink_serial::config::{BridgeSettings, DataType, DeviceSettings, TemplateVars};
use fieldlink_web::devices::{DeviceView, PointView, Writable, WriteValue};

/// How long a write may wait for the device's answer (the bridge answers every command, after
/// its own timeout and retries).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct Reading {
    value: Option<serde_json::Value>,
    quality: Option<String>,
    at: Instant,
}

/// The last reading of every point and each device's status, kept from the local broker.
pub(crate) struct DeviceWatch {
    bridge: BridgeSettings,
    devices: Vec<DeviceSettings>,
    bus: Arc<dyn LocalBus>,
    /// Each point's value topic and the (device, point) it belongs to, made once: a value
    /// message costs one lookup, not a topic rendered per point.
    points_by_topic: HashMap<String, (String, String)>,
    readings: Mutex<HashMap<(String, String), Reading>>,
    online: Mutex<HashMap<String, bool>>,
    next_id: AtomicU64,
}

impl DeviceWatch {
    /// Follows every device's values and status on `tasks` until they stop.
    pub(crate) fn start(
        bridge: BridgeSettings,
        devices: Vec<DeviceSettings>,
        bus: Arc<dyn LocalBus>,
        tasks: &Shutdown,
    ) -> anyhow::Result<Arc<Self>> {
        let value_topic = |device: &str, point: &str| {
            bridge.value_topic.render(TemplateVars {
                site: &bridge.site,
                device,
                point,
            })
        };
        let points_by_topic = devices
            .iter()
            .flat_map(|d| {
                d.points.iter().map(|p| {
                    (
                        value_topic(&d.name, &p.name),
                        (d.name.clone(), p.name.clone()),
                    )
                })
            })
            .collect();
        let watch = Arc::new(Self {
            points_by_topic,
            bridge,
            devices,
            bus,
            readings: Mutex::new(HashMap::new()),
            online: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        });
        for device in &watch.devices {
            for (filter, is_status) in [
                (
                    watch.topic(&watch.bridge.value_topic, &device.name, "+"),
                    false,
                ),
                (
                    watch.topic(&watch.bridge.status_topic, &device.name, ""),
                    true,
                ),
            ] {
                let filter = TopicFilter::new(filter)?;
                let mut rx = watch.bus.subscribe(&filter, 256)?;
                let (watch, name, stop) = (watch.clone(), device.name.clone(), tasks.clone());
                tasks.spawn(async move {
                    loop {
                        let message = tokio::select! {
                            () = stop.cancelled() => return,
                            m = rx.recv() => match m { Some(m) => m, None => return },
                        };
                        if is_status {
                            watch.saw_status(&name, &message.payload);
                        } else {
                            watch.saw_value(&message);
                        }
                    }
                });
            }
        }
        Ok(watch)
    }

    fn topic(
        &self,
        template: &fieldlink_serial::config::Template,
        device: &str,
        point: &str,
    ) -> String {
        template.render(TemplateVars {
            site: &self.bridge.site,
            device,
            point,
        })
    }

    fn saw_status(&self, device: &str, payload: &[u8]) {
        let online = match payload {
            b"online" => true,
            b"offline" => false,
            _ => return,
        };
        lock(&self.online).insert(device.to_owned(), online);
    }

    fn saw_value(&self, message: &Message) {
        // The value filter also matches the snapshot and status topics: points only.
        let Some(key) = self.points_by_topic.get(message.topic.as_str()) else {
            return;
        };
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&message.payload) else {
            return;
        };
        let reading = Reading {
            value: json.get("value").cloned(),
            quality: json
                .get("quality")
                .and_then(|q| q.as_str())
                .map(str::to_owned),
            at: Instant::now(),
        };
        lock(&self.readings).insert(key.clone(), reading);
    }

    /// Every device as the page shows it; `errors` gives each device's error counters.
    pub(crate) fn view(&self, errors: &dyn Fn(&str) -> Vec<(String, u64)>) -> Vec<DeviceView> {
        let readings = lock(&self.readings);
        let online = lock(&self.online);
        self.devices
            .iter()
            .map(|device| DeviceView {
                name: device.name.clone(),
                online: online.get(&device.name).copied(),
                errors: errors(&device.name),
                points: device
                    .points
                    .iter()
                    .map(|point| {
                        let reading = readings.get(&(device.name.clone(), point.name.clone()));
                        PointView {
                            name: point.name.clone(),
                            unit: point.unit.clone(),
                            write: point.writable.then_some(Writable {
                                boolean: point.data_type == DataType::Bool,
                                min: point.min.map(|m| m.0),
                                max: point.max.map(|m| m.0),
                            }),
                            value: reading.and_then(|r| r.value.clone()),
                            quality: reading.and_then(|r| r.quality.clone()),
                            age_s: reading.map(|r| r.at.elapsed().as_secs()),
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    /// Publishes a write command and waits for the bridge's answer to it.
    pub(crate) async fn write(
        &self,
        device: &str,
        point: &str,
        value: WriteValue,
    ) -> Result<String, String> {
        let id = format!("web-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let answers = TopicFilter::new(self.topic(&self.bridge.response_topic, device, point))
            .map_err(|e| e.to_string())?;
        // Subscribed before the command goes out, so the answer cannot be missed.
        let mut rx = self
            .bus
            .subscribe(&answers, 16)
            .map_err(|e| e.to_string())?;
        let command = Message {
            topic: TopicName::new(self.topic(&self.bridge.command_topic, device, point))
                .map_err(|e| e.to_string())?,
            payload: serde_json::json!({ "value": value.to_json(), "id": id })
                .to_string()
                .into_bytes(),
            qos: QoS::AtLeastOnce,
            retain: false,
        };
        self.bus.publish(command).await.map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(WRITE_TIMEOUT, async {
            while let Some(message) = rx.recv().await {
                let Ok(json) = serde_json::from_slice::<serde_json::Value>(&message.payload) else {
                    continue;
                };
                if json.get("id").and_then(|i| i.as_str()) == Some(id.as_str()) {
                    return Some(json);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| "no answer from the field bridge in time".to_owned())?;
        let result = answer
            .get("result")
            .and_then(|r| r.as_str())
            .unwrap_or("unknown");
        let detail = answer
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "result" | "id" | "ts" | "ts_synced"))
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let words = if detail.is_empty() {
            result.to_owned()
        } else {
            format!("{result} ({detail})")
        };
        if result == "ok" {
            Ok(words)
        } else {
            Err(words)
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `fieldlink_serial_errors_total{device="…",kind="…"} N` lines of a Prometheus text page, for
/// one device.
pub(crate) fn errors_of(metrics: &str, device: &str) -> Vec<(String, u64)> {
    let wanted = format!("device=\"{device}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("fieldlink_serial_errors_total{") && l.contains(&wanted))
        .filter_map(|l| {
            let kind = l.split("kind=\"").nth(1)?.split('"').next()?.to_owned();
            let n = l.rsplit(' ').next()?.parse::<f64>().ok()? as u64;
            (n > 0).then_some((kind, n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_counters_are_read_per_device_from_the_metrics_page() {
        let page = "# TYPE fieldlink_serial_errors_total counter\n\
                    fieldlink_serial_errors_total{device=\"boiler\",kind=\"timeout\"} 3\n\
                    fieldlink_serial_errors_total{device=\"boiler\",kind=\"crc\"} 0\n\
                    fieldlink_serial_errors_total{device=\"plc\",kind=\"timeout\"} 7\n";
        assert_eq!(
            super::errors_of(page, "boiler"),
            vec![("timeout".to_owned(), 3)]
        );
        assert_eq!(
            super::errors_of(page, "plc"),
            vec![("timeout".to_owned(), 7)]
        );
    }
}
