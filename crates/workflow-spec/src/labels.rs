//! Workflow label syntax as OSMO has it (Kubernetes label syntax): keys
//! `[prefix/]name`, values and names `[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?`,
//! at most [`MAX_LABELS`] per workflow.

pub const MAX_LABELS: usize = 16;

/// A label value, a key's name part, and a tag.
pub fn is_name(text: &str) -> bool {
    let b = text.as_bytes();
    let edge = |c: &u8| c.is_ascii_alphanumeric();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
}

/// `[prefix/]name`, the prefix a DNS subdomain.
pub fn is_key(key: &str) -> bool {
    match key.split_once('/') {
        None => is_name(key),
        Some((prefix, name)) => {
            is_name(name)
                && prefix.len() <= 253
                && prefix.split('.').all(|part| {
                    is_name(part)
                        && part
                            .bytes()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                })
        }
    }
}

/// What a bad key is told.
pub fn key_error(key: &str) -> String {
    format!(
        "label key `{key}` is not a Kubernetes label key ([prefix/]name: letters, digits, -, _ and ., at most 63)"
    )
}

/// What a bad value is told.
pub fn value_error(key: &str, value: &str) -> String {
    format!(
        "label value `{value}` of `{key}` is not a Kubernetes label value (letters, digits, -, _ and ., at most 63, starting and ending with a letter or digit)"
    )
}

/// What a tag may hold (tags have a label value's syntax).
pub const TAG_SYNTAX: &str =
    "letters, digits, -, _ and . (at most 63, starting and ending with a letter or digit)";

pub fn count_error(count: usize) -> String {
    format!("a workflow may have at most {MAX_LABELS} labels, not {count}")
}
