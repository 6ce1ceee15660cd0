//! Jinja rendering of a whole workflow file, sandboxed.
//!
//! - Values: `default-values:` (read from the raw text, before rendering),
//!   overridden by `--set k=v` (typed: integer, then number, else string, as
//!   OSMO does) and `--set-string k=v` (always strings).
//! - Sandbox: no loader (no file access), undefined variables and attributes
//!   are errors, bounded steps (minijinja fuel), bounded recursion, input size
//!   and output size.
//! - Reserved tokens (`{{output}}`, `{{input:N}}`, ...) are swapped for
//!   placeholders that are not Jinja syntax before rendering and restored after.

use std::collections::BTreeMap;
use std::io;

use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};

use crate::error::{Diagnostic, Diagnostics};
use crate::report::Report;
use crate::{de, tokens, yaml};

/// Largest workflow file accepted.
pub const MAX_INPUT_BYTES: usize = 4 << 20;
/// Largest rendered workflow.
pub const MAX_OUTPUT_BYTES: usize = 8 << 20;
/// Template steps allowed (minijinja fuel); generous for real specs, about a
/// second at most.
pub const FUEL: u64 = 5_000_000;

/// Template values given at submission.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Values {
    /// `--set k=v`: integers and numbers are typed, the rest are strings.
    pub set: Vec<(String, String)>,
    /// `--set-string k=v`: always strings.
    pub set_string: Vec<(String, String)>,
}

/// Renders `source` (named `file` in messages) with `values`.
pub fn render(source: &str, file: &str, values: &Values) -> Result<String, Diagnostics> {
    check_size(source, file)?;
    let context = context(source, file, values)?;
    let protected = Protected::new(source);
    let rendered = run(&protected, file, context)?;
    Ok(protected.restore(&rendered))
}

/// True when `source` has no Jinja in it besides the reserved tokens
/// (`{{output}}`, `{{input:…}}`, …): rendering it changes nothing, so callers
/// may skip the renderer (and its sandbox).
pub fn is_plain(source: &str) -> bool {
    let protected = Protected::new(source);
    !["{{", "{%", "{#"]
        .iter()
        .any(|m| protected.text.contains(m))
}

/// Refuses a file over [`MAX_INPUT_BYTES`] before looking at it.
pub(crate) fn check_size(source: &str, file: &str) -> Result<(), Diagnostics> {
    if source.len() > MAX_INPUT_BYTES {
        return Err(Diagnostics::single(Diagnostic::whole_file(
            file,
            format!(
                "the file is {} but the limit is {}; a workflow file must be smaller",
                size(source.len()),
                size(MAX_INPUT_BYTES)
            ),
        )));
    }
    Ok(())
}

fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!(
            "{:.1} MiB ({bytes} bytes)",
            bytes as f64 / f64::from(1 << 20)
        )
    } else {
        format!("{bytes} bytes")
    }
}

/// `default-values:` overridden by `--set` and `--set-string`.
fn context(
    source: &str,
    file: &str,
    values: &Values,
) -> Result<BTreeMap<String, minijinja::Value>, Diagnostics> {
    let mut context = BTreeMap::new();
    if let Some((first_line, block)) = default_values_block(source) {
        let problem = |p: yaml::YamlProblem| {
            let mark = yaml::Mark {
                line: p.mark.line + first_line - 1,
                column: p.mark.column,
            };
            let mut report = Report::new(file, source, source);
            report.error(mark, format!("in `default-values`: {}", p.message), p.value);
            report.finish()
        };
        let (root, problems) = yaml::parse(&block).map_err(|p| problem(p).unwrap_err())?;
        if let Some(p) = problems.into_iter().next() {
            return Err(problem(p).unwrap_err());
        }
        let (value, problems) = match &root {
            Some(node) => de::read::<serde_json::Value>(node),
            None => (None, Vec::new()),
        };
        if let Some(p) = problems.into_iter().next() {
            return Err(problem(p).unwrap_err());
        }
        match value.and_then(|v| v.get("default-values").cloned()) {
            Some(serde_json::Value::Object(map)) => {
                for (k, v) in map {
                    context.insert(k, minijinja::Value::from_serialize(&v));
                }
            }
            None | Some(serde_json::Value::Null) => {}
            Some(other) => {
                let kind = match other {
                    serde_json::Value::Array(_) => "a list",
                    _ => "a single value",
                };
                let mark = yaml::Mark {
                    line: first_line,
                    column: 1,
                };
                let mut report = Report::new(file, source, source);
                report.error(
                    mark,
                    format!("`default-values` must be a mapping of names to values, found {kind}"),
                    None,
                );
                return Err(report.finish().unwrap_err());
            }
        }
    }
    for (key, value) in &values.set {
        context.insert(key.clone(), typed(value));
    }
    for (key, value) in &values.set_string {
        context.insert(key.clone(), minijinja::Value::from(value.as_str()));
    }
    Ok(context)
}

/// `--set` typing: an integer, else a number, else the string.
fn typed(value: &str) -> minijinja::Value {
    match yaml::resolve(value) {
        yaml::ScalarKind::Int(n) if !value.starts_with("0x") && !value.starts_with("0o") => {
            minijinja::Value::from(n)
        }
        yaml::ScalarKind::Float(f) if f.is_finite() => minijinja::Value::from(f),
        _ => minijinja::Value::from(value),
    }
}

/// The `default-values:` block (a top-level key at column 0 and its indented
/// lines) as YAML text, with its first line number.
fn default_values_block(source: &str) -> Option<(usize, String)> {
    let mut lines = source.lines().enumerate();
    let (start, first) = lines.by_ref().find(|(_, line)| {
        line.strip_prefix("default-values")
            .is_some_and(|rest| rest.trim_start().starts_with(':'))
    })?;
    let mut block = String::from(first);
    block.push('\n');
    for (_, line) in lines {
        let continues = line.trim().is_empty() || line.starts_with([' ', '\t', '#']);
        if !continues {
            break;
        }
        block.push_str(line);
        block.push('\n');
    }
    Some((start + 1, block))
}

/// Placeholders: a private-use character, the token's number, another one.
const OPEN: char = '\u{F8F0}';
const CLOSE: char = '\u{F8F1}';

/// The source with reserved tokens replaced by placeholders.
struct Protected<'a> {
    source: &'a str,
    text: String,
    /// (offset in `text`, placeholder length, offset in the source, token length)
    swaps: Vec<(usize, usize, usize, usize)>,
}

impl<'a> Protected<'a> {
    fn new(source: &'a str) -> Protected<'a> {
        let mut text = String::with_capacity(source.len());
        let mut swaps = Vec::new();
        let mut last = 0;
        for (range, _) in tokens::find(source) {
            text.push_str(&source[last..range.start]);
            let placeholder = format!("{OPEN}{}{CLOSE}", swaps.len());
            swaps.push((text.len(), placeholder.len(), range.start, range.len()));
            text.push_str(&placeholder);
            last = range.end;
        }
        text.push_str(&source[last..]);
        Protected {
            source,
            text,
            swaps,
        }
    }

    /// The source offset of an offset in the protected text.
    fn source_offset(&self, offset: usize) -> usize {
        let mut shift: isize = 0;
        for &(at, len, orig, token_len) in &self.swaps {
            if at >= offset {
                break;
            }
            if offset < at + len {
                return orig;
            }
            shift = (orig + token_len) as isize - (at + len) as isize;
        }
        (offset as isize + shift).clamp(0, self.source.len() as isize) as usize
    }

    fn token(&self, index: usize) -> Option<&'a str> {
        let &(_, _, orig, len) = self.swaps.get(index)?;
        Some(&self.source[orig..orig + len])
    }

    fn restore(&self, rendered: &str) -> String {
        if self.swaps.is_empty() {
            return rendered.to_string();
        }
        let mut out = String::with_capacity(rendered.len());
        let mut rest = rendered;
        while let Some(at) = rest.find(OPEN) {
            out.push_str(&rest[..at]);
            let after = &rest[at + OPEN.len_utf8()..];
            let restored = after.find(CLOSE).and_then(|end| {
                let index: usize = after[..end].parse().ok()?;
                Some((self.token(index)?, end + CLOSE.len_utf8()))
            });
            match restored {
                Some((token, used)) => {
                    out.push_str(token);
                    rest = &after[used..];
                }
                None => {
                    out.push(OPEN);
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// Writes at most [`MAX_OUTPUT_BYTES`].
struct Bounded {
    out: Vec<u8>,
    overflow: bool,
}

impl io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.out.len() + buf.len() > MAX_OUTPUT_BYTES {
            self.overflow = true;
            return Err(io::Error::other("rendered output too large"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn run(
    protected: &Protected,
    file: &str,
    context: BTreeMap<String, minijinja::Value>,
) -> Result<String, Diagnostics> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_keep_trailing_newline(true);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    let source = protected.text.as_str();
    let mut out = Bounded {
        out: Vec::new(),
        overflow: false,
    };
    let result = env
        .template_from_named_str(file, source)
        .and_then(|template| template.render_captured_to(context, &mut out).map(|_| ()));
    match result {
        Ok(()) => Ok(String::from_utf8(out.out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())),
        Err(_) if out.overflow => Err(Diagnostics::single(Diagnostic::whole_file(
            file,
            format!(
                "the template renders more than {}; check its loops",
                size(MAX_OUTPUT_BYTES)
            ),
        ))),
        Err(err) => Err(jinja_error(&err, protected, file)),
    }
}

fn jinja_error(err: &minijinja::Error, protected: &Protected<'_>, file: &str) -> Diagnostics {
    let what = match err.kind() {
        ErrorKind::OutOfFuel => {
            format!(
                "the template runs too long (more than {FUEL} steps); check its loops and recursion"
            )
        }
        ErrorKind::UndefinedError => match err.detail() {
            Some(detail) => {
                format!("undefined value: {detail}; set it in `default-values` or with `--set`")
            }
            None => "undefined value; set it in `default-values` or with `--set`".to_string(),
        },
        kind => match err.detail() {
            Some(detail) => format!("{kind}: {detail}"),
            None => kind.to_string(),
        },
    };
    let text = &protected.text;
    let source = protected.source;
    let mut report = Report::new(file, source, source);
    match (err.line(), err.range()) {
        (_, Some(range))
            if text.is_char_boundary(range.start.min(text.len()))
                && source
                    .is_char_boundary(protected.source_offset(range.start.min(text.len()))) =>
        {
            let start = range.start.min(text.len());
            let end = range.end.clamp(start, text.len());
            let from = protected.source_offset(start);
            let to = Some(protected.source_offset(end))
                .filter(|&to| source.is_char_boundary(to))
                .unwrap_or(from);
            let value = source
                .get(from..to.max(from))
                .map(str::to_string)
                .filter(|v| !v.is_empty());
            let before = &source[..from];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = source[line_start..from].chars().count() + 1;
            report.error_at(line, column, format!("template error: {what}"), value);
        }
        (Some(line), _) => report.error_at(line, 0, format!("template error: {what}"), None),
        (None, _) => report.error_at(0, 0, format!("template error: {what}"), None),
    }
    report.finish().unwrap_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_files_are_those_with_no_jinja_but_reserved_tokens() {
        assert!(is_plain("workflow:\n  name: a\n  tasks: []\n"));
        assert!(is_plain(
            "command: [sh, -c, 'echo > {{output}}/x; cat {{input:0}}/y']\n"
        ));
        assert!(!is_plain("name: {{ name }}\n"));
        assert!(!is_plain("{% for i in range(3) %}x{% endfor %}"));
        assert!(!is_plain("{# a comment #}"));
    }

    #[test]
    fn finds_default_values_block() {
        let source = "version: 2\ndefault-values:\n  a: 1\n\n  b: x\nworkflow:\n  name: n\n";
        let (line, block) = default_values_block(source).unwrap();
        assert_eq!(line, 2);
        assert_eq!(block, "default-values:\n  a: 1\n\n  b: x\n");
        assert!(default_values_block("workflow: {}\n").is_none());
    }

    #[test]
    fn placeholders_round_trip() {
        let source = "a {{output}} b {{ input:0 }} {{ x }}";
        let p = Protected::new(source);
        assert!(!p.text.contains("{{output}}"));
        assert!(p.text.contains("{{ x }}"));
        assert_eq!(p.restore(&p.text), source);
        assert_eq!(p.source_offset(p.text.len()), source.len());
        let at = p.text.find("{{ x").unwrap();
        assert_eq!(p.source_offset(at), source.find("{{ x").unwrap());
    }

    #[test]
    fn set_values_are_typed() {
        assert_eq!(typed("9"), minijinja::Value::from(9));
        assert_eq!(typed("1.5"), minijinja::Value::from(1.5));
        assert_eq!(typed("true"), minijinja::Value::from("true"));
        assert_eq!(typed("0x10"), minijinja::Value::from("0x10"));
        assert_eq!(typed("abc"), minijinja::Value::from("abc"));
    }
}
