//! `bench pipeline --backend dpdk` measures something: the tunnel pipeline and the backend's
//! own I/O through DPDK's `net_ring` device deliver packets, and `dpdk-testpmd` (installed by
//! scripts/setup.sh with Debian's dpdk-dev) reports its forwarding rate for the ratio.
#![allow(clippy::tests_outside_test_module)]

use std::time::Duration;

#[test]
fn the_dpdk_pipeline_bench_measures_both_sides() {
    let rows = dwcp_dataplane::bench::dpdk_rows(Duration::from_millis(300)).expect("bench");
    eprintln!("{}", dwcp_dataplane::bench::dpdk_table(&rows));
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert!(
            r.pipeline_mpps > 0.0,
            "no packet through the tunnel at {}",
            r.size
        );
        assert!(
            r.io_mpps > r.pipeline_mpps,
            "I/O alone must beat the pipeline"
        );
        let t = r
            .testpmd_mpps
            .expect("dpdk-testpmd missing or silent: scripts/setup.sh installs dpdk-dev");
        assert!(t > 0.0);
    }
}
