//! How a device is reached (serial port or TCP address) and what it speaks (Modbus, lines).

use std::net::{SocketAddr, ToSocketAddrs};

use fieldlink_core::config::{Collector, choice_or, int};
use toml::Spanned;

use super::device::Kind;
use crate::config::file::DeviceFile;
use crate::config::{
    DEFAULT_BAUD, DEFAULT_DATA_BITS, DEFAULT_DELIMITER, DEFAULT_MAX_GAP, DEFAULT_MAX_LINE,
    DEFAULT_STOP_BITS, LineFormat, LineSettings, Link, MODBUS_TCP_PORT, MODBUS_TCP_UNIT, Parity,
    Protocol, SerialSettings,
};

/// How the device is reached: its serial port, or (Modbus TCP) its address, where serial
/// settings are a mistake.
pub(super) fn link(
    key: &str,
    entry: &Spanned<DeviceFile>,
    kind: Kind,
    c: &mut Collector<'_>,
) -> Option<Link> {
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
pub(super) fn modbus(
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

pub(super) fn serial(
    key: &str,
    entry: &Spanned<DeviceFile>,
    c: &mut Collector<'_>,
) -> Option<SerialSettings> {
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

pub(super) fn tcp_address(
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

pub(super) fn lines(
    key: &str,
    entry: &Spanned<DeviceFile>,
    c: &mut Collector<'_>,
) -> Option<LineSettings> {
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

pub(super) fn line_pattern(
    key: &str,
    entry: &Spanned<DeviceFile>,
    c: &mut Collector<'_>,
) -> Option<String> {
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
