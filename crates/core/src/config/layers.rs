//! Layered configuration: the shipped defaults first, the site's own settings on top.
//!
//! An A/B update replaces the root filesystem and with it `/etc/fieldlink/fieldlink.toml`; what
//! the operator changed must survive it, so it lives apart, in the data directory (the *site
//! layer*, written by the CLI and the web UI). The gateway reads both and merges them:
//!
//! - a later layer wins key by key for values and tables;
//! - a layer that sets an array (`[[routes]]`, `[[broker.listeners]]`, `[[devices]]`, …)
//!   replaces that array as a whole: merging list items by position would silently pair a
//!   site's device with an unrelated shipped one.
//!
//! Errors must still name the file and line they came from. So the layers are laid out one
//! after the other in one virtual text ([`Layers::text`]); each layer is parsed on its own but
//! with its spans counted from where it starts in that text (it is parsed with the bytes before
//! it blanked out), so the merged tree's spans point into the virtual text and the
//! [`Collector`] maps each back to its layer's file, line and column.
//!
//! The site layer carries its format (`[site] format`, `readable_from`), as the queue does: a
//! release refuses a site file that says it cannot read it (leaving it untouched), and runs
//! with a newer release's additive keys ignored (warned about).

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::{Collector, ConfigError, ConfigErrors, Origin, is_secret};
use super::reader;

/// The format of the site configuration this release writes.
pub const SITE_FORMAT: i64 = 1;

/// The oldest site format a release must understand to read what this one writes. Raise it
/// (to [`SITE_FORMAT`]) only for a change that an older release would misread; additive keys
/// do not raise it: older releases ignore them.
pub const SITE_READABLE_FROM: i64 = 1;

/// The table of the site layer that records its format; never part of the settings.
pub const SITE_TABLE: &str = "site";

/// What a layer is, which decides the rules it is read under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// Shipped with the image: read as written.
    Shipped,
    /// The site's own settings: carries its format, and may not set `fixed` keys (those
    /// that decide where the site layer itself lives).
    Site {
        /// Dotted keys the site layer may not set.
        fixed: &'static [&'static str],
    },
}

#[derive(Debug, Clone)]
struct Layer {
    origin: Origin,
    span: Range<usize>,
    kind: LayerKind,
}

/// Configuration layers, lowest first, laid out one after the other in one text.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    text: String,
    layers: Vec<Layer>,
}

impl Layers {
    /// No layer yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a layer on top of the others.
    pub fn push(&mut self, origin: Origin, text: &str, kind: LayerKind) {
        if !self.text.is_empty() {
            self.text.push('\n');
        }
        let start = self.text.len();
        self.text.push_str(text);
        self.layers.push(Layer {
            origin,
            span: start..self.text.len(),
            kind,
        });
    }

    /// Whether no layer was added.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The layers' texts one after the other: what spans point into.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Where each layer came from, lowest first.
    pub fn origins(&self) -> Vec<Origin> {
        self.layers.iter().map(|l| l.origin.clone()).collect()
    }

    /// Where each layer starts, with its origin.
    pub(crate) fn starts(&self) -> Vec<(usize, Origin)> {
        self.layers
            .iter()
            .map(|l| (l.span.start, l.origin.clone()))
            .collect()
    }

    /// A layer's text with every byte before it blanked, so that its spans count from the
    /// start of [`Self::text`]. Blanks keep byte offsets (one space per byte) and are TOML
    /// whitespace.
    fn positioned(&self, layer: &Layer) -> String {
        let mut text = " ".repeat(layer.span.start);
        text.push_str(&self.text[layer.span.clone()]);
        text
    }
}

/// Reads every layer, merges them and validates the result into `S` with `validate`; every
/// mistake of every layer is returned at once, each naming its file. On success, the
/// warnings (keys of a newer release ignored) come with the settings.
pub fn parse_layers<F, S>(
    layers: &Layers,
    validate: impl FnOnce(&F, &mut Collector<'_>) -> S,
) -> Result<(S, Vec<ConfigError>), ConfigErrors>
where
    F: DeserializeOwned,
{
    let mut errors = Collector::layered(layers);
    let texts: Vec<String> = layers.layers.iter().map(|l| layers.positioned(l)).collect();
    let merged = merged_tree(layers, &texts, &mut errors);
    let file: Option<F> = merged.and_then(|tree| reader::read_tree(tree, &mut errors));
    let settings = file.map(|file| validate(&file, &mut errors));
    let warnings = errors.finish_with_warnings()?;
    settings.map(|s| (s, warnings)).ok_or_else(|| {
        ConfigErrors(vec![ConfigError {
            origin: Origin::Merged(layers.origins()),
            position: None,
            key: String::new(),
            value: None,
            problem: "nothing could be read".into(),
            hint: "check that the files are TOML (see https://toml.io)".into(),
        }])
    })
}

/// One value of the effective configuration and where it was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Dotted key, e.g. `broker.listeners[0].port`.
    pub key: String,
    /// The value as written (`<redacted>` for secrets).
    pub value: String,
    /// The file that set it.
    pub origin: Origin,
    /// Its 1-based line in that file.
    pub line: usize,
}

/// The effective configuration, value by value in the order of the layers and their lines,
/// each with the file that set it. Only what some layer sets is listed (everything else is
/// a built-in default). Every syntax mistake of every layer is returned at once.
pub fn effective(layers: &Layers) -> Result<Vec<Setting>, ConfigErrors> {
    let mut errors = Collector::layered(layers);
    let texts: Vec<String> = layers.layers.iter().map(|l| layers.positioned(l)).collect();
    let merged = merged_tree(layers, &texts, &mut errors);
    errors.finish()?;
    let mut leaves = Vec::new();
    if let Some(tree) = merged {
        collect_leaves(tree.get_ref(), "", &mut leaves);
    }
    leaves.sort_by_key(|(_, span)| span.start);
    let starts = layers.starts();
    Ok(leaves
        .into_iter()
        .map(|(key, span)| {
            let (start, origin) = starts
                .iter()
                .rev()
                .find(|(start, _)| *start <= span.start)
                .cloned()
                .unwrap_or((0, Origin::BuiltIn));
            let before = &layers.text[start..span.start];
            let raw = layers.text[span].trim();
            let value = if is_secret(&key) {
                "<redacted>".to_owned()
            } else {
                raw.to_owned()
            };
            Setting {
                key,
                value,
                origin,
                line: before.matches('\n').count() + 1,
            }
        })
        .collect())
}

/// Parses each layer and merges it onto those below; `None` when a layer could not be parsed
/// (its syntax errors are recorded, and the other layers' too).
fn merged_tree<'a>(
    layers: &Layers,
    texts: &'a [String],
    errors: &mut Collector<'_>,
) -> Option<Spanned<DeTable<'a>>> {
    let mut merged: Option<Spanned<DeTable<'a>>> = None;
    let mut all_parsed = true;
    for (layer, text) in layers.layers.iter().zip(texts) {
        let Some(mut tree) = reader::parse_tree(text, errors) else {
            all_parsed = false;
            continue;
        };
        if let LayerKind::Site { fixed } = layer.kind
            && !site_rules(tree.get_mut(), layer, fixed, errors)
        {
            continue; // a format this release cannot read: the layer is left out, and refused
        }
        merged = Some(match merged {
            None => tree,
            Some(mut lower) => {
                merge(lower.get_mut(), tree.into_inner());
                lower
            }
        });
    }
    if !all_parsed {
        return None;
    }
    Some(merged.unwrap_or_else(|| Spanned::new(0..0, DeTable::new())))
}

/// Later layers win: tables merge key by key, anything else (values, arrays, arrays of
/// tables) is replaced whole.
fn merge<'a>(lower: &mut DeTable<'a>, upper: DeTable<'a>) {
    for (key, value) in upper {
        let both_tables = matches!(value.get_ref(), DeValue::Table(_))
            && matches!(
                lower.get(key.get_ref().as_ref()).map(Spanned::get_ref),
                Some(DeValue::Table(_))
            );
        if both_tables {
            if let (Some(DeValue::Table(below)), DeValue::Table(above)) = (
                lower.get_mut(key.get_ref().as_ref()).map(Spanned::get_mut),
                value.into_inner(),
            ) {
                merge(below, above);
            }
        } else {
            // Removed first: inserting over a key keeps the old key, with its old span.
            lower.remove(key.get_ref().as_ref());
            lower.insert(key, value);
        }
    }
}

/// Checks the site layer's format record and its fixed keys, and takes the record out of
/// the tree. `false` when this release cannot read the layer at all.
fn site_rules(
    tree: &mut DeTable<'_>,
    layer: &Layer,
    fixed: &[&str],
    errors: &mut Collector<'_>,
) -> bool {
    let record = tree.remove(SITE_TABLE);
    let format = record_int(record.as_ref(), "format", errors).map_or(SITE_FORMAT, |(f, _)| f);
    let readable_from = record_int(record.as_ref(), "readable_from", errors);
    if let Some((readable_from, span)) = readable_from
        && readable_from > SITE_FORMAT
    {
        errors.without_value(
            "site.readable_from",
            Some(span),
            format!(
                "the site configuration was written by a newer fieldlink (format {format}) \
                 that releases before format {readable_from} cannot read; this release reads \
                 format {SITE_FORMAT}"
            ),
            "the file is left as it is: start the newer release again, or restore an \
             earlier version of it (`fieldlink config history`, `fieldlink config restore N`)",
        );
        return false;
    }
    if format > SITE_FORMAT {
        errors.tolerate(layer.span.clone());
    }
    for key in fixed {
        if let Some(span) = find(tree, key) {
            errors.without_value(
                key,
                Some(span),
                "cannot be set in the site configuration",
                "set it in the shipped configuration file: it decides where the site \
                 configuration itself lives",
            );
        }
    }
    true
}

/// `[site] name`, an integer; recorded as a mistake when it is something else.
fn record_int(
    record: Option<&Spanned<DeValue<'_>>>,
    name: &str,
    errors: &mut Collector<'_>,
) -> Option<(i64, Range<usize>)> {
    let DeValue::Table(table) = record?.get_ref() else {
        return None;
    };
    let value = table.get(name)?;
    let key = format!("{SITE_TABLE}.{name}");
    match value.get_ref() {
        DeValue::Integer(i) => match i.to_string().parse::<i64>() {
            Ok(n) if n >= 1 => Some((n, value.span())),
            _ => {
                errors.at(
                    &key,
                    Some(value.span()),
                    "not a format number",
                    "leave the [site] table as fieldlink wrote it",
                );
                None
            }
        },
        _ => {
            errors.at(
                &key,
                Some(value.span()),
                "wrong type: expected an integer",
                "leave the [site] table as fieldlink wrote it",
            );
            None
        }
    }
}

/// The span of a dotted key's value, if the tree sets it.
fn find(tree: &DeTable<'_>, dotted: &str) -> Option<Range<usize>> {
    let (first, rest) = dotted.split_once('.').unwrap_or((dotted, ""));
    let value = tree.get(first)?;
    if rest.is_empty() {
        return Some(value.span());
    }
    match value.get_ref() {
        DeValue::Table(inner) => find(inner, rest),
        _ => None,
    }
}

fn collect_leaves(table: &DeTable<'_>, prefix: &str, out: &mut Vec<(String, Range<usize>)>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        match value.get_ref() {
            DeValue::Table(inner) => collect_leaves(inner, &path, out),
            DeValue::Array(items)
                if !items.is_empty()
                    && items
                        .iter()
                        .all(|i| matches!(i.get_ref(), DeValue::Table(_))) =>
            {
                for (i, item) in items.iter().enumerate() {
                    if let DeValue::Table(inner) = item.get_ref() {
                        collect_leaves(inner, &format!("{path}[{i}]"), out);
                    }
                }
            }
            _ => out.push((path, value.span())),
        }
    }
}
