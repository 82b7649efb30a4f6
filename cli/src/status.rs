//! `dwcp status ADDR[:PORT]`: asks a node's metrics endpoint (management network) for
//! `GET /status` and prints it as a table, or as the node's JSON with `--json`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;

/// The metrics port when the address has none (the config's default listen port).
pub const DEFAULT_PORT: u16 = 9100;

/// `host` or `host:port` as a socket address.
pub fn target(addr: &str) -> anyhow::Result<SocketAddr> {
    let with_port = if addr.contains(':') {
        addr.to_owned()
    } else {
        format!("{addr}:{DEFAULT_PORT}")
    };
    with_port
        .to_socket_addrs()
        .with_context(|| format!("`{addr}` is not an address (ADDR or ADDR:PORT)"))?
        .next()
        .with_context(|| format!("`{addr}` resolves to no address"))
}

/// The node's status JSON, or one sentence saying why there is none.
pub fn fetch(addr: SocketAddr) -> anyhow::Result<Value> {
    let no_answer = |e: std::io::Error| {
        anyhow::anyhow!(
            "no answer from {addr} ({e}): is it a node's management address and metrics port? \
             A node whose data plane is down (restarting, or in safe mode) does not answer; its \
             console's `status` says why"
        )
    };
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(no_answer)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(no_answer)?;
    s.write_all(
        format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(no_answer)?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).map_err(no_answer)?;
    let reply = String::from_utf8_lossy(&reply);
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .with_context(|| format!("{addr} answered something that is not HTTP"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "{addr} answered `{}` to GET /status: not a DWCP node of this version?",
            head.lines().next().unwrap_or("")
        );
    }
    serde_json::from_str(body).with_context(|| format!("{addr}: the status is not JSON"))
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The status as a table.
pub fn table(v: &Value) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "node {}  version {}  slot {}  uptime {:.0} s\nconfig from {}\n",
        text(&v["node"]),
        text(&v["version"]),
        text(&v["slot"]),
        v["uptime_seconds"].as_f64().unwrap_or(0.0),
        text(&v["config_source"])
    ));
    let dp = &v["dataplane"];
    o.push_str(&format!(
        "data plane {}, {} worker(s), restarts {}; engine {} ({}); 1 GiB hugepages {}\n",
        text(&dp["state"]),
        text(&dp["workers"]),
        text(&dp["restarts"]),
        text(&v["engine"]["kind"]),
        text(&v["engine"]["why"]),
        text(&v["hugepages_1g"])
    ));
    if let Some(why) = dp["safe_mode"].as_str() {
        o.push_str(&format!("{why}\n"));
    }
    let clock = &v["clock"];
    o.push_str(&format!(
        "clock {} ({})\n",
        if clock["synchronised"].as_bool() == Some(true) {
            "synchronised"
        } else {
            "NOT synchronised"
        },
        text(&clock["why"])
    ));
    o.push_str("port     role  backend      rx packets   tx packets\n");
    for p in v["ports"].as_array().into_iter().flatten() {
        o.push_str(&format!(
            "{:<8} {:<5} {:<9} {:>13} {:>12}\n",
            text(&p["name"]),
            text(&p["role"]),
            text(&p["backend"]),
            text(&p["rx_packets"]),
            text(&p["tx_packets"])
        ));
    }
    o.push_str("peer         transport  session  last handshake  endpoint               sent bytes  received bytes  RDMA QPs\n");
    for p in v["peers"].as_array().into_iter().flatten() {
        let qps: Vec<String> = p["rdma_queue_pairs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        o.push_str(&format!(
            "{:<12} {:<10} {:<8} {:<15} {:<22} {:>10} {:>15}  {}\n",
            text(&p["name"]),
            text(&p["transport"]),
            if p["session_up"].as_bool() == Some(true) {
                "up"
            } else {
                "DOWN"
            },
            p["last_handshake_seconds_ago"]
                .as_f64()
                .map_or_else(|| "never".to_owned(), |s| format!("{s:.0} s ago")),
            text(&p["endpoint"]),
            text(&p["sent_bytes"]),
            text(&p["received_bytes"]),
            if qps.is_empty() {
                "-".to_owned()
            } else {
                qps.join(",")
            }
        ));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_the_default_port_and_bad_ones_are_named() {
        assert_eq!(target("192.0.2.10").unwrap().port(), DEFAULT_PORT);
        assert_eq!(target("192.0.2.10:9200").unwrap().port(), 9200);
        let e = target("no such host!").unwrap_err().to_string();
        assert!(e.contains("`no such host!`"), "{e}");
    }

    #[test]
    fn nothing_listening_is_one_sentence() {
        // A port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = fetch(SocketAddr::from(([127, 0, 0, 1], port)))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("no answer from 127.0.0.1:{port} (")),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn a_node_s_answer_is_read_and_a_non_node_is_named() {
        use std::io::{BufRead as _, BufReader};
        let serve = |answer: &'static str| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            std::thread::spawn(move || {
                let (mut c, _) = l.accept().unwrap();
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                assert_eq!(line, "GET /status HTTP/1.1\r\n");
                while line != "\r\n" {
                    line.clear();
                    r.read_line(&mut line).unwrap();
                }
                c.write_all(answer.as_bytes()).unwrap();
            });
            addr
        };
        let v = fetch(serve(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"node\":\"n1\",\"peers\":[]}",
        ))
        .unwrap();
        assert_eq!(v["node"], "n1");
        let e = fetch(serve("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("answered `HTTP/1.1 404 Not Found` to GET /status"),
            "{e}"
        );
    }

    #[test]
    fn the_table_shows_every_peer_and_port() {
        let v: Value = serde_json::from_str(
            r#"{"node":"site-a","version":"0.1.0","slot":null,"config_source":"initramfs file /etc/dwcp/dwcp.toml",
                "uptime_seconds":61.2,"clock":{"synchronised":false,"why":"no time source is configured yet"},
                "dataplane":{"state":"running","safe_mode":null,"restarts":1,"workers":1},
                "engine":{"kind":"cpu","why":"offload.gpu = off"},"hugepages_1g":1,
                "ports":[{"name":"lan0","role":"lan","backend":"dpdk","rx_packets":10,"tx_packets":11}],
                "peers":[{"name":"site-b","transport":"rdma","session_up":true,"last_handshake_seconds_ago":4.2,
                          "endpoint":"198.51.100.2:51900","sent_bytes":1000,"received_bytes":2000,"rdma_queue_pairs":["rts"]}]}"#,
        )
        .unwrap();
        let t = table(&v);
        assert!(
            t.contains("node site-a  version 0.1.0  slot -  uptime 61 s"),
            "{t}"
        );
        assert!(
            t.contains("data plane running, 1 worker(s), restarts 1; engine cpu"),
            "{t}"
        );
        assert!(t.contains("clock NOT synchronised"), "{t}");
        assert!(!t.contains("SAFE MODE"), "{t}");
        assert!(t.contains("lan0     lan   dpdk"), "{t}");
        assert!(
            t.lines().any(
                |l| l.starts_with("site-b       rdma       up       4 s ago") && l.ends_with("rts")
            ),
            "{t}"
        );
    }
}
