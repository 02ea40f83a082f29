//! What the queue hands to the metrics facade: counters and per-stream gauges, each export
//! adding only the change since the last.

use std::collections::{BTreeMap, HashSet};

use super::writer::Writer;

/// The counters and stream gauges last exported, so that each export adds only the change.
#[derive(Default)]
pub(super) struct Exported {
    appended: u64,
    acked: u64,
    dropped: BTreeMap<&'static str, u64>,
    refused: BTreeMap<&'static str, u64>,
    streams: HashSet<String>,
}

impl Writer {
    /// Hands the change since the last export to the metrics facade.
    pub(super) fn export(&mut self) {
        use fieldlink_core::metrics as m;
        let (stats, done) = (&self.stats, &mut self.exported);
        metrics::counter!(m::QUEUE_APPENDED_TOTAL).increment(stats.appended_total - done.appended);
        metrics::counter!(m::QUEUE_ACKED_TOTAL).increment(stats.acked_total - done.acked);
        done.appended = stats.appended_total;
        done.acked = stats.acked_total;
        for (now, before, name) in [
            (
                &stats.dropped_total,
                &mut done.dropped,
                m::QUEUE_DROPPED_TOTAL,
            ),
            (
                &stats.refused_total,
                &mut done.refused,
                m::QUEUE_REFUSED_TOTAL,
            ),
        ] {
            for (reason, n) in now {
                let seen = before.entry(reason).or_default();
                metrics::counter!(name, "reason" => *reason).increment(n - *seen);
                *seen = *n;
            }
        }
        for (stream, depth) in &self.depth.streams {
            metrics::gauge!(m::QUEUE_DEPTH_MESSAGES, "stream" => stream.clone())
                .set(depth.messages as f64);
            metrics::gauge!(m::QUEUE_DEPTH_BYTES, "stream" => stream.clone())
                .set(depth.bytes as f64);
            done.streams.insert(stream.clone());
        }
        // A drained stream leaves the depth map: its gauges go to zero.
        let depth = &self.depth;
        done.streams.retain(|stream| {
            let held = depth.streams.contains_key(stream);
            if !held {
                metrics::gauge!(m::QUEUE_DEPTH_MESSAGES, "stream" => stream.clone()).set(0.0);
                metrics::gauge!(m::QUEUE_DEPTH_BYTES, "stream" => stream.clone()).set(0.0);
            }
            held
        });
    }
}
