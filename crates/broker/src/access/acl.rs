//! The ACL: `[[broker.acl]]` rules compiled once, resolved once per session (the identity and
//! client id are fixed from CONNECT on), then checked on every PUBLISH and SUBSCRIBE without an
//! allocation.

use std::borrow::Cow;

use crate::config::{AclPattern, AclRule};
use fieldlink_core::topic::{TopicFilter, TopicName};

use super::Identity;

/// Whether every topic that `filter` matches is also matched by `pattern`.
///
/// This is what a SUBSCRIBE needs: `site/#` covers `site/+/temp`, but `site/+/temp` does not
/// cover `site/#`. It follows [`TopicFilter::matches`] exactly, `$`-topics included: a filter
/// that starts with a wildcard matches no `$`-topic, so `#` covers `+/x` but not `$SYS/#`.
pub fn filter_covers(pattern: &TopicFilter, filter: &TopicFilter) -> bool {
    let (p, f) = (pattern.as_str(), filter.as_str());
    if f.starts_with('$') && p.starts_with(['+', '#']) {
        return false;
    }
    // A leading `#` in the filter matches every topic of one level or more, and so does `+/#`
    // ('#' also matches its parent level): the one case where a pattern covers a '#' at the same
    // place with something other than '#'.
    if f == "#" && p == "+/#" {
        return true;
    }
    let mut p_levels = p.split('/');
    let mut f_levels = f.split('/');
    loop {
        match (p_levels.next(), f_levels.next()) {
            // '#' matches the rest, whatever it is, and also the parent level (`a/#` covers `a`).
            (Some("#"), _) => return true,
            (Some("+"), Some(level)) if level != "#" => {}
            (Some(p), Some(f)) if p == f && p != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// What one session may do.
#[derive(Debug, Clone)]
pub enum SessionAcl {
    /// No rules are configured: everything is allowed.
    Open,
    /// Only what these filters allow.
    Rules {
        /// Topics the session may publish on.
        publish: Vec<TopicFilter>,
        /// Filters covering what the session may subscribe to.
        subscribe: Vec<TopicFilter>,
    },
}

impl SessionAcl {
    /// Whether the session may publish on `topic`.
    pub fn may_publish(&self, topic: &TopicName) -> bool {
        match self {
            Self::Open => true,
            Self::Rules { publish, .. } => publish.iter().any(|f| f.matches(topic)),
        }
    }

    /// Whether the session may subscribe to `filter`: one allowed filter must cover every
    /// topic `filter` can match.
    pub fn may_subscribe(&self, filter: &TopicFilter) -> bool {
        match self {
            Self::Open => true,
            Self::Rules { subscribe, .. } => subscribe.iter().any(|f| filter_covers(f, filter)),
        }
    }
}

/// The compiled rules.
#[derive(Debug, Clone, Default)]
pub(super) struct Acl {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    users: Vec<String>,
    groups: Vec<String>,
    publish: Vec<Pattern>,
    subscribe: Vec<Pattern>,
}

/// A pattern without placeholders is a filter once and for all; one with placeholders is filled
/// in per check.
#[derive(Debug, Clone)]
enum Pattern {
    Fixed(TopicFilter),
    Template(AclPattern),
}

impl Acl {
    pub(super) fn new(rules: &[AclRule]) -> Self {
        Self {
            rules: rules
                .iter()
                .map(|r| Rule {
                    users: r.users.clone(),
                    groups: r.groups.clone(),
                    publish: r.publish.iter().map(Pattern::new).collect(),
                    subscribe: r.subscribe.iter().map(Pattern::new).collect(),
                })
                .collect(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The filters that apply to `who` connected as `client_id`, placeholders filled in.
    pub(super) fn for_session(&self, who: &Identity, client_id: &str) -> SessionAcl {
        if self.rules.is_empty() {
            return SessionAcl::Open;
        }
        let resolve = |patterns: fn(&Rule) -> &[Pattern]| -> Vec<TopicFilter> {
            self.rules_for(who)
                .flat_map(|r| patterns(r).iter())
                .filter_map(|p| p.resolve(who, client_id).map(Cow::into_owned))
                .collect()
        };
        SessionAcl::Rules {
            publish: resolve(|r| &r.publish),
            subscribe: resolve(|r| &r.subscribe),
        }
    }

    fn rules_for<'a>(&'a self, who: &'a Identity) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| r.applies_to(who))
    }
}

impl Rule {
    fn applies_to(&self, who: &Identity) -> bool {
        if self.users.is_empty() && self.groups.is_empty() {
            return true;
        }
        !who.anonymous
            && (self.users.contains(&who.name)
                || self.groups.iter().any(|g| who.groups.contains(g)))
    }
}

impl Pattern {
    fn new(pattern: &AclPattern) -> Self {
        if pattern.uses_user() || pattern.uses_client() {
            return Self::Template(pattern.clone());
        }
        match TopicFilter::new(pattern.as_str()) {
            Ok(filter) => Self::Fixed(filter),
            // `AclPattern` is a valid filter when it has no placeholder; keep it as a template
            // rather than trust that here (a template fills in and validates every time).
            Err(_) => Self::Template(pattern.clone()),
        }
    }

    /// The filter for this client; `None` when the pattern cannot apply to it: `%u` for an
    /// anonymous client, or a name or client id that would leave its level.
    fn resolve(&self, who: &Identity, client_id: &str) -> Option<Cow<'_, TopicFilter>> {
        match self {
            Self::Fixed(filter) => Some(Cow::Borrowed(filter)),
            Self::Template(pattern) => {
                let user = (!who.anonymous && stays_in_level(&who.name)).then_some(&*who.name);
                let client = stays_in_level(client_id).then_some(client_id);
                fill_in(pattern.as_str(), user, client)
                    .and_then(|text| TopicFilter::new(text).ok())
                    .map(Cow::Owned)
            }
        }
    }
}

/// A value may stand in for a placeholder only when it is one whole, wildcard-free level.
fn stays_in_level(value: &str) -> bool {
    !value.is_empty() && !value.contains(['/', '+', '#', '\0'])
}

/// `%u` and `%c` replaced in one pass (a name containing "%c" stays as it is); `None` when the
/// pattern needs a value that is not available.
fn fill_in(pattern: &str, user: Option<&str>, client: Option<&str>) -> Option<String> {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars();
    while let Some(ch) = chars.next() {
        if ch != '%' {
            out.push(ch);
            continue;
        }
        match chars.next() {
            Some('u') => out.push_str(user?),
            Some('c') => out.push_str(client?),
            // AclPattern admits no other escape.
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn filter(text: &str) -> TopicFilter {
        TopicFilter::new(text).unwrap()
    }

    fn covers(pattern: &str, f: &str) -> bool {
        filter_covers(&filter(pattern), &filter(f))
    }

    #[test]
    fn wider_patterns_cover_narrower_filters_and_not_the_reverse() {
        assert!(covers("site/#", "site/+/temp"));
        assert!(!covers("site/+/temp", "site/#"));
        assert!(covers("site/#", "site"));
        assert!(covers("site/#", "site/#"));
        assert!(covers("site/+/temp", "site/+/temp"));
        assert!(covers("site/+/temp", "site/a/temp"));
        assert!(!covers("site/a/temp", "site/+/temp"));
        assert!(!covers("site/+", "site/+/#"));
        assert!(!covers("site/+/#", "site/#"));
        assert!(covers("#", "+/x"));
        assert!(covers("+/#", "#"));
        assert!(!covers("#", "$SYS/#"));
        assert!(covers("$SYS/#", "$SYS/broker"));
    }

    #[test]
    fn placeholders_are_filled_in_one_pass() {
        assert_eq!(
            fill_in("u/%u/c/%c", Some("%c"), Some("x")).as_deref(),
            Some("u/%c/c/x")
        );
        assert_eq!(fill_in("u/%u", None, Some("x")), None);
        assert_eq!(
            fill_in("d/%c-in", None, Some("x")).as_deref(),
            Some("d/x-in")
        );
    }

    /// Topics over a small alphabet: up to five levels of `a`, `b`, `c`, the first maybe `$s`.
    fn all_topics() -> Vec<TopicName> {
        let mut out: Vec<Vec<&str>> = vec![vec!["a"], vec!["b"], vec!["c"], vec!["$s"]];
        let mut frontier = out.clone();
        for _ in 1..5 {
            let mut next = Vec::new();
            for t in &frontier {
                for level in ["a", "b", "c"] {
                    let mut longer = t.clone();
                    longer.push(level);
                    next.push(longer);
                }
            }
            out.extend(next.iter().cloned());
            frontier = next;
        }
        out.iter()
            .map(|levels| TopicName::new(levels.join("/")).unwrap())
            .collect()
    }

    /// Filters of up to four levels over `a`, `b`, `+`, maybe ending in `#`, maybe `$s` first.
    fn any_filter() -> impl Strategy<Value = TopicFilter> {
        (
            proptest::collection::vec(
                prop_oneof![
                    Just("a".to_owned()),
                    Just("b".to_owned()),
                    Just("+".to_owned())
                ],
                0..4,
            ),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_filter_map("empty filter", |(mut levels, dollar, hash)| {
                if dollar && !levels.is_empty() {
                    levels[0] = "$s".into();
                }
                if hash || levels.is_empty() {
                    levels.push("#".into());
                }
                TopicFilter::new(levels.join("/")).ok()
            })
    }

    proptest! {
        // Cheap cases (a few hundred topics each); enough of them to meet the rare corners,
        // such as `+/#` against `#`.
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn covering_agrees_with_brute_force(pattern in any_filter(), f in any_filter()) {
            let topics = all_topics();
            let brute = topics.iter().all(|t| !f.matches(t) || pattern.matches(t));
            prop_assert_eq!(filter_covers(&pattern, &f), brute, "{} covers {}?", pattern, f);
        }
    }
}
