//! `monitoring/`: the alert rules pass `promtool check rules`, their tests in Prometheus's
//! rule-test format pass `promtool test rules` (peer down and stale handshakes fire when the
//! peer's data plane stops, nothing fires when healthy), and the dashboard's queries are
//! PromQL over our families. The same rules and queries are checked against a real scrape in
//! `netns_tunnel.rs` (`dwcp_tests::monitoring::check_scrape`).

// Integration tests are their own crate: the lint is for tests inside library code.
#![allow(clippy::tests_outside_test_module)]

use dwcp_tests::monitoring::{expressions, names_in, promtool};

#[test]
fn the_alert_rules_pass_promtool_and_their_own_tests() {
    let (ok, out) = promtool(&["check", "rules", "alerts.yml"], "");
    assert!(ok, "promtool check rules:\n{out}");
    assert!(out.contains("SUCCESS: 10 rules found"), "{out}");
    let (ok, out) = promtool(&["test", "rules", "alerts_test.yml"], "");
    assert!(ok, "promtool test rules:\n{out}");
}

#[test]
fn a_failing_rule_test_fails() {
    // The rule tests can fail: the same tests against a rule file whose peer-down alert
    // waits 10 minutes instead of 2.
    let dir = tempfile::tempdir().unwrap();
    let rules = std::fs::read_to_string(dwcp_tests::monitoring::dir().join("alerts.yml"))
        .unwrap()
        .replacen("for: 2m", "for: 10m", 1);
    std::fs::write(dir.path().join("alerts.yml"), rules).unwrap();
    std::fs::copy(
        dwcp_tests::monitoring::dir().join("alerts_test.yml"),
        dir.path().join("alerts_test.yml"),
    )
    .unwrap();
    let test = dir.path().join("alerts_test.yml");
    let (ok, out) = promtool(&["test", "rules", test.to_str().unwrap()], "");
    assert!(!ok, "a rule test passed against a broken rule:\n{out}");
    assert!(out.contains("DwcpPeerDown"), "{out}");
}

#[test]
fn every_query_reads_our_families() {
    let all = expressions();
    assert!(all.len() >= 10 + 13, "{} expressions", all.len());
    for (place, expr) in &all {
        let names = names_in(expr);
        assert!(
            !names.is_empty() || expr.starts_with("up{"),
            "{place}: no series in {expr}"
        );
    }
    assert_eq!(
        names_in("8 * rate(dwcp_peer_sent_bytes_total{node=~\"$node\"}[1m]) / dwcp_workers"),
        ["dwcp_peer_sent_bytes_total", "dwcp_workers"]
    );
}
