//! Raw workflow → drafts: every field checked and converted, each problem
//! reported at its place. Cross-task rules (names, leads, dependencies,
//! tokens, pool limits) are in [`crate::resolve`].

use std::collections::BTreeMap;

use crate::check;
use crate::de::{Checked, Entries, Kind, Scalar};
use crate::model::{Checkpoint, File, Input, Output, Resource, Task, Timeouts};
use crate::raw::{RawFile, RawGroup, RawResource, RawTask, RawWorkflow};
use crate::report::Report;
use crate::yaml::Mark;

/// A task with the places later checks need.
pub(crate) struct TaskDraft {
    pub task: Task,
    pub mark: Mark,
    pub name_mark: Mark,
    /// Set when `lead:` was written.
    pub lead_mark: Option<Mark>,
    /// `inputs: [{task}]` entries: (task name, place).
    pub task_inputs: Vec<(String, Mark)>,
    /// Where `resource:` was written (else the task's place).
    pub resource_mark: Mark,
    /// Texts that may hold reserved tokens, with their places.
    pub texts: Vec<(String, Mark)>,
    /// Where each `volumeMounts` entry was written, in order.
    pub volume_marks: Vec<Mark>,
}

pub(crate) struct GroupDraft {
    pub name: String,
    /// `None` for the group made from a plain task.
    pub name_mark: Option<Mark>,
    pub mark: Mark,
    pub tasks: Vec<TaskDraft>,
    pub barrier: bool,
    pub ignore_nonlead_status: bool,
}

pub(crate) struct ResourceDraft {
    pub resource: Resource,
    pub mark: Mark,
    pub cpu: Option<Mark>,
    pub gpu: Option<Mark>,
    pub memory: Option<Mark>,
    pub storage: Option<Mark>,
    pub platform: Option<Mark>,
}

pub(crate) struct WorkflowDraft {
    pub name: Option<String>,
    /// `labels:` of the file (OSMO's), checked.
    pub labels: BTreeMap<String, String>,
    pub resources: BTreeMap<String, ResourceDraft>,
    /// False when `resources` could not be read (already reported).
    pub resources_readable: bool,
    pub timeout: Timeouts,
    pub groups: Vec<GroupDraft>,
}

/// Checks the file's top level and the workflow; `None` when there is no workflow to go on with.
pub(crate) fn file(raw: &RawFile, root: Mark, report: &mut Report) -> Option<WorkflowDraft> {
    if let Some(version) = &raw.version {
        let ok = matches!(version.kind, Kind::Int | Kind::Str) && version.text.trim() == "2";
        if !ok {
            report.error(
                version.mark,
                format!(
                    "unsupported version `{}`; only version 2 is accepted",
                    version.text
                ),
                None,
            );
        }
    }
    if let Some(values) = &raw.default_values
        && values.kind != Kind::Map
    {
        report.error(
            values.mark,
            format!(
                "`default-values` must be a mapping of names to values, found {}",
                values.describe()
            ),
            None,
        );
    }
    let Some(workflow) = &raw.workflow else {
        report.error(
            root,
            "missing `workflow`; a workflow file needs a `workflow:` mapping with a name and tasks",
            None,
        );
        return None;
    };
    workflow
        .value
        .as_ref()
        .map(|w| self::workflow(w, workflow.mark, report))
}

fn workflow(raw: &RawWorkflow, mark: Mark, report: &mut Report) -> WorkflowDraft {
    let name = match &raw.name {
        Some(n) => check::name(n, "workflow name", report),
        None => {
            report.error(mark, "missing `name` of the workflow", None);
            None
        }
    };
    if let Some(pool) = &raw.pool {
        check::text(pool, "`pool`", report);
    }
    let mut labels = BTreeMap::new();
    if let Some(Checked {
        value: Some(entries),
        mark: labels_mark,
    }) = &raw.labels
    {
        for (key, value) in &entries.0 {
            if !value.is_scalar() {
                report.error(
                    value.mark,
                    format!(
                        "label values must be strings: `{}` is {}",
                        key.text,
                        value.describe()
                    ),
                    None,
                );
                continue;
            }
            let text = value.text.clone();
            if !crate::labels::is_key(&key.text) {
                report.error(key.mark, crate::labels::key_error(&key.text), None);
            } else if !crate::labels::is_name(&text) {
                report.error(
                    value.mark,
                    crate::labels::value_error(&key.text, &text),
                    None,
                );
            } else {
                labels.insert(key.text.clone(), text);
            }
        }
        if entries.0.len() > crate::labels::MAX_LABELS {
            report.error(
                *labels_mark,
                crate::labels::count_error(entries.0.len()),
                None,
            );
        }
    }
    let resources = match &raw.resources {
        Some(Checked {
            value: Some(entries),
            ..
        }) => resources(entries, report),
        Some(Checked { value: None, .. }) => BTreeMap::new(),
        None => {
            let default = ResourceDraft {
                resource: Resource::default(),
                mark,
                cpu: None,
                gpu: None,
                memory: None,
                storage: None,
                platform: None,
            };
            BTreeMap::from([("default".to_string(), default)])
        }
    };
    let mut timeout = Timeouts::default();
    if let Some(t) = raw.timeout.as_ref().and_then(|t| t.value.as_ref()) {
        timeout.exec = t
            .exec_timeout
            .as_ref()
            .and_then(|s| check::duration(s, "`exec_timeout`", report));
        timeout.queue = t
            .queue_timeout
            .as_ref()
            .and_then(|s| check::duration(s, "`queue_timeout`", report));
    }
    let groups = match (&raw.tasks, &raw.groups) {
        (Some(_), Some(groups)) => {
            report.error(
                groups.mark,
                "a workflow has either `tasks` or `groups`, not both; put the plain tasks into groups",
                None,
            );
            Vec::new()
        }
        (None, None) => {
            report.error(
                mark,
                "the workflow has no `tasks` and no `groups`; give one of them",
                None,
            );
            Vec::new()
        }
        (Some(tasks), None) => plain_tasks(tasks, report),
        (None, Some(groups)) => {
            let list = groups.value.as_deref().unwrap_or_default();
            if list.is_empty() && groups.value.is_some() {
                report.error(
                    groups.mark,
                    "`groups` is empty; a workflow needs at least one group",
                    None,
                );
            }
            list.iter()
                .filter_map(|g| g.value.as_ref().map(|raw| group(raw, g.mark, report)))
                .collect()
        }
    };
    let resources_readable = raw.resources.as_ref().is_none_or(|r| r.value.is_some());
    WorkflowDraft {
        name,
        labels,
        resources,
        resources_readable,
        timeout,
        groups,
    }
}

fn plain_tasks(tasks: &Checked<Vec<Checked<RawTask>>>, report: &mut Report) -> Vec<GroupDraft> {
    let list = tasks.value.as_deref().unwrap_or_default();
    if list.is_empty() && tasks.value.is_some() {
        report.error(
            tasks.mark,
            "`tasks` is empty; a workflow needs at least one task",
            None,
        );
    }
    list.iter()
        .filter_map(|t| t.value.as_ref().map(|raw| (raw, t.mark)))
        .map(|(raw, mark)| {
            let mut draft = task(raw, mark, report);
            draft.task.lead = true;
            GroupDraft {
                name: format!("{}-group", draft.task.name),
                name_mark: None,
                mark,
                tasks: vec![draft],
                barrier: true,
                ignore_nonlead_status: true,
            }
        })
        .collect()
}

fn group(raw: &RawGroup, mark: Mark, report: &mut Report) -> GroupDraft {
    let (name, name_mark) = match &raw.name {
        Some(n) => (
            check::name(n, "group name", report).unwrap_or_default(),
            Some(n.mark),
        ),
        None => {
            report.error(mark, "missing `name` of the group", None);
            (String::new(), None)
        }
    };
    let tasks: Vec<TaskDraft> = match &raw.tasks {
        Some(list) => list
            .value
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter_map(|t| t.value.as_ref().map(|r| task(r, t.mark, report)))
            .collect(),
        None => Vec::new(),
    };
    let readable = raw.tasks.as_ref().is_none_or(|l| l.value.is_some());
    if tasks.is_empty() && readable {
        let at = raw.tasks.as_ref().map_or(mark, |l| l.mark);
        report.error(
            at,
            format!("group `{name}` has no tasks; a group needs at least one task"),
            None,
        );
    }
    GroupDraft {
        name,
        name_mark,
        mark,
        tasks,
        barrier: check::opt_flag(raw.barrier.as_ref(), "`barrier`", true, report),
        ignore_nonlead_status: check::opt_flag(
            raw.ignore_nonlead_status.as_ref(),
            "`ignoreNonleadStatus`",
            true,
            report,
        ),
    }
}

fn resources(
    entries: &Entries<Checked<RawResource>>,
    report: &mut Report,
) -> BTreeMap<String, ResourceDraft> {
    let mut out = BTreeMap::new();
    for (key, value) in &entries.0 {
        let Some(raw) = &value.value else { continue };
        let what = |field: &str| format!("`{field}` of resource `{}`", key.text);
        let mut resource = Resource::default();
        if let Some(s) = &raw.cpu {
            resource.cpu = check::cpu(s, &what("cpu"), report).unwrap_or_default();
        }
        if let Some(s) = &raw.gpu {
            resource.gpu = check::count(s, &what("gpu"), report).unwrap_or_default();
        }
        resource.memory_bytes = raw
            .memory
            .as_ref()
            .and_then(|s| check::quantity(s, &what("memory"), report));
        resource.storage_bytes = raw
            .storage
            .as_ref()
            .and_then(|s| check::quantity(s, &what("storage"), report));
        resource.platform = check::opt_text(raw.platform.as_ref(), &what("platform"), report);
        if let Some(list) = &raw.nodes_excluded {
            resource.nodes_excluded =
                check::strings(list, &what("nodesExcluded"), report).unwrap_or_default();
        }
        for item in raw
            .topology
            .as_ref()
            .and_then(|t| t.value.as_ref())
            .into_iter()
            .flatten()
        {
            let Some(topology) = &item.value else {
                continue;
            };
            match &topology.key {
                Some(k) => {
                    check::text(k, &what("topology key"), report);
                }
                None => report.error(
                    item.mark,
                    format!(
                        "missing `key` in a topology entry of resource `{}`",
                        key.text
                    ),
                    None,
                ),
            }
            check::opt_text(topology.group.as_ref(), &what("topology group"), report);
            if let Some(rt) = &topology.requirement_type
                && !matches!(rt.text.as_str(), "required" | "preferred")
            {
                report.error(
                    rt.mark,
                    "`requirementType` must be `required` or `preferred`",
                    Some(rt.text.clone()),
                );
            }
        }
        let draft = ResourceDraft {
            resource,
            mark: key.mark,
            cpu: raw.cpu.as_ref().map(|s| s.mark),
            gpu: raw.gpu.as_ref().map(|s| s.mark),
            memory: raw.memory.as_ref().map(|s| s.mark),
            storage: raw.storage.as_ref().map(|s| s.mark),
            platform: raw.platform.as_ref().map(|s| s.mark),
        };
        out.insert(key.text.clone(), draft);
    }
    out
}

fn required<'a>(
    field: Option<&'a Scalar>,
    name: &str,
    what: &str,
    mark: Mark,
    report: &mut Report,
) -> Option<&'a Scalar> {
    if field.is_none() {
        report.error(mark, format!("{what} is missing `{name}`"), None);
    }
    field
}

fn task(raw: &RawTask, mark: Mark, report: &mut Report) -> TaskDraft {
    let name_scalar = required(raw.name.as_ref(), "name", "a task", mark, report);
    let name = name_scalar
        .and_then(|n| check::name(n, "task name", report))
        .unwrap_or_default();
    if name == "osmo-ctrl"
        && let Some(n) = name_scalar
    {
        report.error(
            n.mark,
            "a task cannot be named `osmo-ctrl`; that name is reserved for OSMO",
            None,
        );
    }
    let what = |field: &str| format!("`{field}` of task `{name}`");
    let mut texts = Vec::new();
    let image = required(
        raw.image.as_ref(),
        "image",
        &format!("task `{name}`"),
        mark,
        report,
    )
    .and_then(|s| check::text(s, &what("image"), report))
    .unwrap_or_default();

    let mut command = Vec::new();
    match &raw.command {
        None => report.error(
            mark,
            format!(
                "task `{name}` is missing `command`; give it as a list, e.g. `[sh, -c, \"...\"]`"
            ),
            None,
        ),
        Some(list) => {
            if let Some(c) = check::strings(list, &what("command"), report) {
                if c.is_empty() {
                    report.error(
                        list.mark,
                        format!(
                            "{} is empty; give at least the program to run",
                            what("command")
                        ),
                        None,
                    );
                }
                command = c;
            }
            texts.extend(scalar_texts(list));
        }
    }
    let args = match &raw.args {
        Some(list) => {
            texts.extend(scalar_texts(list));
            check::strings(list, &what("args"), report).unwrap_or_default()
        }
        None => Vec::new(),
    };
    let lead = raw
        .lead
        .as_ref()
        .and_then(|s| check::flag(s, &what("lead"), report))
        .unwrap_or(false);

    let mut environment = BTreeMap::new();
    for (key, value) in raw
        .environment
        .as_ref()
        .and_then(|e| e.value.as_ref())
        .map(|e| e.0.as_slice())
        .unwrap_or_default()
    {
        if value.kind == Kind::Null {
            report.error(
                key.mark,
                format!("environment variable `{}` of task `{name}` has no value; write `\"\"` for an empty one", key.text),
                None,
            );
            continue;
        }
        if let Some(v) = check::text(
            value,
            &format!("environment variable `{}`", key.text),
            report,
        ) {
            texts.push((v.clone(), value.mark));
            environment.insert(key.text.clone(), v);
        }
    }

    let files = files(raw, &name, &mut texts, report);

    let mut inputs = Vec::new();
    let mut task_inputs = Vec::new();
    for item in list_items(&raw.inputs) {
        let Some(input) = &item.value else { continue };
        let regex = input
            .regex
            .as_ref()
            .and_then(|r| check::regex(r, &what("regex"), report));
        if let Some(dataset) = &input.dataset {
            report.error(
                dataset.mark,
                format!(
                    "task `{name}` takes a `dataset` input, which needs OSMO's dataset service; osmo has none: use `url:` (or `task:`) instead"
                ),
                None,
            );
            // Counted as an input so `{{input:N}}` after it raises no second error.
            inputs.push(Input::Url {
                url: "dataset:".into(),
                regex,
            });
            continue;
        }
        match (&input.task, &input.url) {
            (Some(t), None) => {
                let Some(upstream) = check::text(t, "an input's `task`", report) else { continue };
                if let Some((workflow, task)) = upstream.split_once(':') {
                    // Another workflow's task (`wf-3:train`, as OSMO has it): its
                    // output once it completed, which the service resolves at submit.
                    if workflow.is_empty() || task.is_empty() || task.contains(':') {
                        report.error(
                            t.mark,
                            format!("input `{upstream}` must be WORKFLOW_ID:TASK (another workflow's task) or a task of this workflow"),
                            None,
                        );
                    } else {
                        inputs.push(Input::Url {
                            url: format!("{}{workflow}/{task}", crate::model::OTHER_WORKFLOW_TASK),
                            regex,
                        });
                    }
                    continue;
                }
                task_inputs.push((upstream.clone(), t.mark));
                inputs.push(Input::Task { task: upstream, regex });
            }
            (None, Some(u)) => {
                if let Some(url) = check::data_url(u, "an input's `url`", false, report) {
                    texts.push((url.clone(), u.mark));
                    inputs.push(Input::Url { url, regex });
                }
            }
            _ => report.error(
                item.mark,
                format!("an input of task `{name}` needs exactly one of `task` (a task of this workflow) or `url`"),
                None,
            ),
        }
    }

    let mut outputs = Vec::new();
    for item in list_items(&raw.outputs) {
        let Some(output) = &item.value else { continue };
        let Some(url) = required(
            output.url.as_ref(),
            "url",
            &format!("an output of task `{name}`"),
            item.mark,
            report,
        )
        .and_then(|u| check::data_url(u, "an output's `url`", true, report)) else {
            continue;
        };
        let regex = output
            .regex
            .as_ref()
            .and_then(|r| check::regex(r, &what("regex"), report));
        outputs.push(Output { url, regex });
    }

    let exit_actions = raw
        .exit_actions
        .as_ref()
        .map(|e| check::exit_actions(e, report))
        .unwrap_or_default();

    let (resource, resource_mark) = match &raw.resource {
        Some(s) => (
            check::text(s, &what("resource"), report).unwrap_or_else(|| "default".into()),
            s.mark,
        ),
        None => ("default".to_string(), mark),
    };

    let mut credentials = BTreeMap::new();
    for (key, value) in raw
        .credentials
        .as_ref()
        .and_then(|c| c.value.as_ref())
        .map(|c| c.0.as_slice())
        .unwrap_or_default()
    {
        let Some(v) = &value.value else { continue };
        let ok = match v {
            serde_json::Value::String(_) => true,
            serde_json::Value::Object(map) => map.values().all(serde_json::Value::is_string),
            _ => false,
        };
        if ok {
            credentials.insert(key.text.clone(), v.clone());
        } else {
            report.error(
                value.mark,
                format!(
                    "credential `{}` must be a mount path (`/path`) or a mapping of environment variables to keys",
                    key.text
                ),
                None,
            );
        }
    }

    let mut checkpoint = Vec::new();
    for item in list_items(&raw.checkpoint) {
        let Some(c) = &item.value else { continue };
        let owner = format!("a checkpoint of task `{name}`");
        let path = required(c.path.as_ref(), "path", &owner, item.mark, report)
            .and_then(|p| check::text(p, "a checkpoint's `path`", report));
        let url = required(c.url.as_ref(), "url", &owner, item.mark, report)
            .and_then(|u| check::data_url(u, "a checkpoint's `url`", true, report));
        let frequency = c.frequency.as_ref().and_then(|f| {
            check::duration(f, "checkpoint `frequency`", report)?;
            Some(f.text.clone())
        });
        let regex = c
            .regex
            .as_ref()
            .and_then(|r| check::regex(r, &what("regex"), report));
        if let (Some(path), Some(url)) = (path, url) {
            checkpoint.push(Checkpoint {
                path,
                url,
                frequency,
                regex,
            });
        }
    }

    let privileged = check::opt_flag(raw.privileged.as_ref(), &what("privileged"), false, report);
    let host_network = check::opt_flag(
        raw.host_network.as_ref(),
        &what("hostNetwork"),
        false,
        report,
    );
    let volume_mounts = raw
        .volume_mounts
        .as_ref()
        .and_then(|v| check::strings(v, &what("volumeMounts"), report))
        .unwrap_or_default();
    let volume_marks: Vec<Mark> = raw
        .volume_mounts
        .as_ref()
        .and_then(|v| v.value.as_ref())
        .map(|items| items.iter().map(|i| i.mark).collect())
        .unwrap_or_default();
    for (mount, mark) in volume_mounts.iter().zip(&volume_marks) {
        if crate::model::parse_volume_mount(mount).is_none() {
            report.error(
                *mark,
                format!(
                    "volume mount `{mount}` must be `/host/path` or `/host/path:/path/in/task`, with absolute paths"
                ),
                None,
            );
        }
    }
    check::opt_text(raw.download_type.as_ref(), &what("downloadType"), report);
    check::opt_text(raw.cache_size.as_ref(), &what("cacheSize"), report);

    TaskDraft {
        lead_mark: raw.lead.as_ref().map(|s| s.mark),
        name_mark: name_scalar.map_or(mark, |n| n.mark),
        task: Task {
            name,
            image,
            command,
            args,
            lead,
            environment,
            files,
            inputs,
            outputs,
            exit_actions,
            resource,
            credentials,
            checkpoint,
            privileged,
            host_network,
            volume_mounts,
        },
        mark,
        task_inputs,
        resource_mark,
        volume_marks,
        texts,
    }
}

fn files(
    raw: &RawTask,
    name: &str,
    texts: &mut Vec<(String, Mark)>,
    report: &mut Report,
) -> Vec<File> {
    let mut files: Vec<File> = Vec::new();
    let mut paths: Vec<(String, Mark)> = Vec::new();
    for item in list_items(&raw.files) {
        let Some(f) = &item.value else { continue };
        if let Some(local) = &f.localpath {
            report.error(
                local.mark,
                "`localpath` must be inlined before submission; give the file's text in `contents`",
                Some(local.text.clone()),
            );
            continue;
        }
        let owner = format!("a file of task `{name}`");
        let path = required(f.path.as_ref(), "path", &owner, item.mark, report);
        let contents = required(f.contents.as_ref(), "contents", &owner, item.mark, report);
        let base64 = check::opt_flag(f.base64.as_ref(), "`base64`", false, report);
        let (Some(path_scalar), Some(contents_scalar)) = (path, contents) else {
            continue;
        };
        let Some(path) = check::text(path_scalar, "a file's `path`", report) else {
            continue;
        };
        let Some(contents) = check::text(contents_scalar, "a file's `contents`", report) else {
            continue;
        };
        if !path.starts_with('/') {
            report.error(
                path_scalar.mark,
                format!("file path `{path}` must be absolute (start with `/`)"),
                None,
            );
            continue;
        }
        let normal = path.trim_end_matches('/');
        if normal == "/osmo" || normal.starts_with("/osmo/") {
            report.error(
                path_scalar.mark,
                format!("file path `{path}` is under `/osmo`, which is reserved for OSMO; pick another directory"),
                None,
            );
            continue;
        }
        if let Some((_, first)) = paths.iter().find(|(p, _)| p == normal) {
            report.error(
                path_scalar.mark,
                format!(
                    "task `{name}` writes `{path}` twice (first at line {}, column {}); file paths must be unique",
                    first.line, first.column
                ),
                None,
            );
            continue;
        }
        paths.push((normal.to_string(), path_scalar.mark));
        if base64 && !check::is_base64(&contents) {
            report.error(
                contents_scalar.mark,
                format!("contents of `{path}` are marked `base64: true` but are not valid base64"),
                None,
            );
            continue;
        }
        if !base64 {
            texts.push((contents.clone(), contents_scalar.mark));
        }
        files.push(File {
            path,
            contents,
            base64,
        });
    }
    files
}

fn list_items<T>(list: &Option<Checked<Vec<Checked<T>>>>) -> &[Checked<T>] {
    list.as_ref()
        .and_then(|l| l.value.as_deref())
        .unwrap_or_default()
}

fn scalar_texts(list: &Checked<Vec<Scalar>>) -> impl Iterator<Item = (String, Mark)> + '_ {
    list.value
        .iter()
        .flatten()
        .filter(|s| s.is_scalar())
        .map(|s| (s.text.clone(), s.mark))
}
