//! The data plane binary carries the poll-mode drivers a node may need, linked statically:
//! ConnectX's mlx5 (with its common layer and rdma-core's mlx5dv and verbs beneath it)
//! beside the Intel and virtual ones, and loads neither DPDK nor rdma-core at run time. No
//! ConnectX is at hand: this checks everything up to the hardware.

// Integration tests are their own crate: the lint is for tests inside library code.
#![allow(clippy::tests_outside_test_module)]

use object::{Object as _, ObjectSymbol as _};

#[test]
fn the_mlx5_driver_and_rdma_core_are_in_the_data_plane_binary() {
    let exe = env!("CARGO_BIN_EXE_dwcp-dataplane");
    let data = std::fs::read(exe).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let symbols: Vec<&str> = file.symbols().filter_map(|s| s.name().ok()).collect();
    for wanted in [
        // DPDK's mlx5 network driver probing a ConnectX, its common class driver, the
        // auxiliary bus, rdma-core's mlx5 direct verbs and the two verbs providers.
        "mlx5_os_net_probe",
        "mlx5_common_init",
        "mlx5dv_open_device",
        "verbs_provider_mlx5",
        "verbs_provider_rxe",
        // The drivers that were there before.
        "rte_eth_dev_probing_finish",
    ] {
        assert!(symbols.contains(&wanted), "{wanted} is not in {exe}");
    }
    let ldd = std::process::Command::new("ldd").arg(exe).output().unwrap();
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    for dynamic in ["libibverbs", "libmlx5", "librte_"] {
        assert!(
            !ldd.contains(dynamic),
            "{exe} loads {dynamic} at run time:\n{ldd}"
        );
    }
}
