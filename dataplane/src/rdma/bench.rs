//! `bench rdma`: what one DWCP message costs on the RDMA transport beside UDP on the same
//! host and interface address. Two workers' links on one device are connected to each other
//! (the device loops the traffic back), and two UDP sockets on the RDMA interface's address
//! talk through the kernel. Functional figures: they show that the path works and what a
//! message costs the host on it (posting, polling, the provider's copies; for UDP the system
//! calls), not what a link between two nodes carries; on Soft-RoCE the "device" is the
//! kernel too.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use super::link::{Endpoint, Link, LinkError};

/// Message sizes measured: a keepalive-sized message, small, a full 1500-MTU packet's, and a
/// jumbo frame's.
pub const SIZES: [usize; 4] = [64, 256, 1440, 8192];

/// One size's figures.
#[derive(Clone, Debug)]
pub struct Row {
    /// Message size in bytes.
    pub size: usize,
    /// RDMA: half a round trip, microseconds.
    pub rdma_us: f64,
    /// UDP: half a round trip, microseconds.
    pub udp_us: f64,
    /// RDMA: messages per second, streamed one way.
    pub rdma_mps: f64,
    /// UDP: messages per second, streamed one way.
    pub udp_mps: f64,
    /// RDMA SENDs posted inline during this size's runs.
    pub rdma_inline: u64,
}

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The RDMA device could not be used.
    #[error("{0}")]
    Link(#[from] LinkError),
    /// The two links did not connect.
    #[error("the two queue pairs did not connect ({0})")]
    Connect(&'static str),
    /// A message did not arrive.
    #[error("{0}: a {1}-byte message did not arrive within 5 s")]
    Lost(&'static str, usize),
    /// A UDP socket failed.
    #[error("UDP on {addr}: {source}")]
    Udp {
        /// The address.
        addr: Ipv4Addr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Runs every size, `messages` round trips and `messages` streamed messages each.
pub fn run(endpoint: &Endpoint, addr: Ipv4Addr, messages: usize) -> Result<Vec<Row>, BenchError> {
    let mut a = Link::open(endpoint, 0, &[true])?;
    let mut b = Link::open(endpoint, 1, &[true])?;
    connect(&mut a, &mut b)?;
    let udp = |e| BenchError::Udp { addr, source: e };
    let ua = UdpSocket::bind(SocketAddrV4::new(addr, 0)).map_err(udp)?;
    let ub = UdpSocket::bind(SocketAddrV4::new(addr, 0)).map_err(udp)?;
    ua.connect(ub.local_addr().map_err(udp)?).map_err(udp)?;
    ub.connect(ua.local_addr().map_err(udp)?).map_err(udp)?;
    for s in [&ua, &ub] {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(udp)?;
    }
    let mut rows = Vec::new();
    for size in SIZES {
        let msg = vec![0xa5u8; size];
        let inline_before = inline_sends(&a) + inline_sends(&b);
        let t = Instant::now();
        for _ in 0..messages {
            rdma_one(&mut a, &mut b, &msg)?;
            rdma_one(&mut b, &mut a, &msg)?;
        }
        let rdma_us = half_round_trip(t.elapsed(), messages);
        let t = Instant::now();
        rdma_stream(&mut a, &mut b, &msg, messages)?;
        let rdma_mps = messages as f64 / t.elapsed().as_secs_f64();
        let mut buf = vec![0u8; size + 64];
        let t = Instant::now();
        for _ in 0..messages {
            udp_one(&ua, &ub, &msg, &mut buf).map_err(udp)?;
            udp_one(&ub, &ua, &msg, &mut buf).map_err(udp)?;
        }
        let udp_us = half_round_trip(t.elapsed(), messages);
        let t = Instant::now();
        udp_stream(&ua, &ub, &msg, &mut buf, messages).map_err(udp)?;
        let udp_mps = messages as f64 / t.elapsed().as_secs_f64();
        rows.push(Row {
            size,
            rdma_us,
            udp_us,
            rdma_mps,
            udp_mps,
            rdma_inline: inline_sends(&a) + inline_sends(&b) - inline_before,
        });
    }
    Ok(rows)
}

fn inline_sends(l: &Link) -> u64 {
    l.peer_counters().map(|(_, c, _)| c.inline_sends).sum()
}

fn half_round_trip(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / (2.0 * n.max(1) as f64)
}

/// Offer, accept: the same exchange two gateways make over their session.
fn connect(a: &mut Link, b: &mut Link) -> Result<(), BenchError> {
    let offer = a
        .offers_due(Duration::ZERO, |_| true)
        .first()
        .map(|(_, r)| *r)
        .ok_or(BenchError::Connect("no offer"))?;
    let accept = b
        .on_record(0, &offer)
        .ok_or(BenchError::Connect("the offer was refused"))?;
    let _ = a.on_record(0, &accept);
    if a.connected(0) && b.connected(0) {
        Ok(())
    } else {
        Err(BenchError::Connect("not both connected"))
    }
}

/// One message from `from` to `to`, waited for.
fn rdma_one(from: &mut Link, to: &mut Link, msg: &[u8]) -> Result<(), BenchError> {
    while !from.send(0, msg) {
        // The send ring is full: take the completions that free it.
        from.poll(64, |_, _| {});
    }
    let t = Instant::now();
    let mut got = 0;
    while got == 0 {
        got = to.poll(64, |_, _| {});
        from.poll(64, |_, _| {});
        if t.elapsed() > Duration::from_secs(5) {
            return Err(BenchError::Lost("RDMA", msg.len()));
        }
    }
    Ok(())
}

/// `n` messages one way as fast as the rings allow.
fn rdma_stream(from: &mut Link, to: &mut Link, msg: &[u8], n: usize) -> Result<(), BenchError> {
    let (mut sent, mut got) = (0, 0);
    let mut last = Instant::now();
    while got < n {
        if sent < n && from.send(0, msg) {
            sent += 1;
        } else {
            from.poll(64, |_, _| {});
        }
        let more = to.poll(64, |_, _| {});
        if more > 0 {
            last = Instant::now();
        }
        got += more;
        if last.elapsed() > Duration::from_secs(5) {
            return Err(BenchError::Lost("RDMA stream", msg.len()));
        }
    }
    Ok(())
}

fn udp_one(from: &UdpSocket, to: &UdpSocket, msg: &[u8], buf: &mut [u8]) -> std::io::Result<()> {
    from.send(msg)?;
    to.recv(buf).map(|_| ())
}

/// `n` datagrams one way, a window at a time: up to 32, and no more than 64 KiB, which the
/// default socket receive buffer holds (more would be dropped by the kernel, not measured).
fn udp_stream(
    from: &UdpSocket,
    to: &UdpSocket,
    msg: &[u8],
    buf: &mut [u8],
    n: usize,
) -> std::io::Result<()> {
    let mut done = 0;
    while done < n {
        let w = (n - done).min(32).min((65536 / msg.len().max(1)).max(1));
        for _ in 0..w {
            from.send(msg)?;
        }
        for _ in 0..w {
            to.recv(buf)?;
        }
        done += w;
    }
    Ok(())
}

/// The figures as JSON (an array of rows).
pub fn json(rows: &[Row]) -> String {
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{{\"size\":{},\"rdma_us\":{:.3},\"udp_us\":{:.3},\"rdma_mps\":{:.0},\"udp_mps\":{:.0},\"rdma_inline\":{}}}",
                r.size, r.rdma_us, r.udp_us, r.rdma_mps, r.udp_mps, r.rdma_inline
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// The figures as a table.
pub fn table(endpoint: &Endpoint, rows: &[Row]) -> String {
    let mut o = format!(
        "bench rdma: {} port {} GID index {}, two queue pairs looped through the device, beside UDP on the same address\n\
         {:>6} | {:>12} {:>12} | {:>14} {:>14} | {:>8}\n",
        endpoint.device,
        endpoint.port,
        endpoint.gid_index,
        "bytes",
        "RDMA µs/msg",
        "UDP µs/msg",
        "RDMA msg/s",
        "UDP msg/s",
        "inline"
    );
    for r in rows {
        o.push_str(&format!(
            "{:>6} | {:>12.1} {:>12.1} | {:>14.0} {:>14.0} | {:>8}\n",
            r.size, r.rdma_us, r.udp_us, r.rdma_mps, r.udp_mps, r.rdma_inline
        ));
    }
    o.push_str(
        "bench rdma: µs/msg is half a round trip on this host; functional figures (posting, polling and the provider's copies against the system calls), not a link's capacity\n",
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_device_the_bench_names_it() {
        let e = Endpoint {
            device: "dwcp-no-such-rdma".into(),
            port: 1,
            gid_index: 1,
        };
        let err = run(&e, Ipv4Addr::LOCALHOST, 10).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("RDMA device dwcp-no-such-rdma port 1 GID index 1"),
            "{err}"
        );
    }

    #[test]
    fn the_table_has_a_row_per_size() {
        let e = Endpoint {
            device: "rxe0".into(),
            port: 1,
            gid_index: 1,
        };
        let rows: Vec<Row> = SIZES
            .iter()
            .map(|&size| Row {
                size,
                rdma_us: 10.0,
                udp_us: 20.0,
                rdma_mps: 1000.0,
                udp_mps: 500.0,
                rdma_inline: 0,
            })
            .collect();
        let t = table(&e, &rows);
        assert_eq!(t.lines().count(), 2 + SIZES.len() + 1);
        assert!(t.contains("  1440 |         10.0         20.0 |"), "{t}");
    }
}
