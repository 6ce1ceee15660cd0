//! Log lines the server has not stored yet. The agent numbers its log
//! batches, keeps each until the server acknowledges it (`LogsAck`), and sends
//! the kept ones again after reconnecting, so a server killed mid-run loses no
//! line (the store skips a batch it already has). Bounded: past
//! [`MAX_KEPT_LINES`] the oldest batches are dropped, with a warning.

use std::collections::VecDeque;

use osmo_proto::{FromAgent, LogLine};

/// Lines kept for a server that stays away; beyond, the oldest go.
pub const MAX_KEPT_LINES: usize = 200_000;

pub struct LogOutbox {
    /// This agent instance, as the store tells batches apart.
    source: String,
    next: u64,
    kept: VecDeque<(u64, Vec<LogLine>)>,
    lines: usize,
    dropped: usize,
}

impl LogOutbox {
    pub fn new(source: String) -> LogOutbox {
        LogOutbox {
            source,
            next: 1,
            kept: VecDeque::new(),
            lines: 0,
            dropped: 0,
        }
    }

    /// Numbers `lines` as the next batch, keeps it, and returns the message to send.
    pub fn seal(&mut self, lines: Vec<LogLine>) -> FromAgent {
        let seq = self.next;
        self.next += 1;
        self.lines += lines.len();
        self.kept.push_back((seq, lines.clone()));
        while self.lines > MAX_KEPT_LINES
            && let Some((_, old)) = self.kept.pop_front()
        {
            self.lines -= old.len();
            self.dropped += old.len();
        }
        if self.dropped > 0 {
            eprintln!(
                "osmo agent: the server is away; {} log line(s) dropped to stay under {MAX_KEPT_LINES}",
                std::mem::take(&mut self.dropped)
            );
        }
        FromAgent::Logs {
            lines,
            batch: Some((self.source.clone(), seq)),
        }
    }

    /// The server stored every batch up to `seq`.
    pub fn ack(&mut self, seq: u64) {
        while self.kept.front().is_some_and(|(s, _)| *s <= seq) {
            if let Some((_, lines)) = self.kept.pop_front() {
                self.lines -= lines.len();
            }
        }
    }

    /// Every kept batch, oldest first: what to send again on a new connection.
    pub fn resend(&self) -> Vec<FromAgent> {
        self.kept
            .iter()
            .map(|(seq, lines)| FromAgent::Logs {
                lines: lines.clone(),
                batch: Some((self.source.clone(), *seq)),
            })
            .collect()
    }
}

/// Gathers the messages drained together: log lines between other messages
/// become one sealed batch, so order is kept and batches stay large.
pub fn gather(outbox: &mut LogOutbox, msgs: impl IntoIterator<Item = FromAgent>) -> Vec<FromAgent> {
    let mut out = Vec::new();
    let mut lines = Vec::new();
    for msg in msgs {
        match msg {
            FromAgent::Logs { lines: more, .. } => lines.extend(more),
            other => {
                if !lines.is_empty() {
                    out.push(outbox.seal(std::mem::take(&mut lines)));
                }
                out.push(other);
            }
        }
    }
    if !lines.is_empty() {
        out.push(outbox.seal(lines));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use osmo_engine::{AttemptId, TaskKey};
    use osmo_proto::{AttemptKey, Phase, Stream};

    fn line(n: u32) -> LogLine {
        LogLine {
            key: AttemptKey {
                workflow_id: "wf-1".into(),
                attempt: AttemptId {
                    task: TaskKey { group: 0, task: 0 },
                    retry_id: 0,
                },
            },
            task: "t".into(),
            at_ms: 0,
            stream: Stream::Stdout,
            line: format!("line {n}"),
        }
    }

    fn logs(lines: Vec<LogLine>) -> FromAgent {
        FromAgent::Logs { lines, batch: None }
    }

    #[test]
    fn batches_keep_order_until_acknowledged() {
        let mut outbox = LogOutbox::new("agent".into());
        let phase = FromAgent::Phase {
            key: line(0).key,
            phase: Phase::Running,
            node: None,
            gpus: None,
        };
        let sent = gather(
            &mut outbox,
            [
                logs(vec![line(1)]),
                logs(vec![line(2)]),
                phase,
                logs(vec![line(3)]),
            ],
        );
        let shape: Vec<_> = sent
            .iter()
            .map(|m| match m {
                FromAgent::Logs { lines, batch } => format!("logs {} {:?}", lines.len(), batch),
                _ => "phase".to_string(),
            })
            .collect();
        assert_eq!(
            shape,
            [
                "logs 2 Some((\"agent\", 1))",
                "phase",
                "logs 1 Some((\"agent\", 2))"
            ]
        );
        assert_eq!(outbox.resend().len(), 2);
        outbox.ack(1);
        assert_eq!(outbox.resend().len(), 1);
        outbox.ack(2);
        assert!(outbox.resend().is_empty());
    }

    #[test]
    fn a_server_away_for_long_costs_bounded_memory() {
        let mut outbox = LogOutbox::new("agent".into());
        for n in 0..(MAX_KEPT_LINES as u32 / 1000 + 5) {
            outbox.seal((0..1000).map(|i| line(n * 1000 + i)).collect());
        }
        assert!(outbox.lines <= MAX_KEPT_LINES);
    }
}
