//! One MQTT session with the cloud broker, over rumqttc v3.1.1 or v5, reduced to the few
//! events the drain loop needs.

use std::error::Error as StdError;
use std::time::Duration;

use fieldlink_core::config::MqttVersion;
use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, PubAckReason, SubscribeReasonCode};
use rumqttc::{Event, Incoming, Outgoing, Transport};

use crate::config::UplinkSettings;
use crate::credentials::Login;

/// What happened on the session.
#[derive(Debug)]
pub(crate) enum SessionEvent {
    /// The broker accepted the connection; an MQTT 5 broker may say how many QoS 1 publishes
    /// it takes unacknowledged (its Receive Maximum).
    Connected { receive_maximum: Option<u16> },
    /// A publish left with this packet id (0 for QoS 0).
    Sent(u16),
    /// The broker acknowledged a publish; `refused` holds its reason when it refused it (v5).
    Acked { pkid: u16, refused: Option<String> },
    /// The broker answered our subscription: for each filter, in order, whether it refused it
    /// (and why).
    Subscribed(Vec<Option<String>>),
    /// A message arrived on a subscribed topic.
    Received { topic: String, payload: Vec<u8> },
    /// A keep-alive PINGREQ left; its PINGRESP is awaited.
    PingSent,
    /// The cloud answered a PINGREQ.
    PingAnswered,
    /// Anything else (acks of our own subscriptions' packets, our own PUBACKs).
    Other,
}

/// A failed session, with the error chain kept for diagnosis.
pub(crate) type SessionError = Box<dyn StdError + Send + Sync>;

pub(crate) enum Session {
    V4 {
        client: rumqttc::AsyncClient,
        events: Box<rumqttc::EventLoop>,
    },
    V5 {
        client: rumqttc::v5::AsyncClient,
        events: Box<rumqttc::v5::EventLoop>,
    },
}

impl Session {
    /// A session to `host:port` over `transport`, logging in with `login` when given; nothing
    /// is sent until the first poll.
    /// `connect_limit` bounds everything up to the CONNACK (and each flush): the bridge's own
    /// steps have their own, shorter timeouts, this is the backstop.
    pub(crate) fn new(
        settings: &UplinkSettings,
        host: &str,
        port: u16,
        transport: Transport,
        connect_limit: Duration,
        login: Option<&Login>,
    ) -> Self {
        let mut network = rumqttc::NetworkOptions::new();
        network.set_connection_timeout(connect_limit.as_secs().max(1));
        // The drain loop never has more than `inflight` publishes outstanding; the request
        // channel only needs that much room (plus the alarm and subscriptions).
        let capacity = usize::from(settings.inflight) + 16;
        match settings.mqtt {
            MqttVersion::V311 => {
                let mut options = rumqttc::MqttOptions::new(&settings.client_id, host, port);
                options
                    .set_transport(transport)
                    .set_keep_alive(settings.keep_alive)
                    .set_clean_session(settings.clean_session)
                    .set_inflight(settings.inflight);
                if let Some(login) = login {
                    options.set_credentials(login.username.as_str(), login.password.as_str());
                }
                let (client, mut events) = rumqttc::AsyncClient::new(options, capacity);
                events.set_network_options(network);
                Self::V4 {
                    client,
                    events: Box::new(events),
                }
            }
            MqttVersion::V5 => {
                let mut options = rumqttc::v5::MqttOptions::new(&settings.client_id, host, port);
                options
                    .set_transport(transport)
                    .set_keep_alive(settings.keep_alive)
                    .set_clean_start(settings.clean_session)
                    .set_outgoing_inflight_upper_limit(settings.inflight)
                    .set_network_options(network);
                if let Some(login) = login {
                    options.set_credentials(login.username.as_str(), login.password.as_str());
                }
                let (client, events) = rumqttc::v5::AsyncClient::new(options, capacity);
                Self::V5 {
                    client,
                    events: Box::new(events),
                }
            }
        }
    }

    pub(crate) async fn poll(&mut self) -> Result<SessionEvent, SessionError> {
        match self {
            Self::V4 { events, .. } => Ok(match events.poll().await? {
                Event::Incoming(Incoming::ConnAck(_)) => SessionEvent::Connected {
                    receive_maximum: None,
                },
                Event::Incoming(Incoming::PubAck(ack)) => SessionEvent::Acked {
                    pkid: ack.pkid,
                    refused: None,
                },
                Event::Outgoing(Outgoing::Publish(pkid)) => SessionEvent::Sent(pkid),
                Event::Incoming(Incoming::SubAck(ack)) => SessionEvent::Subscribed(
                    ack.return_codes
                        .iter()
                        .map(|code| match code {
                            rumqttc::SubscribeReasonCode::Success(_) => None,
                            rumqttc::SubscribeReasonCode::Failure => Some("Failure".into()),
                        })
                        .collect(),
                ),
                Event::Incoming(Incoming::Publish(publish)) => SessionEvent::Received {
                    topic: publish.topic,
                    payload: publish.payload.to_vec(),
                },
                Event::Outgoing(Outgoing::PingReq) => SessionEvent::PingSent,
                Event::Incoming(Incoming::PingResp) => SessionEvent::PingAnswered,
                _ => SessionEvent::Other,
            }),
            Self::V5 { events, .. } => Ok(match events.poll().await? {
                rumqttc::v5::Event::Incoming(Packet5::ConnAck(ack)) => SessionEvent::Connected {
                    receive_maximum: ack.properties.and_then(|p| p.receive_max),
                },
                rumqttc::v5::Event::Incoming(Packet5::PubAck(ack)) => {
                    let refused = match ack.reason {
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => None,
                        reason => {
                            let text = ack
                                .properties
                                .as_ref()
                                .and_then(|p| p.reason_string.clone());
                            Some(match text {
                                Some(text) => format!("{reason:?}: {text}"),
                                None => format!("{reason:?}"),
                            })
                        }
                    };
                    SessionEvent::Acked {
                        pkid: ack.pkid,
                        refused,
                    }
                }
                rumqttc::v5::Event::Outgoing(Outgoing::Publish(pkid)) => SessionEvent::Sent(pkid),
                rumqttc::v5::Event::Incoming(Packet5::SubAck(ack)) => SessionEvent::Subscribed(
                    ack.return_codes
                        .iter()
                        .map(|code| match code {
                            SubscribeReasonCode::Success(_) => None,
                            refused => Some(format!("{refused:?}")),
                        })
                        .collect(),
                ),
                rumqttc::v5::Event::Incoming(Packet5::Publish(publish)) => {
                    match String::from_utf8(publish.topic.to_vec()) {
                        Ok(topic) => SessionEvent::Received {
                            topic,
                            payload: publish.payload.to_vec(),
                        },
                        Err(_) => SessionEvent::Other,
                    }
                }
                rumqttc::v5::Event::Outgoing(Outgoing::PingReq) => SessionEvent::PingSent,
                rumqttc::v5::Event::Incoming(Packet5::PingResp(_)) => SessionEvent::PingAnswered,
                _ => SessionEvent::Other,
            }),
        }
    }

    /// Queues a QoS 1 publish (never waits: the caller keeps within the inflight window).
    /// Publishes at QoS 1. With MQTT 5, `id` (a user property's name and value) goes along;
    /// MQTT 3.1.1 has no properties and drops it.
    pub(crate) fn publish(
        &self,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
        id: Option<(&str, i64)>,
    ) -> Result<(), SessionError> {
        match self {
            Self::V4 { client, .. } => {
                client.try_publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload)?
            }
            Self::V5 { client, .. } => {
                let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
                match id {
                    None => client.try_publish(topic, qos, retain, payload)?,
                    Some((name, id)) => {
                        let properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
                            user_properties: vec![(name.to_owned(), id.to_string())],
                            ..Default::default()
                        };
                        client
                            .try_publish_with_properties(topic, qos, retain, payload, properties)?
                    }
                }
            }
        }
        Ok(())
    }

    /// Subscribes to `filters` at QoS 1, in one SUBSCRIBE (so the SUBACK's codes come in the
    /// same order).
    pub(crate) fn subscribe(&self, filters: &[String]) -> Result<(), SessionError> {
        match self {
            Self::V4 { client, .. } => client.try_subscribe_many(
                filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), rumqttc::QoS::AtLeastOnce)),
            )?,
            Self::V5 { client, .. } => client.try_subscribe_many(filters.iter().map(|f| {
                rumqttc::v5::mqttbytes::v5::Filter::new(
                    f.clone(),
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                )
            }))?,
        }
        Ok(())
    }

    /// Says goodbye to the broker (best effort, bounded).
    pub(crate) async fn disconnect(&mut self) {
        let sent = match self {
            Self::V4 { client, .. } => client.try_disconnect().is_ok(),
            Self::V5 { client, .. } => client.try_disconnect().is_ok(),
        };
        if sent {
            // Drive the event loop until the DISCONNECT is on the wire.
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while self.poll().await.is_ok() {}
            })
            .await;
        }
    }
}
