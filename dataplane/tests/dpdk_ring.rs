//! The `dpdk` backend on DPDK's `net_ring` virtual device (no hugepages, no NIC): frames sent
//! through the workers' `PacketPort` trait come back byte for byte (a `net_ring` device made
//! from the command line loops its TX rings to its RX rings), the port's link and extended
//! statistics read back, and a device that is not there is named.
#![allow(clippy::tests_outside_test_module)]

use dwcp_dataplane::io::PacketPort;
use dwcp_dataplane::io::dpdk;

fn args() -> Vec<String> {
    [
        "dwcp-test",
        "-l",
        "0",
        "--no-huge",
        "-m",
        "256",
        "--no-pci",
        "--no-shconf",
        "--vdev",
        "net_ring0",
        "--file-prefix",
        "dwcp-ring-test",
        "--log-level",
        "*:warning",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn net_ring_round_trips_frames_through_the_packet_port_trait() {
    dpdk::init(&args()).expect("EAL start");
    let mut q = dpdk::open_device("ring0", "net_ring0", 1, 1500).expect("open net_ring0");
    let port = &mut q[0];
    let frames: Vec<Vec<u8>> = (0..200usize)
        .map(|i| {
            let len = 60 + (i * 37) % 1400;
            (0..len).map(|b| (b ^ i).to_le_bytes()[0]).collect()
        })
        .collect();
    let mut got: Vec<Vec<u8>> = Vec::new();
    for chunk in frames.chunks(50) {
        for f in chunk {
            assert!(port.tx(f), "TX queue refused a frame");
        }
        port.flush();
        let want = got.len() + chunk.len();
        for _ in 0..10_000 {
            port.rx_burst(64, &mut |f| got.push(f.to_vec()));
            if got.len() >= want {
                break;
            }
        }
    }
    assert_eq!(got.len(), frames.len(), "frames lost");
    assert!(got == frames, "a frame came back different");
    assert_eq!(port.tx_dropped, 0);
    let (up, _speed) = dpdk::link(port.port_id()).expect("link state");
    assert!(up, "net_ring reports its link up");
    let stats = dpdk::xstats(port.port_id());
    let sent = stats
        .iter()
        .find(|(n, _)| n == "tx_good_packets")
        .map(|(_, v)| *v);
    assert_eq!(sent, Some(200), "xstats: {stats:?}");
    // Zero-copy TX: a frame built in a lent mbuf is sent as that mbuf, and the buffer is
    // replaced by a fresh one.
    let mut bufs = dpdk::tx_buffers(4, 1600, 1).expect("tx pool");
    let frame: Vec<u8> = (0..1500usize).map(|b| (b * 7).to_le_bytes()[0]).collect();
    let before = bufs[0].bytes().as_ptr();
    bufs[0].bytes_mut()[..frame.len()].copy_from_slice(&frame);
    assert!(port.tx_buffer(&mut bufs[0], frame.len()));
    assert_ne!(
        bufs[0].bytes().as_ptr(),
        before,
        "the sent mbuf must be replaced"
    );
    assert!(bufs[0].bytes().len() >= 1600);
    port.flush();
    let mut back = Vec::new();
    for _ in 0..10_000 {
        port.rx_burst(64, &mut |f| back.push(f.to_vec()));
        if !back.is_empty() {
            break;
        }
    }
    assert_eq!(back, vec![frame], "the zero-copy frame came back different");
    // Frames the device refuses at flush (its rings full, nobody receiving) are freed and
    // reported once, not lost silently.
    let junk = vec![0xeeu8; 200];
    for _ in 0..5_000 {
        assert!(port.tx(&junk));
    }
    port.flush();
    let dropped = port.take_dropped();
    assert!(dropped > 0, "a full ring must refuse some of 5,000 frames");
    assert_eq!(port.take_dropped(), 0, "reported once");
    let mut drained = 0u64;
    while port.rx_burst(64, &mut |_| drained += 1) > 0 {}
    assert_eq!(
        drained + dropped,
        5_000,
        "every frame either delivered or counted"
    );
    // A burst larger than one driver call's 64 (`dataplane.burst` up to 256) comes in one
    // poll, and a poll takes no more than asked.
    let frame = vec![0x42u8; 100];
    for _ in 0..200 {
        assert!(port.tx(&frame));
    }
    port.flush();
    assert_eq!(port.take_dropped(), 0);
    let mut seen = 0usize;
    assert_eq!(port.rx_burst(150, &mut |_| seen += 1), 150);
    assert_eq!(port.rx_burst(256, &mut |_| seen += 1), 50);
    assert_eq!(seen, 200);
    // The EAL starts once per process; later calls report the first result.
    assert!(dpdk::init(&["other".to_owned()]).is_ok());
    // A device that is not there is named.
    let err = dpdk::open_device("wan9", "net_ring9", 1, 1500)
        .err()
        .expect("no such device");
    assert!(
        err.0
            .contains("port `wan9`: DPDK has no device `net_ring9`"),
        "{err}"
    );
}
