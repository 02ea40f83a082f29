//! Configuration errors: each names the file, line, key, the bad value (redacted when secret)
//! and what to do about it.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// Where a configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file on disk.
    File(PathBuf),
    /// The built-in defaults (no file).
    BuiltIn,
    /// Several layers read as one (a mistake that no single layer holds, e.g. two settings
    /// from different files that do not fit together).
    Merged(Vec<Origin>),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::BuiltIn => f.write_str("<built-in defaults>"),
            Self::Merged(layers) => {
                let names: Vec<String> = layers.iter().map(ToString::to_string).collect();
                f.write_str(&names.join(" + "))
            }
        }
    }
}

/// One mistake in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub origin: Origin,
    /// 1-based line and column, when the mistake has a place in the file.
    pub position: Option<(usize, usize)>,
    /// The dotted key, e.g. `broker.listeners[0].port`; empty for the whole file.
    pub key: String,
    /// The bad value as written, or `"<redacted>"` for secrets; `None` when not applicable.
    pub value: Option<String>,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub hint: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        f.write_str(": ")?;
        if !self.key.is_empty() {
            write!(f, "key `{}`", self.key)?;
            if let Some(value) = &self.value {
                write!(f, " = {value}")?;
            }
            f.write_str(": ")?;
        }
        write!(f, "{}", self.problem)?;
        if !self.hint.is_empty() {
            write!(f, "\n    hint: {}", self.hint)?;
        }
        Ok(())
    }
}

/// Every mistake found in one configuration, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} problem{} in the configuration:",
            if n == 1 { "" } else { "s" }
        )?;
        for error in &self.0 {
            writeln!(f, "  {error}")?;
        }
        Ok(())
    }
}

/// Collects errors against one source text, turning byte spans into files, lines and columns.
///
/// Every section's validation records into the same collector, so `check-config` reports
/// every mistake of the whole configuration at once, in file order. The source may be several
/// layers one after the other ([`super::Layers`]): a span then names the layer's file and the
/// line in that file.
#[derive(Debug)]
pub struct Collector<'s> {
    source: &'s str,
    /// Where each layer starts in `source`, in order; one layer for a single file.
    layers: Vec<(usize, Origin)>,
    errors: Vec<(usize, ConfigError)>,
    warnings: Vec<ConfigError>,
    /// Spans whose unknown keys are warned about instead of refused (see [`Self::tolerate`]).
    tolerant: Vec<Range<usize>>,
}

impl<'s> Collector<'s> {
    /// A collector for `source`, read from `origin`.
    pub fn new(origin: Origin, source: &'s str) -> Self {
        Self {
            source,
            layers: vec![(0, origin)],
            errors: Vec::new(),
            warnings: Vec::new(),
            tolerant: Vec::new(),
        }
    }

    /// A collector for layers read one after the other.
    pub fn layered(layers: &'s super::Layers) -> Self {
        Self {
            source: layers.text(),
            layers: layers.starts(),
            errors: Vec::new(),
            warnings: Vec::new(),
            tolerant: Vec::new(),
        }
    }

    /// Records something that is not a mistake but that the user should know (e.g. a setting
    /// of a newer release that this one ignores).
    pub fn warn(&mut self, key: &str, span: Option<Range<usize>>, problem: impl Into<String>) {
        let (origin, position) = self.place(span.as_ref());
        self.warnings.push(ConfigError {
            origin,
            position,
            key: key.to_owned(),
            value: None,
            problem: problem.into(),
            hint: String::new(),
        });
    }

    /// Unknown keys within `span` are warned about and ignored rather than refused: the span is
    /// a site layer written by a newer release, whose additions this release may skip.
    pub fn tolerate(&mut self, span: Range<usize>) {
        self.tolerant.push(span);
    }

    /// Whether unknown keys at `span` are ignored (see [`Self::tolerate`]).
    pub fn tolerates(&self, span: &Range<usize>) -> bool {
        self.tolerant
            .iter()
            .any(|t| t.start <= span.start && span.end <= t.end)
    }

    /// The warnings recorded so far.
    pub fn warnings(&self) -> &[ConfigError] {
        &self.warnings
    }

    /// The file and 1-based line and column of a span; the whole configuration without one.
    fn place(&self, span: Option<&Range<usize>>) -> (Origin, Option<(usize, usize)>) {
        let Some(span) = span else {
            return (self.whole(), None);
        };
        let (start, origin) = self
            .layers
            .iter()
            .rev()
            .find(|(start, _)| *start <= span.start)
            .unwrap_or(&self.layers[0]);
        let layer = self.source.get(*start..).unwrap_or("");
        (
            origin.clone(),
            Some(line_and_column(layer, span.start - start)),
        )
    }

    fn whole(&self) -> Origin {
        match self.layers.as_slice() {
            [(_, only)] => only.clone(),
            layers => Origin::Merged(layers.iter().map(|(_, o)| o.clone()).collect()),
        }
    }

    /// Records a mistake at `span`; the value is read from the source there, and redacted when
    /// the key names a secret.
    pub fn at(
        &mut self,
        key: &str,
        span: Option<Range<usize>>,
        problem: impl Into<String>,
        hint: impl Into<String>,
    ) {
        let value = span.clone().and_then(|span| self.value_at(key, span));
        self.push(key, span, value, problem.into(), hint.into());
    }

    /// Records that a required key is missing, unless it was already reported (a value of the
    /// wrong type is cut out of the file and would otherwise be reported twice).
    pub fn missing(&mut self, key: &str, span: Range<usize>, hint: impl Into<String>) {
        if !self.errors.iter().any(|(_, e)| e.key == key) {
            self.without_value(key, Some(span), "missing", hint);
        }
    }

    /// Records a mistake about a whole `key = value` entry: placed at the key, showing the value.
    pub fn entry(
        &mut self,
        key: &str,
        key_span: Range<usize>,
        value_span: Range<usize>,
        problem: impl Into<String>,
        hint: impl Into<String>,
    ) {
        let value = self.value_at(key, value_span);
        self.push(key, Some(key_span), value, problem.into(), hint.into());
    }

    /// Records a mistake at `span` that is not about the value written there (e.g. a syntax
    /// error), so no value is shown.
    pub fn without_value(
        &mut self,
        key: &str,
        span: Option<Range<usize>>,
        problem: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(key, span, None, problem.into(), hint.into());
    }

    fn push(
        &mut self,
        key: &str,
        span: Option<Range<usize>>,
        value: Option<String>,
        problem: String,
        hint: String,
    ) {
        let offset = span.as_ref().map_or(usize::MAX, |s| s.start);
        let (origin, position) = self.place(span.as_ref());
        self.errors.push((
            offset,
            ConfigError {
                origin,
                position,
                key: key.to_owned(),
                value,
                problem,
                hint,
            },
        ));
    }

    /// How many mistakes were recorded so far (a section compares it before and after an
    /// entry to know whether the entry was valid).
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Whether no mistake was recorded so far.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Every mistake recorded, in file order; `Ok` when there was none.
    pub fn finish(self) -> Result<(), ConfigErrors> {
        self.finish_with_warnings().map(drop)
    }

    /// Every mistake recorded, in file order; `Ok` with the warnings when there was none.
    pub fn finish_with_warnings(mut self) -> Result<Vec<ConfigError>, ConfigErrors> {
        if self.errors.is_empty() {
            return Ok(self.warnings);
        }
        self.errors.sort_by_key(|(offset, _)| *offset);
        Err(ConfigErrors(
            self.errors.into_iter().map(|(_, e)| e).collect(),
        ))
    }

    fn value_at(&self, key: &str, span: Range<usize>) -> Option<String> {
        if is_secret(key) {
            return Some("<redacted>".into());
        }
        let raw = self.source.get(span)?.trim();
        if raw.is_empty() || raw.starts_with('[') && raw.ends_with(']') && !raw.contains('=') {
            return None; // a table header, not a value
        }
        // Only the first line of a long value, shortened: enough to recognise it.
        let first = raw.lines().next().unwrap_or(raw);
        let mut shown: String = first.chars().take(60).collect();
        if shown.len() < raw.len() {
            shown.push('…');
        }
        Some(shown)
    }
}

/// Whether a key holds a secret, whose value must never be echoed back.
pub fn is_secret(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key).to_ascii_lowercase();
    ["password", "secret", "psk", "pin", "token", "private_key"]
        .iter()
        .any(|word| last.contains(word))
}

fn line_and_column(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_lines_and_columns() {
        assert_eq!(line_and_column("a\nbc\nd", 0), (1, 1));
        assert_eq!(line_and_column("a\nbc\nd", 3), (2, 2));
        assert_eq!(line_and_column("a\nbc\nd", 5), (3, 1));
    }

    #[test]
    fn secrets_are_recognised_by_key_name() {
        assert!(is_secret("uplink.password"));
        assert!(is_secret("broker.psk_file_secret"));
        assert!(!is_secret("broker.listeners[0].port"));
    }
}
