//! The agent's folders form layers, top to bottom, and no module imports one above its own layer: the picture in
//! `docs/layers.md` is generated from the code by this test, and the test fails when an arrow runs back up or the
//! picture is stale. `RKUBELET_WRITE_LAYERS=1 cargo test -p rkubelet-tests --test layers` writes it anew.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top to bottom. A module may use modules of its own layer (never in a cycle) and of the layers below.
const LAYERS: &[(&str, &[&str])] = &[
    ("the top: pod manager, workers, sources, admission, start-up", &["kubelet"]),
    ("node-wide services", &["server", "node", "nodeshutdown"]),
    ("the executor of planned actions, configuration", &["kuberuntime", "config"]),
    ("volume manager, probe workers, eviction manager", &["volumes", "probes", "eviction"]),
    ("status manager and the pod store (probe results land here)", &["status"]),
    (
        "pod cache, pure decisions, container manager, stats, container logs, image GC",
        &["pleg", "pods", "cm", "stats", "logs", "images"],
    ),
    ("the API server's client", &["api"]),
    ("the CRI client", &["runtime"]),
    ("the ground: shared pod vocabulary", &["kubetypes"]),
];

fn agent_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/src")
}

/// The module path of a file under `agent/src` (`kubelet/worker.rs` → `["kubelet", "worker"]`).
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib" || l == "main") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let path = e.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// Modules declared `#[cfg(test)] mod name;`: test code, whose imports are not the module's.
fn test_only_files(src: &Path, files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.windows(2) {
            let (attr, decl) = (pair[0].trim(), pair[1].trim());
            let Some(name) = decl.strip_prefix("mod ").and_then(|d| d.strip_suffix(';')) else { continue };
            if attr != "#[cfg(test)]" {
                continue;
            }
            let dir = if f.file_name().is_some_and(|n| n == "mod.rs" || n == "lib.rs") {
                f.parent().unwrap_or(src).to_owned()
            } else {
                f.with_extension("")
            };
            out.insert(dir.join(format!("{name}.rs")));
            out.insert(dir.join(name).join("mod.rs"));
        }
    }
    out
}

/// The code of a file without its inline `#[cfg(test)] mod … { … }` blocks and comments.
fn non_test_code(text: &str) -> String {
    let mut out = String::new();
    let mut skip_depth: Option<i64> = None;
    let mut depth: i64 = 0;
    let mut test_attr = false;
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let trimmed = code.trim();
        if skip_depth.is_none() && test_attr && trimmed.starts_with("mod ") && trimmed.ends_with('{') {
            skip_depth = Some(depth);
        }
        test_attr = trimmed == "#[cfg(test)]";
        depth += code.matches('{').count() as i64 - code.matches('}').count() as i64;
        match skip_depth {
            Some(d) if depth <= d => skip_depth = None,
            Some(_) => {}
            None => {
                out.push_str(code);
                out.push('\n');
            }
        }
    }
    out
}

/// The top-level modules each top-level module uses, through `crate::` or `super::` paths.
fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let src = agent_src();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let tests = test_only_files(&src, &files);
    // The binary's own modules (declared in main.rs: allocator settings, profiling) sit with main.rs, above the
    // library's layers.
    let main = std::fs::read_to_string(src.join("main.rs")).unwrap_or_default();
    let binary_modules: BTreeSet<String> = main
        .lines()
        .filter_map(|l| l.trim().strip_prefix("mod ").and_then(|m| m.strip_suffix(';')).map(str::to_owned))
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files.iter().filter(|f| !tests.contains(*f)) {
        let module = module_path(&src, f);
        let Some(top) = module.first().cloned() else { continue }; // lib.rs and main.rs sit above every layer
        if top == "main" || binary_modules.contains(&top) {
            continue;
        }
        let code = non_test_code(&std::fs::read_to_string(f).unwrap_or_default());
        let mut used = BTreeSet::new();
        let bytes = code.as_bytes();
        for (i, _) in code.match_indices("crate::") {
            if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':') {
                continue;
            }
            let rest = &code[i + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            used.insert(name);
        }
        for (i, _) in code.match_indices("super::") {
            if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':') {
                continue;
            }
            let mut n = 1;
            let mut rest = &code[i + "super::".len()..];
            while let Some(r) = rest.strip_prefix("super::") {
                n += 1;
                rest = r;
            }
            let base = module.len().saturating_sub(n);
            let name: String = if base == 0 {
                rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
            } else {
                module[0].clone()
            };
            used.insert(name);
        }
        used.retain(|m| !m.is_empty() && *m != top);
        edges.entry(top).or_default().extend(used);
    }
    edges
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&module))
}

fn picture(edges: &BTreeMap<String, BTreeSet<String>>) -> String {
    let mut out = String::from(
        "# The agent's layers\n\nGenerated from the code by `tests/tests/layers.rs` (which fails when this file is stale or an \
         arrow runs back up): `RKUBELET_WRITE_LAYERS=1 cargo test -p rkubelet-tests --test layers`.\n\n\
         Each folder of `agent/src` by layer, top to bottom, with the folders it uses. A folder uses only its own layer \
         and the layers below; `main.rs` (flags and start-up) and its own modules sit above them all.\n\n```\n",
    );
    for (i, (what, modules)) in LAYERS.iter().enumerate() {
        out.push_str(&format!("── {} ── {what}\n", i + 1));
        for m in modules.iter() {
            let uses: Vec<String> = edges
                .get(*m)
                .into_iter()
                .flatten()
                .map(|u| match layer_of(u) {
                    Some(l) if l == i => format!("{u}(=)"),
                    _ => u.clone(),
                })
                .collect();
            let line =
                if uses.is_empty() { format!("   {m}") } else { format!("   {m:<12} ──▶ {}", uses.join(" ")) };
            out.push_str(&line);
            out.push('\n');
        }
    }
    out.push_str("```\n\n`(=)` marks a use within the same layer.\n");
    out
}

#[test]
fn no_module_uses_a_layer_above_its_own() {
    let edges = edges();
    let mut wrong = Vec::new();
    for (from, tos) in &edges {
        let Some(lf) = layer_of(from) else {
            wrong.push(format!("{from} is in no layer: add it to LAYERS"));
            continue;
        };
        for to in tos {
            match layer_of(to) {
                None => wrong.push(format!("{to} (used by {from}) is in no layer: add it to LAYERS")),
                Some(lt) if lt < lf => {
                    wrong.push(format!("{from} (layer {}) uses {to} (layer {}, above)", lf + 1, lt + 1))
                }
                Some(lt) if lt == lf && edges.get(to).is_some_and(|back| back.contains(from)) => {
                    wrong.push(format!("{from} and {to} use each other"))
                }
                Some(_) => {}
            }
        }
    }
    assert!(wrong.is_empty(), "arrows back up:\n{}", wrong.join("\n"));
}

#[test]
fn the_picture_in_docs_is_generated_from_the_code() {
    let want = picture(&edges());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/layers.md");
    if std::env::var_os("RKUBELET_WRITE_LAYERS").is_some() {
        std::fs::write(&path, &want).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(have == want, "docs/layers.md is stale; regenerate it:\n{want}");
}

#[test]
fn the_checker_sees_an_arrow_back_up() {
    // The parser the two tests above rely on: a `crate::` path and a `super::` path out of a folder are uses, a
    // test module's are not.
    let code = non_test_code(
        "use crate::kubelet::worker;\nfn f() { super::super::x(); }\n#[cfg(test)]\nmod tests {\n    use crate::server::X;\n}\n",
    );
    assert!(code.contains("crate::kubelet") && code.contains("super::super::x") && !code.contains("crate::server"));
    assert!(layer_of("kubetypes") > layer_of("kubelet"));
}
