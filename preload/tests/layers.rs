//! The library's modules depend one way: the hooks on the engine, the
//! engine on the SIP thread, the SIP thread on the mover, the mover on the
//! stream table, the table on the data path, and all of them on the few
//! leaves below (descriptor kinds, real libc, sockets). This test reads
//! the sources and fails on any cycle among the modules, naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name → the modules its source refers to as `crate::name`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut g = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let (name, text) = if path.is_dir() {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name == "bin" {
                continue;
            }
            // A directory module: all its files are the module.
            let mut text = String::new();
            for f in std::fs::read_dir(&path).unwrap() {
                let f = f.unwrap().path();
                if f.extension().is_some_and(|e| e == "rs") {
                    text += &std::fs::read_to_string(f).unwrap();
                }
            }
            (name, text)
        } else if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            if name == "lib" {
                continue;
            }
            (name, std::fs::read_to_string(&path).unwrap())
        } else {
            continue;
        };
        let mut deps = BTreeSet::new();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let dep: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !dep.is_empty() && dep != name {
                deps.insert(dep);
            }
        }
        g.insert(name, deps);
    }
    g
}

/// A cycle through `node`, if any, as the path of modules.
fn cycle(
    g: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|p| p == node) {
        let mut c = path[at..].to_vec();
        c.push(node.to_string());
        return Some(c);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_string());
    for dep in g.get(node).into_iter().flatten() {
        if let Some(c) = cycle(g, dep, path, done) {
            return Some(c);
        }
    }
    path.pop();
    done.insert(node.to_string());
    None
}

#[test]
fn the_modules_depend_one_way() {
    let g = graph();
    assert!(g.len() > 10, "read too few modules: {:?}", g.keys());
    let mut done = BTreeSet::new();
    for node in g.keys() {
        if let Some(c) = cycle(&g, node, &mut Vec::new(), &mut done) {
            panic!(
                "modules depend on each other in a circle: {}",
                c.join(" -> ")
            );
        }
    }
}

#[test]
fn the_move_layers_are_in_order() {
    let g = graph();
    // Each must not reach any that come before it.
    let order = ["hooks", "engine", "sip", "mover", "table", "stream", "sock"];
    for (i, m) in order.iter().enumerate() {
        for above in &order[..i] {
            assert!(
                !g.get(*m).is_some_and(|d| d.contains(*above)),
                "{m} refers to {above}, a layer above it"
            );
        }
    }
    for m in ["table", "stream", "sock", "mobility", "epolls"] {
        for forbidden in ["sip", "status"] {
            assert!(
                !g.get(m).is_some_and(|d| d.contains(forbidden)),
                "{m} refers to {forbidden}: the stream table and below know nothing of SIP and start no threads"
            );
        }
    }
}
