//! The monitoring the repository ships (`monitoring/`: alert rules, their tests, a Grafana
//! dashboard) against Prometheus's own tool and against a real scrape of a running data
//! plane: `promtool` is Debian's `prometheus` package's (scripts/setup.sh installs it).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::workspace_root;

/// The `monitoring/` directory.
pub fn dir() -> PathBuf {
    workspace_root().join("monitoring")
}

/// Runs `promtool ARGS` in `monitoring/` with `stdin`; its exit success and output. Panics,
/// naming the package, when promtool is missing.
pub fn promtool(args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool: {e} (Debian's `prometheus` package has it; scripts/setup.sh installs it)"
            )
        });
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().expect("promtool ran");
    (out.status.success(), crate::output_text(&out))
}

/// The metric names (`dwcp_…`, `process_…`) a PromQL expression reads: words outside label
/// matchers (`{…}`) and strings that are not function calls.
pub fn names_in(expr: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let chars: Vec<char> = expr.chars().collect();
    let (mut i, mut braces, mut quoted) = (0, 0usize, false);
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => braces += 1,
            '}' if !quoted => braces = braces.saturating_sub(1),
            _ if !quoted && braces == 0 && (c.is_ascii_alphabetic() || c == '_') => {
                let word: String = chars[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == '_' || **c == ':')
                    .collect();
                i += word.len();
                let call = chars[i..].iter().find(|c| !c.is_whitespace()) == Some(&'(');
                let ours = word.starts_with("dwcp_") || word.starts_with("process_");
                if ours && !call && !names.contains(&word) {
                    names.push(word);
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    names
}

/// Every expression in the alert rules and the dashboard, with where it is.
pub fn expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let rules = std::fs::read_to_string(dir().join("alerts.yml")).expect("alerts.yml");
    let mut lines = rules.lines().peekable();
    let mut alert = String::new();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if let Some(a) = t.strip_prefix("- alert: ") {
            alert = a.to_owned();
        }
        if let Some(e) = t.strip_prefix("expr:") {
            let mut expr = e.trim().trim_start_matches('>').trim().to_owned();
            // A folded block: the indented lines after `expr: >`.
            while let Some(next) = lines.peek() {
                let n = next.trim();
                if n.is_empty() || n.contains(':') && !n.contains('(') && !n.contains('{') {
                    break;
                }
                expr.push(' ');
                expr.push_str(n);
                lines.next();
            }
            out.push((format!("alerts.yml {alert}"), expr));
        }
    }
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir().join("dashboard.json")).expect("dashboard.json"),
    )
    .expect("dashboard.json is JSON");
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            out.push((
                format!(
                    "dashboard.json panel `{}`",
                    p["title"].as_str().unwrap_or("?")
                ),
                t["expr"].as_str().expect("expr").to_owned(),
            ));
        }
    }
    out
}

/// Checks a real scrape of node `node` (one peer named `peer`, on UDP, with traffic): clean
/// under `promtool check metrics`, the per-peer families present with their labels, and every
/// series the alert rules and the dashboard read present (RDMA and GPU families only exist
/// on nodes with RDMA peers or a GPU, and are left out).
pub fn check_scrape(scrape: &str, node: &str, peer: &str) {
    let (ok, out) = promtool(&["check", "metrics"], scrape);
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics:\n{out}"
    );
    let value = |series: &str| -> f64 {
        scrape
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no `{series}` in the scrape"))
    };
    let labels = format!("{{node=\"{node}\",peer=\"{peer}\"}}");
    assert_eq!(value(&format!("dwcp_peer_session_up{labels}")), 1.0);
    assert!(value(&format!("dwcp_peer_sent_bytes_total{labels}")) > 1e6);
    assert!(value(&format!("dwcp_peer_received_packets_total{labels}")) > 0.0);
    assert!(value(&format!("dwcp_peer_handshakes_total{labels}")) >= 1.0);
    let age = value(&format!(
        "dwcp_peer_last_handshake_timestamp_seconds{labels}"
    ));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    assert!((now - age).abs() < 600.0, "last handshake {age}, now {now}");
    assert!(
        scrape.contains(&format!(
            "dwcp_peer_info{{node=\"{node}\",peer=\"{peer}\",transport=\"udp\",endpoint=\""
        )),
        "no dwcp_peer_info for {peer}"
    );
    for (place, expr) in expressions() {
        for name in names_in(&expr) {
            if name.starts_with("dwcp_rdma_") || name.starts_with("dwcp_gpu_") {
                continue;
            }
            let present = scrape
                .lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")));
            assert!(
                present,
                "{place} reads `{name}`, which the scrape lacks: {expr}"
            );
        }
    }
}
