//! MQTT 5 behaviours a client sees through the edge (issue #17), each checked with rumqttc's
//! MQTT 5 client (an independent implementation of the protocol), and raw sockets where a
//! library would hide what the broker sent or would not misbehave.

mod common;

use std::time::Duration;

use common::Edge;
use common::raw::{Connect, Raw, Read};
use fieldlink_test_support::free_port;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAckProperties, Filter, Packet, Publish, PublishProperties, RetainForwardRule,
    SubscribeProperties,
};
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

/// A subscriber on `filters` (each its own SUBSCRIBE, with `id` as its subscription id when
/// given), its publishes collected.
async fn subscriber(
    port: u16,
    id: &str,
    filters: Vec<(Filter, Option<usize>)>,
) -> (
    AsyncClient,
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<Publish>,
) {
    let (client, mut events, _) = self::client(port, id, |_| {}).await;
    for (filter, sub_id) in filters {
        let props = SubscribeProperties {
            id: sub_id,
            user_properties: Vec::new(),
        };
        client
            .subscribe_many_with_properties([filter], props)
            .await
            .unwrap();
        subscribed(&mut events).await;
    }
    let (task, rx) = collect(events);
    (client, task, rx)
}

fn filter(path: &str, qos: QoS) -> Filter {
    Filter::new(path, qos)
}

/// Every publish that arrives within `limit`.
async fn all(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Publish>,
    limit: Duration,
) -> Vec<Publish> {
    let mut got = Vec::new();
    while let Some(p) = next(rx, limit).await {
        got.push(p);
    }
    got
}

fn payload(p: &Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_qos_is_the_lower_of_published_and_granted_retained_included() {
    let (edge, port) = edge("").await;
    let (_s, _task, mut rx) = subscriber(
        port,
        "qos2-sub",
        vec![(filter("q/#", QoS::ExactlyOnce), None)],
    )
    .await;
    let (_s1, _task1, mut rx1) = subscriber(
        port,
        "qos1-sub",
        vec![(filter("q/#", QoS::AtLeastOnce), None)],
    )
    .await;
    let (publisher, events, _) = client(port, "qos-pub", |_| {}).await;
    let _driver = drive(events);
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let text = format!("{}", qos as u8);
        publisher.publish("q/live", qos, false, text).await.unwrap();
    }
    publisher
        .publish("q/kept", QoS::AtLeastOnce, true, "retained-1")
        .await
        .unwrap();
    let got = all(&mut rx, Duration::from_secs(2)).await;
    let seen: Vec<(String, u8)> = got.iter().map(|p| (payload(p), p.qos as u8)).collect();
    assert_eq!(
        seen,
        [
            ("0".into(), 0),
            ("1".into(), 1),
            ("2".into(), 2),
            ("retained-1".into(), 1)
        ]
    );
    // Granted QoS 1: a QoS 2 publish comes at 1 (and is acknowledged once, as QoS 1).
    let seen: Vec<(String, u8)> = all(&mut rx1, Duration::from_secs(1))
        .await
        .iter()
        .map(|p| (payload(p), p.qos as u8))
        .collect();
    assert_eq!(
        seen,
        [
            ("0".into(), 0),
            ("1".into(), 1),
            ("2".into(), 1),
            ("retained-1".into(), 1)
        ]
    );
    // The retained message, to a new QoS 2 subscription: at its own QoS 1, retain set.
    let (_s2, _task2, mut rx2) = subscriber(
        port,
        "late-sub",
        vec![(filter("q/kept", QoS::ExactlyOnce), None)],
    )
    .await;
    let kept = next(&mut rx2, Duration::from_secs(5))
        .await
        .expect("retained");
    assert_eq!(
        (payload(&kept).as_str(), kept.qos as u8, kept.retain),
        ("retained-1", 1, true)
    );
    // The subscription still works after the downgraded deliveries were acknowledged for the
    // client (the router's in-flight window is not left full).
    for i in 0..300 {
        publisher
            .publish("q/live", QoS::AtMostOnce, false, format!("more-{i}"))
            .await
            .unwrap();
    }
    let more = all(&mut rx, Duration::from_secs(2)).await;
    assert_eq!(more.len(), 300);
    assert!(more.iter().all(|p| p.qos == QoS::AtMostOnce));
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_retain_as_published_and_retain_handling_are_honoured() {
    let (edge, port) = edge("").await;
    let (publisher, events, _) = client(port, "opts-pub", |_| {}).await;
    let _driver = drive(events);
    publisher
        .publish("o/kept", QoS::AtLeastOnce, true, "old")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // No Local: a client subscribed with it does not get its own publishes; others' it does.
    let mut own = filter("o/#", QoS::AtLeastOnce);
    own.nolocal = true;
    own.retain_forward_rule = RetainForwardRule::Never;
    let (me, _task, mut mine) = subscriber(port, "opts-me", vec![(own, None)]).await;
    // Retain As Published, and retained messages sent on every SUBSCRIBE (the default).
    let mut as_published = filter("o/#", QoS::AtLeastOnce);
    as_published.preserve_retain = true;
    let (_rap, _task2, mut rap) = subscriber(port, "opts-rap", vec![(as_published, None)]).await;
    // Neither: the retain flag is cleared on live messages.
    let (_plain, _task3, mut plain) = subscriber(
        port,
        "opts-plain",
        vec![(filter("o/#", QoS::AtLeastOnce), None)],
    )
    .await;

    // Retain Handling 2 ("never"): no retained message on subscribing.
    assert!(next(&mut mine, Duration::from_millis(700)).await.is_none());
    let first = next(&mut rap, Duration::from_secs(5))
        .await
        .expect("retained");
    assert_eq!((payload(&first).as_str(), first.retain), ("old", true));
    let first = next(&mut plain, Duration::from_secs(5))
        .await
        .expect("retained");
    assert_eq!((payload(&first).as_str(), first.retain), ("old", true));

    me.publish("o/mine", QoS::AtLeastOnce, false, "from-me")
        .await
        .unwrap();
    publisher
        .publish("o/live", QoS::AtLeastOnce, true, "live-retained")
        .await
        .unwrap();
    let got: Vec<String> = all(&mut mine, Duration::from_secs(1))
        .await
        .iter()
        .map(payload)
        .collect();
    assert_eq!(got, ["live-retained"], "its own publish came back");
    // (Two publishers: their messages may come in either order.)
    let mut got: Vec<(String, bool)> = all(&mut rap, Duration::from_secs(1))
        .await
        .iter()
        .map(|p| (payload(p), p.retain))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [("from-me".into(), false), ("live-retained".into(), true)]
    );
    let mut got: Vec<(String, bool)> = all(&mut plain, Duration::from_secs(1))
        .await
        .iter()
        .map(|p| (payload(p), p.retain))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [("from-me".into(), false), ("live-retained".into(), false)]
    );

    // Retain Handling 1: retained messages for a new subscription only, not a repeated one.
    let (client, mut events, _) = client(port, "opts-new-only", |_| {}).await;
    let mut new_only = filter("o/kept", QoS::AtLeastOnce);
    new_only.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
    let mut retained = 0;
    for _ in 0..2 {
        client.subscribe_many([new_only.clone()]).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, events.poll()).await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                assert_eq!(payload(&p), "old");
                retained += 1;
            }
        }
    }
    assert_eq!(
        retained, 1,
        "the retained message came with the first SUBSCRIBE only"
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_identifiers_come_back_with_matching_publishes() {
    let (edge, port) = edge("").await;
    let (_s, _task, mut rx) = subscriber(
        port,
        "ids-sub",
        vec![
            (filter("i/+", QoS::AtLeastOnce), Some(7)),
            (filter("i/x", QoS::AtLeastOnce), Some(300_000)),
            (filter("j/#", QoS::AtLeastOnce), None),
            // Subscribed again without an id: the new subscription has none (the router alone
            // kept the old one).
            (filter("k/#", QoS::AtLeastOnce), Some(5)),
            (filter("k/#", QoS::AtLeastOnce), None),
        ],
    )
    .await;
    let (publisher, events, _) = client(port, "ids-pub", |_| {}).await;
    let _driver = drive(events);
    publisher
        .publish("i/x", QoS::AtLeastOnce, false, "both")
        .await
        .unwrap();
    publisher
        .publish("i/y", QoS::AtLeastOnce, false, "one")
        .await
        .unwrap();
    publisher
        .publish("j/z", QoS::AtLeastOnce, false, "none")
        .await
        .unwrap();
    publisher
        .publish("k/z", QoS::AtLeastOnce, false, "replaced")
        .await
        .unwrap();
    let mut got: Vec<(String, Vec<usize>)> = all(&mut rx, Duration::from_secs(1))
        .await
        .iter()
        .map(|p| {
            let ids = p
                .properties
                .as_ref()
                .map(|props| props.subscription_identifiers.clone())
                .unwrap_or_default();
            (payload(p), ids)
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("both".into(), vec![7]),
            ("both".into(), vec![300_000]),
            ("none".into(), vec![]),
            ("one".into(), vec![7]),
            ("replaced".into(), vec![]),
        ]
    );
    // An id past what the edge can carry is refused in the SUBACK (0x83), not mangled.
    let (client, mut events, _) = client(port, "ids-big", |_| {}).await;
    let props = SubscribeProperties {
        id: Some(268_435_455),
        user_properties: Vec::new(),
    };
    client
        .subscribe_with_properties("i/big", QoS::AtLeastOnce, props)
        .await
        .unwrap();
    let ack = loop {
        match tokio::time::timeout(Duration::from_secs(5), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(ack)))) => break ack,
            Ok(Ok(_)) => {}
            other => panic!("no SUBACK: {other:?}"),
        }
    };
    assert_eq!(
        ack.return_codes,
        [rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::ImplementationSpecific]
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_message_is_not_delivered_and_a_delivered_one_carries_what_is_left() {
    let (edge, port) = edge("").await;
    let (publisher, events, _) = client(port, "exp-pub", |_| {}).await;
    let _driver = drive(events);
    let expiring = |secs| PublishProperties {
        message_expiry_interval: Some(secs),
        ..PublishProperties::default()
    };
    let start = tokio::time::Instant::now();
    publisher
        .publish_with_properties("e/short", QoS::AtLeastOnce, true, "short", expiring(2))
        .await
        .unwrap();
    publisher
        .publish_with_properties("e/long", QoS::AtLeastOnce, true, "long", expiring(10))
        .await
        .unwrap();
    // A retained message read by several subscribers over time lives its whole interval
    // (rumqttd's router alone takes the time spent off the stored interval at every read:
    // read at 3 s and 6 s, a 10 s message was gone at 7.5 s), and each reader is told what is
    // left of it; the one past its interval is not delivered.
    for (at, left) in [(3000, 7), (6000, 4), (7500, 3)] {
        tokio::time::sleep_until(start + Duration::from_millis(at)).await;
        let (_s, _task, mut rx) = subscriber(
            port,
            &format!("exp-sub-{at}"),
            vec![(filter("e/#", QoS::AtLeastOnce), None)],
        )
        .await;
        let got = all(&mut rx, Duration::from_millis(300)).await;
        assert_eq!(
            got.iter().map(payload).collect::<Vec<_>>(),
            ["long"],
            "at {at} ms"
        );
        let told = got[0]
            .properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval);
        assert_eq!(told, Some(left), "at {at} ms");
    }
    // Live: the interval is passed on (whole seconds, rounded up), the stamp is not.
    let (_s, _task, mut rx) = subscriber(
        port,
        "exp-live",
        vec![(filter("e/live", QoS::AtLeastOnce), None)],
    )
    .await;
    publisher
        .publish_with_properties("e/live", QoS::AtLeastOnce, false, "live", expiring(30))
        .await
        .unwrap();
    let live = next(&mut rx, Duration::from_secs(5)).await.expect("live");
    let props = live.properties.expect("properties");
    assert_eq!(props.message_expiry_interval, Some(30));
    assert!(
        props.user_properties.is_empty(),
        "{:?}",
        props.user_properties
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_between_two_clients_keep_their_properties() {
    let (edge, port) = edge("").await;
    let (responder, mut responder_events, _) = client(port, "responder", |_| {}).await;
    responder
        .subscribe("svc/requests", QoS::AtLeastOnce)
        .await
        .unwrap();
    subscribed(&mut responder_events).await;
    let (_requester, _task, mut replies) = subscriber(
        port,
        "requester",
        vec![(filter("svc/replies/requester", QoS::AtLeastOnce), None)],
    )
    .await;
    let answer = tokio::spawn(async move {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(request))) = responder_events.poll().await {
                let props = request.properties.clone().expect("request properties");
                let reply = PublishProperties {
                    correlation_data: props.correlation_data.clone(),
                    content_type: Some("text/plain".into()),
                    ..PublishProperties::default()
                };
                let topic = props.response_topic.clone().expect("a response topic");
                responder
                    .publish_with_properties(topic, QoS::AtLeastOnce, false, "pong", reply)
                    .await
                    .unwrap();
                // Keep the loop going until the reply is out.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
                while tokio::time::timeout_at(deadline, responder_events.poll())
                    .await
                    .is_ok()
                {}
                return props;
            }
        }
    });
    let (requester_pub, events, _) = client(port, "requester-pub", |_| {}).await;
    let _driver = drive(events);
    let request = PublishProperties {
        response_topic: Some("svc/replies/requester".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x00req-42\xff")),
        content_type: Some("application/json".into()),
        payload_format_indicator: Some(1),
        user_properties: vec![("trace".into(), "abc".into())],
        ..PublishProperties::default()
    };
    requester_pub
        .publish_with_properties("svc/requests", QoS::AtLeastOnce, false, "{}", request)
        .await
        .unwrap();
    let reply = next(&mut replies, Duration::from_secs(5))
        .await
        .expect("a reply");
    let seen = answer.await.unwrap();
    assert_eq!(
        seen.response_topic.as_deref(),
        Some("svc/replies/requester")
    );
    assert_eq!(seen.content_type.as_deref(), Some("application/json"));
    assert_eq!(seen.payload_format_indicator, Some(1));
    assert_eq!(
        seen.user_properties,
        [("trace".to_owned(), "abc".to_owned())]
    );
    assert_eq!(payload(&reply), "pong");
    let props = reply.properties.expect("reply properties");
    assert_eq!(
        props.correlation_data.as_deref(),
        Some(&b"\x00req-42\xff"[..])
    );
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_larger_than_the_client_accepts_is_dropped_never_sent() {
    let (edge, port) = edge("").await;
    // rumqttc ends the connection on a packet larger than its Maximum Packet Size.
    let (client, mut events, _) = client(port, "small-packets", |o| {
        o.set_max_packet_size(Some(256));
    })
    .await;
    client.subscribe("p/#", QoS::AtLeastOnce).await.unwrap();
    subscribed(&mut events).await;
    let (task, mut rx) = collect(events);
    let (publisher, pub_events, _) = client_big(port).await;
    let _driver = drive(pub_events);
    for (qos, size) in [
        (QoS::AtLeastOnce, 100),
        (QoS::AtLeastOnce, 1000),
        (QoS::AtMostOnce, 1000),
        (QoS::ExactlyOnce, 1000),
        (QoS::AtLeastOnce, 120),
    ] {
        publisher
            .publish("p/x", qos, false, vec![b'x'; size])
            .await
            .unwrap();
    }
    let sizes: Vec<usize> = all(&mut rx, Duration::from_secs(2))
        .await
        .iter()
        .map(|p| p.payload.len())
        .collect();
    assert_eq!(sizes, [100, 120]);
    assert!(!task.is_finished(), "the subscriber's connection broke");
    edge.stop().await;
}

/// A publisher that may send large packets.
async fn client_big(port: u16) -> (AsyncClient, EventLoop, ConnAckProperties) {
    client(port, "big-pub", |_| {}).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_reaches_its_subscribers_with_its_properties() {
    use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties};
    let (edge, port) = edge("").await;
    let (_s, _task, mut rx) = subscriber(
        port,
        "will-sub",
        vec![(filter("w/#", QoS::ExactlyOnce), None)],
    )
    .await;
    let properties = LastWillProperties {
        delay_interval: None,
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(120),
        content_type: Some("application/json".into()),
        response_topic: Some("w/ask-again".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr-7")),
        user_properties: vec![("site".into(), "north".into())],
    };
    let will = LastWill::new(
        "w/gone",
        "{\"online\":false}",
        QoS::AtLeastOnce,
        false,
        Some(properties),
    );
    let (_client, events, _) = client(port, "will-owner", |o| {
        o.set_last_will(will);
    })
    .await;
    // The connection breaks without a DISCONNECT: the will is published.
    drop(events);
    let got = next(&mut rx, Duration::from_secs(10))
        .await
        .expect("the will");
    assert_eq!(payload(&got), "{\"online\":false}");
    assert_eq!(
        got.qos,
        QoS::AtLeastOnce,
        "the will's QoS, below the granted 2"
    );
    let props = got.properties.expect("the will's properties");
    assert_eq!(props.payload_format_indicator, Some(1));
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert_eq!(props.response_topic.as_deref(), Some("w/ask-again"));
    assert_eq!(props.correlation_data.as_deref(), Some(&b"corr-7"[..]));
    assert_eq!(
        props.user_properties,
        [("site".to_owned(), "north".to_owned())]
    );
    let left = props.message_expiry_interval.expect("its expiry");
    assert!((119..=120).contains(&left), "{left}");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_in_flight_to_a_client_than_its_receive_maximum() {
    let (edge, port) = edge("").await;
    let (client, mut events, _) = client(port, "rm-sub", |o| {
        o.set_receive_maximum(Some(2));
        o.set_manual_acks(true);
    })
    .await;
    client.subscribe("rm/#", QoS::AtLeastOnce).await.unwrap();
    subscribed(&mut events).await;
    let (task, mut rx) = collect(events);
    let (publisher, pub_events, _) = self::client(port, "rm-pub", |_| {}).await;
    let _driver = drive(pub_events);
    for i in 0..7 {
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        publisher
            .publish("rm/x", qos, false, format!("{i}"))
            .await
            .unwrap();
    }
    // Unacknowledged: two come, no more.
    let mut received = Vec::new();
    loop {
        let batch = all(&mut rx, Duration::from_millis(800)).await;
        assert!(
            batch.len() <= 2,
            "{} in flight past a Receive Maximum of 2",
            batch.len()
        );
        if batch.is_empty() {
            break;
        }
        for p in &batch {
            received.push(payload(p));
        }
        // Acknowledged (PUBACK, or PUBREC then PUBCOMP): room for the next.
        for p in &batch {
            client.ack(p).await.unwrap();
        }
    }
    assert_eq!(received, ["0", "1", "2", "3", "4", "5", "6"]);
    assert!(!task.is_finished());
    edge.stop().await;
}

/// Connects an MQTT 5 client without a clean start, asking for `expiry` seconds of session
/// expiry; returns it, its event loop, whether a session was present and the interval the
/// CONNACK announced instead, if any.
async fn resume(
    port: u16,
    id: &str,
    expiry: Option<u32>,
) -> (AsyncClient, EventLoop, bool, Option<u32>) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_start(false);
    options.set_session_expiry_interval(expiry);
    let (client, mut events) = AsyncClient::new(options, 100);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                let announced = ack.properties.and_then(|p| p.session_expiry_interval);
                return (client, events, ack.session_present, announced);
            }
            Ok(Ok(_)) => {}
            other => panic!("{id}: no CONNACK: {other:?}"),
        }
    }
}

/// Disconnects cleanly (DISCONNECT, then the socket closes).
async fn leave(client: AsyncClient, mut events: EventLoop) {
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while events.poll().await.is_ok() {}
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_lives_for_its_expiry_interval_and_no_longer() {
    let (edge, port) =
        edge("max_session_expiry = \"1h\"\nmax_stored_sessions_per_identity = 2").await;
    let (publisher, events, _) = client(port, "se-pub", |_| {}).await;
    let _driver = drive(events);

    // Kept for 3 s: a message published meanwhile is waiting on return, Session Present 1.
    let (c, mut events, present, _) = resume(port, "se-kept", Some(3)).await;
    assert!(!present);
    c.subscribe("se/#", QoS::AtLeastOnce).await.unwrap();
    subscribed(&mut events).await;
    leave(c, events).await;
    publisher
        .publish("se/a", QoS::AtLeastOnce, false, "while-away")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (c, events, present, _) = resume(port, "se-kept", Some(3)).await;
    assert!(present, "the session was not kept");
    let (task, mut rx) = collect(events);
    let got = next(&mut rx, Duration::from_secs(5))
        .await
        .expect("the queued message");
    assert_eq!(payload(&got), "while-away");
    task.abort();
    drop(c);
    // Gone (connection lost this time) for longer than 3 s: ended, nothing waits.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    publisher
        .publish("se/a", QoS::AtLeastOnce, false, "too-late")
        .await
        .unwrap();
    let (_c, events, present, _) = resume(port, "se-kept", Some(3)).await;
    assert!(!present, "the session outlived its interval");
    let (_task, mut rx) = collect(events);
    assert!(next(&mut rx, Duration::from_secs(1)).await.is_none());

    // No interval (MQTT 5's default is 0): the session ends with the connection.
    let (c, mut events, _, _) = resume(port, "se-none", None).await;
    c.subscribe("se/#", QoS::AtLeastOnce).await.unwrap();
    subscribed(&mut events).await;
    leave(c, events).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_c, _events, present, _) = resume(port, "se-none", None).await;
    assert!(!present, "a session with no expiry interval was kept");

    // "Never" is shortened to the broker's maximum, and the client is told.
    let (c, events, _, announced) = resume(port, "se-forever", Some(u32::MAX)).await;
    assert_eq!(announced, Some(3600));
    leave(c, events).await;

    // Stored sessions count against the identity (anonymous clients are one): past two, a
    // session ends with its connection.
    for id in ["se-store-1", "se-store-2"] {
        let (c, events, _, _) = resume(port, id, Some(60)).await;
        leave(c, events).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_c, _e, present, _) = resume(port, "se-store-2", Some(60)).await;
    assert!(
        !present,
        "se-forever and se-store-1 use the share: se-store-2 was not kept"
    );
    let (_c, _e, present, _) = resume(port, "se-store-1", Some(60)).await;
    assert!(present);
    edge.stop().await;
}

/// Resolves server topic aliases as the MQTT 5 specification says a client must (§3.3.2.3.4),
/// from the raw publishes rumqttc reports (it reports them before it resolves them): the topic
/// each one names, and whether it came by alias alone.
struct AliasView {
    known: std::collections::HashMap<u16, String>,
    by_alias_only: usize,
    largest_alias: u16,
}

impl AliasView {
    fn new() -> Self {
        Self {
            known: std::collections::HashMap::new(),
            by_alias_only: 0,
            largest_alias: 0,
        }
    }

    fn resolve(&mut self, p: &Publish) -> String {
        let alias = p.properties.as_ref().and_then(|props| props.topic_alias);
        let topic = String::from_utf8(p.topic.to_vec()).unwrap();
        match alias {
            None => topic,
            Some(alias) => {
                self.largest_alias = self.largest_alias.max(alias);
                if topic.is_empty() {
                    self.by_alias_only += 1;
                    self.known
                        .get(&alias)
                        .unwrap_or_else(|| panic!("alias {alias} used before it was given"))
                        .clone()
                } else {
                    self.known.insert(alias, topic.clone());
                    topic
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_topic_aliases_name_every_topic_right_even_once_the_table_is_full() {
    let (edge, port) = edge("max_topic_aliases = 3").await;
    // Takes up to 10 aliases: it gets the broker's 3.
    let (sub, mut events, _) = client(port, "alias-sub", |o| {
        o.set_topic_alias_max(Some(10));
    })
    .await;
    sub.subscribe("alias/#", QoS::AtLeastOnce).await.unwrap();
    subscribed(&mut events).await;
    let (_task, mut rx) = collect(events);
    // Takes none (rumqttc's default, no Topic Alias Maximum): never sent one.
    let (none, mut none_events, _) = client(port, "alias-none", |_| {}).await;
    none.subscribe("alias/#", QoS::AtLeastOnce).await.unwrap();
    subscribed(&mut none_events).await;
    let (_none_task, mut none_rx) = collect(none_events);

    let (publisher, pub_events, _) = client(port, "alias-pub", |_| {}).await;
    let _driver = drive(pub_events);
    // Five topics through three aliases, in an order that makes the table hand aliases
    // over and come back to topics that lost theirs; QoS 0 and 1 mixed.
    let order = [0, 1, 0, 2, 0, 1, 3, 3, 0, 4, 2, 4, 1, 0, 3, 2, 2, 4, 0, 1];
    for (i, t) in order.iter().enumerate() {
        let qos = if i % 3 == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let topic = format!("alias/sensor-{t}/temperature");
        publisher
            .publish(topic.clone(), qos, false, topic)
            .await
            .unwrap();
    }
    let mut view = AliasView::new();
    for i in 0..order.len() {
        let p = next(&mut rx, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("publish {i} did not arrive"));
        // Each payload is its topic: the alias named the right one.
        assert_eq!(view.resolve(&p), payload(&p), "publish {i}");
    }
    // Least recently used handed over: 7 of the 20 go by alias alone.
    assert!(
        view.by_alias_only >= 5,
        "repeated topics go by alias: {}",
        view.by_alias_only
    );
    assert_eq!(
        view.largest_alias, 3,
        "no more aliases than the broker's maximum"
    );
    assert_eq!(view.known.len(), 3);
    for i in 0..order.len() {
        let p = next(&mut none_rx, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("publish {i} did not arrive where no alias is taken"));
        assert_eq!(p.properties.and_then(|props| props.topic_alias), None);
        assert_eq!(String::from_utf8_lossy(&p.topic), payload_text(&p.payload));
    }
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_follow_the_order_publishes_reach_the_client_under_its_receive_maximum() {
    let (edge, port) = edge("").await;
    // One QoS 1 publish in flight at a time: later QoS 1 ones wait at the edge while QoS 0
    // ones overtake them, so an alias given when a waiting publish was encoded would reach
    // the client after a publish that uses it.
    let (sub, mut events, _) = client(port, "order-sub", |o| {
        o.set_topic_alias_max(Some(2));
        o.set_receive_maximum(Some(1));
        o.set_manual_acks(true);
    })
    .await;
    sub.subscribe("order/#", QoS::AtLeastOnce).await.unwrap();
    subscribed(&mut events).await;
    let (_task, mut rx) = collect(events);
    let (publisher, pub_events, _) = client(port, "order-pub", |_| {}).await;
    let _driver = drive(pub_events);
    let order = [
        (0, 1),
        (1, 1),
        (1, 0),
        (2, 1),
        (2, 0),
        (0, 0),
        (3, 1),
        (3, 0),
        (1, 0),
    ];
    for (t, qos) in order {
        let qos = if qos == 1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        let topic = format!("order/device-{t}/state");
        publisher
            .publish(topic.clone(), qos, false, topic)
            .await
            .unwrap();
    }
    let mut view = AliasView::new();
    let mut received = 0;
    while received < order.len() {
        let batch = all(&mut rx, Duration::from_millis(500)).await;
        assert!(!batch.is_empty(), "{received} of {} arrived", order.len());
        for p in &batch {
            assert_eq!(view.resolve(p), payload(p));
            received += 1;
        }
        // Acknowledged one at a time, the waiting ones come.
        for p in &batch {
            if p.qos == QoS::AtLeastOnce {
                sub.ack(p).await.unwrap();
            }
        }
    }
    assert!(view.by_alias_only > 0, "aliases were used");
    edge.stop().await;
}

fn payload_text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_coming_straight_back_keeps_its_new_connection() {
    let (edge, port) = edge("").await;
    // No Session Expiry Interval (MQTT 5's default, 0): the session ends with the connection,
    // by a clean link the edge sends the router under its name. A client that comes straight
    // back races that end: whichever comes first, the new connection must stay up, never be
    // taken over by the old session's end.
    let connect = Connect {
        level: 5,
        client_id: b"comes-back",
        keep_alive: 30,
        ..Connect::default()
    };
    for round in 0..30 {
        let (gone, ack) = Raw::connect(port, &connect).await;
        assert_eq!(ack.kind(), Some(2), "round {round}: {ack:?}");
        // The connection breaks (no DISCONNECT), and the client is back at once.
        drop(gone);
        let (mut back, ack) = Raw::connect(port, &connect).await;
        assert_eq!(ack.kind(), Some(2), "round {round}: {ack:?}");
        assert!(
            !back.closed_within(Duration::from_millis(150)).await,
            "round {round}: the new connection was ended by the old session's end"
        );
    }
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3_1_1_publishers_qos_and_retain_reach_mqtt5_subscribers_as_published() {
    let (edge, port) = edge("").await;
    // Granted QoS 2, Retain As Published.
    let mut rap = filter("v4/#", QoS::ExactlyOnce);
    rap.preserve_retain = true;
    let (_s, _task, mut rx) = subscriber(port, "v4-fan", vec![(rap, None)]).await;
    let connect = Connect {
        level: 4,
        client_id: b"v4-publisher",
        keep_alive: 30,
        ..Connect::default()
    };
    let (mut v4, ack) = Raw::connect(port, &connect).await;
    assert_eq!(ack, Read::Packet(0x20, vec![0, 0]));
    use common::raw::publish;
    v4.send(&publish("v4/a", b"q0", 0, 0, false, None)).await;
    v4.send(&publish("v4/a", b"q1", 1, 1, false, None)).await;
    v4.send(&publish("v4/a", b"q2", 2, 2, false, None)).await;
    let mut retained = publish("v4/kept", b"q1-retained", 1, 3, false, None);
    retained[0] |= 1;
    v4.send(&retained).await;
    let got = all(&mut rx, Duration::from_secs(2)).await;
    let seen: Vec<(String, u8, bool)> = got
        .iter()
        .map(|p| (payload(p), p.qos as u8, p.retain))
        .collect();
    assert_eq!(
        seen,
        [
            ("q0".into(), 0, false),
            ("q1".into(), 1, false),
            ("q2".into(), 2, false),
            ("q1-retained".into(), 1, true)
        ]
    );
    // What carried them through the router is not the subscriber's to see.
    assert!(got.iter().all(|p| p.properties.is_none()), "{got:?}");
    // The retained one, to a new subscription: at its own QoS, retain set.
    let (_s2, _task2, mut rx2) = subscriber(
        port,
        "v4-late",
        vec![(filter("v4/kept", QoS::ExactlyOnce), None)],
    )
    .await;
    let kept = next(&mut rx2, Duration::from_secs(5))
        .await
        .expect("retained");
    assert_eq!(
        (payload(&kept).as_str(), kept.qos as u8, kept.retain),
        ("q1-retained", 1, true)
    );
    assert!(kept.properties.is_none());
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_sessions_subscriptions_keep_their_options_and_ids() {
    let (edge, port) = edge("").await;
    // A No Local subscription made on a first connection, kept with the session.
    let (c, mut events, _, _) = resume(port, "nl-resumed", Some(60)).await;
    let mut own = filter("nl/#", QoS::AtLeastOnce);
    own.nolocal = true;
    let props = SubscribeProperties {
        id: Some(7),
        user_properties: Vec::new(),
    };
    c.subscribe_many_with_properties([own], props)
        .await
        .unwrap();
    subscribed(&mut events).await;
    leave(c, events).await;
    // Back (Session Present): its own publishes still do not come back; others' do, with the
    // subscription's id.
    let (c, events, present, _) = resume(port, "nl-resumed", Some(60)).await;
    assert!(present);
    let (_task, mut rx) = collect(events);
    c.publish("nl/x", QoS::AtLeastOnce, false, "own")
        .await
        .unwrap();
    let (other, other_events, _) = client(port, "nl-other", |_| {}).await;
    let _driver = drive(other_events);
    other
        .publish("nl/x", QoS::AtLeastOnce, false, "other")
        .await
        .unwrap();
    let got: Vec<(String, Vec<usize>)> = all(&mut rx, Duration::from_secs(2))
        .await
        .iter()
        .map(|p| {
            let ids = p
                .properties
                .as_ref()
                .map(|props| props.subscription_identifiers.clone())
                .unwrap_or_default();
            (payload(p), ids)
        })
        .collect();
    assert_eq!(got, [("other".to_owned(), vec![7])]);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishers_properties_reach_another_implementations_subscriber_as_sent() {
    // mosquitto's MQTT 5 clients (libmosquitto, not rumqtt's code) on both ends: the edge
    // writes the publisher's properties as it received them, behind its own.
    let (edge, port) = edge("").await;
    let p = port.to_string();
    let out = tokio::task::spawn_blocking(move || {
        let sub = fieldlink_test_support::Subscriber::start(&[
            "-V",
            "5",
            "-p",
            &p,
            "-t",
            "m/#",
            "-q",
            "1",
            "-C",
            "2",
            "-W",
            "10",
            "-F",
            "%t %p | %P | expiry=%E ct=%C rt=%R",
        ]);
        let publish = |args: &[&str]| {
            let status = std::process::Command::new("mosquitto_pub")
                .args(["-V", "5", "-p", &p])
                .args(args)
                .status()
                .expect("mosquitto_pub is installed");
            assert!(status.success(), "mosquitto_pub {args:?}");
        };
        publish(&[
            "-t",
            "m/props",
            "-m",
            "hello",
            "-q",
            "1",
            "-D",
            "publish",
            "user-property",
            "site",
            "north-field",
            "-D",
            "publish",
            "user-property",
            "unit",
            "celsius",
            "-D",
            "publish",
            "message-expiry-interval",
            "30",
            "-D",
            "publish",
            "content-type",
            "text/plain",
            "-D",
            "publish",
            "response-topic",
            "r/x",
        ]);
        publish(&["-t", "m/plain", "-m", "plain", "-q", "0"]);
        sub.finish()
    })
    .await
    .unwrap();
    assert_eq!(
        out.stdout,
        "m/props hello | site:north-field unit:celsius | expiry=30 ct=text/plain rt=r/x\n\
         m/plain plain |  | expiry= ct= rt=\n",
        "{}",
        out.stderr
    );
    edge.stop().await;
}
