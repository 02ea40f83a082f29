//! MQTT topic names and filters (MQTT 3.1.1 §4.7, MQTT 5 §4.7).
//!
//! A [`TopicName`] is what a message is published on: no wildcards. A [`TopicFilter`] is what a
//! subscription or route matches with: `+` stands for one level, `#` for any number of levels
//! at the end. Both are validated once, when built, so the rest of the code never re-checks.

use std::fmt;

/// The longest topic MQTT can encode (a two-byte length prefix).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a topic name or filter is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The topic is the empty string.
    #[error("a topic must not be empty")]
    Empty,
    /// The topic is longer than [`MAX_TOPIC_LEN`] bytes.
    #[error("a topic must not be longer than {MAX_TOPIC_LEN} bytes")]
    TooLong,
    /// The topic contains a NUL character.
    #[error("a topic must not contain the NUL character")]
    Nul,
    /// A topic name (not a filter) contains `+` or `#`.
    #[error("a topic name must not contain the wildcards '+' or '#'")]
    WildcardInName,
    /// `#` is somewhere other than alone in the last level.
    #[error("'#' must be alone in the last level of a filter (as in 'a/b/#')")]
    MisplacedMultiLevel,
    /// `+` shares its level with other characters.
    #[error("'+' must be alone in its level (as in 'a/+/c')")]
    MisplacedSingleLevel,
}

/// A topic a message is published on: valid UTF-8, not empty, no wildcards.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(String);

impl TopicName {
    /// Validates `topic` as a topic name.
    pub fn new(topic: impl Into<String>) -> Result<Self, TopicError> {
        let topic = topic.into();
        check_common(&topic)?;
        if topic.contains(['+', '#']) {
            return Err(TopicError::WildcardInName);
        }
        Ok(Self(topic))
    }

    /// The topic as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A subscription or route filter: a topic in which `+` and `#` are wildcards.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(String);

impl TopicFilter {
    /// Validates `filter` as a topic filter.
    pub fn new(filter: impl Into<String>) -> Result<Self, TopicError> {
        let filter = filter.into();
        check_common(&filter)?;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level.contains('#') && (level != "#" || levels.peek().is_some()) {
                return Err(TopicError::MisplacedMultiLevel);
            }
            if level.contains('+') && level != "+" {
                return Err(TopicError::MisplacedSingleLevel);
            }
        }
        Ok(Self(filter))
    }

    /// The filter as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a message published on `topic` matches this filter.
    ///
    /// As the MQTT specification requires (§4.7.2), wildcards in the first level do not match
    /// topics that start with `$` (such as `$SYS/...`).
    pub fn matches(&self, topic: &TopicName) -> bool {
        let topic = topic.as_str();
        if topic.starts_with('$') && self.0.starts_with(['+', '#']) {
            return false;
        }
        let mut filter_levels = self.0.split('/');
        let mut topic_levels = topic.split('/');
        loop {
            match (filter_levels.next(), topic_levels.next()) {
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(f), Some(t)) if f == t => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_common(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if topic.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(filter: &str, topic: &str) -> bool {
        TopicFilter::new(filter)
            .unwrap()
            .matches(&TopicName::new(topic).unwrap())
    }

    #[test]
    fn names_reject_wildcards_empty_and_nul() {
        assert_eq!(TopicName::new("a/+/c"), Err(TopicError::WildcardInName));
        assert_eq!(TopicName::new("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(TopicName::new(""), Err(TopicError::Empty));
        assert_eq!(TopicName::new("a\0b"), Err(TopicError::Nul));
        assert_eq!(
            TopicName::new("a".repeat(MAX_TOPIC_LEN + 1)),
            Err(TopicError::TooLong)
        );
        assert!(TopicName::new("a//b/").is_ok());
    }

    #[test]
    fn filters_reject_misplaced_wildcards() {
        for bad in ["a/#/c", "a#", "a/b#", "#/a"] {
            assert_eq!(
                TopicFilter::new(bad),
                Err(TopicError::MisplacedMultiLevel),
                "{bad}"
            );
        }
        for bad in ["a+", "a/+b/c", "++"] {
            assert_eq!(
                TopicFilter::new(bad),
                Err(TopicError::MisplacedSingleLevel),
                "{bad}"
            );
        }
        for good in ["#", "+", "a/+/c", "a/#", "+/+/#", "/"] {
            assert!(TopicFilter::new(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn wildcards_match_as_the_spec_says() {
        assert!(matches("a/b/c", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(matches("a/+/c", "a/x/c"));
        assert!(matches("a/+/c", "a//c"));
        assert!(!matches("a/+/c", "a/x/y/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(matches("+", "a"));
        assert!(!matches("+", "a/b"));
        assert!(matches("+/+", "/a"));
    }

    #[test]
    fn leading_wildcards_skip_dollar_topics() {
        assert!(!matches("#", "$SYS/broker"));
        assert!(!matches("+/broker", "$SYS/broker"));
        assert!(matches("$SYS/#", "$SYS/broker"));
    }
}
