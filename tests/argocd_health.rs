//! The Argo CD health check of deploy/argocd: `health.lua` run the way Argo CD runs it (the live
//! object in the global `obj`, the script returns a table with `status` and `message`) by the
//! `lua5.4` interpreter on every fixture of `health_test.yaml`, plus a drift check that both keys
//! of the `argocd-cm.yaml` snippet carry `health.lua` verbatim.
//!
//! The fixtures are YAML (Argo's `testdata/` convention); they are turned into a Lua table
//! literal here. Integers stay integers (Argo's gopher-lua prints whole float64 numbers without a
//! fraction, as Lua 5.4 prints integers), `null` becomes `nil`. The Lua tests skip, saying so,
//! when `lua5.4` is not installed (`apt-get install lua5.4`), a failure where
//! `TOLLGATE_CI_PROVIDES` lists `lua` (tests/common/skip.rs); the drift check always runs.

#[path = "common/skip.rs"]
mod skip;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/argocd")
}

fn yaml(path: &PathBuf) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
    out.push('"');
    out
}

/// A JSON value as a Lua expression.
fn lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(a) => format!("{{{}}}", a.iter().map(lua).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter().map(|(k, v)| format!("[{}] = {}", lua_string(k), lua(v))).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Runs health.lua on `obj`: (status, message).
fn health(obj: &Value) -> (String, String) {
    let script = dir().join("health.lua");
    let program = format!(
        "obj = {}\nlocal hs = dofile({})\nio.write(tostring(hs.status), \"\\n\", tostring(hs.message))\n",
        lua(obj),
        lua_string(&script.to_string_lossy())
    );
    let mut child = Command::new("lua5.4")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lua5.4");
    child.stdin.take().unwrap().write_all(program.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "lua5.4 failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_string(), message.to_string())
}

/// Whether `lua5.4` runs here; when not, skips `test`.
fn lua_or_skip(test: &str) -> bool {
    let ok = Command::new("lua5.4").arg("-v").output().is_ok_and(|o| o.status.success());
    if !ok {
        skip::skip(skip::LUA, test, "lua5.4 is not installed (apt-get install lua5.4)");
    }
    ok
}

#[test]
fn health_lua_on_every_fixture() {
    if !lua_or_skip("health_lua_on_every_fixture") {
        return;
    }
    let tests = yaml(&dir().join("health_test.yaml"));
    let tests = tests["tests"].as_array().expect("health_test.yaml: tests is a list");
    assert!(tests.len() >= 10, "{} fixtures", tests.len());
    let mut seen = std::collections::BTreeSet::new();
    for t in tests {
        let input = t["inputPath"].as_str().expect("inputPath");
        let obj = yaml(&dir().join(input));
        let want = (
            t["healthStatus"]["status"].as_str().expect("healthStatus.status").to_string(),
            t["healthStatus"]["message"].as_str().expect("healthStatus.message").to_string(),
        );
        let got = health(&obj);
        assert_eq!(got, want, "{input}");
        println!("{input}: {} / {}", got.0, got.1);
        seen.insert((obj["kind"].as_str().unwrap_or_default().to_string(), got.0));
    }
    // Every status is exercised for both kinds.
    for kind in ["ModelRoute", "ProviderBudget"] {
        for status in ["Healthy", "Progressing", "Degraded"] {
            assert!(seen.contains(&(kind.to_string(), status.to_string())), "no {kind} fixture is {status}");
        }
    }
}

#[test]
fn lua_literals_survive_quoting() {
    if !lua_or_skip("lua_literals_survive_quoting") {
        return;
    }
    // A message with quotes, backslashes, a newline and non-ASCII text comes back unchanged.
    let msg = "a \"quoted\" \\ path\nand ünïcode";
    let obj = serde_json::json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "False", "message": msg}]}});
    assert_eq!(health(&obj), ("Degraded".to_string(), msg.to_string()));
}

#[test]
fn argocd_cm_snippet_carries_health_lua() {
    let script = std::fs::read_to_string(dir().join("health.lua")).unwrap();
    let cm = yaml(&dir().join("argocd-cm.yaml"));
    for kind in ["ModelRoute", "ProviderBudget"] {
        let key = format!("resource.customizations.health.tollgate.dev_{kind}");
        let got = cm["data"][&key].as_str().unwrap_or_else(|| panic!("argocd-cm.yaml: data.{key} is missing"));
        assert_eq!(got, script, "argocd-cm.yaml data.{key} differs from health.lua: regenerate the snippet");
    }
}
