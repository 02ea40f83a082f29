//! Helpers shared by the queue's integration tests.
#![allow(dead_code)] // each test file uses its own subset

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use fieldlink_core::message::{Message, Priority, QoS};
use fieldlink_core::ports::OutboxEntry;
use fieldlink_core::topic::TopicName;
use fieldlink_queue::config::QueueSettings;
use fieldlink_queue::{Queue, StatvfsDisk};

/// An entry of `stream` whose payload is `n`, zero-padded.
pub fn entry(stream: &str, n: u64) -> OutboxEntry {
    OutboxEntry {
        stream: stream.into(),
        priority: Priority::Normal,
        message: Message {
            topic: TopicName::new(format!("site/{stream}")).unwrap(),
            payload: format!("{n:08}").into_bytes(),
            qos: QoS::AtLeastOnce,
            retain: false,
        },
        properties: None,
    }
}

/// Default limits, no disk reserve (the test machine's disk may be fuller than a board's),
/// and every round committed at once: these tests are about what the queue keeps, and one
/// caller at a time would wait out the commit interval at every step.
pub fn settings() -> QueueSettings {
    QueueSettings {
        disk_reserve: 0,
        commit_interval: std::time::Duration::ZERO,
        ..QueueSettings::default()
    }
}

/// Opens a queue in `dir` on the real file system.
pub async fn open(dir: &Path, settings: QueueSettings) -> Queue {
    Queue::open(
        dir,
        settings,
        HashMap::new(),
        Arc::new(StatvfsDisk),
        &fieldlink_core::shutdown::Shutdown::new(),
    )
    .await
    .unwrap()
}
