//! The expiry watch: the certificates in use (ours, the server's chain, the CA anchoring it)
//! and the days left to each, as metrics, log lines and alarms.

use std::time::{SystemTime, UNIX_EPOCH};

use fieldlink_core::metrics::UPLINK_CERT_EXPIRY_SECONDS;

use super::Drain;
use crate::expiry;
use crate::session::Session;

impl Drain {
    /// Expiry gauges and warnings for every certificate in use; alarms to the cloud when
    /// connected and a new threshold is crossed.
    pub(super) fn watch_expiry(&mut self, session: Option<&Session>) {
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
