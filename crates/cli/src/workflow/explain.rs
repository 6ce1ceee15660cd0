//! `osmo workflow explain FILE --task T --exit-code N`: which exit action a
//! code triggers, through the engine's own decision, with the lookup order.

use std::path::PathBuf;

use osmo_engine::{Decision, RuleOrigin, Rules, TaskStatus, decide};
use osmo_spec::ExitActions;
use serde_json::json;

use super::validate::report_diagnostics;
use super::{LocalPoolArgs, ValueArgs, read_spec};
use crate::Outcome;
use crate::codes::describe_code;
use crate::output::{FormatArgs, print_json, table, table_text};

/// `osmo workflow explain` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    long_about = "Show what an exit code does to a task, without running anything: the rule it \
        matches (the task's exitActions, then the pool's default_exit_actions, then the default: \
        0 → COMPLETED, anything else → the code's failure status), the resulting status, and the \
        retry budget (the pool's max_retry_per_task). Uses the same decision as the service.",
    after_help = "Example:\n  osmo workflow explain wf.yaml --task train --exit-code 137 --config pools.yaml --retry-id 1"
)]
pub struct ExplainArgs {
    /// The workflow file (YAML, OSMO version 2).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The task whose exit actions apply.
    #[arg(long, value_name = "TASK")]
    pub task: String,
    /// The attempt's exit code (the highest of the codes it produced).
    #[arg(long, value_name = "N")]
    pub exit_code: u32,
    /// The attempt's retry ID: how many times it was rescheduled before (0 = first attempt).
    #[arg(long, short = 'r', value_name = "R", default_value_t = 0)]
    pub retry_id: u32,
    #[command(flatten)]
    pub values: ValueArgs,
    #[command(flatten)]
    pub pool: LocalPoolArgs,
    #[command(flatten)]
    pub format: FormatArgs,
}

pub fn run(args: ExplainArgs) -> anyhow::Result<Outcome> {
    let file = read_spec(&args.file)?;
    let pool = args.pool.load()?;
    let workflow = match file.load(&args.values.values(), pool.as_ref().map(|(_, p)| p)) {
        Ok(w) => w,
        Err(diagnostics) => {
            report_diagnostics(&diagnostics, args.format.json())?;
            return Ok(Outcome::Failure);
        }
    };
    let Some((g, t)) = workflow.find_task(&args.task) else {
        let names: Vec<&str> = workflow.tasks().map(|(_, t)| t.name.as_str()).collect();
        anyhow::bail!(
            "workflow `{}` has no task `{}`; its tasks: {}",
            workflow.name,
            args.task,
            names.join(", ")
        );
    };
    let group = &workflow.groups[g];
    let task = &group.tasks[t];
    let rules = pool
        .as_ref()
        .map(|(_, p)| Rules::from_pool(p))
        .unwrap_or_default();
    let pool_name = pool.as_ref().map(|(name, _)| name.as_str());
    let decision = decide(
        args.exit_code,
        &task.exit_actions,
        &rules,
        args.retry_id,
        args.retry_id,
    );
    let explained = Explained {
        decision: &decision,
        rules: &rules,
        pool: pool_name,
        retry_id: args.retry_id,
    };
    let headline = explained.headline();
    let steps = explained.steps(&task.exit_actions);

    if args.format.json() {
        print_json(&json!({
            "workflow": workflow.name,
            "task": task.name,
            "group": group.name,
            "retry_id": args.retry_id,
            "exit_code": args.exit_code,
            "meaning": describe_code(args.exit_code),
            "pool": pool_name,
            "max_retry_per_task": rules.max_retry_per_task,
            "summary": headline,
            "lookup": steps.iter().map(|s| json!({"step": s.step, "rules": s.rules, "result": s.result})).collect::<Vec<_>>(),
            "decision": decision,
        }))?;
        return Ok(Outcome::Success);
    }
    println!("{headline}");
    println!();
    println!("code {}: {}", args.exit_code, describe_code(args.exit_code));
    println!(
        "task `{}` of group `{}`, retry {}; {}: max_retry_per_task {}",
        task.name,
        group.name,
        args.retry_id,
        match pool_name {
            Some(p) => format!("pool `{p}`"),
            None => "built-in pool defaults".to_string(),
        },
        rules.max_retry_per_task
    );
    println!("lookup order:");
    let mut t = table(["Step", "Rules", "Result"]);
    for (i, s) in steps.iter().enumerate() {
        t.add_row([
            format!("{}. {}", i + 1, s.step),
            s.rules.clone(),
            s.result.clone(),
        ]);
    }
    print!("{}", table_text(&t));
    println!("engine: {}", decision.message);
    Ok(Outcome::Success)
}

struct Explained<'a> {
    decision: &'a Decision,
    rules: &'a Rules,
    pool: Option<&'a str>,
    retry_id: u32,
}

struct Step {
    step: &'static str,
    rules: String,
    result: String,
}

/// `COMPLETE 0,1-10,16,20; RESCHEDULE 11-20`, or `(none)`.
fn list_rules(actions: &ExitActions) -> String {
    if actions.is_empty() {
        return "(none)".to_string();
    }
    actions
        .rules
        .iter()
        .map(|r| format!("{} {}", r.action, r.codes.text))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Exit actions never apply to these codes (SEMANTICS §3).
fn exempt(code: u32) -> bool {
    matches!(code, 3000 | 3002)
}

impl Explained<'_> {
    fn origin(&self, origin: RuleOrigin) -> String {
        match (origin, self.pool) {
            (RuleOrigin::Task, _) => "task exitActions".to_string(),
            (RuleOrigin::Pool, Some(p)) => format!("pool `{p}` default_exit_actions"),
            (RuleOrigin::Pool, None) => "pool default_exit_actions".to_string(),
            (RuleOrigin::Default, _) => "default".to_string(),
        }
    }

    /// `exit code 16 → rule RESCHEDULE 11-20 (task exitActions) → RESCHEDULED: ...`
    fn headline(&self) -> String {
        let d = self.decision;
        let rule = match (&d.rule.action, &d.rule.range) {
            (Some(action), Some(range)) => {
                format!("rule {action} {range} ({})", self.origin(d.rule.origin))
            }
            (Some(action), None) => format!("rule {action} ({})", self.origin(d.rule.origin)),
            _ if exempt(d.exit_code) => "no exit action applies to this code".to_string(),
            _ => "no rule (default)".to_string(),
        };
        let outcome = if d.status == TaskStatus::Rescheduled {
            format!(
                "{}: a new attempt (retry {} of {}) is scheduled",
                d.status,
                u64::from(self.retry_id) + 1,
                self.rules.max_retry_per_task
            )
        } else if d.retry_limit_reached {
            format!(
                "{}: retry limit {} reached, so the code's own status stands",
                d.status, self.rules.max_retry_per_task
            )
        } else {
            d.status.to_string()
        };
        format!("exit code {} → {rule} → {outcome}", d.exit_code)
    }

    /// The three places a code is looked up, and what each gave.
    fn steps(&self, task_actions: &ExitActions) -> Vec<Step> {
        let d = self.decision;
        let matched = match (d.rule.action, &d.rule.range) {
            (Some(action), Some(range)) => format!("matched {action} {range}"),
            (Some(action), None) => format!("matched {action}"),
            _ => String::new(),
        };
        let exempt = exempt(d.exit_code);
        let skipped = if exempt {
            "skipped: exit actions do not apply to this code"
        } else {
            "not consulted"
        };
        let (task, pool, default) = match d.rule.origin {
            RuleOrigin::Task => (matched, skipped.to_string(), skipped.to_string()),
            RuleOrigin::Pool => (no_rule(d.exit_code), matched, skipped.to_string()),
            RuleOrigin::Default if exempt => (
                skipped.to_string(),
                skipped.to_string(),
                format!("→ {}", d.status),
            ),
            RuleOrigin::Default => (
                no_rule(d.exit_code),
                no_rule(d.exit_code),
                format!("→ {}", d.status),
            ),
        };
        let pool_step = match self.pool {
            Some(_) => "pool default_exit_actions",
            None => "pool default_exit_actions (built-in)",
        };
        vec![
            Step {
                step: "task exitActions",
                rules: list_rules(task_actions),
                result: task,
            },
            Step {
                step: pool_step,
                rules: list_rules(&self.rules.default_exit_actions),
                result: pool,
            },
            Step {
                step: "default",
                rules: "0 → COMPLETED; else the code's status".to_string(),
                result: default,
            },
        ]
    }
}

fn no_rule(code: u32) -> String {
    format!("no rule lists {code}")
}

#[cfg(test)]
mod tests {
    use osmo_spec::{Action, CodeList, ExitRule};

    use super::*;

    fn actions(list: &[(Action, &str)]) -> ExitActions {
        ExitActions {
            rules: list
                .iter()
                .map(|(action, text)| ExitRule {
                    action: *action,
                    codes: CodeList::parse(text).unwrap(),
                })
                .collect(),
        }
    }

    fn headline(
        code: u32,
        task: &ExitActions,
        rules: &Rules,
        retry_id: u32,
        pool: Option<&str>,
    ) -> String {
        let decision = decide(code, task, rules, retry_id, retry_id);
        Explained {
            decision: &decision,
            rules,
            pool,
            retry_id,
        }
        .headline()
    }

    #[test]
    fn headlines() {
        let rules = Rules::default();
        let task = actions(&[(Action::Complete, "0-10"), (Action::Reschedule, "11-20")]);
        assert_eq!(
            headline(16, &task, &rules, 0, None),
            "exit code 16 → rule RESCHEDULE 11-20 (task exitActions) → RESCHEDULED: a new attempt (retry 1 of 3) is scheduled"
        );
        assert_eq!(
            headline(16, &task, &rules, 3, None),
            "exit code 16 → rule RESCHEDULE 11-20 (task exitActions) → FAILED: retry limit 3 reached, so the code's own status stands"
        );
        assert_eq!(
            headline(1, &ExitActions::default(), &rules, 0, None),
            "exit code 1 → no rule (default) → FAILED"
        );
        let pool = Rules {
            max_retry_per_task: 2,
            default_exit_actions: actions(&[(Action::Complete, "7")]),
        };
        assert_eq!(
            headline(7, &ExitActions::default(), &pool, 0, Some("default")),
            "exit code 7 → rule COMPLETE 7 (pool `default` default_exit_actions) → COMPLETED"
        );
        assert_eq!(
            headline(3000, &task, &rules, 0, None),
            "exit code 3000 → no exit action applies to this code → FAILED_UPSTREAM"
        );
    }
}
