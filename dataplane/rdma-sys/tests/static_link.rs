//! The verbs library and its providers are in the binary itself: no `libibverbs.so` is
//! needed at run time, and the Soft-RoCE and mlx5 providers registered themselves.

// Integration tests are their own crate: the lint is for tests inside library code.
#![allow(clippy::tests_outside_test_module)]

use object::{Object as _, ObjectSymbol as _};

#[test]
fn rdma_core_and_its_providers_are_linked_in() {
    // Reference the library so that its objects are linked into this test binary.
    let _ = rdma_sys::devices();
    let exe = std::env::current_exe().unwrap();
    let data = std::fs::read(&exe).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let symbols: Vec<String> = file
        .symbols()
        .filter_map(|s| s.name().ok().map(str::to_owned))
        .collect();
    for provider in ["verbs_provider_rxe", "verbs_provider_mlx5"] {
        assert!(
            symbols.iter().any(|s| s == provider),
            "{provider} is not in {}",
            exe.display()
        );
    }
    let needed = std::process::Command::new("ldd")
        .arg(&exe)
        .output()
        .unwrap();
    let needed = String::from_utf8_lossy(&needed.stdout);
    assert!(
        !needed.contains("libibverbs"),
        "the binary loads libibverbs dynamically:\n{needed}"
    );
}
