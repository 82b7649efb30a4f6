//! `dwcp demo`: two appliances in QEMU carrying two sites' traffic. Builds the image if
//! needed, makes keys and two node configs, boots site A's and site B's gateways (LAN NIC on a
//! TAP device inside a network namespace that plays the site's host, WAN NICs joined by a
//! QEMU socket link), then pings, transfers a file checked by SHA-256 and runs a short step
//! load from site A's host to site B's, and reports what both appliances' metrics and the
//! hosts measured. Everything it creates is removed at the end, on failure and on Ctrl-C.

pub mod prometheus;
pub mod rdma;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use dwcp_qemu::{Nic, Vm, VmSpec};
use serde::Serialize;

use super::image_build;
use dwcp_provisioning::document::SourceFile;
use dwcp_provisioning::types::PrivateKey;

/// Site host B's receiver (Python, standard library only).
pub const RECEIVER: &str = include_str!("sitehost/receiver.py");
/// Site host A's sender.
pub const SENDER: &str = include_str!("sitehost/sender.py");
/// The marker the sender writes every 4 KiB.
pub const MARKER: &str = "DWCP-PLAINTEXT-MARKER-7f3a";

/// The mixed load's two streams, sent at once from site A's host (10.1.0.2) to site B's
/// host (10.2.0.2) ports 5201 and 5202: kind and source port (fixed, so each is one known
/// flow).
pub const MIXED_STREAMS: [(&str, u16); 2] = [("random", 40001), ("text", 40002)];

/// Demo settings.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// MiB for the checked TCP transfer.
    pub mib: u64,
    /// MiB per step of the step load.
    pub step_mib: u64,
    /// Pings for the latency percentiles.
    pub pings: u32,
    /// Use KVM.
    pub kvm: bool,
    /// Where the image is (built when missing or older than the sources).
    pub artifacts: PathBuf,
    /// Print progress.
    pub progress: bool,
    /// How the appliances drive their LAN and WAN NICs.
    pub backend: DataPath,
    /// Carry the tunnel's data messages over RDMA (Soft-RoCE on a fourth NIC) instead of UDP.
    pub rdma: bool,
}

/// How the demo's appliances drive their data NICs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DataPath {
    /// DPDK's e1000 poll-mode driver on the vfio-bound NICs (emulated Intel IOMMU, one 1 GiB
    /// hugepage): the appliance's real path.
    Dpdk,
    /// The kernel's e1000e driver and `af_packet` rings.
    AfPacket,
}

/// What a demo run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Guest boot times to READY, ms (site A, site B).
    pub boot_ms: [u64; 2],
    /// Longest DWCP handshake (initiation to response) at site A, ms.
    pub handshake_ms: f64,
    /// First ping's round trip (ARP, handshake and all), ms.
    pub first_ping_ms: f64,
    /// The checked transfer.
    pub transfer: Transfer,
    /// Ping round-trip percentiles, ms.
    pub latency_ms: Latency,
    /// Step load: (parallel streams, Mbit/s).
    pub step_load: Vec<(u32, f64)>,
    /// Packets and bytes per direction, from the appliances' WAN counters.
    pub a_to_b: Direction,
    /// Reverse direction.
    pub b_to_a: Direction,
    /// Drops by reason at either appliance (non-zero only).
    pub drops: Vec<(String, String, u64)>,
    /// Compression ratio at site A and site B (bytes before / after).
    pub compression_ratio: [f64; 2],
    /// Payloads at site A and site B: sent compressed, compressed in vain, sent without
    /// trying (compression backed off because the peer's payloads did not shrink).
    pub compression_packets: [[u64; 3]; 2],
    /// A random stream and a compressible (log-like text) stream at once.
    pub mixed: Mixed,
    /// Offload engine.
    pub engine: String,
    /// How the NICs were driven, from the READY lines (`dpdk, vfio-pci 0000:00:03.0,…`).
    pub data_path: String,
    /// With `--rdma`: the RDMA link's capture, queue-pair counters and recovery.
    pub rdma: Option<rdma::RdmaReport>,
    /// What a Prometheus server scraping both appliances said (a PromQL query over the run,
    /// the alerts firing), or why there was none.
    pub prometheus: String,
}

/// The checked transfer.
#[derive(Clone, Debug, Serialize)]
pub struct Transfer {
    /// Bytes sent.
    pub bytes: u64,
    /// Seconds.
    pub seconds: f64,
    /// Mbit/s.
    pub mbps: f64,
    /// SHA-256 at the sender.
    pub sha256_sent: String,
    /// SHA-256 at the receiver.
    pub sha256_received: String,
}

/// The mixed load: [`MIXED_STREAMS`] at once, and what site A's LZ4 did meanwhile.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Mixed {
    /// Bytes per stream.
    pub bytes: u64,
    /// The random stream's Mbit/s.
    pub random_mbps: f64,
    /// The text stream's Mbit/s.
    pub text_mbps: f64,
    /// Both streams arrived intact (SHA-256 at each end).
    pub sha256_match: bool,
    /// Bytes before / after LZ4 over the payloads site A sent compressed meanwhile.
    pub ratio: f64,
    /// Site A's payloads meanwhile: sent compressed, compressed in vain, sent without trying.
    pub packets: [u64; 3],
}

/// Round-trip percentiles.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub samples: usize,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
}

/// Traffic in one direction over the WAN.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Direction {
    /// Frames sent by the source appliance's WAN port.
    pub packets: u64,
    /// Bytes sent.
    pub bytes: u64,
}

enum Resource {
    Netns(String),
    Pid(u32),
}

static CLEANUP: Mutex<Vec<Resource>> = Mutex::new(Vec::new());

fn register(r: Resource) {
    if let Ok(mut v) = CLEANUP.lock() {
        v.push(r);
    }
}

/// Removes everything the demo made: QEMU processes, namespaces (with their TAP devices).
pub fn cleanup() {
    let items: Vec<Resource> = CLEANUP
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default();
    for r in items.iter().rev() {
        match r {
            Resource::Pid(pid) => {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
            }
            Resource::Netns(ns) => {
                let _ = Command::new("ip").args(["netns", "del", ns]).output();
            }
        }
    }
}

struct CleanupGuard;

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        cleanup();
    }
}

/// Namespace of site A's host.
pub const NS_A: &str = "dwcp-demo-a";
/// Namespace of site B's host.
pub const NS_B: &str = "dwcp-demo-b";
/// TAP devices (site A, site B).
pub const TAPS: [&str; 2] = ["dwcpdemo-a", "dwcpdemo-b"];

fn say(opts: &DemoOptions, msg: &str) {
    if opts.progress {
        eprintln!("[demo] {msg}");
    }
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ns(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// A loopback TCP port that is free now, not in `taken`, and below the kernel's ephemeral
/// range (32768 and up by default): a port the kernel hands out for `:0` or for an outgoing
/// connection could be taken again before QEMU binds it (seen once in CI: `Address already in
/// use`), while ports below the range are only ever taken by an explicit bind.
fn free_port(taken: &[u16]) -> anyhow::Result<u16> {
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    // Start somewhere different in each run (two demos on one machine try different ports).
    let start = u16::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            % u32::from(SPAN),
    )
    .unwrap_or(0);
    (0..SPAN)
        .map(|i| FIRST + (start + i) % SPAN)
        .find(|p| !taken.contains(p) && TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .ok_or_else(|| anyhow::anyhow!("no free loopback port in {FIRST}..{}", FIRST + SPAN))
}

/// Checks the machine can run the demo: root, QEMU, python3.
pub fn preflight() -> anyhow::Result<()> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        bail!(
            "dwcp demo needs root for network namespaces and TAP devices: run `sudo scripts/main-job.sh` \
             (or `sudo ./target/debug/dwcp demo`)"
        );
    }
    if !dwcp_qemu::available() {
        let status = Command::new("apt-get")
            .args(["install", "-y", "-qq", "qemu-system-x86"])
            .status();
        if !status.is_ok_and(|s| s.success()) || !dwcp_qemu::available() {
            bail!(
                "qemu-system-x86_64 is missing and could not be installed: apt-get install qemu-system-x86"
            );
        }
    }
    for tool in ["python3", "ping", "ethtool"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("`{tool}` is missing: run scripts/setup.sh as root");
        }
    }
    Ok(())
}

fn node_config(
    site: char,
    own: &PrivateKey,
    peer: &PrivateKey,
    path: DataPath,
    with_rdma: bool,
) -> String {
    let (rdma_devices, transport) = if with_rdma {
        rdma::config(site)
    } else {
        (String::new(), "")
    };
    let (hugepages, lan_port, wan_port) = match path {
        DataPath::Dpdk => (
            1,
            "backend = \"dpdk\"\npci = \"0000:00:03.0\"",
            "backend = \"dpdk\"\npci = \"0000:00:04.0\"",
        ),
        DataPath::AfPacket => (
            0,
            "backend = \"af_packet\"\ninterface = \"eth0\"",
            "backend = \"af_packet\"\ninterface = \"eth1\"",
        ),
    };
    let (lan, wan, peer_wan, peer_lan) = match site {
        'a' => (
            "10.1.0.1/24",
            "198.51.100.1/30",
            "198.51.100.2",
            "10.2.0.0/16",
        ),
        _ => (
            "10.2.0.1/24",
            "198.51.100.2/30",
            "198.51.100.1",
            "10.1.0.0/16",
        ),
    };
    format!(
        "# DWCP demo: site {site}'s gateway (generated by `dwcp demo`).\n\
         name = \"site-{site}-gw\"\n\
         [management]\nmac = \"52:54:00:00:0{site}:02\"\naddress = \"10.0.2.15/24\"\ngateway = \"10.0.2.2\"\n\
         [cores]\nhousekeeping = [0]\ndataplane = [1]\n\
         [hugepages]\ncount = {hugepages}\n\
         [boot]\nconsole = [\"ttyS0,115200\"]\n\
         [[ports]]\nname = \"lan0\"\nrole = \"lan\"\n{lan_port}\naddress = \"{lan}\"\n\
         [[ports]]\nname = \"wan0\"\nrole = \"wan\"\n{wan_port}\naddress = \"{wan}\"\n\
         {rdma_devices}\
         [tunnel]\nlisten_port = 51900\nprivate_key = \"{}\"\n\
         [[tunnel.peers]]\nname = \"site-{}\"\npublic_key = \"{}\"\nendpoint = \"{peer_wan}:51900\"\n\
         allowed_prefixes = [\"{peer_lan}\"]\ncompression = \"lz4\"\n{transport}\
         [metrics]\nlisten = \"10.0.2.15:9100\"\n",
        own.expose_base64(),
        if site == 'a' { 'b' } else { 'a' },
        peer.public_key()
    )
}

fn image_is_stale(artifacts: &Path) -> bool {
    let Ok(built) = std::fs::metadata(artifacts.join("initrd.img")).and_then(|m| m.modified())
    else {
        return true;
    };
    let root = image_build::workspace_root();
    // The binaries' sources (the -sys crates' shims too) and what picks the image's modules.
    let mut stack = vec![
        root.join("init/src"),
        root.join("dataplane"),
        root.join("provisioning/src"),
        root.join("kernels/src"),
        root.join("image/src"),
        root.join("cli/src/image_build.rs"),
    ];
    while let Some(dir) = stack.pop() {
        if dir.is_file() {
            if std::fs::metadata(&dir)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > built)
            {
                return true;
            }
            continue;
        }
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > built)
            {
                return true;
            }
        }
    }
    false
}

fn metrics(port: u16) -> anyhow::Result<String> {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", &format!("http://127.0.0.1:{port}/metrics")])
        .output()?;
    if !out.status.success() {
        bail!("metrics on 127.0.0.1:{port} did not answer");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The integer value of the first series whose line starts with `series`.
pub fn metric_u64(text: &str, series: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// The value of the first series whose line starts with `series`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The `per_mille`-th per-mille of sorted samples (nearest rank).
fn percentile(sorted: &[f64], per_mille: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (per_mille * sorted.len()).div_ceil(1000).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

fn ping_times(out: &str) -> Vec<f64> {
    out.lines()
        .filter_map(|l| {
            l.split("time=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// What one TCP stream of a transfer did: bytes, the sender's SHA-256, seconds, the
/// receiver's SHA-256.
type StreamResult = (u64, String, f64, String);

/// Runs the demo.
pub fn run_demo(opts: &DemoOptions) -> anyhow::Result<Report> {
    preflight()?;
    let _guard = CleanupGuard;
    prepare(opts)?;
    let dir = tempfile::Builder::new().prefix("dwcp-demo-").tempdir()?;
    let keys = [PrivateKey::generate()?, PrivateKey::generate()?];
    let configs = [
        node_config('a', &keys[0], &keys[1], opts.backend, opts.rdma),
        node_config('b', &keys[1], &keys[0], opts.backend, opts.rdma),
    ];
    let mut cfgs = Vec::new();
    for (i, text) in configs.iter().enumerate() {
        let name = format!("site-{}.toml", ['a', 'b'][i]);
        let cfg = dwcp_provisioning::validate::check(&SourceFile::new(&name, text.clone()))
            .map_err(|d| anyhow::anyhow!("generated config invalid: {}", d[0]))?;
        std::fs::write(dir.path().join(&name), text)?;
        cfgs.push(cfg);
    }
    let base_initrd = std::fs::read(opts.artifacts.join("initrd.img"))?;
    let wan_port = free_port(&[])?;
    let metric_a = free_port(&[wan_port])?;
    let metric_ports = [metric_a, free_port(&[wan_port, metric_a])?];
    let rdma_port = free_port(&[wan_port, metric_ports[0], metric_ports[1]])?;
    let mut vms: Vec<Vm> = Vec::new();
    for (i, site) in ['a', 'b'].into_iter().enumerate() {
        let node = Node {
            i,
            site,
            dir: dir.path(),
            config_text: &configs[i],
            config: &cfgs[i],
            wan_port,
            rdma_port,
            metric_port: metric_ports[i],
        };
        vms.push(boot_node(opts, &node, &base_initrd)?);
    }
    let (boot_ms, data_path) = wait_ready(opts, &mut vms)?;
    say(
        opts,
        "starting Prometheus: it scrapes both appliances every second and evaluates monitoring/alerts.yml...",
    );
    let since = Instant::now();
    let prom = prometheus::start(dir.path(), &metric_ports).map_err(|e| {
        say(
            opts,
            &format!("Prometheus: not started ({e:#}); going on without it"),
        );
        format!("not run: {e:#}")
    });
    let (first_ping_ms, latency) = ping_latency(opts)?;
    let transfers = Transfers::new(opts, dir.path(), metric_ports[0])?;
    say(
        opts,
        &format!("TCP transfer of {} MiB, checked by SHA-256...", opts.mib),
    );
    let transfer = one_transfer(opts, &transfers)?;
    let step_load = step_load(opts, &transfers)?;
    let mixed = mixed_load(opts, &transfers, metric_ports[0])?;

    let prometheus = match &prom {
        Ok(p) => prometheus::report(p, since.elapsed().as_secs() + 5)
            .unwrap_or_else(|e| format!("query failed: {e:#}")),
        Err(why) => why.clone(),
    };
    let mut report = read_report(
        opts,
        metric_ports,
        Measured {
            boot_ms,
            first_ping_ms,
            transfer,
            latency,
            step_load,
            mixed,
            data_path,
        },
    )?;
    report.prometheus = prometheus;
    drop(prom);

    if opts.rdma {
        let (a, b) = vms.split_at_mut(1);
        report.rdma = Some(rdma::checks(
            opts,
            &mut a[0],
            &mut b[0],
            &dir.path().join("rdma-link.pcap"),
            metric_ports,
        )?);
    }
    say(opts, "powering both nodes off...");
    for vm in &mut vms {
        let _ = vm.monitor("system_powerdown");
    }
    for vm in &mut vms {
        let _ = vm.wait_exit(Duration::from_secs(60));
    }
    drop(vms);
    Ok(report)
}

/// One stream of `opts.mib` MiB of random bytes, checked by SHA-256.
fn one_transfer(opts: &DemoOptions, transfers: &Transfers<'_>) -> anyhow::Result<Transfer> {
    let t = transfers.run(&[("random", 0)], opts.mib)?.remove(0);
    let transfer = Transfer {
        bytes: t.0,
        seconds: t.2,
        mbps: t.0 as f64 * 8.0 / t.2 / 1e6,
        sha256_sent: t.1,
        sha256_received: t.3,
    };
    say(
        opts,
        &format!(
            "transfer: {:.1} Mbit/s, SHA-256 {}",
            transfer.mbps,
            if transfer.sha256_sent == transfer.sha256_received {
                "matches"
            } else {
                "DIFFERS"
            }
        ),
    );
    Ok(transfer)
}

/// 1, 2 and 4 random streams at once: Mbit/s for each step.
fn step_load(opts: &DemoOptions, transfers: &Transfers<'_>) -> anyhow::Result<Vec<(u32, f64)>> {
    let mut step_load = Vec::new();
    for streams in [1u32, 2, 4] {
        say(opts, &format!("step load: {streams} stream(s)..."));
        let kinds = vec![("random", 0); streams as usize];
        let results = transfers.run(&kinds, opts.step_mib)?;
        let bytes: u64 = results.iter().map(|r| r.0).sum();
        let secs = results.iter().map(|r| r.2).fold(0.0, f64::max).max(1e-6);
        step_load.push((streams, bytes as f64 * 8.0 / secs / 1e6));
    }
    Ok(step_load)
}

/// A random and a text stream at once: their rates, and what site A's LZ4 did meanwhile.
fn mixed_load(
    opts: &DemoOptions,
    transfers: &Transfers<'_>,
    metric_port: u16,
) -> anyhow::Result<Mixed> {
    let lz4_series = [
        "dwcp_compressed_packets_total",
        "dwcp_compress_no_gain_packets_total",
        "dwcp_compress_skipped_packets_total",
        "dwcp_compress_in_bytes_total",
        "dwcp_compress_out_bytes_total",
    ];
    let lz4_of = |m: &str| lz4_series.map(|series| metric_u64(m, series));
    say(
        opts,
        &format!(
            "mixed load: a random and a text stream at once, {} MiB each...",
            opts.step_mib
        ),
    );
    // Flows share 128 compression gates by hash: one of the step load's random streams
    // (ephemeral ports) may have left a back-off in the text stream's gate, which lasts at most
    // 100 ms (`GATE_PAUSE_MAX` in the data plane's tunnel). Start after it has run out, so the
    // text stream's gate starts fresh, as it would on a quiet link.
    std::thread::sleep(Duration::from_millis(300));
    let before = lz4_of(&metrics(metric_port)?);
    let results = transfers.run(&MIXED_STREAMS, opts.step_mib)?;
    let after = lz4_of(&metrics(metric_port)?);
    let delta: Vec<u64> = after
        .iter()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(b))
        .collect();
    let mbps = |r: &StreamResult| r.0 as f64 * 8.0 / r.2.max(1e-6) / 1e6;
    let mixed = Mixed {
        bytes: results[0].0,
        random_mbps: mbps(&results[0]),
        text_mbps: mbps(&results[1]),
        sha256_match: results.iter().all(|r| r.1 == r.3),
        ratio: delta[3] as f64 / delta[4].max(1) as f64,
        packets: [delta[0], delta[1], delta[2]],
    };
    Ok(mixed)
}

/// Removes what an interrupted run left, sets the Ctrl-C handler that cleans up, and builds
/// the image when it is missing or stale.
fn prepare(opts: &DemoOptions) -> anyhow::Result<()> {
    // Leftovers of an interrupted run.
    for n in [NS_A, NS_B] {
        let _ = Command::new("ip").args(["netns", "del", n]).output();
    }
    let handler_set = ctrlc::set_handler(|| {
        eprintln!("[demo] interrupted: removing VMs, namespaces and TAP devices");
        cleanup();
        #[allow(clippy::exit)] // the demo's own Ctrl-C handler; not PID 1
        std::process::exit(130);
    });
    if handler_set.is_err() {
        say(
            opts,
            "note: Ctrl-C handler already set; cleanup runs when the demo returns",
        );
    }

    if image_is_stale(&opts.artifacts) {
        say(
            opts,
            &format!(
                "building the image into {} (kernel, static init and data plane)...",
                opts.artifacts.display()
            ),
        );
        let bins = image_build::build_binaries(false)?;
        image_build::build(None, &opts.artifacts, bins)?;
    } else {
        say(
            opts,
            &format!("image in {} is up to date", opts.artifacts.display()),
        );
    }
    Ok(())
}

/// One appliance node of the demo.
struct Node<'a> {
    /// 0 for site A, 1 for site B.
    i: usize,
    site: char,
    /// Where its initrd and console log go.
    dir: &'a Path,
    config_text: &'a str,
    config: &'a dwcp_provisioning::NodeConfig,
    /// The QEMU socket link joining the WAN NICs.
    wan_port: u16,
    /// The QEMU socket link joining the Soft-RoCE NICs (with `--rdma`).
    rdma_port: u16,
    /// Its metrics port, forwarded to the host's loopback.
    metric_port: u16,
}

/// The node's NICs: management (user networking, metrics forwarded), LAN (a TAP device for
/// the site's host), WAN (the socket link `wan`), and with `--rdma` the Soft-RoCE NIC on a
/// socket link of its own (site A's side captured).
fn nics(opts: &DemoOptions, node: &Node<'_>, wan: String) -> Vec<Nic> {
    let (i, site) = (node.i, node.site);
    let mut nics = vec![
        Nic {
            model: "virtio-net-pci".into(),
            mac: format!("52:54:00:00:0{site}:02"),
            slot: Some(2),
            netdev: format!(
                "user,hostfwd=tcp:127.0.0.1:{}-10.0.2.15:9100",
                node.metric_port
            ),
            dump: None,
        },
        Nic {
            model: "e1000e".into(),
            mac: format!("52:54:00:00:0{site}:03"),
            slot: Some(3),
            netdev: format!(
                "tap,ifname={},script=no,downscript=no,vnet_hdr=off",
                TAPS[i]
            ),
            dump: None,
        },
        Nic {
            model: "e1000e".into(),
            mac: format!("52:54:00:00:0{site}:04"),
            slot: Some(4),
            netdev: wan,
            dump: None,
        },
    ];
    if opts.rdma {
        let end = if i == 0 { "listen" } else { "connect" };
        nics.push(Nic {
            model: "virtio-net-pci".into(),
            mac: format!("52:54:00:00:0{site}:05"),
            slot: Some(rdma::SLOT),
            netdev: format!("socket,{end}=127.0.0.1:{}", node.rdma_port),
            dump: (i == 0).then(|| node.dir.join("rdma-link.pcap")),
        });
    }
    nics
}

/// Makes the node's site namespace, boots the node, and gives its LAN TAP device to the
/// site's host.
fn boot_node(opts: &DemoOptions, node: &Node<'_>, base_initrd: &[u8]) -> anyhow::Result<Vm> {
    let (i, site) = (node.i, node.site);
    for n in [NS_A, NS_B].iter().skip(i).take(1) {
        run("ip", &["netns", "add", n])?;
        register(Resource::Netns((*n).to_owned()));
        ns(n, &["ip", "link", "set", "lo", "up"])?;
    }
    let mut initrd = base_initrd.to_vec();
    initrd.extend(image_build::config_initrd(node.config_text)?);
    let initrd_path = node.dir.join(format!("initrd-{site}.img"));
    std::fs::write(&initrd_path, initrd)?;
    let wan = if i == 0 {
        format!("socket,listen=127.0.0.1:{}", node.wan_port)
    } else {
        format!("socket,connect=127.0.0.1:{}", node.wan_port)
    };
    let nics = nics(opts, node, wan);
    let spec = VmSpec {
        name: format!("site-{site}"),
        kernel: opts.artifacts.join("vmlinuz"),
        initrd: initrd_path,
        append: dwcp_provisioning::cmdline::kernel_cmdline(node.config),
        // q35 with one 1 GiB hugepage: 2 GiB low RAM + the page + a spare gigabyte
        // (see qemu_boot::vm_spec).
        memory_mib: if opts.backend == DataPath::Dpdk {
            4096
        } else {
            1024
        },
        cpus: 2,
        nics,
        kvm: opts.kvm,
        iommu: opts.backend == DataPath::Dpdk,
        console_log: Some(node.dir.join(format!("console-{site}.log"))),
        pxe: None,
        disk: None,
        other_disks: Vec::new(),
        rtc_base: None,
    };
    say(
        opts,
        &format!(
            "booting node {} (QEMU {}, 2 vCPUs, {} GiB, {})...",
            site.to_ascii_uppercase(),
            if opts.kvm { "KVM" } else { "TCG" },
            if opts.backend == DataPath::Dpdk { 4 } else { 1 },
            match opts.backend {
                DataPath::Dpdk => "NICs on DPDK through vfio-pci",
                DataPath::AfPacket => "NICs on af_packet",
            }
        ),
    );
    let vm = Vm::start(&spec)?;
    register(Resource::Pid(vm.pid()));
    // QEMU made the TAP device in this namespace; hand it to the site's host.
    let n = [NS_A, NS_B][i];
    let mut moved = false;
    for _ in 0..50 {
        if run("ip", &["link", "set", TAPS[i], "netns", n]).is_ok() {
            moved = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !moved {
        bail!(
            "QEMU did not create TAP device {}; console:\n{}",
            TAPS[i],
            vm.tail(20)
        );
    }
    let host = ["10.1.0.2/24", "10.2.0.2/24"][i];
    let gw = ["10.1.0.1", "10.2.0.1"][i];
    ns(
        n,
        &[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{}.disable_ipv6=1", TAPS[i]),
        ],
    )?;
    let _ = ns(
        n,
        &[
            "ethtool", "-K", TAPS[i], "tx", "off", "tso", "off", "gso", "off", "gro", "off",
        ],
    );
    ns(n, &["ip", "addr", "add", host, "dev", TAPS[i]])?;
    ns(n, &["ip", "link", "set", TAPS[i], "up"])?;
    ns(n, &["ip", "route", "add", "default", "via", gw])?;
    Ok(vm)
}

/// Waits for both nodes' `DWCP READY`: their boot times, and site A's data path in words.
fn wait_ready(opts: &DemoOptions, vms: &mut [Vm]) -> anyhow::Result<([u64; 2], String)> {
    let mut boot_ms = [0u64; 2];
    let mut data_path = String::new();
    for (i, vm) in vms.iter_mut().enumerate() {
        let line = vm
            .wait_for("DWCP READY", Duration::from_secs(240))
            .with_context(|| format!("node {} did not become ready", ['A', 'B'][i]))?;
        let fact = |key: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or("?")
                .to_owned()
        };
        boot_ms[i] = fact("boot_ms").parse().unwrap_or(0);
        if i == 0 {
            data_path = match opts.backend {
                DataPath::Dpdk => format!(
                    "dpdk (e1000 PMD), vfio-pci {}, 1 GiB hugepages {}",
                    fact("vfio_bound"),
                    fact("hugepages_1g")
                ),
                DataPath::AfPacket => "af_packet (kernel e1000e)".to_owned(),
            };
        }
        say(opts, &format!("node {} ready: {line}", ['A', 'B'][i]));
    }
    Ok((boot_ms, data_path))
}

/// The first ping through the tunnel (ARP and the handshake included), then the latency
/// percentiles of `opts.pings` more.
fn ping_latency(opts: &DemoOptions) -> anyhow::Result<(f64, Latency)> {
    say(opts, "handshake and ping from site A's host to site B's...");
    let first = Instant::now();
    let mut first_ok = false;
    for _ in 0..30 {
        if ns(NS_A, &["ping", "-c", "1", "-W", "2", "10.2.0.2"]).is_ok() {
            first_ok = true;
            break;
        }
    }
    let first_ping_ms = first.elapsed().as_secs_f64() * 1e3;
    if !first_ok {
        bail!("site A's host cannot reach site B's host through the tunnel");
    }
    say(
        opts,
        &format!(
            "{} pings for the latency percentiles (about {} s)...",
            opts.pings,
            opts.pings / 20 + 1
        ),
    );
    let pings = ns(
        NS_A,
        &[
            "ping",
            "-c",
            &opts.pings.to_string(),
            "-i",
            "0.02",
            "-W",
            "2",
            "10.2.0.2",
        ],
    )?;
    let mut times = ping_times(&pings);
    times.sort_by(f64::total_cmp);
    let latency = Latency {
        samples: times.len(),
        p50: percentile(&times, 500),
        p95: percentile(&times, 950),
        p99: percentile(&times, 990),
        p999: percentile(&times, 999),
    };
    Ok((first_ping_ms, latency))
}

/// TCP transfers from site A's host to site B's, by the sender and receiver scripts.
struct Transfers<'a> {
    opts: &'a DemoOptions,
    rx: String,
    tx: String,
    /// Site A's metrics port, for progress.
    metric_port: u16,
}

impl<'a> Transfers<'a> {
    /// Writes the scripts into `dir`.
    fn new(opts: &'a DemoOptions, dir: &Path, metric_port: u16) -> anyhow::Result<Self> {
        let rx = dir.join("rx.py");
        let tx = dir.join("tx.py");
        std::fs::write(&rx, RECEIVER)?;
        std::fs::write(&tx, SENDER)?;
        Ok(Self {
            opts,
            rx: rx.to_string_lossy().into_owned(),
            tx: tx.to_string_lossy().into_owned(),
            metric_port,
        })
    }

    /// One TCP stream per entry, all at once: each sends `mib` MiB of its kind ("random" or
    /// "text"), from its source port (0: any).
    fn run(&self, streams: &[(&str, u16)], mib: u64) -> anyhow::Result<Vec<StreamResult>> {
        let mut receivers = Vec::new();
        for s in 0..streams.len() {
            let port = (5201 + s).to_string();
            let child = Command::new("ip")
                .args([
                    "netns", "exec", NS_B, "python3", &self.rx, "10.2.0.2", &port,
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            register(Resource::Pid(child.id()));
            receivers.push(child);
        }
        std::thread::sleep(Duration::from_millis(500));
        let senders: Vec<_> = streams
            .iter()
            .enumerate()
            .map(|(s, (kind, sport))| {
                Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        NS_A,
                        "python3",
                        &self.tx,
                        "10.2.0.2",
                        &(5201 + s).to_string(),
                        &mib.to_string(),
                        MARKER,
                        kind,
                        &sport.to_string(),
                    ])
                    .stdout(std::process::Stdio::piped())
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        // Progress every few seconds, from site A's WAN counter.
        let mut senders: Vec<std::process::Child> = senders;
        let (t0, mut last) = (Instant::now(), Instant::now());
        while senders.iter_mut().any(|c| matches!(c.try_wait(), Ok(None))) {
            std::thread::sleep(Duration::from_millis(200));
            if last.elapsed() >= Duration::from_secs(3) {
                last = Instant::now();
                if let Ok(m) = metrics(self.metric_port) {
                    // By UDP on the WAN port, or by RDMA.
                    let sent = metric_u64(
                        &m,
                        "dwcp_port_tx_bytes_total{node=\"site-a-gw\",port=\"wan0\"}",
                    ) + metric_u64(
                        &m,
                        "dwcp_rdma_sent_bytes_total{node=\"site-a-gw\",peer=\"site-b\",worker=\"0\"}",
                    );
                    say(
                        self.opts,
                        &format!(
                            "  ... {:.0} s, {} MiB sent to site B so far",
                            t0.elapsed().as_secs_f64(),
                            sent >> 20
                        ),
                    );
                }
            }
        }
        let mut results = Vec::new();
        for (sender, receiver) in senders.into_iter().zip(receivers) {
            let s = sender.wait_with_output()?;
            let r = receiver.wait_with_output()?;
            let s = String::from_utf8_lossy(&s.stdout).trim().to_owned();
            let r = String::from_utf8_lossy(&r.stdout)
                .lines()
                .last()
                .unwrap_or_default()
                .to_owned();
            let sp: Vec<&str> = s.split(' ').collect();
            let rp: Vec<&str> = r.split(' ').collect();
            if sp.len() < 3 || rp.len() < 2 {
                bail!("transfer failed: sender said `{s}`, receiver said `{r}`");
            }
            results.push((
                sp[0].parse()?,
                sp[1].to_owned(),
                sp[2].parse()?,
                rp[1].to_owned(),
            ));
        }
        Ok(results)
    }
}

/// What the demo measured from the hosts and the consoles.
struct Measured {
    boot_ms: [u64; 2],
    first_ping_ms: f64,
    transfer: Transfer,
    latency: Latency,
    step_load: Vec<(u32, f64)>,
    mixed: Mixed,
    data_path: String,
}

/// The report: what was measured, with both appliances' counters read over the management
/// network.
fn read_report(opts: &DemoOptions, metric_ports: [u16; 2], m: Measured) -> anyhow::Result<Report> {
    say(
        opts,
        "reading both appliances' metrics over the management network...",
    );
    let ma = metrics(metric_ports[0])?;
    let mb = metrics(metric_ports[1])?;
    let get = |m: &str, s: &str| metric(m, s).unwrap_or(0.0);
    let dir_of = |m: &str, node: &str| Direction {
        packets: metric_u64(
            m,
            &format!("dwcp_port_tx_packets_total{{node=\"{node}\",port=\"wan0\"}}"),
        ),
        bytes: metric_u64(
            m,
            &format!("dwcp_port_tx_bytes_total{{node=\"{node}\",port=\"wan0\"}}"),
        ),
    };
    let mut drops = Vec::new();
    for (m, node) in [(&ma, "site-a-gw"), (&mb, "site-b-gw")] {
        for l in m.lines().filter(|l| l.starts_with("dwcp_drops_total{")) {
            let reason = l
                .split("reason=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("?");
            let v: u64 = l
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if v > 0 {
                drops.push((node.to_owned(), reason.to_owned(), v));
            }
        }
    }
    let engine = ma
        .lines()
        .find(|l| l.starts_with("dwcp_engine_info"))
        .and_then(|l| {
            l.split("engine=\"")
                .nth(1)?
                .split('"')
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".into());
    let report = Report {
        boot_ms: m.boot_ms,
        handshake_ms: get(&ma, "dwcp_handshake_rtt_seconds_max") * 1e3,
        first_ping_ms: m.first_ping_ms,
        transfer: m.transfer,
        latency_ms: m.latency,
        step_load: m.step_load,
        a_to_b: dir_of(&ma, "site-a-gw"),
        b_to_a: dir_of(&mb, "site-b-gw"),
        drops,
        compression_ratio: [
            get(&ma, "dwcp_compression_ratio"),
            get(&mb, "dwcp_compression_ratio"),
        ],
        compression_packets: [&ma, &mb].map(|m| {
            [
                "dwcp_compressed_packets_total",
                "dwcp_compress_no_gain_packets_total",
                "dwcp_compress_skipped_packets_total",
            ]
            .map(|series| metric_u64(m, series))
        }),
        mixed: m.mixed,
        engine,
        data_path: m.data_path,
        rdma: None,
        prometheus: String::new(),
    };
    Ok(report)
}

/// The report as a table.
pub fn table(r: &Report) -> String {
    let ok = if r.transfer.sha256_sent == r.transfer.sha256_received {
        "match"
    } else {
        "DIFFER"
    };
    let mut o = String::new();
    o.push_str("DWCP demo: site A host → gateway A ⇄ WAN ⇄ gateway B → site B host (QEMU)\n");
    o.push_str(&format!(
        "  boot to READY          A {} ms, B {} ms (guest clock)\n",
        r.boot_ms[0], r.boot_ms[1]
    ));
    o.push_str(&format!(
        "  handshake              {:.2} ms (initiation → response, site A)\n",
        r.handshake_ms
    ));
    o.push_str(&format!(
        "  first ping             {:.0} ms (includes ARP and the handshake)\n",
        r.first_ping_ms
    ));
    o.push_str(&format!(
        "  transfer               {} bytes in {:.2} s = {:.1} Mbit/s, SHA-256 {ok} ({}…)\n",
        r.transfer.bytes,
        r.transfer.seconds,
        r.transfer.mbps,
        &r.transfer.sha256_received.get(..16).unwrap_or("")
    ));
    o.push_str(&format!(
        "  latency, {} pings     P50 {:.2}  P95 {:.2}  P99 {:.2}  P99.9 {:.2} ms\n",
        r.latency_ms.samples,
        r.latency_ms.p50,
        r.latency_ms.p95,
        r.latency_ms.p99,
        r.latency_ms.p999
    ));
    let steps: Vec<String> = r
        .step_load
        .iter()
        .map(|(s, m)| format!("{s} stream(s) {m:.1} Mbit/s"))
        .collect();
    o.push_str(&format!("  step load              {}\n", steps.join(" | ")));
    o.push_str(&format!(
        "  A → B over the WAN     {} packets, {} bytes\n",
        r.a_to_b.packets, r.a_to_b.bytes
    ));
    o.push_str(&format!(
        "  B → A over the WAN     {} packets, {} bytes\n",
        r.b_to_a.packets, r.b_to_a.bytes
    ));
    let drops: Vec<String> = r
        .drops
        .iter()
        .map(|(n, reason, v)| format!("{n} {reason} {v}"))
        .collect();
    o.push_str(&format!(
        "  drops                  {}\n",
        if drops.is_empty() {
            "none".to_owned()
        } else {
            drops.join(", ")
        }
    ));
    o.push_str(&format!(
        "  compression ratio      A {:.2}, B {:.2}\n",
        r.compression_ratio[0], r.compression_ratio[1]
    ));
    let [a, b] = r.compression_packets;
    o.push_str(&format!(
        "  LZ4 payloads           A {} shrunk, {} in vain, {} not tried; B {} shrunk, {} in vain, {} not tried\n",
        a[0], a[1], a[2], b[0], b[1], b[2]
    ));
    let m = &r.mixed;
    o.push_str(&format!(
        "  mixed load             random {:.1} Mbit/s + text {:.1} Mbit/s, SHA-256 {}; A's LZ4 ratio {:.2}, {} shrunk, {} in vain, {} not tried\n",
        m.random_mbps,
        m.text_mbps,
        if m.sha256_match { "match" } else { "DIFFER" },
        m.ratio,
        m.packets[0],
        m.packets[1],
        m.packets[2]
    ));
    o.push_str(&format!("  engine                 {}\n", r.engine));
    o.push_str(&format!("  data path              {}\n", r.data_path));
    o.push_str(&format!("  Prometheus             {}\n", r.prometheus));
    if let Some(x) = &r.rdma {
        o.push_str(&format!(
            "  RDMA (Soft-RoCE)       A sent {} SENDs ({} inline), received {}; B sent {}, received {}\n",
            x.sends_a, x.inline_sends_a, x.receives_a, x.sends_b, x.receives_b
        ));
        o.push_str(&format!(
            "  RDMA link capture      {} frames, {} RoCEv2; plaintext marker seen {} times ({} marker pings answered)\n",
            x.link_frames, x.roce_frames, x.marker_seen, x.marker_pings
        ));
        o.push_str(&format!(
            "  RDMA recovery          B's data plane killed: traffic back in {:.1} s, A's queue pair remade {} time(s), {} SENDs since\n",
            x.recovery_s, x.reconnects_a, x.sends_a_after
        ));
        o.push_str(&format!("  RDMA status (A)        {}\n", x.status_a));
        let bench: Vec<String> = x
            .bench
            .iter()
            .map(|b| {
                format!(
                    "{} B {:.0}/{:.0} µs {:.0}/{:.0} msg/s",
                    b[0], b[1], b[2], b[3], b[4]
                )
            })
            .collect();
        o.push_str(&format!(
            "  bench rdma (A)         RDMA/UDP half round trip and streamed: {} (TCG guest: functional only)\n",
            bench.join(", ")
        ));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_below_the_ephemeral_range_distinct_and_bindable() {
        let a = free_port(&[]).unwrap();
        // Held: the next pick must step over it.
        let held = TcpListener::bind(("127.0.0.1", a)).unwrap();
        let b = free_port(&[]).unwrap();
        let c = free_port(&[b]).unwrap();
        for p in [a, b, c] {
            assert!((20_000..32_000).contains(&p), "{p}");
        }
        assert!(a != b && b != c, "{a} {b} {c}");
        drop(held);
        assert!(TcpListener::bind(("127.0.0.1", c)).is_ok());
    }

    #[test]
    fn percentiles_and_ping_parsing() {
        let t = ping_times(
            "64 bytes from 10.2.0.2: icmp_seq=1 ttl=62 time=1.50 ms\n64 bytes: time=3 ms\nno time here\n",
        );
        assert_eq!(t, vec![1.5, 3.0]);
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&v, 500), 500.0);
        assert_eq!(percentile(&v, 999), 999.0);
        assert_eq!(percentile(&[], 500), 0.0);
    }

    #[test]
    fn generated_configs_are_valid() {
        let (a, b) = (
            PrivateKey::generate().unwrap(),
            PrivateKey::generate().unwrap(),
        );
        for path in [DataPath::Dpdk, DataPath::AfPacket] {
            for (site, own, peer) in [('a', &a, &b), ('b', &b, &a)] {
                for with_rdma in [false, true] {
                    let text = node_config(site, own, peer, path, with_rdma);
                    let c = dwcp_provisioning::validate::check(&SourceFile::new("x", text))
                        .unwrap_or_else(|d| panic!("{d:#?}"));
                    assert_eq!(c.rdma.len(), usize::from(with_rdma));
                    assert_eq!(
                        c.tunnel.peers[0].transport == dwcp_provisioning::schema::Transport::Rdma,
                        with_rdma
                    );
                }
            }
        }
    }
}
