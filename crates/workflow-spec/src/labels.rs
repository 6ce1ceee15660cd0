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
        "label key `{key}` is not a valid Kubernetes label key ([prefix/]name: letters, digits, -, _ and ., at most 63)"
    )
}

/// What a bad value is told.
pub fn value_error(key: &str, value: &str) -> String {
    format!(
        "label value `{value}` of `{key}` is not a valid non-empty Kubernetes label value (letters, digits, -, _ and ., at most 63, starting and ending with a letter or digit)"
    )
}

/// What a tag may hold (tags have a label value's syntax).
pub const TAG_SYNTAX: &str =
    "letters, digits, -, _ and . (at most 63, starting and ending with a letter or digit)";

pub fn count_error(count: usize) -> String {
    format!("a workflow may have at most {MAX_LABELS} labels, not {count}")
}

/// The administrators' label policy (OSMO's workflow configuration
/// `labels_config`): label keys every workflow should carry, with the values
/// allowed, checked at submit.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsConfig {
    #[serde(default)]
    pub policy: Vec<LabelPolicy>,
    /// Prepended to every key where labels are stamped on what runs (OSMO's
    /// pods); keys are checked with it at submit and kept bare everywhere else.
    #[serde(default)]
    pub pod_label_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelPolicy {
    pub key: String,
    /// Empty: any well-formed value.
    #[serde(default)]
    pub allow_list: Vec<String>,
    #[serde(default)]
    pub enforcement: Enforcement,
    /// One line appended to this key's messages (where to find the values, say).
    #[serde(default)]
    pub assert_message: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// Not checked.
    #[default]
    Off,
    /// A missing or unlisted value is a warning of the submit.
    Warn,
    /// A missing or unlisted value refuses the submit.
    Enforce,
}

impl LabelsConfig {
    /// What is wrong with it, if anything (OSMO's checks).
    pub fn check(&self) -> Result<(), String> {
        if self.policy.len() > MAX_LABELS {
            return Err(format!("configure at most {MAX_LABELS} label policies"));
        }
        let mut keys = std::collections::BTreeSet::new();
        for p in &self.policy {
            if !is_key(&p.key) {
                return Err(key_error(&p.key));
            }
            if !keys.insert(p.key.as_str()) {
                return Err(format!("duplicate label policy key `{}`", p.key));
            }
            if let Some(bad) = p.allow_list.iter().find(|v| !is_name(v)) {
                return Err(value_error(&p.key, bad));
            }
            if p.assert_message.len() > 256 || p.assert_message.contains(['\r', '\n']) {
                return Err(format!(
                    "the assert_message of `{}` must be one line of at most 256 characters",
                    p.key
                ));
            }
        }
        if self.pod_label_prefix.len() > 253 {
            return Err("pod_label_prefix is longer than 253 characters".into());
        }
        Ok(())
    }

    /// A submit's labels judged: the warnings of `warn` policies, or the
    /// first `enforce` policy's refusal (or a key the prefix makes invalid).
    pub fn judge(
        &self,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<Vec<String>, String> {
        if !self.pod_label_prefix.is_empty() {
            for key in labels.keys() {
                let prefixed = format!("{}{key}", self.pod_label_prefix);
                if !is_key(&prefixed) {
                    return Err(format!(
                        "label key `{key}` with the configured pod label prefix `{}` forms an invalid Kubernetes label key `{prefixed}`",
                        self.pod_label_prefix
                    ));
                }
            }
        }
        let mut warnings = Vec::new();
        for p in &self.policy {
            let Some(message) = p.violation(labels) else {
                continue;
            };
            match p.enforcement {
                Enforcement::Enforce => return Err(message),
                Enforcement::Warn => warnings.push(message),
                Enforcement::Off => {}
            }
        }
        Ok(warnings)
    }

    /// Every active policy the labels break, as messages (a workflow's
    /// query shows them against the policy of now, as OSMO's does).
    pub fn warnings(&self, labels: &std::collections::BTreeMap<String, String>) -> Vec<String> {
        self.policy
            .iter()
            .filter_map(|p| p.violation(labels))
            .collect()
    }
}

impl LabelPolicy {
    /// OSMO's message when `labels` break this policy (None: they keep it, or it is off).
    fn violation(&self, labels: &std::collections::BTreeMap<String, String>) -> Option<String> {
        let key = &self.key;
        let message = match (labels.get(key), self.enforcement) {
            (_, Enforcement::Off) => return None,
            (Some(v), _) if self.allow_list.is_empty() || self.allow_list.contains(v) => {
                return None;
            }
            (None, Enforcement::Enforce) => format!("Workflow is missing required label '{key}'."),
            (None, Enforcement::Warn) => format!(
                "Workflow is missing label '{key}'; add it now to avoid rejected submissions once it is required."
            ),
            (Some(_), Enforcement::Enforce) => {
                format!(
                    "Workflow label '{key}' has a value that is not allowed (allowed: {}).",
                    self.allow_list.join(", ")
                )
            }
            (Some(_), Enforcement::Warn) => format!(
                "Workflow label '{key}' has a value that is not allowed (allowed: {}); use an allowed value now to avoid rejected submissions once the label is required.",
                self.allow_list.join(", ")
            ),
        };
        Some(if self.assert_message.is_empty() {
            message
        } else {
            format!("{message} {}", self.assert_message)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn policy(mode: Enforcement) -> LabelsConfig {
        LabelsConfig {
            policy: vec![LabelPolicy {
                key: "team".into(),
                allow_list: vec!["team_a".into(), "team_b".into()],
                enforcement: mode,
                assert_message: String::new(),
            }],
            pod_label_prefix: String::new(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn policies_warn_refuse_or_stay_silent() {
        let missing = labels(&[]);
        let unlisted = labels(&[("team", "team_x")]);
        let allowed = labels(&[("team", "team_a")]);
        let off = policy(Enforcement::Off);
        assert_eq!(off.judge(&unlisted), Ok(vec![]));
        let warn = policy(Enforcement::Warn);
        assert!(warn.judge(&missing).unwrap()[0].contains("missing label 'team'"));
        assert!(warn.judge(&unlisted).unwrap()[0].contains("not allowed"));
        assert_eq!(warn.judge(&allowed), Ok(vec![]));
        let enforce = policy(Enforcement::Enforce);
        assert!(
            enforce
                .judge(&missing)
                .unwrap_err()
                .contains("missing required label 'team'")
        );
        assert!(
            enforce
                .judge(&unlisted)
                .unwrap_err()
                .contains("not allowed")
        );
        assert_eq!(enforce.judge(&allowed), Ok(vec![]));
        assert_eq!(enforce.warnings(&unlisted).len(), 1);
    }

    #[test]
    fn the_prefix_is_checked_with_each_key() {
        let config = LabelsConfig {
            policy: vec![],
            pod_label_prefix: "example.com/".into(),
        };
        assert_eq!(config.judge(&labels(&[("experiment", "a")])), Ok(vec![]));
        let err = config
            .judge(&labels(&[("team.example.com/role", "lead")]))
            .unwrap_err();
        assert!(err.contains("example.com/team.example.com/role"), "{err}");
    }

    #[test]
    fn a_policy_is_checked_as_osmo_checks_it() {
        let mut config = policy(Enforcement::Warn);
        assert_eq!(config.check(), Ok(()));
        config.policy.push(config.policy[0].clone());
        assert!(config.check().unwrap_err().contains("duplicate"));
        config.policy.pop();
        config.policy[0].allow_list.push("bad value".into());
        assert!(config.check().unwrap_err().contains("bad value"));
        let parsed: Result<LabelsConfig, _> =
            serde_json::from_str(r#"{"policy": [{"key": "team", "enforcement": "sometimes"}]}"#);
        assert!(parsed.is_err());
    }
}
