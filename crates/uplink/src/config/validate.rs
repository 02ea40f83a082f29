//! From `[uplink]` as written to [`UplinkSettings`]: every value checked, every default filled
//! in, every mistake recorded.

use std::time::Duration;

use fieldlink_core::config::{
    Collector, MqttVersion, choice_or, duration, int, min_tls_version, mqtt_version, paths, port,
    stale_crl,
};
use fieldlink_core::topic::{TopicFilter, TopicName};
use fieldlink_core::topic_map::TopicRewrite;
use toml::Spanned;

use super::file::{TopicRuleFile, UplinkFile};
use super::{
    DEFAULT_CLEAN_SESSION, DEFAULT_CONNECT_TIMEOUT, DEFAULT_INFLIGHT, DEFAULT_KEEP_ALIVE,
    DEFAULT_MESSAGE_ID_PROPERTY, DEFAULT_PORT, DEFAULT_RECONNECT_MAX, DEFAULT_RECONNECT_MIN,
    DEFAULT_STALL_TIMEOUT, DEFAULT_TOKEN_LIFETIME, JwtSettings, OnRejected, UplinkCredentials,
    UplinkSettings, UplinkTls,
};

/// Validates `[uplink]`, recording every mistake in `c`; `None` when it has any.
pub fn settings(entry: &Spanned<UplinkFile>, c: &mut Collector<'_>) -> Option<UplinkSettings> {
    let file = entry.get_ref();
    let errors_before = c.len();
    let host = required_text(
        c,
        "uplink.host",
        &file.host,
        entry,
        "the cloud broker's host name, e.g. host = \"mqtt.example.com\"",
    );
    let client_id = required_text(
        c,
        "uplink.client_id",
        &file.client_id,
        entry,
        "our MQTT client id, e.g. client_id = \"site-7-gateway\"",
    );
    let mqtt = mqtt_version(c, "uplink.mqtt", &file.mqtt);
    let tls = tls(file, entry, c);
    let min_tls_version = min_tls_version(c, "uplink.min_tls_version", &file.min_tls_version);
    let device_id = device_id(file, client_id.as_deref(), c);
    let vars = [("device_id", device_id.as_str())];
    let topic_prefix = file.topic_prefix.as_ref().map_or(String::new(), |p| {
        let prefix = substitute(p.get_ref(), &vars);
        if TopicFilter::new(format!("{prefix}x")).is_err() || prefix.contains(['+', '#', '{', '}'])
        {
            c.at(
                "uplink.topic_prefix",
                Some(p.span()),
                "not a valid topic prefix",
                "use topic levels without '+' or '#' (and only {device_id} as a placeholder), e.g. \"plant-3/\"",
            );
        }
        prefix
    });
    let rewrites = topic_rules(
        c,
        "uplink.rewrite",
        &file.rewrite,
        Direction::ToCloud,
        &vars,
    );
    let commands = topic_rules(
        c,
        "uplink.commands",
        &file.commands,
        Direction::ToSite,
        &vars,
    );
    let alarm_topic = file.alarm_topic.as_ref().and_then(|t| {
        TopicName::new(t.get_ref().as_str())
            .map_err(|e| {
                c.at(
                    "uplink.alarm_topic",
                    Some(t.span()),
                    format!("not a valid topic: {e}"),
                    "write a topic without wildcards",
                )
            })
            .ok()
    });
    let on_rejected = choice_or(
        c,
        "uplink.on_rejected",
        &file.on_rejected,
        &[("retry", OnRejected::Retry), ("drop", OnRejected::Drop)],
        OnRejected::default(),
        ("unknown policy", "write \"retry\" or \"drop\""),
    );
    let reconnect_min = duration(
        c,
        "uplink.reconnect_min",
        &file.reconnect_min,
        Duration::from_millis(10)..=Duration::from_secs(3600),
        DEFAULT_RECONNECT_MIN,
    );
    let reconnect_max = duration(
        c,
        "uplink.reconnect_max",
        &file.reconnect_max,
        Duration::from_millis(10)..=Duration::from_secs(3600),
        DEFAULT_RECONNECT_MAX,
    );
    if reconnect_max < reconnect_min {
        let span = file.reconnect_max.as_ref().map(Spanned::span);
        c.at(
            "uplink.reconnect_max",
            span,
            "smaller than uplink.reconnect_min",
            "make reconnect_max at least reconnect_min",
        );
    }
    let credentials = credentials(file, entry, client_id.as_deref(), &device_id, c);
    let settings = UplinkSettings {
        host: host.unwrap_or_default(),
        port: port(c, "uplink.port", &file.port).unwrap_or(DEFAULT_PORT),
        client_id: client_id.unwrap_or_default(),
        mqtt,
        keep_alive: duration(
            c,
            "uplink.keep_alive",
            &file.keep_alive,
            Duration::from_secs(5)..=Duration::from_secs(65_535),
            DEFAULT_KEEP_ALIVE,
        ),
        stall_timeout: duration(
            c,
            "uplink.stall_timeout",
            &file.stall_timeout,
            Duration::from_secs(2)..=Duration::from_secs(3600),
            DEFAULT_STALL_TIMEOUT,
        ),
        connect_timeout: duration(
            c,
            "uplink.connect_timeout",
            &file.connect_timeout,
            Duration::from_millis(500)..=Duration::from_secs(300),
            DEFAULT_CONNECT_TIMEOUT,
        ),
        clean_session: file
            .clean_session
            .as_ref()
            .map_or(DEFAULT_CLEAN_SESSION, |b| *b.get_ref()),
        inflight: int(c, "uplink.inflight", &file.inflight, 1..=65_535).unwrap_or(DEFAULT_INFLIGHT),
        topic_prefix,
        device_id,
        rewrites,
        commands,
        tls: tls?,
        min_tls_version,
        crl_files: paths(&file.crl_files),
        stale_crl: stale_crl(c, "uplink.stale_crl", &file.stale_crl),
        alpn: file.alpn.as_ref().map_or_else(Vec::new, |l| {
            l.get_ref().iter().map(|p| p.get_ref().clone()).collect()
        }),
        reconnect_min,
        reconnect_max,
        on_rejected,
        alarm_topic,
        message_id_property: message_id_property(file, mqtt, c),
        credentials,
    };
    (c.len() == errors_before).then_some(settings)
}

/// `uplink.message_id_property`: the default name with MQTT 5, nothing with 3.1.1 (which has no
/// properties: asking for one there is a mistake), nothing when set to "".
fn message_id_property(
    file: &UplinkFile,
    mqtt: MqttVersion,
    c: &mut Collector<'_>,
) -> Option<String> {
    match (&file.message_id_property, mqtt) {
        (None, MqttVersion::V5) => Some(DEFAULT_MESSAGE_ID_PROPERTY.to_owned()),
        (None, MqttVersion::V311) => None,
        (Some(name), _) if name.get_ref().is_empty() => None,
        (Some(name), MqttVersion::V311) => {
            c.at(
                "uplink.message_id_property",
                Some(name.span()),
                "MQTT 3.1.1 has no user properties to carry the message id",
                "set uplink.mqtt = \"5\", or remove this key",
            );
            None
        }
        (Some(name), MqttVersion::V5) => Some(name.get_ref().clone()),
    }
}

/// `uplink.device_id`, else the client id; it becomes one topic level.
fn device_id(file: &UplinkFile, client_id: Option<&str>, c: &mut Collector<'_>) -> String {
    match &file.device_id {
        Some(id) => {
            let text = id.get_ref();
            if text.is_empty() || text.contains(['/', '+', '#', '{', '}', '\0']) {
                c.at(
                    "uplink.device_id",
                    Some(id.span()),
                    "not usable as one topic level",
                    "use a name without '/', '+', '#' or braces, e.g. \"site-7-gw\"",
                );
            }
            text.clone()
        }
        None => client_id.unwrap_or_default().to_owned(),
    }
}

fn substitute(text: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(text.to_owned(), |text, (name, value)| {
        text.replace(&format!("{{{name}}}"), value)
    })
}

#[derive(Clone, Copy)]
enum Direction {
    /// `local` is the filter, `cloud` the template.
    ToCloud,
    /// `cloud` is the filter, `local` the template.
    ToSite,
}

fn topic_rules(
    c: &mut Collector<'_>,
    key: &str,
    rules: &[Spanned<TopicRuleFile>],
    direction: Direction,
    vars: &[(&str, &str)],
) -> Vec<TopicRewrite> {
    let mut out = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter().enumerate() {
        let file = rule.get_ref();
        let (filter_side, template_side) = match direction {
            Direction::ToCloud => (("local", &file.local), ("cloud", &file.cloud)),
            Direction::ToSite => (("cloud", &file.cloud), ("local", &file.local)),
        };
        let filter = rule_side(c, key, i, filter_side, rule.span());
        let template = rule_side(c, key, i, template_side, rule.span());
        let (Some(filter), Some(template)) = (filter, template) else {
            continue;
        };
        let filter_key = format!("{key}[{i}].{}", filter_side.0);
        let Ok(parsed) = TopicFilter::new(substitute(filter.get_ref(), vars)).map_err(|e| {
            c.at(
                &filter_key,
                Some(filter.span()),
                format!("not a valid topic filter: {e}"),
                "write topic levels with '+' and '#' wildcards, e.g. \"site/+/alarm/#\"",
            )
        }) else {
            continue;
        };
        match TopicRewrite::new(parsed, template.get_ref(), vars) {
            Ok(rule) => out.push(rule),
            Err(problem) => c.at(
                &format!("{key}[{i}].{}", template_side.0),
                Some(template.span()),
                problem,
                "write a topic; {1}, {2}.. insert the levels the filter's '+' matched, {#} what its '#' matched, {device_id} this gateway's id",
            ),
        }
    }
    out
}

fn rule_side<'a>(
    c: &mut Collector<'_>,
    key: &str,
    i: usize,
    (name, value): (&str, &'a Option<Spanned<String>>),
    rule: std::ops::Range<usize>,
) -> Option<&'a Spanned<String>> {
    if value.is_none() {
        c.missing(
            &format!("{key}[{i}].{name}"),
            rule,
            "each rule needs both `local` and `cloud`",
        );
    }
    value.as_ref()
}

fn required_text<T>(
    c: &mut Collector<'_>,
    key: &str,
    value: &Option<Spanned<String>>,
    entry: &Spanned<T>,
    hint: &str,
) -> Option<String> {
    match value {
        None => {
            c.missing(key, entry.span(), hint);
            None
        }
        Some(v) if v.get_ref().trim().is_empty() => {
            c.at(key, Some(v.span()), "must not be empty", hint);
            None
        }
        Some(v) => Some(v.get_ref().clone()),
    }
}

fn tls(file: &UplinkFile, entry: &Spanned<UplinkFile>, c: &mut Collector<'_>) -> Option<UplinkTls> {
    let mode = file
        .tls
        .as_ref()
        .map_or("server-auth", |m| m.get_ref().as_str());
    let ca_file = file.ca_file.as_ref().map(|p| p.get_ref().clone());
    let path = |key: &str,
                value: &Option<Spanned<std::path::PathBuf>>,
                c: &mut Collector<'_>,
                hint: &str| match value {
        Some(p) => Some(p.get_ref().clone()),
        None => {
            c.missing(key, entry.span(), hint);
            None
        }
    };
    match mode {
        "server-auth" => Some(UplinkTls::ServerAuth { ca_file }),
        "mutual" => {
            let cert_file = path(
                "uplink.cert_file",
                &file.cert_file,
                c,
                "mutual TLS needs our certificate chain: cert_file = \"/etc/fieldlink/client.pem\"",
            );
            let key = fieldlink_core::config::values::key_ref(
                c,
                "uplink",
                file.key_file.as_ref(),
                file.key_uri.as_ref(),
                entry.span(),
                "mutual TLS needs our private key: key_file = \"/etc/fieldlink/client.key\", \
                 or key_uri = \"pkcs11:token=…;object=…\" for a key in a token",
            );
            Some(UplinkTls::Mutual {
                ca_file,
                cert_file: cert_file?,
                key: key?,
            })
        }
        "psk" => {
            let psk_file = path(
                "uplink.psk_file",
                &file.psk_file,
                c,
                "PSK needs a 0600 file with one line identity:hexkey: psk_file = \"/etc/fieldlink/uplink.psk\"",
            );
            Some(UplinkTls::Psk {
                psk_file: psk_file?,
            })
        }
        _ => {
            let span = file.tls.as_ref().map(Spanned::span);
            c.at(
                "uplink.tls",
                span,
                "unknown TLS mode",
                "write \"server-auth\", \"mutual\" or \"psk\" (plaintext is not offered)",
            );
            None
        }
    }
}

/// Tokens live at least a minute (renewed at 80 %: a reconnect every 48 s at most) and at most
/// a day.
const TOKEN_LIFETIMES: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(10)..=Duration::from_secs(86_400);

/// `uplink.username` with `password_file`, `[uplink.jwt]` or `[uplink.azure_sas]`: one way to
/// log in at most.
fn credentials(
    file: &UplinkFile,
    entry: &Spanned<UplinkFile>,
    client_id: Option<&str>,
    device_id: &str,
    c: &mut Collector<'_>,
) -> Option<UplinkCredentials> {
    let username = file.username.as_ref().map(|u| {
        if u.get_ref().is_empty() {
            c.at(
                "uplink.username",
                Some(u.span()),
                "must not be empty",
                "give the MQTT user name the cloud expects, or remove the key",
            );
        }
        u.get_ref().clone()
    });
    let ways = [
        file.password_file
            .as_ref()
            .map(|p| ("uplink.password_file", p.span())),
        file.jwt.as_ref().map(|j| ("uplink.jwt", j.span())),
        file.azure_sas
            .as_ref()
            .map(|s| ("uplink.azure_sas", s.span())),
    ];
    let given: Vec<_> = ways.into_iter().flatten().collect();
    if let [_, (key, span), ..] = given.as_slice() {
        c.at(
            key,
            Some(span.clone()),
            format!("only one way to log in: {} is set too", given[0].0),
            "keep one of password_file, [uplink.jwt] and [uplink.azure_sas]",
        );
        return None;
    }
    if let Some(password_file) = &file.password_file {
        let Some(username) = username else {
            c.missing(
                "uplink.username",
                entry.span(),
                "a password goes with a user name: username = \"site-7-gateway\"",
            );
            return None;
        };
        return Some(UplinkCredentials::Password {
            username,
            password_file: password_file.get_ref().clone(),
        });
    }
    if let Some(jwt) = &file.jwt {
        return jwt_settings(jwt, username.or(client_id.map(str::to_owned)), device_id, c)
            .map(UplinkCredentials::Jwt);
    }
    if let Some(sas) = &file.azure_sas {
        if let Some(u) = &file.username {
            c.at(
                "uplink.username",
                Some(u.span()),
                "Azure IoT Hub sets the user name itself ({host}/{device}/?api-version=...)",
                "remove uplink.username",
            );
        }
        let key_file = required_path(
            c,
            "uplink.azure_sas.key_file",
            &sas.get_ref().key_file,
            sas.span(),
            "the device's symmetric key (base64) in a 0600 file: key_file = \"/etc/fieldlink/sas.key\"",
        )?;
        let lifetime = duration(
            c,
            "uplink.azure_sas.lifetime",
            &sas.get_ref().lifetime,
            TOKEN_LIFETIMES,
            DEFAULT_TOKEN_LIFETIME,
        );
        return Some(UplinkCredentials::AzureSas { key_file, lifetime });
    }
    if let Some(u) = &file.username {
        c.at(
            "uplink.username",
            Some(u.span()),
            "a user name without a password",
            "add password_file = \"/etc/fieldlink/uplink.password\" (a 0600 file), or an [uplink.jwt] section",
        );
    }
    None
}

fn jwt_settings(
    jwt: &Spanned<super::file::JwtFile>,
    username: Option<String>,
    device_id: &str,
    c: &mut Collector<'_>,
) -> Option<JwtSettings> {
    let file = jwt.get_ref();
    let key = fieldlink_core::config::values::key_ref(
        c,
        "uplink.jwt",
        file.key_file.as_ref(),
        file.key_uri.as_ref(),
        jwt.span(),
        "the token key (P-256 or RSA, PEM, mode 0600): key_file = \"/etc/fieldlink/token.key\", \
         or key_uri = \"pkcs11:token=…;object=…\" for a P-256 key in a token",
    );
    let audience = required_text(
        c,
        "uplink.jwt.audience",
        &file.audience,
        jwt,
        "the `aud` the cloud checks, e.g. audience = \"fieldlink\"",
    );
    let lifetime = duration(
        c,
        "uplink.jwt.lifetime",
        &file.lifetime,
        TOKEN_LIFETIMES,
        DEFAULT_TOKEN_LIFETIME,
    );
    let claims = match &file.claims {
        None => serde_json::Map::new(),
        Some(table) => match serde_json::to_value(table.get_ref()) {
            Ok(serde_json::Value::Object(map)) => {
                for reserved in ["iat", "exp"] {
                    if map.contains_key(reserved) {
                        c.at(
                            "uplink.jwt.claims",
                            Some(table.span()),
                            format!("`{reserved}` is set by the gateway"),
                            "set uplink.jwt.lifetime instead",
                        );
                    }
                }
                map
            }
            _ => {
                c.at(
                    "uplink.jwt.claims",
                    Some(table.span()),
                    "not expressible as JSON",
                    "use strings, numbers, booleans, arrays and tables",
                );
                serde_json::Map::new()
            }
        },
    };
    let text = |v: &Option<Spanned<String>>| v.as_ref().map(|s| s.get_ref().clone());
    Some(JwtSettings {
        username: username.unwrap_or_default(),
        key: key?,
        audience: audience?,
        subject: text(&file.subject).unwrap_or_else(|| device_id.to_owned()),
        lifetime,
        key_id: text(&file.key_id),
        claims: serde_json::Value::Object(claims).to_string(),
    })
}

fn required_path(
    c: &mut Collector<'_>,
    key: &str,
    value: &Option<Spanned<std::path::PathBuf>>,
    table: std::ops::Range<usize>,
    hint: &str,
) -> Option<std::path::PathBuf> {
    match value {
        Some(p) => Some(p.get_ref().clone()),
        None => {
            c.missing(key, table, hint);
            None
        }
    }
}
