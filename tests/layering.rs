//! Layering rules, checked on the source text:
//! - the policy core (`src/policy/**`) and the pricing rules (`src/pricing/**`) name no
//!   Kubernetes crate (`kube`, `kube_*`, `k8s_openapi`), so they can be read, tested and reused
//!   without one; the adapter edge (`src/api/convert.rs`) converts;
//! - the data plane (`src/gateway/**`) imports neither the operator (`crate::controller`) nor
//!   the CRD types (`crate::api`): it depends on the config document and the pricing rules.
//!
//! A path counts wherever it appears outside a comment (`use`, a qualified path, a macro).

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Files under `rel` (a directory, or a single file `rel.rs`).
fn module_files(rel: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    let dir = root.join(rel);
    if dir.is_dir() {
        rust_files(&dir, &mut files);
    }
    let single = root.join(format!("{rel}.rs"));
    if single.is_file() {
        files.push(single);
    }
    assert!(!files.is_empty(), "no source found for {rel}");
    files.sort();
    files
}

/// Code of a line without its `//` comment (string literals holding `//` are rare enough here).
fn code(line: &str) -> &str {
    line.find("//").map_or(line, |i| &line[..i])
}

/// Every `file:line: text` under `rel` whose code contains one of `needles`.
fn offending(rel: &str, needles: &[&str], is_path: impl Fn(&str, &str) -> bool) -> Vec<String> {
    let mut hits = Vec::new();
    for file in module_files(rel) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let c = code(line);
            if needles.iter().any(|needle| is_path(c, needle)) {
                hits.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    hits
}

/// Whether `code` mentions the crate `name` as a path: `name::`, `name_xyz::`, or `use name`.
fn names_crate(code: &str, name: &str) -> bool {
    let bytes = code.as_bytes();
    code.match_indices(name).any(|(i, _)| {
        let before_ok = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &code[i + name.len()..];
        let rest = rest.trim_start_matches(|ch: char| ch.is_ascii_alphanumeric() || ch == '_');
        before_ok && (rest.starts_with("::") || rest.starts_with(';') || rest.starts_with(" as "))
    })
}

#[test]
fn the_policy_core_and_pricing_name_no_kubernetes_crate() {
    for module in ["src/policy", "src/pricing"] {
        let hits = offending(module, &["kube", "k8s_openapi"], names_crate);
        assert!(hits.is_empty(), "{module} must not depend on Kubernetes crates:\n{}", hits.join("\n"));
    }
}

#[test]
fn the_checker_finds_what_it_looks_for() {
    assert!(names_crate("use kube::Resource;", "kube"));
    assert!(names_crate("fn of<K: kube::Resource>(k: &K)", "kube"));
    assert!(names_crate("use kube_runtime::watcher;", "kube"));
    assert!(names_crate("let t: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;", "k8s_openapi"));
    assert!(!names_crate("fn durations_format_like_kubernetes() {", "kube"));
    assert!(!names_crate("let cube = 3;", "kube"));
    assert_eq!(code("let x = 1; // kube::Api"), "let x = 1; ");
}

#[test]
fn the_gateway_imports_neither_the_controller_nor_the_crds() {
    let hits = offending("src/gateway", &["crate::controller", "crate::api"], |c, n| c.contains(n));
    assert!(hits.is_empty(), "src/gateway must not import the operator or the CRD types:\n{}", hits.join("\n"));
}
