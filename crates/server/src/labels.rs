//! Workflow labels and tags as OSMO has them: keys and values in Kubernetes
//! label syntax, at most 16 labels, and list selectors `KEY=SELECTOR` where
//! the selector is literal characters, `*` wildcards and `(a|b)`
//! alternatives (`project=(sim_*|hil_*)`, `team=robotics_(a|b)`).

use std::collections::BTreeMap;

use osmo_store::LabelSelector;

pub use osmo_spec::labels::{MAX_LABELS, is_key, is_name};
use osmo_spec::labels::{count_error, key_error, value_error};

/// Patterns one selector may expand to.
const MAX_PATTERNS: usize = 32;

/// `KEY=VALUE` items into labels; the first bad one is the error.
pub fn parse_labels(items: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for item in items {
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!("label `{item}` must look like KEY=VALUE"));
        };
        if !is_key(key) {
            return Err(key_error(key));
        }
        if !is_name(value) {
            return Err(value_error(key, value));
        }
        labels.insert(key.to_string(), value.to_string());
    }
    if labels.len() > MAX_LABELS {
        return Err(count_error(labels.len()));
    }
    Ok(labels)
}

/// `KEY=SELECTOR` into the key and the patterns its alternatives expand to.
pub fn parse_selector(item: &str) -> Result<LabelSelector, String> {
    let Some((key, selector)) = item.split_once('=') else {
        return Err(format!(
            "label selector `{item}` must look like KEY=SELECTOR"
        ));
    };
    if !is_key(key) {
        return Err(format!(
            "label key `{key}` in `{item}` is not a Kubernetes label key"
        ));
    }
    let mut patterns = vec![String::new()];
    let mut rest = selector;
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix('(') {
            let Some(end) = inner.find(')') else {
                return Err(format!("`(` without `)` in `{item}`"));
            };
            let choices: Vec<&str> = inner[..end].split('|').collect();
            if choices.iter().any(|c| c.is_empty()) {
                return Err(format!("an empty alternative in `{item}`"));
            }
            patterns = patterns
                .iter()
                .flat_map(|p| choices.iter().map(move |c| format!("{p}{c}")))
                .collect();
            if patterns.len() > MAX_PATTERNS {
                return Err(format!(
                    "`{item}` expands to more than {MAX_PATTERNS} patterns"
                ));
            }
            rest = &inner[end + 1..];
        } else {
            let end = rest.find('(').unwrap_or(rest.len());
            for p in &mut patterns {
                p.push_str(&rest[..end]);
            }
            rest = &rest[end..];
        }
    }
    for p in &patterns {
        let ok = !p.is_empty()
            && p.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.*".contains(&c));
        if !ok {
            return Err(format!(
                "label selector `{item}` may hold only letters, digits, -, _, ., * and (a|b)"
            ));
        }
    }
    Ok(LabelSelector {
        key: key.to_string(),
        values: patterns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_values_and_tags_follow_kubernetes() {
        assert!(is_key("team") && is_key("example.com/team") && is_key("a.b-c_d"));
        assert!(!is_key("") && !is_key("-team") && !is_key("Example.com/team") && !is_key("a/b/c"));
        assert!(is_name("v1.2") && !is_name("v1.") && !is_name(&"x".repeat(64)));
        assert_eq!(
            parse_labels(&["team=robotics".into(), "stage=v2".into()]).unwrap()["team"],
            "robotics"
        );
        assert!(
            parse_labels(&["team".into()])
                .unwrap_err()
                .contains("KEY=VALUE")
        );
        assert!(
            parse_labels(&["team=a b".into()])
                .unwrap_err()
                .contains("label value")
        );
        let many: Vec<String> = (0..17).map(|i| format!("k{i}=v")).collect();
        assert!(parse_labels(&many).unwrap_err().contains("at most 16"));
    }

    #[test]
    fn selectors_expand_their_alternatives() {
        let s = parse_selector("project=(sim_*|hil_*)").unwrap();
        assert_eq!(
            (s.key.as_str(), s.values),
            ("project", vec!["sim_*".into(), "hil_*".into()])
        );
        let s = parse_selector("team=robotics_(a|b)_(x|y)").unwrap();
        assert_eq!(
            s.values,
            [
                "robotics_a_x",
                "robotics_a_y",
                "robotics_b_x",
                "robotics_b_y"
            ]
        );
        assert!(
            parse_selector("team=(a|b")
                .unwrap_err()
                .contains("without `)`")
        );
        assert!(parse_selector("team=a'b").is_err());
        assert!(parse_selector("team=").is_err());
        let bomb = format!("k={}", "(a|b)".repeat(6));
        assert!(parse_selector(&bomb).unwrap_err().contains("more than 32"));
    }
}
