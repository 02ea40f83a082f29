//! When a value is worth publishing (sans-IO): on the first reading, on a change beyond the
//! point's deadband, or when the heartbeat is due even without change.

use std::time::{Duration, Instant};

use crate::codec::Value;

/// The last value published for one point.
#[derive(Debug, Default)]
pub struct LastPublished {
    last: Option<(Value, Instant)>,
}

impl LastPublished {
    /// Whether `value`, read at `now`, should be published; if so, it becomes the last one.
    pub fn offer(
        &mut self,
        value: &Value,
        now: Instant,
        deadband: f64,
        heartbeat: Option<Duration>,
    ) -> bool {
        let publish = match &self.last {
            None => true,
            Some((last, at)) => {
                heartbeat.is_some_and(|h| now.saturating_duration_since(*at) >= h)
                    || changed(last, value, deadband)
            }
        };
        if publish {
            self.last = Some((value.clone(), now));
        }
        publish
    }

    /// Forgets the last value (the device went offline: its next reading is news).
    pub fn reset(&mut self) {
        self.last = None;
    }
}

/// A change beyond the deadband for numbers (any change when it is 0); any change otherwise.
pub fn changed(last: &Value, new: &Value, deadband: f64) -> bool {
    match (last.as_f64(), new.as_f64()) {
        (Some(a), Some(b)) if deadband > 0.0 => {
            (a - b).abs() > deadband || a.is_nan() != b.is_nan()
        }
        _ => last != new,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn first_reading_changes_beyond_the_deadband_and_heartbeats_are_published() {
        let t0 = Instant::now();
        let hb = Some(Duration::from_secs(10));
        let mut last = LastPublished::default();
        assert!(
            last.offer(&Value::Float(20.0), t0, 0.5, hb),
            "first reading"
        );
        assert!(!last.offer(&Value::Float(20.4), t0 + Duration::from_secs(1), 0.5, hb));
        assert!(last.offer(&Value::Float(20.6), t0 + Duration::from_secs(2), 0.5, hb));
        assert!(!last.offer(&Value::Float(20.6), t0 + Duration::from_secs(3), 0.5, hb));
        assert!(
            last.offer(&Value::Float(20.6), t0 + Duration::from_secs(12), 0.5, hb),
            "heartbeat"
        );
        assert!(last.offer(
            &Value::Text("a".into()),
            t0 + Duration::from_secs(13),
            0.5,
            hb
        ));
        assert!(!last.offer(
            &Value::Text("a".into()),
            t0 + Duration::from_secs(14),
            0.5,
            None
        ));
        last.reset();
        assert!(last.offer(
            &Value::Text("a".into()),
            t0 + Duration::from_secs(15),
            0.5,
            None
        ));
    }

    proptest! {
        /// Without a heartbeat, consecutive published values differ by more than the deadband.
        #[test]
        fn published_values_are_always_beyond_the_deadband(
            values in proptest::collection::vec(-1000.0f64..1000.0, 1..100),
            deadband in 0.0f64..50.0,
        ) {
            let t = Instant::now();
            let mut last = LastPublished::default();
            let mut published: Vec<f64> = Vec::new();
            for v in values {
                if last.offer(&Value::Float(v), t, deadband, None) {
                    published.push(v);
                }
            }
            for pair in published.windows(2) {
                prop_assert!((pair[0] - pair[1]).abs() > deadband || (deadband == 0.0 && pair[0] != pair[1]));
            }
        }
    }
}
