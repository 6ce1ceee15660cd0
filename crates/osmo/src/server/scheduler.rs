//! Gang admission against a pool's CPU capacity.
//!
//! A group is admitted whole: its footprint is the CPU of all its tasks, held
//! from its first launch until no attempt of it is active. Later launches of
//! an admitted group (a rescheduled task, a group restart) go straight
//! through, so a restart never waits behind other work or deadlocks its own
//! barrier. Admission is first come, first served within a priority; a group
//! larger than the whole pool runs alone rather than never.

use std::collections::{HashMap, VecDeque};

use osmo_engine::AttemptId;

/// A group of one workflow.
pub type GroupRef = (String, u32);

#[derive(Debug)]
struct Waiting {
    group: GroupRef,
    /// CPU the whole group holds once admitted.
    footprint: f64,
    priority: u8,
    attempts: Vec<AttemptId>,
}

#[derive(Debug, Default)]
struct Held {
    cpu: f64,
    active: usize,
}

#[derive(Debug)]
pub struct Scheduler {
    capacity: f64,
    used: f64,
    held: HashMap<GroupRef, Held>,
    queue: VecDeque<Waiting>,
}

impl Scheduler {
    pub fn new(capacity: f64) -> Scheduler {
        Scheduler {
            capacity,
            used: 0.0,
            held: HashMap::new(),
            queue: VecDeque::new(),
        }
    }

    /// Queues launches of one group (one engine decision's worth).
    pub fn enqueue(
        &mut self,
        group: GroupRef,
        footprint: f64,
        priority: u8,
        attempts: Vec<AttemptId>,
    ) {
        if let Some(w) = self.queue.iter_mut().find(|w| w.group == group) {
            w.attempts.extend(attempts);
            return;
        }
        // Higher priority first; FIFO within a priority.
        let at = self
            .queue
            .iter()
            .position(|w| w.priority < priority)
            .unwrap_or(self.queue.len());
        self.queue.insert(
            at,
            Waiting {
                group,
                footprint,
                priority,
                attempts,
            },
        );
    }

    /// Drops a queued attempt (it was stopped before it got resources).
    pub fn dequeue(&mut self, group: &GroupRef, attempt: AttemptId) -> bool {
        let Some(i) = self.queue.iter().position(|w| &w.group == group) else {
            return false;
        };
        let before = self.queue[i].attempts.len();
        self.queue[i].attempts.retain(|a| *a != attempt);
        let removed = self.queue[i].attempts.len() != before;
        if self.queue[i].attempts.is_empty() {
            self.queue.remove(i);
        }
        removed
    }

    pub fn is_queued(&self, group: &GroupRef, attempt: AttemptId) -> bool {
        self.queue
            .iter()
            .any(|w| &w.group == group && w.attempts.contains(&attempt))
    }

    /// Drops everything queued for a workflow.
    pub fn forget_workflow(&mut self, workflow: &str) {
        self.queue.retain(|w| w.group.0 != workflow);
    }

    /// Records an attempt already running (found again after a server restart).
    pub fn adopt(&mut self, group: GroupRef, footprint: f64) {
        let held = self.held.entry(group).or_default();
        if held.active == 0 {
            held.cpu = footprint;
            self.used += footprint;
        }
        held.active += 1;
    }

    /// Launches that may start now, in order. Launches of held groups always
    /// go; new groups go in queue order until the first one that does not fit.
    pub fn admit(&mut self) -> Vec<(GroupRef, AttemptId)> {
        let mut out = Vec::new();
        let mut blocked = false;
        let mut i = 0;
        while i < self.queue.len() {
            let next = &self.queue[i];
            let already_held = self.held.get(&next.group).is_some_and(|h| h.active > 0);
            let fits = self.used + next.footprint <= self.capacity + 1e-9 || self.used <= 1e-9;
            if !already_held && (blocked || !fits) {
                blocked = true;
                i += 1;
                continue;
            }
            let w = self.queue.remove(i).expect("index in range");
            let held = self.held.entry(w.group.clone()).or_default();
            if held.active == 0 {
                held.cpu = w.footprint;
                self.used += w.footprint;
            }
            held.active += w.attempts.len();
            out.extend(w.attempts.into_iter().map(|a| (w.group.clone(), a)));
        }
        out
    }

    /// An admitted attempt ended; the group's CPU is freed with its last attempt.
    pub fn finished(&mut self, group: &GroupRef) {
        if let Some(held) = self.held.get_mut(group) {
            held.active = held.active.saturating_sub(1);
            if held.active == 0 {
                self.used -= held.cpu;
                self.held.remove(group);
            }
        }
    }

    #[cfg(test)]
    pub fn used(&self) -> f64 {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use osmo_engine::TaskKey;

    use super::*;

    fn attempt(task: u32, retry_id: u32) -> AttemptId {
        AttemptId {
            task: TaskKey { group: 0, task },
            retry_id,
        }
    }

    fn g(wf: &str, n: u32) -> GroupRef {
        (wf.to_string(), n)
    }

    #[test]
    fn never_exceeds_capacity_and_admits_in_order() {
        let mut s = Scheduler::new(2.0);
        s.enqueue(g("a", 0), 2.0, 1, vec![attempt(0, 0), attempt(1, 0)]);
        s.enqueue(g("b", 0), 1.0, 1, vec![attempt(0, 0)]);
        assert_eq!(s.admit().len(), 2);
        assert!(s.admit().is_empty(), "b must wait while a holds the pool");
        s.finished(&g("a", 0));
        assert!(s.admit().is_empty(), "a still has an active attempt");
        s.finished(&g("a", 0));
        assert_eq!(s.admit(), vec![(g("b", 0), attempt(0, 0))]);
        assert_eq!(s.used(), 1.0);
    }

    #[test]
    fn a_held_group_relaunches_without_waiting() {
        let mut s = Scheduler::new(1.0);
        s.enqueue(g("a", 0), 1.0, 1, vec![attempt(0, 0)]);
        assert_eq!(s.admit().len(), 1);
        s.enqueue(g("b", 0), 1.0, 1, vec![attempt(0, 0)]);
        s.enqueue(g("a", 0), 1.0, 1, vec![attempt(0, 1)]);
        // a's retry is queued behind b but a holds its CPU: it goes now, b still waits.
        assert_eq!(s.admit(), vec![(g("a", 0), attempt(0, 1))]);
        assert_eq!(s.used(), 1.0);
    }

    #[test]
    fn an_oversized_group_runs_alone() {
        let mut s = Scheduler::new(2.0);
        s.enqueue(
            g("big", 0),
            3.0,
            1,
            vec![attempt(0, 0), attempt(1, 0), attempt(2, 0)],
        );
        assert_eq!(s.admit().len(), 3);
        s.enqueue(g("small", 0), 1.0, 1, vec![attempt(0, 0)]);
        assert!(s.admit().is_empty());
    }

    #[test]
    fn higher_priority_goes_first_and_dequeue_removes() {
        let mut s = Scheduler::new(1.0);
        s.enqueue(g("run", 0), 1.0, 1, vec![attempt(0, 0)]);
        s.admit();
        s.enqueue(g("low", 0), 1.0, 0, vec![attempt(0, 0)]);
        s.enqueue(g("high", 0), 1.0, 2, vec![attempt(0, 0)]);
        assert!(s.dequeue(&g("low", 0), attempt(0, 0)));
        s.finished(&g("run", 0));
        assert_eq!(s.admit(), vec![(g("high", 0), attempt(0, 0))]);
    }
}
