//! The layering rule of `src/` (docs/architecture.md, "Layout"): a top-level module
//! imports only modules of lower layers, and the control plane does not import the data
//! path. Checked over the source text: any `crate::<module>` outside a comment counts.

use std::collections::BTreeSet;
use std::path::Path;

/// Top-level modules, lowest layer first; modules of one layer do not import each other.
const LAYERS: &[&[&str]] = &[
    &["wire", "metrics", "logging", "shutdown"],
    &["config"],
    &["auth"],
    &["sql"],
    &["tenant"],
    &["upstream"],
    &["session"],
    &["proxy"],
    &["control"],
    &["dev"],
    &["cli"],
];

/// What the control plane (`policy`, `doctor`) may use: not the data path.
const CONTROL_MAY_IMPORT: &[&str] = &[
    "wire", "metrics", "logging", "shutdown", "config", "auth", "sql", "tenant",
];

fn layer(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&module))
        .unwrap_or_else(|| panic!("top-level module `{module}` has no layer in LAYERS"))
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `(file's top-level module, imported top-level module)` for every import.
fn imports() -> BTreeSet<(String, String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut out = BTreeSet::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        if ["main", "lib", "layout_tests"].contains(&module.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or_default();
            let mut rest = code;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    out.insert((module.clone(), name, rel.display().to_string()));
                }
            }
        }
    }
    out
}

#[test]
fn no_module_imports_a_layer_above_its_own() {
    let all = imports();
    // The scan sees imports (so the check below can fail).
    assert!(all
        .iter()
        .any(|(f, t, _)| f == "session" && t == "upstream"));
    let bad: Vec<String> = all
        .into_iter()
        .filter(|(from, to, _)| layer(to) >= layer(from))
        .map(|(from, to, file)| format!("{file}: {from} imports {to}"))
        .collect();
    assert!(
        bad.is_empty(),
        "imports against the layering:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_control_plane_does_not_import_the_data_path() {
    let bad: Vec<String> = imports()
        .into_iter()
        .filter(|(from, to, _)| from == "control" && !CONTROL_MAY_IMPORT.contains(&to.as_str()))
        .map(|(_, to, file)| format!("{file}: control imports {to}"))
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
