//! `GET /metrics` in Prometheus' (OpenMetrics) text format, through the
//! official `prometheus-client` crate. Counters and histograms are updated
//! where things happen (an exit decided, a launch dispatched, a commit);
//! gauges are read from the core's live state at each scrape, at a cost of
//! the running workflows' tasks, never of the history.

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExitLabels {
    pub pool: String,
    pub exit_code: String,
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

type Latency = Family<PoolLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

pub struct Metrics {
    registry: Registry,
    /// Attempts whose exit was decided, by pool, resolved code and action.
    pub exits: Family<ExitLabels, Counter>,
    /// Workflows that reached a final status.
    pub workflows_finished: Family<StatusLabels, Counter>,
    /// From an attempt's launch (SCHEDULING) to its dispatch to the backend.
    pub scheduling: Latency,
    /// One store commit (a batch of events and log lines, one transaction).
    pub commit: Histogram,
    /// Messages from the node agent, by kind: what each attempt costs the
    /// link (a barrier-free task that starts at once is two phases and an exit).
    pub agent_messages: Family<KindLabels, Counter>,
    /// Messages to the node agent, by kind.
    pub messages_to_agent: Family<KindLabels, Counter>,
    workflows: Family<StatusLabels, Gauge>,
    tasks: Family<StatusLabels, Gauge>,
    queued_groups: Family<PoolLabels, Gauge>,
    cpu_used: Family<PoolLabels, Gauge<f64, AtomicU64>>,
    cpu_capacity: Family<PoolLabels, Gauge<f64, AtomicU64>>,
    gpu_used: Family<PoolLabels, Gauge>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("osmo");
        let m = Metrics {
            exits: Family::default(),
            workflows_finished: Family::default(),
            scheduling: Family::new_with_constructor(latency_histogram),
            commit: latency_histogram(),
            agent_messages: Family::default(),
            messages_to_agent: Family::default(),
            workflows: Family::default(),
            tasks: Family::default(),
            queued_groups: Family::default(),
            cpu_used: Family::default(),
            cpu_capacity: Family::default(),
            gpu_used: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "attempt_exits",
            "Attempts whose exit was decided, by pool, resolved exit code and action",
            m.exits.clone(),
        );
        registry.register(
            "workflows_finished",
            "Workflows that reached a final status",
            m.workflows_finished.clone(),
        );
        registry.register(
            "scheduling_latency_seconds",
            "From an attempt's launch to its dispatch to the backend, by pool",
            m.scheduling.clone(),
        );
        registry.register(
            "store_commit_seconds",
            "One store commit of a batch of events and log lines",
            m.commit.clone(),
        );
        registry.register(
            "agent_messages",
            "Messages from the node agent, by kind",
            m.agent_messages.clone(),
        );
        registry.register(
            "messages_to_agent",
            "Messages to the node agent, by kind",
            m.messages_to_agent.clone(),
        );
        registry.register(
            "workflows",
            "Running and pending workflows, by status",
            m.workflows.clone(),
        );
        registry.register(
            "tasks",
            "Tasks of running and pending workflows, by their current attempt's status",
            m.tasks.clone(),
        );
        registry.register(
            "queued_groups",
            "Groups waiting for resources, by pool",
            m.queued_groups.clone(),
        );
        registry.register(
            "cpu_used",
            "CPUs held by admitted groups",
            m.cpu_used.clone(),
        );
        registry.register(
            "cpu_capacity",
            "CPUs a pool hands out at once",
            m.cpu_capacity.clone(),
        );
        registry.register(
            "gpu_used",
            "GPUs held by admitted groups",
            m.gpu_used.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text of a scrape, with the gauges set from `live`.
    pub fn render(&self, live: &Live) -> String {
        for (family, counts) in [
            (&self.workflows, &live.workflows),
            (&self.tasks, &live.tasks),
        ] {
            family.clear();
            for (status, n) in counts {
                family
                    .get_or_create(&StatusLabels {
                        status: status.clone(),
                    })
                    .set(*n as i64);
            }
        }
        for u in &live.pools {
            let pool = PoolLabels {
                pool: u.pool.clone(),
            };
            self.queued_groups
                .get_or_create(&pool)
                .set(u.waiting_groups as i64);
            self.cpu_used.get_or_create(&pool).set(u.cpu_used);
            self.cpu_capacity.get_or_create(&pool).set(u.cpu_capacity);
            self.gpu_used
                .get_or_create(&pool)
                .set(i64::from(u.gpu_used));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// What the core reports at a scrape.
#[derive(Debug, Default)]
pub struct Live {
    pub workflows: Vec<(String, usize)>,
    pub tasks: Vec<(String, usize)>,
    pub pools: Vec<super::core::PoolUsage>,
}
