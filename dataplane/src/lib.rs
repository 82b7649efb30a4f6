//! The data-plane process: packet I/O backends (`memory`, `af_packet`, `dpdk`), pinned
//! poll-mode workers, the DWCP/1 protocol, the control thread and the metrics endpoint.
//!
//! It reads the node config through `dwcp-provisioning`'s schema (no CLI) and hands batch
//! crypto and compression to `dwcp-kernels`. How a packet goes through:
//! docs/architecture.md.

#![deny(unsafe_code)]

pub mod bench;
pub mod control;
pub mod gateway;
pub mod io;
pub mod proto;
pub mod rdma;
pub mod worker;

pub use dwcp_kernels as kernels;
pub use dwcp_provisioning::NodeConfig;
