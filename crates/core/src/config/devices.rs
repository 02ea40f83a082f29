//! `[bridge]` and `[[devices]]`: the field devices the bridge reads and writes, validated.
//!
//! The types here are what `fieldlink-serial` runs on; nothing in them needs checking again.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::error::Collector;
use super::file::{BridgeFile, DeviceFile, PointFile};
use super::validate::{duration, int};
use crate::message::QoS;
use crate::topic::TopicName;

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

impl Template {
    /// Parses `text`: only the known placeholders, each inside braces. `allowed` lists the
    /// placeholder names this template may use; `required` those it must use.
    pub fn parse(text: &str, allowed: &[&str], required: &[&str]) -> Result<Self, String> {
        let mut used = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err("a '}' without its '{'".into());
            }
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or("a '{' without its '}'")?;
            let name = &after[..close];
            if !allowed.contains(&name) {
                return Err(format!(
                    "unknown placeholder {{{name}}}: this template may use {}",
                    allowed
                        .iter()
                        .map(|a| format!("{{{a}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            used.push(name);
            rest = &after[close + 1..];
        }
        if let Some(missing) = required.iter().find(|r| !used.contains(r)) {
            return Err(format!("{{{missing}}} is missing, so topics would collide"));
        }
        let sample = Self(text.to_owned()).render(TemplateVars {
            site: "s",
            device: "d",
            point: "p",
        });
        TopicName::new(sample).map_err(|e| format!("not a valid topic: {e}"))?;
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

const DEVICE_KEYS_HINT: &str = "give the device a name, e.g. name = \"boiler\"";

pub(super) fn bridge(file: &BridgeFile, c: &mut Collector<'_>) -> BridgeSettings {
    let defaults = BridgeSettings::default();
    let site = match &file.site {
        None => defaults.site.clone(),
        Some(site) => {
            if !is_name(site.get_ref()) {
                c.at(
                    "bridge.site",
                    Some(site.span()),
                    "not a valid site name",
                    "use 1 to 64 letters, digits, '-' or '_' (it becomes a topic level)",
                );
            }
            site.get_ref().clone()
        }
    };
    let all = ["site", "device", "point"];
    let per_device = ["site", "device"];
    let qos = match &file.qos {
        None => defaults.qos,
        Some(q) => QoS::from_u8(u8::try_from(*q.get_ref()).unwrap_or(9)).unwrap_or_else(|| {
            c.at(
                "bridge.qos",
                Some(q.span()),
                "not an MQTT QoS",
                "write 0, 1 or 2",
            );
            defaults.qos
        }),
    };
    BridgeSettings {
        value_topic: template(
            c,
            "bridge.value_topic",
            &file.value_topic,
            &all,
            &["device", "point"],
            defaults.value_topic.clone(),
        ),
        snapshot_topic: template(
            c,
            "bridge.snapshot_topic",
            &file.snapshot_topic,
            &per_device,
            &["device"],
            defaults.snapshot_topic.clone(),
        ),
        command_topic: command_template(c, file, &all, defaults.command_topic.clone()),
        response_topic: template(
            c,
            "bridge.response_topic",
            &file.response_topic,
            &all,
            &["device", "point"],
            defaults.response_topic.clone(),
        ),
        status_topic: template(
            c,
            "bridge.status_topic",
            &file.status_topic,
            &per_device,
            &["device"],
            defaults.status_topic.clone(),
        ),
        site,
        qos,
        retain: file
            .retain
            .as_ref()
            .map_or(defaults.retain, |r| *r.get_ref()),
    }
}

/// The command template must also work as a filter with `+` for the point.
fn command_template(
    c: &mut Collector<'_>,
    file: &BridgeFile,
    all: &[&str],
    default: Template,
) -> Template {
    let key = "bridge.command_topic";
    let t = template(
        c,
        key,
        &file.command_topic,
        all,
        &["device", "point"],
        default.clone(),
    );
    let filter = t.render(TemplateVars {
        site: "s",
        device: "d",
        point: "+",
    });
    if crate::topic::TopicFilter::new(filter).is_err() {
        c.at(
            key,
            file.command_topic.as_ref().map(Spanned::span),
            "{point} must be a whole topic level in the command topic",
            "write it between slashes, e.g. \"{site}/{device}/{point}/set\"",
        );
        return default;
    }
    t
}

fn template(
    c: &mut Collector<'_>,
    key: &str,
    value: &Option<Spanned<String>>,
    allowed: &[&str],
    required: &[&str],
    default: Template,
) -> Template {
    let Some(value) = value else { return default };
    Template::parse(value.get_ref(), allowed, required).unwrap_or_else(|problem| {
        c.at(
            key,
            Some(value.span()),
            format!("not a valid topic template: {problem}"),
            "write topic levels with {site}, {device} and {point} as placeholders, \
             e.g. \"{site}/{device}/{point}\"",
        );
        default
    })
}

pub(super) fn devices(file: &[Spanned<DeviceFile>], c: &mut Collector<'_>) -> Vec<DeviceSettings> {
    let mut out: Vec<DeviceSettings> = Vec::new();
    let mut names = HashSet::new();
    // Which protocol uses each serial path: a line device cannot share its port.
    let mut ports: Vec<(PathBuf, bool, SerialSettings)> = Vec::new();
    for (i, entry) in file.iter().enumerate() {
        let key = format!("devices[{i}]");
        let errors_before = c.len();
        let Some(device) = device(&key, entry, c) else {
            continue;
        };
        if !names.insert(device.name.clone()) {
            c.at(
                &format!("{key}.name"),
                entry.get_ref().name.as_ref().map(Spanned::span),
                "another device has this name",
                "give each device its own name: it is a topic level",
            );
        }
        if let Link::Serial(serial) = &device.link {
            let is_lines = matches!(device.protocol, Protocol::Lines(_));
            if let Some((_, other_lines, other)) = ports.iter().find(|p| p.0 == serial.path) {
                let span = entry.get_ref().port.as_ref().map(Spanned::span);
                if is_lines || *other_lines {
                    c.at(
                        &format!("{key}.port"),
                        span,
                        "another device uses this port, and a line device needs a port of its own",
                        "give the line device its own serial port",
                    );
                } else if other != serial {
                    c.at(
                        &format!("{key}.port"),
                        span,
                        "another device on this port has other line settings",
                        "devices sharing a port share its baud, parity, data and stop bits: \
                         write the same values for each",
                    );
                }
            } else {
                ports.push((serial.path.clone(), is_lines, serial.clone()));
            }
        }
        if c.len() == errors_before {
            out.push(device);
        }
    }
    out
}

fn device(key: &str, entry: &Spanned<DeviceFile>, c: &mut Collector<'_>) -> Option<DeviceSettings> {
    let file = entry.get_ref();
    let errors_before = c.len();
    let name = name(
        c,
        &format!("{key}.name"),
        &file.name,
        entry,
        DEVICE_KEYS_HINT,
    );
    let protocol_name = match &file.protocol {
        None => {
            c.missing(
                &format!("{key}.protocol"),
                entry.span(),
                "write protocol = \"modbus-rtu\", \"modbus-tcp\" or \"lines\"",
            );
            return None;
        }
        Some(p) => p,
    };
    let kind = protocol_name.get_ref().as_str();
    let serial = match kind {
        "modbus-rtu" | "lines" => serial(key, entry, c),
        "modbus-tcp" => None,
        _ => {
            c.at(
                &format!("{key}.protocol"),
                Some(protocol_name.span()),
                "unknown protocol",
                "write \"modbus-rtu\", \"modbus-tcp\" or \"lines\"",
            );
            return None;
        }
    };
    let link = match kind {
        "modbus-tcp" => {
            for (field, span) in [
                ("port", file.port.as_ref().map(Spanned::span)),
                ("baud", file.baud.as_ref().map(Spanned::span)),
            ] {
                if let Some(span) = span {
                    c.at(
                        &format!("{key}.{field}"),
                        Some(span),
                        "a Modbus TCP device has no serial port",
                        "remove it, or use protocol = \"modbus-rtu\"",
                    );
                }
            }
            tcp_address(key, entry, c).map(Link::Tcp)
        }
        _ => serial.map(Link::Serial),
    };
    let is_lines = kind == "lines";
    let protocol = if is_lines {
        lines(key, entry, c).map(Protocol::Lines)
    } else {
        let unit = match &file.unit {
            None if kind == "modbus-rtu" => {
                c.missing(
                    &format!("{key}.unit"),
                    entry.span(),
                    "write the slave's Modbus address, e.g. unit = 1",
                );
                None
            }
            // Modbus TCP servers mostly ignore the unit id; 255 is the usual "this server".
            None => Some(255),
            Some(_) => int(c, &format!("{key}.unit"), &file.unit, 0..=255),
        };
        let max_gap = int(c, &format!("{key}.max_gap"), &file.max_gap, 0..=100).unwrap_or(8);
        unit.map(|unit| Protocol::Modbus { unit, max_gap })
    };
    let interval = duration(
        c,
        &format!("{key}.interval"),
        &file.interval,
        Duration::from_millis(10)..=Duration::from_secs(86_400),
        Duration::from_secs(1),
    );
    let heartbeat = file.heartbeat.as_ref().map(|_| {
        duration(
            c,
            &format!("{key}.heartbeat"),
            &file.heartbeat,
            Duration::from_millis(10)..=Duration::from_secs(86_400),
            Duration::from_secs(60),
        )
    });
    if file.points.is_empty() && !is_lines {
        c.at(
            &format!("{key}.points"),
            file.name.as_ref().map(Spanned::span),
            "a Modbus device needs at least one point",
            "add a [[devices.points]] table with name, table, address and type",
        );
    }
    let mut points: Vec<PointSettings> = Vec::new();
    for (j, p) in file.points.iter().enumerate() {
        let pkey = format!("{key}.points[{j}]");
        if let Some(point) = point(&pkey, p, is_lines, interval, heartbeat, c) {
            if points.iter().any(|q| q.name == point.name) {
                c.at(
                    &format!("{pkey}.name"),
                    p.get_ref().name.as_ref().map(Spanned::span),
                    "another point of this device has this name",
                    "give each point its own name: it is a topic level",
                );
            }
            points.push(point);
        }
    }
    if let Some(Protocol::Lines(LineSettings {
        format: LineFormat::Regex { pattern } | LineFormat::Nmea { pattern },
        ..
    })) = &protocol
    {
        // Each named capture is a point; captures without a [[devices.points]] get defaults.
        let captures = capture_names(pattern);
        for (j, p) in file.points.iter().enumerate() {
            let field = p.get_ref().field.as_ref().or(p.get_ref().name.as_ref());
            if let Some(field) = field
                && !captures.contains(field.get_ref())
            {
                c.at(
                    &format!("{key}.points[{j}].name"),
                    Some(field.span()),
                    "the pattern has no capture of this name, so the point never gets a value",
                    format!(
                        "name the point after one of the pattern's captures: {}",
                        captures.join(", ")
                    ),
                );
            }
        }
        for capture in captures {
            if !points.iter().any(|p| p.name == capture) {
                points.push(PointSettings {
                    source: Source::Field(capture.clone()),
                    name: capture,
                    data_type: DataType::F64,
                    scale: Real(1.0),
                    offset: Real(0.0),
                    unit: None,
                    deadband: Real(0.0),
                    interval,
                    heartbeat,
                    writable: false,
                    min: None,
                    max: None,
                });
            }
        }
    }
    if let Some(rs485) = &file.rs485
        && *rs485.get_ref()
    {
        c.at(
            &format!("{key}.rs485"),
            Some(rs485.span()),
            "kernel RS-485 mode cannot be switched on by fieldlink (the serial library has no \
             TIOCSRS485 call)",
            "use an adapter with automatic direction control, or enable RS-485 in the \
             device tree (e.g. linux,rs485-enabled-at-boot-time), then remove this key",
        );
    }
    let timeout = duration(
        c,
        &format!("{key}.timeout"),
        &file.timeout,
        Duration::from_millis(10)..=Duration::from_secs(600),
        if is_lines {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(1)
        },
    );
    let settings = DeviceSettings {
        name,
        link: link?,
        protocol: protocol?,
        timeout,
        retries: int(c, &format!("{key}.retries"), &file.retries, 0..=10).unwrap_or(2),
        offline_after: int(
            c,
            &format!("{key}.offline_after"),
            &file.offline_after,
            1..=1000,
        )
        .unwrap_or(3),
        offline_interval: duration(
            c,
            &format!("{key}.offline_interval"),
            &file.offline_interval,
            Duration::from_millis(10)..=Duration::from_secs(86_400),
            Duration::from_secs(30),
        ),
        snapshot: file.snapshot.as_ref().is_some_and(|s| *s.get_ref()),
        points,
    };
    (c.len() == errors_before).then_some(settings)
}

fn serial(key: &str, entry: &Spanned<DeviceFile>, c: &mut Collector<'_>) -> Option<SerialSettings> {
    let file = entry.get_ref();
    let path = match &file.port {
        None => {
            c.missing(
                &format!("{key}.port"),
                entry.span(),
                "name the serial port, e.g. port = \"/dev/ttyUSB0\"",
            );
            None
        }
        Some(p) => Some(p.get_ref().clone()),
    };
    let parity = match &file.parity {
        None => Parity::None,
        Some(p) => match p.get_ref().as_str() {
            "none" => Parity::None,
            "even" => Parity::Even,
            "odd" => Parity::Odd,
            _ => {
                c.at(
                    &format!("{key}.parity"),
                    Some(p.span()),
                    "unknown parity",
                    "write \"none\", \"even\" or \"odd\"",
                );
                Parity::None
            }
        },
    };
    Some(SerialSettings {
        path: path?,
        baud: int(c, &format!("{key}.baud"), &file.baud, 50..=4_000_000).unwrap_or(9600),
        parity,
        data_bits: int(c, &format!("{key}.data_bits"), &file.data_bits, 5..=8).unwrap_or(8),
        stop_bits: int(c, &format!("{key}.stop_bits"), &file.stop_bits, 1..=2).unwrap_or(1),
    })
}

fn tcp_address(
    key: &str,
    entry: &Spanned<DeviceFile>,
    c: &mut Collector<'_>,
) -> Option<SocketAddr> {
    let Some(address) = &entry.get_ref().address else {
        c.missing(
            &format!("{key}.address"),
            entry.span(),
            "write the server's address, e.g. address = \"192.168.1.20:502\"",
        );
        return None;
    };
    // Numeric addresses only: a name lookup at start-up would make the config depend on DNS.
    let parsed = address.get_ref().parse::<SocketAddr>().ok().or_else(|| {
        address
            .get_ref()
            .parse::<std::net::IpAddr>()
            .ok()
            .and_then(|ip| (ip, 502).to_socket_addrs().ok()?.next())
    });
    if parsed.is_none() {
        c.at(
            &format!("{key}.address"),
            Some(address.span()),
            "not an IP address with a port",
            "write e.g. \"192.168.1.20:502\" (host names are not looked up)",
        );
    }
    parsed
}

fn lines(key: &str, entry: &Spanned<DeviceFile>, c: &mut Collector<'_>) -> Option<LineSettings> {
    let file = entry.get_ref();
    let Some(format) = &file.format else {
        c.missing(
            &format!("{key}.format"),
            entry.span(),
            "write format = \"regex\", \"json\" or \"nmea\"",
        );
        return None;
    };
    let format = match format.get_ref().as_str() {
        "json" => Some(LineFormat::Json),
        "nmea" => line_pattern(key, entry, c).map(|pattern| LineFormat::Nmea { pattern }),
        "regex" => line_pattern(key, entry, c).map(|pattern| LineFormat::Regex { pattern }),
        _ => {
            c.at(
                &format!("{key}.format"),
                Some(format.span()),
                "unknown line format",
                "write \"regex\", \"json\" or \"nmea\"",
            );
            None
        }
    };
    let delimiter = match &file.delimiter {
        None => b'\n',
        Some(d) => match d.get_ref().as_bytes() {
            [b] => *b,
            _ => {
                c.at(
                    &format!("{key}.delimiter"),
                    Some(d.span()),
                    "the delimiter must be exactly one byte",
                    "write e.g. \"\\n\" or \"\\r\"",
                );
                b'\n'
            }
        },
    };
    Some(LineSettings {
        format: format?,
        delimiter,
        max_line: int(c, &format!("{key}.max_line"), &file.max_line, 8..=65_536).unwrap_or(1024),
    })
}

fn line_pattern(key: &str, entry: &Spanned<DeviceFile>, c: &mut Collector<'_>) -> Option<String> {
    let file = entry.get_ref();
    let Some(p) = &file.pattern else {
        c.missing(
            &format!("{key}.pattern"),
            entry.span(),
            "write a regular expression with named captures, e.g. \
                 pattern = 'T=(?P<temp>[-0-9.]+)'",
        );
        return None;
    };
    match regex_lite::Regex::new(p.get_ref()) {
        Ok(re) if re.capture_names().flatten().next().is_some() => Some(p.get_ref().clone()),
        Ok(_) => {
            c.at(
                &format!("{key}.pattern"),
                Some(p.span()),
                "the pattern has no named capture, so it yields no point",
                "name each value with (?P<name>...)",
            );
            None
        }
        Err(e) => {
            c.at(
                &format!("{key}.pattern"),
                Some(p.span()),
                format!("not a valid regular expression: {e}"),
                "fix the pattern (syntax of the regex-lite crate)",
            );
            None
        }
    }
}

fn point(
    key: &str,
    entry: &Spanned<PointFile>,
    is_lines: bool,
    interval: Duration,
    heartbeat: Option<Duration>,
    c: &mut Collector<'_>,
) -> Option<PointSettings> {
    let file = entry.get_ref();
    let errors_before = c.len();
    let name = name(
        c,
        &format!("{key}.name"),
        &file.name,
        entry,
        "name the point, e.g. name = \"temperature\"",
    );
    let data_type = data_type(key, entry, is_lines, c);
    let source = if is_lines {
        Source::Field(
            file.field
                .as_ref()
                .map_or_else(|| name.clone(), |f| f.get_ref().clone()),
        )
    } else {
        register_source(key, entry, data_type, c)?
    };
    let writable = file.writable.as_ref().is_some_and(|w| *w.get_ref());
    if writable {
        let ok = matches!(
            source,
            Source::Register {
                table: Table::Holding | Table::Coil,
                ..
            }
        );
        if !ok {
            c.at(
                &format!("{key}.writable"),
                file.writable.as_ref().map(Spanned::span),
                "only holding registers and coils can be written",
                "remove writable, or point at a holding register or coil",
            );
        }
    }
    let real = |v: &Option<Spanned<f64>>, field: &str, c: &mut Collector<'_>| {
        v.as_ref().and_then(|v| {
            if v.get_ref().is_finite() {
                Some(Real(*v.get_ref()))
            } else {
                c.at(
                    &format!("{key}.{field}"),
                    Some(v.span()),
                    "must be a finite number",
                    "write a plain number",
                );
                None
            }
        })
    };
    let scale = real(&file.scale, "scale", c).unwrap_or(Real(1.0));
    if scale.0 == 0.0 {
        c.at(
            &format!("{key}.scale"),
            file.scale.as_ref().map(Spanned::span),
            "a scale of 0 makes every value 0 and writes impossible",
            "write a non-zero multiplier, or leave scale out (1)",
        );
    }
    let deadband = real(&file.deadband, "deadband", c).unwrap_or(Real(0.0));
    if deadband.0 < 0.0 {
        c.at(
            &format!("{key}.deadband"),
            file.deadband.as_ref().map(Spanned::span),
            "a deadband cannot be negative",
            "write 0 or more",
        );
    }
    let (min, max) = (real(&file.min, "min", c), real(&file.max, "max", c));
    if let (Some(lo), Some(hi)) = (min, max)
        && lo.0 > hi.0
    {
        c.at(
            &format!("{key}.min"),
            file.min.as_ref().map(Spanned::span),
            "min is above max",
            "swap them",
        );
    }
    let settings = PointSettings {
        name,
        source,
        data_type: data_type?,
        scale,
        offset: real(&file.offset, "offset", c).unwrap_or(Real(0.0)),
        unit: file.unit.as_ref().map(|u| u.get_ref().clone()),
        deadband,
        interval: file.interval.as_ref().map_or(interval, |_| {
            duration(
                c,
                &format!("{key}.interval"),
                &file.interval,
                Duration::from_millis(10)..=Duration::from_secs(86_400),
                interval,
            )
        }),
        heartbeat: file.heartbeat.as_ref().map_or(heartbeat, |_| {
            Some(duration(
                c,
                &format!("{key}.heartbeat"),
                &file.heartbeat,
                Duration::from_millis(10)..=Duration::from_secs(86_400),
                Duration::from_secs(60),
            ))
        }),
        writable,
        min,
        max,
    };
    (c.len() == errors_before).then_some(settings)
}

fn data_type(
    key: &str,
    entry: &Spanned<PointFile>,
    is_lines: bool,
    c: &mut Collector<'_>,
) -> Option<DataType> {
    let file = entry.get_ref();
    let Some(t) = &file.data_type else {
        if is_lines {
            return Some(DataType::F64);
        }
        c.missing(
            &format!("{key}.type"),
            entry.span(),
            "write the data type, e.g. type = \"u16\"",
        );
        return None;
    };
    let parsed = match t.get_ref().as_str() {
        "bool" => DataType::Bool,
        "f32" => DataType::F32,
        "f64" => DataType::F64,
        "i16" => DataType::I16,
        "i32" => DataType::I32,
        "i64" => DataType::I64,
        "u16" => DataType::U16,
        "u32" => DataType::U32,
        "u64" => DataType::U64,
        "string" => {
            let Some(len) = &file.length else {
                c.at(
                    &format!("{key}.length"),
                    Some(t.span()),
                    "a string point needs a length",
                    "write its length in bytes (two per register), e.g. length = 16",
                );
                return None;
            };
            let max = i64::from(MAX_REGISTERS_PER_READ) * 2;
            let len = int(c, &format!("{key}.length"), &Some(len.clone()), 1..=max)?;
            DataType::String { len }
        }
        _ => {
            c.at(
                &format!("{key}.type"),
                Some(t.span()),
                "unknown data type",
                "write one of \"u16\", \"i16\", \"u32\", \"i32\", \"u64\", \"i64\", \"f32\", \
                 \"f64\", \"bool\" or \"string\"",
            );
            return None;
        }
    };
    Some(parsed)
}

fn register_source(
    key: &str,
    entry: &Spanned<PointFile>,
    data_type: Option<DataType>,
    c: &mut Collector<'_>,
) -> Option<Source> {
    let file = entry.get_ref();
    let table = match &file.table {
        None => {
            c.missing(
                &format!("{key}.table"),
                entry.span(),
                "write table = \"holding\", \"input\", \"coil\" or \"discrete\"",
            );
            None
        }
        Some(t) => match t.get_ref().as_str() {
            "holding" => Some(Table::Holding),
            "input" => Some(Table::Input),
            "coil" => Some(Table::Coil),
            "discrete" => Some(Table::Discrete),
            _ => {
                c.at(
                    &format!("{key}.table"),
                    Some(t.span()),
                    "unknown Modbus table",
                    "write \"holding\", \"input\", \"coil\" or \"discrete\"",
                );
                None
            }
        },
    };
    let address = match &file.address {
        None => {
            c.missing(
                &format!("{key}.address"),
                entry.span(),
                "write the 0-based register address, e.g. address = 0 (40001 is address 0)",
            );
            None
        }
        Some(_) => int::<u16>(c, &format!("{key}.address"), &file.address, 0..=65_535),
    };
    let order = |v: &Option<Spanned<String>>, field: &str, c: &mut Collector<'_>| match v {
        None => Order::Big,
        Some(o) => match o.get_ref().as_str() {
            "big" => Order::Big,
            "little" => Order::Little,
            _ => {
                c.at(
                    &format!("{key}.{field}"),
                    Some(o.span()),
                    "unknown order",
                    "write \"big\" (most significant first) or \"little\"",
                );
                Order::Big
            }
        },
    };
    let word_order = order(&file.word_order, "word_order", c);
    let byte_order = order(&file.byte_order, "byte_order", c);
    let (table, address, data_type) = (table?, address?, data_type?);
    if table.is_bits() && data_type != DataType::Bool {
        c.at(
            &format!("{key}.type"),
            file.data_type.as_ref().map(Spanned::span),
            "coils and discrete inputs hold single bits",
            "write type = \"bool\", or read a holding or input register",
        );
        return None;
    }
    let count = data_type.registers();
    if u32::from(address) + u32::from(count) > 65_536 {
        c.at(
            &format!("{key}.address"),
            file.address.as_ref().map(Spanned::span),
            format!("the value's {count} registers run past address 65535"),
            "check the address and the type",
        );
        return None;
    }
    Some(Source::Register {
        table,
        address,
        word_order,
        byte_order,
    })
}

/// A required name usable as a topic level.
fn name<T>(
    c: &mut Collector<'_>,
    key: &str,
    value: &Option<Spanned<String>>,
    entry: &Spanned<T>,
    hint: &str,
) -> String {
    match value {
        None => {
            c.missing(key, entry.span(), hint);
            String::new()
        }
        Some(n) => {
            if !is_name(n.get_ref()) {
                c.at(
                    key,
                    Some(n.span()),
                    "not a valid name",
                    "use 1 to 64 letters, digits, '-' or '_' (it becomes a topic level)",
                );
            }
            n.get_ref().clone()
        }
    }
}

fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
}

/// The named captures of a pattern already known to compile.
fn capture_names(pattern: &str) -> Vec<String> {
    regex_lite::Regex::new(pattern)
        .map(|re| re.capture_names().flatten().map(str::to_owned).collect())
        .unwrap_or_default()
}

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
            Template::parse(text, allowed, required).unwrap_err()
        };
        assert!(err("{site}/{dev}", &ALL, &[]).contains("unknown placeholder {dev}"));
        assert!(err("{site}/{point}", &["site", "device"], &[]).contains("{point}"));
        assert!(err("{site}/{device", &ALL, &[]).contains("without its '}'"));
        assert!(err("{site}/device}", &ALL, &[]).contains("without its '{'"));
        assert!(err("{site}/x", &ALL, &["device"]).contains("{device} is missing"));
        assert!(err("{site}/#/{device}", &ALL, &["device"]).contains("not a valid topic"));
        assert!(err("", &ALL, &[]).contains("not a valid topic"));
    }
}
