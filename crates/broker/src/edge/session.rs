//! One client connection, from CONNECT to its end.
//!
//! The edge reads and checks what the client sends, then hands it to rumqttd's router through
//! an in-process link; what the router sends back goes to the client as it is. The checks:
//! authentication and the client id's binding to the identity (CONNACK with the right code on
//! refusal), the will's and every publish's topic against the ACLs, every subscription filter
//! (denied ones answered in the SUBACK, allowed ones subscribed), the packet size and the
//! message rate. A publish reaches the router, and so its PUBACK the client, only once ingress
//! has made it durable when a route takes it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use fieldlink_core::message::{Message, QoS};
use fieldlink_core::topic::{TopicFilter, TopicName};
use rumqttd::Notification;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, LastWill,
    Packet, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, SubAck, Subscribe,
    SubscribeReasonCode,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::codec::{self, Codec, FrameError};
use super::{EdgeContext, Stream, metric};
use crate::access::{Identity, PasswordCheck, SessionAcl};
use crate::config::{ClientIdRule, ListenerSettings};

/// How long a client that disabled keep-alive may stay silent.
const IDLE_WITHOUT_KEEP_ALIVE: Duration = Duration::from_secs(600);

/// Who is at the other end, as far as the transport knows.
pub(crate) struct Peer {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) listener: Arc<ListenerSettings>,
    /// The name from the client certificate or the PSK identity.
    pub(crate) identity: Option<String>,
}

/// Serves one connection until it ends.
pub(crate) async fn serve(mut io: Box<dyn Stream>, peer: Peer, ctx: Arc<EdgeContext>) {
    let mut buf = BytesMut::with_capacity(4096);
    let Some(session) = connect(&mut io, &mut buf, &peer, &ctx).await else {
        return;
    };
    let client_id = session.client_id.clone();
    tracing::debug!(listener = %peer.listener.name, %client_id, addr = %peer.addr, "Client connected");
    metrics::gauge!(metric::CONNECTIONS).increment(1.0);
    metrics::counter!(metric::CONNECTIONS_TOTAL, "listener" => peer.listener.name.clone())
        .increment(1);
    let end = session.run(io, buf).await;
    metrics::gauge!(metric::CONNECTIONS).decrement(1.0);
    tracing::debug!(%client_id, ?end, "Client gone");
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    /// The client said DISCONNECT.
    Graceful,
    /// The connection broke, timed out or misbehaved: the will is published.
    Lost(String),
    /// The gateway is stopping.
    Shutdown,
    /// The router ended the session (another connection took the client id over, or it refused
    /// what the client sent); it needs no DISCONNECT from us. The will is published.
    RouterEnded(String),
}

struct Session {
    codec: Codec,
    client_id: String,
    acl: SessionAcl,
    keep_alive: Duration,
    will: Option<Message>,
    will_delay: Duration,
    link_tx: LinkTx,
    link_rx: LinkRx,
    ctx: Arc<EdgeContext>,
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// QoS 2 publishes refused by the ACL: their PUBREL is answered here.
    denied_qos2: HashSet<u16>,
    /// SUBSCRIBEs sent to the router with some filters held back: the codes to put back.
    held_back: HashMap<u16, Vec<Option<SubscribeReasonCode>>>,
    rate: RateLimit,
    /// Publishes written to the client since the metric was last updated.
    delivered: u64,
}

async fn read_more(io: &mut Box<dyn Stream>, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    io.read_buf(buf).await
}

/// What one read brought: the publishes to make durable, then everything for the router.
struct Batch {
    to_store: Vec<Message>,
    to_router: Vec<Packet>,
    /// `false` once the client sent DISCONNECT.
    open: bool,
}

type Stored = Result<(), fieldlink_core::ports::IngressError>;

/// A batch waiting for its publishes to be durable.
struct Storing {
    durable: std::pin::Pin<Box<dyn std::future::Future<Output = Stored> + Send>>,
    /// Its outcome, once known (a later batch may be durable before the front one is seen).
    done: Option<Stored>,
    batch: Batch,
}

/// Resolves when the oldest batch being stored is durable (or refused); never while none is.
///
/// Every batch's store is polled, oldest first, each time: their appends reach the queue in
/// the order the client sent them (the queue's channel grants room in request order), so
/// per-stream order holds, and they all join the same commit.
async fn durable(storing: &mut VecDeque<Storing>) -> Stored {
    std::future::poll_fn(|cx| {
        for batch in storing.iter_mut() {
            if batch.done.is_none()
                && let std::task::Poll::Ready(stored) = batch.durable.as_mut().poll(cx)
            {
                batch.done = Some(stored);
            }
        }
        match storing.front_mut().and_then(|front| front.done.take()) {
            Some(stored) => std::task::Poll::Ready(stored),
            None => std::task::Poll::Pending,
        }
    })
    .await
}

/// Batches one session may have waiting for durability: bounds what a client that publishes
/// faster than the disk commits can make the gateway hold (its socket then fills, and TCP
/// slows it down).
const MAX_BATCHES_STORING: usize = 16;

/// Reads and checks CONNECT; answers a refusal itself. `None`: the connection is over.
async fn connect(
    io: &mut Box<dyn Stream>,
    buf: &mut BytesMut,
    peer: &Peer,
    ctx: &Arc<EdgeContext>,
) -> Option<Session> {
    let read = async {
        loop {
            if let Some(level) = codec::connect_level(buf) {
                return Some(level);
            }
            if buf.first().is_some_and(|b| b >> 4 != 1) {
                return None;
            }
            match read_more(io, buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    };
    let level = match tokio::time::timeout(ctx.connect_timeout, read).await {
        Ok(Some(level)) => level,
        Ok(None) => return refused_quietly("not an MQTT CONNECT"),
        Err(_) => return refused_quietly("no CONNECT in time"),
    };
    let codec = match level {
        4 => Codec::V4,
        5 => Codec::V5,
        _ => {
            refuse(
                io,
                Codec::V4,
                ConnectReturnCode::RefusedProtocolVersion,
                "protocol",
            )
            .await;
            return None;
        }
    };
    if peer
        .listener
        .mqtt
        .is_some_and(|v| (v == fieldlink_core::config::MqttVersion::V5) != (codec == Codec::V5))
    {
        let code = match codec {
            Codec::V4 => ConnectReturnCode::RefusedProtocolVersion,
            Codec::V5 => ConnectReturnCode::UnsupportedProtocolVersion,
        };
        refuse(io, codec, code, "protocol").await;
        return None;
    }
    let packet = loop {
        match codec.read(buf, ctx.max_packet_size) {
            Ok(packet) => break packet,
            Err(FrameError::Incomplete) => match read_more(io, buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            },
            Err(FrameError::TooLarge) => {
                refuse(io, codec, ConnectReturnCode::PacketTooLarge, "too_large").await;
                return None;
            }
            Err(FrameError::Malformed(why)) => {
                tracing::debug!(addr = %peer.addr, %why, "Malformed CONNECT");
                refuse(io, codec, ConnectReturnCode::MalformedPacket, "malformed").await;
                return None;
            }
        }
    };
    let Packet::Connect(connect, props, will, will_props, login) = packet else {
        return refused_quietly("first packet not CONNECT");
    };

    // Who is it? (A changed credentials file is read again first: one stat.)
    if let Err(e) = ctx.access.maybe_reload() {
        tracing::warn!(error = %e, "The credentials file changed but cannot be used; the previous users stay");
    }
    let identity = match (&peer.identity, login) {
        (Some(name), _) => ctx.access.identity_for(name),
        (None, Some(login)) => {
            match ctx
                .access
                .check_password(&login.username, login.password.as_bytes())
                .await
            {
                PasswordCheck::Ok(identity) => identity,
                PasswordCheck::UnknownUser | PasswordCheck::BadPassword => {
                    tracing::info!(listener = %peer.listener.name, addr = %peer.addr, "Refused: wrong username or password");
                    refuse(
                        io,
                        codec,
                        ConnectReturnCode::BadUserNamePassword,
                        "bad_credentials",
                    )
                    .await;
                    return None;
                }
            }
        }
        (None, None) if peer.listener.anonymous => Identity::anonymous(),
        (None, None) => {
            tracing::info!(listener = %peer.listener.name, addr = %peer.addr, "Refused: no credentials");
            refuse(io, codec, ConnectReturnCode::NotAuthorized, "anonymous").await;
            return None;
        }
    };

    // Which client id, and may this identity use it?
    let client_id = if connect.client_id.is_empty() {
        if !connect.clean_session {
            refuse(
                io,
                codec,
                ConnectReturnCode::ClientIdentifierNotValid,
                "client_id",
            )
            .await;
            return None;
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
        refuse(
            io,
            codec,
            ConnectReturnCode::ClientIdentifierNotValid,
            "client_id",
        )
        .await;
        return None;
    }
    if !identity.anonymous && !bound(&identity.name, &client_id, peer.listener.client_id) {
        tracing::warn!(listener = %peer.listener.name, addr = %peer.addr, %client_id, "Refused: client id belongs to another identity");
        refuse(
            io,
            codec,
            ConnectReturnCode::ClientIdentifierNotValid,
            "client_id",
        )
        .await;
        return None;
    }

    // What this session may do, resolved once: identity and client id are fixed from here on.
    let acl = ctx.access.for_session(&identity, &client_id);

    // A will is a publish like any other: checked now, sent by us if the connection is lost.
    let will = match will {
        None => None,
        Some(will) => match will_message(will) {
            Some(message) if acl.may_publish(&message.topic) => Some(message),
            _ => {
                metrics::counter!(metric::ACL_DENIED_TOTAL, "action" => "will").increment(1);
                refuse(io, codec, ConnectReturnCode::NotAuthorized, "will_acl").await;
                return None;
            }
        },
    };

    // MQTT 5: the will waits for the smaller of its delay and the session expiry, and is
    // dropped if the client comes back first.
    let will_delay = Duration::from_secs(u64::from(
        will_props
            .and_then(|p| p.delay_interval)
            .unwrap_or(0)
            .min(props.and_then(|p| p.session_expiry_interval).unwrap_or(0)),
    ));
    ctx.returned(&client_id);

    let Ok(permit) = ctx.connections.clone().try_acquire_owned() else {
        let code = match codec {
            Codec::V4 => ConnectReturnCode::ServiceUnavailable,
            Codec::V5 => ConnectReturnCode::ServerBusy,
        };
        refuse(io, codec, code, "max_connections").await;
        return None;
    };

    let links = ctx.links.clone();
    let (id, clean) = (client_id.clone(), connect.clean_session);
    let built = tokio::task::spawn_blocking(move || links(&id, clean)).await;
    let (link_tx, link_rx, connack) = match built {
        Ok(Ok(link)) => link,
        _ => {
            refuse(io, codec, ConnectReturnCode::ServiceUnavailable, "router").await;
            return None;
        }
    };
    let mut out = BytesMut::new();
    let connack: Option<Packet> = connack.into();
    let connack = connack.map(|packet| match (codec, packet) {
        (Codec::V5, Packet::ConnAck(ack, props)) => {
            Packet::ConnAck(ack, Some(announce(props, ctx, assigned)))
        }
        (_, packet) => packet,
    });
    if let Some(connack) = connack
        && codec.write(connack, &mut out).is_ok()
        && io.write_all(&out).await.is_ok()
    {
        // 1.5 × the keep-alive, as MQTT says; a client that asks for none (0) still goes
        // after ten silent minutes, so an idle socket cannot hold a connection slot for ever.
        let keep_alive = match connect.keep_alive {
            0 => IDLE_WITHOUT_KEEP_ALIVE,
            k => Duration::from_millis(u64::from(k) * 1500),
        };
        return Some(Session {
            codec,
            client_id,
            acl,
            keep_alive,
            will,
            will_delay,
            link_tx,
            link_rx,
            ctx: ctx.clone(),
            _permit: permit,
            denied_qos2: HashSet::new(),
            held_back: HashMap::new(),
            rate: RateLimit::new(ctx.max_message_rate),
            delivered: 0,
        });
    }
    None
}

/// What an MQTT 5 CONNACK tells the client about this broker: the id it was given, the largest
/// packet accepted, how many QoS 1/2 publishes it may have unacknowledged (flow control), and
/// that it offers no topic aliases.
fn announce(
    props: Option<ConnAckProperties>,
    ctx: &EdgeContext,
    assigned: Option<String>,
) -> ConnAckProperties {
    let mut props = props.unwrap_or_default();
    props.assigned_client_identifier = assigned;
    props.max_packet_size = u32::try_from(ctx.max_packet_size).ok();
    props.receive_max = Some(ctx.max_inflight);
    props.topic_alias_max = Some(0);
    props
}

fn refused_quietly<T>(why: &'static str) -> Option<T> {
    metrics::counter!(metric::REFUSED_TOTAL, "reason" => why).increment(1);
    None
}

/// Answers CONNECT with a refusal and counts it.
async fn refuse(
    io: &mut Box<dyn Stream>,
    codec: Codec,
    code: ConnectReturnCode,
    why: &'static str,
) {
    metrics::counter!(metric::REFUSED_TOTAL, "reason" => why).increment(1);
    let mut out = BytesMut::new();
    let ack = ConnAck {
        session_present: false,
        code,
    };
    if codec.write(Packet::ConnAck(ack, None), &mut out).is_ok() {
        let _ = io.write_all(&out).await;
        let _ = io.flush().await;
    }
    let _ = io.shutdown().await;
}

/// Whether `identity` may use `client_id` under `rule`.
fn bound(identity: &str, client_id: &str, rule: ClientIdRule) -> bool {
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

fn will_message(will: LastWill) -> Option<Message> {
    let topic = TopicName::new(std::str::from_utf8(&will.topic).ok()?).ok()?;
    Some(Message {
        topic,
        payload: will.message.to_vec(),
        qos: QoS::from_u8(will.qos as u8).unwrap_or(QoS::AtMostOnce),
        retain: will.retain,
    })
}

impl Session {
    async fn run(mut self, mut io: Box<dyn Stream>, mut buf: BytesMut) -> End {
        let end = self.pump(&mut io, &mut buf).await;
        match &end {
            End::Lost(why) => tracing::debug!(client_id = %self.client_id, %why, "Connection lost"),
            End::RouterEnded(why) => {
                tracing::debug!(client_id = %self.client_id, %why, "Session ended by the router");
            }
            End::Graceful | End::Shutdown => {}
        }
        if matches!(end, End::Lost(_) | End::RouterEnded(_))
            && let Some(will) = self.will.take()
        {
            self.ctx
                .publish_will(self.client_id.clone(), will, self.will_delay);
        }
        if matches!(end, End::Lost(_) | End::Shutdown) {
            // The router learns of the end from a DISCONNECT; a lost session keeps its state
            // when the client asked for a persistent one.
            let bye = Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            };
            let _ = self.link_tx.send(Packet::Disconnect(bye, None)).await;
        }
        if matches!(end, End::Shutdown) && self.codec == Codec::V5 {
            let mut out = BytesMut::new();
            let bye = Disconnect {
                reason_code: DisconnectReasonCode::ServerShuttingDown,
            };
            if self
                .codec
                .write(Packet::Disconnect(bye, None), &mut out)
                .is_ok()
            {
                let _ = io.write_all(&out).await;
            }
        }
        let _ = io.shutdown().await;
        end
    }

    async fn pump(&mut self, io: &mut Box<dyn Stream>, buf: &mut BytesMut) -> End {
        let mut out = BytesMut::with_capacity(4096);
        let mut last_heard = Instant::now();
        // Batches whose routed publishes are being made durable, oldest first. Reading goes
        // on meanwhile (the queue commits every `commit_interval`: the batches read in the
        // meantime join the same commit), and what the router sends still goes out; each
        // batch reaches the router only after every batch before it, so order is kept.
        let mut storing: VecDeque<Storing> = VecDeque::new();
        loop {
            let deadline = tokio::time::Instant::from_std(last_heard + self.keep_alive);
            tokio::select! {
                read = read_more(io, buf), if storing.len() < MAX_BATCHES_STORING => match read {
                    // What was read before goes on first (a DISCONNECT among it included).
                    Ok(0) => {
                        return self
                            .finish(&mut storing, io, &mut out)
                            .await
                            .unwrap_or(End::Lost("closed by the client".into()));
                    }
                    Err(e) => {
                        return self
                            .finish(&mut storing, io, &mut out)
                            .await
                            .unwrap_or(End::Lost(e.to_string()));
                    }
                    Ok(_) => {
                        last_heard = Instant::now();
                        let batch = self.inbound(buf, &mut out);
                        if !out.is_empty() {
                            if let Err(e) = io.write_all(&out).await {
                                return End::Lost(e.to_string());
                            }
                            out.clear();
                        }
                        match batch {
                            Err(why) => return End::Lost(why),
                            Ok(batch) if batch.to_store.is_empty() && storing.is_empty() => {
                                if let Some(end) = self.release(batch, io, &mut out).await {
                                    return end;
                                }
                            }
                            Ok(mut batch) => {
                                let ingress = self.ctx.ingress.clone();
                                let messages = std::mem::take(&mut batch.to_store);
                                // Polled with the batches before it (see `durable`): its append
                                // reaches the queue now and joins the coming commit.
                                storing.push_back(Storing {
                                    durable: Box::pin(async move {
                                        if messages.is_empty() {
                                            return Ok(());
                                        }
                                        ingress.store(messages).await
                                    }),
                                    done: None,
                                    batch,
                                });
                            }
                        }
                        if let Some(pause) = self.rate.pause() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                },
                stored = durable(&mut storing) => {
                    let Some(Storing { batch, .. }) = storing.pop_front() else { continue };
                    if let Err(e) = stored {
                        tracing::warn!(client_id = %self.client_id, error = %e, "Publishes not stored; the client will send them again");
                        self.disconnect_with(&mut out, DisconnectReasonCode::QuotaExceeded);
                        let _ = io.write_all(&out).await;
                        return End::Lost(format!("outbox refused: {e}"));
                    }
                    if let Some(end) = self.release(batch, io, &mut out).await {
                        return end;
                    }
                }
                notification = self.link_rx.next() => match notification {
                    Ok(Some(notification)) => {
                        if let Some(end) = self.outbound(notification, &mut out).await {
                            let _ = io.write_all(&out).await;
                            return end;
                        }
                        // Everything else the router has ready goes in the same write.
                        while let Some(Ok(Some(more))) = poll_once(self.link_rx.next()) {
                            if let Some(end) = self.outbound(more, &mut out).await {
                                let _ = io.write_all(&out).await;
                                return end;
                            }
                        }
                        if self.delivered > 0 {
                            metrics::counter!(metric::MESSAGES_OUT_TOTAL)
                                .increment(std::mem::take(&mut self.delivered));
                        }
                        if let Err(e) = io.write_all(&out).await {
                            return End::Lost(e.to_string());
                        }
                        out.clear();
                    }
                    Ok(None) => {}
                    // The router drops a session's link when a new connection takes its client
                    // id over.
                    Err(e) => return End::RouterEnded(format!("router link closed: {e}")),
                },
                () = tokio::time::sleep_until(deadline) => return End::Lost("keep-alive timeout".into()),
                () = self.ctx.shutdown.cancelled() => {
                    // Sessions finish what they were storing before they close.
                    return self.finish(&mut storing, io, &mut out).await.unwrap_or(End::Shutdown);
                }
            }
        }
    }

    /// Stores and releases every batch still waiting, in order; `Some` when one of them ends
    /// the session (a DISCONNECT, a refusal).
    async fn finish(
        &mut self,
        storing: &mut VecDeque<Storing>,
        io: &mut Box<dyn Stream>,
        out: &mut BytesMut,
    ) -> Option<End> {
        while !storing.is_empty() {
            let stored = durable(storing).await;
            let Some(Storing { batch, .. }) = storing.pop_front() else {
                break;
            };
            if let Err(e) = stored {
                tracing::warn!(client_id = %self.client_id, error = %e, "Publishes not stored; the client will send them again");
                return Some(End::Lost(format!("outbox refused: {e}")));
            }
            if let Some(end) = self.release(batch, io, out).await {
                return Some(end);
            }
        }
        None
    }

    /// Hands a batch whose publishes are durable to the router; `Some` when the session ends
    /// (the client said goodbye, or the router link failed).
    async fn release(
        &mut self,
        batch: Batch,
        io: &mut Box<dyn Stream>,
        out: &mut BytesMut,
    ) -> Option<End> {
        if let Err(why) = self.forward(batch.to_router).await {
            let _ = io.write_all(out).await;
            return Some(End::Lost(why));
        }
        (!batch.open).then_some(End::Graceful)
    }

    /// Handles every complete packet in `buf`: answers what the edge answers itself into
    /// `out`, and returns what is to be stored and then handed to the router.
    fn inbound(&mut self, buf: &mut BytesMut, out: &mut BytesMut) -> Result<Batch, String> {
        let mut to_router: Vec<Packet> = Vec::new();
        let mut to_store: Vec<Message> = Vec::new();
        // Counted once per batch, not per message.
        let mut accepted = 0u32;
        let mut open = true;
        while !buf.is_empty() {
            let peeked = codec::publish_qos_pkid(buf);
            let packet = match self.codec.read(buf, self.ctx.max_packet_size) {
                Ok(packet) => packet,
                Err(FrameError::Incomplete) => break,
                Err(FrameError::TooLarge) => {
                    metrics::counter!(metric::REFUSED_TOTAL, "reason" => "too_large").increment(1);
                    self.disconnect_with(out, DisconnectReasonCode::PacketTooLarge);
                    return Err("packet too large".into());
                }
                Err(FrameError::Malformed(why)) => {
                    self.disconnect_with(out, DisconnectReasonCode::MalformedPacket);
                    return Err(format!("malformed packet: {why}"));
                }
            };
            match packet {
                Packet::Publish(publish, properties) => {
                    let (qos, pkid) = peeked.unwrap_or((0, 0));
                    // The CONNACK offers no topic aliases (Topic Alias Maximum 0): a client
                    // that uses one breaks the protocol, and every publish must carry its topic
                    // for the ACL check.
                    if properties.as_ref().is_some_and(|p| p.topic_alias.is_some()) {
                        self.disconnect_with(out, DisconnectReasonCode::TopicAliasInvalid);
                        return Err("topic alias used, none offered".into());
                    }
                    let topic = std::str::from_utf8(&publish.topic)
                        .ok()
                        .and_then(|t| TopicName::new(t).ok())
                        .ok_or("invalid topic name")?;
                    if !self.acl.may_publish(&topic) {
                        metrics::counter!(metric::ACL_DENIED_TOTAL, "action" => "publish")
                            .increment(1);
                        tracing::debug!(client_id = %self.client_id, %topic, "Publish denied by ACL");
                        self.deny_publish(qos, pkid, out);
                        continue;
                    }
                    accepted += 1;
                    if self.ctx.ingress.takes(&topic) {
                        to_store.push(Message {
                            topic,
                            payload: publish.payload.to_vec(),
                            qos: QoS::from_u8(qos).unwrap_or(QoS::AtMostOnce),
                            retain: publish.retain,
                        });
                    }
                    to_router.push(Packet::Publish(publish, properties));
                }
                Packet::PubRel(rel, _) if self.denied_qos2.remove(&rel.pkid) => {
                    let comp = PubComp {
                        pkid: rel.pkid,
                        reason: PubCompReason::Success,
                    };
                    self.write(Packet::PubComp(comp, None), out);
                }
                Packet::Subscribe(subscribe, properties) => {
                    if let Some(allowed) = self.check_subscribe(subscribe, out) {
                        to_router.push(Packet::Subscribe(allowed, properties));
                    }
                }
                Packet::Disconnect(..) => {
                    // A clean goodbye: the will is dropped.
                    self.will = None;
                    to_router.push(packet);
                    open = false;
                    break;
                }
                Packet::Connect(..) => return Err("second CONNECT".into()),
                other => to_router.push(other),
            }
        }
        if accepted > 0 {
            self.rate.count(accepted);
            metrics::counter!(metric::MESSAGES_IN_TOTAL).increment(u64::from(accepted));
        }
        // The routed publishes are to be durable before the router (and so the PUBACK) sees
        // them.
        Ok(Batch {
            to_store,
            to_router,
            open,
        })
    }

    /// Sends packets to the router in order, with one wake-up for the lot.
    async fn forward(&mut self, mut packets: Vec<Packet>) -> Result<(), String> {
        let Some(last) = packets.pop() else {
            return Ok(());
        };
        self.link_tx.buffer().extend(packets);
        self.link_tx
            .send(last)
            .await
            .map(drop)
            .map_err(|e| format!("router link: {e}"))
    }

    fn deny_publish(&mut self, qos: u8, pkid: u16, out: &mut BytesMut) {
        match qos {
            1 => {
                let ack = PubAck {
                    pkid,
                    reason: PubAckReason::NotAuthorized,
                };
                self.write(Packet::PubAck(ack, None), out);
            }
            2 => {
                self.denied_qos2.insert(pkid);
                let rec = PubRec {
                    pkid,
                    reason: PubRecReason::NotAuthorized,
                };
                self.write(Packet::PubRec(rec, None), out);
            }
            _ => {}
        }
    }

    /// Answers denied filters itself; returns what goes to the router, if anything.
    fn check_subscribe(&mut self, subscribe: Subscribe, out: &mut BytesMut) -> Option<Subscribe> {
        let (denied_code, quota_code) = match self.codec {
            Codec::V4 => (SubscribeReasonCode::Failure, SubscribeReasonCode::Failure),
            Codec::V5 => (
                SubscribeReasonCode::NotAuthorized,
                SubscribeReasonCode::QuotaExceeded,
            ),
        };
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut allowed = Vec::with_capacity(subscribe.filters.len());
        for filter in subscribe.filters {
            // A shared subscription is checked on the filter it shares.
            let path = shared_filter(&filter.path);
            let ok = TopicFilter::new(path).is_ok_and(|f| self.acl.may_subscribe(&f));
            if !ok {
                metrics::counter!(metric::ACL_DENIED_TOTAL, "action" => "subscribe").increment(1);
                tracing::debug!(client_id = %self.client_id, filter = %filter.path, "Subscription denied by ACL");
                codes.push(Some(denied_code));
            } else if !self.ctx.admit_filter(&filter.path) {
                metrics::counter!(metric::REFUSED_TOTAL, "reason" => "max_filters").increment(1);
                tracing::warn!(client_id = %self.client_id, filter = %filter.path, "Subscription refused: broker.max_filters reached");
                codes.push(Some(quota_code));
            } else {
                codes.push(None);
                allowed.push(filter);
            }
        }
        let pkid = subscribe.pkid;
        if allowed.is_empty() {
            let ack = SubAck {
                pkid,
                return_codes: codes.into_iter().flatten().collect(),
            };
            self.write(Packet::SubAck(ack, None), out);
            return None;
        }
        if codes.iter().any(Option::is_some) {
            self.held_back.insert(pkid, codes);
        }
        Some(Subscribe {
            pkid,
            filters: allowed,
        })
    }

    /// One notification from the router to the client. `Some`: the session ends.
    async fn outbound(&mut self, notification: Notification, out: &mut BytesMut) -> Option<End> {
        match notification {
            Notification::Unschedule => {
                if self.link_rx.wake().await.is_err() {
                    return Some(End::Lost("router link closed".into()));
                }
                None
            }
            Notification::Disconnect(disconnect, properties) => {
                // Another connection took this client id over.
                self.write(Packet::Disconnect(disconnect, properties), out);
                Some(End::RouterEnded("disconnected by the router".into()))
            }
            other => {
                let packet: Option<Packet> = other.into();
                match packet {
                    Some(Packet::SubAck(mut ack, properties)) => {
                        if let Some(codes) = self.held_back.remove(&ack.pkid) {
                            let mut granted = ack.return_codes.into_iter();
                            ack.return_codes = codes
                                .into_iter()
                                .filter_map(|code| code.or_else(|| granted.next()))
                                .collect();
                        }
                        self.write(Packet::SubAck(ack, properties), out);
                    }
                    Some(packet) => {
                        if matches!(packet, Packet::Publish(..)) {
                            self.delivered += 1;
                        }
                        self.write(packet, out);
                    }
                    None => {}
                }
                None
            }
        }
    }

    fn write(&self, packet: Packet, out: &mut BytesMut) {
        if let Err(e) = self.codec.write(packet, out) {
            tracing::warn!(client_id = %self.client_id, error = %e, "A packet could not be encoded");
        }
    }

    fn disconnect_with(&self, out: &mut BytesMut, reason_code: DisconnectReasonCode) {
        if self.codec == Codec::V5 {
            self.write(Packet::Disconnect(Disconnect { reason_code }, None), out);
        }
    }
}

/// `$share/<group>/<filter>` → `<filter>`; any other filter as it is.
fn shared_filter(path: &str) -> &str {
    path.strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(path, |(_, filter)| filter)
}

/// The value of `future` if it is ready now. Used on `LinkRx::next`, which loses nothing when
/// dropped before it is ready.
fn poll_once<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(value) => Some(value),
        std::task::Poll::Pending => None,
    }
}

/// A token bucket per client: `per_second` messages, bursts of one second's worth.
struct RateLimit {
    per_second: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    fn new(per_second: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            tokens: f64::from(per_second),
            at: Instant::now(),
        }
    }

    fn count(&mut self, n: u32) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_second)
            .min(self.per_second);
        self.at = now;
        self.tokens -= f64::from(n);
    }

    /// How long to stop reading so that the client keeps to its rate.
    fn pause(&self) -> Option<Duration> {
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.per_second))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_shared_subscription_is_checked_on_the_filter_it_shares() {
        assert_eq!(shared_filter("$share/workers/site/+/temp"), "site/+/temp");
        assert_eq!(shared_filter("site/#"), "site/#");
        // No filter after the group: checked as it is (and refused as an invalid filter).
        assert_eq!(shared_filter("$share/workers"), "$share/workers");
    }

    #[test]
    fn the_rate_limit_pauses_only_past_the_rate() {
        let mut rate = RateLimit::new(100);
        rate.count(100);
        assert!(rate.pause().is_none());
        rate.count(50);
        let pause = rate.pause().expect("over the rate");
        assert!(pause > Duration::from_millis(400) && pause <= Duration::from_millis(500));
    }
}
