//! The Prometheus exposition: the text format 0.0.4 of the counters, gauges and histograms
//! the management endpoint (`crate::control::scrape`, on the control thread) serves.

use std::fmt::Write as _;

use crate::control::stats::{self, COUNT};

/// What the exposition needs besides the counters.
pub struct Labels<'a> {
    /// Node name.
    pub node: &'a str,
    /// LAN port name.
    pub lan: &'a str,
    /// WAN port name.
    pub wan: &'a str,
    /// Worker count.
    pub workers: usize,
    /// Offload engine in use.
    pub engine: &'a str,
}

/// Renders the latency histograms in Prometheus histogram form (seconds).
pub fn render_histograms(h: &[stats::Histogram; stats::STAGES.len()], node: &str) -> String {
    let mut o = String::new();
    let name = "dwcp_stage_latency_seconds";
    let _ = writeln!(
        o,
        "# HELP {name} Per-packet processing time by stage (burst averages)."
    );
    let _ = writeln!(o, "# TYPE {name} histogram");
    for (stage, hist) in stats::STAGES.iter().zip(h) {
        let mut cumulative = 0;
        for (i, bound) in stats::BUCKETS_NS.iter().enumerate() {
            cumulative += hist.buckets[i];
            let le = *bound as f64 / 1e9;
            let _ = writeln!(
                o,
                "{name}_bucket{{node=\"{node}\",stage=\"{stage}\",le=\"{le:e}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            o,
            "{name}_bucket{{node=\"{node}\",stage=\"{stage}\",le=\"+Inf\"}} {}",
            hist.count
        );
        let _ = writeln!(
            o,
            "{name}_sum{{node=\"{node}\",stage=\"{stage}\"}} {}",
            hist.sum_ns as f64 / 1e9
        );
        let _ = writeln!(
            o,
            "{name}_count{{node=\"{node}\",stage=\"{stage}\"}} {}",
            hist.count
        );
    }
    o
}

/// One DPDK port's state for the metrics.
#[derive(Clone, Debug)]
pub struct DpdkPort {
    /// The config's port name.
    pub name: String,
    /// Link up and speed (Mbit/s), when DPDK knows.
    pub link: Option<(bool, u32)>,
    /// DPDK's extended statistics.
    pub xstats: Vec<(String, u64)>,
}

/// Renders DPDK ports' link state and extended statistics.
pub fn render_dpdk(ports: &[DpdkPort], node: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# HELP dwcp_port_link_up Link state of a DPDK port (1 up)."
    );
    let _ = writeln!(o, "# TYPE dwcp_port_link_up gauge");
    for p in ports {
        if let Some((up, _)) = p.link {
            let _ = writeln!(
                o,
                "dwcp_port_link_up{{node=\"{node}\",port=\"{}\"}} {}",
                p.name,
                u8::from(up)
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP dwcp_port_link_speed_bytes Link speed of a DPDK port, in bytes per second."
    );
    let _ = writeln!(o, "# TYPE dwcp_port_link_speed_bytes gauge");
    for p in ports {
        if let Some((_, speed)) = p.link {
            let _ = writeln!(
                o,
                "dwcp_port_link_speed_bytes{{node=\"{node}\",port=\"{}\"}} {}",
                p.name,
                u64::from(speed) * 1_000_000 / 8
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP dwcp_dpdk_xstat DPDK extended statistics of a port, by name."
    );
    let _ = writeln!(o, "# TYPE dwcp_dpdk_xstat gauge");
    for p in ports {
        for (name, v) in &p.xstats {
            let name = name.replace(['"', '\\', '\n'], "_");
            let _ = writeln!(
                o,
                "dwcp_dpdk_xstat{{node=\"{node}\",port=\"{}\",name=\"{name}\"}} {v}",
                p.name
            );
        }
    }
    o
}

/// One configured peer, for the metrics: its name, transport and merged values.
#[derive(Clone, Debug)]
pub struct PeerRow {
    /// The peer's name (config).
    pub peer: String,
    /// `udp` or `rdma`.
    pub transport: &'static str,
    /// Its values in [`stats::PEER_FIELDS`] order, merged over workers
    /// ([`stats::merge_peer`]).
    pub values: [u64; stats::PEER_FIELDS.len()],
}

/// Renders the per-peer families: configured peers (`_info`), session state, last handshake,
/// traffic each way and handshakes, each labelled with the peer's name.
pub fn render_peers(rows: &[PeerRow], node: &str) -> String {
    let mut o = String::new();
    let field = |name: &str| {
        stats::PEER_FIELDS
            .iter()
            .position(|f| *f == name)
            .unwrap_or(0)
    };
    let _ = writeln!(
        o,
        "# HELP dwcp_peer_info A configured peer: its transport and current endpoint (always 1)."
    );
    let _ = writeln!(o, "# TYPE dwcp_peer_info gauge");
    for r in rows {
        let ip = u32::try_from(r.values[field("endpoint_ip")]).unwrap_or(0);
        let port = r.values[field("endpoint_port")];
        let endpoint = if ip == 0 {
            String::new()
        } else {
            format!("{}:{port}", std::net::Ipv4Addr::from(ip))
        };
        let _ = writeln!(
            o,
            "dwcp_peer_info{{node=\"{node}\",peer=\"{}\",transport=\"{}\",endpoint=\"{endpoint}\"}} 1",
            r.peer, r.transport
        );
    }
    let _ = writeln!(
        o,
        "# HELP dwcp_peer_last_handshake_timestamp_seconds When the last session with the peer was established (Unix time; 0: never)."
    );
    let _ = writeln!(o, "# TYPE dwcp_peer_last_handshake_timestamp_seconds gauge");
    for r in rows {
        let ns = r.values[field("last_handshake_unix_ns")];
        let _ = writeln!(
            o,
            "dwcp_peer_last_handshake_timestamp_seconds{{node=\"{node}\",peer=\"{}\"}} {}",
            r.peer,
            ns as f64 / 1e9
        );
    }
    for (metric, kind, f, help) in [
        (
            "dwcp_peer_session_up",
            "gauge",
            "session_up",
            "Whether a session with the peer can carry data (1) or not (0).",
        ),
        (
            "dwcp_peer_sent_packets_total",
            "counter",
            "tx_packets",
            "Inner packets sent to the peer.",
        ),
        (
            "dwcp_peer_sent_bytes_total",
            "counter",
            "tx_bytes",
            "Inner bytes sent to the peer.",
        ),
        (
            "dwcp_peer_received_packets_total",
            "counter",
            "rx_packets",
            "Inner packets received from the peer and delivered.",
        ),
        (
            "dwcp_peer_received_bytes_total",
            "counter",
            "rx_bytes",
            "Inner bytes received from the peer and delivered.",
        ),
        (
            "dwcp_peer_handshakes_total",
            "counter",
            "handshakes",
            "Sessions established with the peer.",
        ),
        (
            "dwcp_peer_rekeys_total",
            "counter",
            "rekeys",
            "Sessions with the peer that replaced an older one.",
        ),
    ] {
        let values: Vec<(String, u64)> = rows
            .iter()
            .map(|r| (format!("peer=\"{}\"", r.peer), r.values[field(f)]))
            .collect();
        labelled(&mut o, node, metric, kind, help, &values);
    }
    o
}

/// One RDMA peer's queue pair on one worker, for the metrics.
#[derive(Clone, Debug)]
pub struct RdmaPeerRow {
    /// The peer's name.
    pub peer: String,
    /// The worker.
    pub worker: usize,
    /// Its values in [`stats::RDMA_FIELDS`] order.
    pub values: [u64; stats::RDMA_FIELDS.len()],
}

impl RdmaPeerRow {
    /// Its labels after `node`: `peer="…",worker="…"`.
    fn labels(&self) -> String {
        format!("peer=\"{}\",worker=\"{}\"", self.peer, self.worker)
    }
}

/// Renders the RDMA queue pairs' state and counters, per peer and worker, and the RDMA
/// device's own counters (`hw_counters`: RNR and retry events among them).
pub fn render_rdma(rows: &[RdmaPeerRow], device: &[(String, u64)], node: &str) -> String {
    let mut o = String::new();
    let field = |name: &str| {
        stats::RDMA_FIELDS
            .iter()
            .position(|f| *f == name)
            .unwrap_or(0)
    };
    let state = field("qp_state");
    let _ = writeln!(
        o,
        "# HELP dwcp_rdma_qp_info The state of each worker's queue pair to an RDMA peer (always 1)."
    );
    let _ = writeln!(o, "# TYPE dwcp_rdma_qp_info gauge");
    for r in rows {
        let name = rdma_sys::verbs::qp_state_name(i32::try_from(r.values[state]).unwrap_or(0) - 1);
        let _ = writeln!(
            o,
            "dwcp_rdma_qp_info{{node=\"{node}\",peer=\"{}\",worker=\"{}\",state=\"{name}\"}} 1",
            r.peer, r.worker
        );
    }
    for (metric, kind, f, help) in [
        (
            "dwcp_rdma_qp_connected",
            "gauge",
            "connected",
            "Whether the queue pair is connected (1) or waiting for the peer (0).",
        ),
        (
            "dwcp_rdma_sends_total",
            "counter",
            "sends",
            "RDMA SENDs posted.",
        ),
        (
            "dwcp_rdma_inline_sends_total",
            "counter",
            "inline_sends",
            "RDMA SENDs posted inline.",
        ),
        (
            "dwcp_rdma_receives_total",
            "counter",
            "receives",
            "DWCP messages received by RDMA.",
        ),
        (
            "dwcp_rdma_sent_bytes_total",
            "counter",
            "send_bytes",
            "Bytes sent by RDMA (DWCP messages).",
        ),
        (
            "dwcp_rdma_received_bytes_total",
            "counter",
            "receive_bytes",
            "Bytes received by RDMA (DWCP messages).",
        ),
        (
            "dwcp_rdma_post_failures_total",
            "counter",
            "post_failed",
            "Sends that could not be posted (queue pair down, send queue full).",
        ),
        (
            "dwcp_rdma_connects_total",
            "counter",
            "connects",
            "Times the queue pair connected.",
        ),
        (
            "dwcp_rdma_reconnects_total",
            "counter",
            "reconnects",
            "Times the queue pair was torn down and made again.",
        ),
        (
            "dwcp_rdma_records_refused_total",
            "counter",
            "records_refused",
            "Queue-pair records refused (malformed, or for a pair another worker holds).",
        ),
    ] {
        let values: Vec<(String, u64)> = rows
            .iter()
            .map(|r| (r.labels(), r.values[field(f)]))
            .collect();
        labelled(&mut o, node, metric, kind, help, &values);
    }
    render_rdma_errors(&mut o, rows, device, node);
    o
}

/// The RDMA families of [`render_rdma`] about errors: completions with an error by status,
/// and the device's own counters.
fn render_rdma_errors(o: &mut String, rows: &[RdmaPeerRow], device: &[(String, u64)], node: &str) {
    let field = |name: &str| {
        stats::RDMA_FIELDS
            .iter()
            .position(|f| *f == name)
            .unwrap_or(0)
    };
    let errors: Vec<(String, u64)> = rows
        .iter()
        .flat_map(|r| {
            [
                ("retry-exceeded", "errors_retry"),
                ("rnr-retry-exceeded", "errors_rnr"),
                ("flushed", "errors_flushed"),
                ("other", "errors_other"),
            ]
            .map(|(status, f)| {
                (
                    format!("{},status=\"{status}\"", r.labels()),
                    r.values[field(f)],
                )
            })
        })
        .collect();
    labelled(
        o,
        node,
        "dwcp_rdma_completion_errors_total",
        "counter",
        "Work completions with an error, by status.",
        &errors,
    );
    let device: Vec<(String, u64)> = device
        .iter()
        .map(|(name, v)| {
            (
                format!("name=\"{}\"", name.replace(['"', '\\', '\n'], "_")),
                *v,
            )
        })
        .collect();
    labelled(
        o,
        node,
        "dwcp_rdma_device_counter",
        "gauge",
        "The RDMA device's own counters (hw_counters), by name.",
        &device,
    );
}

/// Renders the GPU's state (from NVML, sampled `age` ago) as metrics.
pub fn render_gpu(
    s: &dwcp_kernels::monitor::GpuSnapshot,
    age: std::time::Duration,
    node: &str,
) -> String {
    let mut o = String::new();
    let name = s.name.replace(['"', '\\', '\n'], "_");
    let _ = writeln!(
        o,
        "# HELP dwcp_gpu_info The offload GPU.\n# TYPE dwcp_gpu_info gauge\ndwcp_gpu_info{{node=\"{node}\",name=\"{name}\",pci_bus_id=\"{}\"}} 1",
        s.pci_bus_id
    );
    let gauge = |o: &mut String, name: &str, help: &str, v: &dyn std::fmt::Display| {
        family(o, node, name, "gauge", help, v);
    };
    gauge(
        &mut o,
        "dwcp_gpu_memory_total_bytes",
        "GPU memory.",
        &s.memory_total,
    );
    gauge(
        &mut o,
        "dwcp_gpu_memory_free_bytes",
        "GPU memory free.",
        &s.memory_free,
    );
    if let Some(u) = s.utilization_pct {
        // A ratio, 0 to 1 (Prometheus's convention), from NVML's percent.
        let ratio = format!("{:.2}", f64::from(u) / 100.0);
        gauge(
            &mut o,
            "dwcp_gpu_utilization_ratio",
            "GPU utilisation, 0 to 1.",
            &ratio,
        );
    }
    if let Some(t) = s.temperature_c {
        gauge(
            &mut o,
            "dwcp_gpu_temperature_celsius",
            "GPU temperature.",
            &t,
        );
    }
    if let Some(mw) = s.power_mw {
        let w = format!("{:.3}", f64::from(mw) / 1000.0);
        gauge(&mut o, "dwcp_gpu_power_watts", "GPU power draw.", &w);
    }
    if let Some(bits) = s.clock_events {
        let _ = writeln!(
            o,
            "# HELP dwcp_gpu_clock_event_reason Why the GPU's clocks are below their maximum (NVML's clock event reasons), 1 while it holds.\n# TYPE dwcp_gpu_clock_event_reason gauge"
        );
        for (bit, reason) in dwcp_kernels::monitor::CLOCK_EVENT_REASONS {
            let _ = writeln!(
                o,
                "dwcp_gpu_clock_event_reason{{node=\"{node}\",reason=\"{reason}\"}} {}",
                u8::from(bits & bit != 0)
            );
        }
    }
    if let Some((corrected, uncorrected)) = s.ecc_errors {
        let _ = writeln!(
            o,
            "# HELP dwcp_gpu_ecc_errors_total GPU memory ECC errors since the driver loaded.\n# TYPE dwcp_gpu_ecc_errors_total counter\ndwcp_gpu_ecc_errors_total{{node=\"{node}\",kind=\"corrected\"}} {corrected}\ndwcp_gpu_ecc_errors_total{{node=\"{node}\",kind=\"uncorrected\"}} {uncorrected}"
        );
    }
    let help = format!(
        "How old the GPU samples above are (NVML is sampled every {} s; older says it stopped answering).",
        dwcp_kernels::monitor::SAMPLE_PERIOD.as_secs()
    );
    let age = format!("{:.3}", age.as_secs_f64());
    gauge(&mut o, "dwcp_gpu_status_age_seconds", &help, &age);
    o
}

/// Renders what the GPU gathering thread did as metrics.
pub fn render_gather(g: &dwcp_kernels::gather::GatherStats, node: &str) -> String {
    let mut o = String::new();
    for (metric, kind, help, v) in [
        (
            "dwcp_offload_gathers_total",
            "counter",
            "GPU gathers run (each one batch per operation present).",
            g.gathers,
        ),
        (
            "dwcp_offload_gathered_packets_total",
            "counter",
            "Packets run in GPU gathers.",
            g.packets,
        ),
        (
            "dwcp_offload_gather_largest_packets",
            "gauge",
            "Largest GPU gather so far, packets.",
            g.largest,
        ),
        (
            "dwcp_offload_gather_most_workers",
            "gauge",
            "Most workers in one GPU gather so far.",
            g.most_workers,
        ),
    ] {
        family(&mut o, node, metric, kind, help, v);
    }
    let metric = "dwcp_offload_gather_running_seconds";
    let _ = writeln!(
        o,
        "# HELP {metric} How long the GPU gather now running has been running (0 between gathers; the data plane leaves at {}).\n# TYPE {metric} gauge\n{metric}{{node=\"{node}\"}} {:.6}",
        crate::control::offload::GPU_HANG.as_secs(),
        g.running.as_secs_f64()
    );
    o
}

/// A family of one sample: (metric, type, the worker stat it shows, help).
type Single = (&'static str, &'static str, &'static str, &'static str);

/// The tunnel's and the gateway's single-sample families, in exposition order.
const TUNNEL_FAMILIES: [Single; 16] = [
    (
        "dwcp_control_records_sent_total",
        "counter",
        "control_records_sent",
        "Authenticated control records sent to peers (RDMA queue-pair details).",
    ),
    (
        "dwcp_control_records_received_total",
        "counter",
        "control_records_received",
        "Authenticated control records received from peers.",
    ),
    (
        "dwcp_handshakes_initiated_total",
        "counter",
        "handshakes_initiated",
        "Handshake initiations sent.",
    ),
    (
        "dwcp_handshakes_total",
        "counter",
        "handshakes_completed",
        "Sessions established.",
    ),
    (
        "dwcp_rekeys_total",
        "counter",
        "rekeys",
        "Sessions that replaced an older one.",
    ),
    (
        "dwcp_keepalives_sent_total",
        "counter",
        "keepalives_sent",
        "Keepalives sent.",
    ),
    (
        "dwcp_tunnel_rx_packets_total",
        "counter",
        "tunnel_rx_packets",
        "Inner packets received from peers.",
    ),
    (
        "dwcp_tunnel_tx_messages_total",
        "counter",
        "tunnel_tx_messages",
        "Data messages sent to peers.",
    ),
    (
        "dwcp_compressed_packets_total",
        "counter",
        "compressed_packets",
        "Payloads sent LZ4-compressed.",
    ),
    (
        "dwcp_compress_in_bytes_total",
        "counter",
        "compress_in_bytes",
        "Bytes before compression of compressed payloads.",
    ),
    (
        "dwcp_compress_out_bytes_total",
        "counter",
        "compress_out_bytes",
        "Bytes after compression of compressed payloads.",
    ),
    (
        "dwcp_compress_no_gain_packets_total",
        "counter",
        "compress_no_gain_packets",
        "Payloads compressed in vain (not smaller), sent as they were.",
    ),
    (
        "dwcp_compress_skipped_packets_total",
        "counter",
        "compress_skipped_packets",
        "Payloads sent without trying LZ4: their peer's recent payloads did not shrink.",
    ),
    (
        "dwcp_icmp_errors_sent_total",
        "counter",
        "icmp_errors_sent",
        "ICMP fragmentation-needed messages sent.",
    ),
    (
        "dwcp_mss_clamped_total",
        "counter",
        "mss_clamped",
        "TCP SYNs whose MSS was lowered.",
    ),
    (
        "dwcp_handoff_frames_total",
        "counter",
        "handoff_frames",
        "WAN frames handed to the worker owning their session.",
    ),
];

/// The offload dispatcher's single-sample families, in exposition order.
const OFFLOAD_FAMILIES: [Single; 13] = [
    (
        "dwcp_offload_gpu_errors_total",
        "counter",
        "offload_gpu_errors",
        "GPU batches that failed and were finished on the CPU.",
    ),
    (
        "dwcp_offload_gpu_timeouts_total",
        "counter",
        "offload_gpu_timeouts",
        "GPU batches past their deadline, finished on the CPU.",
    ),
    (
        "dwcp_offload_fallback_packets_total",
        "counter",
        "offload_fallback_packets",
        "Packets the CPU finished after a GPU failure (none lost, none run twice).",
    ),
    (
        "dwcp_offload_declined_packets_total",
        "counter",
        "offload_declined_packets",
        "Packets the GPU could not stage (larger than its buffers), run with the rest of their batch on the CPU; the GPU stays in service.",
    ),
    (
        "dwcp_offload_gpu_checked_batches_total",
        "counter",
        "offload_gpu_checked_batches",
        "GPU batches checked packet by packet against the CPU engine (offload.verify_every).",
    ),
    (
        "dwcp_offload_gpu_spot_checked_batches_total",
        "counter",
        "offload_gpu_spot_checked_batches",
        "GPU batches not checked whole of which one packet was checked against the CPU engine.",
    ),
    (
        "dwcp_offload_gpu_rechecked_refusals_total",
        "counter",
        "offload_gpu_rechecked_refusals",
        "Packets the GPU refused (seal refused, tag failed, block did not decompress) re-run on the CPU engine to confirm it (the first 4 of a batch).",
    ),
    (
        "dwcp_offload_gpu_wrong_batches_total",
        "counter",
        "offload_gpu_wrong_batches",
        "GPU batches in which a check found a packet the GPU got wrong without an error.",
    ),
    (
        "dwcp_offload_corrected_packets_total",
        "counter",
        "offload_corrected_packets",
        "Packets the GPU got wrong, given the CPU engine's result before they left.",
    ),
    (
        "dwcp_offload_gpu_dropped_unchecked_packets_total",
        "counter",
        "offload_gpu_dropped_unchecked_packets",
        "Packets the GPU opened in a batch whose spot check found it wrong, dropped because their plaintext could not be checked (also counted as failed opens).",
    ),
    (
        "dwcp_offload_split_batches_total",
        "counter",
        "offload_split_batches",
        "Batches split between the worker's CPU engine and the GPU, the two shares run at once (offload.gpu = auto); each also counts once in each engine's batches.",
    ),
    (
        "dwcp_offload_gpu_probes_total",
        "counter",
        "offload_gpu_probes",
        "Health probes sent to an unhealthy GPU.",
    ),
    (
        "dwcp_offload_gpu_healthy_workers",
        "gauge",
        "offload_gpu_healthy",
        "Workers whose GPU engine is healthy.",
    ),
];

/// Renders the metrics text.
pub fn render(v: &[u64; COUNT], l: &Labels<'_>) -> String {
    let mut o = String::new();
    let node = l.node;
    let g = |n: &str| stats::get(v, n);
    port_families(&mut o, v, l);
    let drops: Vec<(String, u64)> = stats::NAMES
        .iter()
        .filter_map(|n| {
            n.strip_prefix("drop_")
                .map(|r| (format!("reason=\"{}\"", r.replace('_', "-")), g(n)))
        })
        .collect();
    labelled(
        &mut o,
        node,
        "dwcp_drops_total",
        "counter",
        "Packets dropped, by reason.",
        &drops,
    );
    for (name, kind, stat, help) in TUNNEL_FAMILIES {
        family(&mut o, node, name, kind, help, g(stat));
    }
    family(
        &mut o,
        node,
        "dwcp_workers",
        "gauge",
        "Data-plane worker threads.",
        l.workers,
    );
    labelled(
        &mut o,
        node,
        "dwcp_engine_info",
        "gauge",
        "The offload engine in use.",
        &[(format!("engine=\"{}\"", l.engine), 1)],
    );
    offload_families(&mut o, v, node);
    let (cin, cout) = (g("compress_in_bytes"), g("compress_out_bytes"));
    let ratio = if cout == 0 {
        1.0
    } else {
        cin as f64 / cout as f64
    };
    family_f(
        &mut o,
        node,
        "dwcp_compression_ratio",
        "Bytes before / after compression, over payloads sent compressed.",
        ratio,
    );
    let rtt = g("handshake_rtt_ns_max") as f64 / 1e9;
    family_f(
        &mut o,
        node,
        "dwcp_handshake_rtt_seconds_max",
        "Longest handshake initiation-to-response time seen.",
        rtt,
    );
    o
}

/// Frames and bytes received and sent, per data port.
fn port_families(o: &mut String, v: &[u64; COUNT], l: &Labels<'_>) {
    let g = |n: &str| stats::get(v, n);
    for (what, unit) in [("packets", "Frames"), ("bytes", "Bytes")] {
        for (dir, verb) in [("rx", "received"), ("tx", "sent")] {
            labelled(
                o,
                l.node,
                &format!("dwcp_port_{dir}_{what}_total"),
                "counter",
                &format!("{unit} {verb} per data port."),
                &[
                    (
                        format!("port=\"{}\"", l.lan),
                        g(&format!("lan_{dir}_{what}")),
                    ),
                    (
                        format!("port=\"{}\"", l.wan),
                        g(&format!("wan_{dir}_{what}")),
                    ),
                ],
            );
        }
    }
}

/// The offload dispatcher's families: batches and bytes by operation and engine, its
/// counters, the healthy GPU workers, and each engine's busy time.
fn offload_families(o: &mut String, v: &[u64; COUNT], node: &str) {
    let g = |n: &str| stats::get(v, n);
    for (what, help) in [
        ("batches", "Offload batches"),
        ("bytes", "Payload bytes offloaded"),
    ] {
        let rows: Vec<(String, u64)> = ["seal", "open", "compress", "decompress"]
            .iter()
            .flat_map(|op| {
                ["cpu", "gpu"].map(|path| {
                    (
                        format!("op=\"{op}\",engine=\"{path}\""),
                        g(&format!("offload_{op}_{path}_{what}")),
                    )
                })
            })
            .collect();
        labelled(
            o,
            node,
            &format!("dwcp_offload_{what}_total"),
            "counter",
            &format!("{help}, by operation and the engine that ran them."),
            &rows,
        );
    }
    for (name, kind, stat, help) in OFFLOAD_FAMILIES {
        family(o, node, name, kind, help, g(stat));
    }
    // Seconds, not integers.
    let _ = writeln!(
        o,
        "# HELP dwcp_offload_busy_seconds_total Time each engine spent on its share of the offload batches, by operation (the CPU engine's run; the GPU's call until its results were ready). Divide the bytes by it for each engine's achieved rate. Counted only while a GPU engine runs (a CPU-only node reads no clock per batch)."
    );
    let _ = writeln!(o, "# TYPE dwcp_offload_busy_seconds_total counter");
    for op in ["seal", "open", "compress", "decompress"] {
        for path in ["cpu", "gpu"] {
            let secs = g(&format!("offload_{op}_{path}_ns")) as f64 / 1e9;
            let _ = writeln!(
                o,
                "dwcp_offload_busy_seconds_total{{node=\"{node}\",op=\"{op}\",engine=\"{path}\"}} {secs}"
            );
        }
    }
}

/// One family with a sample per label set (each also labelled with the node).
fn labelled(
    o: &mut String,
    node: &str,
    name: &str,
    kind: &str,
    help: &str,
    rows: &[(String, u64)],
) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
    for (labels, value) in rows {
        let sep = if labels.is_empty() { "" } else { "," };
        let _ = writeln!(o, "{name}{{node=\"{node}\"{sep}{labels}}} {value}");
    }
}

fn family_f(o: &mut String, node: &str, name: &str, help: &str, value: f64) {
    family(o, node, name, "gauge", help, value);
}

/// One family of one sample labelled with the node: its HELP, TYPE and value lines.
fn family(
    o: &mut String,
    node: &str,
    name: &str,
    kind: &str,
    help: &str,
    value: impl std::fmt::Display,
) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
    let _ = writeln!(o, "{name}{{node=\"{node}\"}} {value}");
}

/// The metrics endpoint's own counters (`crate::control::scrape`).
pub fn render_scrape(st: &crate::control::scrape::ScrapeStats, node: &str) -> String {
    let mut o = String::new();
    for (metric, help, v) in [
        (
            "dwcp_metrics_requests_total",
            "Requests the metrics endpoint answered.",
            st.answered,
        ),
        (
            "dwcp_metrics_connections_dropped_total",
            "Connections to the metrics endpoint closed unanswered: to make room, or past their deadline.",
            st.dropped,
        ),
    ] {
        family(&mut o, node, metric, "counter", help, v);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_queue_pair_with_peer_and_worker() {
        let mut values = [0u64; stats::RDMA_FIELDS.len()];
        values[0] = 4; // qp_state: RTS (3) + 1
        values[1] = 9; // sends
        values[6] = 2; // errors_retry
        let rows = [RdmaPeerRow {
            peer: "site-b".into(),
            worker: 1,
            values,
        }];
        let t = render_rdma(&rows, &[("rcvd_rnr_err".into(), 3)], "n1");
        for line in [
            "dwcp_rdma_qp_info{node=\"n1\",peer=\"site-b\",worker=\"1\",state=\"rts\"} 1",
            "dwcp_rdma_sends_total{node=\"n1\",peer=\"site-b\",worker=\"1\"} 9",
            "dwcp_rdma_completion_errors_total{node=\"n1\",peer=\"site-b\",worker=\"1\",status=\"retry-exceeded\"} 2",
            "dwcp_rdma_completion_errors_total{node=\"n1\",peer=\"site-b\",worker=\"1\",status=\"other\"} 0",
            "dwcp_rdma_device_counter{node=\"n1\",name=\"rcvd_rnr_err\"} 3",
            "# TYPE dwcp_rdma_completion_errors_total counter",
        ] {
            assert!(t.lines().any(|l| l == line), "missing `{line}` in\n{t}");
        }
    }

    #[test]
    fn renders_each_peer_with_its_label() {
        let mut values = [0u64; stats::PEER_FIELDS.len()];
        values[0] = 3; // tx_packets
        values[1] = 4500;
        values[6] = 1_700_000_000_500_000_000; // last handshake, ns
        values[7] = 1;
        values[8] = u64::from(u32::from(std::net::Ipv4Addr::new(203, 0, 113, 20)));
        values[9] = 51900;
        let rows = [
            PeerRow {
                peer: "site-b".into(),
                transport: "rdma",
                values,
            },
            PeerRow {
                peer: "site-c".into(),
                transport: "udp",
                values: [0; stats::PEER_FIELDS.len()],
            },
        ];
        let t = render_peers(&rows, "n1");
        for line in [
            "dwcp_peer_info{node=\"n1\",peer=\"site-b\",transport=\"rdma\",endpoint=\"203.0.113.20:51900\"} 1",
            "dwcp_peer_info{node=\"n1\",peer=\"site-c\",transport=\"udp\",endpoint=\"\"} 1",
            "dwcp_peer_session_up{node=\"n1\",peer=\"site-b\"} 1",
            "dwcp_peer_session_up{node=\"n1\",peer=\"site-c\"} 0",
            "dwcp_peer_sent_packets_total{node=\"n1\",peer=\"site-b\"} 3",
            "dwcp_peer_sent_bytes_total{node=\"n1\",peer=\"site-b\"} 4500",
            "dwcp_peer_last_handshake_timestamp_seconds{node=\"n1\",peer=\"site-b\"} 1700000000.5",
            "dwcp_peer_last_handshake_timestamp_seconds{node=\"n1\",peer=\"site-c\"} 0",
        ] {
            assert!(t.lines().any(|l| l == line), "missing `{line}` in\n{t}");
        }
        assert!(t.contains("# TYPE dwcp_peer_sent_bytes_total counter"));
    }

    #[test]
    fn renders_the_endpoints_own_counters() {
        let st = crate::control::scrape::ScrapeStats {
            answered: 5,
            dropped: 2,
        };
        let t = render_scrape(&st, "gw1");
        assert!(t.contains("# TYPE dwcp_metrics_requests_total counter\n"));
        assert!(t.contains("dwcp_metrics_requests_total{node=\"gw1\"} 5\n"));
        assert!(t.contains("dwcp_metrics_connections_dropped_total{node=\"gw1\"} 2\n"));
    }

    #[test]
    fn renders_the_gathering_threads_counters() {
        let g = dwcp_kernels::gather::GatherStats {
            gathers: 3,
            packets: 300,
            largest: 128,
            most_workers: 4,
            running: std::time::Duration::from_millis(1500),
        };
        let t = render_gather(&g, "gw1");
        assert!(t.contains("# TYPE dwcp_offload_gathers_total counter\n"));
        assert!(t.contains("dwcp_offload_gathers_total{node=\"gw1\"} 3\n"));
        assert!(t.contains("dwcp_offload_gathered_packets_total{node=\"gw1\"} 300\n"));
        assert!(t.contains("dwcp_offload_gather_largest_packets{node=\"gw1\"} 128\n"));
        assert!(t.contains("dwcp_offload_gather_most_workers{node=\"gw1\"} 4\n"));
        assert!(t.contains("# TYPE dwcp_offload_gather_running_seconds gauge\n"));
        assert!(t.contains("dwcp_offload_gather_running_seconds{node=\"gw1\"} 1.500000\n"));
    }

    #[test]
    fn renders_families_with_labels() {
        let mut v = [0u64; COUNT];
        v[stats::NAMES
            .iter()
            .position(|n| *n == "drop_auth_failed")
            .unwrap()] = 3;
        v[0] = 10;
        let at = |n: &str| stats::NAMES.iter().position(|x| *x == n).unwrap();
        v[at("offload_seal_gpu_batches")] = 7;
        v[at("offload_fallback_packets")] = 5;
        v[at("offload_declined_packets")] = 2;
        v[at("offload_open_gpu_ns")] = 1_500_000_000;
        let text = render(
            &v,
            &Labels {
                node: "n1",
                lan: "lan0",
                wan: "wan0",
                workers: 2,
                engine: "cpu",
            },
        );
        assert!(
            text.contains("dwcp_drops_total{node=\"n1\",reason=\"auth-failed\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("dwcp_port_rx_packets_total{node=\"n1\",port=\"lan0\"} 10"),
            "{text}"
        );
        assert!(text.contains("# TYPE dwcp_handshakes_total counter"));
        assert!(text.contains("dwcp_workers{node=\"n1\"} 2"));
        assert!(
            text.contains("dwcp_offload_batches_total{node=\"n1\",op=\"seal\",engine=\"gpu\"} 7"),
            "{text}"
        );
        assert!(text.contains("dwcp_offload_fallback_packets_total{node=\"n1\"} 5"));
        assert!(text.contains("dwcp_offload_declined_packets_total{node=\"n1\"} 2"));
        assert!(
            text.contains(
                "dwcp_offload_busy_seconds_total{node=\"n1\",op=\"open\",engine=\"gpu\"} 1.5\n"
            ),
            "{text}"
        );
        assert_eq!(text.matches("dwcp_offload_busy_seconds_total{").count(), 8);
        let gpu = render_gpu(
            &dwcp_kernels::monitor::GpuSnapshot {
                name: "NVIDIA \"H100\"".into(),
                pci_bus_id: "0000:41:00.0".into(),
                memory_total: 100,
                memory_free: 60,
                utilization_pct: Some(12),
                temperature_c: None,
                power_mw: Some(312_456),
                clock_events: Some(0x20),
                ecc_errors: None,
            },
            std::time::Duration::from_millis(1500),
            "n1",
        );
        assert!(
            gpu.contains(
                "dwcp_gpu_info{node=\"n1\",name=\"NVIDIA _H100_\",pci_bus_id=\"0000:41:00.0\"} 1"
            ),
            "{gpu}"
        );
        assert!(gpu.contains("dwcp_gpu_utilization_ratio{node=\"n1\"} 0.12"));
        assert!(gpu.contains("dwcp_gpu_memory_free_bytes{node=\"n1\"} 60"));
        assert!(!gpu.contains("temperature"), "no reading, no sample");
        assert!(!gpu.contains("ecc"), "no ECC, no sample: {gpu}");
        assert!(
            gpu.contains("\ndwcp_gpu_power_watts{node=\"n1\"} 312.456\n"),
            "{gpu}"
        );
        assert!(gpu.contains(
            "\ndwcp_gpu_clock_event_reason{node=\"n1\",reason=\"sw_thermal_slowdown\"} 1\n"
        ));
        assert_eq!(gpu.matches("dwcp_gpu_clock_event_reason{").count(), 9);
        assert_eq!(gpu.matches("_reason{node=\"n1\",reason=").count(), 9);
        assert_eq!(
            gpu.matches("} 1\n").count(),
            2,
            "info and one reason: {gpu}"
        );
        assert!(
            gpu.contains("\ndwcp_gpu_status_age_seconds{node=\"n1\"} 1.500\n"),
            "{gpu}"
        );
        let d = render_dpdk(
            &[DpdkPort {
                name: "wan0".into(),
                link: Some((true, 1000)),
                xstats: vec![("rx_good_packets".into(), 42)],
            }],
            "n1",
        );
        assert!(
            d.contains("dwcp_port_link_up{node=\"n1\",port=\"wan0\"} 1"),
            "{d}"
        );
        assert!(d.contains("dwcp_port_link_speed_bytes{node=\"n1\",port=\"wan0\"} 125000000"));
        assert!(
            d.contains("dwcp_dpdk_xstat{node=\"n1\",port=\"wan0\",name=\"rx_good_packets\"} 42")
        );
        let mut h = [stats::Histogram::default(); stats::STAGES.len()];
        h[0].record(300, 4);
        let t = render_histograms(&h, "n1");
        assert!(
            t.contains(
                "dwcp_stage_latency_seconds_bucket{node=\"n1\",stage=\"lan_to_wan\",le=\"5e-7\"} 4"
            ),
            "{t}"
        );
        assert!(
            t.contains("dwcp_stage_latency_seconds_count{node=\"n1\",stage=\"lan_to_wan\"} 4"),
            "{t}"
        );
    }
}
