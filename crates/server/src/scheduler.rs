//! Gang admission against a pool's CPU capacity.
//!
//! A group is admitted whole: its footprint is the CPU of all its tasks, held
//! from its first launch until no attempt of it is active. Later launches of
//! an admitted group (a rescheduled task, a group restart) go straight
//! through, so a restart never waits behind other work or deadlocks its own
//! barrier. Admission is first come, first served within a priority; a group
//! larger than the whole pool runs alone rather than never.
//!
//! Every operation costs O(log n) in the groups waiting (a workflow of
//! 10,000 single-task groups queues 10,000 of them), never a scan of the queue.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use osmo_engine::AttemptId;

/// A group of one workflow.
pub type GroupRef = (String, u32);

/// Queue order: higher priority first, then first come.
type Place = (Reverse<u8>, u64);

#[derive(Debug)]
struct Waiting {
    group: GroupRef,
    /// CPU the whole group holds once admitted.
    footprint: f64,
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
    /// Groups waiting for their CPU, in admission order.
    queue: BTreeMap<Place, Waiting>,
    /// Where each waiting group stands in `queue`.
    places: HashMap<GroupRef, Place>,
    /// Launches of held groups: they go at the next `admit`.
    ready: Vec<(GroupRef, AttemptId)>,
    next: u64,
}

impl Scheduler {
    pub fn new(capacity: f64) -> Scheduler {
        Scheduler {
            capacity,
            used: 0.0,
            held: HashMap::new(),
            queue: BTreeMap::new(),
            places: HashMap::new(),
            ready: Vec::new(),
            next: 0,
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
        if self.held.get(&group).is_some_and(|h| h.active > 0) {
            // Its CPU is held: a retry or a restart goes through at once.
            if let Some(held) = self.held.get_mut(&group) {
                held.active += attempts.len();
            }
            self.ready
                .extend(attempts.into_iter().map(|a| (group.clone(), a)));
            return;
        }
        if let Some(place) = self.places.get(&group)
            && let Some(w) = self.queue.get_mut(place)
        {
            w.attempts.extend(attempts);
            return;
        }
        let place = (Reverse(priority), self.next);
        self.next += 1;
        self.places.insert(group.clone(), place);
        self.queue.insert(
            place,
            Waiting {
                group,
                footprint,
                attempts,
            },
        );
    }

    /// Drops a queued attempt (it was stopped before it got resources).
    pub fn dequeue(&mut self, group: &GroupRef, attempt: AttemptId) -> bool {
        if let Some(i) = self
            .ready
            .iter()
            .position(|(g, a)| g == group && *a == attempt)
        {
            self.ready.swap_remove(i);
            self.finished(group);
            return true;
        }
        let Some(place) = self.places.get(group).copied() else {
            return false;
        };
        let Some(w) = self.queue.get_mut(&place) else {
            return false;
        };
        let before = w.attempts.len();
        w.attempts.retain(|a| *a != attempt);
        let removed = w.attempts.len() != before;
        if w.attempts.is_empty() {
            self.queue.remove(&place);
            self.places.remove(group);
        }
        removed
    }

    pub fn is_queued(&self, group: &GroupRef, attempt: AttemptId) -> bool {
        self.ready.iter().any(|(g, a)| g == group && *a == attempt)
            || self
                .places
                .get(group)
                .and_then(|p| self.queue.get(p))
                .is_some_and(|w| w.attempts.contains(&attempt))
    }

    /// Drops everything queued for a workflow.
    pub fn forget_workflow(&mut self, workflow: &str) {
        let gone: Vec<GroupRef> = self
            .places
            .keys()
            .filter(|g| g.0 == workflow)
            .cloned()
            .collect();
        for group in gone {
            if let Some(place) = self.places.remove(&group) {
                self.queue.remove(&place);
            }
        }
    }

    /// Records an attempt already running (found again after a server restart).
    pub fn adopt(&mut self, group: GroupRef, footprint: f64) {
        let held = self.held.entry(group.clone()).or_default();
        if held.active == 0 {
            held.cpu = footprint;
            self.used += footprint;
        }
        held.active += 1;
        // Launches of it that were queued go with it now.
        if let Some(place) = self.places.remove(&group)
            && let Some(w) = self.queue.remove(&place)
        {
            if let Some(held) = self.held.get_mut(&group) {
                held.active += w.attempts.len();
            }
            self.ready
                .extend(w.attempts.into_iter().map(|a| (group.clone(), a)));
        }
    }

    /// Launches that may start now, in order: those of held groups, then new
    /// groups in queue order until the first one that does not fit.
    pub fn admit(&mut self) -> Vec<(GroupRef, AttemptId)> {
        let mut out = std::mem::take(&mut self.ready);
        while let Some(entry) = self.queue.first_entry() {
            let next = entry.get();
            let fits = self.used + next.footprint <= self.capacity + 1e-9 || self.used <= 1e-9;
            if !fits {
                break;
            }
            let w = entry.remove();
            self.places.remove(&w.group);
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

    /// CPUs held by admitted groups.
    pub fn used(&self) -> f64 {
        self.used
    }

    /// CPUs the pool hands out at once.
    pub fn capacity(&self) -> f64 {
        self.capacity
    }

    /// Groups waiting for their CPUs.
    pub fn waiting(&self) -> usize {
        self.queue.len()
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
