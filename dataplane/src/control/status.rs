//! `GET /status`: the node's state as one JSON object, for `dwcp status` and for operators'
//! tools (its fields: docs/operations.md, "Status"). What only init knows — where the config
//! came from, the boot slot, restarts, hugepages — init hands the data plane in its
//! environment when it starts it ([`ENV`]).

use std::fmt::Write as _;

/// The environment variables init sets for the data plane with the facts it alone has.
pub const ENV: [&str; 6] = [
    "DWCP_CONFIG_SOURCE",
    "DWCP_SLOT",
    "DWCP_RESTARTS",
    "DWCP_HUGEPAGES_1G",
    "DWCP_CLOCK",
    "DWCP_CLOCK_SYNCHRONISED",
];

/// One data port.
#[derive(Clone, Debug)]
pub struct PortState {
    /// Config name.
    pub name: String,
    /// `lan` or `wan`.
    pub role: &'static str,
    /// Backend.
    pub backend: &'static str,
    /// Frames received and sent.
    pub rx_packets: u64,
    /// See `rx_packets`.
    pub tx_packets: u64,
}

/// One peer.
#[derive(Clone, Debug)]
pub struct PeerState {
    /// Config name.
    pub name: String,
    /// `udp` or `rdma`.
    pub transport: &'static str,
    /// A session can carry data.
    pub session_up: bool,
    /// Seconds since the last session was established, if any.
    pub last_handshake_ago: Option<f64>,
    /// The endpoint last heard from.
    pub endpoint: Option<String>,
    /// Inner bytes each way.
    pub sent_bytes: u64,
    /// See `sent_bytes`.
    pub received_bytes: u64,
    /// With RDMA: the queue pairs' states, one per worker.
    pub rdma_qp: Vec<&'static str>,
}

/// Everything `GET /status` answers.
#[derive(Clone, Debug)]
pub struct Status {
    /// Node name.
    pub node: String,
    /// The image's version (the data plane's).
    pub version: &'static str,
    /// init's facts, by [`ENV`] name (absent when not run by init).
    pub init: Vec<(&'static str, Option<String>)>,
    /// Seconds since the data plane started.
    pub uptime_seconds: f64,
    /// Workers.
    pub workers: usize,
    /// Offload engine and why.
    pub engine: (String, String),
    /// Ports.
    pub ports: Vec<PortState>,
    /// Peers.
    pub peers: Vec<PeerState>,
}

/// `s` as a JSON string.
fn quote(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", u32::from(c));
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn opt(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_owned(), quote)
}

impl Status {
    /// The JSON text.
    pub fn to_json(&self) -> String {
        let fact = |name: &str| {
            self.init
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, v)| v.as_deref())
        };
        let restarts = fact("DWCP_RESTARTS").and_then(|v| v.parse::<u64>().ok());
        let hugepages = fact("DWCP_HUGEPAGES_1G").and_then(|v| v.parse::<u64>().ok());
        let num = |v: Option<u64>| v.map_or_else(|| "null".to_owned(), |v| v.to_string());
        let mut o = String::from("{");
        let _ = write!(
            o,
            "\"node\":{},\"version\":{},\"slot\":{},\"config_source\":{},\"uptime_seconds\":{:.1},",
            quote(&self.node),
            quote(self.version),
            opt(fact("DWCP_SLOT")),
            opt(fact("DWCP_CONFIG_SOURCE")),
            self.uptime_seconds
        );
        let _ = write!(
            o,
            "\"clock\":{{\"synchronised\":{},\"why\":{}}},\
             \"dataplane\":{{\"state\":\"running\",\"safe_mode\":null,\"restarts\":{},\"workers\":{}}},\
             \"engine\":{{\"kind\":{},\"why\":{}}},\"hugepages_1g\":{},",
            fact("DWCP_CLOCK_SYNCHRONISED") == Some("1"),
            opt(Some(
                fact("DWCP_CLOCK").unwrap_or("not run by init: the clock is the host's")
            )),
            num(restarts),
            self.workers,
            quote(&self.engine.0),
            quote(&self.engine.1),
            num(hugepages)
        );
        let ports: Vec<String> = self
            .ports
            .iter()
            .map(|p| {
                format!(
                    "{{\"name\":{},\"role\":\"{}\",\"backend\":\"{}\",\"rx_packets\":{},\"tx_packets\":{}}}",
                    quote(&p.name),
                    p.role,
                    p.backend,
                    p.rx_packets,
                    p.tx_packets
                )
            })
            .collect();
        let peers: Vec<String> = self
            .peers
            .iter()
            .map(|p| {
                let qps: Vec<String> = p.rdma_qp.iter().map(|s| format!("\"{s}\"")).collect();
                format!(
                    "{{\"name\":{},\"transport\":\"{}\",\"session_up\":{},\"last_handshake_seconds_ago\":{},\"endpoint\":{},\"sent_bytes\":{},\"received_bytes\":{},\"rdma_queue_pairs\":[{}]}}",
                    quote(&p.name),
                    p.transport,
                    p.session_up,
                    p.last_handshake_ago
                        .map_or_else(|| "null".to_owned(), |s| format!("{s:.1}")),
                    opt(p.endpoint.as_deref()),
                    p.sent_bytes,
                    p.received_bytes,
                    qps.join(",")
                )
            })
            .collect();
        let _ = write!(
            o,
            "\"ports\":[{}],\"peers\":[{}]}}",
            ports.join(","),
            peers.join(",")
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_has_every_field_and_escapes_text() {
        let s = Status {
            node: "site-a".into(),
            version: "0.1.0",
            init: vec![
                (
                    "DWCP_CONFIG_SOURCE",
                    Some("partition \"DWCP-CONFIG\"".into()),
                ),
                ("DWCP_SLOT", Some("a".into())),
                ("DWCP_RESTARTS", Some("2".into())),
                ("DWCP_HUGEPAGES_1G", None),
            ],
            uptime_seconds: 12.34,
            workers: 2,
            engine: ("cpu".into(), "offload.gpu = off".into()),
            ports: vec![PortState {
                name: "wan0".into(),
                role: "wan",
                backend: "dpdk",
                rx_packets: 5,
                tx_packets: 6,
            }],
            peers: vec![PeerState {
                name: "site-b".into(),
                transport: "rdma",
                session_up: true,
                last_handshake_ago: Some(3.0),
                endpoint: Some("198.51.100.2:51900".into()),
                sent_bytes: 100,
                received_bytes: 200,
                rdma_qp: vec!["rts", "init"],
            }],
        };
        let j = s.to_json();
        for part in [
            "\"node\":\"site-a\"",
            "\"config_source\":\"partition \\\"DWCP-CONFIG\\\"\"",
            "\"slot\":\"a\"",
            "\"restarts\":2",
            "\"hugepages_1g\":null",
            "\"uptime_seconds\":12.3",
            "\"engine\":{\"kind\":\"cpu\",\"why\":\"offload.gpu = off\"}",
            "\"ports\":[{\"name\":\"wan0\",\"role\":\"wan\",\"backend\":\"dpdk\",\"rx_packets\":5,\"tx_packets\":6}]",
            "\"session_up\":true,\"last_handshake_seconds_ago\":3.0,\"endpoint\":\"198.51.100.2:51900\"",
            "\"rdma_queue_pairs\":[\"rts\",\"init\"]",
        ] {
            assert!(j.contains(part), "no {part} in {j}");
        }
        assert!(j.starts_with('{') && j.ends_with('}'));
        assert_eq!(quote("a\nb"), "\"a\\u000ab\"");
    }
}
