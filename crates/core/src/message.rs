//! The message that travels from ingress (the broker edge, the field bridge) through the
//! durable queue to the uplink.

use crate::topic::TopicName;

/// MQTT quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QoS {
    /// Fire and forget.
    AtMostOnce = 0,
    /// Acknowledged, may be duplicated.
    AtLeastOnce = 1,
    /// Acknowledged in two steps, never duplicated.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for a wire value, if it is 0, 1 or 2.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
}

/// How urgent a message is: high-priority traffic is served before backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Priority {
    /// Bulk telemetry; drained after everything else.
    Low = 0,
    /// The default.
    #[default]
    Normal = 1,
    /// Alarms and command responses.
    High = 2,
}

/// One message bound somewhere: topic, payload and MQTT delivery flags.
///
/// The payload is a plain `Vec<u8>`: it is moved, never copied, from the place that received it
/// to the place that stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Where it is published.
    pub topic: TopicName,
    /// The bytes, opaque to fieldlink.
    pub payload: Vec<u8>,
    /// Delivery guarantee asked for.
    pub qos: QoS,
    /// Whether the broker keeps it for later subscribers.
    pub retain: bool,
}
