//! Metric names, all in one place so that dashboards and alerts have one list to read.
//!
//! Names carry their unit and `_total` for counters; labels stay low-cardinality (no topics,
//! no device serials).

/// Counter: MQTT connections accepted by the local broker.
pub const BROKER_CONNECTIONS_TOTAL: &str = "fieldlink_broker_connections_total";
/// Gauge: MQTT connections open on the local broker.
pub const BROKER_CONNECTIONS_OPEN: &str = "fieldlink_broker_connections_open";
/// Counter: messages received from clients by the local broker.
pub const BROKER_MESSAGES_IN_TOTAL: &str = "fieldlink_broker_messages_in_total";
/// Counter: messages handed to the outbox by routes.
pub const ROUTED_MESSAGES_TOTAL: &str = "fieldlink_routed_messages_total";
/// Gauge: 1 while a component is up, 0 otherwise; label `component`.
pub const COMPONENT_UP: &str = "fieldlink_component_up";
