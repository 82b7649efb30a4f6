//! The `dwcp` binary end to end: exit codes, output streams, files it writes.

// Integration tests are their own crate: the lint is for tests inside library code.
#![allow(clippy::tests_outside_test_module)]

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output, Stdio};

const DWCP: &str = env!("CARGO_BIN_EXE_dwcp");

fn dwcp(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(DWCP)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dwcp");
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn example_piped_into_check_passes() {
    let example = dwcp(&["config", "example"], None);
    assert!(example.status.success());
    let check = dwcp(&["config", "check", "-"], Some(&text(&example.stdout)));
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
    let out = text(&check.stdout);
    assert!(out.contains("node        site-a-gw1"), "{out}");
    assert!(out.ends_with("<stdin>: OK\n"), "{out}");
    // The summary never shows the private key.
    let private = text(&example.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix("private_key = \"")
                .map(|k| k.trim_end_matches('"').to_owned())
        })
        .unwrap();
    assert!(!out.contains(&private));
}

#[test]
fn check_names_the_line_of_a_byte_that_is_not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, b"name = \"gw1\"\n# Z\xFCrich\n").unwrap();
    let check = dwcp(&["config", "check", path.to_str().unwrap()], None);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check.stderr));
    let err = text(&check.stderr);
    assert!(
        err.contains("node.toml:2:4: (document): not UTF-8 (byte 0xFC)"),
        "{err}"
    );
}

#[test]
fn examples_have_fresh_keys() {
    let a = text(&dwcp(&["config", "example"], None).stdout);
    let b = text(&dwcp(&["config", "example"], None).stdout);
    assert_ne!(a, b, "two examples must not share a private key");
}

#[test]
fn check_prints_every_error_and_exits_1() {
    let example = text(&dwcp(&["config", "example"], None).stdout);
    let bad = example
        .replace("log_level = \"info\"", "log_level = \"verbose\"")
        .replace("dataplane = [1, 2, 3]", "dataplane = [0, 2, 3]")
        .replace("max_delay_us = 50", "max_delay_us = 0");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, bad).unwrap();
    let out = dwcp(&["config", "check", path.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "{err}");
    let file = path.display().to_string();
    assert!(
        lines[0].starts_with(&format!("{file}:8:13: log_level: expected one of")),
        "{err}"
    );
    assert!(
        lines[1].starts_with(&format!("{file}:21:14: cores.dataplane[0]: core 0 is both")),
        "{err}"
    );
    assert!(
        lines[2].contains("offload.max_delay_us: 0 is out of range: must be 1 to 10000"),
        "{err}"
    );
    assert_eq!(lines[3], format!("{file}: 3 problem(s) found"));
    assert!(out.stdout.is_empty());
}

#[test]
fn unreadable_file_exits_3() {
    let out = dwcp(&["config", "check", "/nonexistent/dwcp.toml"], None);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/dwcp.toml"));
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(dwcp(&["config", "chekc"], None).status.code(), Some(2));
    assert_eq!(dwcp(&["--help"], None).status.code(), Some(0));
}

#[test]
fn keygen_writes_private_key_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.key");
    let p = path.to_str().unwrap();
    let out = dwcp(&["keygen", "--private-key", p], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let public = text(&out.stdout);
    assert_eq!(public.trim().len(), 44, "one base64 key: {public}");
    // The public key printed is the one derived from the file.
    let derived = dwcp(&["pubkey", p], None);
    assert_eq!(text(&derived.stdout), public);
    // No silent overwrite.
    let again = dwcp(&["keygen", "--private-key", p], None);
    assert_eq!(again.status.code(), Some(3));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let forced = dwcp(&["keygen", "--private-key", p, "--force"], None);
    assert!(forced.status.success());
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_ne!(text(&forced.stdout), public);
}

#[test]
fn keygen_to_stdout_prints_a_matching_pair() {
    let out = text(&dwcp(&["keygen"], None).stdout);
    let field = |name: &str| {
        out.lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{name} = \""))
                    .map(|v| v.trim_end_matches('"').to_owned())
            })
            .unwrap()
    };
    let derived = dwcp(&["pubkey", "-"], Some(&field("private_key")));
    assert_eq!(text(&derived.stdout).trim(), field("public_key"));
}

#[test]
fn docs_md_is_up_to_date() {
    let out = dwcp(&["config", "docs"], None);
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md")).unwrap();
    assert!(
        text(&out.stdout) == committed,
        "docs/config.md is stale: run `cargo run -p dwcp-cli --bin dwcp -- config docs > docs/config.md`"
    );
}

#[test]
fn schema_is_json() {
    let out = dwcp(&["config", "schema"], None);
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        schema["additionalProperties"],
        serde_json::Value::Bool(false)
    );
}
