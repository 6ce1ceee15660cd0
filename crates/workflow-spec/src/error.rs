//! Errors of this crate: [`Diagnostic`] (one problem at a file, line and
//! column) and [`Diagnostics`] (all problems found, reported together).
//!
//! Display follows rustc: `FILE:LINE:COL: MESSAGE (found: VALUE)`, then the
//! source line with a caret under the column.

use std::fmt;

/// One problem in a workflow or configuration file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based; 0 when the problem has no place in the file (e.g. it is too large).
    pub line: usize,
    /// 1-based, in characters; 0 when unknown.
    pub column: usize,
    /// Lower case; says what was expected.
    pub message: String,
    /// The offending value as written, when there is one.
    pub value: Option<String>,
    /// The text of `line`, shown under the message with a caret.
    pub source_line: Option<String>,
}

impl Diagnostic {
    /// A problem of the whole file (no line).
    pub fn whole_file(file: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: file.to_string(),
            line: 0,
            column: 0,
            message: message.into(),
            value: None,
            source_line: None,
        }
    }
}

impl std::error::Error for Diagnostic {}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (0, _) => write!(f, "{}: {}", self.file, self.message)?,
            (line, 0) => write!(f, "{}:{}: {}", self.file, line, self.message)?,
            (line, col) => write!(f, "{}:{}:{}: {}", self.file, line, col, self.message)?,
        }
        if let Some(value) = &self.value {
            write!(f, " (found: {})", shorten(value, 80))?;
        }
        if let (Some(text), true) = (&self.source_line, self.line > 0) {
            let number = self.line.to_string();
            let pad = " ".repeat(number.len());
            let text = shorten(text.trim_end(), 160);
            write!(f, "\n{pad} |\n{number} | {text}")?;
            if self.column > 0 {
                // Keep tabs so the caret lines up under tab-indented text.
                let lead: String = text
                    .chars()
                    .take(self.column - 1)
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                write!(f, "\n{pad} | {lead}^")?;
            }
        }
        Ok(())
    }
}

/// Every problem found in one file, in file order. Never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn single(diagnostic: Diagnostic) -> Diagnostics {
        Diagnostics(vec![diagnostic])
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }

    /// Sorts by position (whole-file problems first) and drops exact repeats.
    pub(crate) fn sorted(mut self) -> Diagnostics {
        self.0.sort_by_key(|d| (d.line, d.column));
        self.0.dedup();
        self
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        let n = self.0.len();
        write!(f, "{n} error{}", if n == 1 { "" } else { "s" })
    }
}

impl<'a> IntoIterator for &'a Diagnostics {
    type Item = &'a Diagnostic;
    type IntoIter = std::slice::Iter<'a, Diagnostic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_place_value_and_caret() {
        let d = Diagnostic {
            file: "wf.yaml".into(),
            line: 7,
            column: 5,
            message: "unknown field `exitAction`".into(),
            value: Some("exitAction".into()),
            source_line: Some("    exitAction: {}".into()),
        };
        assert_eq!(
            d.to_string(),
            "wf.yaml:7:5: unknown field `exitAction` (found: exitAction)\n  |\n7 |     exitAction: {}\n  |     ^"
        );
        let all = Diagnostics(vec![
            d.clone(),
            Diagnostic::whole_file("wf.yaml", "too big"),
        ]);
        assert!(all.to_string().ends_with("wf.yaml: too big\n2 errors"));
    }
}
