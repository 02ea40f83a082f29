//! The CONNECT handshake: from the first byte to a [`Session`], or a [`Refusal`].
//!
//! Nothing here is unbounded: the CONNECT is read whole within `connect_timeout` and is never
//! buffered past `max_connect_size` (a larger one is refused when its fixed header says so);
//! the connection holds an unauthenticated ticket meanwhile (see `admission`); a password
//! check waits for its turn only while its client is still there. Refusals answer with the
//! code of the client's own protocol: 3.1.1 has no code for a malformed or too large CONNECT,
//! so those connections are closed without a CONNACK.

use std::sync::Arc;
use std::time::Duration;

use crate::config::ListenerTls;
use bytes::BytesMut;
use fieldlink_core::config::MqttVersion;
use fieldlink_core::message::{Message, QoS};
use fieldlink_core::topic::TopicName;
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectReturnCode, LastWill, LastWillProperties, Login, Packet,
    PublishProperties,
};
use tokio::io::AsyncWriteExt as _;

use super::codec::{self, Codec, ConnectPeek, FrameError};
use super::session::{Peer, Session, read_bounded};
use super::{EdgeContext, Stream, metric};
use crate::access::{Identity, PasswordCheck};

/// How long a refusal's CONNACK may take to write: a client that does not read it is not
/// waited for.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a connection was not admitted, and what the client is told.
#[derive(Debug)]
pub(crate) struct Refusal {
    /// The protocol to answer in and the reason; `None`: closed without a CONNACK.
    reply: Option<(Codec, Reason)>,
    /// The `reason` label of the refused-connections counter.
    why: &'static str,
}

/// Why a CONNECT is refused, independent of the protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    BadCredentials,
    Busy,
    ClientId,
    Malformed,
    NotAuthorized,
    Protocol,
    TooLarge,
    Unavailable,
}

impl Reason {
    /// The CONNACK code for `codec`; `None` where the protocol has none (3.1.1 knows six).
    pub(crate) fn code(self, codec: Codec) -> Option<ConnectReturnCode> {
        use ConnectReturnCode as C;
        Some(match (codec, self) {
            (_, Self::BadCredentials) => C::BadUserNamePassword,
            (_, Self::ClientId) => C::ClientIdentifierNotValid,
            (_, Self::NotAuthorized) => C::NotAuthorized,
            (Codec::V4, Self::Busy | Self::Unavailable) => C::ServiceUnavailable,
            (Codec::V4, Self::Protocol) => C::RefusedProtocolVersion,
            (Codec::V4, Self::Malformed | Self::TooLarge) => return None,
            (Codec::V5, Self::Busy) => C::ServerBusy,
            (Codec::V5, Self::Malformed) => C::MalformedPacket,
            (Codec::V5, Self::Protocol) => C::UnsupportedProtocolVersion,
            (Codec::V5, Self::TooLarge) => C::PacketTooLarge,
            (Codec::V5, Self::Unavailable) => C::ServerUnavailable,
        })
    }
}

impl Refusal {
    /// Closed without a word (not MQTT, gone, too slow).
    pub(crate) fn quiet(why: &'static str) -> Self {
        Self { reply: None, why }
    }

    fn answer(codec: Codec, reason: Reason, why: &'static str) -> Self {
        Self {
            reply: Some((codec, reason)),
            why,
        }
    }

    /// Counts the refusal, sends its CONNACK (if the protocol has a code for it) and closes.
    pub(crate) async fn send(self, io: &mut Box<dyn Stream>) {
        metrics::counter!(metric::REFUSED_TOTAL, "reason" => self.why).increment(1);
        let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
            if let Some((codec, reason)) = self.reply
                && let Some(code) = reason.code(codec)
            {
                let mut out = BytesMut::new();
                let ack = ConnAck {
                    session_present: false,
                    code,
                };
                if codec.write(Packet::ConnAck(ack, None), &mut out).is_ok() {
                    let _ = io.write_all(&out).await;
                    let _ = io.flush().await;
                }
            }
            let _ = io.shutdown().await;
        })
        .await;
    }
}

/// How a client proved who it is. Sessions of different kinds never meet, even with equal
/// names: a username `dev-a` is not the certificate `dev-a`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proof {
    Anonymous,
    Certificate,
    Password,
    Psk,
}

/// The router's name for a session: the identity (how it was proven, and its name) and the
/// client id. Only the same identity can resume or take over a session; the name's length
/// makes the key unambiguous whatever characters the name and client id hold.
pub(crate) fn session_key(proof: &str, name: &str, client_id: &str) -> String {
    format!("{proof}:{}:{name}:{client_id}", name.len())
}

/// Reads and checks CONNECT, opens the router link and sends the CONNACK.
pub(crate) async fn connect(
    io: &mut Box<dyn Stream>,
    buf: &mut BytesMut,
    peer: &Peer,
    ctx: &Arc<EdgeContext>,
) -> Result<Session, Refusal> {
    // The whole CONNECT, however slowly it trickles in, within the timeout.
    let (codec, packet) =
        tokio::time::timeout(ctx.connect_timeout, read_connect(io, buf, peer, ctx))
            .await
            .map_err(|_| Refusal::quiet("connect_timeout"))??;
    let Packet::Connect(connect, props, will, will_props, login) = packet else {
        return Err(Refusal::quiet("first packet not CONNECT"));
    };

    // Who is it? (A changed credentials file is read again first: one stat.)
    if let Err(e) = ctx.access.maybe_reload() {
        tracing::warn!(error = %e, "The credentials file changed but cannot be used; the previous users stay");
    }
    let (identity, proof) = match (&peer.identity, login) {
        (Some(name), _) => {
            let proof = match peer.listener.tls {
                ListenerTls::Psk { .. } => Proof::Psk,
                _ => Proof::Certificate,
            };
            (ctx.access.identity_for(name), proof)
        }
        (None, Some(login)) => (
            tokio::time::timeout(
                ctx.connect_timeout,
                check_password(io, buf, peer, ctx, codec, login),
            )
            .await
            .map_err(|_| Refusal::quiet("login_timeout"))??,
            Proof::Password,
        ),
        (None, None) if peer.listener.anonymous => (Identity::anonymous(), Proof::Anonymous),
        (None, None) => {
            tracing::info!(listener = %peer.listener.name, addr = %peer.addr, "Refused: no credentials");
            return Err(Refusal::answer(codec, Reason::NotAuthorized, "anonymous"));
        }
    };

    // Which client id, and may this identity use it?
    let client_id = if connect.client_id.is_empty() {
        if !connect.clean_session {
            return Err(Refusal::answer(codec, Reason::ClientId, "client_id"));
        }
        if identity.anonymous {
            format!("fieldlink-auto-{}", ctx.next_auto_id())
        } else {
            identity.name.clone()
        }
    } else {
        connect.client_id.clone()
    };
    // MQTT 5: a client that sent no id is told the one it got.
    let assigned = connect.client_id.is_empty().then(|| client_id.clone());
    if client_id.starts_with(crate::INTERNAL_CLIENT_PREFIX) {
        tracing::warn!(listener = %peer.listener.name, addr = %peer.addr, %client_id, "Refused: a client id reserved for the gateway's own links");
        return Err(Refusal::answer(codec, Reason::ClientId, "client_id"));
    }
    let rule = peer.listener.client_id;
    if !identity.anonymous && !bound(&identity.name, &client_id, rule) {
        tracing::warn!(listener = %peer.listener.name, addr = %peer.addr, %client_id, "Refused: client id belongs to another identity");
        return Err(Refusal::answer(codec, Reason::ClientId, "client_id"));
    }

    // What this session may do, resolved once. `%c` stands for the client id only where the
    // edge bound it to the identity: anyone may choose any id otherwise, and would get the
    // rights of the device of that name.
    let bound_id = !identity.anonymous && rule != crate::config::ClientIdRule::Any;
    let acl = ctx
        .access
        .for_session(&identity, if bound_id { &client_id } else { "" });

    // A will is a publish like any other: checked now, sent by us if the connection is lost.
    let will = match will {
        None => None,
        Some(will) => match will_message(will) {
            Some(message) if acl.may_publish(&message.topic) => Some(message),
            _ => {
                metrics::counter!(metric::ACL_DENIED_TOTAL, "action" => "will").increment(1);
                return Err(Refusal::answer(codec, Reason::NotAuthorized, "will_acl"));
            }
        },
    };

    // MQTT 5: the will waits for the smaller of its delay and the session expiry, and is
    // dropped if the client comes back first.
    let client_max_packet = props.as_ref().and_then(|p| p.max_packet_size);
    let asked_expiry = props
        .as_ref()
        .and_then(|p| p.session_expiry_interval)
        .unwrap_or(0);
    // MQTT 5: the session's life after the connection, kept by the edge (see `expiry`).
    let session_expiry = match codec {
        Codec::V5 => Some(super::expiry::granted(asked_expiry, &ctx.session_limits)),
        Codec::V4 => None,
    };
    let client_receive_max = props.as_ref().and_then(|p| p.receive_maximum);
    // MQTT 5: server topic aliases, if the client takes any (see `alias`).
    let client_topic_alias_max = props.as_ref().and_then(|p| p.topic_alias_max);
    let will_delay = Duration::from_secs(u64::from(
        will_props
            .as_ref()
            .and_then(|p| p.delay_interval)
            .unwrap_or(0)
            .min(props.and_then(|p| p.session_expiry_interval).unwrap_or(0)),
    ));
    // MQTT 5: the will's properties reach its subscribers as a publish's would.
    let will_properties = match codec {
        Codec::V5 if will.is_some() => Some(will_publish_properties(will_props)),
        _ => None,
    };
    let proof_name = match proof {
        Proof::Anonymous => "anonymous",
        Proof::Certificate => "certificate",
        Proof::Password => "password",
        Proof::Psk => "psk",
    };
    let key = session_key(proof_name, &identity.name, &client_id);
    let Ok(permit) = ctx.connections.clone().try_acquire_owned() else {
        return Err(Refusal::answer(codec, Reason::Busy, "max_connections"));
    };
    // Back (and admitted: a refused reconnect leaves its will waiting and its stored session
    // counting down).
    ctx.returned(&key);
    let conn = ctx.session_resumed(&key).await;

    let links = ctx.links.clone();
    let (link_key, clean) = (key.clone(), connect.clean_session);
    // MQTT 5, Clean Start with a Session Expiry: a new session that outlives the connection.
    // The router keeps only sessions opened without a clean start, so any old one is ended
    // first (a clean link under the name, which the persistent one then takes over).
    let fresh_but_kept = clean && session_expiry.is_some_and(|secs| secs > 0);
    let built = tokio::task::spawn_blocking(move || {
        if fresh_but_kept {
            let (_tx, _rx, _) = links(&link_key, true)?;
            links(&link_key, false)
        } else {
            links(&link_key, clean)
        }
    })
    .await;
    let Ok(Ok((link_tx, link_rx, connack))) = built else {
        ctx.connection_ended(&key, conn);
        return Err(Refusal::answer(codec, Reason::Unavailable, "router"));
    };
    let mut out = BytesMut::new();
    // MQTT 5: a keep-alive longer than the broker's maximum, or none, is replaced by the
    // maximum, and the client is told so (Server Keep Alive). 3.1.1 has no way to tell it.
    let (keep_alive, server_keep_alive) = match codec {
        Codec::V5 if connect.keep_alive == 0 || connect.keep_alive > ctx.max_keep_alive => {
            (ctx.max_keep_alive, Some(ctx.max_keep_alive))
        }
        _ => (connect.keep_alive, None),
    };
    let connack: Option<Packet> = connack.into();
    let session_present = matches!(&connack, Some(Packet::ConnAck(ack, _)) if ack.session_present);
    let connack = connack.map(|packet| match (codec, packet) {
        (Codec::V5, Packet::ConnAck(mut ack, props)) => {
            let mut props = announce(props, ctx, assigned, server_keep_alive);
            // A shortened interval is announced.
            props.session_expiry_interval = session_expiry.filter(|secs| *secs != asked_expiry);
            // A clean start has no session present (the persistent link took over the clean
            // one, which left nothing).
            ack.session_present &= !clean;
            Packet::ConnAck(ack, Some(props))
        }
        (_, packet) => packet,
    });
    // (Not served after all: no longer the session's holder.)
    let Some(connack) = connack else {
        ctx.connection_ended(&key, conn);
        return Err(Refusal::quiet("router"));
    };
    if codec.write(connack, &mut out).is_err() {
        ctx.connection_ended(&key, conn);
        return Err(Refusal::quiet("router"));
    }
    match tokio::time::timeout(ctx.write_timeout, io.write_all(&out)).await {
        Ok(Ok(())) => {}
        _ => {
            ctx.connection_ended(&key, conn);
            return Err(Refusal::quiet("connack_write"));
        }
    }
    let keep_alive = match keep_alive {
        // A client that asks for no keep-alive still goes after ten silent minutes, so an
        // idle socket cannot hold a connection slot for ever.
        0 => IDLE_WITHOUT_KEEP_ALIVE,
        // 1.5 × the keep-alive, as MQTT says.
        k => Duration::from_millis(u64::from(k) * 1500),
    };
    let identity_key = identity_key(proof_name, &identity.name);
    Ok(Session::new(super::session::Admitted {
        codec,
        client_id,
        key,
        identity_key,
        acl,
        keep_alive,
        will,
        will_delay,
        will_properties,
        link_tx,
        link_rx,
        ctx: ctx.clone(),
        permit,
        persistent: (!clean && session_expiry.is_none_or(|secs| secs > 0)) || fresh_but_kept,
        session_present: session_present && !clean,
        session_expiry: session_expiry.map(|secs| Duration::from_secs(u64::from(secs))),
        client_max_packet,
        client_receive_max,
        client_topic_alias_max,
        conn,
    }))
}

/// How long a client that disabled keep-alive may stay silent.
const IDLE_WITHOUT_KEEP_ALIVE: Duration = Duration::from_secs(600);

/// Whose quotas a session's subscriptions count against: the identity, or for an anonymous
/// client (whose id nobody vouches for) all anonymous clients together.
fn identity_key(proof: &str, name: &str) -> String {
    format!("{proof}:{name}")
}

/// Reads the CONNECT frame: exactly its bytes, never more than `max_connect_size`.
async fn read_connect(
    io: &mut Box<dyn Stream>,
    buf: &mut BytesMut,
    peer: &Peer,
    ctx: &EdgeContext,
) -> Result<(Codec, Packet), Refusal> {
    let limit = ctx.max_connect_size;
    let level = loop {
        let want = match codec::peek_connect(buf) {
            ConnectPeek::NotConnect => return Err(Refusal::quiet("not an MQTT CONNECT")),
            ConnectPeek::Malformed => return Err(Refusal::quiet("malformed")),
            // Enough for the fixed header and the protocol level.
            ConnectPeek::Incomplete => PEEK_LEN,
            ConnectPeek::Header { frame_len, level } if frame_len > limit => {
                match level.and_then(codec_for) {
                    // Read on to the level, to refuse in the client's own protocol.
                    None if level.is_none() && buf.len() < PEEK_LEN => PEEK_LEN,
                    None => return Err(Refusal::quiet("too_large")),
                    Some(codec) => {
                        return Err(Refusal::answer(codec, Reason::TooLarge, "too_large"));
                    }
                }
            }
            ConnectPeek::Header { frame_len, level } if buf.len() >= frame_len => break level,
            // Exactly the rest of the frame, no further.
            ConnectPeek::Header { frame_len, .. } => frame_len,
        };
        match read_bounded(io, buf, want).await {
            Ok(0) | Err(_) => return Err(Refusal::quiet("closed_before_connect")),
            Ok(_) => {}
        }
    };
    let codec = match level.and_then(codec_for) {
        Some(codec) => codec,
        None if level.is_none() => return Err(Refusal::quiet("malformed")),
        None => return Err(Refusal::answer(Codec::V4, Reason::Protocol, "protocol")),
    };
    if peer
        .listener
        .mqtt
        .is_some_and(|v| (v == MqttVersion::V5) != (codec == Codec::V5))
    {
        return Err(Refusal::answer(codec, Reason::Protocol, "protocol"));
    }
    match codec.read(buf, ctx.max_packet_size) {
        Ok(packet) => Ok((codec, packet)),
        // The frame is complete: "incomplete" means its contents lie about their lengths.
        Err(FrameError::Incomplete) => Err(Refusal::answer(codec, Reason::Malformed, "malformed")),
        Err(FrameError::TooLarge) => Err(Refusal::answer(codec, Reason::TooLarge, "too_large")),
        Err(FrameError::Malformed(why)) => {
            tracing::debug!(addr = %peer.addr, %why, "Malformed CONNECT");
            Err(Refusal::answer(codec, Reason::Malformed, "malformed"))
        }
    }
}

/// Bytes read before the CONNECT's length and level are known: its fixed header (five bytes at
/// most) and a protocol name of four.
const PEEK_LEN: usize = 12;

fn codec_for(level: u8) -> Option<Codec> {
    match level {
        4 => Some(Codec::V4),
        5 => Some(Codec::V5),
        _ => None,
    }
}

/// Checks a password when the client's address has a turn, for as long as the client is
/// there: a client that leaves takes its place in the queue with it.
async fn check_password(
    io: &mut Box<dyn Stream>,
    buf: &mut BytesMut,
    peer: &Peer,
    ctx: &EdgeContext,
    codec: Codec,
    login: Login,
) -> Result<Identity, Refusal> {
    let Some(_turn) = ctx.logins.take(peer.addr.ip()) else {
        tracing::info!(listener = %peer.listener.name, addr = %peer.addr, "Refused: too many logins waiting");
        return Err(Refusal::answer(codec, Reason::Busy, "login_busy"));
    };
    let check = ctx
        .access
        .check_password(&login.username, login.password.as_bytes());
    let mut check = std::pin::pin!(check);
    loop {
        tokio::select! {
            result = &mut check => return match result {
                PasswordCheck::Ok(identity) => Ok(identity),
                PasswordCheck::UnknownUser | PasswordCheck::BadPassword => {
                    tracing::info!(listener = %peer.listener.name, addr = %peer.addr, "Refused: wrong username or password");
                    Err(Refusal::answer(codec, Reason::BadCredentials, "bad_credentials"))
                }
            },
            // Bytes after the CONNECT are kept for the session (within the connect cap);
            // the end of the stream means the client left.
            read = read_bounded(io, buf, ctx.max_connect_size) => match read {
                Ok(0) | Err(_) => return Err(Refusal::quiet("left_during_login")),
                Ok(_) => {}
            },
        }
    }
}

/// What an MQTT 5 CONNACK tells the client about this broker: the id it was given, the largest
/// packet accepted, how many QoS 1/2 publishes it may have unacknowledged (flow control),
/// that it offers no topic aliases, and the keep-alive it was given instead of its own.
fn announce(
    props: Option<ConnAckProperties>,
    ctx: &EdgeContext,
    assigned: Option<String>,
    server_keep_alive: Option<u16>,
) -> ConnAckProperties {
    let mut props = props.unwrap_or_default();
    props.server_keep_alive = server_keep_alive;
    props.assigned_client_identifier = assigned;
    props.max_packet_size = u32::try_from(ctx.max_packet_size).ok();
    props.receive_max = Some(ctx.max_inflight);
    props.topic_alias_max = Some(0);
    props
}

/// Whether `identity` may use `client_id` under `rule`.
fn bound(identity: &str, client_id: &str, rule: crate::config::ClientIdRule) -> bool {
    use crate::config::ClientIdRule;
    match rule {
        ClientIdRule::Equal => client_id == identity,
        ClientIdRule::Prefix => {
            client_id == identity
                || client_id
                    .strip_prefix(identity)
                    .is_some_and(|rest| rest.starts_with(':'))
        }
        ClientIdRule::Any => true,
    }
}

/// An MQTT 5 will's properties as its publish carries them (the delay is the edge's).
fn will_publish_properties(will: Option<LastWillProperties>) -> PublishProperties {
    let will = will.unwrap_or(LastWillProperties {
        delay_interval: None,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    });
    PublishProperties {
        payload_format_indicator: will.payload_format_indicator,
        message_expiry_interval: will.message_expiry_interval,
        content_type: will.content_type,
        response_topic: will.response_topic,
        correlation_data: will.correlation_data,
        user_properties: will.user_properties,
        ..PublishProperties::default()
    }
}

fn will_message(will: LastWill) -> Option<Message> {
    let topic = TopicName::new(std::str::from_utf8(&will.topic).ok()?).ok()?;
    Some(Message {
        topic,
        payload: will.message.to_vec(),
        qos: QoS::from_u8(will.qos as u8).unwrap_or(QoS::AtMostOnce),
        retain: will.retain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientIdRule;

    #[test]
    fn client_ids_are_bound_to_identities() {
        assert!(bound("dev-a", "dev-a", ClientIdRule::Equal));
        assert!(!bound("dev-a", "dev-b", ClientIdRule::Equal));
        assert!(!bound("dev-a", "dev-a:1", ClientIdRule::Equal));
        assert!(bound("dev-a", "dev-a:1", ClientIdRule::Prefix));
        assert!(bound("dev-a", "dev-a", ClientIdRule::Prefix));
        assert!(
            !bound("dev-a", "dev-ab", ClientIdRule::Prefix),
            "a longer name is not a prefix"
        );
        assert!(bound("dev-a", "anything", ClientIdRule::Any));
    }

    #[test]
    fn every_refusal_can_be_written_in_both_protocols() {
        use Reason::*;
        for reason in [
            BadCredentials,
            Busy,
            ClientId,
            Malformed,
            NotAuthorized,
            Protocol,
            TooLarge,
            Unavailable,
        ] {
            for codec in [Codec::V4, Codec::V5] {
                if let Some(code) = reason.code(codec) {
                    let mut out = BytesMut::new();
                    let ack = ConnAck {
                        session_present: false,
                        code,
                    };
                    codec
                        .write(Packet::ConnAck(ack, None), &mut out)
                        .unwrap_or_else(|e| panic!("{reason:?} in {codec:?}: {e}"));
                }
            }
        }
        assert_eq!(Malformed.code(Codec::V4), None);
        assert_eq!(TooLarge.code(Codec::V4), None);
    }

    #[test]
    fn session_keys_keep_identities_apart() {
        assert_ne!(
            session_key("anonymous", "", "dev-a"),
            session_key("certificate", "dev-a", "dev-a")
        );
        assert_ne!(
            session_key("password", "dev-a", "dev-a"),
            session_key("certificate", "dev-a", "dev-a")
        );
        // A name with the separator in it cannot pose as another name.
        assert_ne!(
            session_key("password", "a:1", "b"),
            session_key("password", "a", "1:b")
        );
    }
}
