//! Reads a TOML document into the serde file layer while collecting *every* mistake, not only
//! the first one serde meets.
//!
//! serde stops at the first error. So we parse the document once into a span-keeping tree,
//! deserialize, and when that fails at a place in the file, record the error, cut the offending
//! entry out of the tree and try again. Spans stay those of the original text, so every error
//! points at its real line. Each round removes one entry, so the loop ends.
//!
//! What is wrong with the entry is found from the file layer's type ([`super::schema`]), not
//! from serde's words: only serde's *place* of the error is used.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use super::error::Collector;
use super::schema::{self, Found, Segment};

/// Deserializes `source` into `T`, recording every syntax, unknown-key and type error in
/// `errors`. Returns `None` when nothing usable could be read.
pub(crate) fn read<T: DeserializeOwned>(source: &str, errors: &mut Collector<'_>) -> Option<T> {
    let root = parse_tree(source, errors)?;
    read_tree(root, errors)
}

/// Parses `source` into a span-keeping tree, recording every syntax error.
pub(crate) fn parse_tree<'a>(
    source: &'a str,
    errors: &mut Collector<'_>,
) -> Option<Spanned<DeTable<'a>>> {
    let (mut root, syntax_errors) = DeTable::parse_recoverable(source);
    if !syntax_errors.is_empty() {
        for e in syntax_errors {
            errors.without_value(
                "",
                e.span(),
                format!("not valid TOML: {}", e.message().trim()),
                "fix the syntax at this place (see https://toml.io)",
            );
        }
        return None;
    }
    root.get_mut().make_owned();
    Some(root)
}

/// Deserializes a tree into `T`, recording every unknown-key and type error in `errors`.
pub(crate) fn read_tree<T: DeserializeOwned>(
    mut root: Spanned<DeTable<'_>>,
    errors: &mut Collector<'_>,
) -> Option<T> {
    loop {
        let de = toml::de::Deserializer::from(root.clone());
        let e = match T::deserialize(de) {
            Ok(value) => return Some(value),
            Err(e) => e,
        };
        let Some(span) = e.span() else {
            errors.without_value("", None, e.message().to_owned(), "");
            return None;
        };
        match cut(root.get_mut(), &span, "") {
            Some(found) => report::<T>(errors, &found, span),
            None => {
                errors.without_value("", Some(span), e.message().trim().to_owned(), "");
                return None;
            }
        }
    }
}

/// Says what is wrong with the entry cut out, from the file layer's own type ([`schema`]):
/// a key the table does not have, or a value of another kind than the key takes. serde's error
/// text is never read (its words change between releases), only its place in the file.
fn report<T: DeserializeOwned>(errors: &mut Collector<'_>, found: &Cut, span: Range<usize>) {
    let key = found.path.as_str();
    let path = schema::segments(key);
    if let Some((Segment::Key(last), parent)) = path.split_last()
        && let Found::Table(allowed) = schema::expected::<T>(parent)
        && !allowed.contains(&last.as_str())
    {
        if errors.tolerates(&found.key_span) {
            // A site layer written by a newer release: its new keys are additive by the
            // format's rule, so this release runs without them.
            errors.warn(
                key,
                Some(found.key_span.clone()),
                "not known to this release (written by a newer fieldlink): ignored",
            );
            return;
        }
        let allowed: Vec<String> = allowed.iter().map(|k| format!("`{k}`")).collect();
        errors.entry(
            key,
            found.key_span.clone(),
            found.value_span.clone(),
            "unknown key",
            format!(
                "check the spelling or remove it; the keys allowed here are {}",
                allowed.join(", ")
            ),
        );
        return;
    }
    match schema::expected::<T>(&path) {
        Found::Value(kind) => errors.at(
            key,
            Some(span),
            format!("wrong type: expected {kind}"),
            "write a value of the expected type",
        ),
        Found::Table(_) => errors.at(
            key,
            Some(span),
            "wrong type: expected a table",
            "write a table ([section] or { key = value, .. })",
        ),
        Found::Lost => errors.at(
            key,
            Some(span),
            "not a value this key takes",
            "see the annotated configs/fieldlink.toml for what it takes",
        ),
    }
}

/// An entry cut out of the tree.
struct Cut {
    /// Its dotted key, e.g. `broker.listeners[0].port`.
    path: String,
    /// Where its key is written.
    key_span: Range<usize>,
    /// Where its value is written.
    value_span: Range<usize>,
}

/// Removes the entry that `span` falls in.
fn cut(table: &mut DeTable<'_>, span: &Range<usize>, prefix: &str) -> Option<Cut> {
    let mut hit = None;
    for (key, value) in table.iter_mut() {
        let path = join(prefix, key.get_ref());
        // Deeper entries first: a table header's span may cover its whole body.
        if let Some(found) = cut_inside(value, span, &path) {
            return Some(found);
        }
        if contains(&key.span(), span) || contains(&value.span(), span) {
            hit = Some((key.clone(), path, value.span()));
            break;
        }
    }
    let (key, path, value_span) = hit?;
    table.remove(&key);
    Some(Cut {
        path,
        key_span: key.span(),
        value_span,
    })
}

fn cut_inside(value: &mut Spanned<DeValue<'_>>, span: &Range<usize>, path: &str) -> Option<Cut> {
    match value.get_mut() {
        DeValue::Table(inner) => cut(inner, span, path),
        DeValue::Array(items) => {
            let mut hit = None;
            for (i, item) in items.iter_mut().enumerate() {
                let item_path = format!("{path}[{i}]");
                if let Some(found) = cut_inside(item, span, &item_path) {
                    return Some(found);
                }
                if contains(&item.span(), span) {
                    hit = Some((i, item_path, item.span()));
                    break;
                }
            }
            let (index, path, item_span) = hit?;
            let mut kept = DeArray::new();
            for (i, item) in items.iter().enumerate() {
                if i != index {
                    kept.push(item.clone());
                }
            }
            *value.get_mut() = DeValue::Array(kept);
            Some(Cut {
                path,
                key_span: item_span.clone(),
                value_span: item_span,
            })
        }
        _ => None,
    }
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && outer.start < outer.end
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}
