//! `[[devices]]`: each entry, names and ports unique, its points gathered.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use fieldlink_core::config::{Collector, choice, duration, int};
use toml::Spanned;

use super::link::{lines, link, modbus};
use super::point::point;
use super::{capture_names, name};
use crate::config::file::DeviceFile;
use crate::config::{
    DEFAULT_HEARTBEAT, DEFAULT_INTERVAL, DEFAULT_LINE_TIMEOUT, DEFAULT_MODBUS_TIMEOUT,
    DEFAULT_OFFLINE_AFTER, DEFAULT_OFFLINE_INTERVAL, DEFAULT_RETRIES, DataType, DeviceSettings,
    LineFormat, LineSettings, Link, PointSettings, Protocol, Real, SerialSettings, Source,
};

const DEVICE_KEYS_HINT: &str = "give the device a name, e.g. name = \"boiler\"";

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
pub(super) enum Kind {
    Lines,
    ModbusRtu,
    ModbusTcp,
}
