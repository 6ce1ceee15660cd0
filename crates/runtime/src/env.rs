//! The task's environment (SEMANTICS §6) and Kubernetes-style `$(VAR)` references.

use std::collections::BTreeMap;

use crate::AttemptSpec;

/// `PATH` when the task's environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `HOME` when the task's environment has none.
pub const DEFAULT_HOME: &str = "/root";

/// The exact environment of the command and the preflight tests: the task's
/// `environment`, then `OSMO_WORKFLOW_ID`, `OSMO_GROUP_NAME`, `OSMO_TASK_NAME`
/// and `OSMO_RETRY_ID`, and the variables naming its GPUs (these win over the
/// task's own values, see [`crate::gpu`]), then `PATH` and `HOME` if the task
/// sets neither.
pub fn task_environment(spec: &AttemptSpec) -> BTreeMap<String, String> {
    let mut env = spec.environment.clone();
    env.insert("OSMO_WORKFLOW_ID".into(), spec.workflow_id.clone());
    env.insert("OSMO_GROUP_NAME".into(), spec.group.clone());
    env.insert("OSMO_TASK_NAME".into(), spec.task.clone());
    env.insert("OSMO_RETRY_ID".into(), spec.retry_id.to_string());
    let (node_gpus, driver) = crate::gpu::node();
    env.extend(crate::gpu::visible_env(
        &spec.gpus,
        !node_gpus.is_empty(),
        driver,
    ));
    env.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    // An unprivileged task cannot write root's home: its own /tmp is its home.
    let home = if spec.run_as.is_some_and(|(uid, _)| uid != 0) {
        "/tmp"
    } else {
        DEFAULT_HOME
    };
    env.entry("HOME".into()).or_insert_with(|| home.into());
    env
}

/// Replaces `$(VAR)` with the value of `VAR` in `env`, as Kubernetes does for
/// `command` and `args`. `$$(VAR)` is the escape and becomes the literal
/// `$(VAR)`; a reference to an unknown variable, or an unclosed `$(`, stays as
/// written. Every other `$` is left alone, so `sh -c 'kill -9 $$'` keeps its `$$`.
pub fn expand_env_refs(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("$$(") {
            // Escaped reference: keep `$(` literally and do not expand what follows.
            out.push_str("$(");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("$(") {
            match after.find(')') {
                Some(end) => {
                    let name = &after[..end];
                    match env.get(name) {
                        Some(value) if !name.is_empty() => out.push_str(value),
                        _ => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[end + 1..];
                }
                None => {
                    out.push_str(tail);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [("A", "1"), ("NAME", "world"), ("EMPTY", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expands_known_references() {
        let cases = [
            ("$(A)", "1"),
            ("hello $(NAME)!", "hello world!"),
            ("$(A)$(A)", "11"),
            ("x$(EMPTY)y", "xy"),
            ("$(UNKNOWN)", "$(UNKNOWN)"),
            ("$()", "$()"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$$(A)"),
            ("kill -9 $$", "kill -9 $$"),
            ("echo $A ${A} $", "echo $A ${A} $"),
            ("$(A", "$(A"),
            ("unclosed $(A and $(NAME)", "unclosed $(A and $(NAME)"),
            ("€$(A)€", "€1€"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(expand_env_refs(input, &env()), want, "input {input:?}");
        }
    }
}
