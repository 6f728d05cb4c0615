//! The shape of `core/src` (issue #15): every file holds one concern of at most about
//! 600 lines of non-test code, and no module imports, directly or through others, a
//! module that imports it back.
//!
//! Modules are the files under `src/`; an edge `a -> b` is any `crate::…` or
//! `super::…` path in `a`'s non-test code that names `b` (or something inside it).
//! A parent's `mod child;` and its relative `use child::…` lines are how it presents
//! its children and are not scanned; a child importing its parent's own items is an
//! edge like any other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Most non-test lines a file may have ("about 600").
const MAX_LINES: usize = 650;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("src is readable")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `engine/shared.rs` → `engine::shared`; `engine/mod.rs` → `engine`; `lib.rs` → ``.
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix(src()).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts.join("::")
}

/// The code before the inline test module (`#[cfg(test)] mod tests {`, at the end of a
/// file); test modules in files of their own (`tests.rs`) are skipped entirely.
fn non_test(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let opens_test_module = |i: usize| {
        lines[i].trim() == "#[cfg(test)]"
            && lines[i + 1..]
                .iter()
                .find(|l| !l.trim_start().starts_with("#["))
                .is_some_and(|l| l.contains("mod ") && l.trim_end().ends_with('{'))
    };
    let end = (0..lines.len())
        .find(|&i| opens_test_module(i))
        .unwrap_or(lines.len());
    lines[..end].to_vec()
}

fn is_test_file(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "tests.rs")
}

/// Every `crate::a::b` / `super::a` path in `line`, as absolute module paths.
fn paths_in(line: &str, module: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut out = Vec::new();
    for (prefix, base) in [("crate::", String::new()), ("super::", parent(module))] {
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            let after = &rest[i + prefix.len()..];
            rest = after;
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            // `use crate::x::{a, b}`: each braced name is a path of its own.
            let head: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let head = head.trim_end_matches(':');
            let join = |tail: &str| {
                if base.is_empty() {
                    tail.to_owned()
                } else if tail.is_empty() {
                    base.clone()
                } else {
                    format!("{base}::{tail}")
                }
            };
            out.push(join(head));
            if after[head.len()..].starts_with("::{") {
                let inner = &after[head.len() + 3..];
                let inner = &inner[..inner.find('}').unwrap_or(inner.len())];
                for name in inner.split(',') {
                    let name = name.trim().split(" as ").next().unwrap_or("").trim();
                    if !name.is_empty() && name != "self" {
                        out.push(join(&format!("{head}::{name}")));
                    }
                }
            }
        }
    }
    out
}

/// What `super` is in `module` (in `engine/attempt.rs` it is `engine`; in
/// `engine/mod.rs`, the crate root).
fn parent(module: &str) -> String {
    module
        .rsplit_once("::")
        .map(|(p, _)| p.to_owned())
        .unwrap_or_default()
}

/// The longest known module that `path` names.
fn resolve(path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let mut p = path.to_owned();
    loop {
        if modules.contains(&p) && !p.is_empty() {
            return Some(p);
        }
        match p.rsplit_once("::") {
            Some((head, _)) => p = head.to_owned(),
            None => return None,
        }
    }
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let modules: BTreeSet<String> = all.iter().map(|p| module_of(p)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in all.iter().filter(|p| !is_test_file(p)) {
        let module = module_of(path);
        let text = std::fs::read_to_string(path).expect("readable");
        let entry = edges.entry(module.clone()).or_default();
        for line in non_test(&text) {
            let t = line.trim_start();
            if t.starts_with("//") || t.starts_with("pub use") || t.starts_with("pub(crate) use") {
                // Doc links name modules without depending on them; re-exports of
                // children are how a parent presents them.
                continue;
            }
            for p in paths_in(line, &module) {
                if let Some(target) = resolve(&p, &modules) {
                    if target != module {
                        entry.insert(target);
                    }
                }
            }
        }
    }
    edges
}

#[test]
fn no_file_is_over_about_600_lines_of_non_test_code() {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let mut sizes: Vec<(usize, String)> = all
        .iter()
        .filter(|p| !is_test_file(p))
        .map(|p| {
            let text = std::fs::read_to_string(p).expect("readable");
            (non_test(&text).len(), module_of(p))
        })
        .collect();
    sizes.sort();
    let over: Vec<&(usize, String)> = sizes.iter().filter(|(n, _)| *n > MAX_LINES).collect();
    println!("largest modules (non-test lines):");
    for (n, m) in sizes.iter().rev().take(8) {
        println!("  {n:5} {m}");
    }
    assert!(over.is_empty(), "over {MAX_LINES} lines: {over:?}");
    assert!(
        sizes.len() > 30,
        "the walk found the modules: {}",
        sizes.len()
    );
}

#[test]
fn no_import_cycles_between_modules() {
    let edges = graph();
    assert!(
        edges
            .get("engine::attempt")
            .is_some_and(|e| e.contains("engine::shared")),
        "the scan sees imports: {:?}",
        edges.get("engine::attempt")
    );
    if let Some(cycle) = find_cycle(&edges) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

/// A cycle in `edges`, if there is one (depth-first search for a back edge).
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(m.to_owned());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.to_owned());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        if let Some(cycle) = visit(m, edges, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn the_scanner_finds_a_planted_cycle() {
    // The cycle check must be able to fail: a path parsed like the real ones.
    let modules: BTreeSet<String> = ["a", "b", "b::c"].iter().map(|s| s.to_string()).collect();
    let found: Vec<String> = paths_in("use crate::b::{c::X, Y as Z};", "a")
        .iter()
        .filter_map(|p| resolve(p, &modules))
        .collect();
    assert_eq!(found, vec!["b", "b::c", "b"]);
    assert_eq!(
        paths_in(
            "use super::shared::Shared; // crate::not::this",
            "engine::attempt"
        ),
        vec!["engine::shared::Shared".to_owned()]
    );
    let planted: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a")]
        .iter()
        .map(|(f, t)| (f.to_string(), BTreeSet::from([t.to_string()])))
        .collect();
    assert!(find_cycle(&planted).is_some(), "a planted cycle is found");
    let dag: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c")]
        .iter()
        .map(|(f, t)| (f.to_string(), BTreeSet::from([t.to_string()])))
        .collect();
    assert!(find_cycle(&dag).is_none());
}
