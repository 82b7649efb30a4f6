//! The demo over RDMA (`dwcp demo --rdma`): each appliance gets a fourth NIC (virtio-net,
//! kernel driver) on a QEMU socket link of its own, init makes Soft-RoCE on it, and the
//! peers use `transport = "rdma"`. Site A's side of that link is captured; the checks here
//! read the capture (RoCEv2 frames, and never the plaintext), both appliances' queue-pair
//! metrics, and how traffic comes back after site B's data plane is killed.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;

use super::{DemoOptions, NS_A, metrics, ns, say};

/// The RoCEv2 UDP port.
const ROCE_PORT: u16 = 4791;
/// Sixteen bytes site A's pings carry (`ping -p`), looked for on the RDMA link.
pub const MARKER: &[u8; 16] = b"DWCP-RDMA-MARKER";
/// The Soft-RoCE NIC's PCI slot in the guests.
pub const SLOT: u8 = 5;

/// What the RDMA checks found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RdmaReport {
    /// Frames captured on the RDMA link (site A's side).
    pub link_frames: u64,
    /// Of them, RoCEv2 (UDP port 4791).
    pub roce_frames: u64,
    /// Times the plaintext marker appeared on the link (must be 0).
    pub marker_seen: u64,
    /// Marker pings answered.
    pub marker_pings: u32,
    /// RDMA SENDs, inline SENDs and receives at site A, from its metrics.
    pub sends_a: u64,
    /// See `sends_a`.
    pub inline_sends_a: u64,
    /// See `sends_a`.
    pub receives_a: u64,
    /// The same at site B (before its data plane was restarted).
    pub sends_b: u64,
    /// See `sends_b`.
    pub receives_b: u64,
    /// Site A's queue-pair reconnects after site B's data plane was killed.
    pub reconnects_a: u64,
    /// Seconds from the kill until a ping went through again.
    pub recovery_s: f64,
    /// Messages site A sent by RDMA after the recovery.
    pub sends_a_after: u64,
    /// Site A's console `status` line for the RDMA peer, after the recovery.
    pub status_a: String,
    /// `bench rdma` on site A's console: per message size, RDMA and UDP half round trips
    /// (µs) and messages per second streamed: `[bytes, rdma_us, udp_us, rdma_mps, udp_mps]`.
    pub bench: Vec<[f64; 5]>,
}

/// The rows of `bench rdma`'s table in console text.
pub fn bench_rows(console: &str) -> Vec<[f64; 5]> {
    console
        .lines()
        .filter_map(|l| {
            let l = l.trim_start_matches("dwcp-init: ");
            let nums: Vec<f64> = l
                .split(|c: char| c == '|' || c.is_whitespace())
                .filter(|w| !w.is_empty())
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            <[f64; 6]>::try_from(nums)
                .ok()
                .map(|n| [n[0], n[1], n[2], n[3], n[4]])
        })
        .collect()
}

/// The extra config for RDMA: the Soft-RoCE device on `interface`, and the peer's transport.
pub fn config(site: char) -> (String, &'static str) {
    let own = if site == 'a' { 1 } else { 2 };
    (
        format!(
            "[[rdma]]\ndevice = \"rxe0\"\ninterface = \"{}\"\naddress = \"192.168.50.{own}/24\"\nsoft_roce = true\n",
            interface()
        ),
        "transport = \"rdma\"\nrdma = { device = \"rxe0\", gid_index = 1 }\n",
    )
}

/// The guest's name for the Soft-RoCE NIC: the second virtio-net device (the management NIC
/// is the first; the e1000e NICs take eth0 and eth1).
pub fn interface() -> &'static str {
    "eth3"
}

fn sum(text: &str, family: &str, peer: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.starts_with(&format!("{family}{{")) && l.contains(&format!("peer=\"{peer}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Counts the frames of a pcap file, the RoCEv2 ones among them, and where `marker` occurs.
pub fn read_capture(bytes: &[u8], marker: &[u8]) -> (u64, u64, u64) {
    let mut frames = 0;
    let mut roce = 0;
    let mut at = 24;
    while let Some(h) = bytes.get(at..at + 16) {
        let caplen = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
        let Some(f) = bytes.get(at + 16..at + 16 + caplen) else {
            break;
        };
        frames += 1;
        let ipv4_udp = f.get(12..14) == Some(&[0x08, 0x00]) && f.get(23) == Some(&17);
        let ihl = usize::from(f.get(14).map_or(5, |b| b & 0x0f)) * 4;
        let dport = f
            .get(14 + ihl + 2..14 + ihl + 4)
            .map(|p| u16::from_be_bytes([p[0], p[1]]));
        if ipv4_udp && dport == Some(ROCE_PORT) {
            roce += 1;
        }
        at += 16 + caplen;
    }
    let seen = bytes.windows(marker.len()).filter(|w| *w == marker).count() as u64;
    (frames, roce, seen)
}

/// Pings carrying [`MARKER`], reads the capture and both sides' queue-pair counters, kills
/// site B's data plane and times until traffic passes again.
pub fn checks(
    opts: &DemoOptions,
    vm_a: &mut dwcp_qemu::Vm,
    vm_b: &mut dwcp_qemu::Vm,
    capture: &Path,
    metric_ports: [u16; 2],
) -> anyhow::Result<RdmaReport> {
    let hex: String = MARKER.iter().map(|b| format!("{b:02x}")).collect();
    say(
        opts,
        "RDMA: pings carrying a marker, then the link's capture...",
    );
    let out = ns(
        NS_A,
        &[
            "ping", "-c", "10", "-i", "0.1", "-W", "2", "-s", "1000", "-p", &hex, "10.2.0.2",
        ],
    )?;
    let marker_pings = u32::try_from(super::ping_times(&out).len()).unwrap_or(0);
    let (link_frames, roce_frames, marker_seen) = read_capture(&std::fs::read(capture)?, MARKER);
    let (ma, mb) = (metrics(metric_ports[0])?, metrics(metric_ports[1])?);
    let mut r = RdmaReport {
        link_frames,
        roce_frames,
        marker_seen,
        marker_pings,
        sends_a: sum(&ma, "dwcp_rdma_sends_total", "site-b"),
        inline_sends_a: sum(&ma, "dwcp_rdma_inline_sends_total", "site-b"),
        receives_a: sum(&ma, "dwcp_rdma_receives_total", "site-b"),
        sends_b: sum(&mb, "dwcp_rdma_sends_total", "site-a"),
        receives_b: sum(&mb, "dwcp_rdma_receives_total", "site-a"),
        ..RdmaReport::default()
    };
    say(
        opts,
        "RDMA: killing site B's data plane; init restarts it, the queue pairs must come back...",
    );
    vm_b.send_line("debug kill-dataplane")?;
    let killed = Instant::now();
    vm_b.wait_for("dataplane: exited", Duration::from_secs(30))?;
    loop {
        if ns(NS_A, &["ping", "-c", "1", "-W", "1", "10.2.0.2"]).is_ok() {
            break;
        }
        if killed.elapsed() > Duration::from_secs(180) {
            bail!(
                "traffic did not come back within 180 s of killing site B's data plane; console B:\n{}",
                vm_b.tail(30)
            );
        }
    }
    r.recovery_s = killed.elapsed().as_secs_f64();
    let ma = metrics(metric_ports[0])?;
    r.reconnects_a = sum(&ma, "dwcp_rdma_reconnects_total", "site-b");
    r.sends_a_after = sum(&ma, "dwcp_rdma_sends_total", "site-b").saturating_sub(r.sends_a);
    // The console's view (the data plane tells init every 2 s).
    std::thread::sleep(Duration::from_secs(3));
    vm_a.send_line("status")?;
    let line = vm_a.wait_for("rdma site-b: qp", Duration::from_secs(30))?;
    r.status_a = line
        .split(" | ")
        .find(|part| part.contains("rdma site-b"))
        .unwrap_or(&line)
        .trim()
        .to_owned();
    say(
        opts,
        "RDMA: `bench rdma` on site A's console (two queue pairs looped through rxe0, beside UDP)...",
    );
    let before = vm_a.console().len();
    vm_a.send_line("bench rdma")?;
    let end = vm_a.wait_for("bench rdma: finished", Duration::from_secs(300))?;
    if end.contains("FAILED") {
        bail!("{}", end.trim());
    }
    r.bench = bench_rows(vm_a.console().get(before..).unwrap_or_default());
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_is_counted_and_searched() {
        let mut pcap = vec![0u8; 24];
        let mut frame = |dport: u16, payload: &[u8]| {
            let mut f = vec![0u8; 14];
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0u8; 20];
            ip[0] = 0x45;
            ip[9] = 17;
            f.extend(ip);
            f.extend([0x12, 0x34]);
            f.extend(dport.to_be_bytes());
            f.extend([0, 0, 0, 0]);
            f.extend(payload);
            let mut h = vec![0u8; 16];
            h[8..12].copy_from_slice(&u32::try_from(f.len()).unwrap().to_le_bytes());
            pcap.extend(h);
            pcap.extend(f);
        };
        frame(ROCE_PORT, b"ciphertext");
        frame(ROCE_PORT, b"more ciphertext");
        frame(51900, MARKER);
        assert_eq!(read_capture(&pcap, MARKER), (3, 2, 1));
        // A truncated last record is not counted.
        assert_eq!(read_capture(&pcap[..pcap.len() - 1], MARKER).0, 2);
    }

    #[test]
    fn the_bench_table_is_read_from_the_console() {
        let console = "bench rdma: rxe0 port 1 GID index 1, two queue pairs\n\
                        bytes |  RDMA µs/msg   UDP µs/msg |     RDMA msg/s      UDP msg/s |   inline\n\
                           64 |         12.5         30.1 |          80000          40000 |     1000\n\
                         8192 |         40.0         55.5 |          20000          15000 |        0\n\
                        bench rdma: finished\n";
        assert_eq!(
            bench_rows(console),
            vec![
                [64.0, 12.5, 30.1, 80000.0, 40000.0],
                [8192.0, 40.0, 55.5, 20000.0, 15000.0]
            ]
        );
    }

    #[test]
    fn labelled_series_are_summed_per_peer() {
        let text = "dwcp_rdma_sends_total{node=\"a\",peer=\"site-b\",worker=\"0\"} 5\n\
                    dwcp_rdma_sends_total{node=\"a\",peer=\"site-b\",worker=\"1\"} 7\n\
                    dwcp_rdma_sends_total{node=\"a\",peer=\"site-c\",worker=\"0\"} 100\n";
        assert_eq!(sum(text, "dwcp_rdma_sends_total", "site-b"), 12);
    }
}
