//! Which GPU devices of a local pool's node each task holds.
//!
//! The scheduler counts GPUs per group (gang admission); this picks the
//! device indices. A task keeps its devices while its group is held, so a
//! retry or a restart in place runs on the same GPUs, and they go back when
//! the group's last attempt ends. Lowest free indices first, so a task's
//! devices are stable and readable (`0,1`, not `3,0`).

use std::collections::{BTreeSet, HashMap};

use osmo_engine::TaskKey;

#[derive(Debug)]
pub struct DeviceSet {
    free: BTreeSet<u32>,
    /// By workflow and task.
    held: HashMap<(String, TaskKey), Vec<u32>>,
}

impl DeviceSet {
    /// Devices `0..count`.
    pub fn new(count: u32) -> DeviceSet {
        DeviceSet {
            free: (0..count).collect(),
            held: HashMap::new(),
        }
    }

    /// The devices of `task`: those it holds already, else `count` free ones.
    /// Fewer only when the node has fewer free than the scheduler admitted
    /// (never, as long as both count the same devices).
    pub fn take(&mut self, workflow: &str, task: TaskKey, count: u32) -> Vec<u32> {
        let key = (workflow.to_string(), task);
        if let Some(held) = self.held.get(&key) {
            return held.clone();
        }
        if count == 0 {
            return Vec::new();
        }
        let picked: Vec<u32> = self.free.iter().take(count as usize).copied().collect();
        if picked.len() < count as usize {
            tracing::warn!(
                "{workflow}: a task asked for {count} GPUs, only {} are free",
                picked.len()
            );
        }
        for d in &picked {
            self.free.remove(d);
        }
        self.held.insert(key, picked.clone());
        picked
    }

    /// Takes back exactly `devices` for `task` (an attempt found running
    /// after a server restart, with the devices it recorded).
    pub fn adopt(&mut self, workflow: &str, task: TaskKey, devices: &[u32]) {
        let key = (workflow.to_string(), task);
        if devices.is_empty() || self.held.contains_key(&key) {
            return;
        }
        for d in devices {
            self.free.remove(d);
        }
        self.held.insert(key, devices.to_vec());
    }

    /// The group's tasks give their devices back.
    pub fn release_group(&mut self, workflow: &str, group: u32) {
        let gone: Vec<(String, TaskKey)> = self
            .held
            .keys()
            .filter(|(w, t)| w == workflow && t.group == group)
            .cloned()
            .collect();
        for key in gone {
            if let Some(devices) = self.held.remove(&key) {
                self.free.extend(devices);
            }
        }
    }

    /// The devices `task` holds.
    pub fn of(&self, workflow: &str, task: TaskKey) -> Option<&[u32]> {
        self.held
            .get(&(workflow.to_string(), task))
            .map(Vec::as_slice)
    }

    /// Devices held now.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.held.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(group: u32, task: u32) -> TaskKey {
        TaskKey { group, task }
    }

    #[test]
    fn tasks_get_distinct_devices_and_keep_them_across_retries() {
        let mut d = DeviceSet::new(4);
        let a = d.take("wf", task(0, 0), 1);
        let b = d.take("wf", task(0, 1), 2);
        let c = d.take("wf", task(1, 0), 1);
        assert_eq!((a.clone(), b, c), (vec![0], vec![1, 2], vec![3]));
        assert_eq!(d.take("wf", task(0, 0), 1), a, "a retry keeps its devices");
        assert_eq!(d.used(), 4);
        d.release_group("wf", 0);
        assert_eq!(d.used(), 1);
        assert_eq!(d.take("other", task(0, 0), 3), vec![0, 1, 2]);
    }

    #[test]
    fn adopted_devices_are_not_handed_out_again() {
        let mut d = DeviceSet::new(4);
        d.adopt("wf", task(0, 0), &[2]);
        assert_eq!(d.take("wf", task(1, 0), 3), vec![0, 1, 3]);
        assert!(d.take("wf", task(2, 0), 0).is_empty());
    }
}
