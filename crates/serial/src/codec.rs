//! Register values to typed values and back (sans-IO): data type, word and byte order, scale and
//! offset. Every function here takes words as read from the wire and never panics.

use crate::config::{DataType, Order, PointSettings, Source};

/// A point's value, after scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A bit or a flag.
    Bool(bool),
    /// A scaled or floating-point number.
    Float(f64),
    /// A signed integer, unscaled.
    Int(i64),
    /// Text.
    Text(String),
    /// An unsigned integer, unscaled.
    UInt(u64),
}

impl Value {
    /// The value as a number, for deadbands and ranges.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Bool(b) => Some(f64::from(u8::from(*b))),
            Self::Float(f) => Some(*f),
            Self::Int(i) => Some(*i as f64),
            Self::UInt(u) => Some(*u as f64),
            Self::Text(_) => None,
        }
    }
}

/// Decodes `words` (as many as `data_type` spans, in wire order) into a raw value.
/// `None` when there are too few words.
pub fn decode(
    data_type: DataType,
    words: &[u16],
    word_order: Order,
    byte_order: Order,
) -> Option<Value> {
    let n = usize::from(data_type.registers());
    let words = words.get(..n)?;
    if let DataType::String { len } = data_type {
        let mut bytes = Vec::with_capacity(n * 2);
        for w in words {
            bytes.extend_from_slice(&word_bytes(*w, byte_order));
        }
        bytes.truncate(usize::from(len));
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        let text = String::from_utf8_lossy(&bytes[..end]);
        return Some(Value::Text(text.trim_end().to_owned()));
    }
    // Most significant byte first, whatever the device's order.
    let mut be = [0u8; 8];
    let mut put = |i: usize, w: u16| {
        let b = word_bytes(w, byte_order);
        be[i * 2] = b[0];
        be[i * 2 + 1] = b[1];
    };
    for (i, w) in words.iter().enumerate() {
        let slot = match word_order {
            Order::Big => i,
            Order::Little => n - 1 - i,
        };
        put(slot, *w);
    }
    let u16v = || u16::from_be_bytes([be[0], be[1]]);
    let u32v = || u32::from_be_bytes([be[0], be[1], be[2], be[3]]);
    let u64v = || u64::from_be_bytes(be);
    Some(match data_type {
        DataType::Bool => Value::Bool(u16v() != 0),
        DataType::U16 => Value::UInt(u64::from(u16v())),
        DataType::I16 => Value::Int(i64::from(u16v() as i16)),
        DataType::U32 => Value::UInt(u64::from(u32v())),
        DataType::I32 => Value::Int(i64::from(u32v() as i32)),
        DataType::U64 => Value::UInt(u64v()),
        DataType::I64 => Value::Int(u64v() as i64),
        // Through the shortest decimal that reads back as the same f32: 21.7 stays 21.7
        // rather than 21.700000762939453, and encoding it again gives the same bits.
        DataType::F32 => Value::Float(f32_as_f64(f32::from_bits(u32v()))),
        DataType::F64 => Value::Float(f64::from_bits(u64v())),
        DataType::String { .. } => return None, // handled above
    })
}

/// Encodes a raw value into the words `data_type` spans, in wire order. `None` when the value
/// does not fit the type (checked by [`raw_for_write`] before).
pub fn encode(
    data_type: DataType,
    value: &Value,
    word_order: Order,
    byte_order: Order,
) -> Option<Vec<u16>> {
    let n = usize::from(data_type.registers());
    if let DataType::String { len } = data_type {
        let Value::Text(text) = value else {
            return None;
        };
        if text.len() > usize::from(len) {
            return None;
        }
        let mut bytes = text.as_bytes().to_vec();
        bytes.resize(n * 2, 0);
        return Some(
            bytes
                .chunks_exact(2)
                .map(|c| bytes_word([c[0], c[1]], byte_order))
                .collect(),
        );
    }
    let be: [u8; 8] = match (data_type, value) {
        (DataType::Bool, Value::Bool(b)) => pad(&u16::from(*b).to_be_bytes()),
        (DataType::U16, Value::UInt(u)) => pad(&u16::try_from(*u).ok()?.to_be_bytes()),
        (DataType::I16, Value::Int(i)) => pad(&i16::try_from(*i).ok()?.to_be_bytes()),
        (DataType::U32, Value::UInt(u)) => pad(&u32::try_from(*u).ok()?.to_be_bytes()),
        (DataType::I32, Value::Int(i)) => pad(&i32::try_from(*i).ok()?.to_be_bytes()),
        (DataType::U64, Value::UInt(u)) => u.to_be_bytes(),
        (DataType::I64, Value::Int(i)) => i.to_be_bytes(),
        (DataType::F32, Value::Float(f)) => pad(&(*f as f32).to_bits().to_be_bytes()),
        (DataType::F64, Value::Float(f)) => f.to_bits().to_be_bytes(),
        _ => return None,
    };
    let mut words = vec![0u16; n];
    for (slot, chunk) in be.chunks_exact(2).take(n).enumerate() {
        let i = match word_order {
            Order::Big => slot,
            Order::Little => n - 1 - slot,
        };
        words[i] = bytes_word([chunk[0], chunk[1]], byte_order);
    }
    Some(words)
}

/// Applies scale and offset: unscaled integers stay integers, scaled ones become floats. An
/// integer register is rounded to the decimals its scale and offset imply (237 × 0.1 is 23.7,
/// not 23.700000000000003): the device counts in those steps, and the float noise of the
/// multiplication is not a reading. A float register keeps its own precision.
pub fn to_engineering(raw: Value, point: &PointSettings) -> Value {
    let (scale, offset) = (point.scale.0, point.offset.0);
    if scale == 1.0 && offset == 0.0 {
        return raw;
    }
    match raw {
        Value::Bool(_) | Value::Text(_) => raw,
        Value::Int(_) | Value::UInt(_) => match raw.as_f64() {
            Some(f) => {
                let decimals = decimals(scale).max(decimals(offset));
                Value::Float(round_to(f * scale + offset, decimals))
            }
            None => raw,
        },
        other => match other.as_f64() {
            Some(f) => Value::Float(f * scale + offset),
            None => other,
        },
    }
}

/// The most decimals a float can meaningfully carry.
const MAX_DECIMALS: i32 = 15;

/// The decimals `x` is written with (0.1 → 1, 0.25 → 2, 2 → 0), at most [`MAX_DECIMALS`].
fn decimals(x: f64) -> i32 {
    (0..MAX_DECIMALS)
        .find(|&d| {
            let p = 10f64.powi(d);
            (x * p).round() / p == x
        })
        .unwrap_or(MAX_DECIMALS)
}

fn round_to(x: f64, decimals: i32) -> f64 {
    if decimals >= MAX_DECIMALS {
        return x;
    }
    let p = 10f64.powi(decimals);
    let rounded = (x * p).round() / p;
    // Past 2^53 / p the rounding itself would lose digits: keep the product then.
    if rounded.is_finite() { rounded } else { x }
}

/// What a write command asks for, checked against the point: `Ok` is the raw value to encode,
/// `Err` the reason it is refused (sent back as `invalid`).
pub fn raw_for_write(point: &PointSettings, wanted: &serde_json::Value) -> Result<Value, String> {
    if !point.writable || !matches!(point.source, Source::Register { .. }) {
        return Err(format!("point {:?} is not writable", point.name));
    }
    match point.data_type {
        DataType::Bool => match wanted {
            serde_json::Value::Bool(b) => Ok(Value::Bool(*b)),
            serde_json::Value::Number(n) if n.as_u64() == Some(0) => Ok(Value::Bool(false)),
            serde_json::Value::Number(n) if n.as_u64() == Some(1) => Ok(Value::Bool(true)),
            _ => Err("expected true or false".into()),
        },
        DataType::String { len } => match wanted {
            serde_json::Value::String(s) if s.len() <= usize::from(len) => {
                Ok(Value::Text(s.clone()))
            }
            serde_json::Value::String(_) => Err(format!("text longer than {len} bytes")),
            _ => Err("expected a string".into()),
        },
        data_type => {
            let Some(v) = wanted.as_f64().filter(|v| v.is_finite()) else {
                return Err("expected a number".into());
            };
            if let Some(min) = point.min
                && v < min.0
            {
                return Err(format!("{v} is below the minimum {}", min.0));
            }
            if let Some(max) = point.max
                && v > max.0
            {
                return Err(format!("{v} is above the maximum {}", max.0));
            }
            let raw = (v - point.offset.0) / point.scale.0;
            let int_range = |lo: f64, hi: f64| -> Result<f64, String> {
                let r = raw.round();
                if (raw - r).abs() > 1e-6 * raw.abs().max(1.0) {
                    return Err(format!("{v} is not a whole number of raw units"));
                }
                if r < lo || r > hi {
                    return Err(format!("{v} does not fit the register type"));
                }
                Ok(r)
            };
            Ok(match data_type {
                DataType::U16 => Value::UInt(int_range(0.0, f64::from(u16::MAX))? as u64),
                DataType::U32 => Value::UInt(int_range(0.0, f64::from(u32::MAX))? as u64),
                DataType::U64 => Value::UInt(int_range(0.0, u64::MAX as f64)? as u64),
                DataType::I16 => {
                    Value::Int(int_range(f64::from(i16::MIN), f64::from(i16::MAX))? as i64)
                }
                DataType::I32 => {
                    Value::Int(int_range(f64::from(i32::MIN), f64::from(i32::MAX))? as i64)
                }
                DataType::I64 => Value::Int(int_range(i64::MIN as f64, i64::MAX as f64)? as i64),
                DataType::F32 if raw.abs() > f64::from(f32::MAX) => {
                    return Err(format!("{v} does not fit a 32-bit float"));
                }
                _ => Value::Float(raw),
            })
        }
    }
}

fn f32_as_f64(f: f32) -> f64 {
    if !f.is_finite() {
        return f64::from(f);
    }
    f.to_string().parse().unwrap_or(f64::from(f))
}

fn word_bytes(w: u16, order: Order) -> [u8; 2] {
    match order {
        Order::Big => w.to_be_bytes(),
        Order::Little => w.to_le_bytes(),
    }
}

fn bytes_word(b: [u8; 2], order: Order) -> u16 {
    match order {
        Order::Big => u16::from_be_bytes(b),
        Order::Little => u16::from_le_bytes(b),
    }
}

/// Left-aligns `bytes` in 8 bytes (the first words carry the value).
fn pad(bytes: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..bytes.len()].copy_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use crate::config::{Real, Table};
    use proptest::prelude::*;

    use super::*;

    const ORDERS: [Order; 2] = [Order::Big, Order::Little];

    fn words_of(f: f32) -> [u16; 2] {
        let b = f.to_bits();
        [(b >> 16) as u16, b as u16]
    }

    #[test]
    fn known_layouts_decode_as_documented() {
        // 0x12345678 as two registers, in each word order.
        let big = decode(DataType::U32, &[0x1234, 0x5678], Order::Big, Order::Big);
        assert_eq!(big, Some(Value::UInt(0x1234_5678)));
        let little = decode(DataType::U32, &[0x5678, 0x1234], Order::Little, Order::Big);
        assert_eq!(little, Some(Value::UInt(0x1234_5678)));
        let swapped = decode(DataType::U16, &[0x3412], Order::Big, Order::Little);
        assert_eq!(swapped, Some(Value::UInt(0x1234)));
        // 1.5f32 = 0x3FC00000.
        let f = decode(DataType::F32, &[0x3FC0, 0x0000], Order::Big, Order::Big);
        assert_eq!(f, Some(Value::Float(1.5)));
        let f = decode(DataType::F32, &words_of(21.7f32), Order::Big, Order::Big);
        assert_eq!(
            f,
            Some(Value::Float(21.7)),
            "no f32 noise in the published value"
        );
        let i = decode(DataType::I16, &[0xFFFE], Order::Big, Order::Big);
        assert_eq!(i, Some(Value::Int(-2)));
        let s = decode(
            DataType::String { len: 5 },
            &[0x4142, 0x4320, 0x0000],
            Order::Big,
            Order::Big,
        );
        assert_eq!(s, Some(Value::Text("ABC".into())));
        assert_eq!(
            decode(DataType::U64, &[1, 2], Order::Big, Order::Big),
            None,
            "too few words"
        );
    }

    fn all_types() -> impl Strategy<Value = DataType> {
        prop_oneof![
            Just(DataType::Bool),
            Just(DataType::U16),
            Just(DataType::I16),
            Just(DataType::U32),
            Just(DataType::I32),
            Just(DataType::U64),
            Just(DataType::I64),
            Just(DataType::F32),
            Just(DataType::F64),
            (1u16..=250).prop_map(|len| DataType::String { len }),
        ]
    }

    proptest! {
        /// Any words decode without panicking, and non-string values encode back to the same
        /// words (bool: any non-zero word reads true, and encodes as 1).
        #[test]
        fn decode_then_encode_round_trips(
            data_type in all_types(),
            words in proptest::collection::vec(any::<u16>(), 0..130),
            w in 0usize..2,
            b in 0usize..2,
        ) {
            let (wo, bo) = (ORDERS[w], ORDERS[b]);
            let Some(value) = decode(data_type, &words, wo, bo) else {
                prop_assert!(words.len() < usize::from(data_type.registers()));
                return Ok(());
            };
            let n = usize::from(data_type.registers());
            match (&data_type, &value) {
                (DataType::String { .. }, _) => {}
                (DataType::Bool, _) => {}
                (DataType::F32 | DataType::F64, Value::Float(f)) if f.is_nan() => {}
                _ => {
                    let back = encode(data_type, &value, wo, bo);
                    prop_assert_eq!(back.as_deref(), Some(&words[..n]));
                }
            }
        }

        /// Every value a write may carry encodes and decodes to itself, in every order.
        #[test]
        fn encode_then_decode_round_trips(x in any::<i64>(), f in any::<f64>(), w in 0usize..2, b in 0usize..2) {
            let (wo, bo) = (ORDERS[w], ORDERS[b]);
            let cases = [
                (DataType::I64, Value::Int(x)),
                (DataType::U64, Value::UInt(x as u64)),
                (DataType::I32, Value::Int(i64::from(x as i32))),
                (DataType::U32, Value::UInt(u64::from(x as u32))),
                (DataType::I16, Value::Int(i64::from(x as i16))),
                (DataType::U16, Value::UInt(u64::from(x as u16))),
                (DataType::Bool, Value::Bool(x % 2 == 0)),
                (DataType::F64, Value::Float(f)),
            ];
            for (t, v) in cases {
                let words = encode(t, &v, wo, bo).expect("fits");
                let back = decode(t, &words, wo, bo).expect("enough words");
                match (&v, &back) {
                    (Value::Float(a), Value::Float(b)) => prop_assert!(a.to_bits() == b.to_bits() || a.is_nan() && b.is_nan()),
                    _ => prop_assert_eq!(&back, &v),
                }
            }
        }
    }

    fn point(data_type: DataType, scale: f64, offset: f64) -> PointSettings {
        PointSettings {
            name: "p".into(),
            source: Source::Register {
                table: Table::Holding,
                address: 0,
                word_order: Order::Big,
                byte_order: Order::Big,
            },
            data_type,
            scale: Real(scale),
            offset: Real(offset),
            unit: None,
            deadband: Real(0.0),
            interval: std::time::Duration::from_secs(1),
            heartbeat: None,
            writable: true,
            min: Some(Real(-50.0)),
            max: Some(Real(100.0)),
        }
    }

    #[test]
    fn writes_are_checked_against_range_type_and_scale() {
        let p = point(DataType::U16, 0.1, 0.0);
        assert_eq!(
            raw_for_write(&p, &serde_json::json!(21.5)),
            Ok(Value::UInt(215))
        );
        assert!(
            raw_for_write(&p, &serde_json::json!(-1))
                .unwrap_err()
                .contains("does not fit")
        );
        assert!(
            raw_for_write(&p, &serde_json::json!(150))
                .unwrap_err()
                .contains("maximum")
        );
        assert!(
            raw_for_write(&p, &serde_json::json!("x"))
                .unwrap_err()
                .contains("number")
        );
        assert!(
            raw_for_write(&p, &serde_json::json!(1.25))
                .unwrap_err()
                .contains("whole")
        );
        let mut ro = p.clone();
        ro.writable = false;
        assert!(
            raw_for_write(&ro, &serde_json::json!(1))
                .unwrap_err()
                .contains("not writable")
        );
        let b = point(DataType::Bool, 1.0, 0.0);
        assert_eq!(
            raw_for_write(&b, &serde_json::json!(true)),
            Ok(Value::Bool(true))
        );
        let f = point(DataType::F32, 2.0, 1.0);
        assert_eq!(
            raw_for_write(&f, &serde_json::json!(5.0)),
            Ok(Value::Float(2.0))
        );
    }

    #[test]
    fn scaling_turns_integers_into_floats_only_when_asked() {
        assert_eq!(
            to_engineering(Value::UInt(215), &point(DataType::U16, 1.0, 0.0)),
            Value::UInt(215)
        );
        assert_eq!(
            to_engineering(Value::UInt(215), &point(DataType::U16, 0.1, 1.0)),
            Value::Float(22.5)
        );
    }

    #[test]
    fn scaled_integers_carry_the_decimals_of_their_scale_not_float_noise() {
        let scaled = |raw: Value, scale, offset| {
            let Value::Float(f) = to_engineering(raw, &point(DataType::I32, scale, offset)) else {
                panic!("a float");
            };
            f.to_string()
        };
        assert_eq!(237.0 * 0.1, 23.700000000000003, "the noise this removes");
        assert_eq!(scaled(Value::UInt(237), 0.1, 0.0), "23.7");
        assert_eq!(scaled(Value::Int(-1234), 0.01, 0.0), "-12.34");
        assert_eq!(scaled(Value::UInt(3), 0.25, 0.5), "1.25");
        assert_eq!(scaled(Value::UInt(7), 0.1, 0.05), "0.75");
        assert_eq!(scaled(Value::UInt(100_001), 0.001, 0.0), "100.001");
        // A scale with no short decimal form is not rounded.
        assert_eq!(
            scaled(Value::UInt(1), 1.0 / 3.0, 0.0),
            (1.0f64 / 3.0).to_string()
        );
        // A float register keeps its precision: 21.73 scaled by 0.1 is 2.173.
        let Value::Float(f) = to_engineering(Value::Float(21.73), &point(DataType::F32, 0.1, 0.0))
        else {
            panic!("a float");
        };
        assert!((f - 2.173).abs() < 1e-9, "{f}");
    }
}
