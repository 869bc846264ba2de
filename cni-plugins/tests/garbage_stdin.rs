//! Each built plugin, fed garbage on stdin, answers as the spec says a plugin fails (SPEC.md, "Error"): an error
//! JSON with a code and a message on stdout and a non-zero exit, not a panic. Garbage never reaches a verb, so
//! nothing on the host is touched.

use std::io::Write;
use std::process::{Command, Stdio};

use proptest::prelude::*;
use serde_json::Value;

const PLUGINS: &[&str] = &[
    env!("CARGO_BIN_EXE_bridge"),
    env!("CARGO_BIN_EXE_host-local"),
    env!("CARGO_BIN_EXE_loopback"),
    env!("CARGO_BIN_EXE_portmap"),
];

/// Runs `bin` with the CNI environment of `command` (none when `None`) and `stdin`: (stdout, stderr, exit code).
fn run(bin: &str, command: Option<&str>, stdin: &[u8]) -> (String, String, Option<i32>) {
    let mut cmd = Command::new(bin);
    cmd.env_clear().stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(c) = command {
        cmd.envs([
            ("CNI_COMMAND", c),
            ("CNI_CONTAINERID", "garbage"),
            ("CNI_NETNS", "/nonexistent/netns"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/nonexistent"),
        ]);
    }
    let mut child = cmd.spawn().unwrap();
    // The plugin may answer before reading all of its input.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code(),
    )
}

fn garbage() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 1..512).prop_filter("not blank", |b| !b.iter().all(u8::is_ascii_whitespace)),
        Just(b"{".to_vec()),
        Just(b"[]".to_vec()),
        Just(b"null".to_vec()),
        Just(br#"{"cniVersion":"1.0.0","name":"n","type":"x","ipam":"#.to_vec()),
        Just(format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn garbage_on_stdin_is_a_cni_error(
        stdin in garbage(),
        command in prop::option::of(prop::sample::select(&["ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC", "NOPE"][..])),
    ) {
        for bin in PLUGINS {
            let (stdout, stderr, code) = run(bin, command, &stdin);
            prop_assert!(!stderr.contains("panicked"), "{}: {}", bin, stderr);
            prop_assert!(code.is_some_and(|c| c != 0), "{}: exit {:?}", bin, code);
            let v: Value = serde_json::from_str(&stdout).map_err(|e| TestCaseError::fail(format!("{bin}: {e}: {stdout:?}")))?;
            prop_assert!(v["code"].as_u64().is_some_and(|c| c > 0), "{}: {}", bin, stdout);
            prop_assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{}: {}", bin, stdout);
            prop_assert!(v["cniVersion"].is_string(), "{}: {}", bin, stdout);
            // The spec's codes for these: a bad environment (4) or content that does not decode (6).
            let want = if command.is_some_and(|c| c != "NOPE") { 6 } else { 4 };
            prop_assert_eq!(v["code"].as_u64(), Some(want), "{}: {}", bin, stdout);
        }
    }
}
