//! Jinja rendering: values and their precedence, the sandbox and its limits,
//! reserved tokens, and where template errors are reported.

use std::time::{Duration, Instant};

use osmo_spec::{Diagnostics, Values, load, render};

fn set(pairs: &[(&str, &str)]) -> Values {
    Values {
        set: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        set_string: Vec::new(),
    }
}

fn render_err(source: &str) -> Diagnostics {
    render(source, "wf.yaml", &Values::default()).expect_err("rendering should fail")
}

const TEMPLATED: &str = r#"default-values:
  code: 3
  wf: templated
workflow:
  name: "{{ wf }}"
  tasks:
  {% for i in range(2) %}
  - name: t{{ i }}
    image: ubuntu
    command: [sh, -c, "exit {{ code }}"]
    exitActions: {COMPLETE: "{{ code }}"}
  {% endfor %}
"#;

#[test]
fn default_values_render_the_spec() {
    let wf = load(TEMPLATED, "wf.yaml", &Values::default(), None).unwrap();
    assert_eq!(wf.name, "templated");
    let names: Vec<&str> = wf.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["t0-group", "t1-group"]);
    assert_eq!(wf.groups[0].tasks[0].command, ["sh", "-c", "exit 3"]);
    assert_eq!(wf.groups[1].tasks[0].exit_actions.rules[0].codes.text, "3");
}

#[test]
fn set_overrides_default_values() {
    let wf = load(
        TEMPLATED,
        "wf.yaml",
        &set(&[("code", "9"), ("wf", "other")]),
        None,
    )
    .unwrap();
    assert_eq!(wf.name, "other");
    assert_eq!(wf.groups[1].tasks[0].command, ["sh", "-c", "exit 9"]);
}

#[test]
fn set_types_numbers_and_set_string_keeps_strings() {
    let source = "{{ n + 1 }} {{ f * 2 }} {{ s }} {{ t ~ 'x' }} {{ b }}";
    let values = Values {
        set: vec![
            ("n".into(), "41".into()),
            ("f".into(), "1.25".into()),
            ("b".into(), "true".into()),
        ],
        set_string: vec![("s".into(), "007".into()), ("t".into(), "5".into())],
    };
    assert_eq!(
        render(source, "wf.yaml", &values).unwrap(),
        "42 2.5 007 5x true"
    );
    // `--set-string` wins over `--set` for the same name.
    let both = Values {
        set: vec![("n".into(), "1".into())],
        set_string: vec![("n".into(), "1".into())],
    };
    let err = render("{{ n + 1 }}", "wf.yaml", &both)
        .unwrap_err()
        .to_string();
    assert!(err.contains("template error"), "{err}");
}

#[test]
fn empty_or_missing_default_values() {
    assert_eq!(
        render(
            "default-values:\nx: {{ 1 + 1 }}\n",
            "wf.yaml",
            &Values::default()
        )
        .unwrap(),
        "default-values:\nx: 2\n"
    );
    assert_eq!(
        render("default-values: {}\nx: y\n", "wf.yaml", &Values::default()).unwrap(),
        "default-values: {}\nx: y\n"
    );
    assert_eq!(
        render("x: {{ a }}\n", "wf.yaml", &set(&[("a", "b")])).unwrap(),
        "x: b\n"
    );
}

#[test]
fn undefined_variable_is_an_error_with_its_place() {
    let err = render_err("workflow:\n  name: {{ nope }}\n");
    let d = &err.0[0];
    assert_eq!((d.line, d.column), (2, 12), "{err}");
    assert!(
        d.message.starts_with("template error: undefined value"),
        "{err}"
    );
    assert!(d.message.contains("--set"), "{err}");
    assert_eq!(d.value.as_deref(), Some("nope"));
    let shown = err.to_string();
    assert!(
        shown.starts_with("wf.yaml:2:12: template error: undefined value"),
        "{shown}"
    );
}

#[test]
fn attribute_escapes_are_refused() {
    for source in [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ range.__globals__ }}",
        "{% include 'x' %}",
    ] {
        let err = render_err(source);
        assert!(
            err.0[0].message.starts_with("template error"),
            "{source}: {err}"
        );
    }
}

#[test]
fn syntax_errors_have_places() {
    let err = render_err("a: 1\nb: {% for x in %}\n");
    assert_eq!(err.0[0].line, 2, "{err}");
    assert!(err.0[0].message.contains("syntax error"), "{err}");
}

#[track_caller]
fn bounded(source: &str, needle: &str) {
    let start = Instant::now();
    let err = render_err(source);
    let took = start.elapsed();
    // Fuel stops it, not a clock: this only tells a stopped template (a
    // second or two in a debug build on a loaded machine) from one that
    // escaped the fuel (hours).
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(err.to_string().contains(needle), "{err}");
}

#[test]
fn endless_loops_are_stopped() {
    bounded(
        "{% for i in range(999999999) %}{% for j in range(999999999) %}x{% endfor %}{% endfor %}",
        "range has too many elements",
    );
    bounded(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "runs too long",
    );
}

#[test]
fn endless_recursion_is_stopped() {
    bounded(
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "template error",
    );
    bounded(
        "{% macro f() %}{{ f() }}{{ f() }}{% endmacro %}{{ f() }}",
        "template error",
    );
}

#[test]
fn output_is_bounded() {
    bounded(
        "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
        "renders more than 8.0 MiB",
    );
}

#[test]
fn reserved_tokens_survive_rendering() {
    let source = "a: {{output}} {{ input:0 }} {{input:prep}} {{ workflow_id }} {{host:server}} {{uuid}} {{ n }}\n";
    let out = render(source, "wf.yaml", &set(&[("n", "1")])).unwrap();
    assert_eq!(
        out,
        "a: {{output}} {{ input:0 }} {{input:prep}} {{ workflow_id }} {{host:server}} {{uuid}} 1\n"
    );
    // Also when a loop repeats them.
    let out = render(
        "{% for i in range(2) %}{{output}}/{{ i }} {% endfor %}",
        "wf.yaml",
        &Values::default(),
    )
    .unwrap();
    assert_eq!(out, "{{output}}/0 {{output}}/1 ");
}

#[test]
fn errors_after_a_loop_keep_their_source_line() {
    // Line 12 of the source is the unknown key; the loop above adds lines.
    let source = "workflow:\n  name: w\n  tasks:\n  {% for i in range(3) %}\n  - name: t{{ i }}\n    image: ubuntu\n    command: [sh]\n  {% endfor %}\n  - name: last\n    image: ubuntu\n    command: [sh]\n    colour: red\n";
    let err = load(source, "wf.yaml", &Values::default(), None).unwrap_err();
    assert_eq!(err.0[0].line, 12, "{err}");
    assert_eq!(err.0[0].source_line.as_deref(), Some("    colour: red"));
    // Inside the loop, the line is the rendered one, and the message says so.
    let source = source.replace(
        "    command: [sh]\n  {% endfor %}",
        "    command: [sh]\n    colour: red\n  {% endfor %}",
    );
    let err = load(&source, "wf.yaml", &Values::default(), None).unwrap_err();
    assert!(
        err.0[0].message.ends_with("(line in the rendered spec)"),
        "{err}"
    );
    assert_eq!(err.0[0].source_line.as_deref(), Some("    colour: red"));
}

#[test]
fn bad_default_values_are_reported_at_their_line() {
    let err = render_err("version: 2\ndefault-values:\n  a: [1\nworkflow: {}\n");
    assert!(
        err.0[0]
            .message
            .starts_with("in `default-values`: yaml syntax error"),
        "{err}"
    );
    assert!(err.0[0].line >= 3, "{err}");
}
