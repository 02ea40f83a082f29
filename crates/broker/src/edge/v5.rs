//! What MQTT 5 needs that rumqttd's router loses, carried through the router and applied at
//! the edge.
//!
//! The router forwards a publish at its subscription's QoS, forgets the retain flag it was
//! published with, ignores Message Expiry, No Local, Retain As Published and Retain Handling,
//! and keeps only one subscription id per filter. It does keep a publish's properties in its
//! log (retained messages included) and adds the subscription id of the filter that matched.
//! So the edge carries what it needs in those two places:
//!
//! - a **stamp**, a user property the edge adds to every publish on the way in (a client's
//!   own copy of it is dropped first, so no client can forge one) and strips on the way out:
//!   the QoS and retain flag as published, the publishing session, and when the message
//!   expires (the Message Expiry Interval itself is kept from the router, whose own handling
//!   of it shortens a retained message's life each time it is read);
//!   A publish with nothing else to carry gets a **compact stamp** instead, which costs no
//!   allocation in the edge nor in the router's log: its QoS and retain flag in the Payload
//!   Format Indicator, as a value MQTT 5 does not allow (a client's own copy is never read:
//!   its publish carries the full stamp whenever it sets an indicator). That is a 3.1.1
//!   client's publish, the gateway's own, and an MQTT 5 client's without an expiry or an
//!   indicator from a session that has no No Local subscription (the origin matters only to
//!   the publishing session's own subscriptions; a resumed session may have one from before,
//!   so it always gets the full stamp);
//! - an **internal subscription id**, which the edge gives each filter of an MQTT 5 client:
//!   it holds the filter's options (No Local, Retain As Published, whether its retained
//!   messages are sent) and the client's own subscription id, if any. The router keeps it
//!   with the connection only, not with a stored session: the edge remembers each session's
//!   ids and puts them back when the session is resumed (see `expiry`).
//!
//! 3.1.1 clients see none of it: their packets are written without properties.

use std::time::Instant;

use rumqttd::protocol::PublishProperties;

/// The user property carrying the stamp.
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

impl Stamp {
    fn encode(&self) -> String {
        use std::fmt::Write as _;
        // One allocation, sized for the longest stamp: 2 + 16 hex digits + ':' + 20 digits.
        let mut text = String::with_capacity(39);
        text.push(char::from(b'0' + self.qos.min(2)));
        text.push(if self.retain { '1' } else { '0' });
        let _ = write!(text, "{:x}", self.origin);
        if let Some(at) = self.expires_at {
            let _ = write!(text, ":{at}");
        }
        text
    }

    fn decode(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        let qos = bytes.first()?.checked_sub(b'0').filter(|q| *q <= 2)?;
        let retain = match bytes.get(1)? {
            b'0' => false,
            b'1' => true,
            _ => return None,
        };
        let rest = text.get(2..)?;
        let (origin, expires_at) = match rest.split_once(':') {
            Some((origin, at)) => (origin, Some(at.parse().ok()?)),
            None => (rest, None),
        };
        Some(Self {
            qos,
            retain,
            origin: u64::from_str_radix(origin, 16).ok()?,
            expires_at,
        })
    }
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
}

/// Stamps a publish on its way to the router: a client's own stamp is dropped, ours added.
pub(crate) fn stamp(
    properties: Option<PublishProperties>,
    qos: u8,
    retain: bool,
    origin: u64,
    now: u64,
) -> PublishProperties {
    let mut properties = properties.unwrap_or_default();
    properties
        .user_properties
        .retain(|(key, _)| key != STAMP_KEY);
    // The router never sees the interval: it counts it in whole seconds, and takes the time
    // spent off a retained message's stored interval at every read, so a retained message read
    // a few times expires early. The stamp's deadline is the one kept.
    let expires_at = properties
        .message_expiry_interval
        .take()
        .map(|secs| now.saturating_add(u64::from(secs) * 1000));
    let stamp = Stamp {
        qos,
        retain,
        origin,
        expires_at,
    };
    properties
        .user_properties
        .push((STAMP_KEY.to_owned(), stamp.encode()));
    properties
}

/// The compact stamp of a publish from a 3.1.1 client or the gateway itself (see the module
/// documentation): QoS and retain as published, nothing else.
pub(crate) fn compact_stamp(qos: u8, retain: bool) -> PublishProperties {
    compact_stamp_onto(None, qos, retain)
}

/// Whether an MQTT 5 client's publish can carry the compact stamp (its session having no No
/// Local subscription): no expiry to keep, no Payload Format Indicator of its own.
pub(crate) fn fits_compact(properties: Option<&PublishProperties>) -> bool {
    properties
        .is_none_or(|p| p.message_expiry_interval.is_none() && p.payload_format_indicator.is_none())
}

/// The compact stamp on a publish's own properties (a client's copy of the full stamp
/// dropped, so that it cannot pose as ours).
pub(crate) fn compact_stamp_onto(
    properties: Option<PublishProperties>,
    qos: u8,
    retain: bool,
) -> PublishProperties {
    let mut properties = properties.unwrap_or_default();
    if !properties.user_properties.is_empty() {
        properties
            .user_properties
            .retain(|(key, _)| key != STAMP_KEY);
    }
    properties.payload_format_indicator = Some(COMPACT | qos.min(2) << 1 | u8::from(retain));
    properties
}

/// Marks a compact stamp: MQTT 5 allows a Payload Format Indicator of 0 or 1 only.
const COMPACT: u8 = 0x80;

/// Takes the stamp off a publish on its way to a client (the last one: the edge's), or the
/// compact stamp if it has no full one.
pub(crate) fn unstamp(properties: &mut PublishProperties) -> Option<Stamp> {
    let Some(at) = properties
        .user_properties
        .iter()
        .rposition(|(key, _)| key == STAMP_KEY)
    else {
        let compact = properties
            .payload_format_indicator
            .filter(|value| value & COMPACT != 0)?;
        properties.payload_format_indicator = None;
        return Some(Stamp {
            qos: (compact >> 1 & 0b11).min(2),
            retain: compact & 1 != 0,
            origin: 0,
            expires_at: None,
        });
    };
    let (_, text) = properties.user_properties.remove(at);
    Stamp::decode(&text)
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
/// remaining expiry interval set; `retain` made what the subscription asked for.
pub(crate) fn deliver(
    properties: &mut PublishProperties,
    retain: &mut bool,
    session_origin: u64,
    now: u64,
) -> Delivery {
    let stamp = unstamp(properties);
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
        return Delivery::Drop("retain_handling");
    }
    let Some(stamp) = stamp else {
        return Delivery::Send { max_qos: 2 };
    };
    if options.no_local && stamp.origin == session_origin && stamp.origin != 0 {
        return Delivery::Drop("no_local");
    }
    if let Some(at) = stamp.expires_at {
        let left = at.saturating_sub(now);
        if left == 0 {
            return Delivery::Drop("expired");
        }
        // Whole seconds, rounded up: a message is never told it expired before it did.
        properties.message_expiry_interval =
            Some(u32::try_from(left.div_ceil(1000)).unwrap_or(u32::MAX));
    }
    *retain = from_store || (options.retain_as_published && stamp.retain);
    Delivery::Send { max_qos: stamp.qos }
}

/// Whether the properties are empty, so the packet is written without any.
pub(crate) fn is_empty(properties: &PublishProperties) -> bool {
    *properties == PublishProperties::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back_as_written() {
        for stamp in [
            Stamp {
                qos: 0,
                retain: false,
                origin: 0,
                expires_at: None,
            },
            Stamp {
                qos: 2,
                retain: true,
                origin: u64::MAX,
                expires_at: Some(123_456),
            },
        ] {
            assert_eq!(Stamp::decode(&stamp.encode()), Some(stamp));
        }
        assert_eq!(Stamp::decode("3"), None);
        assert_eq!(Stamp::decode("1x0"), None);
        assert_eq!(Stamp::decode(""), None);
    }

    #[test]
    fn a_client_cannot_forge_a_stamp() {
        let forged = PublishProperties {
            user_properties: vec![
                (STAMP_KEY.to_owned(), "00ff".to_owned()),
                ("kept".to_owned(), "yes".to_owned()),
            ],
            ..PublishProperties::default()
        };
        let mut props = stamp(Some(forged), 1, false, 7, 0);
        assert_eq!(
            unstamp(&mut props),
            Some(Stamp {
                qos: 1,
                retain: false,
                origin: 7,
                expires_at: None
            })
        );
        assert_eq!(props.user_properties, vec![("kept".into(), "yes".into())]);
    }

    #[test]
    fn a_compact_stamp_reads_back_and_leaves_nothing_behind() {
        for (qos, retain) in [(0, false), (1, true), (2, false), (2, true)] {
            let mut props = compact_stamp(qos, retain);
            assert_eq!(
                unstamp(&mut props),
                Some(Stamp {
                    qos,
                    retain,
                    origin: 0,
                    expires_at: None
                })
            );
            assert!(is_empty(&props));
        }
        // A client's own indicator, beside the full stamp, is its own: kept as sent.
        let published = PublishProperties {
            payload_format_indicator: Some(0x83),
            ..PublishProperties::default()
        };
        assert!(!fits_compact(Some(&published)));
        let mut props = stamp(Some(published), 1, false, 7, 0);
        assert_eq!(unstamp(&mut props).map(|s| s.origin), Some(7));
        assert_eq!(props.payload_format_indicator, Some(0x83));
        // A client's forged full stamp beside a compact one is dropped on the way in.
        let forged = PublishProperties {
            user_properties: vec![
                (STAMP_KEY.to_owned(), "21ff".to_owned()),
                ("kept".to_owned(), "yes".to_owned()),
            ],
            ..PublishProperties::default()
        };
        assert!(fits_compact(Some(&forged)));
        let mut props = compact_stamp_onto(Some(forged), 0, false);
        assert_eq!(
            unstamp(&mut props).map(|s| (s.qos, s.retain)),
            Some((0, false))
        );
        assert_eq!(props.user_properties, vec![("kept".into(), "yes".into())]);
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
        let stamped = stamp(Some(published), 1, true, 5, 1_000);
        let mut props = stamped.clone();
        let mut retain = false;
        assert_eq!(
            deliver(&mut props, &mut retain, 9, 4_500),
            Delivery::Send { max_qos: 1 }
        );
        assert_eq!(props.message_expiry_interval, Some(7), "6.5 s left: 7");
        assert!(props.user_properties.is_empty());
        assert!(!retain, "not retain-as-published");
        let mut props = stamped;
        assert_eq!(
            deliver(&mut props, &mut retain, 9, 11_000),
            Delivery::Drop("expired")
        );
    }
}
