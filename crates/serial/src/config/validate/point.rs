//! `[[devices.points]]`: a point's source (a Modbus register or a line's field), data type,
//! scaling, deadband and write range.

use std::time::Duration;

use fieldlink_core::config::{Collector, choice, choice_or, duration, int};
use toml::Spanned;

use super::name;
use crate::config::file::PointFile;
use crate::config::{
    DEFAULT_HEARTBEAT, DataType, MAX_REGISTERS_PER_READ, Order, PointSettings, Real, Source, Table,
};

pub(super) fn point(
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

pub(super) fn data_type(
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

pub(super) fn register_source(
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
