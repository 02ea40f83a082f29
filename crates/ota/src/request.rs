//! An install request from the cloud, checked field by field before anything is done.
//!
//! ```json
//! {"id": "rollout-42", "url": "https://updates.example.com/gw-1.4.0.raucb",
//!  "sha256": "9f86d0…", "version": "1.4.0",
//!  "not_before": "2026-12-04T02:00:00Z", "allow_downgrade": false}
//! ```

use serde::{Deserialize, Serialize};

/// A checked install request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRequest {
    /// The cloud's name for this update; every report carries it.
    pub id: String,
    /// Where the bundle is: an `https://` URL.
    pub url: String,
    /// The bundle's SHA-256, 64 lowercase hex digits.
    pub sha256: String,
    /// The version the bundle carries (checked against its manifest).
    pub version: String,
    /// The reboot waits until this time (seconds since the Unix epoch), if given.
    pub not_before: Option<u64>,
    /// Whether an older version than the running one may be installed.
    pub allow_downgrade: bool,
}

/// Why a request was refused, in words the cloud's operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// Not JSON, or not an object.
    #[error("the request is not a JSON object: {0}")]
    NotJson(String),
    /// A required field is absent.
    #[error("the request has no \"{0}\"")]
    Missing(&'static str),
    /// A field is there but wrong.
    #[error("\"{field}\" {problem}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong, and what would be right.
        problem: String,
    },
}

/// The request's `id`, if it has a readable one (to answer a refused request by its id).
pub fn request_id(payload: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    value.get("id")?.as_str().map(str::to_owned)
}

/// Reads and checks an install request.
pub fn parse(payload: &[u8]) -> Result<InstallRequest, RequestError> {
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| RequestError::NotJson(e.to_string()))?;
    let object = value
        .as_object()
        .ok_or_else(|| RequestError::NotJson("a JSON object {…} is expected".into()))?;
    let string = |field: &'static str| -> Result<String, RequestError> {
        match object.get(field) {
            None | Some(serde_json::Value::Null) => Err(RequestError::Missing(field)),
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
            Some(_) => Err(RequestError::Invalid {
                field,
                problem: "must be a non-empty string".into(),
            }),
        }
    };
    let id = string("id")?;
    if id.len() > 128 || id.chars().any(|c| c.is_control()) {
        return Err(RequestError::Invalid {
            field: "id",
            problem: "must be at most 128 printable characters".into(),
        });
    }
    let url = string("url")?;
    if !url.starts_with("https://") {
        return Err(RequestError::Invalid {
            field: "url",
            problem: "must be an https:// URL (bundles are fetched over TLS only)".into(),
        });
    }
    crate::download::Url::parse(&url).map_err(|e| RequestError::Invalid {
        field: "url",
        problem: e.to_string(),
    })?;
    let sha256 = string("sha256")?.to_ascii_lowercase();
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(RequestError::Invalid {
            field: "sha256",
            problem: "must be the bundle's SHA-256 as 64 hex digits".into(),
        });
    }
    let version = string("version")?;
    if crate::version::Version::parse(&version).is_none() {
        return Err(RequestError::Invalid {
            field: "version",
            problem: "must be dotted numbers, e.g. \"1.4.0\" (a suffix after '-' or '+' is \
                      allowed)"
                .into(),
        });
    }
    let not_before = match object.get("not_before") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => {
            Some(parse_rfc3339(s).ok_or_else(|| RequestError::Invalid {
                field: "not_before",
                problem: "must be an RFC 3339 time, e.g. \"2026-12-04T02:00:00Z\"".into(),
            })?)
        }
        Some(_) => {
            return Err(RequestError::Invalid {
                field: "not_before",
                problem: "must be an RFC 3339 time string".into(),
            });
        }
    };
    let allow_downgrade = match object.get("allow_downgrade") {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(_) => {
            return Err(RequestError::Invalid {
                field: "allow_downgrade",
                problem: "must be true or false".into(),
            });
        }
    };
    Ok(InstallRequest {
        id,
        url,
        sha256,
        version,
        not_before,
        allow_downgrade,
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` as seconds since the Unix epoch.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let h: i64 = rest[1..3].parse().ok()?;
            let m: i64 = rest[4..6].parse().ok()?;
            let sign = if &rest[..1] == "-" { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    u64::try_from(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn req(extra: &str) -> String {
        format!(
            r#"{{"id":"u1","url":"https://h.example/b.raucb","sha256":"{SHA}","version":"1.2.0"{extra}}}"#
        )
    }

    #[test]
    fn a_complete_request_is_read() {
        let r =
            parse(req(r#","not_before":"2026-12-04T02:00:00Z","allow_downgrade":true"#).as_bytes())
                .unwrap();
        assert_eq!(r.id, "u1");
        assert_eq!(r.not_before, Some(1_796_349_600));
        assert!(r.allow_downgrade);
    }

    #[test]
    fn each_mistake_is_named() {
        let cases = [
            ("not json".to_owned(), "not a JSON object"),
            (r#"{"url":"https://h/b"}"#.to_owned(), "no \"id\""),
            (
                req("").replace("https://", "http://"),
                "\"url\" must be an https:// URL",
            ),
            (req("").replace(SHA, "abc"), "\"sha256\" must be"),
            (
                req("").replace("1.2.0", "latest"),
                "\"version\" must be dotted numbers",
            ),
            (
                req(r#","not_before":"tomorrow""#),
                "\"not_before\" must be an RFC 3339",
            ),
            (
                req(r#","allow_downgrade":"yes""#),
                "\"allow_downgrade\" must be true",
            ),
        ];
        for (payload, expected) in cases {
            let e = parse(payload.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(expected), "{payload}: {e}");
        }
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2000-03-01T00:00:00+01:00"),
            Some(951_865_200)
        );
        assert_eq!(parse_rfc3339("2026-12-04T02:00:00.5Z"), Some(1_796_349_600));
        assert_eq!(parse_rfc3339("2026-13-04T02:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-12-04"), None);
    }
}
