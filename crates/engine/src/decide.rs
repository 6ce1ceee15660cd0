//! The exit-code decision of SEMANTICS §2–§3, on its own: which code wins,
//! which status it means, which exit action applies and what the retry budget
//! allows. [`crate::WorkflowState`] calls [`decide`] for every exit; `osmo
//! workflow explain` can call it for a code the user asks about.

use std::fmt::Write as _;

use osmo_spec::codes::well_known as code;
use osmo_spec::config::PoolConfig;
use serde::{Deserialize, Serialize};

use crate::api::{Action, Decision, ExitActions, ReportedCode, RuleMatch, RuleOrigin, TaskStatus};

/// The pool's rules that the engine applies to every task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rules {
    /// How many RESCHEDULE actions a task's own exit codes may trigger (default 3).
    pub max_retry_per_task: u32,
    /// Looked up when the task's own `exitActions` do not list a code.
    pub default_exit_actions: ExitActions,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            max_retry_per_task: 3,
            default_exit_actions: ExitActions::default(),
        }
    }
}

impl Rules {
    /// The rules of a configured pool.
    pub fn from_pool(pool: &PoolConfig) -> Rules {
        Rules {
            max_retry_per_task: pool.max_retry_per_task,
            default_exit_actions: pool.default_exit_actions.clone(),
        }
    }
}

/// The attempt's exit code: the highest reported (the seed: "If a task
/// encounters multiple exit codes, the highest exit code will be selected").
/// None when nothing was reported.
pub fn resolve_code(codes: &[ReportedCode]) -> Option<u32> {
    codes.iter().map(|c| c.code).max()
}

/// The status a code means before exit actions (SEMANTICS §2).
pub fn status_for_code(exit_code: u32) -> TaskStatus {
    match exit_code {
        0 => TaskStatus::Completed,
        code::IMAGE_PULL_BACKOFF | code::ERR_IMAGE_PULL => TaskStatus::FailedImagePull,
        code::UPSTREAM => TaskStatus::FailedUpstream,
        code::BACKEND_ERROR => TaskStatus::FailedBackendError,
        code::SERVER_ERROR => TaskStatus::FailedServerError,
        code::START_ERROR => TaskStatus::FailedStartError,
        code::EVICTED => TaskStatus::FailedEvicted,
        code::START_TIMEOUT => TaskStatus::FailedStartTimeout,
        code::PREEMPTED => TaskStatus::FailedPreempted,
        _ => TaskStatus::Failed,
    }
}

/// What a code means, in the seed's words (its exit-code tables, kept once
/// in [`osmo_spec::codes::meaning`] for the engine and the CLI alike).
pub fn describe_code(exit_code: u32) -> &'static str {
    osmo_spec::codes::meaning(exit_code)
}

/// Decides what an exit code does to an attempt (SEMANTICS §3).
///
/// Lookup order: the task's `exitActions`, the pool's `default_exit_actions`,
/// then the default (the status of [`status_for_code`]). Exit actions never
/// apply to 3000 (upstream) and 3002 (server error). RESCHEDULE is granted while
/// `own_reschedules < rules.max_retry_per_task`; once the budget is spent the
/// status of §2 stands and the message says `retry limit N reached`.
/// `retry_id` is the deciding attempt's, used to number the next one.
pub fn decide(
    exit_code: u32,
    task_actions: &ExitActions,
    rules: &Rules,
    own_reschedules: u32,
    retry_id: u32,
) -> Decision {
    decide_with(
        exit_code,
        task_actions,
        rules,
        own_reschedules,
        retry_id,
        true,
    )
}

/// [`decide`]; without `always_explain` a COMPLETED decision carries an
/// empty message (the engine records none for it, and skips writing it).
pub(crate) fn decide_with(
    exit_code: u32,
    task_actions: &ExitActions,
    rules: &Rules,
    own_reschedules: u32,
    retry_id: u32,
    always_explain: bool,
) -> Decision {
    let natural = status_for_code(exit_code);
    let exempt = matches!(exit_code, code::UPSTREAM | code::SERVER_ERROR);
    let found = if exempt {
        None
    } else {
        task_actions
            .lookup(exit_code)
            .map(|(rule, range)| (RuleOrigin::Task, rule.action, range))
            .or_else(|| {
                rules
                    .default_exit_actions
                    .lookup(exit_code)
                    .map(|(rule, range)| (RuleOrigin::Pool, rule.action, range))
            })
    };
    let Some((origin, action, range)) = found else {
        let mut message = String::new();
        if always_explain || natural != TaskStatus::Completed {
            let description = describe_code(exit_code);
            message.reserve(96);
            let _ = if exempt {
                write!(
                    message,
                    "exit code {exit_code} ({description}) → {natural}; exit actions do not apply to it"
                )
            } else {
                write!(
                    message,
                    "exit code {exit_code} is not listed in exitActions; {description} → {natural} (default)"
                )
            };
        }
        return Decision {
            exit_code,
            rule: RuleMatch {
                origin: RuleOrigin::Default,
                action: None,
                range: None,
            },
            status: natural,
            retry_limit_reached: false,
            message,
        };
    };
    let granted = own_reschedules < rules.max_retry_per_task;
    let (status, retry_limit_reached) = match action {
        Action::Complete => (TaskStatus::Completed, false),
        Action::Fail => (TaskStatus::Failed, false),
        Action::Reschedule if granted => (TaskStatus::Rescheduled, false),
        Action::Reschedule => (natural, true),
    };
    let mut message = String::new();
    if always_explain || status != TaskStatus::Completed {
        let origin_name = match origin {
            RuleOrigin::Task => "task",
            RuleOrigin::Pool => "pool",
            RuleOrigin::Default => "default",
        };
        message.reserve(96);
        let _ = write!(
            message,
            "exit code {exit_code} matched {action} {range} ({origin_name})"
        );
        let _ = if status == TaskStatus::Rescheduled {
            let next = u64::from(retry_id) + 2;
            let most =
                u64::from(retry_id) + 1 + u64::from(rules.max_retry_per_task - own_reschedules);
            write!(message, "; attempt {next} of {most} scheduled")
        } else if retry_limit_reached {
            write!(
                message,
                " but retry limit {} reached; {status}",
                rules.max_retry_per_task
            )
        } else if status != TaskStatus::Completed {
            write!(message, "; {status}")
        } else {
            Ok(())
        };
    }
    Decision {
        exit_code,
        rule: RuleMatch {
            origin,
            action: Some(action),
            range: Some(range.to_string()),
        },
        status,
        retry_limit_reached,
        message,
    }
}

#[cfg(test)]
mod tests {
    use osmo_spec::codes::{CodeList, CodeSource, ExitRule};

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

    fn reported(code: u32, source: CodeSource) -> ReportedCode {
        ReportedCode {
            code,
            source,
            detail: None,
        }
    }

    #[test]
    fn highest_code_wins() {
        assert_eq!(resolve_code(&[]), None);
        let codes = [
            reported(50, CodeSource::User),
            reported(2010, CodeSource::Runtime),
            reported(1001, CodeSource::Preflight),
        ];
        assert_eq!(resolve_code(&codes), Some(2010));
    }

    #[test]
    fn status_table_of_section_2() {
        let table = [
            (0, TaskStatus::Completed),
            (1, TaskStatus::Failed),
            (137, TaskStatus::Failed),
            (256, TaskStatus::Failed),
            (301, TaskStatus::FailedImagePull),
            (302, TaskStatus::FailedImagePull),
            (1001, TaskStatus::Failed),
            (2010, TaskStatus::Failed),
            (3000, TaskStatus::FailedUpstream),
            (3001, TaskStatus::FailedBackendError),
            (3002, TaskStatus::FailedServerError),
            (3003, TaskStatus::FailedStartError),
            (3004, TaskStatus::FailedEvicted),
            (3005, TaskStatus::FailedStartTimeout),
            (3006, TaskStatus::FailedPreempted),
            (4000, TaskStatus::Failed),
        ];
        for (code, status) in table {
            assert_eq!(status_for_code(code), status, "code {code}");
        }
    }

    #[test]
    fn seed_complete_on_16() {
        let task = actions(&[(Action::Complete, "0,1-10,16,20")]);
        let d = decide(16, &task, &Rules::default(), 0, 0);
        assert_eq!(d.status, TaskStatus::Completed);
        assert_eq!(d.rule.origin, RuleOrigin::Task);
        assert_eq!(d.rule.action, Some(Action::Complete));
        assert_eq!(d.rule.range.as_deref(), Some("16"));
        assert_eq!(d.message, "exit code 16 matched COMPLETE 16 (task)");
    }

    #[test]
    fn reschedule_until_the_budget_is_spent() {
        let task = actions(&[(Action::Complete, "0-10"), (Action::Reschedule, "11-20")]);
        let rules = Rules {
            max_retry_per_task: 3,
            ..Rules::default()
        };
        let d = decide(16, &task, &rules, 0, 0);
        assert_eq!(d.status, TaskStatus::Rescheduled);
        assert!(!d.retry_limit_reached);
        assert_eq!(
            d.message,
            "exit code 16 matched RESCHEDULE 11-20 (task); attempt 2 of 4 scheduled"
        );
        let d = decide(16, &task, &rules, 2, 2);
        assert_eq!(
            d.message,
            "exit code 16 matched RESCHEDULE 11-20 (task); attempt 4 of 4 scheduled"
        );
        let rules = Rules {
            max_retry_per_task: 2,
            ..Rules::default()
        };
        let d = decide(16, &task, &rules, 2, 2);
        assert_eq!(d.status, TaskStatus::Failed);
        assert!(d.retry_limit_reached);
        assert_eq!(d.rule.action, Some(Action::Reschedule));
        assert_eq!(
            d.message,
            "exit code 16 matched RESCHEDULE 11-20 (task) but retry limit 2 reached; FAILED"
        );
        // The budget spent, a preemption keeps its own status.
        let task = actions(&[(Action::Reschedule, "3006")]);
        let d = decide(3006, &task, &rules, 2, 5);
        assert_eq!(d.status, TaskStatus::FailedPreempted);
        assert!(d.message.contains("retry limit 2 reached"), "{}", d.message);
    }

    #[test]
    fn zero_budget_never_reschedules() {
        let task = actions(&[(Action::Reschedule, "1-255")]);
        let rules = Rules {
            max_retry_per_task: 0,
            ..Rules::default()
        };
        let d = decide(3, &task, &rules, 0, 0);
        assert_eq!(d.status, TaskStatus::Failed);
        assert!(d.retry_limit_reached);
    }

    #[test]
    fn defaults_and_pool_rules() {
        let rules = Rules {
            max_retry_per_task: 3,
            default_exit_actions: actions(&[(Action::Complete, "7")]),
        };
        let d = decide(3, &ExitActions::default(), &rules, 0, 0);
        assert_eq!(d.status, TaskStatus::Failed);
        assert_eq!(d.rule.origin, RuleOrigin::Default);
        assert_eq!(
            d.message,
            "exit code 3 is not listed in exitActions; user failure: the task's command \
             exited with this code → FAILED (default)"
        );
        let d = decide(0, &ExitActions::default(), &rules, 0, 0);
        assert_eq!(d.status, TaskStatus::Completed);
        let d = decide(7, &ExitActions::default(), &rules, 0, 0);
        assert_eq!(
            (d.status, d.rule.origin),
            (TaskStatus::Completed, RuleOrigin::Pool)
        );
        assert_eq!(d.message, "exit code 7 matched COMPLETE 7 (pool)");
        // The task's own rule wins over the pool's.
        let d = decide(7, &actions(&[(Action::Fail, "7")]), &rules, 0, 0);
        assert_eq!(
            (d.status, d.rule.origin),
            (TaskStatus::Failed, RuleOrigin::Task)
        );
        let d = decide(3006, &ExitActions::default(), &rules, 0, 0);
        assert_eq!(d.status, TaskStatus::FailedPreempted);
        assert_eq!(
            d.message,
            "exit code 3006 is not listed in exitActions; preempted: the task was preempted to \
             make space for a higher priority task → FAILED_PREEMPTED (default)"
        );
    }

    #[test]
    fn actions_override_the_code_status() {
        let task = actions(&[(Action::Complete, "3004"), (Action::Fail, "3006")]);
        assert_eq!(
            decide(3004, &task, &Rules::default(), 0, 0).status,
            TaskStatus::Completed
        );
        assert_eq!(
            decide(3006, &task, &Rules::default(), 0, 0).status,
            TaskStatus::Failed
        );
    }

    #[test]
    fn no_actions_for_upstream_and_server_error() {
        let task = actions(&[(Action::Complete, "3000"), (Action::Reschedule, "3002")]);
        let d = decide(3000, &task, &Rules::default(), 0, 0);
        assert_eq!(
            (d.status, d.rule.origin),
            (TaskStatus::FailedUpstream, RuleOrigin::Default)
        );
        let d = decide(3002, &task, &Rules::default(), 0, 0);
        assert_eq!(
            (d.status, d.rule.origin),
            (TaskStatus::FailedServerError, RuleOrigin::Default)
        );
        assert!(
            d.message.contains("exit actions do not apply"),
            "{}",
            d.message
        );
    }
}
