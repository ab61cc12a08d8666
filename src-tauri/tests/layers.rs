//! The top-level modules form layers: each may use only the layers below it, so no import
//! goes upward and no two modules need each other. Read from the source text (`crate::x`
//! paths, and `super::super::x` from a module's sub-folders), so a new upward import fails here
//! before anyone has to untangle it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each top-level module and the ones it may use.
const LAYERS: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("view", &[]),
    ("text", &["model"]),
    ("hub", &["model"]),
    ("engine", &["model", "text"]),
    ("store", &["engine"]),
    ("app", &["engine", "store", "hub", "text", "model", "view"]),
    (
        "shell",
        &["app", "engine", "store", "hub", "text", "model", "view"],
    ),
];

/// Where a top-level module's files are: `src/<module>`, but the model is a crate of its own
/// (`model/src`, re-exported as `smollm3_bot::model`), whose `crate::` paths name its own
/// modules (none of which is named like a layer).
fn module_root(module: &str) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    if module == "model" {
        manifest.join("model/src")
    } else {
        manifest.join("src").join(module)
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a file names: `crate::x`, `crate::{x, y::z}`, and `super::…::x`
/// climbing out of its own top-level module.
fn uses(text: &str, depth: usize) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for part in inner.split(',') {
                    found.insert(ident(part.trim()));
                }
            } else {
                found.insert(ident(rest));
            }
        }
        // From src/a/b.rs, `super::super::x` leaves module `a` (depth 2 climbs twice).
        if depth >= 2 {
            let climb = "super::".repeat(depth);
            for (i, _) in code.match_indices(&climb) {
                found.insert(ident(&code[i + climb.len()..]));
            }
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

#[test]
fn top_level_modules_only_use_the_layers_below() {
    let known: BTreeSet<&str> = LAYERS.iter().map(|(m, _)| *m).collect();
    let mut wrong = Vec::new();
    for (module, allowed) in LAYERS {
        let root = module_root(module);
        let mut files = Vec::new();
        rust_files(&root, &mut files);
        assert!(!files.is_empty(), "no files under {}", root.display());
        for file in files {
            let rel = file.strip_prefix(&root).unwrap();
            // src/m/mod.rs and src/m/x.rs are depth 1 (`super` is `m`); src/m/x/y.rs is 2.
            let depth = rel.components().count()
                - usize::from(
                    rel.file_name()
                        .is_some_and(|n| n == "mod.rs" || n == "lib.rs"),
                );
            let text = std::fs::read_to_string(&file).unwrap();
            for used in uses(&text, depth) {
                if used != *module
                    && known.contains(used.as_str())
                    && !allowed.contains(&used.as_str())
                {
                    wrong.push(format!("{} uses {used}", file.display()));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers (see LAYERS):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_layers_have_no_cycle() {
    // A module may only use modules listed before it, so the order is a topological one.
    for (i, (module, allowed)) in LAYERS.iter().enumerate() {
        for used in *allowed {
            let at = LAYERS.iter().position(|(m, _)| m == used).unwrap();
            assert!(at < i, "{module} uses {used}, which is not below it");
        }
    }
}

#[test]
fn the_scanner_sees_every_form_of_path() {
    let text = "use crate::{engine::X, store};\nlet a = crate::hub::f(); // crate::view\n";
    let found = uses(text, 1);
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["engine", "hub", "store"]
    );
    assert!(uses("use super::super::hub::x;", 2).contains("hub"));
    assert!(uses("use super::kernels::x;", 2).is_empty());
}

#[test]
fn only_the_shells_read_the_environment() {
    let mut readers = Vec::new();
    for module in ["model", "text", "engine", "store", "view"] {
        let mut files = Vec::new();
        rust_files(&module_root(module), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            if text.contains("env::var") || text.contains("env::set_var") {
                readers.push(file.display().to_string());
            }
        }
    }
    assert!(
        readers.is_empty(),
        "configuration is read once in the shell and passed down; these read the environment:\n{}",
        readers.join("\n")
    );
}

/// Files that still need each other, inside one top-level module. A cycle not listed here
/// fails [`no_new_cycles_between_files`]; breaking one of these means deleting its line.
const KNOWN_FILE_CYCLES: &[&[&str]] = &[];

/// Every module file under a crate's `src` as (`a::b` path, text before its tests).
fn module_files(src: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files
        .into_iter()
        .filter_map(|f| {
            let rel = f.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if parts.len() == 1 && matches!(parts[0].as_str(), "lib" | "main") {
                return None;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            // Test modules may reach anywhere.
            let text = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
            Some((parts.join("::"), text))
        })
        .collect()
}

/// The paths one `use`-style tail names, brace groups expanded: `a::{b, c::{d, e}}` gives
/// `a::b`, `a::c::d` and `a::c::e`; a plain `a::b::f(` gives `a::b::f`.
fn named_paths(tail: &str) -> Vec<Vec<String>> {
    let mut path = Vec::new();
    let mut rest = tail.trim_start();
    loop {
        if let Some(group) = rest.strip_prefix('{') {
            // Split the group at its top-level commas, up to its closing brace.
            let (mut depth, mut start, mut items) = (0usize, 0usize, Vec::new());
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        items.push(&group[start..i]);
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        items.push(&group[start..i]);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            return items
                .into_iter()
                .flat_map(named_paths)
                .map(|tail| path.iter().cloned().chain(tail).collect())
                .collect();
        }
        let word: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if word.is_empty() {
            break;
        }
        rest = &rest[word.len()..];
        path.push(word);
        let Some(after) = rest.strip_prefix("::") else {
            break;
        };
        rest = after.trim_start();
    }
    vec![path]
}

/// The modules a file's `crate::` and `super::` paths name (the longest known prefix of
/// each, brace groups included).
fn file_edges(module: &str, text: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let own: Vec<&str> = module.split("::").collect();
    let resolve = |path: Vec<String>| -> Option<String> {
        (1..=path.len())
            .rev()
            .map(|k| path[..k].join("::"))
            .find(|c| known.contains(c) && c != module)
    };
    // One line of code without comments, so a `use` group spread over lines reads whole.
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let before = &code[..i];
        if before.ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `$crate::`
        }
        for path in named_paths(&code[i + 7..]) {
            out.extend(resolve(path));
        }
    }
    let mut rest = code.as_str();
    while let Some(i) = rest.find("super::") {
        let before = &rest[..i];
        if before.ends_with("super::")
            || before.ends_with(|c: char| c.is_alphanumeric() || c == '_')
        {
            rest = &rest[i + 7..];
            continue;
        }
        let mut tail = &rest[i..];
        let mut ups = 0;
        while let Some(t) = tail.strip_prefix("super::") {
            ups += 1;
            tail = t;
        }
        // From `a/b.rs` and from `a/b/mod.rs` alike, one `super` is `a`.
        let keep = own.len().saturating_sub(ups);
        let base: Vec<String> = own[..keep.min(own.len())]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for path in named_paths(tail) {
            out.extend(resolve(base.iter().cloned().chain(path).collect()));
        }
        rest = tail;
    }
    out
}

#[test]
fn edges_follow_brace_groups_and_plain_paths() {
    let known: BTreeSet<String> = ["m::a", "m::b", "m::c", "n"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let text = "use super::{a,\n  b::{X, Y}};\nfn f() { crate::n::g(); }\n// super::c in a comment";
    let edges = file_edges("m::own", text, &known);
    let want: BTreeSet<String> = ["m::a", "m::b", "n"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(edges, want);
}

#[test]
fn no_new_cycles_between_files() {
    // Each crate on its own: the app's `src` and the model's.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for src in [manifest.join("src"), manifest.join("model/src")] {
        let files = module_files(&src);
        assert!(!files.is_empty(), "no module files under {}", src.display());
        check_cycles(&files);
    }
}

fn check_cycles(files: &[(String, String)]) {
    let known: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let edges: std::collections::BTreeMap<String, BTreeSet<String>> = files
        .iter()
        .map(|(m, t)| (m.clone(), file_edges(m, t, &known)))
        .collect();
    // Two files are in one cycle when each reaches the other.
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for n in edges.get(&m).into_iter().flatten() {
                if seen.insert(n.clone()) {
                    todo.push(n.clone());
                }
            }
        }
        seen
    };
    let reaches: std::collections::BTreeMap<&String, BTreeSet<String>> =
        known.iter().map(|m| (m, reach(m))).collect();
    let mut cycles: BTreeSet<Vec<String>> = BTreeSet::new();
    for m in &known {
        let mut cycle: Vec<String> = reaches[m]
            .iter()
            .filter(|n| *n != m && reaches[*n].contains(m))
            .cloned()
            .collect();
        if !cycle.is_empty() {
            cycle.push(m.clone());
            cycle.sort();
            cycles.insert(cycle);
        }
    }
    let allowed: BTreeSet<Vec<String>> = KNOWN_FILE_CYCLES
        .iter()
        .map(|c| c.iter().map(|s| s.to_string()).collect())
        .collect();
    let new: Vec<String> = cycles.difference(&allowed).map(|c| c.join(" ↔ ")).collect();
    assert!(
        new.is_empty(),
        "files that now need each other:\n{}",
        new.join("\n")
    );
}
