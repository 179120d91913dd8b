//! Tag-map fixture folders: each `tests/tagmaps/<case>/` holds an `agent.toml` and the
//! `expected.txt` output of loading it: the diagnostics (file:line:column) and, when the map is
//! valid, the request plan. Run with `BLESS=1` to rewrite the expectations after a deliberate change.

use std::path::Path;

use edge_agent::cli::plan::render_text;
use edge_agent::config::{parse_str, ConfigError};

fn render(text: &str) -> String {
    match parse_str("agent.toml", text) {
        Ok((map, warnings)) => {
            let mut s: String = warnings.iter().map(|d| format!("{d}\n")).collect();
            s.push_str("ok\n");
            s.push_str(&render_text(&map));
            s
        }
        Err(ConfigError::Invalid(diags)) => diags.iter().map(|d| format!("{d}\n")).collect(),
        Err(e) => format!("{e}\n"),
    }
}

#[test]
fn tag_map_fixtures() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tagmaps");
    let bless = std::env::var_os("BLESS").is_some();
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .expect("fixture dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    cases.sort();
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for case in cases {
        let text = std::fs::read_to_string(case.join("agent.toml")).expect("agent.toml");
        let got = render(&text);
        let exp_path = case.join("expected.txt");
        if bless {
            std::fs::write(&exp_path, &got).expect("write expected");
            continue;
        }
        let want = std::fs::read_to_string(&exp_path).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "--- {}\n--- expected:\n{want}--- got:\n{got}",
                case.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
