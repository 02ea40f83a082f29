//! With MQTT 5 each message reaches the cloud with its queue id in a user property, so that the
//! cloud side can drop the duplicates at-least-once delivery makes: checked with mosquitto's own
//! MQTT 5 subscriber. (With 3.1.1 there are no properties: see the config tests.)

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use fieldlink_core::config::MqttVersion;
use fieldlink_test_support::Subscriber;
use fieldlink_test_support::certs::TestCa;
use fieldlink_uplink::config::UplinkTls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_carries_its_queue_id_in_a_user_property() {
    let ca = TestCa::new("cloud CA");
    let cloud = Cloud::start(&ca, &ca.issue("cloud", &["localhost"]), "");
    let port = cloud.broker.addr().port().to_string();
    // mosquitto_sub speaking MQTT 5, printing topic, user properties and payload.
    let subscriber = Subscriber::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-V",
        "5",
        "-q",
        "1",
        "-t",
        "cloud/#",
        "-C",
        "40",
        "-W",
        "30",
        "-F",
        "%t|%P|%p",
    ]);

    let dir = tempfile::tempdir().unwrap();
    let queue = queue(dir.path()).await;
    fill(&queue, "a", 20).await;
    fill(&queue, "b", 20).await;
    let mut settings = settings(
        cloud.tls_port,
        UplinkTls::ServerAuth {
            ca_file: Some(cloud.file("trusted-ca.pem", ca.pem())),
        },
    );
    settings.mqtt = MqttVersion::V5;
    settings.message_id_property = Some("fieldlink-id".into());
    let (_uplink, shutdown) = start_uplink(settings, &queue, dir.path());
    let output = tokio::task::spawn_blocking(move || subscriber.finish())
        .await
        .unwrap();
    shutdown.drain(Duration::from_secs(5)).await;

    let text = output.stdout;
    let mut ids: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    for line in text.lines() {
        let mut fields = line.splitn(3, '|');
        let (topic, properties, payload) = (
            fields.next().unwrap_or_default(),
            fields.next().unwrap_or_default(),
            fields.next().unwrap_or_default(),
        );
        let id = properties
            .strip_prefix("fieldlink-id:")
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or_else(|| panic!("no id property in {line:?}"));
        ids.entry(topic.to_owned())
            .or_default()
            .push((id, payload.to_owned()));
    }
    assert_eq!(ids.len(), 2, "two streams: {text}");
    // `fill` appends a's 20 rows, then b's: ids 1..=20 and 21..=40, in order per stream.
    for (topic, first) in [("cloud/site/a", 1), ("cloud/site/b", 21)] {
        let got = &ids[topic];
        assert_eq!(got.len(), 20, "{topic}: {got:?}");
        for (i, (id, payload)) in got.iter().enumerate() {
            assert_eq!(
                *id,
                first + i as i64,
                "{topic}: strictly increasing: {got:?}"
            );
            assert!(payload.ends_with(&format!("-{i}")), "{topic}: {payload}");
        }
    }
}
