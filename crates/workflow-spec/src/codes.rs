//! Exit codes, their sources, and exit-action code lists (`start-end,n,...`).
//!
//! Parsing a list is strict about syntax and reversed ranges; overlap between
//! the lists of different actions is checked by [`ExitActions::overlaps`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where an exit code came from (SEMANTICS §2). The numeric ranges are the
/// seed's; the source is kept so a user can tell a preflight 1 from a user 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeSource {
    /// The user's command: 0–255, 128+n for signal n.
    User,
    /// Task initialisation (sandbox, files, image): 256–257.
    Init,
    /// A preflight test: 1001.
    Preflight,
    /// The in-task controller: 2002–2040.
    Runtime,
    /// The service or backend: 3000–3006.
    Service,
    /// Nothing better known: 4000.
    Unknown,
}

/// One code one attempt produced, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedCode {
    pub code: u32,
    pub source: CodeSource,
    /// What the source said about it, e.g. `preflight nccl-bandwidth failed` or `killed by signal 9`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Well-known codes of SEMANTICS §2.
/// The meaning of a task exit code, from the seed's table of user, preflight,
/// runtime and service codes.
pub fn meaning(code: u32) -> &'static str {
    match code {
        0 => "task completed",
        129 => "user failure: killed by SIGHUP (128+1)",
        130 => "user failure: killed by SIGINT (128+2)",
        131 => "user failure: killed by SIGQUIT (128+3)",
        132 => "user failure: killed by SIGILL (128+4), an illegal instruction",
        134 => "user failure: killed by SIGABRT (128+6), the program aborted",
        135 => "user failure: killed by SIGBUS (128+7), a bus error",
        136 => "user failure: killed by SIGFPE (128+8), an arithmetic error",
        137 => {
            "user failure: killed by SIGKILL (128+9), often because the task ran out of memory, \
             or someone ran `kill -9`"
        }
        139 => "user failure: killed by SIGSEGV (128+11), a segmentation fault",
        141 => "user failure: killed by SIGPIPE (128+13), it wrote to a closed pipe",
        143 => "user failure: killed by SIGTERM (128+15)",
        1..=255 => "user failure: the task's command exited with this code",
        256..=257 => "OSMO initialization failure (sandbox, files or image)",
        301 => "image pull failure (ImagePullBackOff)",
        302 => "image pull failure (ErrImagePull)",
        1001 => "OSMO preflight test failure",
        2002 => "unknown runtime error",
        2010 => "download operation failed",
        2011 => "mount operation failed",
        2012 => "upload operation failed",
        2020 => "invalid authentication token for connecting to the service",
        2021 => "service connection timed out",
        2022 => "failed to send/receive messages to/from the service",
        2023 => "failed to send/receive messages to/from the user task",
        2024 => "barrier synchronization failed",
        2025 => "failed to create or process metrics",
        2030..=2040 => "miscellaneous runtime failure",
        3000 => "upstream tasks failed",
        3001 => "backend error",
        3002 => "OSMO server error",
        3003 => "start error: the task failed to start execution",
        3004 => "evicted: the task was evicted from the node (e.g. out of memory)",
        3005 => {
            "start timeout: the task took too long to initialize (e.g. stuck pulling secrets or images)"
        }
        3006 => "preempted: the task was preempted to make space for a higher priority task",
        4000 => "unknown error",
        _ => "not a code OSMO defines; user tasks should exit with 0-255",
    }
}

pub mod well_known {
    pub const INIT_FAILURE: u32 = 256;
    pub const INIT_FILES: u32 = 257;
    pub const PREFLIGHT: u32 = 1001;
    pub const RUNTIME_UNKNOWN: u32 = 2002;
    pub const DOWNLOAD: u32 = 2010;
    pub const MOUNT: u32 = 2011;
    pub const UPLOAD: u32 = 2012;
    pub const BARRIER: u32 = 2024;
    pub const UPSTREAM: u32 = 3000;
    pub const BACKEND_ERROR: u32 = 3001;
    pub const SERVER_ERROR: u32 = 3002;
    pub const START_ERROR: u32 = 3003;
    pub const EVICTED: u32 = 3004;
    pub const START_TIMEOUT: u32 = 3005;
    pub const PREEMPTED: u32 = 3006;
    pub const UNKNOWN: u32 = 4000;
    /// Image pull pseudo codes (OSMO's ImagePullBackOff / ErrImagePull).
    pub const IMAGE_PULL_BACKOFF: u32 = 301;
    pub const ERR_IMAGE_PULL: u32 = 302;
}

/// An exit action of the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    Complete,
    Fail,
    Reschedule,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Complete, Action::Fail, Action::Reschedule];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Complete => "COMPLETE",
            Action::Fail => "FAIL",
            Action::Reschedule => "RESCHEDULE",
        }
    }

    /// Case-insensitive, as OSMO uppercases the key before checking it.
    pub fn parse(key: &str) -> Option<Action> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(key))
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An inclusive range of codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRange {
    pub start: u32,
    pub end: u32,
}

impl CodeRange {
    pub fn contains(&self, code: u32) -> bool {
        self.start <= code && code <= self.end
    }
}

impl fmt::Display for CodeRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// Why a code list is not valid. Messages are lower case and say what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeListError {
    #[error("empty exit-code list; expected codes such as `0,1-10,16`")]
    Empty,
    #[error(
        "`{item}` is not an exit code or range; expected `N` or `START-END` with non-negative integers"
    )]
    Syntax { item: String },
    #[error(
        "reversed range `{item}`: the start must not exceed the end (did you mean `{end}-{start}`?)"
    )]
    Reversed { item: String, start: u32, end: u32 },
}

/// A parsed exit-code list, as written (`text`) and as ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeList {
    pub text: String,
    pub ranges: Vec<CodeRange>,
}

impl CodeList {
    /// Parses `start-end,n,...`. OSMO allows no spaces; we also accept spaces
    /// around items so every OSMO file is valid here.
    pub fn parse(text: &str) -> Result<CodeList, CodeListError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(CodeListError::Empty);
        }
        let mut ranges = Vec::new();
        for raw in trimmed.split(',') {
            let item = raw.trim();
            let number = |s: &str| -> Result<u32, CodeListError> {
                let s = s.trim();
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CodeListError::Syntax {
                        item: item.to_string(),
                    });
                }
                s.parse::<u32>().map_err(|_| CodeListError::Syntax {
                    item: item.to_string(),
                })
            };
            let range = match item.split_once('-') {
                Some((a, b)) => {
                    let (start, end) = (number(a)?, number(b)?);
                    if start > end {
                        return Err(CodeListError::Reversed {
                            item: item.to_string(),
                            start,
                            end,
                        });
                    }
                    CodeRange { start, end }
                }
                None => {
                    let n = number(item)?;
                    CodeRange { start: n, end: n }
                }
            };
            ranges.push(range);
        }
        Ok(CodeList {
            text: trimmed.to_string(),
            ranges,
        })
    }

    /// The range that holds `code`, if any.
    pub fn find(&self, code: u32) -> Option<CodeRange> {
        self.ranges.iter().copied().find(|r| r.contains(code))
    }
}

/// The ranges, normalised: `0,1-10,16` (no spaces).
impl fmt::Display for CodeList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, range) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{range}")?;
        }
        Ok(())
    }
}

/// One action with its code list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRule {
    pub action: Action,
    pub codes: CodeList,
}

/// A task's or a pool's `exitActions`, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitActions {
    pub rules: Vec<ExitRule>,
}

/// Codes that two actions share: a submit error naming both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub first: Action,
    pub second: Action,
    pub shared: Vec<CodeRange>,
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared: Vec<String> = self.shared.iter().map(ToString::to_string).collect();
        write!(
            f,
            "exit codes {} are listed under both {} and {}; each code may have one action",
            shared.join(","),
            self.first,
            self.second
        )
    }
}

impl ExitActions {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule (file order) whose list holds `code`, with the range that matched.
    pub fn lookup(&self, code: u32) -> Option<(&ExitRule, CodeRange)> {
        self.rules
            .iter()
            .find_map(|rule| rule.codes.find(code).map(|range| (rule, range)))
    }

    /// Every pair of actions whose lists share codes, with the shared codes merged.
    pub fn overlaps(&self) -> Vec<Overlap> {
        let mut found = Vec::new();
        for (i, a) in self.rules.iter().enumerate() {
            for b in &self.rules[i + 1..] {
                if a.action == b.action {
                    continue;
                }
                let mut shared: Vec<CodeRange> = Vec::new();
                for ra in &a.codes.ranges {
                    for rb in &b.codes.ranges {
                        let start = ra.start.max(rb.start);
                        let end = ra.end.min(rb.end);
                        if start <= end {
                            shared.push(CodeRange { start, end });
                        }
                    }
                }
                if !shared.is_empty() {
                    found.push(Overlap {
                        first: a.action,
                        second: b.action,
                        shared: merge(shared),
                    });
                }
            }
        }
        found
    }
}

fn merge(mut ranges: Vec<CodeRange>) -> Vec<CodeRange> {
    ranges.sort_by_key(|r| (r.start, r.end));
    let mut out: Vec<CodeRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(1) => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seed_list() {
        let list = CodeList::parse("0,1-10,16,20").unwrap();
        assert_eq!(list.ranges.len(), 4);
        assert_eq!(list.find(16), Some(CodeRange { start: 16, end: 16 }));
        assert_eq!(list.find(5), Some(CodeRange { start: 1, end: 10 }));
        assert_eq!(list.find(17), None);
    }

    #[test]
    fn accepts_spaces_after_commas() {
        assert_eq!(CodeList::parse("1, 2-3").unwrap().ranges.len(), 2);
    }

    #[test]
    fn rejects_bad_items() {
        for bad in [
            "",
            "a",
            "1-",
            "-1",
            "1--2",
            "1,,2",
            "+1",
            "1.5",
            "99999999999",
        ] {
            assert!(CodeList::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            CodeList::parse("20-11"),
            Err(CodeListError::Reversed {
                item: "20-11".into(),
                start: 20,
                end: 11
            })
        );
    }

    #[test]
    fn overlap_names_both_actions_and_the_shared_codes() {
        let actions = ExitActions {
            rules: vec![
                ExitRule {
                    action: Action::Complete,
                    codes: CodeList::parse("0-10").unwrap(),
                },
                ExitRule {
                    action: Action::Fail,
                    codes: CodeList::parse("5,11-20").unwrap(),
                },
            ],
        };
        let overlaps = actions.overlaps();
        assert_eq!(overlaps.len(), 1);
        let text = overlaps[0].to_string();
        assert!(
            text.contains("COMPLETE") && text.contains("FAIL") && text.contains(" 5 "),
            "{text}"
        );
    }

    #[test]
    fn the_seed_table() {
        assert_eq!(meaning(0), "task completed");
        assert!(meaning(1).starts_with("user failure"));
        assert!(meaning(255).starts_with("user failure"));
        assert!(meaning(137).contains("SIGKILL") && meaning(137).contains("memory"));
        assert!(meaning(256).contains("initialization"));
        assert!(meaning(257).contains("initialization"));
        assert!(meaning(1001).contains("preflight"));
        assert_eq!(meaning(2010), "download operation failed");
        assert_eq!(meaning(2035), "miscellaneous runtime failure");
        assert_eq!(meaning(3000), "upstream tasks failed");
        assert!(meaning(3006).starts_with("preempted"));
        assert_eq!(meaning(4000), "unknown error");
        assert!(meaning(999).starts_with("not a code"));
    }
}
