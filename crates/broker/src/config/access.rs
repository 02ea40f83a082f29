//! `broker.credentials_file` and `[[broker.acl]]`: who may connect to the local broker and what
//! each client may publish and subscribe to.
//!
//! This module only validates; the checks themselves live in [`crate::access`], whose
//! module doc states the semantics (no rule at all: everyone allowed everywhere; any rule: deny
//! unless a rule for the client allows).

use std::fmt;
use std::path::PathBuf;

use fieldlink_core::config::{Collector, non_empty_path};
use fieldlink_core::topic::{TopicError, TopicFilter};
use serde::Deserialize;
use toml::Spanned;

/// Access control of the local broker: `broker.credentials_file` and `[[broker.acl]]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessSettings {
    /// The credentials file (`name:<argon2 PHC string>[:group,..]` lines, mode 0600); `None`:
    /// no username/password logins.
    pub credentials_file: Option<PathBuf>,
    /// The ACL rules in file order. Empty: every admitted client may publish and subscribe
    /// everywhere.
    pub acl: Vec<AclRule>,
}

/// One `[[broker.acl]]` rule: whom it is for and what it allows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AclRule {
    /// Identity names the rule is for.
    pub users: Vec<String>,
    /// Groups (from the credentials file) the rule is for.
    pub groups: Vec<String>,
    /// Patterns of topics these clients may publish on.
    pub publish: Vec<AclPattern>,
    /// Patterns of filters these clients may subscribe to.
    pub subscribe: Vec<AclPattern>,
}

impl AclRule {
    /// Whether the rule is for every client, anonymous ones included (no `users`, no `groups`).
    pub fn is_for_everyone(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty()
    }
}

/// An ACL pattern: an MQTT topic filter in which `%u` stands for the identity's name and `%c`
/// for the client id, as whole levels (`devices/%c/#`) or inside one (`users/%u-data/#`).
///
/// Valid by construction: with a sample value in place of each placeholder it is a valid
/// [`TopicFilter`], and it has no other `%` escape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AclPattern(String);

/// Why an ACL pattern is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AclPatternError {
    /// A `%` is followed by something other than `u` or `c` (or by nothing).
    #[error("unknown placeholder {0:?}: only %u (the user's name) and %c (the client id) exist")]
    UnknownPlaceholder(String),
    /// With the placeholders filled in, the pattern is not a topic filter.
    #[error("not a valid topic filter: {0}")]
    Topic(#[from] TopicError),
}

impl AclPattern {
    /// Validates `pattern`.
    pub fn new(pattern: impl Into<String>) -> Result<Self, AclPatternError> {
        let pattern = pattern.into();
        let mut sample = String::with_capacity(pattern.len());
        let mut chars = pattern.chars();
        while let Some(ch) = chars.next() {
            if ch != '%' {
                sample.push(ch);
                continue;
            }
            match chars.next() {
                Some('u' | 'c') => sample.push('x'),
                Some(other) => {
                    return Err(AclPatternError::UnknownPlaceholder(format!("%{other}")));
                }
                None => return Err(AclPatternError::UnknownPlaceholder("%".into())),
            }
        }
        TopicFilter::new(sample)?;
        Ok(Self(pattern))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the pattern uses `%u`.
    pub fn uses_user(&self) -> bool {
        self.0.contains("%u")
    }

    /// Whether the pattern uses `%c`.
    pub fn uses_client(&self) -> bool {
        self.0.contains("%c")
    }
}

impl fmt::Display for AclPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[[broker.acl]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRuleFile {
    /// Identity names the rule is for.
    pub users: Option<Vec<Spanned<String>>>,
    /// Groups the rule is for.
    pub groups: Option<Vec<Spanned<String>>>,
    /// Topic patterns these clients may publish on.
    pub publish: Option<Vec<Spanned<String>>>,
    /// Filter patterns these clients may subscribe to.
    pub subscribe: Option<Vec<Spanned<String>>>,
}

/// Validates `broker.credentials_file` and `[[broker.acl]]`.
pub(super) fn settings(
    credentials_file: Option<&Spanned<PathBuf>>,
    acl: &[Spanned<AclRuleFile>],
    c: &mut Collector<'_>,
) -> AccessSettings {
    let credentials_file = non_empty_path(
        c,
        "broker.credentials_file",
        credentials_file,
        "give the path of the credentials file (create it with `fieldlink credentials \
         add NAME`), or leave the key out",
    );
    let acl = acl
        .iter()
        .enumerate()
        .filter_map(|(i, entry)| rule(&format!("broker.acl[{i}]"), entry, c))
        .collect();
    AccessSettings {
        credentials_file,
        acl,
    }
}

fn rule(key: &str, entry: &Spanned<AclRuleFile>, c: &mut Collector<'_>) -> Option<AclRule> {
    let file = entry.get_ref();
    let errors_before = c.len();
    let users = names(c, &format!("{key}.users"), file.users.as_deref(), false);
    let groups = names(c, &format!("{key}.groups"), file.groups.as_deref(), true);
    let publish = patterns(c, &format!("{key}.publish"), file.publish.as_deref());
    let subscribe = patterns(c, &format!("{key}.subscribe"), file.subscribe.as_deref());
    let grants_nothing = file.publish.as_ref().is_none_or(Vec::is_empty)
        && file.subscribe.as_ref().is_none_or(Vec::is_empty);
    if grants_nothing {
        c.without_value(
            key,
            Some(entry.span()),
            "the rule allows nothing: it has neither `publish` nor `subscribe` patterns",
            "add publish = [\"topic/pattern/#\"] and/or subscribe = [..]; what no rule allows \
             is denied anyway",
        );
    }
    (c.len() == errors_before).then_some(AclRule {
        users,
        groups,
        publish,
        subscribe,
    })
}

fn names(
    c: &mut Collector<'_>,
    key: &str,
    values: Option<&[Spanned<String>]>,
    group: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for (i, value) in values.unwrap_or_default().iter().enumerate() {
        let name = value.get_ref();
        let bad = name.is_empty()
            || group && name.contains(|ch: char| ch == ',' || ch == ':' || ch.is_whitespace());
        if bad {
            c.at(
                &format!("{key}[{i}]"),
                Some(value.span()),
                if group {
                    "not a valid group name"
                } else {
                    "must not be empty"
                },
                if group {
                    "use a non-empty name without ',', ':' or spaces, as in the credentials file"
                } else {
                    "write the user's name (a credentials-file name, certificate CN or PSK identity)"
                },
            );
        } else {
            out.push(name.clone());
        }
    }
    out
}

fn patterns(
    c: &mut Collector<'_>,
    key: &str,
    values: Option<&[Spanned<String>]>,
) -> Vec<AclPattern> {
    let mut out = Vec::new();
    for (i, value) in values.unwrap_or_default().iter().enumerate() {
        match AclPattern::new(value.get_ref().as_str()) {
            Ok(pattern) => out.push(pattern),
            Err(e) => c.at(
                &format!("{key}[{i}]"),
                Some(value.span()),
                e.to_string(),
                match e {
                    AclPatternError::UnknownPlaceholder(_) => {
                        "use %u for the user's name and %c for the client id, nothing else"
                    }
                    _ => {
                        "write an MQTT topic filter: '+' alone in a level, '#' alone in the \
                         last level, e.g. \"sensors/%c/#\""
                    }
                },
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_accept_placeholders_as_levels_or_inside_them() {
        for good in [
            "devices/%c/#",
            "users/%u-data/+",
            "%u",
            "a/b%c/c",
            "#",
            "+/%u/%c",
        ] {
            assert!(AclPattern::new(good).is_ok(), "{good}");
        }
        assert!(AclPattern::new("d/%u/#").unwrap().uses_user());
        assert!(!AclPattern::new("d/%u/#").unwrap().uses_client());
    }

    #[test]
    fn patterns_reject_unknown_placeholders_and_bad_filters() {
        assert_eq!(
            AclPattern::new("a/%d"),
            Err(AclPatternError::UnknownPlaceholder("%d".into()))
        );
        assert_eq!(
            AclPattern::new("a/%"),
            Err(AclPatternError::UnknownPlaceholder("%".into()))
        );
        assert_eq!(
            AclPattern::new("a/+%u"),
            Err(AclPatternError::Topic(TopicError::MisplacedSingleLevel))
        );
        assert_eq!(
            AclPattern::new("%u#"),
            Err(AclPatternError::Topic(TopicError::MisplacedMultiLevel))
        );
        assert_eq!(
            AclPattern::new(""),
            Err(AclPatternError::Topic(TopicError::Empty))
        );
    }
}
