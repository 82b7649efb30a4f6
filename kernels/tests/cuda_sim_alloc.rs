//! The CUDA engine allocates nothing per batch, host or device: the check of `tests/gpu.rs`,
//! run here on the simulated driver (`kernels/sim/sim_driver.cpp`, see `tests/cuda_sim.rs`).
//! Alone in its binary, since every thread's allocations count.
#![allow(clippy::tests_outside_test_module)]

mod sim_driver;

use dwcp_kernels::alloc_count::Counting;
use dwcp_kernels::cuda::Capacity;
use dwcp_kernels::suite;
use sim_driver::{engine, sim};

#[global_allocator]
static COUNTING: Counting = Counting;

#[test]
fn sim_cuda_engine_allocates_nothing_per_batch() {
    let mut e = engine(Capacity::for_batch(1024, 9216));
    let before = sim().stats();
    suite::no_allocation_per_packet("the CUDA engine (simulated driver)", &mut e);
    let after = sim().stats();
    assert!(
        after.launches > before.launches,
        "the batches ran: {after:?}"
    );
    assert_eq!(
        after.device_allocs, before.device_allocs,
        "no device allocation per batch"
    );
    assert_eq!(e.failures(), (0, None));
}
