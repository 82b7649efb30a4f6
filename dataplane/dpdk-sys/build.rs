//! Builds the C shim against DPDK 22.11 (found with pkg-config) and links DPDK statically:
//! the poll-mode drivers and buses with --whole-archive (they register themselves from
//! constructors nothing else references), the libraries they need after them.

/// Drivers and buses kept whole: PCI and virtual buses, the ring mempool, and the PMDs the
/// appliance and its tests use (QEMU's e1000e/virtio, common Intel NICs, ConnectX (mlx5),
/// and the virtual ring, null, af_packet and tap devices).
const WHOLE: &[&str] = &[
    "rte_bus_pci",
    "rte_bus_vdev",
    "rte_mempool_ring",
    "rte_net_ring",
    "rte_net_null",
    "rte_net_af_packet",
    "rte_net_tap",
    "rte_net_e1000",
    "rte_net_virtio",
    "rte_net_ixgbe",
    "rte_net_i40e",
    // ConnectX: the mlx5 driver, its common class layer and the auxiliary bus it probes
    // sub-functions on. They call rdma-core's verbs and mlx5dv, which `rdma-sys` links
    // statically after DPDK (it is this crate's dependency).
    "rte_bus_auxiliary",
    "rte_common_mlx5",
    "rte_net_mlx5",
];

/// Libraries the drivers and the shim use, in link order.
const LIBS: &[&str] = &[
    "rte_ethdev",
    "rte_gso",
    "rte_security",
    "rte_cryptodev",
    "rte_hash",
    "rte_mbuf",
    "rte_mempool",
    "rte_ring",
    "rte_net",
    "rte_meter",
    "rte_pci",
    "rte_rcu",
    "rte_eal",
    "rte_kvargs",
    "rte_telemetry",
];

fn main() {
    println!("cargo:rerun-if-changed=shim/shim.c");
    let dpdk = match pkg_config::Config::new()
        .atleast_version("22.11")
        .cargo_metadata(false)
        .probe("libdpdk")
    {
        Ok(l) => l,
        Err(e) => panic!(
            "DPDK 22.11 not found with pkg-config ({e}); on Debian 12 install libdpdk-dev \
             (scripts/setup.sh does)"
        ),
    };
    let mut build = cc::Build::new();
    build
        .file("shim/shim.c")
        .warnings(true)
        .extra_warnings(true);
    for p in &dpdk.include_paths {
        build.include(p);
    }
    // DPDK's own flags: its config header and the instruction-set baseline it was built for.
    build
        .flag("-include")
        .flag("rte_config.h")
        .flag("-march=corei7");
    build.compile("dwcp_dpdk_shim");
    for dir in &dpdk.link_paths {
        println!("cargo:rustc-link-search=native={}", dir.display());
    }
    println!("cargo:rustc-link-search=native=/usr/lib/x86_64-linux-gnu");
    for lib in WHOLE {
        println!("cargo:rustc-link-lib=static:+whole-archive,-bundle={lib}");
    }
    for lib in LIBS {
        println!("cargo:rustc-link-lib=static:-bundle={lib}");
    }
    for lib in ["bsd", "md", "numa"] {
        println!("cargo:rustc-link-lib=static:-bundle={lib}");
    }
    for lib in ["dl", "m", "pthread"] {
        println!("cargo:rustc-link-lib={lib}");
    }
}
