//! Two data-plane processes on `af_packet` carrying real traffic between namespaces:
//! host A — gateway A — WAN veth — gateway B — host B, plus a management namespace that
//! scrapes both gateways' metrics. Ping and a 100 MB TCP transfer cross the tunnel; the WAN
//! shows no plaintext; forged and replayed messages injected on the WAN are dropped and
//! counted; metrics answer on the management address and not on a data port.

// Integration tests are their own crate: the lint is for tests inside library code.
#![allow(clippy::tests_outside_test_module)]

use std::time::{Duration, Instant};

use dwcp_tests::netns::{
    GatewayConfig, Lab, Sites, checked_transfer, is_root, metric, wait_for_line,
};

use dwcp_cli::demo::MARKER;

/// Captures frames on an interface until a stop file appears; reports whether the marker
/// was seen and saves A→B DWCP data frames (hex, one per line) for injection.
const CAPTURE: &str = r#"
import os, socket, sys, time
iface, marker, stop, out = sys.argv[1], sys.argv[2].encode(), sys.argv[3], sys.argv[4]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.setsockopt(socket.SOL_SOCKET, 33, 1 << 29)  # SO_RCVBUFFORCE: hold the whole transfer
s.bind((iface, 0))
s.settimeout(0.2)
frames = seen = 0
saved = []
while not os.path.exists(stop):
    try:
        f = s.recv(65535)
    except socket.timeout:
        continue
    frames += 1
    if marker in f:
        seen += 1
    # IPv4, UDP, to port 51900, DWCP data (type 4), from gateway A's WAN address.
    if len(f) > 60 and f[12:14] == b"\x08\x00" and f[23] == 17 and f[26:30] == bytes([198, 51, 100, 1]) \
            and int.from_bytes(f[36:38], "big") == 51900 and f[42] == 4 and len(saved) < 50:
        saved.append(f.hex())
with open(out, "w") as o:
    o.write("\n".join(saved))
print(frames, seen, len(saved), flush=True)
"#;

/// Sends saved frames again: `replay` as they were, `forge` with a fresh counter (so the
/// replay window lets it through to the tag check, which must fail).
const INJECT: &str = r#"
import socket, sys
iface, path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
frames = [bytes.fromhex(l) for l in open(path).read().split()]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
n = 0
for f in frames[:10]:
    f = bytearray(f)
    if mode == "forge":
        counter = int.from_bytes(f[50:58], "big") + (1 << 40) + n
        f[50:58] = counter.to_bytes(8, "big")
    s.send(bytes(f))
    n += 1
print(n, flush=True)
"#;

/// The two transfers take both cores of a CI machine: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn two_gateways_carry_ping_and_tcp_through_the_tunnel() {
    tunnel(false);
}

/// The same on the `dpdk` backend: both gateways drive their veths through DPDK's
/// `net_af_packet` poll-mode driver (no hugepages, no NICs needed).
#[test]
fn two_dpdk_gateways_on_net_af_packet_carry_ping_and_tcp() {
    tunnel(true);
}

#[allow(clippy::too_many_lines)]
/// A UDP syslog receiver: binds ADDR PORT, appends each datagram as a line to FILE.
const SYSLOG_RECEIVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
with open(sys.argv[3], "a") as f:
    while True:
        d, _ = s.recvfrom(65535)
        f.write(d.decode("utf-8", "replace").replace("\n", " ") + "\n")
        f.flush()
"#;

/// Asserts `line` is an RFC 5424 message (`<PRI>1 TIMESTAMP HOST APP PROCID - - MSG`) from
/// `host`'s `app`.
fn assert_rfc5424(line: &str, host: &str, app: &str) {
    let line = line.trim_end();
    let (pri, rest) = line
        .strip_prefix('<')
        .and_then(|l| l.split_once(">1 "))
        .unwrap_or_else(|| panic!("no <PRI>1 header: {line}"));
    assert!(
        pri.parse::<u8>().is_ok_and(|p| p <= 191),
        "PRI {pri}: {line}"
    );
    let f: Vec<&str> = rest.splitn(6, ' ').collect();
    assert_eq!(f.len(), 6, "{line}");
    let ts = f[0].as_bytes();
    assert!(
        ts.len() == 24 && ts[4] == b'-' && ts[10] == b'T' && ts[19] == b'.' && ts[23] == b'Z',
        "timestamp {}: {line}",
        f[0]
    );
    assert_eq!((f[1], f[2]), (host, app), "{line}");
    assert!(f[3].parse::<u32>().is_ok(), "PROCID {}: {line}", f[3]);
    assert!(
        f[4] == "-" && f[5].starts_with("- "),
        "MSGID and STRUCTURED-DATA: {line}"
    );
}

fn tunnel(dpdk: bool) {
    assert!(
        is_root(),
        "the netns tier needs root (network namespaces, veth, AF_PACKET): run scripts/test.sh as root"
    );
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dataplane = dwcp_tests::binaries().1;
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::new(if dpdk { "d" } else { "t" });
    let Sites {
        ha,
        ga,
        gb,
        hb,
        ga_ports: (ga_lan, ga_wan),
        gb_ports: (gb_lan, gb_wan),
    } = lab.two_sites();
    let mg = lab.netns("mg");
    let n = |s: &str| lab.name(s);
    let (ga_mgmt, mg_a, gb_mgmt, mg_b) = (n("gam"), n("mga"), n("gbm"), n("mgb"));
    lab.veth(&ga, &ga_mgmt, &mg, &mg_a);
    lab.veth(&gb, &gb_mgmt, &mg, &mg_b);
    lab.exec(
        &ga,
        "ip",
        &["addr", "add", "192.0.2.10/24", "dev", &ga_mgmt],
    );
    lab.exec(
        &gb,
        "ip",
        &["addr", "add", "192.0.3.10/24", "dev", &gb_mgmt],
    );
    lab.exec(&mg, "ip", &["addr", "add", "192.0.2.1/24", "dev", &mg_a]);
    lab.exec(&mg, "ip", &["addr", "add", "192.0.3.1/24", "dev", &mg_b]);

    let key_a = dwcp_provisioning::types::PrivateKey::generate().unwrap();
    let key_b = dwcp_provisioning::types::PrivateKey::generate().unwrap();
    let config = |name: &str,
                  mgmt: (&str, &str),
                  lan: (&str, &str),
                  wan: (&str, &str),
                  key: &dwcp_provisioning::types::PrivateKey,
                  peer: &dwcp_provisioning::types::PrivateKey,
                  endpoint: &str,
                  allowed: &str,
                  cores: (u16, u16)| {
        GatewayConfig {
            name,
            mgmt,
            lan,
            wan,
            private_key: key.expose_base64(),
            peer_public_key: peer.public_key().to_string(),
            endpoint,
            allowed,
            cores,
            dpdk,
            // Gateway B polls in the largest bursts allowed; A in the default 32, and ships
            // its log lines to a syslog receiver on the management network.
            extra: if name == "gw-b" {
                "[dataplane]\nburst = 256\n"
            } else {
                "[logging]\nremote = \"udp://192.0.2.1:5514\"\n"
            },
        }
        .text()
    };
    let cfg_a = dir.path().join("a.toml");
    let cfg_b = dir.path().join("b.toml");
    std::fs::write(
        &cfg_a,
        config(
            "gw-a",
            (&ga_mgmt, "192.0.2.10"),
            (&ga_lan, "10.1.0.1/24"),
            (&ga_wan, "198.51.100.1/30"),
            &key_a,
            &key_b,
            "198.51.100.2:51900",
            "10.2.0.0/16",
            (0, 1),
        ),
    )
    .unwrap();
    std::fs::write(
        &cfg_b,
        config(
            "gw-b",
            (&gb_mgmt, "192.0.3.10"),
            (&gb_lan, "10.2.0.1/24"),
            (&gb_wan, "198.51.100.2/30"),
            &key_b,
            &key_a,
            "198.51.100.1:51900",
            "10.1.0.0/16",
            (1, 0),
        ),
    )
    .unwrap();
    // A syslog receiver in the management namespace: one line per datagram.
    let syslog = dir.path().join("syslog.log");
    let receiver = dir.path().join("syslog.py");
    std::fs::write(&receiver, SYSLOG_RECEIVER).unwrap();
    lab.spawn(
        &mg,
        "python3",
        &[
            receiver.to_str().unwrap(),
            "192.0.2.1",
            "5514",
            syslog.to_str().unwrap(),
        ],
        &dir.path().join("syslog-receiver.log"),
    );
    wait_for_line(
        &dir.path().join("syslog-receiver.log"),
        "listening",
        Duration::from_secs(10),
    );
    let dp = dataplane.to_str().unwrap();
    let log_a = dir.path().join("gw-a.log");
    let log_b = dir.path().join("gw-b.log");
    let gw_a = lab.spawn(&ga, dp, &["--config", cfg_a.to_str().unwrap()], &log_a);
    lab.spawn(&gb, dp, &["--config", cfg_b.to_str().unwrap()], &log_b);
    wait_for_line(&log_a, "dwcp-dataplane: ready", Duration::from_secs(20));
    wait_for_line(&log_b, "dwcp-dataplane: ready", Duration::from_secs(20));
    // Gateway A's start-up lines reached the receiver as RFC 5424 syslog.
    let shipped = wait_for_line(&syslog, "dwcp-dataplane: ready", Duration::from_secs(10));
    assert_rfc5424(&shipped, "gw-a", "dwcp-dataplane");
    let said = std::fs::read_to_string(&log_b).unwrap_or_default();
    assert!(
        said.contains("bursts of up to 256 frames per poll"),
        "gateway B's burst:\n{said}"
    );

    // Capture the WAN link from the start, where gateway B receives it (gateway A's own
    // packet socket bypasses the qdisc and, with it, the capture taps on A's side).
    let marker = MARKER;
    let py = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let (capture, inject) = (py("cap.py", CAPTURE), py("inj.py", INJECT));
    let stop = dir.path().join("stop-capture");
    let frames = dir.path().join("frames.hex");
    let cap_log = dir.path().join("capture.log");
    let cap = lab.spawn(
        &gb,
        "python3",
        &[
            &capture,
            &gb_wan,
            marker,
            stop.to_str().unwrap(),
            frames.to_str().unwrap(),
        ],
        &cap_log,
    );

    // Ping across the tunnel (the first packets wait for the handshake and ARP).
    let ping = lab
        .command(&ha, "ping")
        .args(["-c", "5", "-i", "0.2", "-W", "3", "10.2.0.2"])
        .output()
        .unwrap();
    let ping_out = String::from_utf8_lossy(&ping.stdout);
    eprintln!("{ping_out}");
    assert!(
        ping.status.success() && ping_out.contains(" 0% packet loss"),
        "ping through the tunnel failed:\n{ping_out}\n{}",
        std::fs::read_to_string(&log_a).unwrap_or_default()
    );

    // 100 MB over TCP, checked end to end by SHA-256.
    let started = Instant::now();
    let s = checked_transfer(&mut lab, dir.path(), (&ha, &hb), 100, "random");
    let secs: f64 = s[2].parse().unwrap();
    eprintln!(
        "TCP: {} bytes in {secs:.2}s = {:.1} MB/s through the tunnel (wall {:.1}s), sha256 {}",
        s[0],
        100.0 * 1.048_576 / secs,
        started.elapsed().as_secs_f64(),
        s[1]
    );

    // The WAN never showed the marker.
    std::fs::write(&stop, b"").unwrap();
    let _ = lab.child(cap).wait();
    let cap_out = wait_for_line(&cap_log, " ", Duration::from_secs(5));
    let c: Vec<u64> = cap_out.split(' ').map(|v| v.parse().unwrap()).collect();
    eprintln!(
        "WAN capture: {} frames, {} with the marker, {} data frames saved",
        c[0], c[1], c[2]
    );
    assert!(
        c[0] > 30_000,
        "the capture saw too little of the transfer: {cap_out}"
    );
    assert_eq!(c[1], 0, "plaintext marker seen on the WAN link");
    assert!(c[2] >= 10, "no DWCP data frames captured");

    // Metrics: on the management address, not on a data port.
    let scrape = |addr: &str| {
        let out = lab
            .command(&mg, "curl")
            .args(["-s", "-m", "3", &format!("http://{addr}:9100/metrics")])
            .output()
            .unwrap();
        assert!(out.status.success(), "metrics on {addr} did not answer");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Compressible packets (1,200 bytes of one pattern) are sent LZ4-compressed both ways
    // (each gateway compresses a burst in one batch) and arrive intact.
    let compressed = |addr: &str, node: &str| {
        metric(
            &scrape(addr),
            &format!("dwcp_compressed_packets_total{{node=\"{node}\"}}"),
        )
    };
    let (ca, cb) = (
        compressed("192.0.2.10", "gw-a"),
        compressed("192.0.3.10", "gw-b"),
    );
    // The random transfer made both gateways stop trying LZ4 for its flow; the ping is
    // another flow, but one of the 128 gates per peer may be shared, so wait out the gate's
    // longest pause (within 100 ms it tries again, whatever the packet count).
    std::thread::sleep(Duration::from_millis(150));
    let ping = lab
        .command(&ha, "ping")
        .args(["-c", "3", "-i", "0.2", "-s", "1200", "-p", "5a", "10.2.0.2"])
        .output()
        .unwrap();
    let ping_out = String::from_utf8_lossy(&ping.stdout);
    assert!(
        ping.status.success() && ping_out.contains(" 0% packet loss"),
        "compressible ping failed:\n{ping_out}"
    );
    std::thread::sleep(Duration::from_millis(50));
    let (ca2, cb2) = (
        compressed("192.0.2.10", "gw-a"),
        compressed("192.0.3.10", "gw-b"),
    );
    assert!(ca2 >= ca + 3, "gw-a compressed {ca} -> {ca2}");
    assert!(cb2 >= cb + 3, "gw-b compressed {cb} -> {cb2}");
    let before = scrape("192.0.3.10");
    assert!(metric(&before, "dwcp_handshakes_total{node=\"gw-b\"}") >= 1);
    assert!(
        metric(
            &before,
            "dwcp_port_rx_bytes_total{node=\"gw-b\",port=\"wan0\"}"
        ) > 100_000_000
    );
    if dpdk {
        // DPDK's own view of the ports: link state and extended statistics.
        assert_eq!(
            metric(&before, "dwcp_port_link_up{node=\"gw-b\",port=\"wan0\"}"),
            1,
            "{before}"
        );
        let rx = metric(
            &before,
            "dwcp_dpdk_xstat{node=\"gw-b\",port=\"wan0\",name=\"rx_good_packets\"}",
        );
        assert!(rx > 50_000, "DPDK rx_good_packets on gw-b's WAN: {rx}");
    }
    let on_data_port = lab
        .command(&ha, "curl")
        .args(["-s", "-m", "2", "http://10.1.0.1:9100/metrics"])
        .output()
        .unwrap();
    assert!(
        !on_data_port.status.success(),
        "metrics must not answer on a data port"
    );

    // Forged (fresh counter, so past the replay check to the tag) and replayed messages.
    lab.exec(
        &ga,
        "python3",
        &[&inject, &ga_wan, frames.to_str().unwrap(), "forge"],
    );
    lab.exec(
        &ga,
        "python3",
        &[&inject, &ga_wan, frames.to_str().unwrap(), "replay"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let after = scrape("192.0.3.10");
    let d = |name: &str| metric(&after, name) - metric(&before, name);
    let auth = d("dwcp_drops_total{node=\"gw-b\",reason=\"auth-failed\"}");
    let replayed = d("dwcp_drops_total{node=\"gw-b\",reason=\"replayed\"}");
    eprintln!("injected on the WAN: auth-failed +{auth}, replayed +{replayed}");
    assert_eq!(auth, 10, "forged messages must fail authentication");
    assert_eq!(replayed, 10, "replayed messages must be refused");
    // Nothing forged or replayed was delivered.
    assert_eq!(d("dwcp_tunnel_rx_packets_total{node=\"gw-b\"}"), 0);

    // SIGHUP with a new peer: gateway A takes it, and the session with B carries on without a
    // new handshake.
    let scrape_a = || {
        let out = lab
            .command(&mg, "curl")
            .args(["-s", "-m", "3", "http://192.0.2.10:9100/metrics"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let hs = "dwcp_handshakes_initiated_total{node=\"gw-a\"}";
    let before = metric(&scrape_a(), hs);
    let extra = dwcp_provisioning::types::PrivateKey::generate()
        .unwrap()
        .public_key();
    let mut text = std::fs::read_to_string(&cfg_a).unwrap();
    text = text.replace(
        "[metrics]",
        &format!("[[tunnel.peers]]\nname = \"site-c\"\npublic_key = \"{extra}\"\nallowed_prefixes = [\"10.3.0.0/16\"]\n[metrics]"),
    );
    std::fs::write(&cfg_a, text).unwrap();
    // Meanwhile 32 idle connections to A's metrics endpoint (four times what it serves at
    // once): the control loop must not wait on them. (Its first server read each with a
    // 500 ms timeout, which held a reload back 16 s.)
    let mut idle = lab
        .command(&mg, "python3")
        .args([
            "-c",
            "import socket, time\n\
             s = [socket.create_connection(('192.0.2.10', 9100)) for _ in range(32)]\n\
             print('open', flush=True)\n\
             time.sleep(30)",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(idle.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read");
    assert_eq!(line.trim(), "open", "the idle connections did not open");
    let pid = lab.pid(gw_a).to_string();
    dwcp_tests::netns::run("kill", &["-HUP", &pid]);
    let reloaded = wait_for_line(&log_a, "reloaded peers", Duration::from_secs(3));
    assert!(reloaded.contains("2 (1 added, 0 removed"), "{reloaded}");
    let dropped = metric(
        &scrape_a(),
        "dwcp_metrics_connections_dropped_total{node=\"gw-a\"}",
    );
    assert!(
        dropped >= 24,
        "{dropped} idle connections dropped to make room"
    );
    let _ = idle.kill();
    let _ = idle.wait();
    std::thread::sleep(Duration::from_millis(100));
    let ping = lab
        .command(&ha, "ping")
        .args(["-c", "3", "-i", "0.2", "-W", "2", "10.2.0.2"])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "ping after reload failed:\n{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    std::thread::sleep(Duration::from_millis(50));
    let a_metrics = scrape_a();
    assert_eq!(
        metric(&a_metrics, hs),
        before,
        "reload must not restart the session with B"
    );
    // Per-stage latency histograms saw the transfer; their means go in the report.
    let encap = metric(
        &a_metrics,
        "dwcp_stage_latency_seconds_count{node=\"gw-a\",stage=\"lan_to_wan\"}",
    );
    assert!(encap > 10_000, "lan_to_wan histogram count {encap}");
    let b_metrics = scrape("192.0.3.10");
    for (m, node) in [(&a_metrics, "gw-a"), (&b_metrics, "gw-b")] {
        for stage in ["lan_to_wan", "wan_to_lan", "tx"] {
            let sum_line =
                format!("dwcp_stage_latency_seconds_sum{{node=\"{node}\",stage=\"{stage}\"}}");
            let sum: f64 = m
                .lines()
                .find(|l| l.starts_with(&sum_line))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or(0.0);
            let count = metric(
                m,
                &format!("dwcp_stage_latency_seconds_count{{node=\"{node}\",stage=\"{stage}\"}}"),
            );
            eprintln!(
                "{node} {stage}: {count} packets, mean {:.0} ns/packet",
                sum * 1e9 / count.max(1) as f64
            );
        }
        let rtt = m
            .lines()
            .find(|l| l.starts_with("dwcp_handshake_rtt_seconds_max"))
            .unwrap_or_default();
        eprintln!("{node}: {rtt}");
    }
    // No secret in any log line: the consoles' and what was shipped.
    for log in [&log_a, &log_b, &syslog] {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for (what, secret) in [
            ("gateway A's private key", key_a.expose_base64()),
            ("gateway B's private key", key_b.expose_base64()),
            (
                "the pre-shared key",
                "xGuz/w55aVHb8h0O4fuTN0Xru1Klr2WND/zg0JnI3lw=".to_owned(),
            ),
        ] {
            assert!(!text.contains(&secret), "{what} in {}", log.display());
        }
    }
    // Prometheus's lint, the per-peer families, and every series the alert rules and the
    // dashboard read, on this real scrape.
    dwcp_tests::monitoring::check_scrape(&a_metrics, "gw-a", "peer");
    // GET /status on the management address: the node's state as JSON, as `dwcp status`
    // reads it and prints it.
    let out = lab
        .command(&mg, "curl")
        .args(["-s", "-m", "3", "http://192.0.2.10:9100/status"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("/status is not JSON ({e}): {:?}", out.stdout));
    assert_eq!(status["node"], "gw-a");
    assert_eq!(status["dataplane"]["state"], "running");
    assert_eq!(status["peers"][0]["name"], "peer");
    assert_eq!(status["peers"][0]["session_up"], true);
    assert!(status["peers"][0]["sent_bytes"].as_u64().unwrap_or(0) > 1_000_000);
    assert_eq!(status["ports"].as_array().map(Vec::len), Some(2));
    let table = dwcp_cli::status::table(&status);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("peer         udp        up ")),
        "{table}"
    );
}

#[test]
fn a_port_that_does_not_exist_is_named_and_nothing_starts() {
    assert!(
        is_root(),
        "the netns tier needs root: run scripts/test.sh as root"
    );
    let dataplane = dwcp_tests::binaries().1;
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::new("e");
    let ns = lab.netns("gX");
    let (lan, wan) = (lab.name("lan"), lab.name("wan"));
    lab.exec(
        &ns,
        "ip",
        &["link", "add", &lan, "type", "veth", "peer", "name", &wan],
    );
    let key = dwcp_provisioning::types::PrivateKey::generate().unwrap();
    let text = dwcp_provisioning::example::example()
        .unwrap()
        .replace(
            "backend = \"dpdk\"\npci = \"0000:03:00.0\"",
            &format!("backend = \"af_packet\"\ninterface = \"{lan}\""),
        )
        .replace(
            "backend = \"dpdk\"\npci = \"0000:03:00.1\"",
            "backend = \"af_packet\"\ninterface = \"nosuchif0\"",
        )
        .replace("dataplane = [1, 2, 3]", "dataplane = [1]");
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("private_key") {
                format!("private_key = \"{}\"", key.expose_base64())
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let cfg = dir.path().join("x.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = lab
        .command(&ns, dataplane.to_str().unwrap())
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("port `wan0`: cannot open interface `nosuchif0`"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ready"));
}
