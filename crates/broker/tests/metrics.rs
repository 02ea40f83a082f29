//! The edge's counters reach the metrics facade (a recorder installed for this test binary
//! stands in for the Prometheus exporter): connections, refusals by reason, messages in and
//! out, ACL denials.

mod common;

use std::time::Duration;

use common::*;
use fieldlink_core::metrics as m;
use fieldlink_test_support::metrics::metric_values;
use fieldlink_test_support::{Subscriber, free_port};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_refusals_messages_and_denials_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let (open, closed) = (free_port(), free_port());
    let edge = Edge::start(&format!(
        "[[broker.listeners]]\nname = \"open\"\nport = {open}\n\
         [[broker.listeners]]\nname = \"closed\"\nport = {closed}\nanonymous = false\n\
         [[broker.acl]]\npublish = [\"site/#\"]\nsubscribe = [\"site/#\"]\n"
    ))
    .await;
    let (o, c) = (open.to_string(), closed.to_string());
    let sub = Subscriber::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &o,
        "-t",
        "site/#",
        "-C",
        "1",
        "-W",
        "10",
    ]);
    tokio::task::spawn_blocking(move || {
        mosquitto(
            "mosquitto_pub",
            &["-h", "127.0.0.1", "-p", &o, "-t", "site/a", "-m", "1"],
        );
        mosquitto(
            "mosquitto_pub",
            &["-h", "127.0.0.1", "-p", &o, "-t", "other/a", "-m", "1"],
        );
        mosquitto(
            "mosquitto_pub",
            &["-h", "127.0.0.1", "-p", &c, "-t", "site/a", "-m", "1"],
        );
    })
    .await
    .unwrap();
    tokio::task::spawn_blocking(move || sub.finish())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let values = metric_values(&snapshotter);
    let counter = |k: String| match values.get(&k) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{k}: {other:?} in {values:?}"),
    };
    // The subscriber and two publishers on "open".
    assert_eq!(
        counter(format!("{}{{listener=open}}", m::BROKER_CONNECTIONS_TOTAL)),
        3
    );
    assert_eq!(
        counter(format!("{}{{reason=anonymous}}", m::BROKER_REFUSED_TOTAL)),
        1
    );
    assert_eq!(counter(format!("{}{{}}", m::BROKER_MESSAGES_IN_TOTAL)), 1);
    assert_eq!(counter(format!("{}{{}}", m::BROKER_MESSAGES_OUT_TOTAL)), 1);
    assert_eq!(
        counter(format!("{}{{action=publish}}", m::BROKER_ACL_DENIED_TOTAL)),
        1
    );
    edge.stop().await;
}
