//! MQTT 5 behaviours a client sees through the edge (issue #17), each checked with rumqttc's
//! MQTT 5 client (an independent implementation of the protocol), and raw sockets where a
//! library would hide what the broker sent or would not misbehave.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::Edge;
use common::raw::{Connect, Raw, Read};
use fieldlink_test_support::free_port;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnAckProperties, Packet, Publish, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};

/// A broker with one plain listener on loopback and `broker` as its `[broker]` settings.
async fn edge(broker: &str) -> (Edge, u16) {
    let port = free_port();
    let edge = Edge::start(&format!(
        "[broker]\n{broker}\n[[broker.listeners]]\nport = {port}\n"
    ))
    .await;
    (edge, port)
}

/// An MQTT 5 client, connected: its handle, its event loop and its CONNACK's properties.
async fn client(
    port: u16,
    id: &str,
    tune: impl FnOnce(&mut MqttOptions),
) -> (AsyncClient, EventLoop, ConnAckProperties) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    tune(&mut options);
    let (client, mut events) = AsyncClient::new(options, 100);
    let props = loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                break ack
                    .properties
                    .expect("an MQTT 5 CONNACK has properties here");
            }
            Ok(Ok(_)) => {}
            other => panic!("{id}: no CONNACK: {other:?}"),
        }
    };
    (client, events, props)
}

/// Polls `events` until a SUBACK comes.
async fn subscribed(events: &mut EventLoop) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => return,
            Ok(Ok(_)) => {}
            other => panic!("no SUBACK: {other:?}"),
        }
    }
}

/// Drives `events` in the background, collecting every publish received until it is aborted
/// or its connection ends.
fn collect(
    mut events: EventLoop,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<Publish>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(p);
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    (task, rx)
}

/// Drives a publisher's event loop in the background.
fn drive(mut events: EventLoop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while events.poll().await.is_ok() {} })
}

/// The next publish received within `limit`, if any.
async fn next(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Publish>,
    limit: Duration,
) -> Option<Publish> {
    tokio::time::timeout(limit, rx.recv()).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_above_the_maximum_is_replaced_and_announced() {
    let (edge, port) = edge("max_keep_alive = \"6s\"").await;
    // rumqttc asks for an hour: it is told six seconds.
    let (_c, _events, props) = client(port, "long-keep-alive", |o| {
        o.set_keep_alive(Duration::from_secs(3600));
    })
    .await;
    assert_eq!(props.server_keep_alive, Some(6));
    // One within the maximum is left alone (no Server Keep Alive).
    let (_c2, _events2, props) = client(port, "short-keep-alive", |o| {
        o.set_keep_alive(Duration::from_secs(5));
    })
    .await;
    assert_eq!(props.server_keep_alive, None);

    // 3.1.1 is not told (it has no way to be): its own keep-alive stands.
    let connect = Connect {
        level: 4,
        client_id: b"v4-long",
        keep_alive: 3600,
        ..Connect::default()
    };
    let (mut v4, ack) = Raw::connect(port, &connect).await;
    assert_eq!(ack, Read::Packet(0x20, vec![0, 0]));
    // A client asking for none is given the maximum too, and held to it: silent, it is
    // disconnected after 1.5 × 6 s, not before 6 s.
    let connect = Connect {
        level: 5,
        client_id: b"no-keep-alive",
        keep_alive: 0,
        ..Connect::default()
    };
    let (mut raw, ack) = Raw::connect(port, &connect).await;
    assert_eq!(ack.kind(), Some(2), "{ack:?}");
    // Server Keep Alive (0x13) = 6 among the CONNACK's properties.
    assert!(
        ack.body().windows(3).any(|w| w == [0x13, 0, 6]),
        "{:?}",
        ack.body()
    );
    assert!(
        !raw.closed_within(Duration::from_secs(6)).await,
        "closed before its keep-alive"
    );
    assert!(
        raw.closed_within(Duration::from_secs(6)).await,
        "kept open past 1.5 × the keep-alive"
    );
    assert!(
        !v4.closed_within(Duration::from_millis(500)).await,
        "the 3.1.1 client silent as long is still connected"
    );
    edge.stop().await;
}
