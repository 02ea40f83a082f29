//! MQTT framing for the edge: rumqttd's own codec (so packets go to the router as they are,
//! without a conversion), plus the two peeks it does not offer: the protocol level of a
//! CONNECT, and the QoS and packet id of a PUBLISH (rumqttd keeps those fields private).

use bytes::BytesMut;
use rumqttd::protocol::{Error as ProtocolError, Packet, Protocol, v4::V4, v5::V5};

/// The protocol a client speaks, with its codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    /// MQTT 3.1.1.
    V4,
    /// MQTT 5.
    V5,
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// More bytes are needed.
    Incomplete,
    /// Larger than the broker accepts.
    TooLarge,
    /// Not valid MQTT.
    Malformed(String),
}

impl Codec {
    /// Reads one packet off the front of `buf`.
    pub(crate) fn read(self, buf: &mut BytesMut, max: usize) -> Result<Packet, FrameError> {
        let result = match self {
            Self::V4 => V4.read_mut(buf, max),
            Self::V5 => V5.read_mut(buf, max),
        };
        result.map_err(|e| match e {
            ProtocolError::InsufficientBytes(_) => FrameError::Incomplete,
            ProtocolError::PayloadSizeLimitExceeded(_) => FrameError::TooLarge,
            other => FrameError::Malformed(format!("{other:?}")),
        })
    }

    /// Appends `packet` to `out`.
    pub(crate) fn write(self, packet: Packet, out: &mut BytesMut) -> Result<(), String> {
        let result = match self {
            Self::V4 => V4.write(packet, out),
            Self::V5 => V5.write(packet, out),
        };
        result.map(drop).map_err(|e| format!("{e:?}"))
    }
}

/// The remaining length of the frame at the start of `buf`: (header length, remaining).
fn fixed_header(buf: &[u8]) -> Option<(usize, usize)> {
    let mut len = 0usize;
    for (i, byte) in buf.iter().skip(1).take(4).enumerate() {
        len |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((2 + i, len));
        }
    }
    None
}

/// The protocol level of a complete CONNECT at the start of `buf` (4: 3.1.1, 5: MQTT 5), or
/// `None` if the frame is incomplete or not a CONNECT.
pub(crate) fn connect_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    let (header, _) = fixed_header(buf)?;
    // protocol name: 2-byte length, then the name, then the level byte
    let name_len = usize::from(u16::from_be_bytes([
        *buf.get(header)?,
        *buf.get(header + 1)?,
    ]));
    buf.get(header + 2 + name_len).copied()
}

/// QoS and packet id of the PUBLISH at the start of `buf` (packet id 0 for QoS 0).
pub(crate) fn publish_qos_pkid(buf: &[u8]) -> Option<(u8, u16)> {
    let first = *buf.first()?;
    if first >> 4 != 3 {
        return None;
    }
    let qos = (first >> 1) & 0b11;
    if qos == 0 {
        return Some((0, 0));
    }
    let (header, _) = fixed_header(buf)?;
    let topic_len = usize::from(u16::from_be_bytes([
        *buf.get(header)?,
        *buf.get(header + 1)?,
    ]));
    let at = header + 2 + topic_len;
    Some((qos, u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peeks_read_connect_level_and_publish_ids() {
        // CONNECT, remaining 12: "MQTT", level 5, flags, keep-alive, ...
        let connect = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0, 0];
        assert_eq!(connect_level(&connect), Some(5));
        assert_eq!(connect_level(&connect[..5]), None, "incomplete");
        assert_eq!(connect_level(&[0x30, 0]), None, "not a CONNECT");
        // PUBLISH QoS 1, topic "a/b", packet id 0x0102
        let publish = [0x32, 7, 0, 3, b'a', b'/', b'b', 1, 2];
        assert_eq!(publish_qos_pkid(&publish), Some((1, 0x0102)));
        assert_eq!(
            publish_qos_pkid(&[0x30, 5, 0, 3, b'a', b'/', b'b']),
            Some((0, 0))
        );
        assert_eq!(publish_qos_pkid(&publish[..6]), None, "incomplete");
        // A remaining length that never ends is not a frame.
        assert_eq!(fixed_header(&[0x30, 0xff, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
