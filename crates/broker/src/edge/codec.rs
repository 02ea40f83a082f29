//! MQTT framing for the edge: rumqttd's own codec (so packets go to the router as they are,
//! without a conversion), plus the peeks it does not offer: the length and protocol level of a
//! CONNECT before it is complete, and the QoS and packet id of a PUBLISH (rumqttd keeps those
//! fields private). Writing for a 3.1.1 client drops MQTT 5 properties (rumqttd's 3.1.1
//! writer panics on them), so a v5 publisher's user properties reach 3.1.1 subscribers as a
//! plain publish.

use bytes::{Buf as _, BufMut as _, BytesMut};
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
        // Packets only a server sends: rumqttd's MQTT 5 reader panics on some of them
        // (CONNACK, UNSUBACK with a body), and from a client each is a protocol error.
        if let Some(kind @ (CONNACK | SUBACK | UNSUBACK | PINGRESP)) = buf.first().map(|b| b >> 4) {
            return Err(FrameError::Malformed(format!(
                "packet type {kind} comes only from a server"
            )));
        }
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
            Self::V4 => V4.write(without_properties(packet), out),
            Self::V5 => V5.write(packet, out),
        };
        result.map(drop).map_err(|e| format!("{e:?}"))
    }
}

const CONNACK: u8 = 2;
const SUBACK: u8 = 9;
const UNSUBACK: u8 = 11;
const PINGRESP: u8 = 13;

/// `packet` with its MQTT 5 properties dropped: what a 3.1.1 client can be sent.
fn without_properties(packet: Packet) -> Packet {
    match packet {
        Packet::Connect(connect, _, will, _, login) => {
            Packet::Connect(connect, None, will, None, login)
        }
        Packet::ConnAck(ack, _) => Packet::ConnAck(ack, None),
        Packet::Publish(publish, _) => Packet::Publish(publish, None),
        Packet::PubAck(ack, _) => Packet::PubAck(ack, None),
        Packet::PubRec(rec, _) => Packet::PubRec(rec, None),
        Packet::PubRel(rel, _) => Packet::PubRel(rel, None),
        Packet::PubComp(comp, _) => Packet::PubComp(comp, None),
        Packet::Subscribe(subscribe, _) => Packet::Subscribe(subscribe, None),
        Packet::SubAck(ack, _) => Packet::SubAck(ack, None),
        Packet::Unsubscribe(unsubscribe, _) => Packet::Unsubscribe(unsubscribe, None),
        Packet::UnsubAck(ack, _) => Packet::UnsubAck(ack, None),
        Packet::Disconnect(disconnect, _) => Packet::Disconnect(disconnect, None),
        other => other,
    }
}

/// What the bytes received so far say about a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectPeek {
    /// Not enough bytes for the fixed header yet.
    Incomplete,
    /// The fixed header is complete: the whole frame's length, and the protocol level once
    /// enough of the variable header is there.
    Header { frame_len: usize, level: Option<u8> },
    /// A remaining length longer than MQTT's four bytes.
    Malformed,
    /// The first packet is not a CONNECT.
    NotConnect,
}

/// Peeks at the CONNECT at the start of `buf`, complete or not.
pub(crate) fn peek_connect(buf: &[u8]) -> ConnectPeek {
    let Some(first) = buf.first() else {
        return ConnectPeek::Incomplete;
    };
    if first >> 4 != 1 {
        return ConnectPeek::NotConnect;
    }
    let (header, remaining) = match fixed_header(buf) {
        Some(found) => found,
        // Four length bytes all saying "more follows": no valid frame.
        None if buf.len() >= 5 => return ConnectPeek::Malformed,
        None => return ConnectPeek::Incomplete,
    };
    ConnectPeek::Header {
        frame_len: header + remaining,
        level: connect_level(buf),
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

/// The protocol level of the CONNECT at the start of `buf` (4: 3.1.1, 5: MQTT 5), or `None`
/// if not enough of it is there or it is not a CONNECT.
fn connect_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    let (header, remaining) = fixed_header(buf)?;
    // protocol name: 2-byte length, then the name, then the level byte
    let name_len = usize::from(u16::from_be_bytes([
        *buf.get(header)?,
        *buf.get(header + 1)?,
    ]));
    // A protocol name longer than the frame is not a level at all.
    let at = header + 2 + name_len;
    (at < header + remaining)
        .then(|| buf.get(at).copied())
        .flatten()
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

/// Where the pieces of an encoded MQTT 5 PUBLISH are.
pub(crate) struct PublishParts {
    /// The topic name (without its length).
    pub(crate) topic: std::ops::Range<usize>,
    /// The packet id, if any (QoS 1 and 2).
    pub(crate) pkid: std::ops::Range<usize>,
    /// The properties (without their length).
    pub(crate) properties: std::ops::Range<usize>,
    /// From the payload's start to the end.
    pub(crate) payload: usize,
}

impl PublishParts {
    /// The pieces of `frame`, one whole MQTT 5 PUBLISH; `None` if it is not one.
    pub(crate) fn read(frame: &[u8]) -> Option<Self> {
        let first = *frame.first()?;
        if first >> 4 != 3 {
            return None;
        }
        let (remaining, header) = varint(frame.get(1..)?)?;
        if frame.len() != 1 + header + remaining {
            return None;
        }
        let at = 1 + header;
        let topic_len = usize::from(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]));
        let topic = at + 2..at + 2 + topic_len;
        let pkid_len = if (first >> 1) & 0b11 > 0 { 2 } else { 0 };
        let pkid = topic.end..topic.end + pkid_len;
        let (properties_len, len_len) = varint(frame.get(pkid.end..)?)?;
        let properties = pkid.end + len_len..pkid.end + len_len + properties_len;
        (properties.end <= frame.len()).then_some(Self {
            topic,
            pkid,
            payload: properties.end,
            properties,
        })
    }
}

/// The properties the edge itself sets on a publish it delivers to an MQTT 5 client: what is
/// left of its Message Expiry Interval and the client's own Subscription Identifiers. Written
/// here rather than by rumqttd's writer, which walks every field of `PublishProperties` twice
/// (once for the length): a tenth of the work a delivered publish with properties added.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct DeliveryProperties {
    pub(crate) expiry: Option<u32>,
    pub(crate) subscription_ids: Vec<usize>,
}

/// MQTT 5 property identifiers the edge writes itself (MQTT 5 §2.2.2.2).
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0b;

impl DeliveryProperties {
    fn len(&self) -> usize {
        self.expiry.map_or(0, |_| 5)
            + self
                .subscription_ids
                .iter()
                .map(|id| 1 + varint_len(*id))
                .sum::<usize>()
    }

    fn put(&self, out: &mut BytesMut) {
        for id in &self.subscription_ids {
            out.put_u8(SUBSCRIPTION_IDENTIFIER);
            put_varint(*id, out);
        }
        if let Some(expiry) = self.expiry {
            out.put_u8(MESSAGE_EXPIRY_INTERVAL);
            out.put_u32(expiry);
        }
    }
}

/// The largest remaining length MQTT can express.
const MAX_REMAINING: usize = 268_435_455;

/// Completes the MQTT 5 PUBLISH the codec wrote at `start` of `out` without a payload: the
/// `edge`'s properties and the publisher's `own` (encoded already) are added to those it has,
/// and `payload` follows. How a publish whose properties travelled through the router as bytes
/// goes out: written once, in place, none of them decoded. `false` (and `out` cut back to
/// `start`) if what is there is not a PUBLISH without a payload, or the result would be
/// larger than MQTT allows.
pub(crate) fn complete_publish(
    out: &mut BytesMut,
    start: usize,
    edge: &DeliveryProperties,
    own: &[u8],
    payload: &[u8],
) -> bool {
    let head = &out[start..];
    let Some(parts) = PublishParts::read(head).filter(|p| p.payload == head.len()) else {
        out.truncate(start);
        return false;
    };
    let old_header = parts.topic.start - 2;
    let old_length = parts.properties.start - parts.pkid.end;
    let added = edge.len() + own.len();
    let properties_len = parts.properties.len() + added;
    let remaining = 2
        + parts.topic.len()
        + parts.pkid.len()
        + varint_len(properties_len)
        + properties_len
        + payload.len();
    if remaining > MAX_REMAINING {
        out.truncate(start);
        return false;
    }
    let header = 1 + varint_len(remaining);
    // Both lengths only grow (the codec writes them as short as they go), moving what follows
    // each to the right: the properties already there first, then the topic and packet id.
    let shifts = header.checked_sub(old_header).and_then(|topic_shift| {
        let properties_shift =
            (topic_shift + varint_len(properties_len)).checked_sub(old_length)?;
        Some((topic_shift, properties_shift))
    });
    let Some((topic_shift, properties_shift)) = shifts else {
        out.truncate(start);
        return false;
    };
    out.reserve(properties_shift + added + payload.len());
    let (topic, properties) = (
        start + old_header..start + parts.pkid.end,
        start + parts.properties.start..start + parts.properties.end,
    );
    // Most often nothing moves: a small publish's lengths keep their size. (The topic never
    // moves further than the properties: `topic_shift <= properties_shift`.)
    if properties_shift > 0 {
        out.resize(out.len() + properties_shift, 0);
        if !properties.is_empty() {
            out.copy_within(properties.clone(), properties.start + properties_shift);
        }
        if topic_shift > 0 {
            out.copy_within(topic.clone(), topic.start + topic_shift);
        }
    }
    put_varint_at(remaining, &mut out[start + 1..start + header]);
    let length_at = topic.end + topic_shift;
    put_varint_at(
        properties_len,
        &mut out[length_at..properties.start + properties_shift],
    );
    edge.put(out);
    out.extend_from_slice(own);
    out.extend_from_slice(payload);
    true
}

/// The pieces of the MQTT 5 PUBLISH at the start of `buf` if it is there whole, with a
/// remaining length of at most `max` (the codec's own bound), and its length.
pub(crate) fn whole_publish(buf: &[u8], max: usize) -> Option<(PublishParts, usize)> {
    let (header, remaining) = fixed_header(buf)?;
    let frame_len = header + remaining;
    if remaining > max {
        return None;
    }
    let parts = PublishParts::read(buf.get(..frame_len)?)?;
    Some((parts, frame_len))
}

/// Rewrites the whole PUBLISH at the start of `buf` (its `parts`, `frame_len` bytes) in place
/// as the same publish without properties: its header, topic and packet id moved up to the
/// payload, over the properties, and the bytes before them dropped. No allocation, and the
/// codec then reads a publish whose properties cost nothing.
/// `false`, `buf` untouched, if the publish has no properties to cut.
pub(crate) fn cut_properties(buf: &mut BytesMut, parts: &PublishParts, frame_len: usize) -> bool {
    if parts.properties.is_empty() || buf.len() < frame_len {
        return false;
    }
    let first = buf[0];
    // The topic (with its two-byte length) and the packet id, kept as they are.
    let kept = parts.topic.start - 2..parts.pkid.end;
    let remaining = kept.len() + 1 + (frame_len - parts.properties.end);
    let header = 1 + varint_len(remaining);
    // The new frame ends where the old one does: a zero property length just before the
    // payload, the topic and packet id before it, the fixed header before them. Never to the
    // left of where they are: at least a length byte and one property are cut.
    let start = parts.properties.end - 1 - kept.len() - header;
    buf.copy_within(kept.clone(), start + header);
    buf[parts.properties.end - 1] = 0;
    buf[start] = first;
    put_varint_at(remaining, &mut buf[start + 1..start + header]);
    buf.advance(start);
    true
}

/// An MQTT variable byte integer at the start of `bytes`: (value, its length).
pub(crate) fn varint(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, byte) in bytes.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// How many bytes `value` takes as an MQTT variable byte integer.
pub(crate) fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes `value` as an MQTT variable byte integer into `at`, exactly its length.
fn put_varint_at(mut value: usize, at: &mut [u8]) {
    for byte in at {
        *byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            *byte |= 0x80;
        }
    }
}

/// Appends `value` as an MQTT variable byte integer.
pub(crate) fn put_varint(mut value: usize, out: &mut BytesMut) {
    loop {
        let byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            out.put_u8(byte | 0x80);
        } else {
            out.put_u8(byte);
            return;
        }
    }
}

/// Runs the edge's framing over any bytes, as a client could send them: the CONNECT peek, the
/// PUBLISH peek, an MQTT 5 publish's properties taken off its frame, and both protocols' reads, a packet at a time, and every publish read written
/// again for a 3.1.1 and an MQTT 5 client (as the router hands them on). For the fuzz target
/// (`fuzz/fuzz_targets/edge_frames.rs`): nothing here may panic, whatever the bytes.
#[doc(hidden)]
pub fn fuzz_frames(data: &[u8]) {
    let _ = peek_connect(data);
    for codec in [Codec::V4, Codec::V5] {
        let mut buf = BytesMut::from(data);
        // Packets are at least two bytes: this many reads consume any input.
        for _ in 0..=data.len() / 2 {
            let _ = publish_qos_pkid(&buf);
            let _ = peek_connect(&buf);
            if codec == Codec::V5 {
                let _ = super::v5::take_own(
                    &mut buf,
                    64 * 1024,
                    &mut super::v5::StampBuffers::default(),
                );
            }
            match codec.read(&mut buf, 64 * 1024) {
                Ok(Packet::Publish(publish, properties)) => {
                    for to in [Codec::V4, Codec::V5] {
                        let packet = Packet::Publish(publish.clone(), properties.clone());
                        let _ = to.write(packet, &mut BytesMut::new());
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The fuzz target's function on stable, for CI: any bytes, and bytes behind a
        /// plausible fixed header (so the codecs get past their first checks).
        #[test]
        fn no_bytes_make_the_framing_panic(
            first in 0u8..=255,
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        ) {
            fuzz_frames(&body);
            let mut framed = vec![first];
            let mut len = body.len();
            loop {
                let byte = (len % 128) as u8;
                len /= 128;
                framed.push(if len > 0 { byte | 0x80 } else { byte });
                if len == 0 {
                    break;
                }
            }
            framed.extend_from_slice(&body);
            fuzz_frames(&framed);
        }
    }

    proptest::proptest! {
        /// A publish completed in place reads back as the one rumqttd's writer writes with
        /// all its properties: whatever the lengths (each length field crossing a byte
        /// boundary), the QoS, and properties already in the head.
        #[test]
        fn a_completed_publish_reads_as_written_whole(
            topic_len in 1usize..300,
            payload_len in proptest::sample::select(vec![0usize, 1, 100, 16_300, 20_000]),
            pkid in proptest::option::of(1u16..),
            content_type in proptest::option::of("[a-z]{0,200}"),
            expiry in proptest::option::of(proptest::num::u32::ANY),
            subscription_ids in proptest::collection::vec(1usize..=268_435_455, 0..3),
            user in proptest::collection::vec(("[a-z]{0,90}", "[a-zé]{0,90}"), 0..4),
        ) {
            use rumqttd::protocol::{Publish, PublishProperties};
            let topic = "t".repeat(topic_len);
            let payload = vec![7u8; payload_len];
            let publish = |payload: Vec<u8>| {
                let publish = Publish::new(topic.clone().into_bytes(), payload, false);
                match pkid {
                    Some(pkid) => crate::edge::session::as_qos1(&publish, pkid),
                    None => publish,
                }
            };
            let mut own = BytesMut::new();
            for (key, value) in &user {
                own.put_u8(0x26);
                for text in [key, value] {
                    own.put_u16(u16::try_from(text.len()).unwrap());
                    own.extend_from_slice(text.as_bytes());
                }
            }
            let head_props = PublishProperties {
                content_type: content_type.clone(),
                ..PublishProperties::default()
            };
            let whole_props = PublishProperties {
                message_expiry_interval: expiry,
                subscription_identifiers: subscription_ids.clone(),
                user_properties: user.clone(),
                ..head_props.clone()
            };
            let mut whole = BytesMut::new();
            Codec::V5
                .write(Packet::Publish(publish(payload.clone()), Some(whole_props)), &mut whole)
                .unwrap();
            let mut out = BytesMut::from(&b"before"[..]);
            let head_props = (head_props != PublishProperties::default()).then_some(head_props);
            Codec::V5
                .write(Packet::Publish(publish(Vec::new()), head_props), &mut out)
                .unwrap();
            let edge = DeliveryProperties { expiry, subscription_ids };
            proptest::prop_assert!(complete_publish(&mut out, 6, &edge, &own, &payload));
            proptest::prop_assert_eq!(&out[..6], b"before");
            let mut completed = out.split_off(6);
            let read = Codec::V5.read(&mut completed, usize::MAX).unwrap();
            proptest::prop_assert!(completed.is_empty(), "one whole frame");
            proptest::prop_assert_eq!(read, Codec::V5.read(&mut whole, usize::MAX).unwrap());
        }
    }

    #[test]
    fn only_a_publish_without_a_payload_is_completed() {
        let edge = DeliveryProperties {
            expiry: Some(1),
            subscription_ids: vec![],
        };
        // A PUBACK, a PUBLISH with a payload, a PUBLISH cut short: each refused, `out` as it
        // was before them.
        for frame in [
            &[0x40, 2, 0, 1][..],
            &[0x30, 5, 0, 1, b'a', 0, b'x'],
            &[0x30, 5, 0, 1, b'a'],
        ] {
            let mut out = BytesMut::from(&b"kept"[..]);
            out.extend_from_slice(frame);
            assert!(!complete_publish(&mut out, 4, &edge, b"", b"payload"));
            assert_eq!(&out[..], b"kept");
        }
        let mut out = BytesMut::from(&[0x30, 4, 0, 1, b'a', 0][..]);
        let huge = vec![0u8; MAX_REMAINING];
        assert!(
            !complete_publish(&mut out, 0, &edge, b"", &huge),
            "too large"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn peeks_read_connect_level_and_publish_ids() {
        // CONNECT, remaining 12: "MQTT", level 5, flags, keep-alive, ...
        let connect = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0, 0];
        assert_eq!(connect_level(&connect), Some(5));
        assert_eq!(connect_level(&connect[..5]), None, "incomplete");
        assert_eq!(connect_level(&[0x30, 0]), None, "not a CONNECT");
        assert_eq!(
            peek_connect(&connect[..5]),
            ConnectPeek::Header {
                frame_len: 14,
                level: None
            }
        );
        assert_eq!(peek_connect(&[0x10]), ConnectPeek::Incomplete);
        assert_eq!(peek_connect(&[0x10, 0xff, 0xff]), ConnectPeek::Incomplete);
        assert_eq!(
            peek_connect(&[0x10, 0xff, 0xff, 0xff, 0xff]),
            ConnectPeek::Malformed
        );
        assert_eq!(
            peek_connect(&[0x10, 0xff, 0xff, 0xff, 0x7f]),
            ConnectPeek::Header {
                frame_len: 5 + 268_435_455,
                level: None
            }
        );
        assert_eq!(peek_connect(&[0x30, 0]), ConnectPeek::NotConnect);
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
