//! `[bridge]` and `[[devices]]`: the bridge's sections of the configuration, owned here.
//!
//! [`file`] is the sections as written; the types here are what the bridge runs on, every value
//! checked and every default filled in, so nothing in them needs checking again. [`bridge`] and
//! [`devices`] go from one to the other, recording every mistake in the shared collector
//! (`crates/fieldlink` assembles the sections). Each default is a named constant below, used by
//! validation and by the annotated `configs/fieldlink.toml` test alike.

pub mod file;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fieldlink_core::fault::Fault;
use fieldlink_core::message::QoS;
use fieldlink_core::topic::{TopicError, TopicName};
pub use validate::{bridge, devices};

/// Poll interval of a device's points when the file gives none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// A heartbeat given with a value that is not a duration falls back to this (the mistake is
/// reported anyway).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(60);
/// How long one Modbus request may take: a slave answers within tens of milliseconds.
pub const DEFAULT_MODBUS_TIMEOUT: Duration = Duration::from_secs(1);
/// One silence window of a line device: NMEA and most meters talk at least every few seconds.
pub const DEFAULT_LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries of a failed request, with backoff.
pub const DEFAULT_RETRIES: u32 = 2;
/// Failed polls in a row before a device is offline.
pub const DEFAULT_OFFLINE_AFTER: u32 = 3;
/// Poll interval while a device is offline.
pub const DEFAULT_OFFLINE_INTERVAL: Duration = Duration::from_secs(30);
/// Largest run of unused registers read to join two ranges into one request.
pub const DEFAULT_MAX_GAP: u16 = 8;
/// Serial line settings when the file gives none: 9600 8N1, the Modbus RTU default.
pub const DEFAULT_BAUD: u32 = 9600;
/// See [`DEFAULT_BAUD`].
pub const DEFAULT_DATA_BITS: u8 = 8;
/// See [`DEFAULT_BAUD`].
pub const DEFAULT_STOP_BITS: u8 = 1;
/// Longest line of a line device, in bytes.
pub const DEFAULT_MAX_LINE: usize = 1024;
/// The byte that ends a line.
pub const DEFAULT_DELIMITER: u8 = b'\n';
/// Modbus TCP servers mostly ignore the unit id; 255 is the usual "this server".
pub const MODBUS_TCP_UNIT: u8 = 255;
/// The Modbus TCP port (IANA), used when an address has none.
pub const MODBUS_TCP_PORT: u16 = 502;

/// Most registers one Modbus read may ask for (Modbus application protocol, §6.3).
pub const MAX_REGISTERS_PER_READ: u16 = 125;
/// Most coils or discrete inputs one Modbus read may ask for (§6.1).
pub const MAX_BITS_PER_READ: u16 = 2000;

/// `[bridge]`: how values become MQTT messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSettings {
    /// `{site}` in templates.
    pub site: String,
    /// Topic of each value.
    pub value_topic: Template,
    /// Topic of a device's snapshot, if snapshots are published.
    pub snapshot_topic: Template,
    /// Topic of write commands.
    pub command_topic: Template,
    /// Topic of write results.
    pub response_topic: Template,
    /// Topic of a device's retained status.
    pub status_topic: Template,
    /// QoS of value messages.
    pub qos: QoS,
    /// Whether value messages are retained.
    pub retain: bool,
}

impl Default for BridgeSettings {
    fn default() -> Self {
        Self {
            site: "site".into(),
            value_topic: Template::new_unchecked("{site}/{device}/{point}"),
            snapshot_topic: Template::new_unchecked("{site}/{device}/snapshot"),
            command_topic: Template::new_unchecked("{site}/{device}/{point}/set"),
            response_topic: Template::new_unchecked("{site}/{device}/{point}/set/result"),
            status_topic: Template::new_unchecked("{site}/{device}/status"),
            qos: QoS::AtLeastOnce,
            retain: false,
        }
    }
}

/// A topic template with the placeholders `{site}`, `{device}` and `{point}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(String);

/// What a topic template may be filled with.
#[derive(Debug, Clone, Copy)]
pub struct TemplateVars<'a> {
    /// `{site}`.
    pub site: &'a str,
    /// `{device}`.
    pub device: &'a str,
    /// `{point}`.
    pub point: &'a str,
}

/// Why a topic template is not valid (the operator's configuration, every time).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// A placeholder the template may not use.
    #[error(
        "unknown placeholder {{{name}}}: this template may use {}",
        braced(allowed)
    )]
    UnknownPlaceholder {
        /// The name written between the braces.
        name: String,
        /// The names this template may use.
        allowed: Vec<String>,
    },
    /// A placeholder the template must use, so that topics do not collide.
    #[error("{{{0}}} is missing, so topics would collide")]
    MissingPlaceholder(String),
    /// With sample values filled in, the template is not a topic name.
    #[error("not a valid topic: {0}")]
    Topic(#[from] TopicError),
    /// A `{` that is never closed.
    #[error("a '{{' without its '}}'")]
    UnclosedBrace,
    /// A `}` that was never opened.
    #[error("a '}}' without its '{{'")]
    UnopenedBrace,
}

impl TemplateError {
    /// Whose fault it is: templates come from the configuration.
    pub fn fault(&self) -> Fault {
        Fault::Config
    }
}

fn braced(names: &[String]) -> String {
    names
        .iter()
        .map(|a| format!("{{{a}}}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Template {
    /// Parses `text`: only the known placeholders, each inside braces. `allowed` lists the
    /// placeholder names this template may use; `required` those it must use.
    pub fn parse(text: &str, allowed: &[&str], required: &[&str]) -> Result<Self, TemplateError> {
        let mut used = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err(TemplateError::UnopenedBrace);
            }
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or(TemplateError::UnclosedBrace)?;
            let name = &after[..close];
            if !allowed.contains(&name) {
                return Err(TemplateError::UnknownPlaceholder {
                    name: name.to_owned(),
                    allowed: allowed.iter().map(|&a| a.to_owned()).collect(),
                });
            }
            used.push(name);
            rest = &after[close + 1..];
        }
        if let Some(missing) = required.iter().find(|r| !used.contains(r)) {
            return Err(TemplateError::MissingPlaceholder((*missing).to_owned()));
        }
        let sample = Self(text.to_owned()).render(TemplateVars {
            site: "s",
            device: "d",
            point: "p",
        });
        TopicName::new(sample)?;
        Ok(Self(text.to_owned()))
    }

    /// A template known to be valid (the built-in defaults).
    pub fn new_unchecked(text: &str) -> Self {
        Self(text.to_owned())
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Fills in the placeholders.
    pub fn render(&self, vars: TemplateVars<'_>) -> String {
        let mut out = String::with_capacity(self.0.len() + 32);
        let mut rest = self.0.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                out.push_str(&rest[open..]);
                return out;
            };
            match &after[..close] {
                "site" => out.push_str(vars.site),
                "device" => out.push_str(vars.device),
                "point" => out.push_str(vars.point),
                other => {
                    out.push('{');
                    out.push_str(other);
                    out.push('}');
                }
            }
            rest = &after[close + 1..];
        }
        out.push_str(rest);
        out
    }
}

/// One field device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSettings {
    /// `{device}` in templates.
    pub name: String,
    /// How it is reached.
    pub link: Link,
    /// What it speaks.
    pub protocol: Protocol,
    /// Most time one request may take (Modbus), or one silence window (lines).
    pub timeout: Duration,
    /// Retries of a failed request, with backoff.
    pub retries: u32,
    /// Failed polls (silence windows) in a row before the device is offline.
    pub offline_after: u32,
    /// Poll interval while offline.
    pub offline_interval: Duration,
    /// Publish one snapshot message per poll as well.
    pub snapshot: bool,
    /// Its points, in file order.
    pub points: Vec<PointSettings>,
}

/// How a device is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// A serial port. Devices naming the same path share it, one transaction at a time.
    Serial(SerialSettings),
    /// A Modbus TCP server.
    Tcp(SocketAddr),
}

/// A serial port's settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SerialSettings {
    /// The device path, e.g. `/dev/ttyUSB0`.
    pub path: PathBuf,
    /// Baud rate.
    pub baud: u32,
    /// Parity.
    pub parity: Parity,
    /// Data bits, 5 to 8.
    pub data_bits: u8,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parity {
    /// Even.
    Even,
    /// None (the default).
    None,
    /// Odd.
    Odd,
}

/// What a device speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// Lines of text, parsed into points.
    Lines(LineSettings),
    /// Modbus (RTU on a serial link, TCP on a network link).
    Modbus {
        /// The unit (slave) id.
        unit: u8,
        /// Largest run of unused registers (or bits) read to join two ranges into one request.
        max_gap: u16,
    },
}

/// A line device's framing and parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineSettings {
    /// How a line becomes values.
    pub format: LineFormat,
    /// The byte that ends a line.
    pub delimiter: u8,
    /// Longest line in bytes; longer lines are counted and discarded.
    pub max_line: usize,
}

/// How a line becomes values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineFormat {
    /// A JSON object per line; each point names a field.
    Json,
    /// NMEA 0183: the checksum is verified, then `pattern` is matched against the sentence
    /// between `$` and `*`.
    Nmea {
        /// Regular expression with named captures.
        pattern: String,
    },
    /// `pattern` is matched against the line; each named capture is a point.
    Regex {
        /// Regular expression with named captures.
        pattern: String,
    },
}

/// One value of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointSettings {
    /// `{point}` in templates.
    pub name: String,
    /// Where the raw value comes from.
    pub source: Source,
    /// How the raw value is read.
    pub data_type: DataType,
    /// Multiplier applied to the raw value.
    pub scale: Real,
    /// Added after scaling.
    pub offset: Real,
    /// Unit shown in payloads.
    pub unit: Option<String>,
    /// Smallest change published (0: every change).
    pub deadband: Real,
    /// Poll interval (Modbus).
    pub interval: Duration,
    /// Publish at least this often, even without change.
    pub heartbeat: Option<Duration>,
    /// Accepts write commands (holding registers and coils only).
    pub writable: bool,
    /// Lowest value a write may set, in engineering units.
    pub min: Option<Real>,
    /// Highest value a write may set, in engineering units.
    pub max: Option<Real>,
}

/// Where a point's raw value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A named capture (`regex`, `nmea`) or a JSON field path (`json`) of a line.
    Field(String),
    /// Modbus registers or bits.
    Register {
        /// Which table.
        table: Table,
        /// 0-based address of the first register or bit.
        address: u16,
        /// Order of 16-bit words in multi-register values.
        word_order: Order,
        /// Order of the two bytes in each register.
        byte_order: Order,
    },
}

/// A Modbus data table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Coils: read/write bits (01, 05, 15).
    Coil,
    /// Discrete inputs: read-only bits (02).
    Discrete,
    /// Holding registers: read/write words (03, 06, 16).
    Holding,
    /// Input registers: read-only words (04).
    Input,
}

impl Table {
    /// Whether the table holds bits (coils, discrete inputs) rather than 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Self::Coil | Self::Discrete)
    }
}

/// Big (most significant first) or little endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Order {
    /// Most significant first (Modbus' own order, the default).
    #[default]
    Big,
    /// Least significant first.
    Little,
}

/// A point's data type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// A bit, or a register that is non-zero.
    Bool,
    /// IEEE 754 single precision (2 registers).
    F32,
    /// IEEE 754 double precision (4 registers).
    F64,
    /// Signed 16-bit.
    I16,
    /// Signed 32-bit (2 registers).
    I32,
    /// Signed 64-bit (4 registers).
    I64,
    /// Text of `len` bytes (2 per register), NULs and trailing spaces trimmed.
    String {
        /// Bytes.
        len: u16,
    },
    /// Unsigned 16-bit.
    U16,
    /// Unsigned 32-bit (2 registers).
    U32,
    /// Unsigned 64-bit (4 registers).
    U64,
}

impl DataType {
    /// Registers the type spans (1 for bits).
    pub fn registers(self) -> u16 {
        match self {
            Self::Bool | Self::I16 | Self::U16 => 1,
            Self::F32 | Self::I32 | Self::U32 => 2,
            Self::F64 | Self::I64 | Self::U64 => 4,
            Self::String { len } => len.div_ceil(2),
        }
    }

    /// Whether the type is numeric (scale, offset, deadband and range apply).
    pub fn is_numeric(self) -> bool {
        !matches!(self, Self::Bool | Self::String { .. })
    }
}

/// An `f64` that compares by its bits, so that settings stay `Eq`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Real(pub f64);

impl PartialEq for Real {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for Real {}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [&str; 3] = ["site", "device", "point"];

    fn vars() -> TemplateVars<'static> {
        TemplateVars {
            site: "plant-3",
            device: "boiler",
            point: "temp",
        }
    }

    #[test]
    fn templates_render_every_placeholder_and_keep_the_rest() {
        let t = Template::parse("{site}/x/{device}/{point}/{point}", &ALL, &["device"]).unwrap();
        assert_eq!(t.render(vars()), "plant-3/x/boiler/temp/temp");
        let t = Template::parse("fixed/{device}-dev", &ALL, &["device"]).unwrap();
        assert_eq!(t.render(vars()), "fixed/boiler-dev");
        for default in [
            BridgeSettings::default().value_topic,
            BridgeSettings::default().command_topic,
            BridgeSettings::default().status_topic,
        ] {
            let again = Template::parse(default.as_str(), &ALL, &["device"]).unwrap();
            assert_eq!(again, default, "the defaults are valid templates");
        }
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        let err = |text: &str, allowed: &[&str], required: &[&str]| {
            Template::parse(text, allowed, required)
                .unwrap_err()
                .to_string()
        };
        assert!(err("{site}/{dev}", &ALL, &[]).contains("unknown placeholder {dev}"));
        assert!(err("{site}/{point}", &["site", "device"], &[]).contains("{point}"));
        assert!(err("{site}/{device", &ALL, &[]).contains("without its '}'"));
        assert!(err("{site}/device}", &ALL, &[]).contains("without its '{'"));
        assert!(err("{site}/x", &ALL, &["device"]).contains("{device} is missing"));
        assert!(err("{site}/#/{device}", &ALL, &["device"]).contains("not a valid topic"));
        assert!(err("", &ALL, &[]).contains("not a valid topic"));
        assert_eq!(
            Template::parse("{site}/x", &ALL, &["device"]),
            Err(TemplateError::MissingPlaceholder("device".into()))
        );
        assert_eq!(
            Template::parse("{site}/{dev}", &["site"], &[]),
            Err(TemplateError::UnknownPlaceholder {
                name: "dev".into(),
                allowed: vec!["site".into()]
            })
        );
    }
}
