//! Checks of the small values every section has: whole numbers within a range, durations, MQTT
//! and TLS versions, and words chosen from a list. Each records its mistake in the
//! [`Collector`] (key, place, problem, hint) and gives the caller something to go on with, so
//! that one run of validation finds every mistake.

use std::ops::RangeInclusive;
use std::time::Duration;

use toml::Spanned;

use super::error::Collector;
use crate::tls::MinTlsVersion;

/// An MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MqttVersion {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.
    V5,
}

/// An integer within `range`; `None` when absent or invalid (the error is recorded).
pub fn int<T: TryFrom<i64>>(
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

/// A TCP port, 1 to 65535.
pub fn port(c: &mut Collector<'_>, key: &str, value: &Option<Spanned<i64>>) -> Option<u16> {
    int(c, key, value, 1..=65_535)
}

/// A duration such as `"250ms"`, `"10s"`, `"5m"` or `"1h"`, within `range`; `default` when
/// absent or invalid (the error is recorded).
pub fn duration(
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

/// `"250ms"`, `"10s"`, `"5m"`, `"1h"` or `"7d"`: whole numbers and one unit, nothing else.
pub fn parse_duration(text: &str) -> Option<Duration> {
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

/// A word from a fixed list, turned into its enum value; `None` (the error recorded with
/// `problem` and `hint`) for any other word.
///
/// ```
/// # use fieldlink_core::config::{Collector, Origin, choice};
/// # let text = "mode = \"fast\"";
/// # let mut c = Collector::new(Origin::BuiltIn, text);
/// let value = toml::Spanned::new(7..13, "fast".to_owned());
/// let options = [("slow", 1), ("fast", 2)];
/// assert_eq!(choice(&mut c, "mode", &value, &options, "unknown mode", "write \"slow\" or \"fast\""), Some(2));
/// ```
pub fn choice<T: Copy>(
    c: &mut Collector<'_>,
    key: &str,
    value: &Spanned<String>,
    options: &[(&str, T)],
    problem: &str,
    hint: &str,
) -> Option<T> {
    let found = options
        .iter()
        .find(|(word, _)| *word == value.get_ref().as_str())
        .map(|(_, v)| *v);
    if found.is_none() {
        c.at(key, Some(value.span()), problem, hint);
    }
    found
}

/// [`choice`] for an optional key: `default` when absent or invalid.
pub fn choice_or<T: Copy>(
    c: &mut Collector<'_>,
    key: &str,
    value: &Option<Spanned<String>>,
    options: &[(&str, T)],
    default: T,
    (problem, hint): (&str, &str),
) -> T {
    value
        .as_ref()
        .and_then(|v| choice(c, key, v, options, problem, hint))
        .unwrap_or(default)
}

/// `"3.1.1"` (the default) or `"5"`.
pub fn mqtt_version(
    c: &mut Collector<'_>,
    key: &str,
    value: &Option<Spanned<String>>,
) -> MqttVersion {
    choice_or(
        c,
        key,
        value,
        &[("3.1.1", MqttVersion::V311), ("5", MqttVersion::V5)],
        MqttVersion::V311,
        ("unknown MQTT version", "write \"3.1.1\" or \"5\""),
    )
}

/// `"1.2"` or `"1.3"`: the lowest TLS version accepted (1.2 when absent).
pub fn min_tls_version(
    c: &mut Collector<'_>,
    key: &str,
    value: &Option<Spanned<String>>,
) -> MinTlsVersion {
    choice_or(
        c,
        key,
        value,
        &[("1.2", MinTlsVersion::Tls12), ("1.3", MinTlsVersion::Tls13)],
        MinTlsVersion::Tls12,
        (
            "not a TLS version fieldlink allows",
            "write \"1.2\" or \"1.3\" (older versions are not secure)",
        ),
    )
}

/// `"refuse"` (the default) or `"warn"`: what a CRL past its nextUpdate means.
pub fn stale_crl(
    c: &mut Collector<'_>,
    key: &str,
    value: &Option<Spanned<String>>,
) -> crate::crl::StaleCrl {
    use crate::crl::StaleCrl;
    choice_or(
        c,
        key,
        value,
        &[("refuse", StaleCrl::Refuse), ("warn", StaleCrl::Warn)],
        StaleCrl::Refuse,
        (
            "unknown stale CRL policy",
            "write \"refuse\" (handshakes that need a CRL past its nextUpdate fail) or \"warn\" (it is still used, with a warning)",
        ),
    )
}

/// A path that must not be empty; `None` (the error recorded) when it is.
pub fn non_empty_path(
    c: &mut Collector<'_>,
    key: &str,
    value: Option<&Spanned<std::path::PathBuf>>,
    hint: &str,
) -> Option<std::path::PathBuf> {
    let path = value?;
    if path.get_ref().as_os_str().is_empty() {
        c.at(key, Some(path.span()), "must not be empty", hint);
        return None;
    }
    Some(path.get_ref().clone())
}

/// The private key a TLS identity uses: `key_file` (a PEM file) or `key_uri` (a key in a PKCS#11
/// token), exactly one of them. `prefix` is the section's key path (`uplink`,
/// `broker.listeners[0]`); `entry` where the section is, for a missing key. The URI's inside is
/// checked by `fieldlink-keys` when the gateway is assembled; here only what is never allowed:
/// a PIN in it (the PIN comes from `[keys]`, never from this file).
pub fn key_ref(
    c: &mut Collector<'_>,
    prefix: &str,
    key_file: Option<&Spanned<std::path::PathBuf>>,
    key_uri: Option<&Spanned<String>>,
    entry: std::ops::Range<usize>,
    hint: &str,
) -> Option<crate::tls::KeyRef> {
    use crate::tls::KeyRef;
    match (key_file, key_uri) {
        (Some(file), None) => Some(KeyRef::File(file.get_ref().clone())),
        (None, Some(uri)) => {
            let text = uri.get_ref();
            let key = format!("{prefix}.key_uri");
            if !text.starts_with("pkcs11:") {
                c.at(
                    &key,
                    Some(uri.span()),
                    "not a pkcs11: URI",
                    "name the key in its token: key_uri = \"pkcs11:token=gw-token;object=uplink\" \
                     (a key file goes in key_file)",
                );
                return None;
            }
            let lower = text.to_ascii_lowercase();
            if lower.contains("pin-value") || lower.contains("pin-source") {
                // Not even echoed: the value holds a PIN.
                c.without_value(
                    &key,
                    Some(uri.span()),
                    "the URI carries a PIN",
                    "remove pin-value/pin-source: the PIN comes from [keys] pin_file or \
                     pin_credential, never from this file",
                );
                return None;
            }
            Some(KeyRef::Pkcs11(text.clone()))
        }
        (Some(file), Some(_)) => {
            c.at(
                &format!("{prefix}.key_file"),
                Some(file.span()),
                "both key_file and key_uri are set",
                "keep one: key_file for a PEM key, key_uri for a key in a PKCS#11 token",
            );
            None
        }
        (None, None) => {
            c.missing(&format!("{prefix}.key_file"), entry, hint);
            None
        }
    }
}

/// A list of paths as written (`crl_files = [..]`), empty when absent.
pub fn paths(value: &Option<Spanned<Vec<Spanned<std::path::PathBuf>>>>) -> Vec<std::path::PathBuf> {
    value.as_ref().map_or_else(Vec::new, |l| {
        l.get_ref().iter().map(|p| p.get_ref().clone()).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Origin;

    #[test]
    fn durations_accept_the_documented_units_only() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86_400)));
        for bad in ["", "10", "s", "1.5s", "-1s", "10 s", "10w"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_word_outside_the_list_is_recorded_with_its_problem_and_hint() {
        let text = "mode = \"fastest\"";
        let mut c = Collector::new(Origin::BuiltIn, text);
        let value = Spanned::new(7..16, "fastest".to_owned());
        let options = [("slow", 1), ("fast", 2)];
        assert_eq!(
            choice(&mut c, "mode", &value, &options, "unknown mode", "say so"),
            None
        );
        let errors = c.finish().unwrap_err().0;
        assert_eq!(errors.len(), 1);
        assert_eq!(
            (
                errors[0].key.as_str(),
                errors[0].problem.as_str(),
                errors[0].hint.as_str()
            ),
            ("mode", "unknown mode", "say so")
        );
        assert_eq!(errors[0].value.as_deref(), Some("\"fastest\""));
    }
}
