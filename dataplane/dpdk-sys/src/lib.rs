//! Raw bindings to DPDK 22.11 through the C shim in `shim/shim.c`: the shim turns DPDK's
//! `static inline` fast-path functions into real ones and hides its structure layouts, so
//! this file declares only opaque types and the shim's functions. Linked statically (see
//! `build.rs`). The safe wrapper is `dwcp_dataplane::io::dpdk`.
//!
//! Every function is `unsafe`: the caller keeps DPDK's rules — EAL initialised once before
//! anything else; a queue used by one thread at a time; mbufs owned by exactly one holder.

#![allow(non_camel_case_types)]

// The mlx5 driver linked in by build.rs calls rdma-core's verbs and mlx5dv, which `rdma-sys`
// links: named here so every binary with DPDK in it (this crate's own tests too) links it.
extern crate rdma_sys as _;

use std::ffi::{c_char, c_int, c_uint};

/// A DPDK packet buffer (opaque).
#[repr(C)]
pub struct rte_mbuf {
    _private: [u8; 0],
}

/// A DPDK memory pool (opaque).
#[repr(C)]
pub struct rte_mempool {
    _private: [u8; 0],
}

/// Transmit offload flags (`RTE_ETH_TX_OFFLOAD_*`).
pub mod offload {
    /// IPv4 header checksum.
    pub const IPV4_CKSUM: u64 = 1 << 1;
    /// UDP checksum.
    pub const UDP_CKSUM: u64 = 1 << 2;
}

unsafe extern "C" {
    /// `rte_eal_init`; returns the number of parsed arguments or a negative errno.
    pub fn dwcp_eal_init(argc: c_int, argv: *mut *mut c_char) -> c_int;
    /// `rte_eal_cleanup`.
    pub fn dwcp_eal_cleanup() -> c_int;
    /// Text for a (negative) errno or `rte_errno`.
    pub fn dwcp_strerror(e: c_int) -> *const c_char;
    /// `rte_thread_register`: gives the calling thread an lcore id (returned).
    pub fn dwcp_thread_register() -> c_int;
    /// Available ports.
    pub fn dwcp_port_count() -> c_uint;
    /// Port id of a device name (PCI address or vdev name).
    pub fn dwcp_port_by_name(name: *const c_char, port: *mut u16) -> c_int;
    /// Device name of a port.
    pub fn dwcp_port_name(port: u16, name: *mut c_char, len: usize) -> c_int;
    /// NUMA socket of a port (-1 unknown).
    pub fn dwcp_port_socket(port: u16) -> c_int;
    /// `rte_pktmbuf_pool_create`.
    pub fn dwcp_pool_create(
        name: *const c_char,
        n: c_uint,
        cache: c_uint,
        data_room: c_uint,
        socket: c_int,
    ) -> *mut rte_mempool;
    /// Free mbufs in a pool.
    pub fn dwcp_pool_avail(pool: *mut rte_mempool) -> c_uint;
    /// Configures `queues` RX/TX queues (RSS when > 1), MTU, checksum offloads; starts.
    pub fn dwcp_port_setup(
        port: u16,
        queues: u16,
        rx_desc: u16,
        tx_desc: u16,
        pool: *mut rte_mempool,
        mtu: u16,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
    /// `rte_eth_dev_stop`.
    pub fn dwcp_port_stop(port: u16) -> c_int;
    /// The port's MAC address.
    pub fn dwcp_port_mac(port: u16, mac: *mut u8) -> c_int;
    /// The offloads configured on the port (`tx` non-zero: transmit, else receive).
    pub fn dwcp_port_offloads(port: u16, tx: c_int) -> u64;
    /// Link state without waiting.
    pub fn dwcp_link(port: u16, up: *mut c_int, speed_mbps: *mut u32) -> c_int;
    /// Extended statistics: `names` null returns the count, else fills up to `n` entries.
    pub fn dwcp_xstats(port: u16, names: *mut [c_char; 64], values: *mut u64, n: c_uint) -> c_int;
    /// `rte_eth_rx_burst`.
    pub fn dwcp_rx_burst(port: u16, q: u16, pkts: *mut *mut rte_mbuf, n: u16) -> u16;
    /// `rte_eth_tx_burst`: the device owns the first `returned` mbufs afterwards.
    pub fn dwcp_tx_burst(port: u16, q: u16, pkts: *mut *mut rte_mbuf, n: u16) -> u16;
    /// `rte_pktmbuf_alloc`.
    pub fn dwcp_mbuf_alloc(pool: *mut rte_mempool) -> *mut rte_mbuf;
    /// `rte_pktmbuf_free`.
    pub fn dwcp_mbuf_free(m: *mut rte_mbuf);
    /// `rte_pktmbuf_free_bulk`.
    pub fn dwcp_mbuf_free_bulk(m: *mut *mut rte_mbuf, n: c_uint);
    /// First segment's data pointer, its length and the segment count.
    pub fn dwcp_mbuf_data(m: *mut rte_mbuf, len: *mut u16, segs: *mut u16) -> *mut u8;
    /// `rte_pktmbuf_tailroom`.
    pub fn dwcp_mbuf_tailroom(m: *mut rte_mbuf) -> u16;
    /// `rte_pktmbuf_append`.
    pub fn dwcp_mbuf_append(m: *mut rte_mbuf, len: u16) -> *mut u8;
}
