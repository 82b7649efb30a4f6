//! The crate graph's rules (docs/architecture.md), checked on the resolved graph: the CLI
//! `dwcp-cli` is the top and nothing depends on it; the schema crate `dwcp-provisioning`,
//! `init` and the data plane link no CLI, image or QEMU code; `image`, `qemu` and `kernels`
//! know nothing of DWCP config.

// Integration tests are their own crate: the lint is for tests inside library code.
#![allow(clippy::tests_outside_test_module)]

use std::process::Command;

/// `cargo tree` of `pkg`'s normal (non-dev, non-build) build, one package a line in
/// `format`.
fn tree(pkg: &str, format: &str, extra: &[&str]) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .current_dir(dwcp_tests::workspace_root())
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-f",
            format,
            "-p",
            pkg,
        ])
        .args(extra)
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Every package `pkg` pulls in for its normal build.
fn normal_deps(pkg: &str, extra: &[&str]) -> Vec<String> {
    tree(pkg, "{p}", extra)
        .iter()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn assert_free_of(pkg: &str, extra: &[&str], forbidden: &[&str]) {
    let deps = normal_deps(pkg, extra);
    assert!(
        deps.iter().any(|d| d == pkg),
        "cargo tree did not list {pkg} itself: {deps:?}"
    );
    for f in forbidden {
        assert!(
            !deps.iter().any(|d| d == f),
            "{pkg} must not depend on {f}; it pulls in: {deps:?}"
        );
    }
}

const CLI_SIDE: &[&str] = &["dwcp-cli", "clap", "anyhow", "dwcp-image", "dwcp-qemu"];

#[test]
fn init_links_only_the_schema() {
    assert_free_of("dwcp-init", &[], CLI_SIDE);
    assert!(
        normal_deps("dwcp-init", &[])
            .iter()
            .any(|d| d == "dwcp-provisioning")
    );
}

#[test]
fn schema_library_has_no_cli() {
    assert_free_of("dwcp-provisioning", &[], CLI_SIDE);
    // Every feature too: no feature of the schema crate may bring the CLI side back.
    assert_free_of("dwcp-provisioning", &["--all-features"], CLI_SIDE);
}

/// Test support in `dwcp-kernels` (the suite, the simulated driver, the counting allocator)
/// is behind its `testing` feature, which no production build turns on.
#[test]
fn production_builds_leave_the_kernels_test_support_out() {
    let dataplane = normal_deps_with_features("dwcp-dataplane");
    assert!(
        dataplane.iter().any(|d| d.starts_with("dwcp-kernels ")),
        "cargo tree did not list dwcp-kernels: {dataplane:?}"
    );
    for pkg in ["dwcp-dataplane", "dwcp-init", "dwcp-cli"] {
        let deps = normal_deps_with_features(pkg);
        assert!(
            !deps
                .iter()
                .any(|d| d.starts_with("dwcp-kernels") && d.contains("testing")),
            "{pkg} builds dwcp-kernels with its test support: {deps:?}"
        );
    }
    // The check can fail: the tests' own graph has it.
    let deps = normal_deps_with_features("dwcp-tests");
    assert!(
        deps.iter()
            .any(|d| d.starts_with("dwcp-kernels") && d.contains("testing")),
        "{deps:?}"
    );
}

/// Every package `pkg` pulls in for its normal build, each with the features it is built
/// with (`name version (path) features`).
fn normal_deps_with_features(pkg: &str) -> Vec<String> {
    tree(pkg, "{p} {f}", &[])
}

#[test]
fn cli_is_the_top_of_the_graph() {
    let deps = normal_deps("dwcp-cli", &[]);
    for needed in ["dwcp-provisioning", "dwcp-image", "dwcp-qemu", "clap"] {
        assert!(
            deps.iter().any(|d| d == needed),
            "dwcp-cli should link {needed}: {deps:?}"
        );
    }
    // Nothing but the workspace's integration tests may depend on the CLI.
    for pkg in [
        "dwcp-provisioning",
        "dwcp-init",
        "dwcp-dataplane",
        "dwcp-kernels",
        "dwcp-image",
        "dwcp-qemu",
    ] {
        assert_free_of(pkg, &[], &["dwcp-cli"]);
    }
}

#[test]
fn dataplane_links_schema_and_kernels_only() {
    assert_free_of("dwcp-dataplane", &[], CLI_SIDE);
}

#[test]
fn image_and_qemu_know_nothing_of_dwcp() {
    for pkg in ["dwcp-image", "dwcp-qemu", "dwcp-kernels"] {
        assert_free_of(
            pkg,
            &[],
            &["dwcp-provisioning", "dwcp-dataplane", "dwcp-init"],
        );
    }
}
