//! Server topic aliases for MQTT 5 clients (MQTT 5 §3.3.2.3.4): a topic the client has been
//! told an alias for goes without its name, a two-byte alias in its place.
//!
//! Aliases are assigned where the bytes leave for the client, never before: the edge drops,
//! rewrites at a lower QoS and holds back (the client's Receive Maximum) what the router
//! forwards, and an alias is valid only in the order the client reads the packets. So each
//! connection keeps its own table, fed only by the PUBLISH frames in the order they are
//! written to the socket ([`TopicAliases::put`]); a frame held back gets its alias when it is
//! released, not when it was encoded.
//!
//! The table holds at most the smaller of the client's Topic Alias Maximum and
//! `broker.max_topic_aliases` topics. Once full, a new topic takes the alias used least
//! recently (MQTT 5 lets the sender map an alias to another topic at any time: the PUBLISH
//! that does so carries both). Topics of three bytes or less are never aliased (an alias
//! costs three bytes), and a frame that an alias would push past the client's Maximum Packet
//! Size goes as it is.

use std::collections::HashMap;

use bytes::{BufMut as _, BytesMut};

use super::codec::{PublishParts as Parts, put_varint, varint_len};

/// One connection's server topic aliases.
pub(crate) struct TopicAliases {
    /// Topic → its alias.
    by_topic: HashMap<Box<[u8]>, u16>,
    /// Alias `n` is `slots[n - 1]`: its topic, and when it was last used (see `tick`).
    slots: Vec<(Box<[u8]>, u64)>,
    /// Most aliases (1 to 65 535).
    max: u16,
    /// Counts the frames written: the recency of a use.
    tick: u64,
}

/// MQTT 5's Topic Alias property identifier.
const TOPIC_ALIAS: u8 = 0x23;

/// A topic this long or shorter is sent as it is: an alias (three bytes) would not save any.
const SHORTEST_ALIASED: usize = 4;

impl TopicAliases {
    /// A table of at most `max` aliases; `None` (no aliases) when `max` is 0.
    pub(crate) fn new(max: u16) -> Option<Self> {
        (max > 0).then(|| Self {
            by_topic: HashMap::new(),
            slots: Vec::new(),
            max,
            tick: 0,
        })
    }

    /// Appends `frame`, one MQTT 5 PUBLISH as encoded for this client, to `out`: with an
    /// alias for its topic (the topic left out if the client knows the alias already), or as
    /// it is when the topic is short, the frame could not be read, or an alias would make it
    /// larger than `limit`.
    pub(crate) fn put(&mut self, frame: &[u8], limit: usize, out: &mut BytesMut) {
        let Some(parts) = Parts::read(frame) else {
            out.extend_from_slice(frame);
            return;
        };
        let topic = &frame[parts.topic.clone()];
        if topic.len() < SHORTEST_ALIASED {
            out.extend_from_slice(frame);
            return;
        }
        self.tick += 1;
        if let Some(&alias) = self.by_topic.get(topic) {
            if let Some(slot) = self.slots.get_mut(usize::from(alias) - 1) {
                slot.1 = self.tick;
            }
            parts.write(frame, false, alias, out);
            return;
        }
        // A new topic: sent in full, with the alias it has from now on.
        if parts.len_with_alias(true, frame.len()) > limit {
            out.extend_from_slice(frame);
            return;
        }
        let alias = self.assign(topic);
        parts.write(frame, true, alias, out);
    }

    /// Gives `topic` an alias: a free one, or the one used least recently.
    fn assign(&mut self, topic: &[u8]) -> u16 {
        if self.slots.len() < usize::from(self.max) {
            self.slots.push((topic.into(), self.tick));
            // At most `max` (a u16) slots.
            let alias = u16::try_from(self.slots.len()).unwrap_or(u16::MAX);
            self.by_topic.insert(topic.into(), alias);
            return alias;
        }
        // Full: the least recently used alias is taken over (a scan: it happens only for a
        // topic the table has no room for, and the table is small).
        let (index, _) = self
            .slots
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, used))| *used)
            .unwrap_or((0, &(Box::default(), 0)));
        let alias = u16::try_from(index + 1).unwrap_or(u16::MAX);
        let old = std::mem::replace(&mut self.slots[index], (topic.into(), self.tick));
        self.by_topic.remove(&old.0);
        self.by_topic.insert(topic.into(), alias);
        alias
    }
}

impl Parts {
    /// The frame's remaining length with an alias property added, the topic kept or not.
    fn remaining_with_alias(&self, keep_topic: bool, frame_len: usize) -> (usize, usize) {
        let properties = self.properties.len() + 3;
        let topic = if keep_topic { self.topic.len() } else { 0 };
        let remaining = 2
            + topic
            + self.pkid.len()
            + varint_len(properties)
            + properties
            + (frame_len - self.payload);
        (remaining, properties)
    }

    /// The whole frame's length with an alias (and its topic, if kept).
    fn len_with_alias(&self, keep_topic: bool, frame_len: usize) -> usize {
        let (remaining, _) = self.remaining_with_alias(keep_topic, frame_len);
        1 + varint_len(remaining) + remaining
    }

    /// Writes `frame` to `out` with `alias` among its properties, the topic name kept or
    /// left out.
    fn write(&self, frame: &[u8], keep_topic: bool, alias: u16, out: &mut BytesMut) {
        let (remaining, properties) = self.remaining_with_alias(keep_topic, frame.len());
        out.reserve(1 + 4 + remaining);
        out.put_u8(frame[0]);
        put_varint(remaining, out);
        if keep_topic {
            // A topic read off a frame fits its two-byte length.
            out.put_u16(u16::try_from(self.topic.len()).unwrap_or(u16::MAX));
            out.extend_from_slice(&frame[self.topic.clone()]);
        } else {
            out.put_u16(0);
        }
        out.extend_from_slice(&frame[self.pkid.clone()]);
        put_varint(properties, out);
        out.extend_from_slice(&frame[self.properties.clone()]);
        out.put_u8(TOPIC_ALIAS);
        out.put_u16(alias);
        out.extend_from_slice(&frame[self.payload..]);
    }
}

#[cfg(test)]
mod tests {
    use rumqttd::protocol::{Packet, Publish, PublishProperties};

    use super::*;
    use crate::edge::codec::Codec;

    /// An MQTT 5 PUBLISH as the edge encodes it for a client.
    fn frame(
        topic: &str,
        qos1_pkid: Option<u16>,
        properties: Option<PublishProperties>,
    ) -> BytesMut {
        let publish = Publish::new(
            bytes::Bytes::copy_from_slice(topic.as_bytes()),
            bytes::Bytes::from_static(b"payload"),
            false,
        );
        let publish = match qos1_pkid {
            Some(pkid) => crate::edge::session::as_qos1(&publish, pkid),
            None => publish,
        };
        let mut out = BytesMut::new();
        Codec::V5
            .write(Packet::Publish(publish, properties), &mut out)
            .unwrap();
        out
    }

    /// What a client reads back: topic, alias, packet id, user properties.
    type Seen = (String, Option<u16>, Option<u16>, Vec<(String, String)>);

    /// Reads back what `put` wrote (checking the payload).
    fn read(out: &mut BytesMut) -> Seen {
        let pkid =
            crate::edge::codec::publish_qos_pkid(out).and_then(|(q, p)| (q > 0).then_some(p));
        match Codec::V5.read(out, usize::MAX) {
            Ok(Packet::Publish(publish, properties)) => {
                assert_eq!(&publish.payload[..], b"payload");
                let properties = properties.unwrap_or_default();
                (
                    String::from_utf8(publish.topic.to_vec()).unwrap(),
                    properties.topic_alias,
                    pkid,
                    properties.user_properties,
                )
            }
            other => panic!("not a publish: {other:?}"),
        }
    }

    #[test]
    fn a_topic_is_aliased_then_sent_by_alias_only() {
        let mut aliases = TopicAliases::new(4).unwrap();
        let props = PublishProperties {
            user_properties: vec![("k".into(), "v".into())],
            ..PublishProperties::default()
        };
        let mut out = BytesMut::new();
        aliases.put(
            &frame("site/a/temp", Some(7), Some(props.clone())),
            usize::MAX,
            &mut out,
        );
        let (topic, alias, pkid, user) = read(&mut out);
        assert_eq!(
            (topic.as_str(), alias, pkid),
            ("site/a/temp", Some(1), Some(7))
        );
        assert_eq!(user, props.user_properties);
        let plain = frame("site/a/temp", None, None);
        aliases.put(&plain, usize::MAX, &mut out);
        assert!(out.len() < plain.len(), "shorter by the topic");
        let (topic, alias, pkid, _) = read(&mut out);
        assert_eq!((topic.as_str(), alias, pkid), ("", Some(1), None));
        assert!(out.is_empty());
    }

    #[test]
    fn a_full_table_hands_the_least_recently_used_alias_over() {
        let mut aliases = TopicAliases::new(2).unwrap();
        let mut out = BytesMut::new();
        let mut send = |topic: &str| {
            aliases.put(&frame(topic, None, None), usize::MAX, &mut out);
            let (sent, alias, _, _) = read(&mut out);
            (sent, alias)
        };
        assert_eq!(send("one/topic"), ("one/topic".into(), Some(1)));
        assert_eq!(send("two/topic"), ("two/topic".into(), Some(2)));
        assert_eq!(send("one/topic"), (String::new(), Some(1)));
        // Full: alias 2 (used longest ago) now names the third topic.
        assert_eq!(send("three/topic"), ("three/topic".into(), Some(2)));
        assert_eq!(send("three/topic"), (String::new(), Some(2)));
        assert_eq!(send("one/topic"), (String::new(), Some(1)));
        // The second topic lost its alias: sent in full again, taking the oldest one.
        assert_eq!(send("two/topic"), ("two/topic".into(), Some(2)));
    }

    #[test]
    fn short_topics_and_frames_at_the_limit_go_as_they_are() {
        let mut aliases = TopicAliases::new(4).unwrap();
        let mut out = BytesMut::new();
        let short = frame("a/b", None, None);
        aliases.put(&short, usize::MAX, &mut out);
        assert_eq!(out, short);
        out.clear();
        let long = frame("a/long/topic", Some(1), None);
        aliases.put(&long, long.len(), &mut out);
        assert_eq!(
            out, long,
            "an alias would make it larger than the client accepts"
        );
        out.clear();
        // Not aliased then: the next one gets the alias in full.
        aliases.put(&long, usize::MAX, &mut out);
        assert_eq!(read(&mut out).1, Some(1));
        assert!(TopicAliases::new(0).is_none(), "0: the client takes none");
    }

    #[test]
    fn a_property_length_crossing_a_varint_boundary_is_rewritten_right() {
        // Properties of 126 bytes: 129 with the alias, whose length takes two bytes.
        let props = PublishProperties {
            user_properties: vec![("k".into(), "v".repeat(126 - 1 - 2 - 1 - 2))],
            ..PublishProperties::default()
        };
        let mut aliases = TopicAliases::new(1).unwrap();
        let mut out = BytesMut::new();
        aliases.put(
            &frame("x/y/z", Some(3), Some(props.clone())),
            usize::MAX,
            &mut out,
        );
        let (topic, alias, pkid, user) = read(&mut out);
        assert_eq!((topic.as_str(), alias, pkid), ("x/y/z", Some(1), Some(3)));
        assert_eq!(user, props.user_properties);
    }
}
