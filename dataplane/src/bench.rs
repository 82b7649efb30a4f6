//! `bench pipeline`: one core's DWCP encapsulation and decapsulation throughput on the
//! `memory` backend (tunnel A seals into a memory port, tunnel B opens from it), per packet
//! size and compression mode, beside `openssl speed -evp aes-256-gcm` at the same size
//! measured in the same run — the ceiling for a crypto-bound path (docs/benchmarks.md).

use std::process::Command;
use std::time::{Duration, Instant};

use dwcp_kernels::Engine;
use dwcp_kernels::cpu::CpuEngine;
use dwcp_kernels::cuda::Op;

use crate::io::PacketPort;
use crate::io::memory;
use crate::proto::tunnel::{Action, Burst, MAX_INNER, Params, PeerSpec, Tunnel};

/// Payload kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Compression off.
    Plain,
    /// Compression on, text-like payload.
    Compressible,
    /// Compression on, random payload (sent uncompressed after the attempt).
    Random,
    /// Compression on, two flows interleaved packet by packet: one text-like, one random
    /// (gateway rows only).
    Mixed,
}

impl Payload {
    fn name(self) -> &'static str {
        match self {
            Payload::Plain => "off",
            Payload::Compressible => "lz4-compressible",
            Payload::Random => "lz4-random",
            Payload::Mixed => "lz4-mixed-flows",
        }
    }
}

/// One measurement.
#[derive(Clone, Debug)]
pub struct Row {
    /// Inner packet size.
    pub size: usize,
    /// Compression mode.
    pub payload: Payload,
    /// Encapsulation alone: Gbit/s of inner bytes.
    pub encap_gbps: f64,
    /// Decapsulation alone.
    pub decap_gbps: f64,
    /// Encap, memory port, decap, end to end on one core.
    pub pipeline_gbps: f64,
    /// Packets per second end to end, millions.
    pub pipeline_mpps: f64,
    /// `openssl speed -evp aes-256-gcm` at this size, Gbit/s (one operation per byte).
    pub openssl_gbps: Option<f64>,
    /// The CPU engine's bare AES-256-GCM seal at this size, Gbit/s (no protocol around it).
    pub aead_gbps: f64,
}

impl Row {
    /// Encapsulation against the openssl ceiling.
    pub fn encap_ratio(&self) -> Option<f64> {
        self.openssl_gbps.map(|o| self.encap_gbps / o)
    }
    /// Encapsulation against the bare AEAD it uses.
    pub fn encap_vs_aead(&self) -> f64 {
        self.encap_gbps / self.aead_gbps
    }
    /// Decapsulation against the openssl ceiling.
    pub fn decap_ratio(&self) -> Option<f64> {
        self.openssl_gbps.map(|o| self.decap_gbps / o)
    }
}

fn payload(size: usize, kind: Payload, seed: u64) -> Vec<u8> {
    match kind {
        Payload::Compressible => b"GET /ckpt/layer-0017/shard-0003 HTTP/1.1 Host: dc-b\r\n"
            .iter()
            .copied()
            .cycle()
            .take(size)
            .collect(),
        // The random half of a mixed load.
        Payload::Plain | Payload::Random | Payload::Mixed => {
            let mut x = seed | 1;
            (0..size)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()[5]
                })
                .collect()
        }
    }
}

/// Two tunnels with an established session, compression as asked.
fn pair(compress: bool) -> (Tunnel, Tunnel) {
    let key = |_| dwcp_provisioning::types::PrivateKey::generate().expect("random");
    let (ka, kb) = (key(0), key(1));
    let ep = Some("192.0.2.1:51900".parse().expect("address"));
    let spec = |k: &dwcp_provisioning::types::PrivateKey| PeerSpec {
        public: k.public_key().0,
        psk: [0; 32],
        endpoint: ep,
        compress,
    };
    let mut a = Tunnel::new(
        0,
        *ka.expose_secret(),
        Params {
            keepalive: None,
            ..Params::default()
        },
        Duration::from_secs(1),
        vec![spec(&kb)],
    );
    let mut b = Tunnel::new(
        1,
        *kb.expose_secret(),
        Params {
            keepalive: None,
            ..Params::default()
        },
        Duration::from_secs(1),
        vec![spec(&ka)],
    );
    let mut e = CpuEngine;
    let mut buf = vec![0u8; MAX_INNER + 128];
    let mut out = vec![0u8; MAX_INNER + 128];
    let _ = a.encapsulate(&mut e, 0, &[0u8; 10], &mut buf, Duration::ZERO);
    let Action::Send { len, .. } = a.tick(&mut e, &mut buf, Duration::ZERO) else {
        unreachable!("A starts a handshake")
    };
    let Action::Send { len, .. } = b.receive(&mut e, &buf[..len], None, &mut out, Duration::ZERO)
    else {
        unreachable!("B answers")
    };
    let _ = a.receive(&mut e, &out[..len], None, &mut buf, Duration::ZERO);
    let Some(Action::Send { len, .. }) = a.flush_staged(&mut e, 0, &mut buf, Duration::ZERO) else {
        unreachable!("staged packet")
    };
    let _ = b.receive(&mut e, &buf[..len], None, &mut out, Duration::ZERO);
    (a, b)
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64() / 1e9
}

/// Measures one size and payload for about `budget`.
pub fn measure(size: usize, kind: Payload, budget: Duration) -> Row {
    let (mut a, mut b) = pair(kind != Payload::Plain);
    let mut e = CpuEngine;
    let inner = payload(size, kind, 42);
    let mut wire = vec![0u8; MAX_INNER + 128];
    let mut out = vec![0u8; MAX_INNER + 128];
    let now = Duration::from_secs(1);
    // Encap alone.
    let (mut n, t0) = (0u64, Instant::now());
    while t0.elapsed() < budget / 3 {
        for _ in 0..256 {
            let _ = a.encapsulate(&mut e, 0, &inner, &mut wire, now);
        }
        n += 256;
    }
    let encap_gbps = gbps(n * size as u64, t0.elapsed());
    // Decap alone: the same sealed message decrypts fine but is a replay after the first;
    // measure with fresh messages made in chunks beforehand.
    let mut msgs: Vec<Vec<u8>> = Vec::with_capacity(4096);
    let (mut n, mut spent) = (0u64, Duration::ZERO);
    while spent < budget / 3 {
        msgs.clear();
        for _ in 0..4096 {
            if let Action::Send { len, .. } = a.encapsulate(&mut e, 0, &inner, &mut wire, now) {
                msgs.push(wire[..len].to_vec());
            }
        }
        let t = Instant::now();
        for m in &msgs {
            let _ = b.receive(&mut e, m, None, &mut out, now);
        }
        spent += t.elapsed();
        n += msgs.len() as u64;
    }
    let decap_gbps = gbps(n * size as u64, spent);
    // The pipeline: encap into a memory port, receive from its twin, decap.
    let (mut pa, mut pb) = memory::pair(256, [2; 6], [3; 6]);
    let (mut n, t0) = (0u64, Instant::now());
    while t0.elapsed() < budget / 3 {
        for _ in 0..32 {
            if let Action::Send { len, .. } = a.encapsulate(&mut e, 0, &inner, &mut wire, now) {
                let _ = pa.tx(&wire[..len]);
            }
        }
        pb.rx_burst(32, &mut |m| {
            if matches!(
                b.receive(&mut e, m, None, &mut out, now),
                Action::Deliver { .. }
            ) {
                n += 1;
            }
        });
    }
    let el = t0.elapsed();
    let pipeline = (n, el);
    // The bare AEAD: seal the same size in place, nothing else.
    let key = dwcp_kernels::AeadKey::new(&[7u8; 32]);
    let mut buf = vec![0u8; size + dwcp_kernels::TAG_LEN];
    let (mut k, t0) = (0u64, Instant::now());
    while t0.elapsed() < budget / 4 {
        for _ in 0..256 {
            let mut job = dwcp_kernels::SealJob {
                key: &key,
                nonce: dwcp_kernels::nonce(k),
                aad: &[0u8; 16],
                buf: &mut buf,
                len: size,
                ok: false,
            };
            CpuEngine::seal_one(&mut job);
            k += 1;
        }
    }
    let aead_gbps = gbps(k * size as u64, t0.elapsed());
    let (n, el) = pipeline;
    Row {
        size,
        payload: kind,
        encap_gbps,
        decap_gbps,
        pipeline_gbps: gbps(n * size as u64, el),
        pipeline_mpps: n as f64 / el.as_secs_f64() / 1e6,
        openssl_gbps: openssl_gbps(size),
        aead_gbps,
    }
}

/// `openssl speed -evp aes-256-gcm` at one size on this core, Gbit/s; `None` without openssl.
pub fn openssl_gbps(size: usize) -> Option<f64> {
    let out = Command::new("openssl")
        .args([
            "speed",
            "-mr",
            "-seconds",
            "1",
            "-bytes",
            &size.to_string(),
            "-evp",
            "aes-256-gcm",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("+F:"))?;
    let bytes_per_s: f64 = line.rsplit(':').next()?.trim().parse().ok()?;
    Some(bytes_per_s * 8.0 / 1e9)
}

/// The pipeline through the configured offload engine, checked against the CPU engine.
#[derive(Clone, Debug)]
pub struct OffloadCheck {
    /// The engine label (`cpu`, `auto`, `gpu`) and why.
    pub engine: (&'static str, String),
    /// Packets sent each way.
    pub packets: usize,
    /// Delivered packets that differed from what was sent, or were not delivered.
    pub mismatches: usize,
    /// Encapsulation on the offload engine (decapsulated by the CPU engine), Gbit/s.
    pub encap_gbps: f64,
    /// Decapsulation on the offload engine (of CPU-engine output), Gbit/s.
    pub decap_gbps: f64,
    /// Engine batches per path (CPU, GPU), all operations.
    pub batches: [u64; 2],
    /// Seal and open batches (both paths): with bursts, far fewer than packets.
    pub crypto_batches: u64,
    /// Compress and decompress batches (both paths).
    pub compress_batches: u64,
    /// Frames per burst (per engine batch).
    pub burst: usize,
    /// The offload dispatcher's counters (all zero without one): among them how its GPU
    /// batches were checked against the CPU engine and the GPU's last failure.
    pub offload: dwcp_kernels::dispatch::Stats,
}

/// Encapsulates `inputs` for peer 0 in bursts of `burst` through the tunnel's burst API, as
/// a worker does ([`Tunnel::seal_burst`]: each burst's compressions in one engine batch, then
/// its seals in another). `None` for a packet not sent.
fn encap_bursts(
    t: &mut Tunnel,
    engine: &mut dyn Engine,
    inputs: &[Vec<u8>],
    burst: usize,
    now: Duration,
) -> Vec<Option<Vec<u8>>> {
    let mut bufs = vec![vec![0u8; MAX_INNER + 128]; burst];
    let mut b = Burst::with_capacity(burst);
    let mut sent = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(burst) {
        let mut queued = Vec::with_capacity(chunk.len());
        for (slot, (p, buf)) in chunk.iter().zip(bufs.iter_mut()).enumerate() {
            let d = match t.encapsulate_deferred(0, p, buf, now) {
                (Action::Send { .. }, Some(d)) => d,
                _ => {
                    queued.push(false);
                    continue;
                }
            };
            b.push_seal(slot, d);
            queued.push(true);
        }
        t.seal_burst(engine, &mut b, &mut bufs, 0);
        let mut results = b.sealed().iter();
        for (was_queued, buf) in queued.iter().zip(&bufs) {
            let len = was_queued
                .then(|| results.next())
                .flatten()
                .and_then(|s| s.len);
            sent.push(len.map(|n| buf[..n].to_vec()));
        }
    }
    sent
}

/// Decapsulates `msgs` in bursts of `burst` through the tunnel's burst API, as a worker does
/// ([`Tunnel::open_burst`]: each burst's opens in one engine batch, each message accepted in
/// order, then the burst's LZ4 payloads decompressed in one batch). `None` for a message not
/// delivered.
fn decap_bursts(
    t: &mut Tunnel,
    engine: &mut dyn Engine,
    msgs: &[Vec<u8>],
    burst: usize,
    now: Duration,
) -> Vec<Option<Vec<u8>>> {
    let mut bufs = vec![vec![0u8; MAX_INNER + 128]; burst];
    let mut b = Burst::with_capacity(burst);
    let mut delivered = Vec::with_capacity(msgs.len());
    for chunk in msgs.chunks(burst) {
        for (slot, (m, buf)) in chunk.iter().zip(bufs.iter_mut()).enumerate() {
            if let (_, Some(d)) = t.receive_deferred(m, None, buf, now) {
                b.push_open(slot, d);
            }
        }
        t.open_burst(engine, &mut b, &mut bufs, 0, now);
        let mut got = b.delivered().iter().peekable();
        for (slot, buf) in bufs.iter().enumerate().take(chunk.len()) {
            let d = got.next_if(|d| d.slot == slot);
            delivered.push(d.map(|d| buf[..d.len].to_vec()));
        }
    }
    delivered
}

/// Sends `packets` packets of mixed sizes (64…1408 bytes, compressible and random) through a
/// tunnel pair where one side runs the offload engine `mode` selects and the other the CPU
/// engine, both ways, in bursts of a worker's size (seals and opens batched per burst), and
/// checks every delivered packet.
pub fn offload_check(
    mode: dwcp_provisioning::schema::GpuMode,
    packets: usize,
    burst: usize,
) -> OffloadCheck {
    let cfg = dwcp_provisioning::schema::Offload {
        gpu: mode,
        ..Default::default()
    };
    let built = crate::control::offload::engines(&cfg, None, 1, None);
    let (kind, why) = (built.kind, built.why);
    // The GPU path ends with the gathering thread: keep it until the end.
    let _gatherer = built.gatherer;
    let mut engine = built
        .engines
        .into_iter()
        .next()
        .unwrap_or_else(|| Box::new(CpuEngine));
    let mut cpu = CpuEngine;
    let (mut a, mut b) = pair(true);
    let inputs: Vec<Vec<u8>> = (0..packets)
        .map(|i| {
            let size = [64, 200, 512, 1000, 1408][i % 5];
            let kind = if i % 3 == 0 {
                Payload::Compressible
            } else {
                Payload::Random
            };
            payload(size, kind, i as u64 + 1)
        })
        .collect();
    let bytes: u64 = inputs.iter().map(|p| p.len() as u64).sum();
    let now = Duration::from_secs(1);
    let burst = burst.max(1);
    let matches = |got: &[Option<Vec<u8>>]| {
        packets
            - inputs
                .iter()
                .zip(got)
                .filter(|(want, got)| got.as_ref() == Some(*want))
                .count()
    };
    // Offload engine encapsulates, CPU decapsulates.
    let t0 = Instant::now();
    let sealed = encap_bursts(&mut a, &mut *engine, &inputs, burst, now);
    let encap = t0.elapsed();
    let msgs: Vec<Vec<u8>> = sealed.into_iter().map(Option::unwrap_or_default).collect();
    let mut mismatches = matches(&decap_bursts(&mut b, &mut cpu, &msgs, burst, now));
    // CPU encapsulates, offload engine decapsulates.
    let sealed = encap_bursts(&mut a, &mut cpu, &inputs, burst, now);
    let msgs: Vec<Vec<u8>> = sealed.into_iter().map(Option::unwrap_or_default).collect();
    let t0 = Instant::now();
    let delivered = decap_bursts(&mut b, &mut *engine, &msgs, burst, now);
    let decap = t0.elapsed();
    mismatches += matches(&delivered);
    let stats = engine.offload_stats();
    let batches = stats.map_or([0, 0], |s| {
        [
            s.batches.iter().map(|b| b[0]).sum(),
            s.batches.iter().map(|b| b[1]).sum(),
        ]
    });
    let crypto_batches = stats.map_or(0, |s| {
        [Op::Seal, Op::Open]
            .iter()
            .map(|op| s.batches[op.index()].iter().sum::<u64>())
            .sum()
    });
    let compress_batches = stats.map_or(0, |s| {
        [Op::Compress, Op::Decompress]
            .iter()
            .map(|op| s.batches[op.index()].iter().sum::<u64>())
            .sum()
    });
    OffloadCheck {
        engine: (kind, why),
        packets,
        mismatches,
        encap_gbps: gbps(bytes, encap),
        decap_gbps: gbps(bytes, decap),
        batches,
        crypto_batches,
        compress_batches,
        burst,
        offload: stats.cloned().unwrap_or_default(),
    }
}

impl OffloadCheck {
    /// One paragraph for people.
    pub fn text(&self) -> String {
        let o = &self.offload;
        let failed = o
            .last_error
            .as_ref()
            .map_or_else(String::new, |e| format!("  last GPU failure: {e}\n"));
        format!(
            "offload engine {} ({})\n  {} packets each way, {} mismatches; encap {:.2} Gb/s, decap {:.2} Gb/s on the offload engine; engine batches cpu {} gpu {}, {} of them split between the two (seal and open: {}, compress and decompress: {}, in bursts of up to {}); GPU batches checked against the CPU engine {} (and one packet of {} more; {} refused packets rechecked), wrong {}, packets corrected {}, unchecked packets dropped {}\n{failed}",
            self.engine.0,
            self.engine.1,
            self.packets,
            self.mismatches,
            self.encap_gbps,
            self.decap_gbps,
            self.batches[0],
            self.batches[1],
            o.split_batches,
            self.crypto_batches,
            self.compress_batches,
            self.burst,
            o.verified_batches,
            o.spot_checked_batches,
            o.rechecked_refusals,
            o.gpu_wrong_batches,
            o.corrected_jobs,
            o.dropped_unchecked,
        )
    }
}

/// Runs the whole table.
pub fn run(budget: Duration) -> Vec<Row> {
    let mut rows = Vec::new();
    for size in [64usize, 512, 1408] {
        for kind in [Payload::Plain, Payload::Compressible, Payload::Random] {
            rows.push(measure(size, kind, budget));
        }
    }
    rows
}

/// The table as text.
pub fn table(rows: &[Row]) -> String {
    let mut o = String::from(
        "size  compression       encap Gb/s  decap Gb/s  pipeline Gb/s  Mpps   openssl Gb/s  encap/openssl  decap/openssl  aead Gb/s  encap/aead\n",
    );
    let pct = |r: Option<f64>| r.map_or_else(|| "n/a".to_owned(), |r| format!("{:.0}%", r * 100.0));
    for r in rows {
        o.push_str(&format!(
            "{:<5} {:<17} {:>10.2}  {:>10.2}  {:>13.2}  {:>5.2}  {:>12}  {:>13}  {:>13}  {:>9.2}  {:>10}\n",
            r.size,
            r.payload.name(),
            r.encap_gbps,
            r.decap_gbps,
            r.pipeline_gbps,
            r.pipeline_mpps,
            r.openssl_gbps.map_or_else(|| "n/a".to_owned(), |g| format!("{g:.2}")),
            pct(r.encap_ratio()),
            pct(r.decap_ratio()),
            r.aead_gbps,
            pct(Some(r.encap_vs_aead())),
        ));
    }
    o
}

/// The table as JSON.
pub fn json(rows: &[Row]) -> String {
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            let opt = |v: Option<f64>| v.map_or_else(|| "null".to_owned(), |v| format!("{v:.4}"));
            format!(
                "{{\"size\":{},\"compression\":\"{}\",\"encap_gbps\":{:.4},\"decap_gbps\":{:.4},\"pipeline_gbps\":{:.4},\"pipeline_mpps\":{:.4},\"openssl_gbps\":{},\"encap_ratio\":{},\"decap_ratio\":{},\"aead_gbps\":{:.4},\"encap_vs_aead\":{:.4}}}",
                r.size,
                r.payload.name(),
                r.encap_gbps,
                r.decap_gbps,
                r.pipeline_gbps,
                r.pipeline_mpps,
                opt(r.openssl_gbps),
                opt(r.encap_ratio()),
                opt(r.decap_ratio()),
                r.aead_gbps,
                r.encap_vs_aead()
            )
        })
        .collect();
    format!(
        "{{\"bench\":\"pipeline\",\"backend\":\"memory\",\"engine\":\"cpu\",\"cores\":1,\"results\":[{}]}}\n",
        items.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_run_moves_packets_and_compresses_text() {
        let r = measure(512, Payload::Compressible, Duration::from_millis(60));
        assert!(
            r.pipeline_mpps > 0.0 && r.encap_gbps > 0.0 && r.decap_gbps > 0.0,
            "{r:?}"
        );
        let j = json(&[r]);
        assert!(j.contains("\"compression\":\"lz4-compressible\""), "{j}");
    }
}

#[cfg(test)]
mod offload_tests {
    use super::*;

    #[test]
    fn the_pipeline_through_the_offload_engine_matches_the_cpu_both_ways() {
        for mode in [
            dwcp_provisioning::schema::GpuMode::Off,
            dwcp_provisioning::schema::GpuMode::Auto,
        ] {
            let c = offload_check(mode, 500, crate::worker::BURST);
            assert_eq!(c.mismatches, 0, "{}", c.text());
            // Every operation in 16 bursts of up to 32 each.
            assert_eq!(c.crypto_batches, 32, "{}", c.text());
            assert_eq!(c.compress_batches, 32, "{}", c.text());
            assert_eq!(c.batches[0] + c.batches[1], 64, "{}", c.text());
        }
    }
}

/// One packet size through the `dpdk` backend on DPDK's `net_ring` device, beside
/// `dpdk-testpmd` forwarding on the same kind of device in the same run.
#[derive(Clone, Debug)]
pub struct DpdkRow {
    /// Inner packet size (frame size for the I/O rows).
    pub size: usize,
    /// Encap → DPDK port → decap on one core, Gbit/s of inner bytes.
    pub pipeline_gbps: f64,
    /// The same, million packets per second.
    pub pipeline_mpps: f64,
    /// Frames sent and received through the backend alone (copy into mbufs, TX, RX), Mpps.
    pub io_mpps: f64,
    /// `dpdk-testpmd --forward-mode=io` on a `net_ring` device with frames of this size, Mpps.
    pub testpmd_mpps: Option<f64>,
}

/// Measures the `dpdk` backend at 64, 512 and 1408 bytes for about `budget` each. Starts the
/// EAL (no hugepages, `net_ring0`) in this process.
pub fn dpdk_rows(budget: Duration) -> Result<Vec<DpdkRow>, String> {
    use crate::io::dpdk;
    let args: Vec<String> = [
        "dwcp-bench",
        "-l",
        "0",
        "--no-huge",
        "-m",
        "512",
        "--no-pci",
        "--no-shconf",
        "--vdev",
        "net_ring0",
        "--file-prefix",
        "dwcp-bench",
        "--log-level",
        "*:error",
    ]
    .map(String::from)
    .to_vec();
    dpdk::init(&args).map_err(|e| e.to_string())?;
    let mut q = dpdk::open_device("ring0", "net_ring0", 1, 1500).map_err(|e| e.to_string())?;
    let port = &mut q[0];
    let mut rows = Vec::new();
    for size in [64usize, 512, 1408] {
        let (mut a, mut b) = pair(false);
        let mut e = CpuEngine;
        let inner = payload(size, Payload::Plain, 7);
        let mut wire = vec![0u8; MAX_INNER + 128];
        let mut out = vec![0u8; MAX_INNER + 128];
        let now = Duration::from_secs(1);
        // Encap → net_ring → decap.
        let (mut n, t0) = (0u64, Instant::now());
        while t0.elapsed() < budget / 2 {
            for _ in 0..32 {
                if let Action::Send { len, .. } = a.encapsulate(&mut e, 0, &inner, &mut wire, now) {
                    let _ = port.tx(&wire[..len]);
                }
            }
            port.flush();
            port.rx_burst(64, &mut |m| {
                if matches!(
                    b.receive(&mut e, m, None, &mut out, now),
                    Action::Deliver { .. }
                ) {
                    n += 1;
                }
            });
        }
        let el = t0.elapsed();
        // The backend's I/O alone.
        let frame = vec![0x5au8; size.max(60)];
        let (mut io, t0) = (0u64, Instant::now());
        while t0.elapsed() < budget / 2 {
            for _ in 0..32 {
                let _ = port.tx(&frame);
            }
            port.flush();
            port.rx_burst(64, &mut |_| io += 1);
        }
        let io_el = t0.elapsed();
        rows.push(DpdkRow {
            size,
            pipeline_gbps: gbps(n * size as u64, el),
            pipeline_mpps: n as f64 / el.as_secs_f64() / 1e6,
            io_mpps: io as f64 / io_el.as_secs_f64() / 1e6,
            // One retry: a cold first start of testpmd can miss its first full period.
            testpmd_mpps: testpmd_mpps(size.max(60), budget)
                .or_else(|| testpmd_mpps(size.max(60), budget)),
        });
    }
    Ok(rows)
}

/// `dpdk-testpmd` forwarding (io mode, one forwarding core) on its own `net_ring` device with
/// frames of `size` bytes for about `budget`: the last Rx-pps it reports, in Mpps.
pub fn testpmd_mpps(size: usize, budget: Duration) -> Option<f64> {
    let bin = crate::io::dpdk::testpmd()?;
    // testpmd needs about two seconds to start and report its first full period.
    let secs = budget.as_secs().clamp(2, 10) + 4;
    let out = Command::new("timeout")
        .args(["-s", "INT", &secs.to_string()])
        .arg(bin)
        .args([
            "-l",
            "0,1",
            "--no-huge",
            "-m",
            "1024",
            "--no-pci",
            "--no-shconf",
            "--vdev=net_ring0",
            "--file-prefix",
            "dwcp-testpmd",
            "--log-level=*:error",
            "--",
            "--forward-mode=io",
            "--tx-first",
            "--stats-period=1",
            "--nb-cores=1",
            "--total-num-mbufs=16384",
            &format!("--txpkts={size}"),
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pps: f64 = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Rx-pps:"))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .rfind(|&v: &f64| v > 0.0)?;
    Some(pps / 1e6)
}

/// The DPDK rows as text.
pub fn dpdk_table(rows: &[DpdkRow]) -> String {
    let mut o = String::from(
        "dpdk backend on net_ring (one core)\nsize  pipeline Gb/s  pipeline Mpps  backend I/O Mpps  testpmd io Mpps  I/O/testpmd\n",
    );
    for r in rows {
        let t = r
            .testpmd_mpps
            .map_or_else(|| "n/a".to_owned(), |m| format!("{m:.2}"));
        let ratio = r.testpmd_mpps.map_or_else(
            || "n/a".to_owned(),
            |m| format!("{:.1}%", 100.0 * r.io_mpps / m),
        );
        o.push_str(&format!(
            "{:<5} {:>13.2}  {:>13.2}  {:>16.2}  {:>15}  {:>11}\n",
            r.size, r.pipeline_gbps, r.pipeline_mpps, r.io_mpps, t, ratio
        ));
    }
    o
}

/// One packet size through two gateways as one worker runs them: LAN bursts into gateway A
/// (route, TTL, compress and seal a burst at a time, outer headers), its WAN frames into
/// gateway B (open, accept, decompress a burst at a time, checks, delivery on the LAN).
#[derive(Clone, Debug)]
pub struct GatewayRow {
    /// Inner IP packet size, bytes.
    pub size: usize,
    /// Compression.
    pub payload: Payload,
    /// LAN→WAN through gateway A, ns per packet.
    pub lan_to_wan_ns: f64,
    /// WAN→LAN through gateway B, ns per packet.
    pub wan_to_lan_ns: f64,
    /// `openssl speed -evp aes-256-gcm` at the same size, Gbit/s (the crypto ceiling).
    pub openssl_gbps: Option<f64>,
}

impl GatewayRow {
    fn gbps(&self, ns: f64) -> f64 {
        self.size as f64 * 8.0 / ns.max(1e-9)
    }
}

/// An Ethernet frame with an IPv4 packet (protocol UDP, don't fragment, TTL 64) from `src`
/// to `dst` whose bytes after the IPv4 header are `ip[20..]` (`ip` is the whole packet).
fn bench_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ip: &[u8],
) -> Vec<u8> {
    use smoltcp::wire::{IpProtocol, Ipv4Packet};
    let mut f = Vec::with_capacity(14 + ip.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(ip);
    let mut p = Ipv4Packet::new_unchecked(&mut f[14..]);
    p.set_version(4);
    p.set_header_len(20);
    p.set_dscp(0);
    p.set_ecn(0);
    p.set_total_len(u16::try_from(ip.len()).unwrap_or(u16::MAX));
    p.set_ident(1);
    p.clear_flags();
    p.set_dont_frag(true);
    p.set_frag_offset(0);
    p.set_hop_limit(64);
    p.set_next_header(IpProtocol::Udp);
    p.set_src_addr(src.into());
    p.set_dst_addr(dst.into());
    p.fill_checksum();
    f
}

/// An ARP request from `mac`/`ip` for `target`, as a frame.
fn bench_arp(mac: [u8; 6], ip: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

/// Two gateways with a session up and a burst of LAN frames for gateway A: a worker's whole
/// path, one burst at a time ([`GatewayPair::burst`]).
pub struct GatewayPair {
    a: crate::gateway::Gateway,
    b: crate::gateway::Gateway,
    tx_a: crate::gateway::TxBatch,
    tx_b: crate::gateway::TxBatch,
    frames: Vec<Vec<u8>>,
    now: Duration,
    size: usize,
    kind: Payload,
}

impl GatewayPair {
    /// A pair carrying `size`-byte inner packets of `kind`, `burst` frames at a time.
    pub fn new(size: usize, kind: Payload, burst: usize) -> Self {
        use crate::gateway::{Gateway, GatewayConfig, PortAddr, TxBatch};
        const A_LAN: [u8; 6] = [2, 0, 0, 0, 0xa, 1];
        const A_WAN: [u8; 6] = [2, 0, 0, 0, 0xa, 0xf];
        const B_LAN: [u8; 6] = [2, 0, 0, 0, 0xb, 1];
        const B_WAN: [u8; 6] = [2, 0, 0, 0, 0xb, 0xf];
        const HOST_A: [u8; 6] = [2, 0, 0, 0, 0xa, 2];
        const HOST_B: [u8; 6] = [2, 0, 0, 0, 0xb, 2];
        let burst = burst.max(1);
        let (ta, tb) = pair(kind != Payload::Plain);
        let port = |mac, net: &str| PortAddr {
            mac,
            net: net.parse().expect("network"),
            gateway: None,
            mtu: 9000,
        };
        // The tunnel pair sends to 192.0.2.1:51900: gateway B's WAN address and port.
        let mk = |t, lan, wan, allowed: &str| {
            Gateway::new(
                GatewayConfig {
                    lan,
                    wan,
                    udp_port: 51900,
                    udp_ports: 51900..51901,
                    allowed: vec![vec![allowed.parse().expect("prefix")]],
                },
                t,
                // What a worker runs without a GPU.
                Box::new(dwcp_kernels::dispatch::Dispatcher::new(
                    None,
                    dwcp_kernels::dispatch::Settings::default(),
                )),
            )
        };
        let mut a = mk(
            ta,
            port(A_LAN, "10.1.0.1/24"),
            port(A_WAN, "192.0.2.2/24"),
            "10.2.0.0/16",
        );
        let mut b = mk(
            tb,
            port(B_LAN, "10.2.0.1/24"),
            port(B_WAN, "192.0.2.1/24"),
            "10.1.0.0/16",
        );
        let now = Duration::from_secs(1);
        let mut tx_a = TxBatch::new(burst * 3);
        let mut tx_b = TxBatch::new(burst * 3);
        // Neighbours: B's WAN address for A, host B for B (each learns from an ARP request).
        a.from_wan(
            &bench_arp(B_WAN, [192, 0, 2, 1], [192, 0, 2, 2]),
            &mut tx_a,
            now,
        );
        b.from_lan(
            &bench_arp(HOST_B, [10, 2, 0, 2], [10, 2, 0, 1]),
            &mut tx_b,
            now,
        );
        tx_a.clear();
        tx_b.clear();
        let inner = payload(size.max(28), kind, 7);
        // A mixed load alternates a text flow (UDP 40002 → 5202) with a random one (40001 →
        // 5201); flows with compression gates of their own.
        let text = payload(size.max(28), Payload::Compressible, 7);
        let frames: Vec<Vec<u8>> = (0..burst)
            .map(|i| {
                let mut ip = if kind == Payload::Mixed && i % 2 == 1 {
                    text.clone()
                } else {
                    inner.clone()
                };
                if kind == Payload::Mixed {
                    let port = u16::try_from(i % 2).unwrap_or(0);
                    ip[20..22].copy_from_slice(&(40001 + port).to_be_bytes());
                    ip[22..24].copy_from_slice(&(5201 + port).to_be_bytes());
                }
                bench_frame(A_LAN, HOST_A, [10, 1, 0, 2], [10, 2, 0, 2], &ip)
            })
            .collect();
        Self {
            a,
            b,
            tx_a,
            tx_b,
            frames,
            now,
            size,
            kind,
        }
    }

    /// Packets in one burst.
    pub fn burst_len(&self) -> usize {
        self.frames.len()
    }

    /// One burst through A (LAN → WAN) then B (WAN → LAN): the time each gateway took, or
    /// what went wrong when not every packet came out of B.
    pub fn burst(&mut self) -> Result<(Duration, Duration), String> {
        use crate::gateway::Side;
        let (a, b, now) = (&mut self.a, &mut self.b, self.now);
        let t = Instant::now();
        for f in &self.frames {
            a.from_lan(f, &mut self.tx_a, now);
        }
        a.finish_burst(&mut self.tx_a, now);
        let t_a = t.elapsed();
        let t = Instant::now();
        for (side, f) in self.tx_a.frames() {
            if side == Side::Wan {
                b.from_wan(f, &mut self.tx_b, now);
            }
        }
        b.finish_burst(&mut self.tx_b, now);
        let t_b = t.elapsed();
        let delivered = self.tx_b.frames().filter(|(s, _)| *s == Side::Lan).count();
        self.tx_a.clear();
        self.tx_b.clear();
        if delivered != self.frames.len() {
            return Err(format!(
                "{} B {}: {delivered} of {} packets came out of gateway B ({:?} / {:?})",
                self.size,
                self.kind.name(),
                self.frames.len(),
                a.counters,
                b.tunnel.counters
            ));
        }
        Ok((t_a, t_b))
    }
}

/// Measures one size and payload through a gateway pair, `burst` frames at a time, for about
/// `budget`.
pub fn gateway_row(
    size: usize,
    kind: Payload,
    burst: usize,
    budget: Duration,
) -> Result<GatewayRow, String> {
    let mut pair = GatewayPair::new(size, kind, burst);
    let (mut n, mut t_a, mut t_b) = (0u64, Duration::ZERO, Duration::ZERO);
    let t0 = Instant::now();
    while t0.elapsed() < budget {
        let (a, b) = pair.burst()?;
        t_a += a;
        t_b += b;
        n += pair.burst_len() as u64;
    }
    let per = |t: Duration| t.as_nanos() as f64 / n.max(1) as f64;
    Ok(GatewayRow {
        size,
        payload: kind,
        lan_to_wan_ns: per(t_a),
        wan_to_lan_ns: per(t_b),
        openssl_gbps: openssl_gbps(size),
    })
}

/// The gateway rows at 64, 512 and 1408 bytes: compression off, on with compressible data,
/// and on with a compressible and a random flow interleaved; `burst` frames at a time.
pub fn gateway_rows(burst: usize, budget: Duration) -> Result<Vec<GatewayRow>, String> {
    let mut rows = Vec::new();
    for size in [64, 512, 1408] {
        for kind in [Payload::Plain, Payload::Compressible, Payload::Mixed] {
            rows.push(gateway_row(size, kind, burst, budget)?);
        }
    }
    Ok(rows)
}

/// The gateway rows, measured in bursts of `burst`, as a table.
pub fn gateway_table(rows: &[GatewayRow], burst: usize) -> String {
    let mut s = format!(
        "gateway pair, one worker's path (its dispatcher without a GPU: the CPU engine; bursts of {})\n{:<5} {:<17} {:>14} {:>14} {:>11} {:>11} {:>13} {:>13}\n",
        burst,
        "size",
        "compression",
        "lan→wan ns/pkt",
        "wan→lan ns/pkt",
        "lan→wan Gb/s",
        "wan→lan Gb/s",
        "lan→wan/ossl",
        "wan→lan/ossl"
    );
    for r in rows {
        let ratio = |g: f64| {
            r.openssl_gbps
                .map_or("-".to_owned(), |o| format!("{:.0}%", 100.0 * g / o))
        };
        let (enc, dec) = (r.gbps(r.lan_to_wan_ns), r.gbps(r.wan_to_lan_ns));
        s.push_str(&format!(
            "{:<5} {:<17} {:>14.0} {:>14.0} {:>11.2} {:>11.2} {:>13} {:>13}\n",
            r.size,
            r.payload.name(),
            r.lan_to_wan_ns,
            r.wan_to_lan_ns,
            enc,
            dec,
            ratio(enc),
            ratio(dec)
        ));
    }
    s
}

#[cfg(test)]
mod gateway_bench_tests {
    use super::*;

    #[test]
    fn every_packet_crosses_the_gateway_pair_both_with_and_without_compression() {
        for kind in [Payload::Plain, Payload::Compressible, Payload::Mixed] {
            let r = gateway_row(512, kind, 32, Duration::from_millis(30)).unwrap();
            assert!(r.lan_to_wan_ns > 0.0 && r.wan_to_lan_ns > 0.0, "{r:?}");
        }
        let t = gateway_table(
            &[gateway_row(64, Payload::Plain, 32, Duration::from_millis(10)).unwrap()],
            32,
        );
        assert_eq!(t.lines().count(), 3, "{t}");
        // A larger burst carries every packet too.
        let r = gateway_row(1408, Payload::Mixed, 256, Duration::from_millis(30)).unwrap();
        assert!(r.lan_to_wan_ns > 0.0 && r.wan_to_lan_ns > 0.0, "{r:?}");
    }
}
