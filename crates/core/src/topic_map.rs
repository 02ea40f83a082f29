//! Topic mapping between the site and the cloud: a filter that picks topics, and a template
//! that builds the new topic from what the filter's wildcards matched.
//!
//! In a template, `{1}`, `{2}`, ... stand for the levels matched by the filter's first,
//! second, ... `+`, and `{#}` for the levels matched by its `#` (joined with `/`). Named
//! variables such as `{device_id}` are replaced once, when the configuration is read.
//!
//! ```
//! use fieldlink_core::topic::{TopicFilter, TopicName};
//! use fieldlink_core::topic_map::TopicRewrite;
//!
//! let rewrite = TopicRewrite::new(
//!     TopicFilter::new("site/+/alarm/#").unwrap(),
//!     "alarms/{device_id}/{1}/{#}",
//!     &[("device_id", "gw-7")],
//! )
//! .unwrap();
//! let topic = TopicName::new("site/boiler/alarm/high/temp").unwrap();
//! assert_eq!(rewrite.apply(&topic).unwrap().as_str(), "alarms/gw-7/boiler/high/temp");
//! ```

use crate::topic::{TopicFilter, TopicName};

/// A filter and the template that rewrites the topics it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRewrite {
    filter: TopicFilter,
    template: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// The n-th `+` level (0-based).
    Level(usize),
    /// What `#` matched.
    Rest,
}

impl TopicRewrite {
    /// Parses `template` against `filter`; `vars` are the named variables it may use.
    /// The error says what is wrong in words fit for a configuration error.
    pub fn new(filter: TopicFilter, template: &str, vars: &[(&str, &str)]) -> Result<Self, String> {
        let pluses = filter.as_str().split('/').filter(|l| *l == "+").count();
        let has_rest = filter.as_str().ends_with('#');
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            text.push_str(&rest[..open]);
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("'{{' without '}}' in \"{template}\""));
            };
            let name = &rest[open + 1..open + close];
            rest = &rest[open + close + 1..];
            if let Some((_, value)) = vars.iter().find(|(var, _)| *var == name) {
                text.push_str(value);
                continue;
            }
            let part = match name {
                "#" if has_rest => Part::Rest,
                "#" => {
                    return Err(format!(
                        "{{#}} needs a filter ending in '#', not \"{filter}\""
                    ));
                }
                n => match n.parse::<usize>() {
                    Ok(i) if (1..=pluses).contains(&i) => Part::Level(i - 1),
                    Ok(i) => {
                        return Err(format!(
                            "{{{i}}}: the filter \"{filter}\" has {pluses} '+' level(s)"
                        ));
                    }
                    Err(_) => {
                        let known: Vec<String> =
                            vars.iter().map(|(v, _)| format!("{{{v}}}")).collect();
                        return Err(format!(
                            "unknown placeholder {{{n}}}; use {{1}}..{{{pluses}}} for '+' levels, {{#}} for '#'{}{}",
                            if known.is_empty() { "" } else { ", or " },
                            known.join(", ")
                        ));
                    }
                },
            };
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(part);
        }
        text.push_str(rest);
        if text.contains('}') {
            return Err(format!("'}}' without '{{' in \"{template}\""));
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        let wildcard = |p: &Part| matches!(p, Part::Text(t) if t.contains(['+', '#']));
        if parts.iter().any(wildcard) {
            return Err(format!(
                "\"{template}\" would publish to a topic with '+' or '#'"
            ));
        }
        if parts.is_empty() {
            return Err("the template is empty".into());
        }
        Ok(Self {
            filter,
            template: parts,
        })
    }

    /// The filter that picks the topics.
    pub fn filter(&self) -> &TopicFilter {
        &self.filter
    }

    /// The rewritten topic, or `None` when the filter does not match (or the result is not a
    /// valid topic, e.g. too long).
    pub fn apply(&self, topic: &TopicName) -> Option<TopicName> {
        if !self.filter.matches(topic) {
            return None;
        }
        let captures = captures(&self.filter, topic);
        let mut out = String::with_capacity(topic.as_str().len() + 16);
        for part in &self.template {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Level(i) => out.push_str(captures.levels.get(*i).copied().unwrap_or("")),
                Part::Rest => out.push_str(captures.rest),
            }
        }
        TopicName::new(out).ok()
    }
}

/// What a filter's wildcards matched in a topic the filter matches.
struct Captures<'a> {
    levels: Vec<&'a str>,
    rest: &'a str,
}

fn captures<'a>(filter: &TopicFilter, topic: &'a TopicName) -> Captures<'a> {
    let topic = topic.as_str();
    let mut levels = Vec::new();
    let mut offset = 0;
    let mut topic_levels = topic.split('/');
    for level in filter.as_str().split('/') {
        if level == "#" {
            return Captures {
                levels,
                rest: topic.get(offset..).unwrap_or(""),
            };
        }
        let Some(matched) = topic_levels.next() else {
            break;
        };
        if level == "+" {
            levels.push(matched);
        }
        offset = (offset + matched.len() + 1).min(topic.len());
    }
    Captures { levels, rest: "" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(filter: &str, template: &str) -> Result<TopicRewrite, String> {
        TopicRewrite::new(
            TopicFilter::new(filter).unwrap(),
            template,
            &[("device_id", "gw-7")],
        )
    }

    fn apply(filter: &str, template: &str, topic: &str) -> Option<String> {
        rewrite(filter, template)
            .unwrap()
            .apply(&TopicName::new(topic).unwrap())
            .map(|t| t.as_str().to_owned())
    }

    #[test]
    fn levels_rest_and_variables_fill_the_template() {
        assert_eq!(
            apply("site/+/+/#", "d/{device_id}/{2}-{1}/{#}", "site/a/b/c/d").as_deref(),
            Some("d/gw-7/b-a/c/d")
        );
        assert_eq!(apply("a/#", "x/{#}", "a").as_deref(), Some("x/"));
        assert_eq!(apply("a/#", "x/{#}", "a/b").as_deref(), Some("x/b"));
        assert_eq!(apply("#", "cloud/{#}", "a/b").as_deref(), Some("cloud/a/b"));
        assert_eq!(apply("a/+", "{1}", "a/b").as_deref(), Some("b"));
        assert_eq!(apply("a/+", "{1}", "b/b"), None, "no match, no topic");
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        assert!(rewrite("a/+", "{2}").unwrap_err().contains("1 '+' level"));
        assert!(rewrite("a/+", "{#}").unwrap_err().contains("ending in '#'"));
        assert!(
            rewrite("a/#", "{site}")
                .unwrap_err()
                .contains("{device_id}")
        );
        assert!(rewrite("a/#", "x/{1").unwrap_err().contains("without"));
        assert!(rewrite("a/#", "x/1}").unwrap_err().contains("without"));
        assert!(
            rewrite("a/#", "x/+/{#}")
                .unwrap_err()
                .contains("'+' or '#'")
        );
        assert!(rewrite("a/#", "").is_err());
    }

    #[test]
    fn captured_levels_keep_their_text() {
        // A '+' level may be empty in a topic ("a//b"); the capture is empty, not shifted.
        assert_eq!(apply("a/+/+", "{2}|{1}", "a//b").as_deref(), Some("b|"));
    }
}
