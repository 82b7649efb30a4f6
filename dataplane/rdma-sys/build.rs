//! Builds the C shim against Debian 12's rdma-core 44 headers and links rdma-core statically:
//! the Soft-RoCE (`rxe`) and ConnectX (`mlx5`) providers, then `libibverbs` (decision 0028).
//! The providers register through the symbols the shim's `ibv_get_device_list` references
//! (`RDMA_STATIC_PROVIDERS`), so no whole-archive linking is needed; libnl stays dynamic.

fn main() {
    println!("cargo:rerun-if-changed=shim/shim.c");
    let header = std::path::Path::new("/usr/include/infiniband/verbs.h");
    assert!(
        header.exists(),
        "rdma-core's headers not found ({}); on Debian 12 install libibverbs-dev \
         (scripts/setup.sh does)",
        header.display()
    );
    cc::Build::new()
        .file("shim/shim.c")
        .define("RDMA_STATIC_PROVIDERS", "rxe,mlx5")
        .warnings(true)
        .extra_warnings(true)
        .compile("dwcp_rdma_shim");
    println!("cargo:rustc-link-search=native=/usr/lib/x86_64-linux-gnu");
    // Providers before the library whose internals they call.
    for lib in ["rxe-rdmav34", "mlx5", "ibverbs"] {
        println!("cargo:rustc-link-lib=static:-bundle={lib}");
    }
    for lib in ["nl-route-3", "nl-3", "pthread"] {
        println!("cargo:rustc-link-lib={lib}");
    }
}
