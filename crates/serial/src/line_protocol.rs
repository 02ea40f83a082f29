//! Line-oriented devices (sans-IO): framing bytes into lines, and parsing a line into values.
//!
//! The framer holds at most `max_line` bytes whatever arrives: a longer line is discarded up to
//! its delimiter and reported as [`Frame::Overlong`], never kept. The parser takes a line as
//! bytes (not necessarily UTF-8) and yields `(point index, value)` pairs or a [`LineError`].

use regex_lite::Regex;

use crate::codec::Value;
use crate::config::{DataType, LineFormat, LineSettings, PointSettings, Source};

/// What the framer found.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete line, without its delimiter (and without a trailing `\r`).
    Line(&'a [u8]),
    /// A line longer than `max_line` ended here; it was discarded.
    Overlong,
}

/// Splits a byte stream into lines of bounded length.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    delimiter: u8,
    max_line: usize,
    /// Inside an overlong line: drop bytes until the next delimiter.
    discarding: bool,
}

impl Framer {
    /// A framer for lines ending in `delimiter`, at most `max_line` bytes long.
    pub fn new(delimiter: u8, max_line: usize) -> Self {
        Self {
            buf: Vec::with_capacity(max_line.min(4096)),
            delimiter,
            max_line,
            discarding: false,
        }
    }

    /// Feeds `data`, calling `on_frame` for each line (or overlong line) it completes.
    pub fn push(&mut self, mut data: &[u8], mut on_frame: impl FnMut(Frame<'_>)) {
        while !data.is_empty() {
            let (chunk, ends_line) = match data.iter().position(|b| *b == self.delimiter) {
                Some(i) => (&data[..i], true),
                None => (data, false),
            };
            data = &data[(chunk.len() + usize::from(ends_line)).min(data.len())..];
            if !self.discarding {
                if self.buf.len() + chunk.len() > self.max_line {
                    self.buf.clear();
                    self.discarding = true;
                } else {
                    self.buf.extend_from_slice(chunk);
                }
            }
            if ends_line {
                if self.discarding {
                    self.discarding = false;
                    on_frame(Frame::Overlong);
                } else {
                    let line = self.buf.strip_suffix(b"\r").unwrap_or(&self.buf);
                    on_frame(Frame::Line(line));
                    self.buf.clear();
                }
            }
        }
    }

    /// Drops a partial line (after the port was reopened).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }
}

/// Why a line gave no values. Each is counted (kind in parentheses), none is fatal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LineError {
    /// An NMEA sentence whose checksum is missing or wrong (`checksum`).
    #[error("NMEA checksum missing or wrong")]
    Checksum,
    /// The line does not match the pattern, is not JSON, or holds none of the points (`garbage`).
    #[error("the line does not parse: {0}")]
    Garbage(&'static str),
}

impl LineError {
    /// The `kind` label of the error counter.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Checksum => "checksum",
            Self::Garbage(_) => "garbage",
        }
    }
}

/// Parses lines of one device into point values.
#[derive(Debug)]
pub struct LineParser {
    format: Format,
    /// For each point: its field (capture name or JSON path) and type.
    fields: Vec<(String, DataType)>,
}

#[derive(Debug)]
enum Format {
    Json,
    Nmea(Regex),
    Regex(Regex),
}

impl LineParser {
    /// Builds the parser; `None` when the pattern does not compile (validated config never
    /// does that).
    pub fn new(settings: &LineSettings, points: &[PointSettings]) -> Option<Self> {
        let format = match &settings.format {
            LineFormat::Json => Format::Json,
            LineFormat::Nmea { pattern } => Format::Nmea(Regex::new(pattern).ok()?),
            LineFormat::Regex { pattern } => Format::Regex(Regex::new(pattern).ok()?),
        };
        let fields = points
            .iter()
            .map(|p| {
                let field = match &p.source {
                    Source::Field(f) => f.clone(),
                    Source::Register { .. } => p.name.clone(),
                };
                (field, p.data_type)
            })
            .collect();
        Some(Self { format, fields })
    }

    /// The values of `line`, as `(point index, raw value)`, into `out` (cleared first).
    pub fn parse(&self, line: &[u8], out: &mut Vec<(usize, Value)>) -> Result<(), LineError> {
        out.clear();
        let text = std::str::from_utf8(line).map_err(|_| LineError::Garbage("not UTF-8"))?;
        match &self.format {
            Format::Regex(re) => self.captures(re, text.trim(), out)?,
            Format::Nmea(re) => {
                let sentence = nmea_check(text.trim())?;
                self.captures(re, sentence, out)?;
            }
            Format::Json => {
                let doc: serde_json::Value =
                    serde_json::from_str(text).map_err(|_| LineError::Garbage("not JSON"))?;
                for (i, (field, data_type)) in self.fields.iter().enumerate() {
                    let found = field.split('.').try_fold(&doc, |v, key| v.get(key));
                    if let Some(value) = found.and_then(|v| from_json(v, *data_type)) {
                        out.push((i, value));
                    }
                }
            }
        }
        if out.is_empty() {
            return Err(LineError::Garbage("no point found in the line"));
        }
        Ok(())
    }

    fn captures(
        &self,
        re: &Regex,
        text: &str,
        out: &mut Vec<(usize, Value)>,
    ) -> Result<(), LineError> {
        let caps = re.captures(text).ok_or(LineError::Garbage("no match"))?;
        for (i, (field, data_type)) in self.fields.iter().enumerate() {
            if let Some(m) = caps.name(field)
                && let Some(value) = from_text(m.as_str(), *data_type)
            {
                out.push((i, value));
            }
        }
        Ok(())
    }
}

/// The sentence between `$` (or `!`) and `*` if the two hex digits after `*` are the XOR of its
/// bytes (NMEA 0183).
pub fn nmea_sentence(line: &str) -> Option<&str> {
    nmea_check(line).ok()
}

/// Like [`nmea_sentence`], telling a line that is no NMEA sentence (garbage) from one whose
/// checksum is missing or wrong.
fn nmea_check(line: &str) -> Result<&str, LineError> {
    let body = line
        .strip_prefix('$')
        .or_else(|| line.strip_prefix('!'))
        .ok_or(LineError::Garbage("not an NMEA sentence"))?;
    let (sentence, sum) = body.rsplit_once('*').ok_or(LineError::Checksum)?;
    let sum = sum.trim_end();
    if sum.len() != 2 {
        return Err(LineError::Checksum);
    }
    let expected = u8::from_str_radix(sum, 16).map_err(|_| LineError::Checksum)?;
    if nmea_checksum(sentence) == expected {
        Ok(sentence)
    } else {
        Err(LineError::Checksum)
    }
}

/// The XOR of the sentence's bytes.
pub fn nmea_checksum(sentence: &str) -> u8 {
    sentence.bytes().fold(0, |acc, b| acc ^ b)
}

fn from_text(text: &str, data_type: DataType) -> Option<Value> {
    let text = text.trim();
    match data_type {
        DataType::Bool => match text {
            "1" | "true" | "on" | "ON" | "TRUE" => Some(Value::Bool(true)),
            "0" | "false" | "off" | "OFF" | "FALSE" => Some(Value::Bool(false)),
            _ => None,
        },
        DataType::String { .. } => Some(Value::Text(text.to_owned())),
        DataType::I16 | DataType::I32 | DataType::I64 => text.parse().ok().map(Value::Int),
        DataType::U16 | DataType::U32 | DataType::U64 => text.parse().ok().map(Value::UInt),
        DataType::F32 | DataType::F64 => text
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::Float),
    }
}

fn from_json(v: &serde_json::Value, data_type: DataType) -> Option<Value> {
    match (v, data_type) {
        (serde_json::Value::String(s), _) => from_text(s, data_type),
        (serde_json::Value::Bool(b), DataType::Bool) => Some(Value::Bool(*b)),
        (serde_json::Value::Number(n), DataType::I16 | DataType::I32 | DataType::I64) => {
            n.as_i64().map(Value::Int)
        }
        (serde_json::Value::Number(n), DataType::U16 | DataType::U32 | DataType::U64) => {
            n.as_u64().map(Value::UInt)
        }
        (serde_json::Value::Number(n), DataType::Bool) => {
            Some(Value::Bool(n.as_f64() != Some(0.0)))
        }
        (serde_json::Value::Number(n), _) => n.as_f64().map(Value::Float),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::Real;
    use proptest::prelude::*;

    use super::*;

    fn frames(framer: &mut Framer, data: &[u8]) -> Vec<Option<Vec<u8>>> {
        let mut out = Vec::new();
        framer.push(data, |f| {
            out.push(match f {
                Frame::Line(l) => Some(l.to_vec()),
                Frame::Overlong => None,
            })
        });
        out
    }

    #[test]
    fn lines_are_split_across_chunks_and_overlong_ones_are_dropped() {
        let mut f = Framer::new(b'\n', 8);
        assert!(frames(&mut f, b"abc").is_empty());
        assert_eq!(
            frames(&mut f, b"d\r\nxy\n"),
            [Some(b"abcd".to_vec()), Some(b"xy".to_vec())]
        );
        assert_eq!(frames(&mut f, b"0123456789"), []);
        assert_eq!(frames(&mut f, b"abc\nok\n"), [None, Some(b"ok".to_vec())]);
    }

    #[test]
    fn nmea_checksums_are_verified() {
        let body = "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,";
        let line = format!("${body}*{:02X}", nmea_checksum(body));
        assert_eq!(
            line,
            "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
        );
        assert_eq!(nmea_sentence(&line), Some(body));
        assert_eq!(nmea_sentence(&line.replace("*47", "*48")), None);
        assert_eq!(nmea_sentence(body), None, "no $");
        assert_eq!(nmea_sentence("$GPGGA,1"), None, "no checksum");
        assert_eq!(nmea_sentence("$*"), None);
    }

    fn field_point(name: &str, data_type: DataType) -> PointSettings {
        PointSettings {
            name: name.into(),
            source: Source::Field(name.into()),
            data_type,
            scale: Real(1.0),
            offset: Real(0.0),
            unit: None,
            deadband: Real(0.0),
            interval: Duration::from_secs(1),
            heartbeat: None,
            writable: false,
            min: None,
            max: None,
        }
    }

    fn settings(format: LineFormat) -> LineSettings {
        LineSettings {
            format,
            delimiter: b'\n',
            max_line: 256,
        }
    }

    #[test]
    fn regex_json_and_nmea_lines_give_their_points() {
        let points = [
            field_point("temp", DataType::F64),
            field_point("ok", DataType::Bool),
        ];
        let mut out = Vec::new();
        let re = LineParser::new(
            &settings(LineFormat::Regex {
                pattern: r"T=(?P<temp>[-0-9.]+) OK=(?P<ok>\d)".into(),
            }),
            &points,
        )
        .unwrap();
        re.parse(b"T=-3.5 OK=1", &mut out).unwrap();
        assert_eq!(out, [(0, Value::Float(-3.5)), (1, Value::Bool(true))]);
        assert_eq!(
            re.parse(b"garbage", &mut out),
            Err(LineError::Garbage("no match"))
        );
        assert!(re.parse(&[0xff, 0xfe], &mut out).is_err());

        let json = LineParser::new(
            &settings(LineFormat::Json),
            &[field_point("a.b", DataType::F64)],
        )
        .unwrap();
        json.parse(br#"{"a":{"b":2.5}}"#, &mut out).unwrap();
        assert_eq!(out, [(0, Value::Float(2.5))]);
        assert!(json.parse(b"{", &mut out).is_err());
        assert!(json.parse(b"{}", &mut out).is_err());

        let nmea = LineParser::new(
            &settings(LineFormat::Nmea {
                pattern: r"^GPGGA,[^,]*,(?P<temp>[0-9.]+)".into(),
            }),
            &points,
        )
        .unwrap();
        let body = "GPGGA,123519,4807.038,N";
        let line = format!("${body}*{:02X}", nmea_checksum(body));
        nmea.parse(line.as_bytes(), &mut out).unwrap();
        assert_eq!(out, [(0, Value::Float(4807.038))]);
        assert_eq!(
            nmea.parse(b"$GPGGA,1,2*00", &mut out),
            Err(LineError::Checksum)
        );
    }

    proptest! {
        /// Whatever arrives, the framer's buffer stays within max_line, every line it yields is
        /// within max_line, and the parser never panics.
        #[test]
        fn framing_and_parsing_any_bytes_is_bounded_and_safe(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..20),
        ) {
            let points = [field_point("v", DataType::F64), field_point("s", DataType::String { len: 8 })];
            let parsers = [
                LineParser::new(&settings(LineFormat::Json), &points).unwrap(),
                LineParser::new(&settings(LineFormat::Regex { pattern: r"(?P<v>[0-9.]+)".into() }), &points).unwrap(),
                LineParser::new(&settings(LineFormat::Nmea { pattern: r"(?P<v>[0-9.]+)".into() }), &points).unwrap(),
            ];
            let mut framer = Framer::new(b'\n', 16);
            let mut out = Vec::new();
            for chunk in &chunks {
                framer.push(chunk, |f| {
                    if let Frame::Line(l) = f {
                        assert!(l.len() <= 16);
                        for p in &parsers {
                            let _ = p.parse(l, &mut out);
                        }
                    }
                });
                prop_assert!(framer.buf.len() <= 16);
            }
        }
    }
}
