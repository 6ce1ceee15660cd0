//! A serde `Deserializer` over the marked YAML tree ([`crate::yaml::Node`])
//! that reports every problem, with its place, instead of stopping at the first.
//!
//! - Unknown keys of a struct are all reported (with line and column) and left
//!   out, so `#[serde(deny_unknown_fields)]` never has to stop the pass.
//! - Every error is recorded, at the node being read, when it is made.
//! - [`Checked<T>`] is the recovery point: it holds the node's [`Mark`] and
//!   `Some(T)`, or `None` when reading `T` failed (the error is already recorded),
//!   so the rest of the file is still read and checked.
//! - [`Scalar`] is a leaf: the text as written, how YAML resolved it, and its
//!   mark; it accepts any node (lists and mappings too, so validation can say
//!   "expected a string, found a list" at the right place).
//! - [`Entries<V>`] is a mapping with free keys, in file order.
//!
//! `Checked` and `Scalar` talk to this deserializer through private newtype
//! names; they are only for raw models read by [`read`].

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{
    self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use serde::{Deserialize, forward_to_deserialize_any};

use crate::yaml::{Mark, Node, NodeKind, ScalarKind, YamlProblem, key_text};

const CHECKED: &str = "$osmo_spec::Checked";
const SCALAR: &str = "$osmo_spec::Scalar";

/// Reads `T` from `node`, returning it (if reading got that far) and every problem found.
pub(crate) fn read<'de, T: Deserialize<'de>>(node: &Node) -> (Option<T>, Vec<YamlProblem>) {
    let sink = Sink::default();
    let value = T::deserialize(NodeDe {
        node,
        sink: &sink,
        key: false,
    })
    .ok();
    (value, sink.0.into_inner())
}

#[derive(Default)]
struct Sink(RefCell<Vec<YamlProblem>>);

impl Sink {
    fn push(&self, mark: Mark, message: String, value: Option<String>) {
        self.0.borrow_mut().push(YamlProblem {
            mark,
            message,
            value,
        });
    }
}

/// An error already recorded in the sink (`reported`), or one made by serde's
/// derived code that still needs a place.
#[derive(Debug)]
pub(crate) struct Error {
    message: String,
    reported: bool,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error {
            message: msg.to_string(),
            reported: false,
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Error::custom(format!(
            "unknown field `{field}`; expected one of {}",
            list(expected)
        ))
    }

    fn missing_field(field: &'static str) -> Self {
        Error::custom(format!("missing field `{field}`"))
    }
}

fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Clone, Copy)]
struct NodeDe<'a> {
    node: &'a Node,
    sink: &'a Sink,
    /// Map keys are always read as strings.
    key: bool,
}

impl<'a> NodeDe<'a> {
    fn child(&self, node: &'a Node) -> NodeDe<'a> {
        NodeDe {
            node,
            sink: self.sink,
            key: false,
        }
    }

    /// Records an unplaced error at this node.
    fn place<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        result.map_err(|e| {
            if !e.reported {
                self.sink.push(self.node.mark, e.message.clone(), None);
            }
            Error {
                message: e.message,
                reported: true,
            }
        })
    }

    fn fail<T>(&self, message: String) -> Result<T, Error> {
        let value = match &self.node.kind {
            NodeKind::Scalar { text, .. } => Some(text.clone()),
            _ => None,
        };
        self.sink.push(self.node.mark, message.clone(), value);
        Err(Error {
            message,
            reported: true,
        })
    }
}

impl<'de, 'a> Deserializer<'de> for NodeDe<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let result = match &self.node.kind {
            NodeKind::Scalar { text, .. } if self.key => visitor.visit_str(text),
            NodeKind::Scalar { text, kind } => match kind {
                ScalarKind::Null => visitor.visit_unit(),
                ScalarKind::Bool(b) => visitor.visit_bool(*b),
                ScalarKind::Int(n) => visitor.visit_i64(*n),
                ScalarKind::Float(f) => visitor.visit_f64(*f),
                ScalarKind::Str => visitor.visit_str(text),
            },
            NodeKind::Seq(items) => visitor.visit_seq(Items {
                items: items.iter(),
                de: self,
            }),
            NodeKind::Map(entries) => visitor.visit_map(Entry {
                entries: entries.iter(),
                value: None,
                de: self,
                fields: None,
            }),
        };
        self.place(result)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.node.is_null() && !self.key {
            self.place(visitor.visit_none())
        } else {
            self.place(visitor.visit_some(self))
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        match name {
            CHECKED => self.place(visitor.visit_seq(Special {
                de: self,
                step: 0,
                scalar: false,
            })),
            SCALAR => self.place(visitor.visit_seq(Special {
                de: self,
                step: 0,
                scalar: true,
            })),
            _ => self.place(visitor.visit_newtype_struct(self)),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.kind {
            NodeKind::Seq(items) => self.place(visitor.visit_seq(Items {
                items: items.iter(),
                de: self,
            })),
            _ => self.fail(format!("expected a list, found {}", self.node.describe())),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.kind {
            NodeKind::Map(entries) => self.place(visitor.visit_map(Entry {
                entries: entries.iter(),
                value: None,
                de: self,
                fields: None,
            })),
            _ => self.fail(format!(
                "expected a mapping (`key: value`), found {}",
                self.node.describe()
            )),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let NodeKind::Map(entries) = &self.node.kind else {
            return self.fail(format!(
                "expected a mapping (`key: value`), found {}",
                self.node.describe()
            ));
        };
        for (key, _) in entries {
            let name = key_text(key);
            if !fields.contains(&name.as_str()) {
                let hint = match closest(&name, fields) {
                    Some(near) => format!("did you mean `{near}`?"),
                    None => format!("expected one of {}", list(fields)),
                };
                self.sink.push(
                    key.mark,
                    format!(
                        "unknown field `{name}` at line {}, column {}; {hint}",
                        key.mark.line, key.mark.column
                    ),
                    None,
                );
            }
        }
        self.place(visitor.visit_map(Entry {
            entries: entries.iter(),
            value: None,
            de: self,
            fields: Some(fields),
        }))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let text = key_text(self.node);
        self.place(visitor.visit_str(&text))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct tuple tuple_struct enum
    }
}

/// Edit distance ≤ 2, or the same ignoring case, `-` and `_`.
fn closest<'f>(name: &str, fields: &[&'f str]) -> Option<&'f str> {
    let fold = |s: &str| s.to_ascii_lowercase().replace(['-', '_'], "");
    fields
        .iter()
        .map(|f| {
            (
                if fold(f) == fold(name) {
                    0
                } else {
                    distance(name, f)
                },
                *f,
            )
        })
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, f)| f)
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

struct Items<'a, I> {
    items: I,
    de: NodeDe<'a>,
}

impl<'de, 'a, I: Iterator<Item = &'a Node>> SeqAccess<'de> for Items<'a, I> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.items.next() {
            Some(node) => seed.deserialize(self.de.child(node)).map(Some),
            None => Ok(None),
        }
    }
}

struct Entry<'a, I> {
    entries: I,
    value: Option<&'a Node>,
    de: NodeDe<'a>,
    /// For structs: the known field names; other keys are skipped (already reported).
    fields: Option<&'static [&'static str]>,
}

impl<'de, 'a, I: Iterator<Item = &'a (Node, Node)>> MapAccess<'de> for Entry<'a, I> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        for (key, value) in self.entries.by_ref() {
            if let Some(fields) = self.fields
                && !fields.contains(&key_text(key).as_str())
            {
                continue;
            }
            self.value = Some(value);
            return seed
                .deserialize(NodeDe {
                    node: key,
                    sink: self.de.sink,
                    key: true,
                })
                .map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let node = self.value.take().expect("next_value after next_key");
        seed.deserialize(self.de.child(node))
    }
}

/// Feeds `Checked` (mark, then the value) and `Scalar` (mark, kind, text).
struct Special<'a> {
    de: NodeDe<'a>,
    step: u8,
    scalar: bool,
}

impl<'de> SeqAccess<'de> for Special<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let step = self.step;
        self.step += 1;
        let node = self.de.node;
        match (step, self.scalar) {
            (0, _) => {
                let mark = (node.mark.line as u64, node.mark.column as u64);
                seed.deserialize(de::value::SeqDeserializer::<_, Error>::new(
                    [mark.0, mark.1].into_iter(),
                ))
                .map(Some)
            }
            (1, false) => seed.deserialize(self.de).map(Some),
            (1, true) => {
                let (tag, text): (&str, &str) = match &node.kind {
                    NodeKind::Scalar { text, .. } if self.de.key => ("s", text),
                    NodeKind::Scalar { text, kind } => (
                        match kind {
                            ScalarKind::Null => "n",
                            ScalarKind::Bool(_) => "b",
                            ScalarKind::Int(_) => "i",
                            ScalarKind::Float(_) => "f",
                            ScalarKind::Str => "s",
                        },
                        text,
                    ),
                    NodeKind::Seq(_) => ("l", ""),
                    NodeKind::Map(_) => ("m", ""),
                };
                seed.deserialize(format!("{tag}{text}").into_deserializer())
                    .map(Some)
            }
            _ => Ok(None),
        }
    }
}

/// The node's place and its value: `None` when reading it failed (already reported).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Checked<T> {
    pub mark: Mark,
    pub value: Option<T>,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Checked<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Checked<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked<T>, A::Error> {
                let (line, column): (u64, u64) = seq.next_element()?.unwrap_or_default();
                let mark = Mark {
                    line: line as usize,
                    column: column as usize,
                };
                // The error, if any, is already recorded where it happened.
                let value = seq.next_element::<T>().ok().flatten();
                Ok(Checked { mark, value })
            }
        }
        deserializer.deserialize_newtype_struct(CHECKED, V(PhantomData))
    }
}

/// How YAML resolved a leaf; `List` and `Map` mean it was not a leaf at all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Null,
    Bool,
    Int,
    Float,
    Str,
    List,
    Map,
}

/// A leaf as written, with its place.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scalar {
    pub mark: Mark,
    pub kind: Kind,
    pub text: String,
}

impl Scalar {
    pub fn describe(&self) -> &'static str {
        match self.kind {
            Kind::Null => "nothing (null)",
            Kind::Bool => "a boolean",
            Kind::Int => "an integer",
            Kind::Float => "a number",
            Kind::Str => "a string",
            Kind::List => "a list",
            Kind::Map => "a mapping",
        }
    }

    pub fn is_scalar(&self) -> bool {
        !matches!(self.kind, Kind::List | Kind::Map | Kind::Null)
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
                let (line, column): (u64, u64) = seq.next_element()?.unwrap_or_default();
                let tagged: String = seq.next_element()?.unwrap_or_default();
                let (tag, text) = tagged.split_at(tagged.chars().next().map_or(0, char::len_utf8));
                let kind = match tag {
                    "n" => Kind::Null,
                    "b" => Kind::Bool,
                    "i" => Kind::Int,
                    "f" => Kind::Float,
                    "l" => Kind::List,
                    "m" => Kind::Map,
                    _ => Kind::Str,
                };
                Ok(Scalar {
                    mark: Mark {
                        line: line as usize,
                        column: column as usize,
                    },
                    kind,
                    text: text.to_string(),
                })
            }
        }
        deserializer.deserialize_newtype_struct(SCALAR, V)
    }
}

/// A mapping with free keys, in file order. Values are usually [`Scalar`] or
/// [`Checked`], so one bad value does not hide the others.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entries<V>(pub Vec<(Scalar, V)>);

impl<V> Default for Entries<V> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Entries<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Entries<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<T>, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Scalar>()? {
                    entries.push((key, map.next_value::<T>()?));
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(V(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        name: Option<Scalar>,
        tags: Option<Checked<Vec<Scalar>>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        items: Option<Vec<Checked<Item>>>,
        env: Option<Checked<Entries<Scalar>>>,
    }

    #[test]
    fn reports_every_problem_and_keeps_going() {
        let text = "items:\n- name: a\n  nmae: b\n- name: [x]\n  tags: oops\n- name: c\nenv: {A: 1, B: two}\nextra: 1\n";
        let node = yaml::parse(text).unwrap().0.unwrap();
        let (doc, problems) = read::<Doc>(&node);
        let doc = doc.expect("the document reads");
        let messages: Vec<String> = problems
            .iter()
            .map(|p| format!("{}:{} {}", p.mark.line, p.mark.column, p.message))
            .collect();
        assert_eq!(
            messages,
            [
                "8:1 unknown field `extra` at line 8, column 1; expected one of `items`, `env`",
                "3:3 unknown field `nmae` at line 3, column 3; did you mean `name`?",
                "5:9 expected a list, found a string",
            ]
        );
        let items = doc.items.unwrap();
        assert_eq!(items.len(), 3);
        let second = items[1].value.as_ref().unwrap();
        assert_eq!(second.name.as_ref().unwrap().kind, Kind::List);
        assert_eq!(second.tags.as_ref().unwrap().value, None);
        assert_eq!(items[2].mark, Mark { line: 6, column: 3 });
        let env = doc.env.unwrap().value.unwrap();
        assert_eq!(env.0[0].1.kind, Kind::Int);
        assert_eq!(env.0[1].1.text, "two");
        assert_eq!(
            env.0[1].0.mark,
            Mark {
                line: 7,
                column: 13
            }
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            closest("exitAction", &["exitActions", "name"]),
            Some("exitActions")
        );
        assert_eq!(
            closest("host_network", &["hostNetwork"]),
            Some("hostNetwork")
        );
        assert_eq!(closest("zzzzzz", &["name"]), None);
    }
}
