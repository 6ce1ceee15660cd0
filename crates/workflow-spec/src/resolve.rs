//! Drafts → the resolved [`Workflow`]: unique names, one lead per group,
//! dependency edges between groups without cycles, reserved tokens that name
//! real inputs and hosts, resources that exist (and fit the pool, when given).

use std::collections::{BTreeMap, HashMap};

use crate::config::PoolConfig;
use crate::model::{Group, Resource, Workflow};
use crate::report::Report;
use crate::tokens::{self, Token};
use crate::validate::{GroupDraft, ResourceDraft, WorkflowDraft};
use crate::yaml::Mark;

pub(crate) fn workflow(
    draft: WorkflowDraft,
    pool: Option<&PoolConfig>,
    report: &mut Report,
) -> Option<Workflow> {
    unique_names(&draft.groups, report);
    let leads = leads(&draft.groups, report);
    let upstream = dependencies(&draft.groups, report);
    tokens_name_known_things(&draft.groups, report);
    resources_exist(&draft, report);
    if let Some(pool) = pool {
        fits_pool(&draft, pool, report);
        mounts_allowed(&draft, pool, report);
    }
    if report.has_errors() {
        return None;
    }
    let groups = draft
        .groups
        .into_iter()
        .zip(leads)
        .zip(upstream)
        .map(|((g, lead), upstream)| {
            let mut tasks: Vec<_> = g.tasks.into_iter().map(|t| t.task).collect();
            for (i, task) in tasks.iter_mut().enumerate() {
                task.lead = i == lead;
            }
            Group {
                name: g.name,
                tasks,
                lead,
                barrier: g.barrier,
                ignore_nonlead_status: g.ignore_nonlead_status,
                upstream,
            }
        })
        .collect();
    let resources: BTreeMap<String, Resource> = draft
        .resources
        .into_iter()
        .map(|(k, r)| (k, r.resource))
        .collect();
    Some(Workflow {
        name: draft.name?,
        labels: draft.labels,
        resources,
        timeout: draft.timeout,
        groups,
    })
}

/// Host paths a task mounts must be the pool's `allowed_mounts` or under one.
fn mounts_allowed(draft: &WorkflowDraft, pool: &PoolConfig, report: &mut Report) {
    let allowed = |src: &str| {
        pool.allowed_mounts.iter().any(|a| {
            let a = a.trim_end_matches('/');
            src == a || src.starts_with(&format!("{a}/")) || a.is_empty()
        })
    };
    for task in draft.groups.iter().flat_map(|g| &g.tasks) {
        for (mount, mark) in task.task.volume_mounts.iter().zip(&task.volume_marks) {
            let Some((src, _)) = crate::model::parse_volume_mount(mount) else {
                continue;
            };
            if !allowed(&src) || src.split('/').any(|c| c == "..") {
                let offered = if pool.allowed_mounts.is_empty() {
                    "the pool allows no host mounts (its `allowed_mounts` is empty)".to_string()
                } else {
                    format!("the pool allows {}", pool.allowed_mounts.join(", "))
                };
                report.error(
                    *mark,
                    format!(
                        "volume mount `{mount}` of task `{}` is not allowed: {offered}",
                        task.task.name
                    ),
                    None,
                );
            }
        }
    }
}

/// Case-insensitive, `-` = `_`.
fn fold(name: &str) -> String {
    name.to_ascii_lowercase().replace('-', "_")
}

/// Task names are unique among tasks and group names among groups (a group
/// may share its name with a task, e.g. a one-task group).
fn unique_names(groups: &[GroupDraft], report: &mut Report) {
    let group_names = groups
        .iter()
        .filter_map(|g| g.name_mark.map(|m| (g.name.as_str(), m)));
    let task_names = groups
        .iter()
        .flat_map(|g| &g.tasks)
        .map(|t| (t.task.name.as_str(), t.name_mark));
    unique("group", group_names, report);
    unique("task", task_names, report);
}

fn unique<'a>(kind: &str, names: impl Iterator<Item = (&'a str, Mark)>, report: &mut Report) {
    let mut seen: HashMap<String, (&str, Mark)> = HashMap::new();
    for (name, mark) in names {
        if name.is_empty() {
            continue;
        }
        match seen.get(&fold(name)) {
            Some((first_name, first)) => report.error(
                mark,
                format!(
                    "{kind} name `{name}` is already used by {kind} `{first_name}` at line {}, column {}; \
                     {kind} names must be unique (ignoring case, with `-` equal to `_`)",
                    first.line, first.column
                ),
                None,
            ),
            None => {
                seen.insert(fold(name), (name, mark));
            }
        }
    }
}

/// The lead of each group (0 where it could not be decided; an error is reported then).
fn leads(groups: &[GroupDraft], report: &mut Report) -> Vec<usize> {
    groups
        .iter()
        .map(|g| {
            if g.tasks.len() <= 1 {
                return 0;
            }
            let marked: Vec<usize> = (0..g.tasks.len()).filter(|&i| g.tasks[i].task.lead).collect();
            match marked.as_slice() {
                [one] => *one,
                [] => {
                    report.error(
                        g.name_mark.unwrap_or(g.mark),
                        format!(
                            "group `{}` has {} tasks but no lead; mark exactly one task with `lead: true`",
                            g.name,
                            g.tasks.len()
                        ),
                        None,
                    );
                    0
                }
                [first, rest @ ..] => {
                    let names: Vec<String> = marked.iter().map(|&i| format!("`{}`", g.tasks[i].task.name)).collect();
                    for &i in rest {
                        let t = &g.tasks[i];
                        report.error(
                            t.lead_mark.unwrap_or(t.mark),
                            format!(
                                "group `{}` has {} lead tasks ({}); exactly one task may have `lead: true`",
                                g.name,
                                marked.len(),
                                names.join(", ")
                            ),
                            None,
                        );
                    }
                    *first
                }
            }
        })
        .collect()
}

/// One `inputs: [{task}]` edge: the task of group `from` (at `task`) takes input
/// from `upstream_task` of group `to`.
struct Edge<'a> {
    task: &'a str,
    upstream_task: &'a str,
    to: usize,
    mark: Mark,
}

/// Upstream group indices of each group; reports unknown tasks, inputs from
/// the same group and cycles.
fn dependencies(groups: &[GroupDraft], report: &mut Report) -> Vec<Vec<usize>> {
    let mut owner: HashMap<&str, usize> = HashMap::new();
    for (g, group) in groups.iter().enumerate() {
        for t in &group.tasks {
            owner.entry(t.task.name.as_str()).or_insert(g);
        }
    }
    let mut edges: Vec<Vec<Edge<'_>>> = Vec::with_capacity(groups.len());
    for (g, group) in groups.iter().enumerate() {
        let mut mine = Vec::new();
        for t in &group.tasks {
            for (upstream, mark) in &t.task_inputs {
                let name = t.task.name.as_str();
                match owner.get(upstream.as_str()) {
                    None => report.error(
                        *mark,
                        format!("task `{name}` takes input from task `{upstream}`, which is not a task of this workflow"),
                        Some(upstream.clone()),
                    ),
                    Some(_) if upstream == name => report.error(
                        *mark,
                        format!("task `{name}` takes input from itself; that is a dependency cycle"),
                        None,
                    ),
                    Some(&to) if to == g => report.error(
                        *mark,
                        format!(
                            "task `{name}` takes input from task `{upstream}` of its own group `{}`; \
                             tasks of a group run together, so that is a dependency cycle (move one to another group)",
                            group.name
                        ),
                        None,
                    ),
                    Some(&to) => mine.push(Edge { task: name, upstream_task: upstream, to, mark: *mark }),
                }
            }
        }
        edges.push(mine);
    }
    report_cycles(&edges, report);
    edges
        .iter()
        .map(|e| {
            let mut up: Vec<usize> = e.iter().map(|e| e.to).collect();
            up.sort_unstable();
            up.dedup();
            up
        })
        .collect()
}

/// Kahn's algorithm leaves the groups on or below a cycle; walking upstream
/// from any of them reaches a cycle, which is reported once.
fn report_cycles(edges: &[Vec<Edge<'_>>], report: &mut Report) {
    let n = edges.len();
    // pending[g]: upstream edges of g not yet satisfied.
    let mut pending: Vec<usize> = edges.iter().map(Vec::len).collect();
    let mut downstream: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (g, list) in edges.iter().enumerate() {
        for e in list {
            downstream[e.to].push(g);
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&g| pending[g] == 0).collect();
    let mut done = vec![false; n];
    while let Some(g) = ready.pop() {
        done[g] = true;
        for &d in &downstream[g] {
            pending[d] -= 1;
            if pending[d] == 0 {
                ready.push(d);
            }
        }
    }
    let mut seen = vec![false; n];
    for start in 0..n {
        if done[start] || seen[start] {
            continue;
        }
        // Walk upstream through groups that are not done until one repeats.
        let mut path: Vec<usize> = Vec::new();
        let mut position: HashMap<usize, usize> = HashMap::new();
        let mut g = start;
        loop {
            if seen[g] {
                break;
            }
            if let Some(&at) = position.get(&g) {
                let cycle = &path[at..];
                let mut steps = Vec::new();
                let mut mark = None;
                for (i, &from) in cycle.iter().enumerate() {
                    let to = cycle[(i + 1) % cycle.len()];
                    if let Some(e) = edges[from].iter().find(|e| e.to == to) {
                        mark.get_or_insert(e.mark);
                        steps.push(format!(
                            "task `{}` takes input from task `{}`",
                            e.task, e.upstream_task
                        ));
                    }
                }
                report.error(
                    mark.unwrap_or_default(),
                    format!(
                        "dependency cycle: {}; remove one of these inputs",
                        steps.join(", ")
                    ),
                    None,
                );
                break;
            }
            position.insert(g, path.len());
            path.push(g);
            match edges[g].iter().find(|e| !done[e.to]) {
                Some(e) => g = e.to,
                None => break,
            }
        }
        for g in path {
            seen[g] = true;
        }
    }
}

/// `{{input:N}}` within the task's inputs, `{{input:TASK}}` one of its task
/// inputs, `{{host:TASK}}` a task of the same group.
fn tokens_name_known_things(groups: &[GroupDraft], report: &mut Report) {
    for group in groups {
        for t in &group.tasks {
            for (text, mark) in &t.texts {
                for (_, token) in tokens::find(text) {
                    let problem = match token {
                        Token::Input(arg) => match arg.parse::<usize>() {
                            Ok(i) if i < t.task.inputs.len() => None,
                            Ok(i) => Some(format!(
                                "`{{{{input:{i}}}}}` in task `{}` refers to input {i}, but the task has {} input(s) (counted from 0)",
                                t.task.name,
                                t.task.inputs.len()
                            )),
                            Err(_) if t.task_inputs.iter().any(|(n, _)| n == arg) => None,
                            Err(_) => Some(format!(
                                "`{{{{input:{arg}}}}}` in task `{}` names task `{arg}`, which is not among its inputs; \
                                 add `{{task: {arg}}}` to its `inputs`",
                                t.task.name
                            )),
                        },
                        Token::Host(arg) => (!group.tasks.iter().any(|o| o.task.name == arg)).then(|| {
                            format!(
                                "`{{{{host:{arg}}}}}` in task `{}` names task `{arg}`, which is not in its group `{}`; \
                                 only tasks of the same group can reach each other",
                                t.task.name, group.name
                            )
                        }),
                        _ => None,
                    };
                    if let Some(message) = problem {
                        report.error(*mark, message, None);
                    }
                }
            }
        }
    }
}

fn resources_exist(draft: &WorkflowDraft, report: &mut Report) {
    if !draft.resources_readable {
        return;
    }
    for t in draft.groups.iter().flat_map(|g| &g.tasks) {
        if !draft.resources.contains_key(&t.task.resource) {
            let known: Vec<String> = draft.resources.keys().map(|k| format!("`{k}`")).collect();
            report.error(
                t.resource_mark,
                format!(
                    "task `{}` uses resource `{}`, which is not defined in `resources`{}",
                    t.task.name,
                    t.task.resource,
                    if known.is_empty() {
                        String::new()
                    } else {
                        format!(" (defined: {})", known.join(", "))
                    }
                ),
                None,
            );
        }
    }
}

fn fits_pool(draft: &WorkflowDraft, pool: &PoolConfig, report: &mut Report) {
    group_gpus_fit(draft, pool, report);
    group_cpus_fit(draft, pool, report);
    for (name, r) in &draft.resources {
        let users: Vec<String> = draft
            .groups
            .iter()
            .flat_map(|g| &g.tasks)
            .filter(|t| &t.task.resource == name)
            .map(|t| format!("`{}`", t.task.name))
            .collect();
        if users.is_empty() {
            continue;
        }
        let by = format!("used by task {}", users.join(", "));
        let at = |field: Option<Mark>, r: &ResourceDraft| field.unwrap_or(r.mark);
        let node = &pool.node;
        let res = &r.resource;
        if let Some(max) = node.cpu
            && res.cpu > max
        {
            report.error(
                at(r.cpu, r),
                format!(
                    "resource `{name}` asks for {} CPUs but a node of the pool has {max} ({by})",
                    res.cpu
                ),
                None,
            );
        }
        if let Some(max) = node.gpu
            && res.gpu > max
        {
            report.error(
                at(r.gpu, r),
                format!(
                    "resource `{name}` asks for {} GPUs but a node of the pool has {max} ({by})",
                    res.gpu
                ),
                None,
            );
        }
        if let (Some(max), Some(ask)) = (node.memory_bytes, res.memory_bytes)
            && ask > max
        {
            report.error(
                at(r.memory, r),
                format!(
                    "resource `{name}` asks for {} of memory but a node of the pool has {} ({by})",
                    bytes(ask),
                    bytes(max)
                ),
                None,
            );
        }
        if let (Some(max), Some(ask)) = (node.storage_bytes, res.storage_bytes)
            && ask > max
        {
            report.error(
                at(r.storage, r),
                format!(
                    "resource `{name}` asks for {} of storage but a node of the pool has {} ({by})",
                    bytes(ask),
                    bytes(max)
                ),
                None,
            );
        }
        if let Some(platform) = &res.platform
            && !pool.platforms.contains(platform)
        {
            let offered = if pool.platforms.is_empty() {
                "the pool offers no platforms".to_string()
            } else {
                format!(
                    "the pool offers {}",
                    pool.platforms
                        .iter()
                        .map(|p| format!("`{p}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            report.error(
                at(r.platform, r),
                format!("resource `{name}` asks for platform `{platform}`, but {offered} ({by})"),
                None,
            );
        }
    }
}

/// A group's tasks run together (gang): on a local pool, one node, they
/// need their GPUs at once, and devices are never shared, so a group asking
/// more than the node has could never start.
fn group_gpus_fit(draft: &WorkflowDraft, pool: &PoolConfig, report: &mut Report) {
    if pool.backend != crate::config::BackendKind::Local {
        return;
    }
    let Some(node_gpus) = pool.node.gpu else {
        return;
    };
    let node = pool.gpu_capacity.map_or(node_gpus, |q| q.min(node_gpus));
    for group in &draft.groups {
        let asked: u64 = group
            .tasks
            .iter()
            .filter_map(|t| draft.resources.get(&t.task.resource))
            .map(|r| u64::from(r.resource.gpu))
            .sum();
        // One task over the node's GPUs is reported with its resource.
        if asked > u64::from(node) && (group.tasks.len() > 1 || node < node_gpus) {
            report.error(
                group.name_mark.unwrap_or(group.mark),
                format!(
                    "group `{}` asks for {asked} GPUs in all, but the pool hands out {node}: \
                     a group's tasks run at the same time, each on GPUs of its own",
                    group.name
                ),
                None,
            );
        }
    }
}

/// A group's tasks are allocated together (gang): a group asking more CPUs
/// in all than the pool's nodes have together (a Slurm partition's, found at
/// start) would wait forever.
fn group_cpus_fit(draft: &WorkflowDraft, pool: &PoolConfig, report: &mut Report) {
    let Some(total) = pool.total_cpu else { return };
    for group in &draft.groups {
        // Slurm allocates whole CPUs, at least one per task.
        let asked: f64 = group
            .tasks
            .iter()
            .map(|t| {
                let cpu = draft
                    .resources
                    .get(&t.task.resource)
                    .map_or(0.0, |r| r.resource.cpu);
                cpu.ceil().max(1.0)
            })
            .sum();
        if asked > total + 1e-9 {
            report.error(
                group.name_mark.unwrap_or(group.mark),
                format!(
                    "group `{}` asks for {asked} CPUs in all, but the pool's nodes have {total}: \
                     a group's tasks are allocated together, so it could never start",
                    group.name
                ),
                None,
            );
        }
    }
}

/// `16Gi`, `1.5Gi`, `512Mi` or bytes, for messages.
fn bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if n >= size {
            let value = n as f64 / size as f64;
            return if n.is_multiple_of(size) {
                format!("{}{unit}", n / size)
            } else {
                format!("{value:.1}{unit}")
            };
        }
    }
    format!("{n} bytes")
}
