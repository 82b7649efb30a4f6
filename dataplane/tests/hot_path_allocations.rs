//! A worker's whole path allocates nothing per packet once warm: bursts of LAN frames through
//! gateway A (route, TTL, MSS, compress and seal per burst, outer headers) and its WAN frames
//! through gateway B (open, replay check, decompress, delivery), on the CPU engine, with
//! compression off, on compressible data and on a compressible and a random flow together
//! (the back-off gates), at 64, 1408 and 8900 bytes (jumbo: the pair's WAN MTU is 9000). A counting allocator watches this
//! test's thread.
#![allow(clippy::tests_outside_test_module)]

use dwcp_dataplane::bench::{GatewayPair, Payload};
use dwcp_kernels::alloc_count::{Counting, allocations};

#[global_allocator]
static COUNTING: Counting = Counting;

#[test]
fn bursts_through_a_gateway_pair_allocate_nothing_once_warm() {
    for size in [64, 1408, 8900] {
        for kind in [Payload::Plain, Payload::Compressible, Payload::Mixed] {
            let mut pair = GatewayPair::new(size, kind, dwcp_dataplane::worker::BURST);
            // Warm-up: per-thread compression state, and the random flow's gate backing off.
            for _ in 0..8 {
                pair.burst().unwrap();
            }
            let (result, n) = allocations(|| {
                for _ in 0..64 {
                    pair.burst()?;
                }
                Ok::<(), String>(())
            });
            result.unwrap();
            assert_eq!(n, 0, "{size} B {kind:?}: {n} allocations in 64 bursts");
        }
    }
}
