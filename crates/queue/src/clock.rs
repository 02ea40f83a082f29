//! Queue time: how long messages have been held, on a clock that wall-clock steps cannot move.
//!
//! A board without a real-time clock boots days behind (or in 1970) and steps forward when
//! time sync arrives; a message stamped with the wall clock before the step would look days
//! old after it and be expired, and one stamped after a step back would never expire. So ages
//! are measured in *queue time*:
//!
//! - while the gateway runs, queue time advances with the monotonic clock (which no wall-clock
//!   step moves);
//! - it is persisted (the `queue_clock` row, and every message's `queue_ms`), so a restart
//!   continues from where the last run got to;
//! - the time the gateway was switched off is added only as far as a synchronized clock
//!   proves it: the row keeps an *anchor*, the last moment at which the clock was synchronized
//!   (its wall time and the queue time then). At the first moment of a run at which the clock
//!   is synchronized, the wall time elapsed since the anchor, less the queue time already
//!   counted since then, is added once. Without a synchronized clock before and after, the
//!   time switched off counts as nothing, so a message is never expired by a clock that might
//!   be wrong: it is kept longer instead.
//!
//! `max_age` therefore means time spent in the queue, and before time sync (or on a site with
//! no time source at all) a message's age is the time the gateway has been running.

use std::time::{Duration, Instant};

/// What the `queue_clock` row holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Saved {
    /// Queue time when the row was written.
    pub(crate) queue_ms: i64,
    /// The last moment the clock was known to be synchronized: (wall ms, queue ms).
    pub(crate) anchor: Option<(i64, i64)>,
}

/// The running queue clock.
#[derive(Debug)]
pub(crate) struct QueueClock {
    /// Queue time at `started`.
    base_ms: i64,
    started: Instant,
    /// The anchor of the last run, until the time switched off is accounted for.
    pending_anchor: Option<(i64, i64)>,
    /// The anchor to save: the latest moment the clock was synchronized.
    anchor: Option<(i64, i64)>,
    synchronized: bool,
    last_saved: Instant,
}

/// How often the clock row is written while running (a small commit; it bounds the running
/// time a power cut can take off queue time when no message was appended meanwhile).
pub(crate) const SAVE_EVERY: Duration = Duration::from_secs(600);

impl QueueClock {
    /// Continues from what was saved and from the newest message's queue time (written after
    /// the last save if power was cut).
    pub(crate) fn resume(saved: Option<Saved>, newest_message_ms: Option<i64>) -> Self {
        let saved = saved.unwrap_or_default();
        let now = Instant::now();
        Self {
            base_ms: saved.queue_ms.max(newest_message_ms.unwrap_or(0)).max(0),
            started: now,
            pending_anchor: saved.anchor,
            anchor: saved.anchor,
            synchronized: false,
            last_saved: now,
        }
    }

    /// Queue time now, in milliseconds.
    pub(crate) fn now_ms(&self) -> i64 {
        let running = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.base_ms.saturating_add(running)
    }

    /// Takes note of the clock's state (`wall_ms` now, and whether it is synchronized). The
    /// first time it is synchronized in this run, the time switched off since the last anchor
    /// is added; returns how much was added.
    pub(crate) fn observe(&mut self, wall_ms: i64, synchronized: bool) -> Duration {
        self.synchronized = synchronized;
        if !synchronized {
            return Duration::ZERO;
        }
        let mut added = 0;
        if let Some(anchor) = self.pending_anchor.take() {
            added = offline_ms(anchor, wall_ms, self.now_ms());
            self.base_ms = self.base_ms.saturating_add(added);
        }
        self.anchor = Some((wall_ms, self.now_ms()));
        Duration::from_millis(u64::try_from(added).unwrap_or(0))
    }

    /// Whether the wall clock was synchronized when last observed.
    pub(crate) fn synchronized(&self) -> bool {
        self.synchronized
    }

    /// What to persist now.
    // (It also notes when it was saved, hence `&mut self`; clippy 1.95 objects to `to_*` so.)
    #[allow(clippy::wrong_self_convention)]
    pub(crate) fn to_save(&mut self) -> Saved {
        self.last_saved = Instant::now();
        Saved {
            queue_ms: self.now_ms(),
            // Until it has been used, the previous run's anchor is the one worth keeping.
            anchor: self.pending_anchor.or(self.anchor),
        }
    }

    /// Whether the row is due to be written again.
    pub(crate) fn save_due(&self) -> bool {
        self.last_saved.elapsed() >= SAVE_EVERY
    }
}

/// The time switched off that a synchronized clock proves: the wall time since the anchor,
/// less the queue time counted since then (the gateway ran part of it). Never negative.
fn offline_ms((anchor_wall, anchor_queue): (i64, i64), wall_now: i64, queue_now: i64) -> i64 {
    let wall = wall_now.saturating_sub(anchor_wall);
    let counted = queue_now.saturating_sub(anchor_queue);
    wall.saturating_sub(counted).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn a_fresh_queue_starts_at_zero_and_runs() {
        let clock = QueueClock::resume(None, None);
        let t = clock.now_ms();
        assert!((0..1000).contains(&t));
    }

    #[test]
    fn a_restart_continues_from_the_newest_message_or_the_saved_row() {
        let saved = Saved {
            queue_ms: 5_000,
            anchor: None,
        };
        assert!(QueueClock::resume(Some(saved), Some(9_000)).now_ms() >= 9_000);
        assert!(QueueClock::resume(Some(saved), Some(1_000)).now_ms() >= 5_000);
    }

    #[test]
    fn time_switched_off_counts_only_with_a_synchronized_clock_on_both_sides() {
        // Saved while synchronized at wall 100 days, queue time 10 s; back 2 days later.
        let anchor = Some((100 * DAY, 10_000));
        let saved = Saved {
            queue_ms: 10_000,
            anchor,
        };
        let mut clock = QueueClock::resume(Some(saved), None);
        // Not synchronized yet (fake-hwclock's time, days behind): nothing added.
        assert_eq!(clock.observe(95 * DAY, false), Duration::ZERO);
        assert!(clock.now_ms() < 10_000 + 1_000);
        // Time sync arrives: the 2 days off are added, once.
        let added = clock.observe(102 * DAY, true);
        assert!(added.as_millis() as i64 > 2 * DAY - 1_000, "{added:?}");
        assert!(clock.now_ms() >= 10_000 + 2 * DAY - 1_000);
        assert_eq!(clock.observe(103 * DAY, true), Duration::ZERO);

        // Never synchronized before it stopped: the time off is unknowable, so it is nothing.
        let mut clock = QueueClock::resume(Some(Saved::default()), None);
        assert_eq!(clock.observe(102 * DAY, true), Duration::ZERO);
    }

    #[test]
    fn a_clock_behind_the_anchor_adds_nothing() {
        assert_eq!(offline_ms((100 * DAY, 0), 99 * DAY, 0), 0);
        // The gateway ran 1 h of the 3 h since the anchor: 2 h were spent switched off.
        assert_eq!(offline_ms((0, 0), 3 * 3_600_000, 3_600_000), 2 * 3_600_000);
    }

    #[test]
    fn the_previous_anchor_is_kept_until_it_has_been_used() {
        let anchor = Some((100 * DAY, 10_000));
        let mut clock = QueueClock::resume(
            Some(Saved {
                queue_ms: 10_000,
                anchor,
            }),
            None,
        );
        clock.observe(1, false);
        assert_eq!(clock.to_save().anchor, anchor);
        clock.observe(101 * DAY, true);
        let saved = clock.to_save();
        assert_eq!(saved.anchor.map(|a| a.0), Some(101 * DAY));
    }
}
