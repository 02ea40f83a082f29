//! What a file-layer type expects at a path of the file, found by walking the *type* (its
//! serde `Deserialize`), not by reading serde's error text: the keys a table allows, and the
//! kind of value a key takes.
//!
//! A [`Walker`] is a serde deserializer that holds no data, only a path. Asked for a struct
//! before the path ends, it hands the struct the one key the path names and walks on into its
//! value; at the end of the path it stops with what it was asked for ([`Found`]): a struct's
//! field list, or a scalar's kind. `toml::Spanned` and `Option` are walked through.

use std::fmt;

use serde::de::value::{BorrowedStrDeserializer, UsizeDeserializer};
use serde::de::{self, DeserializeSeed, IntoDeserializer as _, MapAccess, SeqAccess, Visitor};

/// One step of a path: a table key or an array element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// `key`.
    Key(String),
    /// `[n]` (every element of an array has the same type).
    Index,
}

/// Splits `broker.listeners[0].port` into its segments.
pub(crate) fn segments(path: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !key.is_empty() {
            out.push(Segment::Key(key.to_owned()));
        }
        while let Some(end) = rest.find(']') {
            out.push(Segment::Index);
            rest = &rest[end + 1..];
        }
    }
    out
}

/// What the type expects where the path ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Found {
    /// A table with these keys.
    Table(&'static [&'static str]),
    /// A value of this kind, in words ("i64", "a string", ...).
    Value(&'static str),
    /// The path leaves the type (a key it does not have, or a scalar with more path).
    Lost,
}

/// What `T` expects at `path`.
pub(crate) fn expected<T: de::DeserializeOwned>(path: &[Segment]) -> Found {
    match T::deserialize(Walker { path }) {
        Ok(_) => Found::Lost,
        Err(Stop(found)) => found,
    }
}

/// How a walk ends: always as an "error" carrying what was found.
#[derive(Debug)]
pub(crate) struct Stop(Found);

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<M: fmt::Display>(_: M) -> Self {
        Self(Found::Lost)
    }
}

/// The deserializer that walks a type along a path.
struct Walker<'p> {
    path: &'p [Segment],
}

impl Walker<'_> {
    fn value<V>(&self, kind: &'static str) -> Result<V, Stop> {
        Err(Stop(if self.path.is_empty() {
            Found::Value(kind)
        } else {
            Found::Lost
        }))
    }
}

macro_rules! scalar {
    ($($method:ident => $kind:expr),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            self.value($kind)
        })*
    };
}

impl<'de> de::Deserializer<'de> for Walker<'_> {
    type Error = Stop;

    scalar! {
        deserialize_any => "a value",
        deserialize_bool => "a boolean",
        deserialize_i8 => "i8", deserialize_i16 => "i16", deserialize_i32 => "i32",
        deserialize_i64 => "i64", deserialize_u8 => "u8", deserialize_u16 => "u16",
        deserialize_u32 => "u32", deserialize_u64 => "u64",
        deserialize_f32 => "f32", deserialize_f64 => "f64",
        deserialize_char => "a character", deserialize_str => "a string",
        deserialize_string => "a string", deserialize_bytes => "bytes",
        deserialize_byte_buf => "bytes", deserialize_unit => "nothing",
        deserialize_map => "a table", deserialize_identifier => "a name",
        deserialize_ignored_any => "a value",
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: V,
    ) -> Result<V::Value, Stop> {
        self.value("nothing")
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        match self.path.split_first() {
            None => self.value("an array"),
            Some((Segment::Index, rest)) => visitor.visit_seq(OneElement { rest: Some(rest) }),
            Some(_) => Err(Stop(Found::Lost)),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, Stop> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        // toml::Spanned<T> is a struct of start, end and the value: walk on into the value.
        if name.starts_with("$__serde_spanned_private") {
            return visitor.visit_map(SpannedValue {
                fields,
                next: 0,
                path: self.path,
            });
        }
        let Some((first, rest)) = self.path.split_first() else {
            return Err(Stop(Found::Table(fields)));
        };
        let Segment::Key(key) = first else {
            return Err(Stop(Found::Lost));
        };
        match fields.iter().find(|f| **f == key.as_str()) {
            Some(field) => visitor.visit_map(OneEntry {
                key: Some(field),
                rest,
            }),
            None => Err(Stop(Found::Lost)),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        self.value("one of the allowed words")
    }
}

/// A table with the one key the path names.
struct OneEntry<'p> {
    key: Option<&'static str>,
    rest: &'p [Segment],
}

impl<'de> MapAccess<'de> for OneEntry<'_> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Stop> {
        self.key
            .take()
            .map(|key| seed.deserialize(BorrowedStrDeserializer::new(key)))
            .transpose()
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Stop> {
        seed.deserialize(Walker { path: self.rest })
    }
}

/// An array with one element, the one the path goes into.
struct OneElement<'p> {
    rest: Option<&'p [Segment]>,
}

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = Stop;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Stop> {
        self.rest
            .take()
            .map(|path| seed.deserialize(Walker { path }))
            .transpose()
    }
}

/// `toml::Spanned`'s three fields: a start and an end of 0, then the value, walked into.
struct SpannedValue<'p> {
    fields: &'static [&'static str],
    next: usize,
    path: &'p [Segment],
}

impl<'de> MapAccess<'de> for SpannedValue<'_> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Stop> {
        self.fields
            .get(self.next)
            .map(|field| seed.deserialize(BorrowedStrDeserializer::new(field)))
            .transpose()
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Stop> {
        self.next += 1;
        if self.next == self.fields.len() {
            seed.deserialize(Walker { path: self.path })
        } else {
            let zero: UsizeDeserializer<Stop> = 0usize.into_deserializer();
            seed.deserialize(zero)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use toml::Spanned;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Root {
        #[serde(default)]
        section: Section,
        items: Option<Spanned<Vec<Spanned<Item>>>>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Section {
        port: Option<Spanned<i64>>,
        #[serde(rename = "type")]
        kind: Option<Spanned<String>>,
        flags: Option<BTreeMap<String, bool>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        on: Option<Spanned<bool>>,
    }

    #[test]
    fn paths_split_into_keys_and_indices() {
        assert_eq!(
            segments("broker.listeners[0].port"),
            [
                Segment::Key("broker".into()),
                Segment::Key("listeners".into()),
                Segment::Index,
                Segment::Key("port".into())
            ]
        );
        assert_eq!(segments(""), []);
    }

    #[test]
    fn the_walk_finds_the_keys_of_a_table_and_the_kind_of_a_value() {
        let at = |path: &str| expected::<Root>(&segments(path));
        assert_eq!(at(""), Found::Table(&["section", "items"]));
        assert_eq!(at("section"), Found::Table(&["port", "type", "flags"]));
        assert_eq!(at("section.port"), Found::Value("i64"));
        assert_eq!(at("section.type"), Found::Value("a string"));
        assert_eq!(at("section.flags"), Found::Value("a table"));
        assert_eq!(at("items"), Found::Value("an array"));
        assert_eq!(at("items[3]"), Found::Table(&["on"]));
        assert_eq!(at("items[3].on"), Found::Value("a boolean"));
        assert_eq!(at("section.colour"), Found::Lost);
        assert_eq!(at("section.port.deeper"), Found::Lost);
    }
}
