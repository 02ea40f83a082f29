//! The ingress port and the local bus, in-process, with real MQTT clients on the local broker:
//! an in-process producer's message is stored once (not again when the broker echoes it),
//! reaches local subscribers, and a bus publish is never routed to the cloud.

use std::process::Command;
use std::time::Duration;

use fieldlink::Gateway;
use fieldlink::config::parse;
use fieldlink_core::config::Origin;
use fieldlink_core::message::{Message, QoS};
use fieldlink_core::topic::{TopicFilter, TopicName};
use fieldlink_test_support::{Subscriber, free_port, within};

async fn gateway(dir: &std::path::Path, port: u16) -> Gateway {
    let text = format!(
        "[gateway]\ndata_dir = \"{}\"\n\
         [[broker.listeners]]\nname = \"local\"\nbind = \"127.0.0.1\"\nport = {port}\n\
         [[routes]]\nname = \"telemetry\"\nfilter = \"site/#\"\n",
        dir.display()
    );
    let settings = parse(&text, Origin::BuiltIn).expect("valid config");
    Gateway::start(settings).await.expect("gateway starts")
}

/// Returns once subscribed.
fn subscriber(port: u16, filter: &str, count: usize) -> Subscriber {
    let (port, count) = (port.to_string(), count.to_string());
    Subscriber::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-t",
        filter,
        "-C",
        &count,
        "-v",
        "-W",
        "10",
    ])
}

fn message(topic: &str, payload: &str) -> Message {
    Message {
        topic: TopicName::new(topic).unwrap(),
        payload: payload.as_bytes().to_vec(),
        qos: QoS::AtLeastOnce,
        retain: false,
    }
}

async fn depth(gateway: &Gateway) -> u64 {
    gateway.queue().stats().await.unwrap().messages
}

#[tokio::test(flavor = "multi_thread")]
async fn ingress_stores_once_then_publishes_locally() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let gateway = gateway(dir.path(), port).await;
    let sub = subscriber(port, "#", 2);

    gateway
        .ingress()
        .publish(vec![
            message("site/boiler/temp", "21.5"),
            message("local/only", "x"),
        ])
        .await
        .expect("stored and published");
    // Durable before publish returns: the routed one is in the queue now.
    assert_eq!(depth(&gateway).await, 1);

    let out = tokio::task::spawn_blocking(move || sub.finish())
        .await
        .unwrap();
    let out = out.stdout;
    assert!(out.contains("site/boiler/temp 21.5"), "{out}");
    assert!(out.contains("local/only x"), "{out}");

    // Whatever the broker does with an in-process publish, it is not stored a second time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        depth(&gateway).await,
        1,
        "an in-process message was stored twice"
    );
    assert!(gateway.stop().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn network_publishes_are_routed_but_bus_publishes_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let gateway = gateway(dir.path(), port).await;
    let sub = subscriber(port, "site/#", 2);

    // A cloud command published locally must not go back to the cloud.
    gateway
        .bus()
        .publish(message("site/cmd/valve", "open"))
        .await
        .unwrap();
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "site/meter/kwh", "-m", "7", "-q", "1"])
        .status()
        .unwrap();
    assert!(status.success());

    let out = tokio::task::spawn_blocking(move || sub.finish())
        .await
        .unwrap();
    let out = out.stdout;
    assert!(out.contains("site/cmd/valve open"), "{out}");
    assert!(out.contains("site/meter/kwh 7"), "{out}");

    within(
        Duration::from_secs(5),
        "the network publish is stored",
        async {
            while depth(&gateway).await != 1 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
    .await;
    let peek = gateway.queue().peek(10).await.unwrap();
    assert_eq!(peek.len(), 1);
    assert_eq!(peek[0].message.topic.as_str(), "site/meter/kwh");
    assert!(gateway.stop().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn bus_subscription_sees_matching_network_and_bus_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let gateway = gateway(dir.path(), port).await;
    let filter = TopicFilter::new("cmd/+/set").unwrap();
    let mut commands = gateway.bus().subscribe(&filter, 16).unwrap();

    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "cmd/pump/set", "-m", "on"])
        .status()
        .unwrap();
    assert!(status.success());
    gateway
        .bus()
        .publish(message("cmd/fan/set", "off"))
        .await
        .unwrap();
    gateway
        .bus()
        .publish(message("cmd/fan/get", "ignored"))
        .await
        .unwrap();

    let first = tokio::time::timeout(Duration::from_secs(5), commands.recv())
        .await
        .expect("a command arrives")
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), commands.recv())
        .await
        .expect("a second command arrives")
        .unwrap();
    let mut got = [first, second].map(|m| {
        format!(
            "{} {}",
            m.topic.as_str(),
            String::from_utf8(m.payload).unwrap()
        )
    });
    got.sort();
    assert_eq!(got, ["cmd/fan/set off", "cmd/pump/set on"]);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), commands.recv())
            .await
            .is_err(),
        "a non-matching topic was delivered"
    );
    assert!(gateway.stop().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_cannot_take_over_the_gateways_own_links() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let gateway = gateway(dir.path(), port).await;
    let p = port.to_string();
    let refused = tokio::task::spawn_blocking(move || {
        Command::new("mosquitto_pub")
            .args([
                "-d",
                "-h",
                "127.0.0.1",
                "-p",
                &p,
                "-i",
                "fieldlink-internal-bus",
            ])
            .args(["-t", "x", "-m", "x"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&refused.stdout).into_owned();
    assert!(out.contains("received CONNACK (2)"), "{out}");

    // The bus still publishes to local subscribers.
    let sub = subscriber(port, "local/#", 1);
    gateway
        .bus()
        .publish(message("local/after", "still"))
        .await
        .unwrap();
    let out = tokio::task::spawn_blocking(move || sub.finish())
        .await
        .unwrap();
    let out = out.stdout;
    assert!(out.contains("local/after still"), "{out}");
    assert!(gateway.stop().await);
}
