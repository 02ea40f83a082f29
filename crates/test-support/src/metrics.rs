//! What a metrics recorder saw, keyed for assertions.

use std::collections::HashMap;

use metrics_util::debugging::{DebugValue, Snapshotter};

/// Every metric in a snapshot, keyed `name{label=value,...}` (labels in emission order).
/// A snapshot takes the counters: read it once per test.
pub fn metric_values(snapshotter: &Snapshotter) -> HashMap<String, DebugValue> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            (format!("{}{{{}}}", key.name(), labels.join(",")), value)
        })
        .collect()
}
