//! Commands from the cloud: the command filters subscribed on every CONNACK, and what arrives
//! published on the local bus.

use fieldlink_core::message::{Message, QoS};
use fieldlink_core::metrics::UPLINK_COMMANDS_TOTAL;
use fieldlink_core::topic::TopicName;

use super::Drain;
use crate::session::Session;

impl Drain {
    /// Subscribes to the command filters; on every CONNACK, as a clean session forgets them.
    pub(super) fn subscribe_commands(&self, session: &Session) {
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

    pub(super) fn subscribed(&mut self, codes: &[Option<String>]) {
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
    pub(super) async fn command(&mut self, topic: String, payload: Vec<u8>) {
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
}
