//! One client connection, from CONNECT (see [`super::handshake`]) to its end.
//!
//! The edge reads and checks what the client sends, then hands it to rumqttd's router through
//! an in-process link; what the router sends back goes to the client. The checks: the will's
//! and every publish's topic against the ACLs, every subscription filter (denied ones answered
//! in the SUBACK, allowed ones subscribed within the identity's quota), the packet size, the
//! message rate and the inbound flow control. A publish reaches the router, and so its PUBACK
//! the client, only once ingress has made it durable when a route takes it.
//!
//! **Inbound QoS 2 ends at the edge.** rumqttd would keep every QoS 2 payload until its PUBREL
//! (and match PUBRELs in arrival order), so the edge keeps the packet ids itself: a QoS 2
//! publish goes to the router as QoS 1, its PUBACK comes back to the client as PUBREC, and the
//! client's PUBREL is answered with PUBCOMP here. A duplicate (same packet id before its
//! PUBREL) is answered again, never routed twice. MQTT 5: unacknowledged QoS 1 and 2
//! publishes count against `max_inflight` (announced as Receive Maximum); one more ends the
//! session with DISCONNECT 0x93. 3.1.1 (no Receive Maximum to announce): the client is not
//! read while `max_inflight` of its publishes wait for the router.
//!
//! **Writes never hold the session.** Each write to the client has `write_timeout` (and the
//! keep-alive deadline, and shutdown) over it: a client that stops reading loses its
//! connection instead of holding its slot. The rate limit's pause only stops reading.
//!
//! **Slow subscribers cost no acknowledged message.** A batch whose publishes would overrun a
//! lagging QoS 1/2 subscriber (see [`super::lag`]) waits before the router: the session stops
//! reading meanwhile (its PUBACKs wait too), and still delivers to its client.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf as _, BufMut as _, BytesMut};
use fieldlink_core::message::{Message, QoS};
use fieldlink_core::topic::{TopicFilter, TopicName};
use rumqttd::Notification;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{
    Disconnect, DisconnectReasonCode, Packet, PubAck, PubAckReason, PubComp, PubCompReason, PubRec,
    PubRecReason, Publish, PublishProperties, RetainForwardRule, SubAck, Subscribe,
    SubscribeProperties, SubscribeReasonCode,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::admission::Ticket;
use super::alias::TopicAliases;
use super::codec::{self, Codec, FrameError};
use super::handshake;
use super::lag::{Admission, Demand, Forwarded};
use super::pkid::{PkidMap, PkidSet};
use super::rate::RateLimit;
use super::{EdgeContext, FilterRefused, Stream, metric, v5};
use crate::access::SessionAcl;
use crate::config::ListenerSettings;

/// Who is at the other end, as far as the transport knows.
pub(crate) struct Peer {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) listener: Arc<ListenerSettings>,
    /// The name from the client certificate or the PSK identity.
    pub(crate) identity: Option<String>,
}

/// Serves one connection until it ends. `ticket` counts it as unauthenticated until its
/// CONNECT is accepted.
pub(crate) async fn serve(
    mut io: Box<dyn Stream>,
    peer: Peer,
    ctx: Arc<EdgeContext>,
    ticket: Ticket,
) {
    let mut buf = BytesMut::with_capacity(1024);
    let session = match handshake::connect(&mut io, &mut buf, &peer, &ctx).await {
        Ok(session) => session,
        Err(refusal) => {
            refusal.send(&mut io).await;
            return;
        }
    };
    // Authenticated, and holding a connection slot: no longer counted (nor pushed out) as
    // unauthenticated.
    ticket.release();
    drop(ticket);
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

/// What the handshake hands over once a client is admitted.
pub(crate) struct Admitted {
    pub(crate) codec: Codec,
    pub(crate) client_id: String,
    /// The router's name for the session (identity and client id).
    pub(crate) key: String,
    /// Whose subscription quota this session uses.
    pub(crate) identity_key: String,
    pub(crate) acl: SessionAcl,
    pub(crate) keep_alive: Duration,
    pub(crate) will: Option<Message>,
    pub(crate) will_delay: Duration,
    /// MQTT 5: the will's properties (`None` for 3.1.1).
    pub(crate) will_properties: Option<PublishProperties>,
    pub(crate) link_tx: LinkTx,
    pub(crate) link_rx: LinkRx,
    pub(crate) ctx: Arc<EdgeContext>,
    pub(crate) permit: tokio::sync::OwnedSemaphorePermit,
    /// The client asked for a session that outlives the connection.
    pub(crate) persistent: bool,
    /// The router kept the session from an earlier connection.
    pub(crate) session_present: bool,
    /// MQTT 5: the largest packet the client accepts (its Maximum Packet Size).
    pub(crate) client_max_packet: Option<u32>,
    /// MQTT 5: the most QoS 1/2 publishes the client takes unacknowledged.
    pub(crate) client_receive_max: Option<u16>,
    /// MQTT 5: how long the session outlives the connection (`None`: 3.1.1, as the router
    /// keeps it).
    pub(crate) session_expiry: Option<Duration>,
    /// MQTT 5: the most server topic aliases the client takes (its Topic Alias Maximum).
    pub(crate) client_topic_alias_max: Option<u16>,
    /// This connection's number (see [`EdgeContext::session_resumed`]).
    pub(crate) conn: u64,
}

/// Where an inbound QoS 2 publish stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Qos2 {
    /// Handed to the router (as QoS 1): its PUBACK becomes our PUBREC.
    Routing,
    /// PUBREC sent: waiting for the client's PUBREL.
    Received(PubRecReason),
}

pub(crate) struct Session {
    codec: Codec,
    client_id: String,
    key: String,
    identity_key: String,
    acl: SessionAcl,
    keep_alive: Duration,
    will: Option<Message>,
    will_delay: Duration,
    will_properties: Option<PublishProperties>,
    link_tx: LinkTx,
    link_rx: LinkRx,
    ctx: Arc<EdgeContext>,
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// Inbound QoS 1 publishes the router has not acknowledged yet.
    qos1: PkidSet,
    /// Inbound QoS 2 publishes not completed yet.
    qos2: PkidMap<Qos2>,
    /// How many of `qos2` the router has not acknowledged yet.
    qos2_routing: usize,
    /// SUBSCRIBEs sent to the router with some filters held back: the codes to put back.
    held_back: PkidMap<Vec<Option<SubscribeReasonCode>>>,
    rate: RateLimit,
    /// Publishes written to the client since the metric was last updated.
    delivered: u64,
    /// When the client was last heard from.
    last_heard: Instant,
    /// This connection's number (the lag tracker's, see [`super::lag`]).
    conn: u64,
    /// Cancelled when this client, as a subscriber, is stuck too long.
    kick: tokio_util::sync::CancellationToken,
    /// Filters of SUBSCRIBEs sent to the router, by packet id, with their QoS: measured once
    /// granted.
    subscribing: PkidMap<Vec<(String, u8)>>,
    /// Forwards received since the lag tracker was last told.
    forwarded: Vec<Forwarded>,
    /// Forwards the client acknowledged since the lag tracker was last told.
    acked: Vec<u16>,
    /// MQTT 5: this session as a publish's origin (see [`v5::Stamp`]).
    origin: u64,
    /// MQTT 5: where its publishes' full stamps are written.
    stamps: v5::StampBuffers,
    /// MQTT 5, a resumed session: its filters to subscribe again (see [`super::expiry`]).
    restore: Vec<(String, usize, u8)>,
    /// MQTT 5: the filters for which the router holds an internal subscription id on this
    /// connection (see [`Session::split_subscribe`]).
    router_ids: HashSet<String>,
    /// MQTT 5: whether the session may hold a No Local subscription (one made on this
    /// connection, or any from before if it was resumed): its publishes then carry their
    /// origin (the full stamp, see [`v5`]).
    may_no_local: bool,
    /// MQTT 5: the largest packet the client accepts.
    client_max_packet: usize,
    session_expiry: Option<Duration>,
    /// MQTT 5: the most QoS 1/2 publishes the client takes unacknowledged (its Receive
    /// Maximum), how many it has, and those written, waiting for room. (Bounded by the
    /// router's in-flight window per connection, `max_inflight`.)
    client_receive_max: usize,
    inflight_out: usize,
    waiting_out: Waiting,
    /// Acknowledgements ready for the router (MQTT 5 sessions), in the order it takes them.
    router_acks: Vec<Packet>,
    /// MQTT 5: acknowledgements of the router's QoS 1/2 forwards, in forward order, and of its
    /// PUBRELs, in PUBREL order; `None` while still awaited. The router takes acknowledgements
    /// only in order (it ends the session otherwise), and some come from the client while
    /// others come from the edge for the client: forwards it did not send, or sent at a
    /// lower QoS. (Bounded by the router's in-flight window.)
    ack_order: VecDeque<(u16, Option<Packet>)>,
    release_order: VecDeque<(u16, Option<Packet>)>,
    /// Forwards the router sent at QoS 2 and the client got at QoS 1: its PUBACK is the
    /// router's PUBREC. (Bounded by the router's in-flight window, and by packet ids.)
    downgraded: PkidSet,
    /// QoS 2 forwards whose PUBREL the edge answers for the client.
    completing: PkidSet,
    /// MQTT 5 SUBSCRIBEs sent to the router a filter at a time (each with its own options):
    /// the SUBACKs still to come, and the codes so far.
    split_subacks: PkidMap<(usize, Vec<SubscribeReasonCode>)>,
    /// MQTT 5: the server topic aliases of this connection, if the client takes any.
    aliases: Option<TopicAliases>,
    /// Where a forward is encoded before its alias is put in (reused: no allocation per
    /// publish).
    scratch: BytesMut,
}

/// A batch whose publishes are durable, going to the router a part at a time as lagging
/// subscribers' logs have room; the front part waits.
struct Held {
    parts: VecDeque<(Vec<Packet>, Demand)>,
    /// `false` when the batch ended with the client's DISCONNECT.
    open: bool,
}

impl Held {
    /// What the front part waits for.
    fn waiting(&self) -> Option<&Demand> {
        self.parts.front().map(|(_, demand)| demand)
    }
}

/// A batch cut into parts of at most `max` bytes of publishes (as the router's log counts
/// them) each, in order, with what each adds to the logs: one part never needs more room
/// than a lagging subscriber can be given.
fn parts(packets: Vec<Packet>, max: u64) -> VecDeque<(Vec<Packet>, Demand)> {
    let mut parts = VecDeque::new();
    let mut part = Vec::new();
    let mut demand = Demand::default();
    for packet in packets {
        if let Packet::Publish(publish, _) = &packet {
            let bytes = Demand::bytes(&publish.topic, publish.payload.len());
            if !part.is_empty() && demand.total() + bytes > max {
                parts.push_back((std::mem::take(&mut part), std::mem::take(&mut demand)));
            }
            demand.add(&publish.topic, publish.payload.len());
        }
        part.push(packet);
    }
    if !part.is_empty() {
        parts.push_back((part, demand));
    }
    parts
}

/// Reads into `buf`, at most until it holds `limit` bytes; never resolves while it is full
/// (the caller waits on something else meanwhile).
pub(crate) async fn read_bounded(
    io: &mut Box<dyn Stream>,
    buf: &mut BytesMut,
    limit: usize,
) -> std::io::Result<usize> {
    let room = limit.saturating_sub(buf.len());
    if room == 0 {
        return std::future::pending().await;
    }
    let room = room.min(64 * 1024);
    buf.reserve(room);
    (&mut *io).take(room as u64).read_buf(buf).await
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

/// Most bytes gathered from the router for one write to the client.
const MAX_WRITE_BATCH: usize = 256 * 1024;

impl Session {
    pub(crate) fn new(admitted: Admitted) -> Self {
        let rate = RateLimit::new(admitted.ctx.max_message_rate);
        let conn = admitted.conn;
        let origin = admitted.ctx.origin(&admitted.key);
        let restore = match admitted.codec {
            Codec::V5 => admitted
                .ctx
                .session_subscriptions(&admitted.key, admitted.session_present),
            Codec::V4 => Vec::new(),
        };
        let aliases = match admitted.codec {
            Codec::V5 => TopicAliases::new(
                admitted
                    .client_topic_alias_max
                    .unwrap_or(0)
                    .min(admitted.ctx.max_topic_aliases),
            ),
            Codec::V4 => None,
        };
        let kick = admitted.ctx.lag.connected(
            &admitted.key,
            &admitted.client_id,
            conn,
            admitted.persistent,
            admitted.session_present,
        );
        Self {
            codec: admitted.codec,
            client_id: admitted.client_id,
            key: admitted.key,
            identity_key: admitted.identity_key,
            acl: admitted.acl,
            keep_alive: admitted.keep_alive,
            will: admitted.will,
            will_delay: admitted.will_delay,
            will_properties: admitted.will_properties,
            link_tx: admitted.link_tx,
            link_rx: admitted.link_rx,
            ctx: admitted.ctx,
            _permit: admitted.permit,
            qos1: PkidSet::default(),
            qos2_routing: 0,
            qos2: PkidMap::default(),
            held_back: PkidMap::default(),
            rate,
            delivered: 0,
            last_heard: Instant::now(),
            conn,
            kick,
            subscribing: PkidMap::default(),
            forwarded: Vec::new(),
            acked: Vec::new(),
            origin,
            stamps: v5::StampBuffers::default(),
            may_no_local: admitted.session_present,
            restore,
            router_ids: HashSet::new(),
            client_max_packet: admitted
                .client_max_packet
                .and_then(|max| usize::try_from(max).ok())
                .unwrap_or(usize::MAX),
            session_expiry: admitted.session_expiry,
            client_receive_max: usize::from(admitted.client_receive_max.unwrap_or(u16::MAX).max(1)),
            inflight_out: 0,
            waiting_out: Waiting::default(),
            router_acks: Vec::new(),
            ack_order: VecDeque::new(),
            release_order: VecDeque::new(),
            downgraded: PkidSet::default(),
            completing: PkidSet::default(),
            split_subacks: PkidMap::default(),
            aliases,
            scratch: BytesMut::new(),
        }
    }

    async fn run(mut self, mut io: Box<dyn Stream>, mut buf: BytesMut) -> End {
        let end = self.pump(&mut io, &mut buf).await;
        // Gone: holds nobody back any more.
        self.ctx.lag.disconnected(&self.key, self.conn);
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
            self.ctx.publish_will(
                self.key.clone(),
                will,
                self.will_properties.take(),
                self.will_delay,
            );
        }
        if matches!(end, End::Lost(_) | End::Shutdown) {
            // The router learns of the end from a DISCONNECT; a lost session keeps its state
            // when the client asked for a persistent one.
            let bye = Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            };
            let _ = self.link_tx.send(Packet::Disconnect(bye, None)).await;
        }
        // MQTT 5: the session is kept for its interval, then ended by the edge; a session
        // another connection took over is that one's.
        if let Some(expiry) = self.session_expiry
            && !matches!(end, End::RouterEnded(_))
        {
            self.ctx
                .session_ended(
                    self.key.clone(),
                    self.identity_key.clone(),
                    expiry,
                    self.conn,
                )
                .await;
        }
        // No longer this session's holder (if `session_ended` has not seen to it).
        self.ctx.connection_ended(&self.key, self.conn);
        // The last words are not waited for long: the client may be the reason we stop.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
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
        })
        .await;
        end
    }

    /// Writes `out` to the client and clears it, within `write_timeout` and the keep-alive
    /// deadline; shutdown interrupts it.
    async fn send(&mut self, io: &mut Box<dyn Stream>, out: &mut BytesMut) -> Result<(), End> {
        if out.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let keep_alive = self.last_heard + self.keep_alive;
        // A keep-alive deadline already past (the client was not read during a rate pause)
        // is the loop's to judge once the write is done.
        let deadline = match now + self.ctx.write_timeout {
            write if keep_alive > now => write.min(keep_alive),
            write => write,
        };
        let result = tokio::select! {
            written = tokio::time::timeout_at(deadline.into(), io.write_all(out)) => written,
            () = self.ctx.shutdown.cancelled() => return Err(End::Shutdown),
            () = self.kick.cancelled() => return Err(End::Lost(TOO_SLOW.into())),
        };
        out.clear();
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::Lost(e.to_string())),
            Err(_) => {
                metrics::counter!(metric::REFUSED_TOTAL, "reason" => "write_timeout").increment(1);
                Err(End::Lost("the client does not read what it is sent".into()))
            }
        }
    }

    async fn pump(&mut self, io: &mut Box<dyn Stream>, buf: &mut BytesMut) -> End {
        let mut out = BytesMut::with_capacity(4096);
        // A resumed MQTT 5 session's filters get their options back (see `expiry`); the
        // router has the filters, and those with the default options need nothing else.
        if !self.restore.is_empty() {
            let default = v5::Options::default().encode();
            let packets = std::mem::take(&mut self.restore)
                .into_iter()
                .filter(|(_, id, _)| *id != default)
                .map(|(path, id, qos)| {
                    self.router_ids.insert(path.clone());
                    restore_subscribe(path, id, qos)
                })
                .collect();
            if let Err(why) = self.forward(packets).await {
                return End::Lost(why);
            }
        }
        // Bytes that came with the CONNECT (a client need not wait for the CONNACK).
        if !buf.is_empty() {
            match self.inbound(buf, &mut out) {
                Err(why) => {
                    let _ = self.send(io, &mut out).await;
                    return End::Lost(why);
                }
                Ok(batch) => {
                    if let Err(end) = self.send(io, &mut out).await {
                        return end;
                    }
                    let mut storing = VecDeque::new();
                    self.queue(batch, &mut storing);
                    if let Some(end) = self.finish(&mut None, &mut storing, io, &mut out).await {
                        return end;
                    }
                }
            }
        }
        // Batches whose routed publishes are being made durable, oldest first. Reading goes
        // on meanwhile (the queue commits every `commit_interval`: the batches read in the
        // meantime join the same commit), and what the router sends still goes out; each
        // batch reaches the router only after every batch before it, so order is kept.
        let mut storing: VecDeque<Storing> = VecDeque::new();
        // Set while the client is over its message rate: reading waits, nothing else does.
        let mut paused: Option<tokio::time::Instant> = None;
        // A durable batch waiting for room in a lagging subscriber's log: nothing is read, and
        // no later batch goes to the router, until it has gone.
        let mut held: Option<Held> = None;
        let lag = self.ctx.lag.clone();
        loop {
            let deadline = tokio::time::Instant::from_std(self.last_heard + self.keep_alive);
            let waiting = held.as_ref().and_then(Held::waiting);
            tokio::select! {
                read = read_more(io, buf), if storing.len() < MAX_BATCHES_STORING && paused.is_none() && waiting.is_none() && !self.backlogged() => match read {
                    // What was read before goes on first (a DISCONNECT among it included).
                    Ok(0) => {
                        return self
                            .finish(&mut held, &mut storing, io, &mut out)
                            .await
                            .unwrap_or(End::Lost("closed by the client".into()));
                    }
                    Err(e) => {
                        return self
                            .finish(&mut held, &mut storing, io, &mut out)
                            .await
                            .unwrap_or(End::Lost(e.to_string()));
                    }
                    Ok(_) => {
                        self.last_heard = Instant::now();
                        let batch = self.inbound(buf, &mut out);
                        if !self.acked.is_empty() {
                            lag.acked(&self.key, self.conn, &self.acked);
                            self.acked.clear();
                        }
                        // MQTT 5 acknowledgements go to the router at once, in their order
                        // (not behind publishes waiting to be stored).
                        if let Err(why) = self.forward_acks().await {
                            let _ = self.send(io, &mut out).await;
                            return End::Lost(why);
                        }
                        if let Err(end) = self.send(io, &mut out).await {
                            return end;
                        }
                        match batch {
                            Err(why) => return End::Lost(why),
                            Ok(batch) if batch.to_store.is_empty() && storing.is_empty() => {
                                if let Some(end) = self.release(batch, &mut held, io, &mut out).await {
                                    return end;
                                }
                            }
                            Ok(batch) => self.queue(batch, &mut storing),
                        }
                        paused = self.rate.pause().map(|pause| tokio::time::Instant::now() + pause);
                    }
                },
                () = async { tokio::time::sleep_until(paused.unwrap_or_else(tokio::time::Instant::now)).await }, if paused.is_some() => {
                    paused = None;
                    // The client was not read meanwhile: its silence is ours.
                    self.last_heard = Instant::now();
                }
                () = async {
                    match waiting {
                        Some(demand) => lag.admit(demand).await,
                        None => std::future::pending().await,
                    }
                } => {
                    // The front part is admitted: its bytes count against the subscribers it
                    // matches.
                    let Some(Held { mut parts, open }) = held.take() else { continue };
                    // The client was not read meanwhile: its silence is ours.
                    self.last_heard = Instant::now();
                    let Some((packets, _)) = parts.pop_front() else { continue };
                    if let Err(why) = self.forward(packets).await {
                        let _ = self.send(io, &mut out).await;
                        return End::Lost(why);
                    }
                    if let Some(end) = self.release_parts(parts, open, &mut held, io, &mut out).await {
                        return end;
                    }
                }
                stored = durable(&mut storing), if waiting.is_none() => {
                    let Some(Storing { batch, .. }) = storing.pop_front() else { continue };
                    if let Err(e) = stored {
                        tracing::warn!(client_id = %self.client_id, error = %e, "Publishes not stored; the client will send them again");
                        self.disconnect_with(&mut out, DisconnectReasonCode::QuotaExceeded);
                        let _ = self.send(io, &mut out).await;
                        return End::Lost(format!("outbox refused: {e}"));
                    }
                    if let Some(end) = self.release(batch, &mut held, io, &mut out).await {
                        return end;
                    }
                }
                notification = self.link_rx.next() => match notification {
                    Ok(Some(notification)) => {
                        let mut now = self.ctx.clock.lazy();
                        if let Some(end) = self.outbound(notification, &mut out, &mut now).await {
                            let _ = self.send(io, &mut out).await;
                            return end;
                        }
                        // Everything else the router has ready goes in the same write, up to
                        // a bound.
                        while out.len() < MAX_WRITE_BATCH
                            && let Some(Ok(Some(more))) = poll_once(self.link_rx.next())
                        {
                            if let Some(end) = self.outbound(more, &mut out, &mut now).await {
                                let _ = self.send(io, &mut out).await;
                                return end;
                            }
                        }
                        // What the edge acknowledges for the client goes to the router at once.
                        if let Err(why) = self.forward_acks().await {
                            let _ = self.send(io, &mut out).await;
                            return End::Lost(why);
                        }
                        if self.delivered > 0 {
                            metrics::counter!(metric::MESSAGES_OUT_TOTAL)
                                .increment(std::mem::take(&mut self.delivered));
                        }
                        // Out of the router's log: room for the publishers it held back.
                        if !self.forwarded.is_empty() {
                            lag.forwarded(&self.key, self.conn, &self.forwarded);
                            self.forwarded.clear();
                        }
                        if let Err(end) = self.send(io, &mut out).await {
                            return end;
                        }
                    }
                    Ok(None) => {}
                    // The router drops a session's link when a new connection takes its client
                    // id over.
                    Err(e) => return End::RouterEnded(format!("router link closed: {e}")),
                },
                () = tokio::time::sleep_until(deadline), if paused.is_none() && waiting.is_none() => return End::Lost("keep-alive timeout".into()),
                () = self.kick.cancelled() => return End::Lost(TOO_SLOW.into()),
                () = self.ctx.shutdown.cancelled() => {
                    // Sessions finish what they were storing before they close.
                    return self.finish(&mut held, &mut storing, io, &mut out).await.unwrap_or(End::Shutdown);
                }
            }
        }
    }

    /// Starts making a batch's publishes durable; it reaches the router once they are.
    fn queue(&self, mut batch: Batch, storing: &mut VecDeque<Storing>) {
        let ingress = self.ctx.ingress.clone();
        let messages = std::mem::take(&mut batch.to_store);
        // Polled with the batches before it (see `durable`): its append reaches the queue
        // now and joins the coming commit.
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

    /// Stores and releases every batch still waiting, in order; `Some` when one of them ends
    /// the session (a DISCONNECT, a refusal).
    async fn finish(
        &mut self,
        held: &mut Option<Held>,
        storing: &mut VecDeque<Storing>,
        io: &mut Box<dyn Stream>,
        out: &mut BytesMut,
    ) -> Option<End> {
        if let Some(Held { parts, open }) = held.take()
            && let Some(end) = self.hand_over(parts, open, io, out).await
        {
            return Some(end);
        }
        while !storing.is_empty() {
            let stored = durable(storing).await;
            let Some(Storing { batch, .. }) = storing.pop_front() else {
                break;
            };
            if let Err(e) = stored {
                tracing::warn!(client_id = %self.client_id, error = %e, "Publishes not stored; the client will send them again");
                return Some(End::Lost(format!("outbox refused: {e}")));
            }
            let parts = parts(batch.to_router, self.ctx.lag.part_bytes());
            if let Some(end) = self.hand_over(parts, batch.open, io, out).await {
                return Some(end);
            }
        }
        None
    }

    /// Hands a batch whose publishes are durable to the router if the subscribers it matches
    /// have room for it, else holds it in `held`; `Some` when the session ends.
    async fn release(
        &mut self,
        batch: Batch,
        held: &mut Option<Held>,
        io: &mut Box<dyn Stream>,
        out: &mut BytesMut,
    ) -> Option<End> {
        let parts = parts(batch.to_router, self.ctx.lag.part_bytes());
        self.release_parts(parts, batch.open, held, io, out).await
    }

    /// Hands parts to the router while they are admitted; the first that is not waits in
    /// `held` with the rest.
    async fn release_parts(
        &mut self,
        mut parts: VecDeque<(Vec<Packet>, Demand)>,
        open: bool,
        held: &mut Option<Held>,
        io: &mut Box<dyn Stream>,
        out: &mut BytesMut,
    ) -> Option<End> {
        while let Some((_, demand)) = parts.front() {
            if let Admission::Held { .. } = self.ctx.lag.try_admit(demand) {
                *held = Some(Held { parts, open });
                return None;
            }
            let Some((packets, _)) = parts.pop_front() else {
                break;
            };
            if let Err(why) = self.forward(packets).await {
                let _ = self.send(io, out).await;
                return Some(End::Lost(why));
            }
        }
        (!open).then_some(End::Graceful)
    }

    /// Hands parts to the router, each once admitted (waiting as long as it takes); `Some`
    /// when the session ends (the client said goodbye, or the router link failed).
    async fn hand_over(
        &mut self,
        parts: VecDeque<(Vec<Packet>, Demand)>,
        open: bool,
        io: &mut Box<dyn Stream>,
        out: &mut BytesMut,
    ) -> Option<End> {
        for (packets, demand) in parts {
            self.ctx.lag.admit(&demand).await;
            if let Err(why) = self.forward(packets).await {
                let _ = self.send(io, out).await;
                return Some(End::Lost(why));
            }
        }
        (!open).then_some(End::Graceful)
    }

    /// Unacknowledged inbound QoS 1 and 2 publishes.
    fn inflight(&self) -> usize {
        self.qos1.len() + self.qos2.len()
    }

    /// A 3.1.1 client, which was told no Receive Maximum, is not read while `max_inflight` of
    /// its publishes wait for the router: backpressure instead of a disconnect. (QoS 2 ones
    /// waiting for the client's PUBREL hold only their packet id here, at most 65 536.)
    fn backlogged(&self) -> bool {
        self.codec == Codec::V4
            && self.qos1.len() + self.qos2_routing >= usize::from(self.ctx.max_inflight)
    }

    /// Handles every complete packet in `buf`: answers what the edge answers itself into
    /// `out`, and returns what is to be stored and then handed to the router.
    fn inbound(&mut self, buf: &mut BytesMut, out: &mut BytesMut) -> Result<Batch, String> {
        let mut to_router: Vec<Packet> = Vec::new();
        let mut to_store: Vec<Message> = Vec::new();
        // Counted once per batch, not per message.
        let mut accepted = 0u32;
        let mut now = self.ctx.clock.lazy();
        let mut open = true;
        while !buf.is_empty() {
            let peeked = codec::publish_qos_pkid(buf);
            // An MQTT 5 publish's own properties, taken off its frame as they are (see
            // `v5::take_own`); `None`: the codec reads them, if any.
            let own = match (self.codec, peeked) {
                (Codec::V5, Some(_)) => {
                    v5::take_own(buf, self.ctx.max_packet_size, &mut self.stamps)
                }
                _ => None,
            };
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
                    // The CONNACK offers the client no topic aliases of its own (Topic Alias
                    // Maximum 0): a client that uses one breaks the protocol, and every publish
                    // must carry its topic for the ACL check. (Aliases the other way, from the
                    // edge to the client, are `alias`'s.)
                    if properties.as_ref().is_some_and(|p| p.topic_alias.is_some()) {
                        self.disconnect_with(out, DisconnectReasonCode::TopicAliasInvalid);
                        return Err("topic alias used, none offered".into());
                    }
                    if qos == 2
                        && let Some(state) = self.qos2.get(&pkid)
                    {
                        // Sent again before its PUBREL: answered, never routed twice.
                        if let Qos2::Received(reason) = *state {
                            self.write(Packet::PubRec(PubRec { pkid, reason }, None), out);
                        }
                        continue;
                    }
                    // MQTT 5 clients were told the Receive Maximum: one more is an error.
                    if self.codec == Codec::V5
                        && qos > 0
                        && !self.qos1.contains(&pkid)
                        && self.inflight() >= usize::from(self.ctx.max_inflight)
                    {
                        metrics::counter!(metric::REFUSED_TOTAL, "reason" => "receive_maximum")
                            .increment(1);
                        self.disconnect_with(out, DisconnectReasonCode::ReceiveMaximumExceeded);
                        return Err("more unacknowledged publishes than max_inflight".into());
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
                    let publish = match qos {
                        1 => {
                            self.qos1.insert(pkid);
                            publish
                        }
                        2 => {
                            self.qos2.insert(pkid, Qos2::Routing);
                            self.qos2_routing += 1;
                            as_qos1(&publish, pkid)
                        }
                        _ => publish,
                    };
                    // What the router would lose goes with it (see `v5`): a 3.1.1 client's
                    // publish has only its QoS and retain flag to carry.
                    let properties = match (self.codec, own) {
                        (Codec::V5, Some(own)) => {
                            v5::stamp_own(own, qos, publish.retain, self.origin, || now.get())
                        }
                        (Codec::V5, None)
                            if !self.may_no_local && v5::fits_compact(properties.as_ref()) =>
                        {
                            v5::compact_stamp_onto(properties, qos, publish.retain)
                        }
                        (Codec::V5, None) => {
                            v5::stamp(properties, qos, publish.retain, self.origin, || now.get())
                        }
                        (Codec::V4, _) => v5::compact_stamp(qos, publish.retain),
                    };
                    to_router.push(Packet::Publish(publish, Some(properties)));
                }
                Packet::PubRel(rel, _) => {
                    // QoS 2 ends here: the router never saw it as QoS 2.
                    let reason = match self.qos2.get(&rel.pkid) {
                        Some(Qos2::Received(_)) => {
                            self.qos2.remove(&rel.pkid);
                            PubCompReason::Success
                        }
                        // Before its PUBREC: the client is ahead of the protocol; the PUBREC
                        // still comes.
                        Some(Qos2::Routing) => continue,
                        // Completed already (or in a session before this connection).
                        None => PubCompReason::PacketIdentifierNotFound,
                    };
                    let comp = PubComp {
                        pkid: rel.pkid,
                        reason,
                    };
                    self.write(Packet::PubComp(comp, None), out);
                }
                Packet::Subscribe(subscribe, properties) => {
                    let id = properties.as_ref().and_then(|p| p.id);
                    if id.is_some_and(|id| id > v5::MAX_CLIENT_SUBSCRIPTION_ID) {
                        // The internal id holds the client's within MQTT's range (see `v5`).
                        let ack = SubAck {
                            pkid: subscribe.pkid,
                            return_codes: vec![
                                SubscribeReasonCode::ImplementationSpecific;
                                subscribe.filters.len()
                            ],
                        };
                        self.write(Packet::SubAck(ack, None), out);
                        continue;
                    }
                    if let Some(allowed) = self.check_subscribe(subscribe, out) {
                        match self.codec {
                            Codec::V4 => to_router.push(Packet::Subscribe(allowed, properties)),
                            Codec::V5 => to_router.extend(self.split_subscribe(allowed, id)),
                        }
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
                Packet::PubAck(ref ack, _) if self.codec == Codec::V5 => {
                    let pkid = ack.pkid;
                    self.acked.push(pkid);
                    self.client_done(out);
                    if self.downgraded.remove(&pkid) {
                        // Sent at QoS 1 for the router's QoS 2: the router hears a PUBREC,
                        // and its PUBREL is answered here.
                        self.completing.insert(pkid);
                        let rec = PubRec {
                            pkid,
                            reason: PubRecReason::Success,
                        };
                        self.ack_forward(pkid, Packet::PubRec(rec, None));
                    } else {
                        self.ack_forward(pkid, packet);
                    }
                }
                Packet::PubRec(ref rec, _) if self.codec == Codec::V5 => {
                    let pkid = rec.pkid;
                    self.acked.push(pkid);
                    // A refusal ends the exchange; a PUBREC of success waits for the PUBCOMP.
                    if rec.reason != PubRecReason::Success {
                        self.client_done(out);
                    }
                    self.ack_forward(pkid, packet);
                }
                Packet::PubComp(ref comp, _) if self.codec == Codec::V5 => {
                    let pkid = comp.pkid;
                    self.client_done(out);
                    self.ack_release(pkid, packet);
                }
                Packet::PubAck(ref ack, _) => {
                    self.acked.push(ack.pkid);
                    to_router.push(packet);
                }
                Packet::PubRec(ref rec, _) => {
                    self.acked.push(rec.pkid);
                    to_router.push(packet);
                }
                Packet::Unsubscribe(ref unsubscribe, _) => {
                    for filter in &unsubscribe.filters {
                        self.ctx.lag.unsubscribed(&self.key, self.conn, filter);
                        if self.codec == Codec::V5 {
                            self.ctx.forget_subscription(&self.key, filter);
                            // The router drops its id with the filter.
                            self.router_ids.remove(filter);
                        }
                    }
                    to_router.push(packet);
                }
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

    /// Sends the acknowledgements waiting for the router, as [`Session::forward`] does, keeping
    /// their buffer for the next ones (a new one for every batch cost an allocation).
    async fn forward_acks(&mut self) -> Result<(), String> {
        let Some(last) = self.router_acks.pop() else {
            return Ok(());
        };
        self.link_tx.buffer().extend(self.router_acks.drain(..));
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
                let reason = PubRecReason::NotAuthorized;
                self.qos2.insert(pkid, Qos2::Received(reason));
                self.write(Packet::PubRec(PubRec { pkid, reason }, None), out);
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
                continue;
            }
            match self.ctx.admit_filter(&filter.path, &self.identity_key) {
                Ok(()) => {
                    codes.push(None);
                    allowed.push(filter);
                }
                Err(refused) => {
                    let (reason, key) = match refused {
                        FilterRefused::Pool => ("max_filters", "broker.max_filters"),
                        FilterRefused::Identity => (
                            "max_filters_per_identity",
                            "broker.max_filters_per_identity",
                        ),
                    };
                    metrics::counter!(metric::REFUSED_TOTAL, "reason" => reason).increment(1);
                    tracing::warn!(client_id = %self.client_id, filter = %filter.path, "Subscription refused: {key} reached");
                    codes.push(Some(quota_code));
                }
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
        self.subscribing.insert(
            pkid,
            allowed
                .iter()
                .map(|f| (f.path.clone(), f.qos as u8))
                .collect(),
        );
        Some(Subscribe {
            pkid,
            filters: allowed,
        })
    }

    /// An MQTT 5 SUBSCRIBE as the router gets it: a SUBSCRIBE per filter, each with the
    /// filter's options in its subscription id (see [`v5::Options`]); their SUBACKs are put
    /// together again into one. A filter with the default options goes without an id unless
    /// the router holds one for it from before (which only an id replaces): rumqttd pushes
    /// a filter's id onto every publish it forwards, an allocation per message (about 300
    /// instructions, callgrind), and a publish without one is delivered with the defaults.
    fn split_subscribe(&mut self, subscribe: Subscribe, id: Option<usize>) -> Vec<Packet> {
        let pkid = subscribe.pkid;
        self.split_subacks
            .insert(pkid, (subscribe.filters.len(), Vec::new()));
        subscribe
            .filters
            .into_iter()
            .map(|filter| {
                let skip_retained = match filter.retain_forward_rule {
                    RetainForwardRule::OnEverySubscribe => false,
                    RetainForwardRule::OnNewSubscribe => {
                        self.ctx.lag.is_subscribed(&self.key, &filter.path)
                    }
                    RetainForwardRule::Never => true,
                };
                self.may_no_local |= filter.nolocal;
                let options = v5::Options {
                    no_local: filter.nolocal,
                    retain_as_published: filter.preserve_retain,
                    skip_retained,
                    id,
                };
                self.ctx.remember_subscription(
                    &self.key,
                    &filter.path,
                    options.encode(),
                    filter.qos as u8,
                );
                let with_id =
                    options != v5::Options::default() || self.router_ids.contains(&filter.path);
                if with_id {
                    self.router_ids.insert(filter.path.clone());
                }
                let properties = SubscribeProperties {
                    id: with_id.then(|| options.encode()),
                    user_properties: Vec::new(),
                };
                let one = Subscribe {
                    pkid,
                    filters: vec![filter],
                };
                Packet::Subscribe(one, Some(properties))
            })
            .collect()
    }

    /// One notification from the router to the client. `Some`: the session ends. `now` is
    /// the clock of the batch it came in (see [`v5::Now`]).
    async fn outbound(
        &mut self,
        notification: Notification,
        out: &mut BytesMut,
        now: &mut v5::Now,
    ) -> Option<End> {
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
                let forwarded = match &other {
                    Notification::Forward(forward) => {
                        let publish = &forward.publish;
                        Some(Forwarded {
                            topic: publish.topic.clone(),
                            cursor: forward.cursor,
                            bytes: (4 + publish.topic.len() + publish.payload.len()) as u64,
                            pkid: None,
                        })
                    }
                    _ => None,
                };
                let start = out.len();
                let packet: Option<Packet> = other.into();
                match packet {
                    // The router's answer to a resumed session's filters put back: not the
                    // client's.
                    Some(Packet::SubAck(ack, _)) if ack.pkid == RESTORE_PKID => {}
                    Some(Packet::SubAck(mut ack, properties)) => {
                        // An MQTT 5 SUBSCRIBE went a filter at a time: one SUBACK for all.
                        if let Some((left, codes)) = self.split_subacks.get_mut(&ack.pkid) {
                            codes.append(&mut ack.return_codes);
                            *left = left.saturating_sub(1);
                            if *left > 0 {
                                return None;
                            }
                            if let Some((_, codes)) = self.split_subacks.remove(&ack.pkid) {
                                ack.return_codes = codes;
                            }
                        }
                        // What the router granted is measured from now on.
                        if let Some(filters) = self.subscribing.remove(&ack.pkid) {
                            for ((filter, _), code) in filters.iter().zip(&ack.return_codes) {
                                if let Some(qos) = granted_qos(code) {
                                    self.ctx.lag.subscribed(&self.key, self.conn, filter, qos);
                                }
                            }
                        }
                        if let Some(codes) = self.held_back.remove(&ack.pkid) {
                            let mut granted = ack.return_codes.into_iter();
                            ack.return_codes = codes
                                .into_iter()
                                .filter_map(|code| code.or_else(|| granted.next()))
                                .collect();
                        }
                        self.write(Packet::SubAck(ack, properties), out);
                    }
                    Some(Packet::PubAck(ack, properties)) => {
                        // A QoS 2 publish the router took as QoS 1: now it is received.
                        if self.qos2.get(&ack.pkid) == Some(&Qos2::Routing) {
                            let reason = match ack.reason {
                                PubAckReason::Success => PubRecReason::Success,
                                _ => PubRecReason::UnspecifiedError,
                            };
                            self.qos2.insert(ack.pkid, Qos2::Received(reason));
                            self.qos2_routing -= 1;
                            let rec = PubRec {
                                pkid: ack.pkid,
                                reason,
                            };
                            self.write(Packet::PubRec(rec, None), out);
                        } else {
                            self.qos1.remove(&ack.pkid);
                            self.write(Packet::PubAck(ack, properties), out);
                        }
                    }
                    Some(Packet::PubRel(rel, _)) if self.completing.remove(&rel.pkid) => {
                        let comp = PubComp {
                            pkid: rel.pkid,
                            reason: PubCompReason::Success,
                        };
                        self.ack_release(rel.pkid, Packet::PubComp(comp, None));
                    }
                    Some(Packet::Publish(publish, properties)) if self.codec == Codec::V5 => {
                        let sent = self.deliver(publish, properties, out, now);
                        if sent.is_some() {
                            self.delivered += 1;
                        }
                        if let Some(mut forwarded) = forwarded {
                            forwarded.pkid = sent.flatten();
                            self.forwarded.push(forwarded);
                        }
                    }
                    Some(packet) => {
                        if matches!(packet, Packet::Publish(..)) {
                            self.delivered += 1;
                        }
                        self.write(packet, out);
                        if let Some(mut forwarded) = forwarded {
                            // rumqttd keeps a forward's packet id private: read it back from
                            // the bytes.
                            forwarded.pkid = codec::publish_qos_pkid(&out[start..])
                                .and_then(|(qos, pkid)| (qos > 0).then_some(pkid));
                            self.forwarded.push(forwarded);
                        }
                    }
                    None => {}
                }
                None
            }
        }
    }

    /// Writes a forward for an MQTT 5 client as MQTT 5 says (see [`v5::deliver`]): at the
    /// lower of its published and granted QoS, with its remaining expiry, its subscription's
    /// retain flag and id; or not at all (expired, the client's own under No Local, a retained
    /// message Retain Handling declined, larger than the client accepts). What the client
    /// will not acknowledge as the router expects, the edge acknowledges to the router.
    /// Past the client's Receive Maximum it waits. Returns `None` if it is not sent, else its
    /// packet id if the client is to acknowledge it.
    fn deliver(
        &mut self,
        mut publish: Publish,
        properties: Option<PublishProperties>,
        out: &mut BytesMut,
        now: &mut v5::Now,
    ) -> Option<Option<u16>> {
        let start = out.len();
        let mut props = properties.unwrap_or_default();
        let (delivery, own) =
            v5::deliver(&mut props, &mut publish.retain, self.origin, || now.get());
        if own.is_empty() {
            let props = (!v5::is_empty(&props)).then_some(props);
            self.write(Packet::Publish(publish, props), out);
        } else {
            self.write_with(publish, props, &own, out);
        }
        // The QoS the router sent it at (it keeps that private): read off the bytes.
        let (router_qos, pkid) = codec::publish_qos_pkid(&out[start..])?;
        let mut dropped = match delivery {
            v5::Delivery::Drop(why) => Some(why),
            v5::Delivery::Send { .. } => None,
        };
        let mut sent_qos = router_qos;
        if let v5::Delivery::Send { max_qos } = delivery
            && max_qos < router_qos
        {
            // Published at a lower QoS than granted: rewritten at that QoS (a rare path, so
            // the written bytes are read back rather than every publish kept twice).
            let mut written = out.split_off(start);
            match self.codec.read(&mut written, usize::MAX) {
                Ok(Packet::Publish(publish, props)) => {
                    let lower = match max_qos {
                        0 => Publish::new(publish.topic, publish.payload, publish.retain),
                        _ => as_qos1(&publish, pkid),
                    };
                    self.write(Packet::Publish(lower, props), out);
                    sent_qos = max_qos;
                }
                _ => dropped = Some("unreadable"),
            }
        }
        if dropped.is_none() && out.len() - start > self.client_max_packet {
            dropped = Some("max_packet_size");
        }
        if let Some(why) = dropped {
            out.truncate(start);
            metrics::counter!(metric::NOT_DELIVERED_TOTAL, "reason" => why).increment(1);
            tracing::trace!(client_id = %self.client_id, why, "A forward was not sent");
        }
        if router_qos > 0 {
            self.ack_order.push_back((pkid, None));
        }
        // The router hears from the edge what it will not hear from the client.
        let client_acks = if dropped.is_some() { 0 } else { sent_qos };
        if client_acks > 0 {
            // The client's Receive Maximum: past it, the publish waits (in order) for one of
            // those in flight to be acknowledged.
            if self.inflight_out >= self.client_receive_max || !self.waiting_out.is_empty() {
                self.waiting_out.push(&out[start..]);
                out.truncate(start);
            } else {
                self.inflight_out += 1;
            }
        }
        // Going out now (not dropped, not waiting): its topic alias is decided here, in the
        // order the client reads (a waiting one gets its alias when it is released).
        if out.len() > start
            && let Some(aliases) = self.aliases.as_mut()
        {
            self.scratch.clear();
            self.scratch.extend_from_slice(&out[start..]);
            out.truncate(start);
            aliases.put(&self.scratch, self.client_max_packet, out);
        }
        match (router_qos, client_acks) {
            (1, 0) => {
                let ack = PubAck {
                    pkid,
                    reason: PubAckReason::Success,
                };
                self.ack_forward(pkid, Packet::PubAck(ack, None));
            }
            (2, 0) => {
                self.completing.insert(pkid);
                let rec = PubRec {
                    pkid,
                    reason: PubRecReason::Success,
                };
                self.ack_forward(pkid, Packet::PubRec(rec, None));
            }
            (2, 1) => {
                self.downgraded.insert(pkid);
            }
            _ => {}
        }
        dropped
            .is_none()
            .then_some((client_acks > 0).then_some(pkid))
    }

    /// A QoS 1/2 publish the client had in flight is done: the next waiting one, if any,
    /// goes out (into `out`).
    fn client_done(&mut self, out: &mut BytesMut) {
        self.inflight_out = self.inflight_out.saturating_sub(1);
        while self.inflight_out < self.client_receive_max
            && let Some(next) = self.waiting_out.front()
        {
            match self.aliases.as_mut() {
                Some(aliases) => aliases.put(next, self.client_max_packet, out),
                None => out.extend_from_slice(next),
            }
            self.waiting_out.pop();
            self.inflight_out += 1;
        }
    }

    /// The acknowledgement of forward `pkid` (from the client, or from the edge for it) is
    /// ready: it goes to the router with every one before it that is ready too.
    fn ack_forward(&mut self, pkid: u16, ack: Packet) {
        match self
            .ack_order
            .iter_mut()
            .find(|(id, ready)| *id == pkid && ready.is_none())
        {
            Some((_, ready)) => *ready = Some(ack),
            // Not a forward of this connection (one sent before a reconnect): passed on.
            None => self.queue_router_ack(ack),
        }
        while let Some((_, Some(_))) = self.ack_order.front() {
            if let Some((_, Some(ack))) = self.ack_order.pop_front() {
                self.queue_router_ack(ack);
            }
        }
    }

    /// The answer to the router's PUBREL `pkid` is ready; see [`Session::ack_forward`].
    fn ack_release(&mut self, pkid: u16, comp: Packet) {
        match self
            .release_order
            .iter_mut()
            .find(|(id, ready)| *id == pkid && ready.is_none())
        {
            Some((_, ready)) => *ready = Some(comp),
            None => self.router_acks.push(comp),
        }
        while let Some((_, Some(_))) = self.release_order.front() {
            if let Some((_, Some(comp))) = self.release_order.pop_front() {
                self.router_acks.push(comp);
            }
        }
    }

    /// Queues an acknowledgement for the router; a PUBREC's PUBREL will come back in this
    /// order, so its answer's place is taken now.
    fn queue_router_ack(&mut self, ack: Packet) {
        if let Packet::PubRec(rec, _) = &ack {
            self.release_order.push_back((rec.pkid, None));
        }
        self.router_acks.push(ack);
    }

    /// Writes an MQTT 5 publish with the publisher's own properties, `own` (encoded, as the
    /// full stamp carried them through the router), after those the edge sets: rumqttd's
    /// writer writes the head (it keeps QoS and packet id private), the rest is added in place.
    fn write_with(
        &mut self,
        mut publish: Publish,
        mut props: PublishProperties,
        own: &[u8],
        out: &mut BytesMut,
    ) {
        let payload = std::mem::take(&mut publish.payload);
        let edge = codec::DeliveryProperties {
            expiry: props.message_expiry_interval.take(),
            subscription_ids: std::mem::take(&mut props.subscription_identifiers),
        };
        let props = (!v5::is_empty(&props)).then_some(props);
        let start = out.len();
        if let Err(e) = self.codec.write(Packet::Publish(publish, props), out) {
            tracing::warn!(client_id = %self.client_id, error = %e, "A packet could not be encoded");
            out.truncate(start);
            return;
        }
        if !codec::complete_publish(out, start, &edge, own, &payload) {
            tracing::warn!(client_id = %self.client_id, "A publish could not be encoded");
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

/// Publishes written for an MQTT 5 client, waiting for room under its Receive Maximum, in
/// order: their frames one after the other in one buffer. A buffer per frame (split off the
/// write buffer) cost two allocations per waiting publish, one for it and one for the write
/// buffer it was taken from.
#[derive(Debug, Default)]
struct Waiting {
    frames: BytesMut,
    lens: VecDeque<usize>,
}

impl Waiting {
    fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    fn push(&mut self, frame: &[u8]) {
        self.frames.extend_from_slice(frame);
        self.lens.push_back(frame.len());
    }

    /// The first waiting frame.
    fn front(&self) -> Option<&[u8]> {
        self.lens.front().map(|len| &self.frames[..*len])
    }

    /// Drops the first waiting frame.
    fn pop(&mut self) {
        if let Some(len) = self.lens.pop_front() {
            self.frames.advance(len);
        }
    }
}

/// The packet id of the SUBSCRIBEs that put a resumed session's filters back: one no client
/// uses (MQTT's ids start at 1).
const RESTORE_PKID: u16 = 0;

/// A SUBSCRIBE putting back filter `path` of a resumed session with internal subscription id
/// `id` (the router has the filter: it takes the id, sends no retained message again).
fn restore_subscribe(path: String, id: usize, qos: u8) -> Packet {
    let filter = rumqttd::protocol::Filter {
        path,
        qos: rumqttd::protocol::qos(qos).unwrap_or(rumqttd::protocol::QoS::AtMostOnce),
        nolocal: false,
        preserve_retain: false,
        retain_forward_rule: RetainForwardRule::Never,
    };
    let subscribe = Subscribe {
        pkid: RESTORE_PKID,
        filters: vec![filter],
    };
    let properties = SubscribeProperties {
        id: Some(id),
        user_properties: Vec::new(),
    };
    Packet::Subscribe(subscribe, Some(properties))
}

/// Why a stuck subscriber's connection ends.
const TOO_SLOW: &str = "lagged behind for longer than broker.slow_subscriber_timeout: disconnected";

/// The QoS a SUBACK code grants, if it grants one.
fn granted_qos(code: &SubscribeReasonCode) -> Option<u8> {
    match code {
        SubscribeReasonCode::QoS0 => Some(0),
        SubscribeReasonCode::QoS1 => Some(1),
        SubscribeReasonCode::QoS2 => Some(2),
        SubscribeReasonCode::Success(qos) => Some(*qos as u8),
        _ => None,
    }
}

/// The same publish at QoS 1 with packet id `pkid` (rumqttd keeps QoS and packet id private:
/// its own serialized form is the one way to set them).
pub(crate) fn as_qos1(publish: &Publish, pkid: u16) -> Publish {
    let mut raw = BytesMut::with_capacity(5 + publish.topic.len() + publish.payload.len());
    raw.put_u8(0b0011_0010 | u8::from(publish.retain));
    raw.put_u16(pkid);
    // A topic read off the wire fits its two-byte length.
    raw.put_u16(u16::try_from(publish.topic.len()).unwrap_or(u16::MAX));
    raw.extend_from_slice(&publish.topic);
    raw.extend_from_slice(&publish.payload);
    Publish::deserialize(raw.freeze())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_subscription_is_checked_on_the_filter_it_shares() {
        assert_eq!(shared_filter("$share/workers/site/+/temp"), "site/+/temp");
        assert_eq!(shared_filter("site/#"), "site/#");
        // No filter after the group: checked as it is (and refused as an invalid filter).
        assert_eq!(shared_filter("$share/workers"), "$share/workers");
    }

    #[test]
    fn a_qos2_publish_becomes_qos1_with_its_packet_id() {
        let publish = Publish::new("a/b", "payload", true);
        let mut out = BytesMut::new();
        Codec::V4
            .write(Packet::Publish(as_qos1(&publish, 0x0102), None), &mut out)
            .unwrap();
        assert_eq!(codec::publish_qos_pkid(&out), Some((1, 0x0102)));
        assert_eq!(out[0] & 1, 1, "retain kept");
        assert!(out.ends_with(b"payload"));
    }
}
