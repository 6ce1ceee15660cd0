//! Reserved tokens, substituted per task at run time (not by Jinja):
//! `{{output}}`, `{{input:N}}`, `{{input:TASK}}`, `{{workflow_id}}`,
//! `{{host:TASK}}` and `{{uuid}}`; spaces are allowed inside the braces.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::model::{Input, Task};

/// What the reserved tokens stand for in one task attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    /// `{{output}}`: the attempt's private output directory.
    pub output: String,
    /// `{{input:N}}` is `inputs[N].1`; `{{input:TASK}}` the path of the entry named TASK.
    /// One entry per input of the task, in order (URL inputs with an empty name).
    pub inputs: Vec<(String, String)>,
    pub workflow_id: String,
    /// `{{host:TASK}}`: where TASK (of the same group) can be reached.
    pub hosts: BTreeMap<String, String>,
    pub uuid: String,
}

/// A reserved token found in text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token<'a> {
    Output,
    /// `input:` followed by an index or a task name.
    Input(&'a str),
    WorkflowId,
    Host(&'a str),
    Uuid,
}

/// Every reserved token in `text`, with its byte range.
pub(crate) fn find(text: &str) -> Vec<(Range<usize>, Token<'_>)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("{{") {
        let start = from + at;
        from = start + 2;
        let Some(len) = text[start + 2..].find("}}") else {
            break;
        };
        let inner = &text[start + 2..start + 2 + len];
        // Only spaces around the name; anything else is Jinja's business.
        let name = inner.trim_matches(|c| c == ' ' || c == '\t');
        let token = match name {
            "output" => Token::Output,
            "workflow_id" => Token::WorkflowId,
            "uuid" => Token::Uuid,
            _ => match name.split_once(':') {
                Some(("input", arg)) if is_argument(arg) => Token::Input(arg),
                Some(("host", arg)) if is_argument(arg) => Token::Host(arg),
                _ => continue,
            },
        };
        let end = start + 2 + len + 2;
        found.push((start..end, token));
        from = end;
    }
    found
}

fn is_argument(arg: &str) -> bool {
    !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Replaces the reserved tokens in `text`. A token with no value in `tokens`
/// (an input index out of range, an unknown task) is left as written.
pub fn substitute_tokens(text: &str, tokens: &Tokens) -> String {
    let found = find(text);
    if found.is_empty() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (range, token) in found {
        let value = match token {
            Token::Output => Some(tokens.output.as_str()),
            Token::WorkflowId => Some(tokens.workflow_id.as_str()),
            Token::Uuid => Some(tokens.uuid.as_str()),
            Token::Input(arg) => match arg.parse::<usize>() {
                Ok(i) => tokens.inputs.get(i).map(|(_, path)| path.as_str()),
                Err(_) => tokens
                    .inputs
                    .iter()
                    .find(|(name, _)| name == arg)
                    .map(|(_, path)| path.as_str()),
            },
            Token::Host(task) => tokens.hosts.get(task).map(String::as_str),
        };
        if let Some(value) = value {
            out.push_str(&text[last..range.start]);
            out.push_str(value);
            last = range.end;
        }
    }
    out.push_str(&text[last..]);
    out
}

impl Task {
    /// This task with its reserved tokens replaced in `command`, `args`,
    /// environment values, file contents (not base64 ones), and the URLs of
    /// inputs, outputs and checkpoints.
    pub fn substituted(&self, tokens: &Tokens) -> Task {
        let sub = |s: &String| substitute_tokens(s, tokens);
        let mut task = self.clone();
        task.command = self.command.iter().map(sub).collect();
        task.args = self.args.iter().map(sub).collect();
        for value in task.environment.values_mut() {
            *value = sub(value);
        }
        for file in task.files.iter_mut().filter(|f| !f.base64) {
            file.contents = sub(&file.contents);
        }
        for input in &mut task.inputs {
            if let Input::Url { url, .. } = input {
                *url = sub(url);
            }
        }
        for output in &mut task.outputs {
            output.url = sub(&output.url);
        }
        for checkpoint in &mut task.checkpoint {
            checkpoint.url = sub(&checkpoint.url);
            checkpoint.path = sub(&checkpoint.path);
        }
        task
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens {
            output: "/out".into(),
            inputs: vec![
                ("prep".into(), "/in/0".into()),
                (String::new(), "/in/1".into()),
            ],
            workflow_id: "wf-3".into(),
            hosts: [("server".to_string(), "10.0.0.2".to_string())].into(),
            uuid: "abc".into(),
        }
    }

    #[test]
    fn substitutes_every_kind() {
        let text = "{{output}} {{ input:0 }} {{input:prep}} {{input:1}} {{workflow_id}} {{ host:server }} {{uuid}}";
        assert_eq!(
            substitute_tokens(text, &tokens()),
            "/out /in/0 /in/0 /in/1 wf-3 10.0.0.2 abc"
        );
    }

    #[test]
    fn leaves_unknown_and_jinja_alone() {
        let text = "{{input:7}} {{host:nobody}} {{ outputs }} {{ output|upper }} {{";
        assert_eq!(substitute_tokens(text, &tokens()), text);
    }
}
