//! From `[broker]` as written to [`BrokerSettings`]: every value checked, every default filled
//! in, every mistake recorded (not only the first).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use fieldlink_core::config::{Collector, duration, int, port};
use toml::Spanned;

use super::file::{BrokerFile, ListenerFile};
use super::{
    BrokerSettings, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_CONNECT_SIZE, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_DELAYED_WILL_BYTES, DEFAULT_MAX_DELAYED_WILLS, DEFAULT_MAX_FILTERS,
    DEFAULT_MAX_FILTERS_PER_IDENTITY, DEFAULT_MAX_INFLIGHT, DEFAULT_MAX_KEEP_ALIVE,
    DEFAULT_MAX_MESSAGE_RATE, DEFAULT_MAX_PACKET_SIZE, DEFAULT_MAX_SESSION_EXPIRY,
    DEFAULT_MAX_STORED_SESSIONS, DEFAULT_MAX_STORED_SESSIONS_PER_IDENTITY,
    DEFAULT_MAX_TOPIC_ALIASES, DEFAULT_MAX_UNAUTHENTICATED,
    DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS, DEFAULT_MAX_WILL_DELAY, DEFAULT_SEGMENT_COUNT,
    DEFAULT_SEGMENT_SIZE, DEFAULT_SLOW_SUBSCRIBER_TIMEOUT, DEFAULT_WRITE_TIMEOUT, ListenerSettings,
};

/// Validates `[broker]`, recording every mistake in `c`.
pub fn settings(file: &BrokerFile, c: &mut Collector<'_>) -> BrokerSettings {
    const MIB: i64 = 1024 * 1024;
    BrokerSettings {
        listeners: listeners(file.listeners.as_ref(), c),
        max_connections: int(
            c,
            "broker.max_connections",
            &file.max_connections,
            1..=10_000,
        )
        .unwrap_or(DEFAULT_MAX_CONNECTIONS),
        // MQTT's own ceiling is 256 MiB; a board has no use for more than a few MiB.
        max_packet_size: int(
            c,
            "broker.max_packet_size",
            &file.max_packet_size,
            128..=64 * MIB,
        )
        .unwrap_or(DEFAULT_MAX_PACKET_SIZE),
        max_inflight: int(c, "broker.max_inflight", &file.max_inflight, 1..=65_535)
            .unwrap_or(DEFAULT_MAX_INFLIGHT),
        // rumqttd panics below 1 KiB segments.
        segment_size: int(
            c,
            "broker.segment_size",
            &file.segment_size,
            1024..=256 * MIB,
        )
        .unwrap_or(DEFAULT_SEGMENT_SIZE),
        segment_count: int(c, "broker.segment_count", &file.segment_count, 2..=1000)
            .unwrap_or(DEFAULT_SEGMENT_COUNT),
        // rumqttd holds it in a u16 of milliseconds.
        connect_timeout: duration(
            c,
            "broker.connect_timeout",
            &file.connect_timeout,
            Duration::from_millis(100)..=Duration::from_millis(65_535),
            DEFAULT_CONNECT_TIMEOUT,
        ),
        max_message_rate: int(
            c,
            "broker.max_message_rate",
            &file.max_message_rate,
            1..=1_000_000,
        )
        .unwrap_or(DEFAULT_MAX_MESSAGE_RATE),
        max_filters: int(c, "broker.max_filters", &file.max_filters, 1..=100_000)
            .unwrap_or(DEFAULT_MAX_FILTERS),
        max_filters_per_identity: int(
            c,
            "broker.max_filters_per_identity",
            &file.max_filters_per_identity,
            1..=100_000,
        )
        .unwrap_or(DEFAULT_MAX_FILTERS_PER_IDENTITY),
        max_connect_size: int(
            c,
            "broker.max_connect_size",
            &file.max_connect_size,
            128..=64 * MIB,
        )
        .unwrap_or(DEFAULT_MAX_CONNECT_SIZE),
        max_unauthenticated: int(
            c,
            "broker.max_unauthenticated",
            &file.max_unauthenticated,
            1..=10_000,
        )
        .unwrap_or(DEFAULT_MAX_UNAUTHENTICATED),
        max_unauthenticated_per_address: int(
            c,
            "broker.max_unauthenticated_per_address",
            &file.max_unauthenticated_per_address,
            1..=10_000,
        )
        .unwrap_or(DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS),
        write_timeout: duration(
            c,
            "broker.write_timeout",
            &file.write_timeout,
            Duration::from_millis(100)..=Duration::from_secs(3600),
            DEFAULT_WRITE_TIMEOUT,
        ),
        slow_subscriber_timeout: duration(
            c,
            "broker.slow_subscriber_timeout",
            &file.slow_subscriber_timeout,
            Duration::from_millis(100)..=Duration::from_secs(3600),
            DEFAULT_SLOW_SUBSCRIBER_TIMEOUT,
        ),
        max_delayed_wills: int(
            c,
            "broker.max_delayed_wills",
            &file.max_delayed_wills,
            0..=100_000,
        )
        .unwrap_or(DEFAULT_MAX_DELAYED_WILLS),
        max_delayed_will_bytes: int(
            c,
            "broker.max_delayed_will_bytes",
            &file.max_delayed_will_bytes,
            0..=256 * MIB,
        )
        .unwrap_or(DEFAULT_MAX_DELAYED_WILL_BYTES),
        max_will_delay: duration(
            c,
            "broker.max_will_delay",
            &file.max_will_delay,
            Duration::ZERO..=Duration::from_secs(7 * 24 * 3600),
            DEFAULT_MAX_WILL_DELAY,
        ),
        // MQTT carries keep-alives in whole seconds, in two bytes.
        max_keep_alive: duration(
            c,
            "broker.max_keep_alive",
            &file.max_keep_alive,
            Duration::from_secs(1)..=Duration::from_secs(65_535),
            DEFAULT_MAX_KEEP_ALIVE,
        ),
        max_session_expiry: duration(
            c,
            "broker.max_session_expiry",
            &file.max_session_expiry,
            Duration::ZERO..=Duration::from_secs(30 * 86_400),
            DEFAULT_MAX_SESSION_EXPIRY,
        ),
        max_stored_sessions: int(
            c,
            "broker.max_stored_sessions",
            &file.max_stored_sessions,
            0..=100_000,
        )
        .unwrap_or(DEFAULT_MAX_STORED_SESSIONS),
        max_stored_sessions_per_identity: int(
            c,
            "broker.max_stored_sessions_per_identity",
            &file.max_stored_sessions_per_identity,
            0..=100_000,
        )
        .unwrap_or(DEFAULT_MAX_STORED_SESSIONS_PER_IDENTITY),
        // MQTT 5 carries an alias in two bytes, 0 meaning none.
        max_topic_aliases: int(
            c,
            "broker.max_topic_aliases",
            &file.max_topic_aliases,
            0..=65_535,
        )
        .unwrap_or(DEFAULT_MAX_TOPIC_ALIASES),
        access: super::access::settings(file.credentials_file.as_ref(), &file.acl, c),
    }
}

fn listeners(
    file: Option<&Spanned<Vec<Spanned<ListenerFile>>>>,
    c: &mut Collector<'_>,
) -> Vec<ListenerSettings> {
    let Some(file) = file else {
        return BrokerSettings::default().listeners;
    };
    if file.get_ref().is_empty() {
        c.at(
            "broker.listeners",
            Some(file.span()),
            "at least one listener is needed",
            "add a [[broker.listeners]] table, e.g. bind = \"127.0.0.1\", port = 1883",
        );
    }
    let mut seen_names: HashSet<String> = HashSet::new();
    let mut seen_addrs: Vec<SocketAddr> = Vec::new();
    let mut out = Vec::new();
    for (i, entry) in file.get_ref().iter().enumerate() {
        let key = format!("broker.listeners[{i}]");
        if let Some(listener) = listener(&key, entry, c) {
            if !seen_names.insert(listener.name.clone()) {
                let span = entry.get_ref().name.as_ref().map(Spanned::span);
                c.at(
                    &format!("{key}.name"),
                    span,
                    "another listener has this name",
                    "give each listener its own name",
                );
            }
            if let Some(other) = seen_addrs.iter().find(|a| overlaps(a, &listener.addr)) {
                let span = entry.get_ref().port.as_ref().map(Spanned::span);
                c.at(
                    &format!("{key}.port"),
                    span,
                    format!(
                        "address {} is already used by another listener ({other})",
                        listener.addr
                    ),
                    "give each listener its own port",
                );
            }
            seen_addrs.push(listener.addr);
            out.push(listener);
        }
    }
    out
}

/// Two listeners clash on the same port when one binds the other's address or a wildcard.
fn overlaps(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn listener(
    key: &str,
    entry: &Spanned<ListenerFile>,
    c: &mut Collector<'_>,
) -> Option<ListenerSettings> {
    let file = entry.get_ref();
    let errors_before = c.len();
    let defaults = ListenerSettings::default();
    let name = match &file.name {
        Some(name) if name.get_ref().trim().is_empty() => {
            c.at(
                &format!("{key}.name"),
                Some(name.span()),
                "must not be empty",
                "name the listener, e.g. \"lan\"",
            );
            String::new()
        }
        Some(name) => name.get_ref().clone(),
        None => key.to_owned(),
    };
    let ip = match &file.bind {
        None => defaults.addr.ip(),
        Some(bind) => bind.get_ref().parse::<IpAddr>().unwrap_or_else(|_| {
            c.at(
                &format!("{key}.bind"),
                Some(bind.span()),
                "not an IP address",
                "write an IPv4 or IPv6 address such as \"127.0.0.1\", \"0.0.0.0\" or \"::1\"",
            );
            defaults.addr.ip()
        }),
    };
    let port = match &file.port {
        None => {
            c.missing(
                &format!("{key}.port"),
                entry.span(),
                "every listener needs a port, e.g. port = 1883",
            );
            0
        }
        Some(_) => port(c, &format!("{key}.port"), &file.port).unwrap_or(0),
    };
    let mqtt = match &file.mqtt {
        Some(v) if v.get_ref() == "any" => None,
        None => None,
        Some(_) => Some(fieldlink_core::config::mqtt_version(
            c,
            &format!("{key}.mqtt"),
            &file.mqtt,
        )),
    };
    let mut listener = ListenerSettings {
        name,
        addr: SocketAddr::new(ip, port),
        mqtt,
        ..defaults
    };
    super::listener::security(key, entry, &mut listener, c);
    (c.len() == errors_before).then_some(listener)
}
