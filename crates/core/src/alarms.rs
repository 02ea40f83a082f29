//! Problems the operator must fix, in words, for the status ("ALARM" lines in `fieldlink
//! status`, `alarms` in `status.json`): a CRL past its nextUpdate, a disk too full for the queue.
//!
//! Process-wide on purpose: each alarm is one fact about the machine (a file, a file system),
//! whichever component meets it, and the status must show it once. Raising an alarm that is
//! already raised with the same text is a no-op, so that callers can log only on a change.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

static ALARMS: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

/// Raises (or rewords) the alarm `key`; `true` when that changed anything, i.e. when it is news
/// worth a log line.
pub fn raise(key: &str, text: String) -> bool {
    let mut alarms = ALARMS.lock().unwrap_or_else(PoisonError::into_inner);
    if alarms.get(key) == Some(&text) {
        return false;
    }
    alarms.insert(key.to_owned(), text);
    true
}

/// Clears the alarm `key`; `true` when it was raised.
pub fn clear(key: &str) -> bool {
    ALARMS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(key)
        .is_some()
}

/// Every alarm raised now, in words, ordered by key.
pub fn all() -> Vec<String> {
    ALARMS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alarm_is_news_once_until_it_changes_or_clears() {
        assert!(raise("test:a", "disk full".into()));
        assert!(
            !raise("test:a", "disk full".into()),
            "the same again is no news"
        );
        assert!(raise("test:a", "disk still full".into()));
        assert!(all().contains(&"disk still full".to_owned()));
        assert!(clear("test:a"));
        assert!(!clear("test:a"));
        assert!(!all().contains(&"disk still full".to_owned()));
    }
}
