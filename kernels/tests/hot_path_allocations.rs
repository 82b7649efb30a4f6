//! The engines a worker runs allocate nothing per packet once warm: seal, open, compress and
//! decompress of packets of every size up to 9216 bytes, jumbo included, through the CPU
//! engine, the dispatcher a worker has without a GPU, and the dispatcher's GPU path through
//! the gathering thread (a stand-in accelerator doing the CPU's work), its batches checked
//! against the CPU engine (whole or one packet each) — with a counting allocator watching
//! every thread.
//!
//! Without libtest's harness (`harness = false`): the harness's own main thread allocates when
//! it first waits on its result channel, and on a loaded machine that came inside a measured
//! round (CI once saw 4 allocations charged to the dispatcher's decompress). Here the only
//! threads are the test's.

// Integration tests are their own crate: the lint is for tests inside library code.
#![allow(clippy::tests_outside_test_module)]

use std::time::Duration;

use dwcp_kernels::Engine as _;
use dwcp_kernels::alloc_count::Counting;
use dwcp_kernels::cpu::CpuEngine;
use dwcp_kernels::dispatch::fault_injector::{Fault, TestAccelerator};
use dwcp_kernels::dispatch::{Dispatcher, Mode, Settings};
use dwcp_kernels::gather::{GatherSettings, Gatherer};
use dwcp_kernels::suite::no_allocation_per_packet as rounds;

#[global_allocator]
static COUNTING: Counting = Counting;

const NAME: &str = "the_engines_allocate_nothing_per_packet";

fn main() {
    // `cargo test FILTER` passes the filter on: run only when it names this test.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if filter.as_deref().is_some_and(|f| !NAME.contains(f)) {
        println!("test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out");
        return;
    }
    println!("\nrunning 1 test");
    the_engines_allocate_nothing_per_packet();
    println!("test {NAME} ... ok\n");
    println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}

fn the_engines_allocate_nothing_per_packet() {
    rounds("the CPU engine", &mut CpuEngine);
    rounds(
        "the dispatcher without a GPU",
        &mut Dispatcher::new(None, Settings::default()),
    );
    let gpu = TestAccelerator::new(Fault::None, Duration::ZERO);
    let (_gatherer, mut clients) = Gatherer::start(
        Box::new(gpu),
        1,
        GatherSettings {
            max_delay: Duration::from_micros(10),
            ..GatherSettings::default()
        },
    )
    .unwrap();
    let on = Settings {
        mode: Mode::On,
        deadline: Duration::from_secs(5),
        ..Settings::default()
    };
    let mut gathered = Dispatcher::new(Some(Box::new(clients.remove(0))), on);
    rounds("the dispatcher's GPU path, gathered", &mut gathered);
    let stats = gathered.offload_stats().unwrap();
    // Every operation went the GPU path (index 1), and none failed.
    assert!(
        stats.batches.iter().all(|per_path| per_path[1] > 0) && stats.gpu_errors == 0,
        "{stats:?}"
    );
    // 4 rounds of 4 operations: the first batch of each checked whole, the other 12 one
    // packet each (the spot checks allocate nothing either).
    assert_eq!(
        (stats.verified_batches, stats.spot_checked_batches),
        (4, 12),
        "{stats:?}"
    );
    let every = Settings {
        verify_every: 1,
        ..on
    };
    let gpu = TestAccelerator::new(Fault::None, Duration::ZERO);
    let mut checked = Dispatcher::new(Some(Box::new(gpu)), every);
    rounds(
        "the dispatcher's GPU path, every batch checked",
        &mut checked,
    );
    let stats = checked.offload_stats().unwrap();
    // 4 rounds of 4 operations, each checked, none wrong.
    assert_eq!(
        (stats.verified_batches, stats.gpu_wrong_batches),
        (16, 0),
        "{stats:?}"
    );
}
