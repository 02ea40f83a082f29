//! Topic mapping against a real mosquitto: local → cloud rewrite rules and prefix, and cloud
//! commands published on the local bus (including a subscription the cloud's ACL refuses).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fieldlink_core::config::MqttVersion;
use fieldlink_core::topic::TopicFilter;
use fieldlink_core::topic_map::TopicRewrite;
use fieldlink_test_support::RecordingBus;
use fieldlink_test_support::certs::TestCa;
use fieldlink_uplink::UplinkStatus;
use fieldlink_uplink::config::{UplinkSettings, UplinkTls};

/// A rule as the configuration reader builds it, for the device id "gw-7".
fn rule(filter: &str, template: &str) -> TopicRewrite {
    TopicRewrite::new(
        TopicFilter::new(filter.replace("{device_id}", "gw-7")).unwrap(),
        template,
        &[("device_id", "gw-7")],
    )
    .unwrap()
}

fn tls_settings(cloud: &Cloud, ca: &TestCa, mqtt: MqttVersion) -> UplinkSettings {
    let mut settings = settings(
        cloud.tls_port,
        UplinkTls::ServerAuth {
            ca_file: Some(cloud.file("ca.pem", ca.pem())),
        },
    );
    settings.mqtt = mqtt;
    settings
}

async fn until(uplink: &fieldlink_uplink::Uplink, what: &str, ok: impl Fn(&UplinkStatus) -> bool) {
    let start = Instant::now();
    while !ok(&uplink.status()) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: {:?}",
            uplink.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn rewrite_rules_come_before_the_prefix() {
    let ca = TestCa::new("cloud CA");
    let cloud = Cloud::start(&ca, &ca.issue("cloud", &["localhost"]), "");
    let sub = Subscriber::start(cloud.broker.addr().port(), "#", "observer", false).await;
    let dir = tempfile::tempdir().unwrap();
    let queue = queue(dir.path()).await;
    // `fill` publishes on site/<stream>.
    fill(&queue, "boiler", 1).await;
    fill(&queue, "meter", 1).await;
    let mut settings = tls_settings(&cloud, &ca, MqttVersion::V311);
    settings.rewrites = vec![rule("site/boiler", "alarms/{device_id}/boiler")];
    let (_uplink, shutdown) = start_uplink(settings, &queue, dir.path());
    sub.wait_for(2, Duration::from_secs(20)).await;
    let mut topics: Vec<String> = sub
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|(t, _)| t.clone())
        .collect();
    topics.sort();
    assert_eq!(topics, ["alarms/gw-7/boiler", "cloud/site/meter"]);
    shutdown.drain(Duration::from_secs(5)).await;
}

async fn commands_arrive_locally(mqtt: MqttVersion) {
    let ca = TestCa::new("cloud CA");
    let cloud = Cloud::start(&ca, &ca.issue("cloud", &["localhost"]), "");
    let dir = tempfile::tempdir().unwrap();
    let queue = queue(dir.path()).await;
    let mut settings = tls_settings(&cloud, &ca, mqtt);
    settings.commands = vec![rule("cmd/{device_id}/#", "cmd/{#}")];
    let (bus, mut published) = RecordingBus::new();
    let (uplink, shutdown) = start_uplink_with_bus(settings, &queue, dir.path(), Arc::new(bus));
    until(&uplink, "connected", |s| s.state.is_connected()).await;

    // The SUBSCRIBE follows the CONNACK; publish until the first command gets through.
    let port = cloud.broker.addr().port().to_string();
    let start = Instant::now();
    let first = loop {
        let status = std::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-r"])
            .args(["-t", "cmd/gw-7/valve/open", "-m", "now"])
            .status()
            .unwrap();
        assert!(status.success());
        if let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(300), published.recv()).await
        {
            break m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no command arrived; cloud log:\n{}",
            cloud.broker.log()
        );
    };
    assert_eq!(first.topic.as_str(), "cmd/valve/open");
    assert_eq!(first.payload, b"now");
    assert!(!first.retain, "a command is never retained locally");

    // Another gateway's commands are not ours.
    let status = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-q", "1"])
        .args(["-t", "cmd/gw-8/valve/open", "-m", "not ours"])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(m) = published.try_recv() {
        assert_eq!(m.payload, b"now", "only our own commands: {m:?}");
    }
    assert!(uplink.status().commands_total >= 1);
    shutdown.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn cloud_commands_are_published_locally_v311() {
    commands_arrive_locally(MqttVersion::V311).await;
}

#[tokio::test]
async fn cloud_commands_are_published_locally_v5() {
    commands_arrive_locally(MqttVersion::V5).await;
}

#[tokio::test]
async fn a_refused_command_subscription_is_reported() {
    let ca = TestCa::new("cloud CA");
    // mosquitto's acl_file grants every subscription (it filters on delivery); its dynamic
    // security plugin refuses one with 0x87.
    let files = tempfile::tempdir().unwrap();
    let dynsec = files.path().join("dynsec.json");
    std::fs::write(
        &dynsec,
        r#"{"defaultACLAccess":{"publishClientSend":true,"publishClientReceive":true,"subscribe":true,"unsubscribe":true},
 "clients":[],"groups":[{"groupname":"anon","roles":[{"rolename":"r"}],"clients":[]}],"anonymousGroup":"anon",
 "roles":[{"rolename":"r","acls":[{"acltype":"subscribePattern","topic":"cmd/gw-7/denied/#","allow":false,"priority":0}]}]}"#,
    )
    .unwrap();
    let cloud = Cloud::start_on(
        fieldlink_test_support::free_port(),
        fieldlink_test_support::free_port(),
        &ca,
        &ca.issue("cloud", &["localhost"]),
        "",
        &format!(
            "plugin /usr/lib/{}-linux-gnu/mosquitto_dynamic_security.so\nplugin_opt_config_file {}",
            std::env::consts::ARCH,
            dynsec.display()
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let queue = queue(dir.path()).await;
    let mut settings = tls_settings(&cloud, &ca, MqttVersion::V5);
    settings.commands = vec![
        rule("cmd/{device_id}/allowed/#", "a/{#}"),
        rule("cmd/{device_id}/denied/#", "d/{#}"),
    ];
    let (uplink, shutdown) = start_uplink(settings, &queue, dir.path());
    let start = Instant::now();
    while uplink.status().refused_subscriptions.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no refusal reported: {:?}\ncloud log:\n{}",
            uplink.status(),
            cloud.broker.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = uplink.status().refused_subscriptions;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].starts_with("cmd/gw-7/denied/#: NotAuthorized"),
        "{refused:?}"
    );
    shutdown.drain(Duration::from_secs(5)).await;
}
