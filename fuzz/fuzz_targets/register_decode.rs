//! Any register words (a device's answer), decoded as every type in every word and byte order:
//! nothing may panic, and every non-string, non-NaN value encodes back to the same words.
#![no_main]

use fieldlink_core::config::devices::{DataType, Order};
use fieldlink_serial::codec::{Value, decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let words: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    let len = u16::from(data.first().copied().unwrap_or(1)).max(1);
    let types = [
        DataType::Bool,
        DataType::U16,
        DataType::I16,
        DataType::U32,
        DataType::I32,
        DataType::U64,
        DataType::I64,
        DataType::F32,
        DataType::F64,
        DataType::String { len },
    ];
    for data_type in types {
        for word_order in [Order::Big, Order::Little] {
            for byte_order in [Order::Big, Order::Little] {
                let Some(value) = decode(data_type, &words, word_order, byte_order) else {
                    assert!(words.len() < usize::from(data_type.registers()));
                    continue;
                };
                let exact = !matches!(data_type, DataType::Bool | DataType::String { .. })
                    && !matches!(value, Value::Float(f) if f.is_nan());
                if exact {
                    let n = usize::from(data_type.registers());
                    let back = encode(data_type, &value, word_order, byte_order);
                    assert_eq!(back.as_deref(), Some(&words[..n]));
                }
                let _ = fieldlink_serial::payload::value(Some(&value), Some("u"), 0);
            }
        }
    }
});
