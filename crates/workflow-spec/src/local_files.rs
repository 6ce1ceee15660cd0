//! `files: [{path, localpath}]`: the client inlines local files before
//! submitting, as OSMO's CLI does. Each `localpath: PATH` becomes
//! `contents: "..."` on the same line, so line numbers do not move, and the
//! text is escaped so that neither YAML nor Jinja reads anything into it
//! (reserved tokens such as `{{output}}` still work after parsing).

use crate::error::{Diagnostic, Diagnostics};

/// Replaces every `localpath: PATH` key in `source` (named `file` in
/// messages) by `contents: "TEXT"`, where TEXT is what `read(PATH)` returns.
/// `read` resolves PATH (relative to the workflow file, for a CLI); its error
/// is reported at the path's line and column. Works on the raw text, so
/// templated files are fine; a `localpath:` inside a block of text would be
/// replaced too.
pub fn inline_local_files(
    source: &str,
    file: &str,
    mut read: impl FnMut(&str) -> Result<String, String>,
) -> Result<String, Diagnostics> {
    let mut out = String::with_capacity(source.len());
    let mut errors = Vec::new();
    for (number, line) in source.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some((before, value, after, flow)) = find_key(rest) {
            out.push_str(before);
            let path = value.trim().trim_matches(|c| c == '"' || c == '\'');
            match read(path) {
                Ok(text) => {
                    out.push_str("contents: ");
                    out.push_str(&quote(&text));
                }
                Err(why) => {
                    let column = line[..line.len() - rest.len() + before.len()]
                        .chars()
                        .count()
                        + 1;
                    errors.push(Diagnostic {
                        file: file.to_string(),
                        line: number + 1,
                        column,
                        message: format!("cannot read local file `{path}`: {why}"),
                        value: None,
                        source_line: Some(line.trim_end().to_string()),
                    });
                    out.push_str(&rest[before.len()..rest.len() - after.len()]);
                }
            }
            rest = after;
            if !flow {
                break;
            }
        }
        out.push_str(rest);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(Diagnostics(errors))
    }
}

/// Finds a `localpath:` key: (text before it, its value, text after the value, in a flow mapping).
fn find_key(text: &str) -> Option<(&str, &str, &str, bool)> {
    let mut from = 0;
    while let Some(at) = text[from..].find("localpath:") {
        let start = from + at;
        from = start + 1;
        let before = &text[..start];
        let flow = before.trim_end_matches([' ', '\t']).ends_with(['{', ',']);
        let block = before.chars().all(|c| c == ' ' || c == '\t' || c == '-');
        if !(flow || block) {
            continue;
        }
        let tail = &text[start + "localpath:".len()..];
        let line_end = tail.trim_end_matches(['\n', '\r']).len();
        let end = if flow {
            tail[..line_end].find([',', '}']).unwrap_or(line_end)
        } else {
            let end = tail[..line_end].find(" #").unwrap_or(line_end);
            tail[..end].trim_end().len()
        };
        return Some((&text[..start], &tail[..end], &tail[end..], flow));
    }
    None
}

/// A YAML double-quoted string with `{` and `}` escaped, so Jinja sees no tags.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '{' => out.push_str("\\x7b"),
            '}' => out.push_str("\\x7d"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &str) -> Result<String, String> {
        match path {
            "train.py" => Ok("print({'a': \"{{output}}\"})\n\tx\\y\n".into()),
            _ => Err("no such file".into()),
        }
    }

    #[test]
    fn inlines_block_and_flow_entries_on_the_same_line() {
        let source = "files:\n- path: /tmp/train.py\n  localpath: train.py  # the script\n- {localpath: 'train.py', path: /tmp/b}\ntext: |\n  not localpath: here\n";
        let out = inline_local_files(source, "wf.yaml", read).unwrap();
        let quoted = r#""print(\x7b'a': \"\x7b\x7boutput\x7d\x7d\"\x7d)\n\tx\\y\n""#;
        assert_eq!(
            out,
            format!(
                "files:\n- path: /tmp/train.py\n  contents: {quoted}  # the script\n- {{contents: {quoted}, path: /tmp/b}}\ntext: |\n  not localpath: here\n"
            )
        );
        assert_eq!(out.lines().count(), source.lines().count());
    }

    #[test]
    fn unreadable_files_are_reported_where_they_are_named() {
        let err =
            inline_local_files("a: 1\n- localpath: missing.py\n", "wf.yaml", read).unwrap_err();
        assert_eq!(err.0[0].line, 2);
        assert_eq!(err.0[0].column, 3);
        assert_eq!(
            err.0[0].message,
            "cannot read local file `missing.py`: no such file"
        );
    }
}
