//! YAML text → a tree of [`Node`]s, each with the line and column where it
//! starts (from `saphyr-parser`'s event stream).
//!
//! Scalars are resolved with the YAML 1.2 core schema (null, bool, int,
//! float, string) but keep the text as written. Anchors and aliases work,
//! with the YAML 1.1 merge key `<<` that PyYAML (and so OSMO) accepts; the
//! expansion of aliases and the nesting depth are bounded. Duplicate keys are
//! reported and the later entry dropped.

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// Where a node starts: 1-based line, 1-based column (characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub(crate) struct Mark {
    pub line: usize,
    pub column: usize,
}

impl Mark {
    fn from_span(span: &Span) -> Mark {
        Mark {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

/// What a plain scalar resolves to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ScalarKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NodeKind {
    Scalar { text: String, kind: ScalarKind },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub mark: Mark,
    pub kind: NodeKind,
}

impl Node {
    /// `a string`, `a list`, ... for messages.
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            NodeKind::Scalar { kind, .. } => match kind {
                ScalarKind::Null => "nothing (null)",
                ScalarKind::Bool(_) => "a boolean",
                ScalarKind::Int(_) => "an integer",
                ScalarKind::Float(_) => "a number",
                ScalarKind::Str => "a string",
            },
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(
            self.kind,
            NodeKind::Scalar {
                kind: ScalarKind::Null,
                ..
            }
        )
    }

    fn size(&self) -> usize {
        match &self.kind {
            NodeKind::Scalar { .. } => 1,
            NodeKind::Seq(items) => 1 + items.iter().map(Node::size).sum::<usize>(),
            NodeKind::Map(entries) => {
                1 + entries
                    .iter()
                    .map(|(k, v)| k.size() + v.size())
                    .sum::<usize>()
            }
        }
    }
}

/// A problem found while reading YAML: where, what, and the value if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct YamlProblem {
    pub mark: Mark,
    pub message: String,
    pub value: Option<String>,
}

/// How deep lists and mappings may nest.
pub(crate) const MAX_DEPTH: usize = 64;
/// How many nodes the document may have once aliases are expanded.
pub(crate) const MAX_NODES: usize = 2_000_000;

/// Parses one YAML document. `Ok((None, problems))` for an empty stream.
/// A syntax error ends parsing and is returned alone as `Err`; other problems
/// (duplicate keys) are collected next to the tree.
pub(crate) fn parse(text: &str) -> Result<(Option<Node>, Vec<YamlProblem>), YamlProblem> {
    let mut builder = Builder {
        anchors: std::collections::HashMap::new(),
        stack: Vec::new(),
        nodes: 0,
        problems: Vec::new(),
        root: None,
        documents: 0,
    };
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| YamlProblem {
            mark: Mark {
                line: e.marker().line(),
                column: e.marker().col() + 1,
            },
            message: format!("yaml syntax error: {}", e.info()),
            value: None,
        })?;
        builder.event(event, &span)?;
    }
    Ok((builder.root, builder.problems))
}

enum Open {
    Seq {
        mark: Mark,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        mark: Mark,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        merged: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

struct Builder {
    /// By anchor id: the node and its size, so an alias costs O(1) to find
    /// and to count (a document of 100k anchors and 600k aliases must not
    /// cost a search per alias).
    anchors: std::collections::HashMap<usize, (Node, usize)>,
    stack: Vec<Open>,
    nodes: usize,
    problems: Vec<YamlProblem>,
    root: Option<Node>,
    documents: usize,
}

impl Builder {
    fn event(&mut self, event: Event<'_>, span: &Span) -> Result<(), YamlProblem> {
        let mark = Mark::from_span(span);
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(YamlProblem {
                        mark,
                        message:
                            "expected a single yaml document; remove the second `---` document"
                                .into(),
                        value: None,
                    });
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let kind =
                    if style == ScalarStyle::Plain && tag.as_ref().is_none_or(|t| !is_str_tag(t)) {
                        resolve(&text)
                    } else {
                        ScalarKind::Str
                    };
                let node = Node {
                    mark,
                    kind: NodeKind::Scalar {
                        text: text.into_owned(),
                        kind,
                    },
                };
                self.count(1, mark)?;
                self.finish(node, anchor)?;
            }
            Event::SequenceStart(anchor, _) => {
                self.open(mark)?;
                self.stack.push(Open::Seq {
                    mark,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, _) => {
                self.open(mark)?;
                self.stack.push(Open::Map {
                    mark,
                    anchor,
                    entries: Vec::new(),
                    merged: Vec::new(),
                    key: None,
                });
            }
            Event::SequenceEnd => {
                if let Some(Open::Seq {
                    mark,
                    anchor,
                    items,
                }) = self.stack.pop()
                {
                    self.finish(
                        Node {
                            mark,
                            kind: NodeKind::Seq(items),
                        },
                        anchor,
                    )?;
                }
            }
            Event::MappingEnd => {
                if let Some(Open::Map {
                    mark,
                    anchor,
                    mut entries,
                    merged,
                    ..
                }) = self.stack.pop()
                {
                    // Keys written in the mapping itself win over merged ones.
                    for (k, v) in merged {
                        if !entries.iter().any(|(existing, _)| same_key(existing, &k)) {
                            entries.push((k, v));
                        }
                    }
                    self.finish(
                        Node {
                            mark,
                            kind: NodeKind::Map(entries),
                        },
                        anchor,
                    )?;
                }
            }
            Event::Alias(id) => {
                let Some(&(_, size)) = self.anchors.get(&id) else {
                    return Err(YamlProblem {
                        mark,
                        message: "alias to an unknown anchor".into(),
                        value: None,
                    });
                };
                // Counted before the copy: an over-large expansion is refused first.
                self.count(size, mark)?;
                let mut node = self.anchors[&id].0.clone();
                node.mark = mark;
                self.finish(node, 0)?;
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
        Ok(())
    }

    fn open(&mut self, mark: Mark) -> Result<(), YamlProblem> {
        self.count(1, mark)?;
        if self.stack.len() >= MAX_DEPTH {
            return Err(YamlProblem {
                mark,
                message: format!("lists and mappings nest deeper than {MAX_DEPTH} levels"),
                value: None,
            });
        }
        Ok(())
    }

    fn count(&mut self, n: usize, mark: Mark) -> Result<(), YamlProblem> {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            return Err(YamlProblem {
                mark,
                message: format!(
                    "the document has more than {MAX_NODES} values once aliases are expanded"
                ),
                value: None,
            });
        }
        Ok(())
    }

    fn finish(&mut self, node: Node, anchor: usize) -> Result<(), YamlProblem> {
        if anchor != 0 {
            let size = node.size();
            self.anchors.insert(anchor, (node.clone(), size));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open::Seq { items, .. }) => items.push(node),
            Some(Open::Map {
                entries,
                merged,
                key,
                ..
            }) => match key.take() {
                None => *key = Some(node),
                Some(k) => {
                    let problems = add_entry(entries, merged, k, node);
                    self.problems.extend(problems);
                }
            },
        }
        Ok(())
    }
}

fn is_str_tag(tag: &saphyr_parser::Tag) -> bool {
    tag.suffix == "str" && (tag.is_yaml_core_schema() || tag.handle == "!!")
}

/// Adds `key: value` to a mapping, handling the merge key and duplicates.
fn add_entry(
    entries: &mut Vec<(Node, Node)>,
    merged: &mut Vec<(Node, Node)>,
    key: Node,
    value: Node,
) -> Vec<YamlProblem> {
    let mut problems = Vec::new();
    if let NodeKind::Scalar {
        text,
        kind: ScalarKind::Str,
    } = &key.kind
        && text == "<<"
    {
        let sources: Vec<Node> = match value.kind {
            NodeKind::Map(_) => vec![value],
            NodeKind::Seq(items) => items,
            _ => {
                problems.push(YamlProblem {
                    mark: value.mark,
                    message: "the merge key `<<` takes a mapping or a list of mappings".into(),
                    value: None,
                });
                return problems;
            }
        };
        for source in sources {
            match source.kind {
                NodeKind::Map(more) => {
                    // Earlier merged mappings win over later ones.
                    for (k, v) in more {
                        if !merged.iter().any(|(existing, _)| same_key(existing, &k)) {
                            merged.push((k, v));
                        }
                    }
                }
                _ => problems.push(YamlProblem {
                    mark: source.mark,
                    message: "the merge key `<<` takes a mapping or a list of mappings".into(),
                    value: None,
                }),
            }
        }
        return problems;
    }
    if let Some((first, first_value)) = entries
        .iter()
        .find(|(existing, _)| same_key(existing, &key))
    {
        // PyYAML (and so OSMO) lets the last value win; NVIDIA's own files
        // repeat a key with the same value. That is harmless; a repeat with a
        // different value is ambiguous and refused.
        if same_value(first_value, &value) {
            return problems;
        }
        let text = key_text(&key);
        problems.push(YamlProblem {
            mark: key.mark,
            message: format!(
                "duplicate key `{}` with a different value; it is already set at line {}, column {}",
                text, first.mark.line, first.mark.column
            ),
            value: None,
        });
        return problems;
    }
    entries.push((key, value));
    problems
}

/// Equal values, wherever they were written.
fn same_value(a: &Node, b: &Node) -> bool {
    match (&a.kind, &b.kind) {
        (NodeKind::Scalar { text: x, kind: kx }, NodeKind::Scalar { text: y, kind: ky }) => {
            x == y && kx == ky
        }
        (NodeKind::Seq(xs), NodeKind::Seq(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| same_value(x, y))
        }
        (NodeKind::Map(xs), NodeKind::Map(ys)) => {
            xs.len() == ys.len()
                && xs
                    .iter()
                    .zip(ys)
                    .all(|((kx, vx), (ky, vy))| same_value(kx, ky) && same_value(vx, vy))
        }
        _ => false,
    }
}

fn same_key(a: &Node, b: &Node) -> bool {
    match (&a.kind, &b.kind) {
        (NodeKind::Scalar { text: x, .. }, NodeKind::Scalar { text: y, .. }) => x == y,
        _ => false,
    }
}

pub(crate) fn key_text(node: &Node) -> String {
    match &node.kind {
        NodeKind::Scalar { text, .. } => text.clone(),
        _ => node.describe().to_string(),
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
pub(crate) fn resolve(text: &str) -> ScalarKind {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return ScalarKind::Null,
        "true" | "True" | "TRUE" => return ScalarKind::Bool(true),
        "false" | "False" | "FALSE" => return ScalarKind::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return ScalarKind::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return ScalarKind::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return ScalarKind::Float(f64::NAN),
        _ => {}
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = text.parse::<i64>() {
            return ScalarKind::Int(n);
        }
        return ScalarKind::Float(text.parse().unwrap_or(f64::NAN));
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(n) = i64::from_str_radix(hex, 16)
    {
        return ScalarKind::Int(n);
    }
    if let Some(oct) = text.strip_prefix("0o")
        && let Ok(n) = i64::from_str_radix(oct, 8)
    {
        return ScalarKind::Int(n);
    }
    if is_float(unsigned)
        && let Ok(f) = text.parse::<f64>()
    {
        return ScalarKind::Float(f);
    }
    ScalarKind::Str
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`
fn is_float(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((whole, frac)) => {
            (whole.is_empty() && digits(frac))
                || (digits(whole) && (frac.is_empty() || digits(frac)))
        }
        None => digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
    mantissa_ok && exponent_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(text: &str) -> Node {
        parse(text).unwrap().0.unwrap()
    }

    #[test]
    fn marks_are_one_based() {
        let node = root("a:\n  b: [1, x]\n");
        let NodeKind::Map(entries) = &node.kind else {
            panic!()
        };
        let (_, inner) = &entries[0];
        let NodeKind::Map(inner) = &inner.kind else {
            panic!()
        };
        assert_eq!(inner[0].0.mark, Mark { line: 2, column: 3 });
        let NodeKind::Seq(items) = &inner[0].1.kind else {
            panic!()
        };
        assert_eq!(
            items[1].mark,
            Mark {
                line: 2,
                column: 10
            }
        );
        assert_eq!(
            items[0].kind,
            NodeKind::Scalar {
                text: "1".into(),
                kind: ScalarKind::Int(1)
            }
        );
    }

    #[test]
    fn resolves_core_schema() {
        assert_eq!(resolve("12"), ScalarKind::Int(12));
        assert_eq!(resolve("-3"), ScalarKind::Int(-3));
        assert_eq!(resolve("1.5"), ScalarKind::Float(1.5));
        assert_eq!(resolve("true"), ScalarKind::Bool(true));
        assert_eq!(resolve("~"), ScalarKind::Null);
        assert_eq!(resolve("yes"), ScalarKind::Str);
        assert_eq!(resolve("0-10"), ScalarKind::Str);
        assert_eq!(resolve("1e3"), ScalarKind::Float(1000.0));
        assert_eq!(resolve("e3"), ScalarKind::Str);
    }

    #[test]
    fn quoted_scalars_stay_strings() {
        let node = root("'12'");
        assert_eq!(
            node.kind,
            NodeKind::Scalar {
                text: "12".into(),
                kind: ScalarKind::Str
            }
        );
    }

    #[test]
    fn merges_and_reports_duplicates() {
        let (node, problems) = parse(
            "base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  y: 3\nm2: {a: 1, a: 2}\nm3: {c: [1, {d: e}], c: [1, {d: e}]}\n",
        )
        .unwrap();
        let NodeKind::Map(entries) = &node.unwrap().kind else {
            panic!()
        };
        let NodeKind::Map(m) = &entries[1].1.kind else {
            panic!()
        };
        let keys: Vec<String> = m.iter().map(|(k, _)| key_text(k)).collect();
        assert_eq!(keys, ["y", "x"]);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].message.contains("duplicate key `a`"),
            "{:?}",
            problems
        );
        assert_eq!(problems[0].mark.line, 5);
    }

    #[test]
    fn many_anchors_and_aliases_resolve_each_to_its_own_anchor() {
        let mut doc = String::from("anchors:\n");
        for i in 0..20_000 {
            doc.push_str(&format!("- &a{i} {i}\n"));
        }
        doc.push_str("aliases:\n");
        for i in 0..60_000 {
            doc.push_str(&format!("- *a{}\n", i % 3));
        }
        let (root, problems) = parse(&doc).unwrap();
        assert!(problems.is_empty());
        let NodeKind::Map(entries) = root.unwrap().kind else {
            panic!("a mapping")
        };
        let NodeKind::Seq(aliases) = &entries[1].1.kind else {
            panic!("a list")
        };
        assert_eq!(aliases.len(), 60_000);
        let texts: Vec<&str> = aliases[..4]
            .iter()
            .map(|n| match &n.kind {
                NodeKind::Scalar { text, .. } => text.as_str(),
                _ => "?",
            })
            .collect();
        assert_eq!(texts, ["0", "1", "2", "0"]);
    }

    #[test]
    fn bounds_alias_expansion_and_depth() {
        let mut laughs = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..8 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("l{}", i - 1)
            };
            laughs.push_str(&format!("l{i}: &l{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        let err = parse(&laughs).unwrap_err();
        assert!(err.message.contains("aliases are expanded"), "{err:?}");
        let deep: String = (0..100)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        let err = parse(&deep).unwrap_err();
        assert!(err.message.contains("nest deeper than 64"), "{err:?}");
        assert!(parse(&"[".repeat(100_000)).is_err());
    }

    #[test]
    fn syntax_error_has_place() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.message.starts_with("yaml syntax error"), "{err:?}");
        assert!(err.mark.line >= 1);
    }
}
