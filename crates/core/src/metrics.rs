//! Metric names, all in one place so that dashboards and alerts have one list to read.
//!
//! Components emit through the `metrics` facade; the exporter (Prometheus, served by the web
//! UI) is installed by the binary. Names carry their unit and `_total` for counters; labels
//! stay low-cardinality (route names and fixed reasons; no topics, no device serials).

/// Counter: messages stored in the queue.
pub const QUEUE_APPENDED_TOTAL: &str = "fieldlink_queue_appended_total";
/// Counter: messages acknowledged by the cloud and deleted from the queue.
pub const QUEUE_ACKED_TOTAL: &str = "fieldlink_queue_acked_total";
/// Counter: messages dropped by the queue; label `reason`: `age`, `drop_oldest`, `drop_newest`.
pub const QUEUE_DROPPED_TOTAL: &str = "fieldlink_queue_dropped_total";
/// Counter: appends refused; label `reason`: `full`, `disk_reserve`.
pub const QUEUE_REFUSED_TOTAL: &str = "fieldlink_queue_refused_total";
/// Gauge: messages held; label `stream` (a route name).
pub const QUEUE_DEPTH_MESSAGES: &str = "fieldlink_queue_depth_messages";
/// Gauge: bytes held; label `stream` (a route name).
pub const QUEUE_DEPTH_BYTES: &str = "fieldlink_queue_depth_bytes";
/// Gauge: age of the oldest message held, in seconds (0 when empty).
pub const QUEUE_OLDEST_AGE_SECONDS: &str = "fieldlink_queue_oldest_age_seconds";
/// Counter: bytes the gateway process has written to storage (the block layer) since it
/// started, from `/proc/self/io`: what wears the SD card.
pub const DISK_WRITTEN_BYTES_TOTAL: &str = "fieldlink_disk_written_bytes_total";
/// Gauge: bytes a day written to storage at the recent rate.
pub const DISK_WRITTEN_BYTES_PER_DAY: &str = "fieldlink_disk_written_bytes_per_day";

/// Gauge: client connections to the local broker now.
pub const BROKER_CONNECTIONS: &str = "fieldlink_broker_connections";
/// Counter: client connections accepted; label `listener`.
pub const BROKER_CONNECTIONS_TOTAL: &str = "fieldlink_broker_connections_total";
/// Counter: connections refused; label `reason` (`bad_credentials`, `anonymous`, `client_id`,
/// `will_acl`, `max_connections`, `handshake`, `handshake_timeout`, `protocol`, ...).
pub const BROKER_REFUSED_TOTAL: &str = "fieldlink_broker_refused_total";
/// Counter: publishes accepted from clients.
pub const BROKER_MESSAGES_IN_TOTAL: &str = "fieldlink_broker_messages_in_total";
/// Counter: publishes delivered to clients.
pub const BROKER_MESSAGES_OUT_TOTAL: &str = "fieldlink_broker_messages_out_total";
/// Counter: actions the ACLs denied; label `action`: `publish`, `subscribe`, `will`.
pub const BROKER_ACL_DENIED_TOTAL: &str = "fieldlink_broker_acl_denied_total";
/// Gauge: messages a subscriber has not been sent yet, for the few subscribers lagging most;
/// label `client_id` (set back to 0 when the client leaves the top).
pub const BROKER_SUBSCRIBER_LAG_MESSAGES: &str = "fieldlink_broker_subscriber_lag_messages";
/// Counter: messages the router skipped for subscribers that lagged too far behind (QoS 0
/// subscriptions, offline persistent sessions, disconnected slow subscribers); label `qos`
/// (the subscription's).
pub const BROKER_DROPPED_FOR_LAG_TOTAL: &str = "fieldlink_broker_dropped_for_lag_total";
/// Counter: MQTT 5 forwards the edge did not send to a subscriber; label `reason`
/// (`expired`: Message Expiry Interval passed, `max_packet_size`: larger than the client
/// accepts, `no_local`: its own publish, `retain_handling`: a retained message it asked not to
/// get now).
pub const BROKER_NOT_DELIVERED_TOTAL: &str = "fieldlink_broker_not_delivered_total";
/// Counter: Modbus polls (one per poll group run); labels `device`, `result` (`ok`, `failed`).
pub const SERIAL_POLLS_TOTAL: &str = "fieldlink_serial_polls_total";
/// Counter: Modbus requests sent (coalesced reads and writes); label `device`.
pub const SERIAL_REQUESTS_TOTAL: &str = "fieldlink_serial_requests_total";
/// Counter: field-device errors; labels `device` and `kind`: `timeout`, `exception`, `crc`,
/// `transport`, `protocol`, `decode`, `garbage` (a line that does not parse), `checksum` (NMEA),
/// `overlong` (a line longer than `max_line`).
pub const SERIAL_ERRORS_TOTAL: &str = "fieldlink_serial_errors_total";
/// Histogram: Modbus request latency in seconds; label `device`.
pub const SERIAL_REQUEST_SECONDS: &str = "fieldlink_serial_request_seconds";
/// Counter: values published by the bridge; label `device`.
pub const SERIAL_VALUES_TOTAL: &str = "fieldlink_serial_values_total";
/// Counter: write commands; labels `device`, `result` (`ok`, `exception`, `timeout`, `invalid`).
pub const SERIAL_WRITES_TOTAL: &str = "fieldlink_serial_writes_total";
/// Counter: serial ports or TCP connections (re)opened; labels `link`, `result` (`ok`, `failed`).
pub const SERIAL_OPENS_TOTAL: &str = "fieldlink_serial_opens_total";
/// Gauge: 1 while a device answers, 0 while it is offline; label `device`.
pub const SERIAL_DEVICE_ONLINE: &str = "fieldlink_serial_device_online";

/// Gauge: 1 for the uplink's current state, 0 for the states it left; label `state`
/// (`UplinkState::name`: `connected`, `connecting`, `disconnected`, `refused`, `stalled`, ...).
pub const UPLINK_STATE: &str = "fieldlink_uplink_state";
/// Counter: connections given up because nothing came back from the cloud
/// (`uplink.stall_timeout`).
pub const UPLINK_STALLS_TOTAL: &str = "fieldlink_uplink_stalls_total";
/// Gauge: Unix time (seconds) of the cloud's last PUBACK for one of our messages.
pub const UPLINK_LAST_ACK_TIMESTAMP_SECONDS: &str = "fieldlink_uplink_last_ack_timestamp_seconds";
/// Counter: commands from the cloud published locally.
pub const UPLINK_COMMANDS_TOTAL: &str = "fieldlink_uplink_commands_total";
/// Counter: messages the cloud refused (MQTT 5 negative PUBACK).
pub const UPLINK_REJECTED_TOTAL: &str = "fieldlink_uplink_rejected_total";
/// Gauge: seconds until a certificate in use expires; label `certificate`.
pub const UPLINK_CERT_EXPIRY_SECONDS: &str = "fieldlink_uplink_certificate_expiry_seconds";
/// Counter: TCP connection attempts to the cloud's addresses; label `result` (`connected`,
/// `failed`, `timeout`).
pub const UPLINK_DIAL_ATTEMPTS_TOTAL: &str = "fieldlink_uplink_dial_attempts_total";
