//! The data plane's offload engines, from `[offload]`: one adaptive dispatcher per worker over
//! the worker's own CPU engine and, when `offload.gpu` allows it and a GPU is usable, the one
//! CUDA engine behind a gathering thread that runs the GPU batches of all workers together
//! (up to `max_batch` packets or `max_delay_us`), once the GPU has passed its start-up check
//! against the CPU engine. Says at start-up which engine runs and why, and reports GPU state
//! for metrics and the console.

use std::time::Duration;

use dwcp_kernels::Engine;
use dwcp_kernels::cuda::{Capacity, CudaEngine};
use dwcp_kernels::dispatch::selftest;
use dwcp_kernels::dispatch::{Dispatcher, Mode, Settings};
use dwcp_kernels::gather::{GatherSettings, Gatherer};
use dwcp_kernels::monitor::{GpuMonitor, MonitorError};
use dwcp_provisioning::schema::{GpuMode, Offload};

/// The largest inner packet the engines are sized for.
const MAX_PACKET: usize = selftest::MAX_PACKET;

/// How long each batch of the GPU's start-up check may take (milliseconds on a GPU, about a
/// tenth of a second on the simulated one; a GPU that needs longer is not fit for traffic).
const SELF_TEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A GPU gather running this long is stuck in a driver call (a batch's deadline is at most a
/// few hundred milliseconds, at least 50 ms): the data plane exits with
/// [`crate::control::app::EXIT_GPU_HUNG`].
pub const GPU_HANG: Duration = Duration::from_secs(5);

/// Set by init when it restarts the data plane after the GPU hung (exit code
/// [`crate::control::app::EXIT_GPU_HUNG`]): why, in words. The data plane then runs on the CPU engine
/// until the next boot.
pub use dwcp_provisioning::exit::GPU_DISABLED_ENV;

/// The engines for every worker and what was chosen.
pub struct Engines {
    /// One per worker.
    pub engines: Vec<Box<dyn Engine>>,
    /// `cpu`, `auto` or `gpu`: the metrics' engine label.
    pub kind: &'static str,
    /// Why, in words, for the start-up line and the console.
    pub why: String,
    /// The GPU's status for operators when a GPU engine runs: NVML on its device, or why
    /// there is none.
    pub monitor: Option<Result<GpuMonitor, MonitorError>>,
    /// The thread that gathers the workers' GPU batches, when a GPU engine runs; the workers'
    /// GPU path ends with it (they then finish everything on their CPUs).
    pub gatherer: Option<Gatherer>,
}

fn settings(cfg: &Offload) -> Settings {
    Settings {
        mode: match cfg.gpu {
            GpuMode::Auto => Mode::Auto,
            GpuMode::On => Mode::On,
            GpuMode::Off => Mode::Off,
        },
        // A batch may take its gathering delay many times over before it is abandoned.
        deadline: Duration::from_micros(u64::from(cfg.max_delay_us) * 20)
            .max(Duration::from_millis(50)),
        verify_every: u64::from(cfg.verify_every),
        spot_check: cfg.spot_check,
        ..Settings::default()
    }
}

/// Builds the engines for `workers` workers; the gathering thread (with a GPU) runs on
/// `gather_core` when given. `gpu_disabled` (init's [`GPU_DISABLED_ENV`]) keeps the GPU out,
/// and says why.
pub fn engines(
    cfg: &Offload,
    gather_core: Option<u16>,
    workers: usize,
    gpu_disabled: Option<&str>,
) -> Engines {
    let set = settings(cfg);
    let cpu_only = |why: String| Engines {
        engines: (0..workers)
            .map(|_| Box::new(Dispatcher::new(None, set)) as Box<dyn Engine>)
            .collect(),
        kind: "cpu",
        why,
        monitor: None,
        gatherer: None,
    };
    if cfg.gpu == GpuMode::Off {
        return cpu_only("offload.gpu = off".into());
    }
    let mode = if cfg.gpu == GpuMode::On { "on" } else { "auto" };
    if let Some(why) = gpu_disabled {
        return cpu_only(format!(
            "offload.gpu = {mode}, but the GPU is disabled until the next boot: {why}"
        ));
    }
    let max_batch = usize::try_from(cfg.max_batch).unwrap_or(1024);
    // Staging for `max_batch` packets; a larger gather runs in more chunks.
    let cap = Capacity::for_batch(max_batch, MAX_PACKET);
    let mut gpu = match CudaEngine::new(cfg.device, cap) {
        Ok(e) => e,
        Err(e) => return cpu_only(format!("offload.gpu = {mode}, but no GPU engine: {e}")),
    };
    let described = dwcp_kernels::dispatch::Accelerator::describe(&gpu);
    let pci_bus_id = gpu.info().pci_bus_id.clone();
    // A GPU that gives wrong answers would seal packets every peer drops: it gets no traffic.
    let checked = match selftest::check(&mut gpu, MAX_PACKET, SELF_TEST_TIMEOUT) {
        Ok(passed) => passed,
        Err(why) => {
            return cpu_only(format!(
                "offload.gpu = {mode}, but GPU {described} failed its start-up check against the CPU engine: {why}"
            ));
        }
    };
    let gather = GatherSettings {
        max_batch,
        max_delay: Duration::from_micros(u64::from(cfg.max_delay_us)),
        core: gather_core.map(usize::from),
        ..GatherSettings::default()
    };
    let (gatherer, clients) = match Gatherer::start(Box::new(gpu), workers, gather) {
        Ok(g) => g,
        Err(e) => {
            return cpu_only(format!(
                "offload.gpu = {mode}, but the GPU gathering thread did not start: {e}"
            ));
        }
    };
    let (kind, how) = if cfg.gpu == GpuMode::On {
        ("gpu", "every batch to the GPU while it is healthy")
    } else {
        ("auto", "each batch to whichever path is measured faster")
    };
    Engines {
        engines: clients
            .into_iter()
            .map(|c| Box::new(Dispatcher::new(Some(Box::new(c)), set)) as Box<dyn Engine>)
            .collect(),
        kind,
        why: format!(
            "GPU {described}, {checked}; {how}; workers' GPU batches gathered up to {max_batch} packets or {} us by a thread {}",
            cfg.max_delay_us,
            gatherer.placement()
        ),
        monitor: Some(GpuMonitor::open(&pci_bus_id)),
        gatherer: Some(gatherer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_means_cpu_and_says_so() {
        let cfg = Offload {
            gpu: GpuMode::Off,
            ..Offload::default()
        };
        let e = engines(&cfg, Some(0), 3, None);
        assert_eq!((e.engines.len(), e.kind), (3, "cpu"));
        assert_eq!(e.why, "offload.gpu = off");
        assert!(e.engines.iter().all(|e| e.offload_stats().is_some()));
    }

    #[test]
    fn auto_without_a_gpu_falls_back_to_the_cpu_with_the_reason() {
        let e = engines(&Offload::default(), None, 2, None);
        if e.kind == "cpu" {
            assert!(
                e.why.starts_with("offload.gpu = auto, but no GPU engine: "),
                "{}",
                e.why
            );
        }
        assert_eq!(e.engines.len(), 2);
    }

    #[test]
    fn a_gpu_disabled_by_init_stays_out_and_the_reason_is_said() {
        for gpu in [GpuMode::On, GpuMode::Auto] {
            let cfg = Offload {
                gpu,
                ..Offload::default()
            };
            let e = engines(&cfg, None, 2, Some("it hung a driver call for 5.0 s"));
            assert_eq!((e.engines.len(), e.kind), (2, "cpu"));
            assert!(e.gatherer.is_none() && e.monitor.is_none());
            assert!(
                e.why.ends_with(
                    "but the GPU is disabled until the next boot: it hung a driver call for 5.0 s"
                ),
                "{}",
                e.why
            );
        }
    }
}
