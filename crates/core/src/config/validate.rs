//! From the file layer to [`Settings`]: every value checked, every default filled in, every
//! mistake recorded (not only the first).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use toml::Spanned;

use super::error::Collector;
use super::file::{BrokerFile, FileConfig, GatewayFile, ListenerFile, QueueFile, RouteFile};
use super::{
    BrokerSettings, Durability, FullPolicy, GatewaySettings, ListenerSettings, MqttVersion,
    QueueSettings, Route, Settings, StreamLimits, default_connect_timeout, default_max_connections,
    default_max_inflight, default_max_packet_size, default_segment_count, default_segment_size,
    default_shutdown_grace,
};
use crate::message::Priority;
use crate::topic::TopicFilter;

pub(super) fn settings(file: &FileConfig, c: &mut Collector<'_>) -> Settings {
    Settings {
        gateway: gateway(&file.gateway, c),
        broker: broker(&file.broker, c),
        queue: queue(&file.queue, c),
        uplink: file
            .uplink
            .as_ref()
            .and_then(|u| super::uplink::settings(u, c)),
        routes: routes(&file.routes, c),
        bridge: super::device_rules::bridge(&file.bridge, c),
        devices: super::device_rules::devices(&file.devices, c),
    }
}

fn gateway(file: &GatewayFile, c: &mut Collector<'_>) -> GatewaySettings {
    let data_dir = file.data_dir.as_ref().and_then(|dir| {
        if dir.get_ref().as_os_str().is_empty() {
            c.at(
                "gateway.data_dir",
                Some(dir.span()),
                "must not be empty",
                "give a directory, or leave the key out to use the default",
            );
            return None;
        }
        Some(dir.get_ref().clone())
    });
    GatewaySettings {
        data_dir,
        shutdown_grace: duration(
            c,
            "gateway.shutdown_grace",
            &file.shutdown_grace,
            Duration::from_millis(100)..=Duration::from_secs(600),
            default_shutdown_grace(),
        ),
    }
}

fn broker(file: &BrokerFile, c: &mut Collector<'_>) -> BrokerSettings {
    const MIB: i64 = 1024 * 1024;
    let defaults = BrokerSettings::default();
    BrokerSettings {
        listeners: listeners(file.listeners.as_ref(), c),
        max_connections: int(
            c,
            "broker.max_connections",
            &file.max_connections,
            1..=10_000,
        )
        .unwrap_or_else(default_max_connections),
        // MQTT's own ceiling is 256 MiB; a board has no use for more than a few MiB.
        max_packet_size: int(
            c,
            "broker.max_packet_size",
            &file.max_packet_size,
            128..=64 * MIB,
        )
        .unwrap_or_else(default_max_packet_size),
        max_inflight: int(c, "broker.max_inflight", &file.max_inflight, 1..=65_535)
            .unwrap_or_else(default_max_inflight),
        // rumqttd panics below 1 KiB segments.
        segment_size: int(
            c,
            "broker.segment_size",
            &file.segment_size,
            1024..=256 * MIB,
        )
        .unwrap_or_else(default_segment_size),
        segment_count: int(c, "broker.segment_count", &file.segment_count, 1..=1000)
            .unwrap_or_else(default_segment_count),
        // rumqttd holds it in a u16 of milliseconds.
        connect_timeout: duration(
            c,
            "broker.connect_timeout",
            &file.connect_timeout,
            Duration::from_millis(100)..=Duration::from_millis(65_535),
            default_connect_timeout(),
        ),
        max_message_rate: int(
            c,
            "broker.max_message_rate",
            &file.max_message_rate,
            1..=1_000_000,
        )
        .unwrap_or(1000),
        max_filters: int(c, "broker.max_filters", &file.max_filters, 1..=100_000).unwrap_or(128),
        max_filters_per_identity: int(
            c,
            "broker.max_filters_per_identity",
            &file.max_filters_per_identity,
            1..=100_000,
        )
        .unwrap_or(defaults.max_filters_per_identity),
        max_connect_size: int(
            c,
            "broker.max_connect_size",
            &file.max_connect_size,
            128..=64 * MIB,
        )
        .unwrap_or(defaults.max_connect_size),
        max_unauthenticated: int(
            c,
            "broker.max_unauthenticated",
            &file.max_unauthenticated,
            1..=10_000,
        )
        .unwrap_or(defaults.max_unauthenticated),
        max_unauthenticated_per_address: int(
            c,
            "broker.max_unauthenticated_per_address",
            &file.max_unauthenticated_per_address,
            1..=10_000,
        )
        .unwrap_or(defaults.max_unauthenticated_per_address),
        write_timeout: duration(
            c,
            "broker.write_timeout",
            &file.write_timeout,
            Duration::from_millis(100)..=Duration::from_secs(3600),
            defaults.write_timeout,
        ),
        max_delayed_wills: int(
            c,
            "broker.max_delayed_wills",
            &file.max_delayed_wills,
            0..=100_000,
        )
        .unwrap_or(defaults.max_delayed_wills),
        max_delayed_will_bytes: int(
            c,
            "broker.max_delayed_will_bytes",
            &file.max_delayed_will_bytes,
            0..=256 * MIB,
        )
        .unwrap_or(defaults.max_delayed_will_bytes),
        max_will_delay: duration(
            c,
            "broker.max_will_delay",
            &file.max_will_delay,
            Duration::ZERO..=Duration::from_secs(7 * 24 * 3600),
            defaults.max_will_delay,
        ),
        access: super::access::settings(file.credentials_file.as_ref(), &file.acl, c),
    }
}

fn queue(file: &QueueFile, c: &mut Collector<'_>) -> QueueSettings {
    const GIB: i64 = 1024 * 1024 * 1024;
    let defaults = QueueSettings::default();
    let max_age = duration(
        c,
        "queue.max_age",
        &file.max_age,
        Duration::ZERO..=Duration::from_secs(10 * 366 * 24 * 3600),
        defaults.max_age.unwrap_or_default(),
    );
    QueueSettings {
        max_bytes: int(c, "queue.max_bytes", &file.max_bytes, 1024..=1024 * GIB)
            .unwrap_or(defaults.max_bytes),
        max_messages: int(c, "queue.max_messages", &file.max_messages, 1..=i64::MAX)
            .unwrap_or(defaults.max_messages),
        max_age: (!max_age.is_zero()).then_some(max_age),
        when_full: file
            .when_full
            .as_ref()
            .and_then(|p| full_policy(c, "queue.when_full", p))
            .unwrap_or(defaults.when_full),
        disk_reserve: int(c, "queue.disk_reserve", &file.disk_reserve, 0..=1024 * GIB)
            .unwrap_or(defaults.disk_reserve),
        commit_interval: duration(
            c,
            "queue.commit_interval",
            &file.commit_interval,
            Duration::ZERO..=Duration::from_secs(1),
            defaults.commit_interval,
        ),
        durability: file
            .durability
            .as_ref()
            .and_then(|d| durability(c, "queue.durability", d))
            .unwrap_or(defaults.durability),
    }
}

fn durability(c: &mut Collector<'_>, key: &str, value: &Spanned<String>) -> Option<Durability> {
    match value.get_ref().as_str() {
        "power-safe" => Some(Durability::PowerSafe),
        "process-crash" => Some(Durability::ProcessCrash),
        _ => {
            c.at(
                key,
                Some(value.span()),
                "unknown durability",
                "write \"power-safe\" (survives a power cut) or \"process-crash\" (survives a \
                 crash of the process only)",
            );
            None
        }
    }
}

fn full_policy(c: &mut Collector<'_>, key: &str, value: &Spanned<String>) -> Option<FullPolicy> {
    match value.get_ref().as_str() {
        "reject" => Some(FullPolicy::Reject),
        "drop_oldest" => Some(FullPolicy::DropOldest),
        "drop_newest" => Some(FullPolicy::DropNewest),
        _ => {
            c.at(
                key,
                Some(value.span()),
                "unknown policy",
                "write \"reject\", \"drop_oldest\" or \"drop_newest\"",
            );
            None
        }
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
    let mut seen_names: HashMap<String, ()> = HashMap::new();
    let mut seen_addrs: Vec<SocketAddr> = Vec::new();
    let mut out = Vec::new();
    for (i, entry) in file.get_ref().iter().enumerate() {
        let key = format!("broker.listeners[{i}]");
        if let Some(listener) = listener(&key, entry, c) {
            if seen_names.insert(listener.name.clone(), ()).is_some() {
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
        Some(_) => int(c, &format!("{key}.port"), &file.port, 1..=65_535).unwrap_or(0),
    };
    let mqtt = match &file.mqtt {
        Some(v) if v.get_ref() == "any" => None,
        None => None,
        Some(_) => Some(mqtt_version(c, &format!("{key}.mqtt"), &file.mqtt)),
    };
    let mut listener = ListenerSettings {
        name,
        addr: SocketAddr::new(ip, port),
        mqtt,
        ..ListenerSettings::default()
    };
    super::listener::security(key, entry, &mut listener, c);
    (c.len() == errors_before).then_some(listener)
}

fn routes(file: &[Spanned<RouteFile>], c: &mut Collector<'_>) -> Vec<Route> {
    let mut out: Vec<Route> = Vec::new();
    for (i, entry) in file.iter().enumerate() {
        let key = format!("routes[{i}]");
        let route = entry.get_ref();
        let errors_before = c.len();
        let name = match &route.name {
            None => {
                c.missing(
                    &format!("{key}.name"),
                    entry.span(),
                    "name the route's stream, e.g. name = \"telemetry\"",
                );
                String::new()
            }
            Some(name) => {
                let valid = !name.get_ref().is_empty()
                    && name.get_ref().len() <= 64
                    && name
                        .get_ref()
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_');
                if !valid {
                    c.at(
                        &format!("{key}.name"),
                        Some(name.span()),
                        "not a valid stream name",
                        "use 1 to 64 letters, digits, '-' or '_'",
                    );
                } else if out.iter().any(|r| r.name == *name.get_ref()) {
                    c.at(
                        &format!("{key}.name"),
                        Some(name.span()),
                        "another route has this name",
                        "give each route its own name",
                    );
                }
                name.get_ref().clone()
            }
        };
        let filter = match &route.filter {
            None => {
                c.missing(
                    &format!("{key}.filter"),
                    entry.span(),
                    "give the topic filter this route takes, e.g. filter = \"sensors/#\"",
                );
                None
            }
            Some(filter) => TopicFilter::new(filter.get_ref().as_str())
                .map_err(|e| {
                    c.at(
                        &format!("{key}.filter"),
                        Some(filter.span()),
                        format!("not a valid topic filter: {e}"),
                        "see the MQTT topic rules: '+' is one level, '#' all the rest",
                    );
                })
                .ok(),
        };
        let priority = match &route.priority {
            None => Priority::default(),
            Some(p) => match p.get_ref().as_str() {
                "low" => Priority::Low,
                "normal" => Priority::Normal,
                "high" => Priority::High,
                _ => {
                    c.at(
                        &format!("{key}.priority"),
                        Some(p.span()),
                        "unknown priority",
                        "write \"low\", \"normal\" or \"high\"",
                    );
                    Priority::default()
                }
            },
        };
        let limits = StreamLimits {
            max_messages: int(
                c,
                &format!("{key}.max_messages"),
                &route.max_messages,
                1..=i64::MAX,
            ),
            max_bytes: int(
                c,
                &format!("{key}.max_bytes"),
                &route.max_bytes,
                1024..=i64::MAX,
            ),
            when_full: route
                .when_full
                .as_ref()
                .and_then(|p| full_policy(c, &format!("{key}.when_full"), p)),
        };
        if let (Some(filter), true) = (filter, c.len() == errors_before) {
            out.push(Route {
                name,
                filter,
                priority,
                limits,
            });
        }
    }
    out
}

/// `"3.1.1"` (the default) or `"5"`.
pub(super) fn mqtt_version(
    c: &mut Collector<'_>,
    key: &str,
    value: &Option<Spanned<String>>,
) -> MqttVersion {
    match value.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
        None | Some(("3.1.1", _)) => MqttVersion::V311,
        Some(("5", _)) => MqttVersion::V5,
        Some((_, span)) => {
            c.at(
                key,
                Some(span),
                "unknown MQTT version",
                "write \"3.1.1\" or \"5\"",
            );
            MqttVersion::V311
        }
    }
}

/// `"1.2"` or `"1.3"`: the lowest TLS version accepted (1.2 when absent).
pub(super) fn min_tls_version(
    c: &mut Collector<'_>,
    key: &str,
    value: &Option<Spanned<String>>,
) -> crate::tls::MinTlsVersion {
    use crate::tls::MinTlsVersion;
    match value.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
        None | Some(("1.2", _)) => MinTlsVersion::Tls12,
        Some(("1.3", _)) => MinTlsVersion::Tls13,
        Some((_, span)) => {
            c.at(
                key,
                Some(span),
                "not a TLS version fieldlink allows",
                "write \"1.2\" or \"1.3\" (older versions are not secure)",
            );
            MinTlsVersion::Tls12
        }
    }
}

/// An integer within `range`; `None` when absent or invalid (the error is recorded).
pub(super) fn int<T: TryFrom<i64>>(
    c: &mut Collector<'_>,
    key: &str,
    value: &Option<Spanned<i64>>,
    range: RangeInclusive<i64>,
) -> Option<T> {
    let value = value.as_ref()?;
    let n = *value.get_ref();
    if !range.contains(&n) {
        c.at(
            key,
            Some(value.span()),
            format!(
                "out of range: must be from {} to {}",
                range.start(),
                range.end()
            ),
            "write a whole number within the range",
        );
        return None;
    }
    T::try_from(n).ok()
}

/// A duration such as `"250ms"`, `"10s"`, `"5m"` or `"1h"`, within `range`.
pub(super) fn duration(
    c: &mut Collector<'_>,
    key: &str,
    value: &Option<Spanned<String>>,
    range: RangeInclusive<Duration>,
    default: Duration,
) -> Duration {
    let Some(value) = value else { return default };
    match parse_duration(value.get_ref()) {
        Some(d) if range.contains(&d) => d,
        Some(_) => {
            c.at(
                key,
                Some(value.span()),
                format!(
                    "out of range: must be from {:?} to {:?}",
                    range.start(),
                    range.end()
                ),
                "write a duration within the range",
            );
            default
        }
        None => {
            c.at(
                key,
                Some(value.span()),
                "not a duration",
                "write a number and a unit: \"250ms\", \"10s\", \"5m\", \"1h\" or \"7d\"",
            );
            default
        }
    }
}

pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|ch: char| !ch.is_ascii_digit())?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        "d" => n.checked_mul(86_400).map(Duration::from_secs),
        _ => None,
    }
}
