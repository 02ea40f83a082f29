//! The JSON payloads the bridge publishes (values, snapshots, write results), written straight
//! into the message's buffer.

use std::fmt::Write as _;

use crate::codec::Value;

/// When a value was read: Unix milliseconds by the wall clock, and whether that clock was
/// synchronized then. A board without an RTC reads days (or decades) wrong until time sync, so
/// a timestamp taken before it is marked `"ts_synced":false` in the payload: the consumer
/// knows not to trust it, and nothing pretends to correct it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Milliseconds since the Unix epoch, by the wall clock.
    pub ms: i64,
    /// Whether the wall clock was synchronized.
    pub synchronized: bool,
}

impl Stamp {
    /// The wall clock now, and its state.
    pub fn now() -> Self {
        Self {
            ms: fieldlink_core::clock::wall_ms(),
            synchronized: fieldlink_core::clock::synchronized(),
        }
    }
}

/// `"ts":<unix ms>`, with `"ts_synced":false` after it when the clock was not synchronized.
fn push_ts(out: &mut String, ts: Stamp) {
    let _ = write!(out, "\"ts\":{}", ts.ms);
    if !ts.synchronized {
        out.push_str(",\"ts_synced\":false");
    }
}

/// `{"value":…,"unit":…,"quality":"good"|"bad","ts":<unix ms>}`; `unit` only when set.
/// A bad reading has `"value":null`.
pub fn value(value: Option<&Value>, unit: Option<&str>, ts: Stamp) -> Vec<u8> {
    let mut out = String::with_capacity(64);
    out.push_str("{\"value\":");
    let good = push_value(&mut out, value);
    if let Some(unit) = unit {
        out.push_str(",\"unit\":");
        push_str(&mut out, unit);
    }
    out.push_str(if good {
        ",\"quality\":\"good\""
    } else {
        ",\"quality\":\"bad\""
    });
    out.push(',');
    push_ts(&mut out, ts);
    out.push('}');
    out.into_bytes()
}

/// `{"ts":…,"values":{"<point>":…,…}}`.
pub fn snapshot<'a>(values: impl Iterator<Item = (&'a str, &'a Value)>, ts: Stamp) -> Vec<u8> {
    let mut out = String::with_capacity(128);
    out.push('{');
    push_ts(&mut out, ts);
    out.push_str(",\"values\":{");
    for (i, (name, v)) in values.enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(&mut out, name);
        out.push(':');
        push_value(&mut out, Some(v));
    }
    out.push_str("}}");
    out.into_bytes()
}

/// The outcome of a write command.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteResult {
    /// The device took the value.
    Ok(Value),
    /// The device answered with a Modbus exception.
    Exception(u8),
    /// The device did not answer in time (after the retries).
    Timeout,
    /// The command was refused before anything was sent; the text says why.
    Invalid(String),
    /// The link failed (port gone, connection refused).
    Failed(String),
}

impl WriteResult {
    /// The `result` label of the write counter.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Ok(_) => "ok",
            Self::Exception(_) => "exception",
            Self::Timeout => "timeout",
            Self::Invalid(_) => "invalid",
            Self::Failed(_) => "failed",
        }
    }
}

/// `{"result":"ok"|"exception"|"timeout"|"invalid"|"failed", …, "id":…, "ts":…}`.
pub fn write_result(result: &WriteResult, id: Option<&serde_json::Value>, ts: Stamp) -> Vec<u8> {
    let mut out = String::with_capacity(96);
    let _ = write!(out, "{{\"result\":\"{}\"", result.label());
    match result {
        WriteResult::Ok(v) => {
            out.push_str(",\"value\":");
            push_value(&mut out, Some(v));
        }
        WriteResult::Exception(code) => {
            let _ = write!(out, ",\"code\":{code}");
        }
        WriteResult::Invalid(reason) | WriteResult::Failed(reason) => {
            out.push_str(",\"reason\":");
            push_str(&mut out, reason);
        }
        WriteResult::Timeout => {}
    }
    if let Some(id) = id {
        out.push_str(",\"id\":");
        out.push_str(&id.to_string());
    }
    out.push(',');
    push_ts(&mut out, ts);
    out.push('}');
    out.into_bytes()
}

/// Writes the JSON of `value`; `false` when it is missing or not a finite number.
fn push_value(out: &mut String, value: Option<&Value>) -> bool {
    match value {
        Some(Value::Bool(b)) => out.push_str(if *b { "true" } else { "false" }),
        Some(Value::Int(i)) => {
            let _ = write!(out, "{i}");
        }
        Some(Value::UInt(u)) => {
            let _ = write!(out, "{u}");
        }
        Some(Value::Float(f)) if f.is_finite() => {
            let _ = write!(out, "{f}");
        }
        Some(Value::Text(s)) => push_str(out, s),
        Some(Value::Float(_)) | None => {
            out.push_str("null");
            return false;
        }
    }
    true
}

fn push_str(out: &mut String, s: &str) {
    // serde_json escapes exactly as JSON needs; writing to a String cannot fail.
    out.push_str(&serde_json::Value::from(s).to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(bytes: Vec<u8>) -> serde_json::Value {
        serde_json::from_slice(&bytes).expect("valid JSON")
    }

    fn synced(ms: i64) -> Stamp {
        Stamp {
            ms,
            synchronized: true,
        }
    }

    #[test]
    fn a_timestamp_from_an_unsynchronized_clock_says_so() {
        let unsynced = Stamp {
            ms: 9,
            synchronized: false,
        };
        let v = json(value(Some(&Value::Int(1)), None, unsynced));
        assert_eq!(
            v,
            serde_json::json!({"value":1,"quality":"good","ts":9,"ts_synced":false})
        );
        let s = json(snapshot([("a", &Value::Int(1))].into_iter(), unsynced));
        assert_eq!(s["ts_synced"], false);
        let w = json(write_result(&WriteResult::Timeout, None, unsynced));
        assert_eq!(w["ts_synced"], false);
    }

    #[test]
    fn payloads_are_valid_json_with_the_documented_fields() {
        let v = json(value(
            Some(&Value::Float(21.5)),
            Some("°C \"x\""),
            synced(7),
        ));
        assert_eq!(
            v,
            serde_json::json!({"value":21.5,"unit":"°C \"x\"","quality":"good","ts":7})
        );
        let v = json(value(Some(&Value::Float(f64::NAN)), None, synced(7)));
        assert_eq!(v, serde_json::json!({"value":null,"quality":"bad","ts":7}));
        let v = json(value(None, None, synced(1)));
        assert_eq!(v["quality"], "bad");
        let s = json(snapshot(
            [("a", &Value::Int(-1)), ("b", &Value::Text("t".into()))].into_iter(),
            synced(3),
        ));
        assert_eq!(s, serde_json::json!({"ts":3,"values":{"a":-1,"b":"t"}}));
        let w = json(write_result(
            &WriteResult::Exception(2),
            Some(&serde_json::json!("c1")),
            synced(5),
        ));
        assert_eq!(
            w,
            serde_json::json!({"result":"exception","code":2,"id":"c1","ts":5})
        );
        let w = json(write_result(
            &WriteResult::Invalid("too \"big\"".into()),
            None,
            synced(5),
        ));
        assert_eq!(w["reason"], "too \"big\"");
    }
}
