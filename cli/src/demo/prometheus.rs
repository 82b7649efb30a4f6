//! A real Prometheus beside the demo (Debian's `prometheus` package): it scrapes both
//! appliances through their forwarded management ports every second and evaluates the alert
//! rules in `monitoring/alerts.yml`; the report adds what a PromQL query asked of it says.
//! Without Prometheus the demo says why and goes on.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::{Resource, free_port, register};

/// A running Prometheus server.
pub struct Prometheus {
    port: u16,
    child: std::process::Child,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server's config: both appliances as job `dwcp`, scraped every second, with the rules.
pub fn config(targets: &[u16], rules: &Path) -> String {
    let t: Vec<String> = targets.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
    format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - '{}'\n\
         scrape_configs:\n  - job_name: dwcp\n    static_configs:\n      - targets: [{}]\n",
        rules.display(),
        t.join(", ")
    )
}

/// Starts Prometheus in `dir` scraping the metrics ports `targets`.
pub fn start(dir: &Path, targets: &[u16]) -> anyhow::Result<Prometheus> {
    let rules = crate::image_build::workspace_root()
        .join("monitoring")
        .join("alerts.yml");
    let cfg = dir.join("prometheus.yml");
    std::fs::write(&cfg, config(targets, &rules))?;
    let port = free_port(targets)?;
    let child = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("prometheus-data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log"))?)
        .spawn()
        .context(
            "cannot run `prometheus` (Debian's prometheus package; scripts/setup.sh installs it)",
        )?;
    register(Resource::Pid(child.id()));
    let p = Prometheus { port, child };
    let t0 = Instant::now();
    while p.get("/-/ready").is_err() {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("Prometheus did not become ready in 30 s (see prometheus.log)");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(p)
}

/// `%`-encodes a query string value.
pub fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Prometheus {
    fn get(&self, path: &str) -> anyhow::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )?;
        let mut r = String::new();
        s.read_to_string(&mut r)?;
        let (head, body) = r.split_once("\r\n\r\n").context("not HTTP")?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("{}", head.lines().next().unwrap_or(""));
        }
        Ok(body.to_owned())
    }

    /// An instant query's first value, if any (`None`: no series).
    pub fn query(&self, q: &str) -> anyhow::Result<Option<f64>> {
        let body = self.get(&format!("/api/v1/query?query={}", encode(q)))?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        if v["status"] != "success" {
            bail!("query `{q}`: {}", v["error"]);
        }
        Ok(v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok()))
    }

    /// The alerts firing now, as `name{node}`.
    pub fn alerts_firing(&self) -> anyhow::Result<Vec<String>> {
        let body = self.get("/api/v1/alerts")?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        Ok(v["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing")
            .map(|a| {
                format!(
                    "{}{{{}}}",
                    a["labels"]["alertname"].as_str().unwrap_or("?"),
                    a["labels"]["node"].as_str().unwrap_or("")
                )
            })
            .collect())
    }
}

/// The report's line: site A's peak per-peer throughput to site B over the last `window`
/// seconds as Prometheus saw it, and the alerts firing.
pub fn report(p: &Prometheus, window: u64) -> anyhow::Result<String> {
    let peak = p
        .query(&format!(
            "max_over_time((8 * rate(dwcp_peer_sent_bytes_total{{node=\"site-a-gw\",peer=\"site-b\"}}[5s]))[{window}s:1s])"
        ))?
        .context("Prometheus has no per-peer series for site A (did it scrape?)")?;
    let scrapes = p
        .query(&format!(
            "sum(count_over_time(up{{job=\"dwcp\"}}[{window}s]))"
        ))?
        .unwrap_or(0.0);
    let alerts = p.alerts_firing()?;
    Ok(format!(
        "peak A → B {:.1} Mbit/s (max_over_time of 8 × rate(dwcp_peer_sent_bytes_total[5s])), {scrapes:.0} scrapes, alerts firing: {}",
        peak / 1e6,
        if alerts.is_empty() {
            "none".to_owned()
        } else {
            alerts.join(", ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_scrapes_both_nodes_with_the_rules() {
        let c = config(&[20001, 20002], Path::new("/r/alerts.yml"));
        assert!(
            c.contains("targets: ['127.0.0.1:20001', '127.0.0.1:20002']"),
            "{c}"
        );
        assert!(c.contains("rule_files:\n  - '/r/alerts.yml'"), "{c}");
        assert!(c.contains("job_name: dwcp"), "{c}");
    }

    #[test]
    fn queries_are_encoded() {
        assert_eq!(
            encode("rate(x{a=\"b\"}[5s])"),
            "rate%28x%7Ba%3D%22b%22%7D%5B5s%5D%29"
        );
    }
}
