//! What MQTT 5 needs that rumqttd's router loses, carried through the router and applied at
//! the edge.
//!
//! The router forwards a publish at its subscription's QoS, forgets the retain flag it was
//! published with, ignores Message Expiry, No Local, Retain As Published and Retain Handling,
//! and keeps only one subscription id per filter. It does keep a publish's properties in its
//! log (retained messages included) and adds the subscription id of the filter that matched.
//! So the edge carries what it needs in those two places:
//!
//! - a **stamp**, which the edge puts on every publish on the way in and takes off on the way
//!   out: the QoS and retain flag as published in the Payload Format Indicator, as a value
//!   MQTT 5 does not allow (so it cannot be a client's: the client's own indicator, like all
//!   its properties, travels elsewhere). A publish with properties of its own, or from a
//!   session that may have a No Local subscription (a resumed session may have one from
//!   before), gets the **full stamp**: the indicator says so, and the Correlation Data holds,
//!   as one buffer, the publishing session, when the message expires (the Message Expiry
//!   Interval itself is kept from the router, whose own handling of it shortens a retained
//!   message's life each time it is read), and all the client's own properties, already
//!   encoded as they go out to subscribers. The router clones a publish's properties for
//!   every filter it matches and every read of its log: one shared buffer makes each of those
//!   clones a reference count instead of an allocation per string, and the edge writes the
//!   bytes out as they are, without decoding them again per subscriber. A publish with
//!   nothing of its own gets the **compact stamp**, the indicator alone: a 3.1.1 client's,
//!   the gateway's own, and an MQTT 5 client's without properties.
//! - an **internal subscription id**, which the edge gives each filter of an MQTT 5 client
//!   whose options are not the defaults (a forward without one is delivered with those):
//!   it holds the filter's options (No Local, Retain As Published, whether its retained
//!   messages are sent) and the client's own subscription id, if any. The router keeps it
//!   with the connection only, not with a stored session: the edge remembers each session's
//!   ids and puts them back when the session is resumed (see `expiry`).
//!
//! 3.1.1 clients see none of it: their packets are written without properties.

use std::time::Instant;

use bytes::{BufMut as _, Bytes, BytesMut};
use rumqttd::protocol::PublishProperties;

use super::codec;

/// A user property named so is dropped from a client's publish: the name of the stamp of
/// earlier versions, kept from subscribers as it always was.
pub(crate) const STAMP_KEY: &str = "$fieldlink";

/// What the router would lose about a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// QoS as published.
    pub(crate) qos: u8,
    /// Retain flag as published.
    pub(crate) retain: bool,
    /// The publishing session (a keyed hash of its key; 0: the gateway itself).
    pub(crate) origin: u64,
    /// When it expires, in milliseconds of the edge's clock; `None`: never.
    pub(crate) expires_at: Option<u64>,
}

/// The edge's clock for message expiry: milliseconds since the edge started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock(Instant);

impl Clock {
    pub(crate) fn new() -> Self {
        Self(Instant::now())
    }

    pub(crate) fn now(self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The clock for a batch of packets, read when first needed.
    pub(crate) fn lazy(self) -> Now {
        Now {
            clock: self,
            at: None,
        }
    }
}

/// The edge's clock read at most once for a batch of packets, and only if a packet needs it
/// (one with a Message Expiry Interval): a batch is handled within microseconds, and reading
/// the clock for every publish and every delivery cost about 100 instructions each, 1 % of a
/// forwarded publish (callgrind).
#[derive(Debug)]
pub(crate) struct Now {
    clock: Clock,
    at: Option<u64>,
}

impl Now {
    pub(crate) fn get(&mut self) -> u64 {
        let clock = self.clock;
        *self.at.get_or_insert_with(|| clock.now())
    }
}

/// Stamps a publish on its way to the router with the full stamp (see the module
/// documentation): its own properties encoded once, behind the origin and the deadline.
/// `now` reads the edge's clock; it is called only for a publish that expires.
pub(crate) fn stamp(
    properties: Option<PublishProperties>,
    qos: u8,
    retain: bool,
    origin: u64,
    now: impl FnOnce() -> u64,
) -> PublishProperties {
    let properties = properties.unwrap_or_default();
    // The router never sees the interval: it counts it in whole seconds, and takes the time
    // spent off a retained message's stored interval at every read, so a retained message read
    // a few times expires early. The stamp's deadline is the one kept.
    let expires_at = properties
        .message_expiry_interval
        .map(|secs| now().saturating_add(u64::from(secs) * 1000));
    let mut carried = BytesMut::with_capacity(HEADER + own_len(&properties));
    carried.put_bytes(0, HEADER);
    put_own(&properties, &mut carried);
    let mut stamped = full_stamp(carried, qos, retain, origin, expires_at);
    // A publisher's subscription ids go on as they came: the router refuses them.
    stamped.subscription_identifiers = properties.subscription_identifiers;
    stamped
}

/// A publisher's own properties, read straight off its frame (see [`take_own`]).
#[derive(Debug)]
pub(crate) struct Own {
    /// Its Message Expiry Interval, if any.
    expiry: Option<u32>,
    /// Room for the full stamp's header, then the properties as its subscribers get them.
    carried: BytesMut,
}

/// Takes the properties off the MQTT 5 PUBLISH at the start of `buf` (complete, and within
/// `max`) when the full stamp can carry them as they were sent; the frame is left without
/// any, so the codec reading it next builds none (rumqttd's reader makes a `String` of every
/// user property's key and value, each dropped again once the stamp has encoded them).
/// `None`, and `buf` untouched, for everything else, which the codec then reads and judges
/// as before: no properties, a Topic Alias or Subscription Identifier, a user property
/// named [`STAMP_KEY`], a property that may appear once given twice, or anything malformed.
///
/// The stamp's buffer is cut from `stamps`, the session's [`StampBuffers`].
pub(crate) fn take_own(buf: &mut BytesMut, max: usize, stamps: &mut StampBuffers) -> Option<Own> {
    let (parts, frame_len) = codec::whole_publish(buf, max)?;
    if parts.properties.is_empty() {
        return None;
    }
    // The retain flag, bit 0 of the fixed header.
    let retained = buf[0] & 1 != 0;
    let own = stamps.read_own(&buf[parts.properties.clone()], retained)?;
    codec::cut_properties(buf, &parts, frame_len).then_some(own)
}

/// Where a session's full stamps are written: one allocation of [`STAMPS_CHUNK`] bytes holds
/// the stamps of many publishes, each a slice of it, as rumqttd's reader cuts payloads from a
/// session's read buffer. A buffer per stamp was allocated on the session's thread and freed
/// on the router's, where glibc's per-thread cache cannot take it back: about 500 of the
/// 1 900 instructions a publish's properties added at the edge (callgrind). A chunk is freed when
/// the last message cut from it is gone: a message waiting for a slow subscriber keeps at most
/// one chunk alive, as its payload keeps the read buffer it was cut from. A retained message
/// may be kept for ever, so its stamp gets a buffer of its own size: a client cannot make a
/// few bytes of retained properties hold a whole chunk.
#[derive(Debug, Default)]
pub(crate) struct StampBuffers {
    chunk: BytesMut,
}

/// The size of a [`StampBuffers`] chunk (a stamp larger than this gets a chunk of its own):
/// the stamps of a dozen or more publishes with a few user properties (a malloc and a free
/// shared by as many), and at most this much held by one message kept long.
const STAMPS_CHUNK: usize = 1024;

impl StampBuffers {
    /// Reads a publish's property block as [`take_own`] takes it: the Message Expiry Interval
    /// apart, every other property copied as it is behind room for the stamp's header; for a
    /// `retained` publish into a buffer of its own.
    fn read_own(&mut self, block: &[u8], retained: bool) -> Option<Own> {
        let need = HEADER + block.len();
        if retained {
            let mut carried = BytesMut::with_capacity(need);
            let expiry = read_own_into(block, &mut carried)?;
            return Some(Own { expiry, carried });
        }
        if self.chunk.capacity() < need {
            self.chunk = BytesMut::with_capacity(need.max(STAMPS_CHUNK));
        }
        match read_own_into(block, &mut self.chunk) {
            Some(expiry) => Some(Own {
                expiry,
                carried: self.chunk.split(),
            }),
            None => {
                // What was written before the block was refused is no one's.
                self.chunk.clear();
                None
            }
        }
    }
}

/// The full stamp on properties [`take_own`] took off a publish (`now` as for [`stamp`]).
pub(crate) fn stamp_own(
    own: Own,
    qos: u8,
    retain: bool,
    origin: u64,
    now: impl FnOnce() -> u64,
) -> PublishProperties {
    let expires_at = own
        .expiry
        .map(|secs| now().saturating_add(u64::from(secs) * 1000));
    full_stamp(own.carried, qos, retain, origin, expires_at)
}

/// The full stamp: `carried` is the header's room, then the publisher's own properties.
fn full_stamp(
    mut carried: BytesMut,
    qos: u8,
    retain: bool,
    origin: u64,
    expires_at: Option<u64>,
) -> PublishProperties {
    carried[..8].copy_from_slice(&origin.to_be_bytes());
    carried[8..HEADER].copy_from_slice(&expires_at.unwrap_or(NEVER).to_be_bytes());
    PublishProperties {
        payload_format_indicator: Some(FULL | qos.min(2) << 1 | u8::from(retain)),
        correlation_data: Some(carried.freeze()),
        ..PublishProperties::default()
    }
}

/// Writes the stamp's header room and then `block` as [`take_own`] takes it into `carried`
/// (empty); the Message Expiry Interval read apart. `None` if the block is not one to take
/// (`carried` then holds what was written before that was found).
fn read_own_into(block: &[u8], carried: &mut BytesMut) -> Option<Option<u32>> {
    carried.put_slice(&[0; HEADER]);
    // A block of bytes below 0x80 holds only ASCII strings, valid UTF-8 as the codec insists:
    // one check a word at a time for the whole block instead of one per string (most
    // properties are ASCII; a check per string cost a quarter of what a publish's properties
    // add at the edge, callgrind).
    let ascii = block.is_ascii();
    let mut expiry = None;
    // The properties that may appear once, by identifier (all below 16).
    let mut seen = 0u16;
    // `block[..at]` is read; of it, `block[..copied]` is in `carried` or left out.
    let (mut at, mut copied) = (0, 0);
    while let Some(&id) = block.get(at) {
        let rest = &block[at + 1..];
        let len = match id {
            PAYLOAD_FORMAT_INDICATOR => 1,
            MESSAGE_EXPIRY_INTERVAL => 4,
            CONTENT_TYPE | RESPONSE_TOPIC => text_len(rest, ascii)?,
            CORRELATION_DATA => field_len(rest)?,
            USER_PROPERTY => {
                let key = text_len(rest, ascii)?;
                if rest.get(2..key)? == STAMP_KEY.as_bytes() {
                    return None;
                }
                key + text_len(rest.get(key..)?, ascii)?
            }
            // A Topic Alias, Subscription Identifiers, or not a publish's property at all.
            _ => return None,
        };
        if id != USER_PROPERTY {
            let bit = 1 << id;
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
        }
        let value = rest.get(..len)?;
        if id == MESSAGE_EXPIRY_INTERVAL {
            // Each subscriber gets what is left of it: everything before it is copied as it
            // is, in one piece.
            expiry = Some(u32::from_be_bytes(value.try_into().ok()?));
            carried.extend_from_slice(&block[copied..at]);
            copied = at + 1 + len;
        }
        at += 1 + len;
    }
    carried.extend_from_slice(&block[copied..]);
    Some(expiry)
}

/// The length of the binary field at the start of `bytes`, its two length bytes included.
fn field_len(bytes: &[u8]) -> Option<usize> {
    let len = usize::from(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]));
    (bytes.len() >= 2 + len).then_some(2 + len)
}

/// As [`field_len`], for a UTF-8 string (valid, as the codec would insist); `ascii`: it is
/// known to be ASCII.
fn text_len(bytes: &[u8], ascii: bool) -> Option<usize> {
    let len = field_len(bytes)?;
    let text = &bytes[2..len];
    if !ascii && !text.is_ascii() {
        std::str::from_utf8(text).ok()?;
    }
    Some(len)
}

/// The compact stamp of a publish from a 3.1.1 client or the gateway itself (see the module
/// documentation): QoS and retain as published, nothing else.
pub(crate) fn compact_stamp(qos: u8, retain: bool) -> PublishProperties {
    compact_stamp_onto(None, qos, retain)
}

/// Whether an MQTT 5 client's publish can carry the compact stamp (its session having no No
/// Local subscription): no properties of its own to carry (a publisher's subscription ids
/// are an error the router answers).
pub(crate) fn fits_compact(properties: Option<&PublishProperties>) -> bool {
    properties.is_none_or(|p| {
        p.payload_format_indicator.is_none()
            && p.message_expiry_interval.is_none()
            && p.response_topic.is_none()
            && p.correlation_data.is_none()
            && p.user_properties.is_empty()
            && p.content_type.is_none()
    })
}

/// The compact stamp on a publish's properties that [`fits_compact`].
pub(crate) fn compact_stamp_onto(
    properties: Option<PublishProperties>,
    qos: u8,
    retain: bool,
) -> PublishProperties {
    let mut properties = properties.unwrap_or_default();
    properties.payload_format_indicator = Some(COMPACT | qos.min(2) << 1 | u8::from(retain));
    properties
}

/// Marks a compact stamp: MQTT 5 allows a Payload Format Indicator of 0 or 1 only.
const COMPACT: u8 = 0x80;
/// Marks a full stamp, whose Correlation Data is the edge's (see [`stamp`]).
const FULL: u8 = 0x40;
/// The full stamp's buffer starts with the origin and the deadline, 8 bytes each.
const HEADER: usize = 16;
/// The deadline of a message that never expires.
const NEVER: u64 = u64::MAX;

/// The publisher's own properties, encoded, as a full stamp carried them (empty for a compact
/// stamp): the stamp's buffer, seen past its header. A slice of the buffer would count its
/// reference up and down again for every delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Carried(Bytes);

impl std::ops::Deref for Carried {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.0.get(HEADER..).unwrap_or_default()
    }
}

/// Takes the stamp off a publish on its way to a client: the stamp, and the publisher's own
/// properties. `None` if it has none.
pub(crate) fn unstamp(properties: &mut PublishProperties) -> Option<(Stamp, Carried)> {
    let marker = properties
        .payload_format_indicator
        .filter(|value| value & (COMPACT | FULL) != 0)?;
    properties.payload_format_indicator = None;
    let mut stamp = Stamp {
        qos: (marker >> 1 & 0b11).min(2),
        retain: marker & 1 != 0,
        origin: 0,
        expires_at: None,
    };
    if marker & COMPACT != 0 {
        return Some((stamp, Carried::default()));
    }
    let carried = properties.correlation_data.take()?;
    let header = carried.get(..HEADER)?;
    let (origin, at) = header.split_at(8);
    stamp.origin = u64::from_be_bytes(origin.try_into().ok()?);
    stamp.expires_at = Some(u64::from_be_bytes(at.try_into().ok()?)).filter(|at| *at != NEVER);
    Some((stamp, Carried(carried)))
}

/// MQTT 5 property identifiers of a publisher's own properties (MQTT 5 §2.2.2.2).
const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const USER_PROPERTY: u8 = 0x26;

/// The encoded length of what [`put_own`] writes.
fn own_len(properties: &PublishProperties) -> usize {
    let field = |bytes: &[u8]| 2 + bytes.len().min(usize::from(u16::MAX));
    properties.payload_format_indicator.map_or(0, |_| 2)
        + properties
            .response_topic
            .as_ref()
            .map_or(0, |t| 1 + field(t.as_bytes()))
        + properties
            .correlation_data
            .as_ref()
            .map_or(0, |d| 1 + field(d))
        + properties
            .user_properties
            .iter()
            .filter(|(key, _)| key != STAMP_KEY)
            .map(|(key, value)| 1 + field(key.as_bytes()) + field(value.as_bytes()))
            .sum::<usize>()
        + properties
            .content_type
            .as_ref()
            .map_or(0, |t| 1 + field(t.as_bytes()))
}

/// Encodes a publisher's own properties as its subscribers are to get them: all but the
/// Message Expiry Interval (each gets what is left of it), the Topic Alias (refused, or the
/// edge's own per connection) and the Subscription Identifiers (the subscriber's own).
fn put_own(properties: &PublishProperties, out: &mut BytesMut) {
    if let Some(indicator) = properties.payload_format_indicator {
        out.put_u8(PAYLOAD_FORMAT_INDICATOR);
        out.put_u8(indicator);
    }
    if let Some(topic) = &properties.response_topic {
        out.put_u8(RESPONSE_TOPIC);
        put_field(topic.as_bytes(), out);
    }
    if let Some(data) = &properties.correlation_data {
        out.put_u8(CORRELATION_DATA);
        put_field(data, out);
    }
    for (key, value) in &properties.user_properties {
        if key != STAMP_KEY {
            out.put_u8(USER_PROPERTY);
            put_field(key.as_bytes(), out);
            put_field(value.as_bytes(), out);
        }
    }
    if let Some(content_type) = &properties.content_type {
        out.put_u8(CONTENT_TYPE);
        put_field(content_type.as_bytes(), out);
    }
}

/// A string or binary field: two bytes of length, then the bytes (anything read off the wire
/// fits; longer is cut, never written with a length that lies).
fn put_field(bytes: &[u8], out: &mut BytesMut) {
    let len = bytes.len().min(usize::from(u16::MAX));
    // At most u16::MAX, just bounded.
    out.put_u16(u16::try_from(len).unwrap_or(u16::MAX));
    out.extend_from_slice(&bytes[..len]);
}

/// One MQTT 5 subscription's options, as the edge applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Options {
    /// No Local: the session's own publishes are not sent back to it.
    pub(crate) no_local: bool,
    /// Retain As Published: the retain flag is kept on live messages.
    pub(crate) retain_as_published: bool,
    /// Retain Handling said not to send the retained messages now.
    pub(crate) skip_retained: bool,
    /// The client's Subscription Identifier.
    pub(crate) id: Option<usize>,
}

/// The largest Subscription Identifier a client may use here: the internal id holds three
/// flags besides it within MQTT's 268 435 455.
pub(crate) const MAX_CLIENT_SUBSCRIPTION_ID: usize = (268_435_455 - 1) >> 3;

impl Options {
    /// The internal subscription id holding these options (never 0, which MQTT forbids).
    pub(crate) fn encode(self) -> usize {
        let flags = usize::from(self.no_local)
            | usize::from(self.retain_as_published) << 1
            | usize::from(self.skip_retained) << 2;
        1 + (self.id.unwrap_or(0) << 3 | flags)
    }

    pub(crate) fn decode(id: usize) -> Self {
        let bits = id.saturating_sub(1);
        Self {
            no_local: bits & 1 != 0,
            retain_as_published: bits & 2 != 0,
            skip_retained: bits & 4 != 0,
            id: Some(bits >> 3).filter(|id| *id != 0),
        }
    }
}

/// What becomes of a publish the router forwards to an MQTT 5 client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Sent, at most at this QoS (the lower of the published and the granted one).
    Send { max_qos: u8 },
    /// Not sent: the client's own (No Local), a retained message it did not want now, or
    /// expired.
    Drop(&'static str),
}

/// Decides a forward's fate and puts its properties in the form the client is to see:
/// the stamp and the internal subscription id taken off, the client's own id put back, the
/// remaining expiry interval set; `retain` made what the subscription asked for. Also
/// returns the publisher's own properties, encoded, to be written after those (see
/// [`crate::edge::codec::complete_publish`]).
pub(crate) fn deliver(
    properties: &mut PublishProperties,
    retain: &mut bool,
    session_origin: u64,
    now: impl FnOnce() -> u64,
) -> (Delivery, Carried) {
    let (stamp, own) = match unstamp(properties) {
        Some((stamp, own)) => (Some(stamp), own),
        None => (None, Carried::default()),
    };
    // The router adds the id of the filter that matched last; a publisher cannot add one.
    let options = properties
        .subscription_identifiers
        .pop()
        .map(Options::decode)
        .unwrap_or_default();
    properties.subscription_identifiers.clear();
    if let Some(id) = options.id {
        properties.subscription_identifiers.push(id);
    }
    // From the router, `retain` is set only on a message from the retained store, sent
    // because of a SUBSCRIBE.
    let from_store = *retain;
    if from_store && options.skip_retained {
        return (Delivery::Drop("retain_handling"), own);
    }
    let Some(stamp) = stamp else {
        return (Delivery::Send { max_qos: 2 }, own);
    };
    if options.no_local && stamp.origin == session_origin && stamp.origin != 0 {
        return (Delivery::Drop("no_local"), own);
    }
    if let Some(at) = stamp.expires_at {
        let left = at.saturating_sub(now());
        if left == 0 {
            return (Delivery::Drop("expired"), own);
        }
        // Whole seconds, rounded up: a message is never told it expired before it did.
        properties.message_expiry_interval =
            Some(u32::try_from(left.div_ceil(1000)).unwrap_or(u32::MAX));
    }
    *retain = from_store || (options.retain_as_published && stamp.retain);
    (Delivery::Send { max_qos: stamp.qos }, own)
}

/// Whether the properties are empty, so the packet is written without any.
pub(crate) fn is_empty(properties: &PublishProperties) -> bool {
    *properties == PublishProperties::default()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rumqttd::protocol::{Packet, Publish};

    use super::*;
    use crate::edge::codec::{Codec, DeliveryProperties, complete_publish};

    /// A publish with `properties` as the router forwards it (with the internal subscription
    /// id `id` of the filter that matched) delivered at `now` and written for a client as the
    /// edge writes it, then read back as the client reads it.
    fn delivered(
        properties: PublishProperties,
        id: usize,
        now: u64,
    ) -> (Delivery, Option<PublishProperties>) {
        let mut props = properties;
        props.subscription_identifiers.push(id);
        let mut retain = false;
        let (delivery, own) = deliver(&mut props, &mut retain, 9, || now);
        // As the session writes it: the edge's properties apart, after the head.
        let edge = DeliveryProperties {
            expiry: props.message_expiry_interval.take(),
            subscription_ids: std::mem::take(&mut props.subscription_identifiers),
        };
        let props = (!is_empty(&props)).then_some(props);
        let publish = Publish::new(Bytes::from_static(b"a/b"), Bytes::new(), false);
        let mut out = BytesMut::new();
        Codec::V5
            .write(Packet::Publish(publish, props), &mut out)
            .unwrap();
        assert!(complete_publish(&mut out, 0, &edge, &own, b"payload"));
        match Codec::V5.read(&mut out, usize::MAX) {
            Ok(Packet::Publish(publish, props)) => {
                assert_eq!(&publish.payload[..], b"payload");
                assert_eq!(&publish.topic[..], b"a/b");
                assert!(out.is_empty(), "one whole frame");
                (delivery, props)
            }
            other => panic!("not a publish: {other:?}"),
        }
    }

    #[test]
    fn a_stamp_reads_back_as_written() {
        for (qos, retain, origin, expiry) in [
            (0, false, 0, None),
            (1, true, 7, Some(0)),
            (2, true, u64::MAX, Some(u32::MAX)),
        ] {
            let published = PublishProperties {
                message_expiry_interval: expiry,
                ..PublishProperties::default()
            };
            let mut props = stamp(Some(published), qos, retain, origin, || 1_000);
            let (read, own) = unstamp(&mut props).expect("a stamp");
            let expires_at = expiry.map(|secs| 1_000 + u64::from(secs) * 1000);
            assert_eq!(
                read,
                Stamp {
                    qos,
                    retain,
                    origin,
                    expires_at
                }
            );
            assert!(own.is_empty());
            assert!(is_empty(&props), "nothing of the stamp left: {props:?}");
        }
        // Without the edge's buffer behind it, a full stamp's indicator is no stamp.
        let mut cut = PublishProperties {
            payload_format_indicator: Some(FULL | 2),
            correlation_data: Some(Bytes::from_static(b"short")),
            ..PublishProperties::default()
        };
        assert_eq!(unstamp(&mut cut), None);
        assert_eq!(unstamp(&mut PublishProperties::default()), None);
    }

    /// Every property a publisher may set, a user property long enough that the properties'
    /// length takes two bytes, and one user property given twice (which MQTT allows).
    fn every_property() -> PublishProperties {
        PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(10),
            response_topic: Some("svc/replies/x".into()),
            correlation_data: Some(Bytes::from_static(b"\x00req\xff")),
            user_properties: vec![
                ("site".into(), "north-field".into()),
                ("unit".into(), "celsius".into()),
                ("note".into(), "n".repeat(200)),
                ("site".into(), "twice is fine".into()),
            ],
            content_type: Some("application/json".into()),
            ..PublishProperties::default()
        }
    }

    #[test]
    fn a_publishers_own_properties_go_out_as_published() {
        let published = every_property();
        let stamped = stamp(Some(published.clone()), 1, false, 5, || 1_000);
        let own = Options {
            id: Some(42),
            ..Options::default()
        };
        let (delivery, props) = delivered(stamped, own.encode(), 4_500);
        assert_eq!(delivery, Delivery::Send { max_qos: 1 });
        let expected = PublishProperties {
            message_expiry_interval: Some(7),
            subscription_identifiers: vec![42],
            ..published
        };
        assert_eq!(props, Some(expected));
        // Nothing of its own: the edge's properties alone.
        let stamped = stamp(None, 0, false, 5, || 0);
        let (_, props) = delivered(stamped, Options::default().encode(), 0);
        assert_eq!(props, None);
    }

    /// `properties` on a QoS 1 publish, as a client's frame.
    fn frame(properties: Option<PublishProperties>) -> BytesMut {
        let publish = Publish::new(
            Bytes::from_static(b"a/b"),
            Bytes::from_static(b"payload"),
            true,
        );
        let publish = crate::edge::session::as_qos1(&publish, 7);
        let mut frame = BytesMut::new();
        Codec::V5
            .write(Packet::Publish(publish, properties), &mut frame)
            .unwrap();
        frame
    }

    #[test]
    fn properties_taken_off_the_frame_go_out_as_those_the_codec_read() {
        let published = every_property();
        for properties in [
            published.clone(),
            PublishProperties {
                message_expiry_interval: Some(1),
                ..PublishProperties::default()
            },
        ] {
            let mut buf = frame(Some(properties.clone()));
            buf.extend_from_slice(b"\xe0\x00"); // the next packet, untouched
            let own = take_own(&mut buf, usize::MAX, &mut StampBuffers::default()).expect("taken");
            let Ok(Packet::Publish(publish, None)) = Codec::V5.read(&mut buf, usize::MAX) else {
                panic!("a publish without properties left");
            };
            let Ok(Packet::Publish(expected, _)) =
                Codec::V5.read(&mut frame(Some(properties.clone())), usize::MAX)
            else {
                panic!("a publish");
            };
            assert_eq!(publish, expected, "all but the properties as sent");
            assert_eq!(&buf[..], b"\xe0\x00");
            let id = Options::default().encode();
            let taken = delivered(stamp_own(own, 1, true, 5, || 1_000), id, 4_500);
            let read = delivered(stamp(Some(properties), 1, true, 5, || 1_000), id, 4_500);
            assert_eq!(taken, read);
        }
        assert_eq!(
            delivered(stamp(Some(published), 1, true, 5, || 1_000), 1, 4_500)
                .1
                .map(|p| p.user_properties.len()),
            Some(4)
        );
    }

    #[test]
    fn a_sessions_stamps_share_one_allocation_and_a_refused_block_leaves_nothing_in_it() {
        let mut stamps = StampBuffers::default();
        let properties = every_property();
        // Not retained (`frame` makes retained publishes: the retain flag is bit 0).
        let take = |stamps: &mut StampBuffers, properties: &PublishProperties| {
            let mut buf = frame(Some(properties.clone()));
            buf[0] &= !1;
            take_own(&mut buf, usize::MAX, stamps)
        };
        let first = take(&mut stamps, &properties).expect("taken");
        // A block the codec is to judge (a Topic Alias) is refused after part of it was read.
        let refused = PublishProperties {
            topic_alias: Some(1),
            ..properties.clone()
        };
        assert!(take(&mut stamps, &refused).is_none());
        let second = take(&mut stamps, &properties).expect("taken");
        // Cut one after the other from the same chunk: no allocation of its own.
        let end_of_first = first.carried.as_ptr().wrapping_add(first.carried.len());
        assert_eq!(second.carried.as_ptr(), end_of_first);
        // A retained one (kept for ever, maybe) is not: the next is cut where it would have been.
        let mut retained = frame(Some(properties.clone()));
        let kept = take_own(&mut retained, usize::MAX, &mut stamps).expect("taken");
        let third = take(&mut stamps, &properties).expect("taken");
        let end_of_second = second.carried.as_ptr().wrapping_add(second.carried.len());
        assert_eq!(third.carried.as_ptr(), end_of_second);
        assert_ne!(kept.carried.as_ptr(), end_of_second);
        let id = Options::default().encode();
        let expected = delivered(stamp(Some(properties.clone()), 1, false, 9, || 0), id, 10);
        for own in [first, second, third, kept] {
            assert_eq!(
                delivered(stamp_own(own, 1, false, 9, || 0), id, 10),
                expected
            );
        }
        // A stamp larger than a chunk gets a chunk of its own, read back whole.
        let large = PublishProperties {
            correlation_data: Some(Bytes::from(vec![7u8; STAMPS_CHUNK])),
            ..properties
        };
        let own = take(&mut stamps, &large).expect("taken");
        assert_eq!(
            delivered(stamp_own(own, 1, false, 9, || 0), id, 10),
            delivered(stamp(Some(large), 1, false, 9, || 0), id, 10)
        );
    }

    #[test]
    fn properties_the_codec_is_to_judge_are_left_on_the_frame() {
        let with = |properties: PublishProperties| frame(Some(properties));
        let mut twice = with(PublishProperties {
            content_type: Some("a".into()),
            ..PublishProperties::default()
        });
        // The content type given twice: the frame's properties grow by the same 4 bytes.
        twice[1] += 4;
        let props_at = 1 + 1 + 2 + 3 + 2;
        twice[props_at] += 4;
        let mut bytes = twice.to_vec();
        let again = bytes[props_at + 1..props_at + 5].to_vec();
        bytes.splice(props_at + 5..props_at + 5, again);
        let twice = BytesMut::from(&bytes[..]);
        let mut bad_utf8 = with(PublishProperties {
            content_type: Some("ab".into()),
            ..PublishProperties::default()
        });
        let last = props_at + 5;
        bad_utf8[last] = 0xff;
        let cases = [
            ("none", frame(None)),
            ("empty", with(PublishProperties::default())),
            (
                "topic alias",
                with(PublishProperties {
                    topic_alias: Some(1),
                    ..PublishProperties::default()
                }),
            ),
            (
                "subscription id",
                with(PublishProperties {
                    subscription_identifiers: vec![3],
                    ..PublishProperties::default()
                }),
            ),
            (
                "the old stamp's name",
                with(PublishProperties {
                    user_properties: vec![(STAMP_KEY.into(), "21ff".into())],
                    ..PublishProperties::default()
                }),
            ),
            ("a property twice", twice),
            ("not UTF-8", bad_utf8),
        ];
        for (why, buf) in cases {
            let mut taken = buf.clone();
            assert!(
                take_own(&mut taken, usize::MAX, &mut StampBuffers::default()).is_none(),
                "{why}"
            );
            assert_eq!(taken, buf, "{why}: untouched");
        }
        // Incomplete, or past the codec's bound: the codec says so.
        let whole = with(PublishProperties {
            content_type: Some("a".into()),
            ..PublishProperties::default()
        });
        let mut cut = BytesMut::from(&whole[..whole.len() - 1]);
        assert!(take_own(&mut cut, usize::MAX, &mut StampBuffers::default()).is_none());
        let mut large = whole.clone();
        assert!(take_own(&mut large, whole.len() - 3, &mut StampBuffers::default()).is_none());
        assert_eq!(large, whole);
    }

    /// One property as a client may encode it, or a few bytes of anything.
    fn piece() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let field = |id: u8, bytes: Vec<u8>| {
            let mut out = vec![id];
            out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
            out.extend_from_slice(&bytes);
            out
        };
        let text = "\\PC{0,6}".prop_map(String::into_bytes);
        let raw = proptest::collection::vec(any::<u8>(), 0..6);
        prop_oneof![
            any::<u8>().prop_map(|b| vec![PAYLOAD_FORMAT_INDICATOR, b]),
            any::<u32>().prop_map(|s| {
                let mut out = vec![MESSAGE_EXPIRY_INTERVAL];
                out.extend_from_slice(&s.to_be_bytes());
                out
            }),
            text.clone().prop_map(move |t| field(CONTENT_TYPE, t)),
            text.clone().prop_map(move |t| field(RESPONSE_TOPIC, t)),
            raw.clone().prop_map(move |d| field(CORRELATION_DATA, d)),
            (text.clone(), text).prop_map(move |(k, v)| {
                let mut out = field(USER_PROPERTY, k);
                out.extend_from_slice(&field(0, v)[1..]);
                out
            }),
            // A string that is not UTF-8, a topic alias, anything at all.
            raw.clone()
                .prop_map(move |d| field(CONTENT_TYPE, [&d[..], &[0xff]].concat())),
            any::<u16>().prop_map(|a| [&[0x23][..], &a.to_be_bytes()].concat()),
            raw,
        ]
    }

    proptest::proptest! {
        /// Whatever property bytes a client puts in a publish, they are either taken as the
        /// codec would read them, with the rest of the publish as it was, or left for the
        /// codec, the frame untouched.
        #[test]
        fn any_property_block_is_taken_whole_or_left_alone(
            pieces in proptest::collection::vec(piece(), 1..8),
        ) {
            let block: Vec<u8> = pieces.concat();
            let mut buf = frame(None);
            let props_at = 1 + 1 + 2 + 3 + 2;
            let mut bytes = buf.to_vec();
            let mut len = BytesMut::new();
            codec::put_varint(block.len(), &mut len);
            bytes.splice(props_at..=props_at, len.iter().copied().chain(block.iter().copied()));
            let remaining = bytes.len() - 2;
            let mut framed = BytesMut::new();
            framed.put_u8(bytes[0]);
            codec::put_varint(remaining, &mut framed);
            framed.extend_from_slice(&bytes[2..]);
            buf = framed.clone();
            match take_own(&mut buf, usize::MAX, &mut StampBuffers::default()) {
                None => proptest::prop_assert_eq!(&buf, &framed),
                Some(own) => {
                    let Ok(Packet::Publish(publish, None)) = Codec::V5.read(&mut buf, usize::MAX)
                    else {
                        panic!("a publish without properties left");
                    };
                    let Ok(Packet::Publish(sent, Some(properties))) =
                        Codec::V5.read(&mut framed, usize::MAX)
                    else {
                        panic!("the codec reads what was taken");
                    };
                    proptest::prop_assert_eq!(publish, sent);
                    let id = Options::default().encode();
                    proptest::prop_assert_eq!(
                        delivered(stamp_own(own, 1, false, 5, || 0), id, 0),
                        delivered(stamp(Some(properties), 1, false, 5, || 0), id, 0)
                    );
                }
            }
        }
    }

    #[test]
    fn a_client_cannot_forge_a_stamp() {
        // An indicator with the stamp's bits, Correlation Data looking like the edge's and a
        // user property named like the stamp of earlier versions.
        let forged = PublishProperties {
            payload_format_indicator: Some(COMPACT | FULL | 1),
            correlation_data: Some(Bytes::from_static(&[0xff; 16])),
            user_properties: vec![
                (STAMP_KEY.to_owned(), "00ff".to_owned()),
                ("kept".to_owned(), "yes".to_owned()),
            ],
            ..PublishProperties::default()
        };
        assert!(!fits_compact(Some(&forged)));
        let stamped = stamp(Some(forged), 1, false, 7, || 0);
        let mut props = stamped.clone();
        assert_eq!(
            unstamp(&mut props).map(|(stamp, _)| stamp),
            Some(Stamp {
                qos: 1,
                retain: false,
                origin: 7,
                expires_at: None
            })
        );
        // The client's own go to its subscribers as it sent them, but the old stamp's name.
        let (_, props) = delivered(stamped, Options::default().encode(), 0);
        let props = props.expect("the client's own properties");
        assert_eq!(props.payload_format_indicator, Some(COMPACT | FULL | 1));
        assert_eq!(props.correlation_data.as_deref(), Some(&[0xff; 16][..]));
        assert_eq!(props.user_properties, vec![("kept".into(), "yes".into())]);
    }

    #[test]
    fn a_compact_stamp_reads_back_and_leaves_nothing_behind() {
        for (qos, retain) in [(0, false), (1, true), (2, false), (2, true)] {
            let mut props = compact_stamp(qos, retain);
            let (stamp, own) = unstamp(&mut props).expect("a stamp");
            assert_eq!(
                stamp,
                Stamp {
                    qos,
                    retain,
                    origin: 0,
                    expires_at: None
                }
            );
            assert!(own.is_empty());
            assert!(is_empty(&props));
        }
        // Any property of the client's own takes the full stamp.
        for published in [
            PublishProperties {
                payload_format_indicator: Some(0),
                ..PublishProperties::default()
            },
            PublishProperties {
                user_properties: vec![("k".into(), "v".into())],
                ..PublishProperties::default()
            },
            PublishProperties {
                message_expiry_interval: Some(1),
                ..PublishProperties::default()
            },
        ] {
            assert!(!fits_compact(Some(&published)), "{published:?}");
        }
        assert!(fits_compact(None));
        assert!(fits_compact(Some(&PublishProperties::default())));
    }

    #[test]
    fn options_fit_the_internal_id() {
        for options in [
            Options::default(),
            Options {
                no_local: true,
                retain_as_published: false,
                skip_retained: true,
                id: Some(MAX_CLIENT_SUBSCRIPTION_ID),
            },
            Options {
                no_local: false,
                retain_as_published: true,
                skip_retained: false,
                id: Some(1),
            },
        ] {
            let id = options.encode();
            assert!((1..=268_435_455).contains(&id), "{id}");
            assert_eq!(Options::decode(id), options);
        }
    }

    #[test]
    fn expiry_counts_down_and_drops() {
        let published = PublishProperties {
            message_expiry_interval: Some(10),
            ..PublishProperties::default()
        };
        let stamped = stamp(Some(published), 1, true, 5, || 1_000);
        let mut props = stamped.clone();
        let mut retain = false;
        let (delivery, own) = deliver(&mut props, &mut retain, 9, || 4_500);
        assert_eq!(delivery, Delivery::Send { max_qos: 1 });
        assert!(own.is_empty());
        assert_eq!(props.message_expiry_interval, Some(7), "6.5 s left: 7");
        assert!(props.user_properties.is_empty());
        assert!(!retain, "not retain-as-published");
        let mut props = stamped;
        assert_eq!(
            deliver(&mut props, &mut retain, 9, || 11_000).0,
            Delivery::Drop("expired")
        );
    }
}
