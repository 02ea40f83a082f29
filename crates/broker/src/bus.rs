//! The local broker seen from inside the process: [`BrokerBus`] implements core's
//! [`LocalBus`]. What is published here reaches local subscribers only; routing to the cloud
//! is ingress's job, done before a message reaches the broker.

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

use crate::INTERNAL_CLIENT_PREFIX;
use crate::edge::SessionLinks;

/// Publishes onto, and subscribes to, the local broker from inside the process.
#[derive(Clone)]
pub struct BrokerBus {
    links: SessionLinks,
    publisher: Arc<Mutex<Publisher>>,
    shutdown: Shutdown,
}

/// The one link every in-process publish goes through; its receiving half must stay alive or
/// the router drops the link.
struct Publisher {
    tx: LinkTx,
    _rx: LinkRx,
}

impl BrokerBus {
    pub(crate) fn new(links: SessionLinks, shutdown: Shutdown) -> Result<Self, BusError> {
        let name = format!("{INTERNAL_CLIENT_PREFIX}bus");
        let (tx, rx, _) = links(&name, true).map_err(BusError::Refused)?;
        Ok(Self {
            links,
            publisher: Arc::new(Mutex::new(Publisher { tx, _rx: rx })),
            shutdown,
        })
    }
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
            // MQTT 5 subscribers get it at the lower of its QoS and theirs (see `edge::v5`).
            let properties = crate::edge::v5::compact_stamp(message.qos as u8, message.retain);
            let mut publisher = self.publisher.lock().await;
            publisher
                .tx
                .send(Packet::Publish(publish, Some(properties)))
                .await
                .map(drop)
                .map_err(|_| BusError::Closed)
        })
    }

    /// Opens a link of its own (blocks briefly while the router registers it).
    fn subscribe(
        &self,
        filter: &TopicFilter,
        capacity: usize,
    ) -> Result<mpsc::Receiver<Message>, BusError> {
        let name = format!("{INTERNAL_CLIENT_PREFIX}sub-{}", next_link_number());
        let (mut link_tx, mut link_rx, _) = (self.links)(&name, true).map_err(BusError::Refused)?;
        link_tx
            .subscribe(filter.as_str())
            .map_err(|e| BusError::Refused(e.to_string()))?;
        let (tx, rx) = mpsc::channel(capacity);
        let shutdown = self.shutdown.clone();
        // Tracked, not vital: it ends, normally, when its reader goes away.
        self.shutdown.spawn(async move {
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
