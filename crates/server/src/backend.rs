//! The seam between the server's core and the backends that run attempts:
//! each backend (the local node agent, Slurm; Kubernetes would be a third)
//! takes [`ToAgent`] messages — launch, release, restart, stop, acknowledge —
//! and feeds [`FromAgent`](crate::proto::FromAgent) messages back into the
//! core's one inbox as [`LinkEvent`](super::agent_link::LinkEvent)s: ready
//! with the attempts it holds, phases, exits with their codes, logs.
//!
//! A new backend implements [`Backend`] in a module of its own and is named
//! for its pools where the server starts (`server::run`).

use std::sync::Mutex;

use osmo_spec::config::{BackendKind, PoolConfig};

use crate::proto::ToAgent;
use crate::scheduler::Footprint;

/// One backend, as the core sees it.
pub trait Backend: Send + Sync {
    /// Which backend this is (its pools' `backend:`).
    fn kind(&self) -> BackendKind;
    /// True when the message was handed to the backend.
    fn send(&self, msg: ToAgent) -> bool;
    /// Whether launches can be handed over now.
    fn connected(&self) -> bool;
    /// The core reconciled with what the backend reported it runs (for the
    /// node agent: its `Hello` on connection `conn`): launches may go.
    fn set_ready(&self, conn: u64);
    /// What the core admits at once to `pool` (its capacity policy).
    fn capacity(&self, pool: &PoolConfig) -> Footprint;
    /// The GPU devices of `pool`'s node when the core picks each task's
    /// device indices (one node, as the local backend); None when the
    /// backend places GPUs itself (Slurm's `--gres`).
    fn gpu_devices(&self, pool: &PoolConfig) -> Option<u32>;
    /// What `{{host:TASK}}` becomes for `task` of `workflow_id` (SEMANTICS §6):
    /// how this backend names where a task listens.
    fn task_host(&self, pool: &PoolConfig, workflow_id: &str, task: &str) -> String;
    /// Whether the backend sets up `pool`'s next queued attempts ahead
    /// ([`ToAgent::Prepare`]), so that each starts as soon as its resources free.
    fn sets_up_ahead(&self, _pool: &PoolConfig) -> bool {
        false
    }
    /// Whether the backend's runtime makes each attempt's output directory
    /// itself (on this host, before binding it); else the server makes it
    /// when it builds the launch.
    fn makes_output_dirs(&self) -> bool {
        false
    }
}

/// A backend for the core's unit tests: records what it is sent; the test
/// scripts what comes back by feeding `LinkEvent`s to the core.
#[derive(Default)]
pub struct FakeBackend {
    pub sent: Mutex<Vec<ToAgent>>,
    pub ready: Mutex<bool>,
    pub cpus: f64,
    /// Whether it sets up attempts ahead ([`Backend::sets_up_ahead`]).
    pub ahead: bool,
    /// Whether its runtime makes the output directories ([`Backend::makes_output_dirs`]).
    pub makes_output: bool,
}

impl FakeBackend {
    pub fn with_cpus(cpus: f64) -> FakeBackend {
        FakeBackend {
            cpus,
            ..FakeBackend::default()
        }
    }

    /// Everything sent so far, and forgets it.
    pub fn take(&self) -> Vec<ToAgent> {
        std::mem::take(&mut *self.sent.lock().unwrap())
    }

    /// A service of one pool, `default`, with its defaults, run by `backend`.
    pub fn one_pool(
        backend: &std::sync::Arc<FakeBackend>,
    ) -> (
        std::sync::Arc<osmo_spec::config::ServiceConfig>,
        std::collections::HashMap<String, std::sync::Arc<dyn Backend>>,
    ) {
        let config = osmo_spec::config::ServiceConfig {
            pools: std::collections::BTreeMap::from([(
                "default".to_string(),
                PoolConfig::default(),
            )]),
            auth: Default::default(),
            rate_limit: Default::default(),
            workflow_tags: None,
        };
        let backends = std::collections::HashMap::from([(
            "default".to_string(),
            backend.clone() as std::sync::Arc<dyn Backend>,
        )]);
        (std::sync::Arc::new(config), backends)
    }
}

impl Backend for FakeBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }
    fn send(&self, msg: ToAgent) -> bool {
        self.sent.lock().unwrap().push(msg);
        true
    }
    fn connected(&self) -> bool {
        *self.ready.lock().unwrap()
    }
    fn set_ready(&self, _: u64) {
        *self.ready.lock().unwrap() = true;
    }
    fn capacity(&self, pool: &PoolConfig) -> Footprint {
        Footprint {
            cpu: self.cpus,
            gpu: pool.node.gpu.unwrap_or(0),
            memory_bytes: u64::MAX,
        }
    }
    fn gpu_devices(&self, pool: &PoolConfig) -> Option<u32> {
        Some(pool.node.gpu.unwrap_or(0))
    }
    fn task_host(&self, _: &PoolConfig, _: &str, task: &str) -> String {
        format!("{task}.fake")
    }
    fn sets_up_ahead(&self, _: &PoolConfig) -> bool {
        self.ahead
    }
    fn makes_output_dirs(&self) -> bool {
        self.makes_output
    }
}
