//! The local broker seen from inside the process: [`BrokerBus`] implements core's
//! [`LocalBus`], and [`BrokerBus::tap`] feeds ingress with what network clients publish.
//!
//! The tap must leave in-process publishes out: a value that ingress already stored (or a
//! command from the cloud) would otherwise be routed to the outbox a second time when the tap
//! sees it come back from the broker. rumqttd tells the tap nothing about a publish's origin,
//! and a marker property is no way out (rumqttd 0.20 panics when it forwards a publish with
//! properties to an MQTT 3.1.1 client). So the bus keeps a ledger of the in-process publishes
//! the tap has yet to see, by a hash of topic and payload, and the tap skips one matching
//! publish per entry. When a network client publishes exactly the same topic and payload at
//! the same moment, one of the two is skipped and the other stored: the same outcome. The tap,
//! and with it the ledger, goes away once the broker's own edge hands client publishes to
//! ingress directly.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;

use bytes::Bytes;
use fieldlink_core::message::{Message, QoS};
use fieldlink_core::ports::{BoxFuture, BusError, LocalBus};
use fieldlink_core::shutdown::Shutdown;
use fieldlink_core::topic::{TopicFilter, TopicName};
use rumqttd::Notification;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish};
use tokio::sync::{Mutex, mpsc};

use crate::LinkFactory;

/// Most in-process publishes the tap may still have to see; past it (the tap fell behind and
/// lost messages) the ledger starts again, and at worst a few echoes are stored twice.
const LEDGER_CAP: usize = 8192;

/// Publishes onto, and subscribes to, the local broker from inside the process.
#[derive(Clone)]
pub struct BrokerBus {
    links: LinkFactory,
    publisher: Arc<Mutex<Publisher>>,
    echoes: Arc<std::sync::Mutex<Echoes>>,
    shutdown: Shutdown,
}

/// In-process publishes that the tap has not seen yet, counted by [`echo_key`].
#[derive(Default)]
struct Echoes {
    /// Only kept while a tap runs; without one nothing would ever take entries out.
    active: bool,
    pending: HashMap<u64, u32>,
}

impl Echoes {
    fn expect(&mut self, key: u64) {
        if !self.active {
            return;
        }
        if self.pending.len() >= LEDGER_CAP {
            tracing::warn!("The ingress tap fell behind; its echo ledger starts again");
            self.pending.clear();
        }
        *self.pending.entry(key).or_default() += 1;
    }

    /// Whether `key` was an in-process publish (and takes one entry out).
    fn take(&mut self, key: u64) -> bool {
        match self.pending.get_mut(&key) {
            Some(1) => {
                self.pending.remove(&key);
                true
            }
            Some(n) => {
                *n -= 1;
                true
            }
            None => false,
        }
    }
}

fn echo_key(topic: &[u8], payload: &[u8]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    topic.hash(&mut hasher);
    payload.hash(&mut hasher);
    hasher.finish()
}

/// The one link every in-process publish goes through; its receiving half must stay alive or
/// the router drops the link.
struct Publisher {
    tx: LinkTx,
    _rx: LinkRx,
}

impl BrokerBus {
    pub(crate) fn new(links: LinkFactory, shutdown: Shutdown) -> Result<Self, BusError> {
        let (tx, rx) = links("fieldlink-bus").map_err(BusError::Refused)?;
        Ok(Self {
            links,
            publisher: Arc::new(Mutex::new(Publisher { tx, _rx: rx })),
            echoes: Arc::default(),
            shutdown,
        })
    }

    /// Every message that a network client publishes (topics starting with `$` aside), as it
    /// is routed, until shutdown. In-process publishes are left out (see the module
    /// documentation). The tap subscribes like a client at QoS 0: a tap that falls behind
    /// rumqttd's log loses the oldest messages.
    ///
    /// Must be called from a tokio runtime; blocks briefly while the router registers the link.
    pub fn tap(&self, name: &str, capacity: usize) -> Result<mpsc::Receiver<Message>, BusError> {
        self.lock_echoes().active = true;
        self.follow(name, "#", capacity, Origin::NetworkOnly)
    }

    fn lock_echoes(&self) -> std::sync::MutexGuard<'_, Echoes> {
        // The ledger stays consistent whatever panicked while holding it.
        self.echoes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn follow(
        &self,
        name: &str,
        filter: &str,
        capacity: usize,
        origin: Origin,
    ) -> Result<mpsc::Receiver<Message>, BusError> {
        let (mut link_tx, mut link_rx) = (self.links)(name).map_err(BusError::Refused)?;
        link_tx
            .subscribe(filter)
            .map_err(|e| BusError::Refused(e.to_string()))?;
        let (tx, rx) = mpsc::channel(capacity);
        let name = name.to_owned();
        let shutdown = self.shutdown.clone();
        let bus = self.clone();
        tokio::spawn(async move {
            // The link must stay alive as long as we read from it.
            let _link_tx = link_tx;
            loop {
                let notification = tokio::select! {
                    n = link_rx.next() => n,
                    () = shutdown.cancelled() => break,
                    () = tx.closed() => break,
                };
                match notification {
                    Ok(Some(Notification::Forward(forward))) => {
                        let publish = forward.publish;
                        if origin == Origin::NetworkOnly
                            && bus
                                .lock_echoes()
                                .take(echo_key(&publish.topic, &publish.payload))
                        {
                            continue;
                        }
                        let Some(message) =
                            to_message(&publish.topic, publish.payload.to_vec(), publish.retain)
                        else {
                            continue;
                        };
                        if tx.send(message).await.is_err() {
                            break;
                        }
                    }
                    // rumqttd pauses a link after a burst; it must be re-armed or it stalls.
                    Ok(Some(Notification::Unschedule)) => {
                        if link_rx.wake().await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(link = %name, error = %e, "Broker link closed");
                        break;
                    }
                }
            }
        });
        Ok(rx)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Any,
    NetworkOnly,
}

impl LocalBus for BrokerBus {
    fn publish(&self, message: Message) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            if self.shutdown.is_triggered() {
                return Err(BusError::Closed);
            }
            // QoS 0 (rumqttd's only choice for in-process links): the hand-over cannot be
            // lost, and the router delivers to each subscriber at the QoS it subscribed with.
            let publish = Publish::new(
                Bytes::from(message.topic.as_str().to_owned()),
                Bytes::from(message.payload),
                message.retain,
            );
            if !message.topic.as_str().starts_with('$') {
                self.lock_echoes()
                    .expect(echo_key(&publish.topic, &publish.payload));
            }
            let mut publisher = self.publisher.lock().await;
            publisher
                .tx
                .send(Packet::Publish(publish, None))
                .await
                .map(drop)
                .map_err(|_| BusError::Closed)
        })
    }

    fn subscribe(
        &self,
        filter: &TopicFilter,
        capacity: usize,
    ) -> Result<mpsc::Receiver<Message>, BusError> {
        let name = format!("fieldlink-sub-{}", next_link_number());
        self.follow(&name, filter.as_str(), capacity, Origin::Any)
    }
}

fn next_link_number() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A routed publish as a [`Message`]; `None` (and logged) for a topic that is not valid UTF-8
/// or not a valid name, which rumqttd should never route.
fn to_message(topic: &[u8], payload: Vec<u8>, retain: bool) -> Option<Message> {
    let topic = std::str::from_utf8(topic)
        .ok()
        .and_then(|t| TopicName::new(t).ok());
    let Some(topic) = topic else {
        tracing::warn!("Broker routed a publish with an invalid topic; ignored");
        return None;
    };
    Some(Message {
        topic,
        payload,
        // Links read at QoS 0; what goes to the cloud is sent at least once.
        qos: QoS::AtLeastOnce,
        retain,
    })
}

impl std::fmt::Debug for BrokerBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerBus").finish_non_exhaustive()
    }
}
