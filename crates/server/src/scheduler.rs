//! Gang admission against a pool's capacity: CPUs, GPUs and memory.
//!
//! A group is admitted whole: its footprint is the resources of all its
//! tasks, held from its first launch until no attempt of it is active. Later launches of
//! an admitted group (a rescheduled task, a group restart) go straight
//! through, so a restart never waits behind other work or deadlocks its own
//! barrier. Admission is first come, first served within a priority, when
//! every resource fits; a group larger than the whole pool runs alone rather
//! than never (submit refuses a group with more GPUs than a node of a local
//! pool, whose devices cannot be shared).
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

/// Resources a group holds, or a pool hands out.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Footprint {
    pub cpu: f64,
    pub gpu: u32,
    pub memory_bytes: u64,
}

impl Footprint {
    /// No limit on GPUs or memory: a pool that counts only CPUs.
    pub fn cpus(cpu: f64) -> Footprint {
        Footprint {
            cpu,
            gpu: u32::MAX,
            memory_bytes: u64::MAX,
        }
    }

    fn add(&mut self, other: Footprint) {
        self.cpu += other.cpu;
        self.gpu = self.gpu.saturating_add(other.gpu);
        self.memory_bytes = self.memory_bytes.saturating_add(other.memory_bytes);
    }

    fn sub(&mut self, other: Footprint) {
        self.cpu -= other.cpu;
        self.gpu = self.gpu.saturating_sub(other.gpu);
        self.memory_bytes = self.memory_bytes.saturating_sub(other.memory_bytes);
    }

    fn is_zero(&self) -> bool {
        self.cpu <= 1e-9 && self.gpu == 0 && self.memory_bytes == 0
    }

    /// `self + more` within `capacity`, resource by resource.
    fn fits(&self, more: Footprint, capacity: Footprint) -> bool {
        self.cpu + more.cpu <= capacity.cpu + 1e-9
            && u64::from(self.gpu) + u64::from(more.gpu) <= u64::from(capacity.gpu)
            && u128::from(self.memory_bytes) + u128::from(more.memory_bytes)
                <= u128::from(capacity.memory_bytes)
    }
}

#[derive(Debug)]
struct Waiting {
    group: GroupRef,
    /// What the whole group holds once admitted.
    footprint: Footprint,
    attempts: Vec<AttemptId>,
}

#[derive(Debug, Default)]
struct Held {
    footprint: Footprint,
    active: usize,
}

#[derive(Debug)]
pub struct Scheduler {
    capacity: Footprint,
    used: Footprint,
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
    pub fn new(capacity: Footprint) -> Scheduler {
        Scheduler {
            capacity,
            used: Footprint::default(),
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
        footprint: Footprint,
        priority: u8,
        mut attempts: Vec<AttemptId>,
    ) {
        // Idempotent: an attempt queued twice would be launched twice and
        // hold its group's share forever (a restart re-queues what the
        // engine may decide again once the batch in flight commits).
        attempts.retain(|a| !self.is_queued(&group, *a));
        attempts.dedup();
        if attempts.is_empty() {
            return;
        }
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
    /// True when it was queued; a held group it was the last attempt of is
    /// released (see [`Scheduler::finished`]).
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
    pub fn adopt(&mut self, group: GroupRef, footprint: Footprint) {
        let held = self.held.entry(group.clone()).or_default();
        if held.active == 0 {
            held.footprint = footprint;
            self.used.add(footprint);
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
            let fits = self.used.fits(next.footprint, self.capacity) || self.used.is_zero();
            if !fits {
                break;
            }
            let w = entry.remove();
            self.places.remove(&w.group);
            let held = self.held.entry(w.group.clone()).or_default();
            if held.active == 0 {
                held.footprint = w.footprint;
                self.used.add(w.footprint);
            }
            held.active += w.attempts.len();
            out.extend(w.attempts.into_iter().map(|a| (w.group.clone(), a)));
        }
        out
    }

    /// The launches next in line once resources free (queue order), at most
    /// `n`, of groups that ask for no GPU: those an agent may set up ahead
    /// (a GPU is picked at admission). Changes nothing.
    pub fn upcoming(&self, n: usize) -> Vec<(GroupRef, AttemptId)> {
        self.queue
            .values()
            .filter(|w| w.footprint.gpu == 0)
            .flat_map(|w| w.attempts.iter().map(|a| (w.group.clone(), *a)))
            .take(n)
            .collect()
    }

    /// An admitted attempt ended; the group's resources are freed with its
    /// last attempt (then true: its devices may go back too).
    pub fn finished(&mut self, group: &GroupRef) -> bool {
        if let Some(held) = self.held.get_mut(group) {
            held.active = held.active.saturating_sub(1);
            if held.active == 0 {
                self.used.sub(held.footprint);
                self.held.remove(group);
                return true;
            }
        }
        false
    }

    /// Whether `group` is admitted and holds its share of the pool.
    pub fn holds(&self, group: &GroupRef) -> bool {
        self.held.contains_key(group)
    }

    /// What admitted groups hold.
    pub fn used(&self) -> Footprint {
        self.used
    }

    /// What the pool hands out at once.
    pub fn capacity(&self) -> Footprint {
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

    fn cpu(n: f64) -> Footprint {
        Footprint {
            cpu: n,
            ..Footprint::default()
        }
    }

    fn gpus(n: u32) -> Footprint {
        Footprint {
            cpu: 1.0,
            gpu: n,
            memory_bytes: 0,
        }
    }

    #[test]
    fn never_exceeds_capacity_and_admits_in_order() {
        let mut s = Scheduler::new(Footprint::cpus(2.0));
        s.enqueue(g("a", 0), cpu(2.0), 1, vec![attempt(0, 0), attempt(1, 0)]);
        s.enqueue(g("b", 0), cpu(1.0), 1, vec![attempt(0, 0)]);
        assert_eq!(s.admit().len(), 2);
        assert!(s.admit().is_empty(), "b must wait while a holds the pool");
        s.finished(&g("a", 0));
        assert!(s.admit().is_empty(), "a still has an active attempt");
        s.finished(&g("a", 0));
        assert_eq!(s.admit(), vec![(g("b", 0), attempt(0, 0))]);
        assert_eq!(s.used().cpu, 1.0);
    }

    #[test]
    fn an_attempt_queued_twice_is_admitted_once_and_frees_its_share() {
        let mut s = Scheduler::new(Footprint::cpus(1.0));
        s.enqueue(g("a", 0), cpu(1.0), 1, vec![attempt(0, 0)]);
        s.enqueue(g("a", 0), cpu(1.0), 1, vec![attempt(0, 0), attempt(0, 0)]);
        assert_eq!(s.admit(), vec![(g("a", 0), attempt(0, 0))]);
        s.finished(&g("a", 0));
        assert_eq!(s.used().cpu, 0.0, "one launch, one end: nothing held");
        s.enqueue(g("b", 0), cpu(1.0), 1, vec![attempt(0, 0)]);
        assert_eq!(s.admit().len(), 1);
    }

    #[test]
    fn a_held_group_relaunches_without_waiting() {
        let mut s = Scheduler::new(Footprint::cpus(1.0));
        s.enqueue(g("a", 0), cpu(1.0), 1, vec![attempt(0, 0)]);
        assert_eq!(s.admit().len(), 1);
        s.enqueue(g("b", 0), cpu(1.0), 1, vec![attempt(0, 0)]);
        s.enqueue(g("a", 0), cpu(1.0), 1, vec![attempt(0, 1)]);
        // a's retry is queued behind b but a holds its CPU: it goes now, b still waits.
        assert_eq!(s.admit(), vec![(g("a", 0), attempt(0, 1))]);
        assert_eq!(s.used().cpu, 1.0);
    }

    #[test]
    fn an_oversized_group_runs_alone() {
        let mut s = Scheduler::new(Footprint::cpus(2.0));
        s.enqueue(
            g("big", 0),
            cpu(3.0),
            1,
            vec![attempt(0, 0), attempt(1, 0), attempt(2, 0)],
        );
        assert_eq!(s.admit().len(), 3);
        s.enqueue(g("small", 0), cpu(1.0), 1, vec![attempt(0, 0)]);
        assert!(s.admit().is_empty());
    }

    #[test]
    fn higher_priority_goes_first_and_dequeue_removes() {
        let mut s = Scheduler::new(Footprint::cpus(1.0));
        s.enqueue(g("run", 0), cpu(1.0), 1, vec![attempt(0, 0)]);
        s.admit();
        s.enqueue(g("low", 0), cpu(1.0), 0, vec![attempt(0, 0)]);
        s.enqueue(g("high", 0), cpu(1.0), 2, vec![attempt(0, 0)]);
        assert!(s.dequeue(&g("low", 0), attempt(0, 0)));
        s.finished(&g("run", 0));
        assert_eq!(s.admit(), vec![(g("high", 0), attempt(0, 0))]);
    }

    #[test]
    fn gpus_are_counted_like_cpus() {
        let mut s = Scheduler::new(Footprint {
            cpu: 16.0,
            gpu: 4,
            memory_bytes: u64::MAX,
        });
        s.enqueue(g("two", 0), gpus(2), 1, vec![attempt(0, 0)]);
        s.enqueue(g("three", 0), gpus(3), 1, vec![attempt(0, 0)]);
        s.enqueue(g("one", 0), gpus(1), 1, vec![attempt(0, 0)]);
        // 2 + 3 > 4: `three` waits, and `one` waits behind it (first come).
        assert_eq!(s.admit(), vec![(g("two", 0), attempt(0, 0))]);
        assert_eq!(s.used().gpu, 2);
        assert!(s.finished(&g("two", 0)));
        let admitted = s.admit();
        assert_eq!(
            admitted,
            vec![(g("three", 0), attempt(0, 0)), (g("one", 0), attempt(0, 0))]
        );
        assert_eq!(s.used().gpu, 4);
    }

    #[test]
    fn memory_is_counted_like_cpus() {
        let mut s = Scheduler::new(Footprint {
            cpu: 16.0,
            gpu: 0,
            memory_bytes: 8 << 30,
        });
        let mem = |gib: u64| Footprint {
            cpu: 1.0,
            gpu: 0,
            memory_bytes: gib << 30,
        };
        s.enqueue(g("a", 0), mem(6), 1, vec![attempt(0, 0)]);
        s.enqueue(g("b", 0), mem(4), 1, vec![attempt(0, 0)]);
        assert_eq!(s.admit().len(), 1);
        assert!(s.admit().is_empty(), "6 + 4 GiB exceed 8 GiB");
        s.finished(&g("a", 0));
        assert_eq!(s.admit().len(), 1);
    }
}
