//! Checks of single values shared by workflow files and the service
//! configuration: strings, booleans, counts, names, durations, sizes and
//! exit-action lists. Each reports its problem at the value's place and
//! returns `None`.

use std::time::Duration;

use crate::codes::{Action, CodeList, ExitActions, ExitRule};
use crate::de::{Checked, Entries, Kind, Scalar};
use crate::report::Report;
use crate::units;

/// Longest workflow, group or task name.
pub(crate) const MAX_NAME_LEN: usize = 64;

fn found(s: &Scalar) -> Option<String> {
    s.is_scalar().then(|| s.text.clone())
}

/// Any scalar as its text (numbers and booleans as written).
pub(crate) fn text(s: &Scalar, what: &str, report: &mut Report) -> Option<String> {
    if s.is_scalar() {
        Some(s.text.clone())
    } else {
        report.error(
            s.mark,
            format!("{what} must be a string, found {}", s.describe()),
            None,
        );
        None
    }
}

/// An optional field's text, reported when present but not a scalar.
pub(crate) fn opt_text(s: Option<&Scalar>, what: &str, report: &mut Report) -> Option<String> {
    s.and_then(|s| text(s, what, report))
}

pub(crate) fn flag(s: &Scalar, what: &str, report: &mut Report) -> Option<bool> {
    match s.kind {
        Kind::Bool => Some(s.text.eq_ignore_ascii_case("true")),
        _ => {
            report.error(
                s.mark,
                format!("{what} must be `true` or `false`, found {}", s.describe()),
                found(s),
            );
            None
        }
    }
}

pub(crate) fn opt_flag(s: Option<&Scalar>, what: &str, default: bool, report: &mut Report) -> bool {
    s.and_then(|s| flag(s, what, report)).unwrap_or(default)
}

/// A non-negative integer.
pub(crate) fn count(s: &Scalar, what: &str, report: &mut Report) -> Option<u32> {
    let parsed = match s.kind {
        Kind::Int | Kind::Str => s.text.trim().parse::<u32>().ok(),
        _ => None,
    };
    if parsed.is_none() {
        let message = match s.kind {
            Kind::Int => format!("{what} must be a non-negative integer"),
            _ => format!(
                "{what} must be a non-negative integer, found {}",
                s.describe()
            ),
        };
        report.error(s.mark, message, found(s));
    }
    parsed
}

pub(crate) fn duration(s: &Scalar, what: &str, report: &mut Report) -> Option<Duration> {
    let parsed = match s.kind {
        Kind::Int | Kind::Float | Kind::Str => units::parse_duration(&s.text),
        _ => Err(format!(
            "expected a duration such as `30m` or `2h`, found {}",
            s.describe()
        )),
    };
    parsed
        .map_err(|e| report.error(s.mark, format!("invalid {what}: {e}"), found(s)))
        .ok()
}

pub(crate) fn quantity(s: &Scalar, what: &str, report: &mut Report) -> Option<u64> {
    let parsed = match s.kind {
        Kind::Int | Kind::Float | Kind::Str => units::parse_quantity(&s.text),
        _ => Err(format!(
            "expected a size such as `16Gi`, found {}",
            s.describe()
        )),
    };
    parsed
        .map_err(|e| report.error(s.mark, format!("invalid {what}: {e}"), found(s)))
        .ok()
}

pub(crate) fn cpu(s: &Scalar, what: &str, report: &mut Report) -> Option<f64> {
    let parsed = match s.kind {
        Kind::Int | Kind::Float | Kind::Str => units::parse_cpu(&s.text),
        _ => Err(format!("expected a number of CPUs, found {}", s.describe())),
    };
    parsed
        .map_err(|e| report.error(s.mark, format!("invalid {what}: {e}"), found(s)))
        .ok()
}

/// `[a-zA-Z]([a-zA-Z0-9_-]*[a-zA-Z0-9])?`, at most [`MAX_NAME_LEN`] characters.
pub(crate) fn is_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphabetic()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        }
        _ => false,
    }
}

/// A workflow, group or task name.
pub(crate) fn name(s: &Scalar, what: &str, report: &mut Report) -> Option<String> {
    let name = text(s, what, report)?;
    if name.chars().count() > MAX_NAME_LEN {
        report.error(
            s.mark,
            format!(
                "{what} is {} characters long; at most {MAX_NAME_LEN} are allowed",
                name.chars().count()
            ),
            Some(name),
        );
        return None;
    }
    if !is_name(&name) {
        report.error(
            s.mark,
            format!(
                "{what} `{name}` is not valid; a name starts with a letter, ends with a letter or digit, \
                 and has only letters, digits, `-` and `_`"
            ),
            None,
        );
        return None;
    }
    Some(name)
}

/// A list of scalars as strings; `None` if the list itself could not be read.
pub(crate) fn strings(
    list: &Checked<Vec<Scalar>>,
    what: &str,
    report: &mut Report,
) -> Option<Vec<String>> {
    let items = list.value.as_ref()?;
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for item in items {
        match text(item, what, report) {
            Some(t) => out.push(t),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// `{ACTION: codes}`: actions case-insensitive, each once; code lists valid;
/// no code under two actions.
pub(crate) fn exit_actions(entries: &Checked<Entries<Scalar>>, report: &mut Report) -> ExitActions {
    let mut actions = ExitActions::default();
    let mut keys = Vec::new();
    let Some(entries) = &entries.value else {
        return actions;
    };
    for (key, value) in &entries.0 {
        let Some(action) = Action::parse(key.text.trim()) else {
            report.error(
                key.mark,
                format!(
                    "unknown exit action `{}`; expected one of COMPLETE, FAIL, RESCHEDULE",
                    key.text
                ),
                None,
            );
            continue;
        };
        if let Some((_, first)) = keys.iter().find(|(a, _): &&(Action, &Scalar)| *a == action) {
            report.error(
                key.mark,
                format!(
                    "exit action {action} is given twice (first at line {}, column {}); put all its codes in one list",
                    first.mark.line, first.mark.column
                ),
                None,
            );
            continue;
        }
        keys.push((action, key));
        let codes = match value.kind {
            Kind::Int | Kind::Str => CodeList::parse(&value.text),
            _ => {
                report.error(
                    value.mark,
                    format!(
                        "codes for {action} must be a list such as `0,1-10,16`, found {}",
                        value.describe()
                    ),
                    found(value),
                );
                continue;
            }
        };
        match codes {
            Ok(codes) => actions.rules.push(ExitRule { action, codes }),
            Err(e) => report.error(
                value.mark,
                format!("invalid codes for {action}: {e}"),
                Some(value.text.clone()),
            ),
        }
    }
    for overlap in actions.overlaps() {
        let at = keys
            .iter()
            .find(|(a, _)| *a == overlap.second)
            .map(|(_, k)| k.mark)
            .unwrap_or(entries_mark(&keys));
        report.error(at, overlap.to_string(), None);
    }
    actions
}

fn entries_mark(keys: &[(Action, &Scalar)]) -> crate::yaml::Mark {
    keys.first().map(|(_, k)| k.mark).unwrap_or_default()
}

/// Valid base64 (standard alphabet, padding optional, whitespace ignored).
pub(crate) fn is_base64(text: &str) -> bool {
    let mut data = 0usize;
    let mut padding = 0usize;
    for c in text.chars().filter(|c| !c.is_ascii_whitespace()) {
        match c {
            '=' => padding += 1,
            c if padding == 0 && (c.is_ascii_alphanumeric() || c == '+' || c == '/') => data += 1,
            _ => return false,
        }
    }
    padding <= 2
        && (data + padding) % 4 != 1
        && (padding == 0 || (data + padding).is_multiple_of(4))
}

/// A data URL (`s3://`, `gs://`, `azure://`, `file://`, and for inputs
/// `https://`), with the scheme checked here and the rest by the store.
pub(crate) fn data_url(
    s: &Scalar,
    what: &str,
    written: bool,
    report: &mut Report,
) -> Option<String> {
    let url = text(s, what, report)?;
    let scheme = url
        .split_once("://")
        .map(|(scheme, _)| scheme.to_ascii_lowercase());
    let readable = ["s3", "gs", "azure", "file", "http", "https"];
    let ok = match scheme.as_deref() {
        Some("http" | "https") => !written,
        Some(scheme) => readable.contains(&scheme),
        None => false,
    };
    if ok {
        return Some(url);
    }
    let expected = if written {
        "s3://BUCKET/PATH, gs://BUCKET/PATH, azure://ACCOUNT/CONTAINER/PATH or file:///PATH (https:// is read, not written)"
    } else {
        "s3://BUCKET/PATH, gs://BUCKET/PATH, azure://ACCOUNT/CONTAINER/PATH, https://HOST/FILE or file:///PATH"
    };
    report.error(
        s.mark,
        format!("{what} `{url}` is not a data URL: expected {expected}"),
        None,
    );
    None
}

/// A regular expression (a data transfer's file filter).
pub(crate) fn regex(s: &Scalar, what: &str, report: &mut Report) -> Option<String> {
    let text = text(s, what, report)?;
    match regex::Regex::new(&text) {
        Ok(_) => Some(text),
        Err(e) => {
            report.error(
                s.mark,
                format!("{what} `{text}` is not a regular expression: {e}"),
                None,
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "ab", "a-b_c9", "Train1"] {
            assert!(is_name(good), "{good}");
        }
        for bad in ["", "1a", "a-", "_a", "a b", "a.b", "ä"] {
            assert!(!is_name(bad), "{bad}");
        }
    }

    #[test]
    fn base64() {
        for good in ["", "aGVsbG8=", "aGVsbG8", "aGVs\nbG8=", "YQ=="] {
            assert!(is_base64(good), "{good}");
        }
        for bad in ["a", "aGVsbG8===", "aGV*", "YQ=x", "YQ="] {
            assert!(!is_base64(bad), "{bad}");
        }
    }
}
