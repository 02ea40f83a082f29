//! Validation of `[queue]` and `[[routes]]`: every value checked, every default filled in,
//! every mistake recorded (not only the first).

use std::time::Duration;

use fieldlink_core::config::{Collector, choice, choice_or, duration, int};
use fieldlink_core::message::Priority;
use fieldlink_core::topic::TopicFilter;
use toml::Spanned;

use super::file::{QueueFile, RouteFile};
use super::{
    DEFAULT_COMMIT_INTERVAL, DEFAULT_DISK_RESERVE, DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES,
    DEFAULT_MAX_MESSAGES, Durability, FullPolicy, QueueSettings, Route, StreamLimits,
};

/// Validates `[queue]`, recording every mistake in `c`.
pub fn settings(file: &QueueFile, c: &mut Collector<'_>) -> QueueSettings {
    const GIB: i64 = 1024 * 1024 * 1024;
    // "0s" keeps messages for ever.
    let max_age = duration(
        c,
        "queue.max_age",
        &file.max_age,
        Duration::ZERO..=Duration::from_secs(10 * 366 * 24 * 3600),
        DEFAULT_MAX_AGE,
    );
    QueueSettings {
        max_bytes: int(c, "queue.max_bytes", &file.max_bytes, 1024..=1024 * GIB)
            .unwrap_or(DEFAULT_MAX_BYTES),
        max_messages: int(c, "queue.max_messages", &file.max_messages, 1..=i64::MAX)
            .unwrap_or(DEFAULT_MAX_MESSAGES),
        max_age: (!max_age.is_zero()).then_some(max_age),
        when_full: file
            .when_full
            .as_ref()
            .and_then(|p| full_policy(c, "queue.when_full", p))
            .unwrap_or_default(),
        disk_reserve: int(c, "queue.disk_reserve", &file.disk_reserve, 0..=1024 * GIB)
            .unwrap_or(DEFAULT_DISK_RESERVE),
        commit_interval: duration(
            c,
            "queue.commit_interval",
            &file.commit_interval,
            Duration::ZERO..=Duration::from_secs(1),
            DEFAULT_COMMIT_INTERVAL,
        ),
        durability: choice_or(
            c,
            "queue.durability",
            &file.durability,
            &[
                ("power-safe", Durability::PowerSafe),
                ("process-crash", Durability::ProcessCrash),
            ],
            Durability::default(),
            (
                "unknown durability",
                "write \"power-safe\" (survives a power cut) or \"process-crash\" (survives a \
                 crash of the process only)",
            ),
        ),
    }
}

fn full_policy(c: &mut Collector<'_>, key: &str, value: &Spanned<String>) -> Option<FullPolicy> {
    choice(
        c,
        key,
        value,
        &[
            ("reject", FullPolicy::Reject),
            ("drop_oldest", FullPolicy::DropOldest),
            ("drop_newest", FullPolicy::DropNewest),
        ],
        "unknown policy",
        "write \"reject\", \"drop_oldest\" or \"drop_newest\"",
    )
}

/// Validates `[[routes]]`, recording every mistake in `c`; only valid routes are returned.
pub fn routes(file: &[Spanned<RouteFile>], c: &mut Collector<'_>) -> Vec<Route> {
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
        let priority = choice_or(
            c,
            &format!("{key}.priority"),
            &route.priority,
            &[
                ("low", Priority::Low),
                ("normal", Priority::Normal),
                ("high", Priority::High),
            ],
            Priority::default(),
            ("unknown priority", "write \"low\", \"normal\" or \"high\""),
        );
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
