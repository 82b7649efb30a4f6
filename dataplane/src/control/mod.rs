//! The process around the workers: start-up and the control loop (`app`), the offload
//! engines chosen for the workers, readiness towards init, the workers' counters and the
//! Prometheus endpoint that renders them.

pub mod app;
pub mod log;
pub mod metrics;
pub mod offload;
pub mod readiness;
pub mod scrape;
pub mod stats;
pub mod status;
