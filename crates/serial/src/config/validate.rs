//! Validation of `[bridge]` and `[[devices]]` into [`super`]'s types: every value checked, every
//! mistake recorded with its key, place and a hint.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use fieldlink_core::config::{Collector, choice, choice_or, duration, int};
use fieldlink_core::message::QoS;
use toml::Spanned;

use super::file::{BridgeFile, DeviceFile, PointFile};
use super::{
    BridgeSettings, DEFAULT_BAUD, DEFAULT_DATA_BITS, DEFAULT_DELIMITER, DEFAULT_HEARTBEAT,
    DEFAULT_INTERVAL, DEFAULT_LINE_TIMEOUT, DEFAULT_MAX_GAP, DEFAULT_MAX_LINE,
    DEFAULT_MODBUS_TIMEOUT, DEFAULT_OFFLINE_AFTER, DEFAULT_OFFLINE_INTERVAL, DEFAULT_RETRIES,
    DEFAULT_STOP_BITS, DataType, DeviceSettings, LineFormat, LineSettings, Link,
    MAX_REGISTERS_PER_READ, MODBUS_TCP_PORT, MODBUS_TCP_UNIT, Order, Parity, PointSettings,
    Protocol, Real, SerialSettings, Source, Table, Template, TemplateVars,
};

const DEVICE_KEYS_HINT: &str = "give the device a name, e.g. name = \"boiler\"";

/// Validates `[bridge]`, recording every mistake in `c`.
pub fn bridge(file: &BridgeFile, c: &mut Collector<'_>) -> BridgeSettings {
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
    if fieldlink_core::topic::TopicFilter::new(filter).is_err() {
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

/// Validates `[[devices]]`, recording every mistake in `c`; only valid devices are returned.
pub fn devices(file: &[Spanned<DeviceFile>], c: &mut Collector<'_>) -> Vec<DeviceSettings> {
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
    let kind = choice(
        c,
        &format!("{key}.protocol"),
        protocol_name,
        &[
            ("modbus-rtu", Kind::ModbusRtu),
            ("modbus-tcp", Kind::ModbusTcp),
            ("lines", Kind::Lines),
        ],
        "unknown protocol",
        "write \"modbus-rtu\", \"modbus-tcp\" or \"lines\"",
    )?;
    let link = link(key, entry, kind, c);
    let is_lines = kind == Kind::Lines;
    let protocol = match kind {
        Kind::Lines => lines(key, entry, c).map(Protocol::Lines),
        Kind::ModbusRtu | Kind::ModbusTcp => modbus(key, entry, kind, c),
    };
    let interval = duration(
        c,
        &format!("{key}.interval"),
        &file.interval,
        Duration::from_millis(10)..=Duration::from_secs(86_400),
        DEFAULT_INTERVAL,
    );
    let heartbeat = file.heartbeat.as_ref().map(|_| {
        duration(
            c,
            &format!("{key}.heartbeat"),
            &file.heartbeat,
            Duration::from_millis(10)..=Duration::from_secs(86_400),
            DEFAULT_HEARTBEAT,
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
    let points = points(
        key,
        file,
        (is_lines, protocol.as_ref()),
        interval,
        heartbeat,
        c,
    );
    reject_rs485(key, file, c);
    let timeout = duration(
        c,
        &format!("{key}.timeout"),
        &file.timeout,
        Duration::from_millis(10)..=Duration::from_secs(600),
        if is_lines {
            DEFAULT_LINE_TIMEOUT
        } else {
            DEFAULT_MODBUS_TIMEOUT
        },
    );
    let settings = DeviceSettings {
        name,
        link: link?,
        protocol: protocol?,
        timeout,
        retries: int(c, &format!("{key}.retries"), &file.retries, 0..=10)
            .unwrap_or(DEFAULT_RETRIES),
        offline_after: int(
            c,
            &format!("{key}.offline_after"),
            &file.offline_after,
            1..=1000,
        )
        .unwrap_or(DEFAULT_OFFLINE_AFTER),
        offline_interval: duration(
            c,
            &format!("{key}.offline_interval"),
            &file.offline_interval,
            Duration::from_millis(10)..=Duration::from_secs(86_400),
            DEFAULT_OFFLINE_INTERVAL,
        ),
        snapshot: file.snapshot.as_ref().is_some_and(|s| *s.get_ref()),
        points,
    };
    (c.len() == errors_before).then_some(settings)
}

/// The device's points: those written, and for a pattern, one per named capture not written.
fn points(
    key: &str,
    file: &DeviceFile,
    (is_lines, protocol): (bool, Option<&Protocol>),
    interval: Duration,
    heartbeat: Option<Duration>,
    c: &mut Collector<'_>,
) -> Vec<PointSettings> {
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
    })) = protocol
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
    points
}

/// Kernel RS-485 mode cannot be had: say so rather than ignore the key.
fn reject_rs485(key: &str, file: &DeviceFile, c: &mut Collector<'_>) {
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
}

/// What a device speaks, as `protocol` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Lines,
    ModbusRtu,
    ModbusTcp,
}

/// How the device is reached: its serial port, or (Modbus TCP) its address, where serial
/// settings are a mistake.
fn link(key: &str, entry: &Spanned<DeviceFile>, kind: Kind, c: &mut Collector<'_>) -> Option<Link> {
    let file = entry.get_ref();
    if kind != Kind::ModbusTcp {
        return serial(key, entry, c).map(Link::Serial);
    }
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

/// A Modbus device's unit id (required on a serial line) and request coalescing.
fn modbus(
    key: &str,
    entry: &Spanned<DeviceFile>,
    kind: Kind,
    c: &mut Collector<'_>,
) -> Option<Protocol> {
    let file = entry.get_ref();
    let unit = match &file.unit {
        None if kind == Kind::ModbusRtu => {
            c.missing(
                &format!("{key}.unit"),
                entry.span(),
                "write the slave's Modbus address, e.g. unit = 1",
            );
            None
        }
        None => Some(MODBUS_TCP_UNIT),
        Some(_) => int(c, &format!("{key}.unit"), &file.unit, 0..=255),
    };
    let max_gap =
        int(c, &format!("{key}.max_gap"), &file.max_gap, 0..=100).unwrap_or(DEFAULT_MAX_GAP);
    unit.map(|unit| Protocol::Modbus { unit, max_gap })
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
    let parity = choice_or(
        c,
        &format!("{key}.parity"),
        &file.parity,
        &[
            ("none", Parity::None),
            ("even", Parity::Even),
            ("odd", Parity::Odd),
        ],
        Parity::None,
        ("unknown parity", "write \"none\", \"even\" or \"odd\""),
    );
    Some(SerialSettings {
        path: path?,
        baud: int(c, &format!("{key}.baud"), &file.baud, 50..=4_000_000).unwrap_or(DEFAULT_BAUD),
        parity,
        data_bits: int(c, &format!("{key}.data_bits"), &file.data_bits, 5..=8)
            .unwrap_or(DEFAULT_DATA_BITS),
        stop_bits: int(c, &format!("{key}.stop_bits"), &file.stop_bits, 1..=2)
            .unwrap_or(DEFAULT_STOP_BITS),
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
            .and_then(|ip| (ip, MODBUS_TCP_PORT).to_socket_addrs().ok()?.next())
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
        None => DEFAULT_DELIMITER,
        Some(d) => match d.get_ref().as_bytes() {
            [b] => *b,
            _ => {
                c.at(
                    &format!("{key}.delimiter"),
                    Some(d.span()),
                    "the delimiter must be exactly one byte",
                    "write e.g. \"\\n\" or \"\\r\"",
                );
                DEFAULT_DELIMITER
            }
        },
    };
    Some(LineSettings {
        format: format?,
        delimiter,
        max_line: int(c, &format!("{key}.max_line"), &file.max_line, 8..=65_536)
            .unwrap_or(DEFAULT_MAX_LINE),
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
                DEFAULT_HEARTBEAT,
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
        Some(t) => choice(
            c,
            &format!("{key}.table"),
            t,
            &[
                ("holding", Table::Holding),
                ("input", Table::Input),
                ("coil", Table::Coil),
                ("discrete", Table::Discrete),
            ],
            "unknown Modbus table",
            "write \"holding\", \"input\", \"coil\" or \"discrete\"",
        ),
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
    let order = |v: &Option<Spanned<String>>, field: &str, c: &mut Collector<'_>| {
        choice_or(
            c,
            &format!("{key}.{field}"),
            v,
            &[("big", Order::Big), ("little", Order::Little)],
            Order::default(),
            (
                "unknown order",
                "write \"big\" (most significant first) or \"little\"",
            ),
        )
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
