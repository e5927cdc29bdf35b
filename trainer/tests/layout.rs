//! The shape of the crate, checked: no import cycle among the modules of any folder of
//! `trainer/src` (a child module may use its parent's items; siblings may not use each other
//! both ways), and the run loop readable at a glance (under 300 lines).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every source file with its module path (`tasks::image`, `svgd::host`; `""` for lib.rs).
fn modules(dir: &Path, prefix: &str, out: &mut BTreeMap<String, PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let join = |name: &str| if prefix.is_empty() { name.to_string() } else { format!("{prefix}::{name}") };
        if path.is_dir() {
            modules(&path, &join(&stem), out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let name = match stem.as_str() {
                "lib" | "mod" => prefix.to_string(),
                _ => join(&stem),
            };
            out.insert(name, path);
        }
    }
}

/// The module paths `source` names (after `crate::` or `super::`), resolved from `module`.
fn references(module: &str, source: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let sup = module.rsplit_once("::").map_or(String::new(), |(p, _)| p.to_string());
    let mut out = BTreeSet::new();
    let code: String = source.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    for (anchor, base) in [("crate::", String::new()), ("super::", sup)] {
        let mut rest = code.as_str();
        while let Some(i) = rest.find(anchor) {
            rest = &rest[i + anchor.len()..];
            let mut paths = Vec::new();
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                paths.extend(group[..end].split(',').map(|p| p.trim().to_string()));
            } else {
                let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
                paths.push(rest[..end].to_string());
            }
            for p in paths {
                let mut full = base.clone();
                for part in p.split("::").map(str::trim).filter(|s| !s.is_empty() && *s != "self") {
                    let next = if full.is_empty() { part.to_string() } else { format!("{full}::{part}") };
                    if !known.contains(&next) {
                        break;
                    }
                    full = next;
                }
                if !full.is_empty() && full != module {
                    out.insert(full);
                }
            }
        }
    }
    out
}

#[test]
fn no_module_uses_a_sibling_that_uses_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    modules(&src, "", &mut files);
    let known: BTreeSet<String> = files.keys().cloned().collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, path) in &files {
        let text = std::fs::read_to_string(path).unwrap();
        // Tests may reach anywhere.
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        edges.insert(module.clone(), references(module, text, &known));
    }
    // For each folder, the graph among its children: A → B when A's subtree names B's subtree.
    let parent_of = |m: &str| m.rsplit_once("::").map_or(String::new(), |(p, _)| p.to_string());
    let child_of = |folder: &str, m: &str| -> Option<String> {
        let rest = if folder.is_empty() { Some(m) } else { m.strip_prefix(folder).and_then(|r| r.strip_prefix("::")) }?;
        let first = rest.split("::").next().filter(|s| !s.is_empty())?;
        Some(if folder.is_empty() { first.to_string() } else { format!("{folder}::{first}") })
    };
    let folders: BTreeSet<String> = known.iter().map(|m| parent_of(m)).collect();
    let mut cycles = Vec::new();
    for folder in &folders {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, tos) in &edges {
            let Some(a) = child_of(folder, from) else { continue };
            for to in tos {
                if let Some(b) = child_of(folder, to).filter(|b| *b != a) {
                    graph.entry(a.clone()).or_default().insert(b);
                }
            }
        }
        // Depth-first search for a back edge.
        fn visit(
            n: &str,
            g: &BTreeMap<String, BTreeSet<String>>,
            stack: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(i) = stack.iter().position(|s| s == n) {
                let mut c = stack[i..].to_vec();
                c.push(n.to_string());
                return Some(c);
            }
            if done.contains(n) {
                return None;
            }
            stack.push(n.to_string());
            for m in g.get(n).into_iter().flatten() {
                if let Some(c) = visit(m, g, stack, done) {
                    return Some(c);
                }
            }
            stack.pop();
            done.insert(n.to_string());
            None
        }
        let mut done = BTreeSet::new();
        for n in graph.keys() {
            if let Some(c) = visit(n, &graph, &mut Vec::new(), &mut done) {
                cycles.push(c.join(" → "));
                break;
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
    // The checker sees real edges (a broken parser would pass vacuously).
    assert!(edges["run"].contains("tasks") && edges["tasks::toy"].contains("step"), "{:?}", edges["run"]);
}

#[test]
fn the_run_loop_stays_short() {
    let run = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/run.rs")).unwrap();
    let lines = run.lines().count();
    assert!(lines < 300, "src/run.rs has {lines} lines");
}
