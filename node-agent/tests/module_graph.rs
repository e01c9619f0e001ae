//! The agent's top-level modules import each other without a cycle, and `net` (the ground
//! floor: address family, MAC, device names, VXLAN port, route protocol) imports nothing from
//! the crate.
//!
//! A cycle once ran annotations -> config -> dataplane -> annotations and dataplane <->
//! firewall, because the basic types lived in `dataplane::desired`: none of those modules
//! could be read, tested or moved without the others. This test keeps it from coming back.
//!
//! It reads `src/**/*.rs` (not `main.rs`: that is the binary's crate root, where `crate::`
//! means the binary) and takes an edge from module `a` to module `b` for every path that
//! reaches `b` from a file of `a`: `crate::b::...`, the groups of `use crate::{b, c::d}`, and
//! `super::...` chains that climb out of `a`, wherever they stand (in `use` items, function
//! bodies, `#[cfg(test)]` modules: tests count too, they must build with the crate).
//! Comments and string literals are skipped. A folder (`dataplane/`, with its `mod.rs`) is
//! one module.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The module at the bottom of the graph.
const GROUND_FLOOR: &str = "net";

/// Edges of the top-level module graph: from -> to -> where (first `file:line` seen).
type Graph = BTreeMap<String, BTreeMap<String, String>>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
}

/// Rust tokens with their line, without comments, string, byte-string and char literals
/// (whose content could look like a path). Lifetimes become identifiers, which is harmless.
fn tokens(src: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = src.chars().collect();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    let ident_start = |ch: char| ch == '_' || ch.is_alphabetic();
    let ident_char = |ch: char| ch == '_' || ch.is_alphanumeric();
    // Skips a "..." literal starting at the quote at `i`; returns the index after it.
    let skip_string = |mut i: usize, line: &mut usize, raw_hashes: Option<usize>| -> usize {
        i += 1;
        while i < c.len() {
            match (c[i], raw_hashes) {
                ('\n', _) => *line += 1,
                ('\\', None) => {
                    i += 1;
                    if c.get(i) == Some(&'\n') {
                        *line += 1;
                    }
                }
                ('"', None) => return i + 1,
                ('"', Some(n)) if c[i + 1..].iter().take(n).filter(|&&h| h == '#').count() == n => {
                    return i + 1 + n
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if ch == '"' {
            i = skip_string(i, &mut line, None);
        } else if ch == '\'' {
            // A char literal ('a', '\n', '\u{1F600}') or a lifetime ('a, 'static).
            if next == Some('\\') {
                // Past the quote, the backslash and the escaped char (which may be a quote).
                i += 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if ident_start(ch) {
            let start = i;
            while i < c.len() && ident_char(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let hashes = c[i..].iter().take_while(|&&h| h == '#').count();
            match (word.as_str(), c.get(i + hashes)) {
                ("b", Some('"')) if hashes == 0 => i = skip_string(i, &mut line, None),
                ("b", Some('\'')) if hashes == 0 => {
                    i += 1;
                    if c.get(i) == Some(&'\\') {
                        i += 1;
                    }
                    while i + 1 < c.len() && c[i + 1] != '\'' {
                        i += 1;
                    }
                    i += 2;
                }
                ("r" | "br" | "cr", Some('"')) => {
                    i = skip_string(i + hashes, &mut line, Some(hashes))
                }
                // A raw identifier: r#type.
                ("r", Some(&h)) if hashes == 1 && ident_start(h) => {}
                _ => out.push((Tok::Ident(word), line)),
            }
        } else if ch == ':' && next == Some(':') {
            out.push((Tok::PathSep, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// The first segments a path reaches from `toks[i]` on: `b` for `b::c`, `b` and `d` for
/// `{b, d::e}`; nothing for `self`, `super` or a glob.
fn first_segments(toks: &[(Tok, usize)], i: usize) -> Vec<String> {
    match toks.get(i).map(|t| &t.0) {
        Some(Tok::Ident(s)) if s != "self" && s != "super" => vec![s.clone()],
        Some(Tok::Punct('{')) => {
            let (mut depth, mut at_item, mut out) = (0, true, Vec::new());
            for (t, _) in &toks[i..] {
                match t {
                    Tok::Punct('{') => {
                        depth += 1;
                        at_item = depth == 1;
                    }
                    Tok::Punct('}') => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    Tok::Punct(',') if depth == 1 => at_item = true,
                    Tok::Ident(s) if at_item => {
                        if s != "self" {
                            out.push(s.clone());
                        }
                        at_item = false;
                    }
                    _ => at_item = false,
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

/// The top-level modules the file at module path `module` (`[]` for the crate root,
/// `["dataplane", "netlink", "read"]` for `src/dataplane/netlink/read.rs`) reaches, with the
/// line of each path.
fn references(module: &[String], src: &str) -> Vec<(String, usize)> {
    let toks = tokens(src);
    let ident = |i: usize, w: &str| matches!(toks.get(i), Some((Tok::Ident(s), _)) if s == w);
    let sep = |i: usize| matches!(toks.get(i), Some((Tok::PathSep, _)));
    // One entry per open brace: whether it opened an inline `mod name {` (then its name).
    let mut braces: Vec<Option<String>> = Vec::new();
    let mut out = Vec::new();
    for (i, (tok, line)) in toks.iter().enumerate() {
        match tok {
            Tok::Punct('{') => {
                let before = |n: usize| i.checked_sub(n).map(|j| &toks[j].0);
                let inline_mod = match (before(2), before(1)) {
                    (Some(Tok::Ident(m)), Some(Tok::Ident(name))) if m == "mod" => {
                        Some(name.clone())
                    }
                    _ => None,
                };
                braces.push(inline_mod);
            }
            Tok::Punct('}') => {
                braces.pop();
            }
            Tok::Ident(w) if w == "crate" && sep(i + 1) => {
                let macro_var = i > 0 && toks[i - 1].0 == Tok::Punct('$');
                if !macro_var {
                    out.extend(first_segments(&toks, i + 2).into_iter().map(|s| (s, *line)));
                }
            }
            // The start of a `super::super::...` chain (not its continuation).
            Tok::Ident(w) if w == "super" && sep(i + 1) && !(i > 0 && sep(i - 1)) => {
                let mut n = 0;
                while ident(i + 2 * n, "super") && sep(i + 2 * n + 1) {
                    n += 1;
                }
                let depth = module.len() + braces.iter().flatten().count();
                // Climbing to the crate root: the next segment is a top-level module.
                // Anything shallower stays inside this file's own top-level module.
                if n == depth {
                    out.extend(
                        first_segments(&toks, i + 2 * n)
                            .into_iter()
                            .map(|s| (s, *line)),
                    );
                }
            }
            _ => {}
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` -> `[a, b]`; `src/a/mod.rs` -> `[a]`; `src/lib.rs` -> `[]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts
}

fn graph_of(src_dir: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src_dir, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let rel = file.strip_prefix(src_dir).unwrap();
        if rel == Path::new("main.rs") || rel.starts_with("bin") {
            continue;
        }
        let module = module_path(rel);
        let Some(top) = module.first() else { continue };
        graph.entry(top.clone()).or_default();
        let src = fs::read_to_string(&file).unwrap();
        for (to, line) in references(&module, &src) {
            if &to != top {
                graph
                    .entry(top.clone())
                    .or_default()
                    .entry(to)
                    .or_insert_with(|| format!("{}:{line}", rel.display()));
            }
        }
    }
    graph
}

/// One cycle of the graph, as the modules along it (the first repeated at the end), if any.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        graph: &Graph,
        node: &str,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flat_map(|e| e.keys()) {
            if let Some(c) = visit(graph, next, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(graph, n, &mut Vec::new(), &mut done))
}

fn describe(graph: &Graph, cycle: &[String]) -> String {
    cycle
        .windows(2)
        .map(|w| format!("  {} -> {}  ({})", w[0], w[1], graph[&w[0]][&w[1]]))
        .collect::<Vec<_>>()
        .join("\n")
}

fn agent_graph() -> Graph {
    graph_of(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn top_level_modules_form_no_cycle() {
    let graph = agent_graph();
    // The reader works: known edges are seen, so an empty graph cannot pass as acyclic.
    assert!(
        graph["backend"].contains_key("dataplane") && graph["agent"].contains_key("backend"),
        "the module graph misses known edges: {graph:#?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle between top-level modules of node-agent/src: {}\n{}\nbreak it by \
             moving the smallest thing (often a basic type, into `{GROUND_FLOOR}`) down",
            cycle.join(" -> "),
            describe(&graph, &cycle)
        );
    }
}

#[test]
fn the_ground_floor_imports_nothing_from_the_crate() {
    let graph = agent_graph();
    for module in [GROUND_FLOOR, "wg_key"] {
        let edges = graph
            .get(module)
            .unwrap_or_else(|| panic!("no module `{module}` in node-agent/src"));
        assert!(
            edges.is_empty(),
            "`{module}` must import nothing from the crate, but reaches {edges:#?}"
        );
    }
}

#[test]
fn reader_sees_groups_nested_paths_and_climbs_but_not_comments_or_strings() {
    let src = r##"
        use crate::{a, b::c, d::{e, f}, self};
        use super::super::g;
        pub(crate) fn x() {
            let _ = crate::h::run();
            // crate::comment::no
            /* crate::block /* nested */ crate::no */
            let _ = "crate::string::no";
            let _ = r#"crate::raw::no " crate::raw::no"#;
            let _ = '"'; let _ = b'"';
            macro_rules! m { () => { $crate::macro_var::no } }
        }
        fn y<'a>(_: &'a str) { let _ = crate :: i :: j; }
        #[cfg(test)]
        mod tests {
            use super::super::k;
            use super::super::super::l;
        }
    "##;
    let module = ["top".to_string(), "file".to_string()];
    let found: Vec<String> = references(&module, src).into_iter().map(|r| r.0).collect();
    assert_eq!(found, ["a", "b", "d", "g", "h", "i", "l"]);
    // A folder's mod.rs is the folder; the crate root is no module.
    assert_eq!(module_path(Path::new("dataplane/mod.rs")), ["dataplane"]);
    assert_eq!(module_path(Path::new("a/b.rs")), ["a", "b"]);
    assert!(module_path(Path::new("lib.rs")).is_empty());
}

#[test]
fn cycles_are_found_and_named() {
    let mut graph = Graph::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "d"), ("a", "d")] {
        graph
            .entry(from.into())
            .or_default()
            .insert(to.into(), format!("{from}.rs:1"));
    }
    assert_eq!(find_cycle(&graph), None);
    graph
        .entry("d".into())
        .or_default()
        .insert("b".into(), "d.rs:7".into());
    let cycle = find_cycle(&graph).expect("d -> b closes a cycle");
    assert_eq!(cycle, ["b", "c", "d", "b"]);
    assert!(describe(&graph, &cycle).contains("d -> b  (d.rs:7)"));
}
