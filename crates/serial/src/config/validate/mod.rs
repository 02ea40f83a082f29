//! Validation of `[bridge]` and `[[devices]]` into [`super`]'s types: every value checked, every
//! mistake recorded with its key, place and a hint.
//!
//! [`bridge`] checks `[bridge]` and its topic templates; [`devices`] each `[[devices]]` entry
//! (`device.rs`), how it is reached and what it speaks (`link.rs`), and its points
//! (`point.rs`, where the Modbus register rules are).

mod bridge;
mod device;
mod link;
mod point;

use fieldlink_core::config::Collector;
use toml::Spanned;

pub use bridge::bridge;
pub use device::devices;

/// A required name usable as a topic level.
pub(super) fn name<T>(
    c: &mut Collector<'_>,
    key: &str,
    value: &Option<Spanned<String>>,
    entry: &Spanned<T>,
    hint: &str,
) -> String {
    match value {
        None => {
            c.missing(key, entry.span(), hint);
            String::new()
        }
        Some(n) => {
            if !is_name(n.get_ref()) {
                c.at(
                    key,
                    Some(n.span()),
                    "not a valid name",
                    "use 1 to 64 letters, digits, '-' or '_' (it becomes a topic level)",
                );
            }
            n.get_ref().clone()
        }
    }
}

pub(super) fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
}

/// The named captures of a pattern already known to compile.
pub(super) fn capture_names(pattern: &str) -> Vec<String> {
    regex_lite::Regex::new(pattern)
        .map(|re| re.capture_names().flatten().map(str::to_owned).collect())
        .unwrap_or_default()
}
