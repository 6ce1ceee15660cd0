//! Collects [`Diagnostic`]s and places them in the file the user wrote.
//!
//! Marks come from the rendered text. [`LineMap`] maps a rendered line back
//! to the source: lines before the first and after the last change made by
//! rendering map exactly; in between, when rendering kept the number of lines,
//! line N is line N (the text shown is the rendered one); otherwise the
//! rendered line is reported and the message says so.

use crate::error::{Diagnostic, Diagnostics};
use crate::yaml::{Mark, YamlProblem};

/// At most this many diagnostics are kept; the rest are counted.
const MAX_DIAGNOSTICS: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The source line, same text.
    Exact(usize),
    /// The source line, but its text changed in rendering.
    Changed(usize),
    /// Only known in the rendered text.
    Rendered(usize),
}

#[derive(Debug, Clone)]
pub(crate) struct LineMap {
    /// Lines equal at the start and at the end.
    prefix: usize,
    suffix: usize,
    source_lines: usize,
    rendered_lines: usize,
}

impl LineMap {
    pub fn new(source: &[&str], rendered: &[&str]) -> LineMap {
        let prefix = source
            .iter()
            .zip(rendered)
            .take_while(|(a, b)| a == b)
            .count();
        let max_suffix = source.len().min(rendered.len()) - prefix;
        let suffix = source
            .iter()
            .rev()
            .zip(rendered.iter().rev())
            .take(max_suffix)
            .take_while(|(a, b)| a == b)
            .count();
        LineMap {
            prefix,
            suffix,
            source_lines: source.len(),
            rendered_lines: rendered.len(),
        }
    }

    fn place(&self, line: usize) -> Place {
        if line <= self.prefix {
            Place::Exact(line)
        } else if line > self.rendered_lines.saturating_sub(self.suffix) {
            Place::Exact((line + self.source_lines).saturating_sub(self.rendered_lines))
        } else if self.source_lines == self.rendered_lines {
            Place::Changed(line)
        } else {
            Place::Rendered(line)
        }
    }
}

pub(crate) struct Report<'a> {
    file: &'a str,
    source: Vec<&'a str>,
    rendered: Vec<&'a str>,
    map: LineMap,
    diagnostics: Vec<Diagnostic>,
    dropped: usize,
}

impl<'a> Report<'a> {
    /// `rendered` is the text the marks refer to (the source itself when not templated).
    pub fn new(file: &'a str, source: &'a str, rendered: &'a str) -> Report<'a> {
        let source: Vec<&str> = source.lines().collect();
        let rendered: Vec<&str> = rendered.lines().collect();
        let map = LineMap::new(&source, &rendered);
        Report {
            file,
            source,
            rendered,
            map,
            diagnostics: Vec::new(),
            dropped: 0,
        }
    }

    pub fn has_errors(&self) -> bool {
        !self.diagnostics.is_empty()
    }

    /// An error at a mark of the rendered text.
    pub fn error(&mut self, mark: Mark, message: impl Into<String>, value: Option<String>) {
        let mut message = message.into();
        let (line, source_line) = match self.map.place(mark.line) {
            _ if mark.line == 0 => (0, None),
            Place::Exact(line) => (line, line.checked_sub(1).and_then(|i| self.source.get(i))),
            Place::Changed(line) => (line, line.checked_sub(1).and_then(|i| self.rendered.get(i))),
            Place::Rendered(line) => {
                message.push_str(" (line in the rendered spec)");
                (line, line.checked_sub(1).and_then(|i| self.rendered.get(i)))
            }
        };
        self.push(Diagnostic {
            file: self.file.to_string(),
            line,
            column: if line == 0 { 0 } else { mark.column },
            message,
            value,
            source_line: source_line.map(|s| s.to_string()),
        });
    }

    /// An error at a line and column of the source itself.
    pub fn error_at(
        &mut self,
        line: usize,
        column: usize,
        message: impl Into<String>,
        value: Option<String>,
    ) {
        let source_line = line
            .checked_sub(1)
            .and_then(|i| self.source.get(i))
            .map(|s| s.to_string());
        self.push(Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            message: message.into(),
            value,
            source_line,
        });
    }

    pub fn problem(&mut self, problem: YamlProblem) {
        self.error(problem.mark, problem.message, problem.value);
    }

    fn push(&mut self, diagnostic: Diagnostic) {
        if self.diagnostics.len() < MAX_DIAGNOSTICS {
            self.diagnostics.push(diagnostic);
        } else {
            self.dropped += 1;
        }
    }

    /// `Err` with every diagnostic, sorted by place, if there is any.
    pub fn finish(self) -> Result<(), Diagnostics> {
        if self.diagnostics.is_empty() {
            return Ok(());
        }
        let mut all = Diagnostics(self.diagnostics).sorted();
        if self.dropped > 0 {
            all.0.push(Diagnostic::whole_file(
                self.file,
                format!("{} more errors not shown", self.dropped),
            ));
        }
        Err(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_around_a_loop() {
        let source = ["a", "{% for %}", "x", "{% endfor %}", "b", "c"];
        let rendered = ["a", "", "x", "", "x", "", "b", "c"];
        let map = LineMap::new(&source, &rendered);
        assert_eq!(map.place(1), Place::Exact(1));
        assert_eq!(map.place(3), Place::Rendered(3));
        assert_eq!(map.place(7), Place::Exact(5));
        assert_eq!(map.place(8), Place::Exact(6));
        let same = LineMap::new(&["a", "{{ x }}", "b"], &["a", "1", "b"]);
        assert_eq!(same.place(2), Place::Changed(2));
        assert_eq!(same.place(3), Place::Exact(3));
    }
}
