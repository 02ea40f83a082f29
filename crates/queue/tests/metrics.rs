//! The queue's counters and gauges reach the metrics facade (a recorder installed for this
//! test binary stands in for the Prometheus exporter).

mod common;

use std::time::Duration;

use fieldlink_core::metrics as m;
use fieldlink_queue::config::{FullPolicy, QueueSettings};
use fieldlink_test_support::metrics::metric_values;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

use common::{entry, open, settings};

#[tokio::test]
async fn depth_appends_acks_and_drops_are_exported() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let queue = open(
        dir.path(),
        QueueSettings {
            max_messages: 4,
            when_full: FullPolicy::DropOldest,
            ..settings()
        },
    )
    .await;
    queue
        .append((0..3).map(|n| entry("telemetry", n)).collect())
        .await
        .unwrap();
    queue
        .append((3..6).map(|n| entry("telemetry", n)).collect())
        .await
        .unwrap();
    let leased = queue.lease(1).await.unwrap();
    queue.ack(vec![leased[0].id]).await.unwrap();
    queue.stats().await.unwrap(); // one more round: the ack's export has happened
    // The oldest age is exported by the maintenance tick, every second: after two ticks one
    // has seen the oldest message at least a second old. (Counters are read once: a snapshot
    // takes them.)
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let oldest_key = format!("{}{{}}", m::QUEUE_OLDEST_AGE_SECONDS);
    let values = metric_values(&snapshotter);
    let get = |k: &str| {
        values
            .get(k)
            .unwrap_or_else(|| panic!("{k} missing in {values:?}"))
    };
    assert_eq!(
        get(&format!("{}{{}}", m::QUEUE_APPENDED_TOTAL)),
        &DebugValue::Counter(6)
    );
    assert_eq!(
        get(&format!("{}{{}}", m::QUEUE_ACKED_TOTAL)),
        &DebugValue::Counter(1)
    );
    assert_eq!(
        get(&format!("{}{{reason=drop_oldest}}", m::QUEUE_DROPPED_TOTAL)),
        &DebugValue::Counter(2)
    );
    assert_eq!(
        get(&format!("{}{{stream=telemetry}}", m::QUEUE_DEPTH_MESSAGES)),
        &DebugValue::Gauge(3.0.into())
    );
    assert!(
        matches!(get(&oldest_key), DebugValue::Gauge(age) if age.into_inner() >= 1.0),
        "{:?}",
        get(&oldest_key)
    );
}
