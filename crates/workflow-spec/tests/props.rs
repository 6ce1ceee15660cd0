//! Properties: nothing panics on any input, and code lists round-trip.

use osmo_spec::codes::CodeRange;
use osmo_spec::{CodeList, Values, load, load_config, render};
use proptest::prelude::*;

/// Pieces of workflow files, so random strings look enough like specs to go deep.
fn yamlish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("workflow:\n".to_string()),
        Just("  name: w\n".to_string()),
        Just("  tasks:\n".to_string()),
        Just("  groups:\n".to_string()),
        Just("  - name: t\n".to_string()),
        Just("    image: ubuntu\n".to_string()),
        Just("    command: [sh, -c, 'exit 1']\n".to_string()),
        Just("    lead: true\n".to_string()),
        Just("    inputs: [{task: t}]\n".to_string()),
        Just("    exitActions: {COMPLETE: 0-10, FAIL: 5}\n".to_string()),
        Just("    files: [{path: /tmp/x, contents: '{{output}}'}]\n".to_string()),
        Just("default-values: {a: 1}\n".to_string()),
        Just("{% for i in range(3) %}\n".to_string()),
        Just("{% endfor %}\n".to_string()),
        Just("{{ a }}".to_string()),
        Just("&x ".to_string()),
        Just("*x ".to_string()),
        Just("<<: ".to_string()),
        "[ -~\n]{0,12}",
        "[\\[\\]{}:,&*!|>'\"#%@` -]{0,6}",
    ];
    prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = load(&text, "fuzz.yaml", &Values::default(), None);
        let _ = load_config(&text, "fuzz.yaml");
    }

    #[test]
    fn yamlish_text_never_panics(text in yamlish()) {
        let _ = render(&text, "fuzz.yaml", &Values::default());
        let _ = load(&text, "fuzz.yaml", &Values::default(), None);
        let _ = load_config(&text, "fuzz.yaml");
    }

    #[test]
    fn code_lists_round_trip(ranges in prop::collection::vec((0u32..5000, 0u32..50), 1..8)) {
        let text = ranges
            .iter()
            .map(|&(start, len)| if len == 0 { start.to_string() } else { format!("{start}-{}", start + len) })
            .collect::<Vec<_>>()
            .join(",");
        let list = CodeList::parse(&text).unwrap();
        prop_assert_eq!(list.to_string(), text.clone());
        prop_assert_eq!(CodeList::parse(&list.to_string()).unwrap(), list.clone());
        for &(start, len) in &ranges {
            prop_assert_eq!(list.find(start), list.ranges.iter().copied().find(|r| r.contains(start)));
            prop_assert!(list.find(start + len).is_some());
        }
        let expected: Vec<CodeRange> = ranges.iter().map(|&(s, l)| CodeRange { start: s, end: s + l }).collect();
        prop_assert_eq!(list.ranges, expected);
    }

    #[test]
    fn code_list_parse_never_panics_and_display_reparses(text in "[0-9,\\- a]{0,20}") {
        if let Ok(list) = CodeList::parse(&text) {
            prop_assert_eq!(CodeList::parse(&list.to_string()).unwrap().ranges, list.ranges);
        }
    }
}
