//! The agent's reports to the cloud, appended to the durable queue (stream `ota`, high
//! priority) on the status topic: a report made just before a reboot is on disk before the
//! reboot is asked for, and the uplink sends it once the gateway is back.
//!
//! ```json
//! {"id":"rollout-42","state":"installing","version":"1.4.0","progress":40,
//!  "message":"Copying image to rootfs.1"}
//! {"id":"rollout-43","state":"refused","error":"another update is running","running":"rollout-42"}
//! ```

use std::sync::Arc;

use fieldlink_core::message::{Message, Priority, QoS};
use fieldlink_core::ports::{Outbox, OutboxEntry, OutboxError};
use fieldlink_core::topic::TopicName;
use serde::Serialize;

use crate::config::STATUS_STREAM;

/// One report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The request's id (`null` when the request had none readable).
    pub id: Option<String>,
    /// `accepted`, `downloading`, `verifying`, `installing`, `installed`, `rebooting`,
    /// `checking`, `done`, `health-failed`, `rolled-back`, `failed` or `refused`.
    pub state: &'static str,
    /// The bundle's version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Percent done of the current step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    /// What is happening, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why it failed or was refused, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The update still running, when a request is refused for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<String>,
    /// The slot concerned (bootname).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
}

/// Appends reports to the queue.
#[derive(Clone)]
pub struct Reporter {
    outbox: Arc<dyn Outbox>,
    topic: TopicName,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Reporter {
    /// Reports on `topic` through `outbox`.
    pub fn new(outbox: Arc<dyn Outbox>, topic: TopicName) -> Self {
        Self { outbox, topic }
    }

    /// Appends `report`; resolves once it is durable.
    pub async fn send(&self, report: Report) -> Result<(), OutboxError> {
        tracing::info!(
            id = report.id.as_deref().unwrap_or("-"),
            state = report.state,
            error = report.error.as_deref().unwrap_or(""),
            "OTA report"
        );
        let payload = serde_json::to_vec(&report).unwrap_or_default();
        self.outbox
            .append(vec![OutboxEntry {
                stream: STATUS_STREAM.to_owned(),
                priority: Priority::High,
                message: Message {
                    topic: self.topic.clone(),
                    payload,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                },
                properties: None,
            }])
            .await
    }

    /// Appends `report`, logging (not returning) a refusal of the queue: the update goes on.
    pub async fn note(&self, report: Report) {
        if let Err(e) = self.send(report).await {
            tracing::warn!(error = %e, "An OTA report could not be queued");
        }
    }
}
