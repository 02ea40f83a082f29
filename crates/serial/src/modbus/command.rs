//! Write commands: a message on a point's command topic, checked, written with the right
//! function code (05 coil, 06 one register, 16 several), and answered on the response topic.

use fieldlink_core::message::{Message, QoS};
use fieldlink_core::metrics as names;
use fieldlink_core::shutdown::Shutdown;

use super::{Connection, Failure, LinkDevice, Request, transact};
use crate::codec::{self, Value};
use crate::config::{DataType, PointSettings, Source, Table};
use crate::device;
use crate::payload::{self, WriteResult};

/// A write command for one device of the link.
#[derive(Debug)]
pub struct Command {
    /// Index of the device in the link's list.
    pub device: usize,
    /// The command message.
    pub message: Message,
}

pub(super) async fn write(
    conn: &mut Connection,
    devices: &mut [LinkDevice],
    cmd: Command,
    shutdown: &Shutdown,
) {
    let Some(dev) = devices.get_mut(cmd.device) else {
        return;
    };
    let Some(&i) = dev.commands.get(cmd.message.topic.as_str()) else {
        return; // not a writable point of this device: not ours to answer
    };
    let (wanted, id) = command_value(&cmd.message.payload);
    let Some(point) = dev.device.cfg.points.get(i).cloned() else {
        return;
    };
    let result = match codec::raw_for_write(&point, &wanted) {
        Err(reason) => WriteResult::Invalid(reason),
        Ok(raw) => match request_for(&point, &raw) {
            None => WriteResult::Invalid("the value does not fit the register type".into()),
            Some((table_is_coil, address, words)) => {
                let request = if table_is_coil {
                    Request::WriteCoil(address, matches!(raw, Value::Bool(true)))
                } else if let [w] = words.as_slice() {
                    Request::WriteRegister(address, *w)
                } else {
                    Request::WriteRegisters(address, &words)
                };
                match transact(conn, &dev.device, dev.unit, &request, shutdown).await {
                    Ok(_) => {
                        // Read the point back at once rather than at its next interval.
                        for group in dev.groups.iter_mut().filter(|g| g.points.contains(&i)) {
                            group.next = std::time::Instant::now();
                        }
                        WriteResult::Ok(codec::to_engineering(raw, &point))
                    }
                    Err(Failure::Exception(code)) => WriteResult::Exception(u8::from(code)),
                    Err(Failure::Timeout) => WriteResult::Timeout,
                    Err(Failure::Link(text)) => WriteResult::Failed(text),
                }
            }
        },
    };
    metrics::counter!(names::SERIAL_WRITES_TOTAL, "device" => dev.device.cfg.name.clone(), "result" => result.label())
        .increment(1);
    tracing::info!(device = %dev.device.cfg.name, point = %point.name, result = result.label(), "Write command");
    let bridge = dev.device.bridge();
    let response = Message {
        topic: device::topic(
            &bridge.response_topic,
            &bridge.site,
            &dev.device.cfg.name,
            &point.name,
        ),
        payload: payload::write_result(&result, id.as_ref(), payload::Stamp::now()),
        qos: QoS::AtLeastOnce,
        retain: false,
    };
    dev.device.publish(vec![response]).await;
}

/// What to write: (is a coil, address, words).
fn request_for(point: &PointSettings, raw: &Value) -> Option<(bool, u16, Vec<u16>)> {
    let Source::Register {
        table,
        address,
        word_order,
        byte_order,
    } = point.source
    else {
        return None;
    };
    match table {
        Table::Coil => matches!(raw, Value::Bool(_)).then(|| (true, address, Vec::new())),
        Table::Holding => {
            let words = codec::encode(point.data_type, raw, word_order, byte_order)?;
            // A bool in a register is written as 0 or 1.
            debug_assert!(point.data_type != DataType::Bool || words.len() == 1);
            Some((false, address, words))
        }
        Table::Discrete | Table::Input => None,
    }
}

/// A command payload: a JSON value, or `{"value": …, "id": …}`; anything that is not JSON is
/// taken as a string.
fn command_value(payload: &[u8]) -> (serde_json::Value, Option<serde_json::Value>) {
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(serde_json::Value::Object(mut map)) if map.contains_key("value") => {
            let value = map.remove("value").unwrap_or(serde_json::Value::Null);
            (value, map.remove("id"))
        }
        Ok(value) => (value, None),
        Err(_) => (
            serde_json::Value::String(String::from_utf8_lossy(payload).trim().to_owned()),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_payloads_are_plain_values_or_objects_with_an_id() {
        assert_eq!(command_value(b"42"), (serde_json::json!(42), None));
        assert_eq!(
            command_value(br#"{"value":true,"id":"c7"}"#),
            (serde_json::json!(true), Some(serde_json::json!("c7")))
        );
        assert_eq!(command_value(b"on\n"), (serde_json::json!("on"), None));
    }
}
