//! `dwcp-dataplane`: the process init launches. Loads and validates its config, opens its
//! ports, starts pinned workers, tells init it is ready, serves metrics, and stops cleanly on
//! SIGTERM.
//!
//! `dwcp-dataplane bench pipeline [--json] [--seconds S]` runs the pipeline benchmark
//! (`dwcp bench pipeline` calls it); `dwcp-dataplane bench rdma --config FILE` the RDMA
//! transport's (`dwcp bench rdma`, and the appliance console's `bench rdma`).
//!
//! Exit statuses: [`DataplaneExit`], shared with init (0 stopped on request, 2 bad
//! arguments, 3 invalid config, 4 readiness failed, 5 could not start, 6 this node cannot run
//! the config, 7 the GPU hung; 6 and 7 tell init why as `ERROR=` first).

use std::path::PathBuf;
use std::process::ExitCode;

use dwcp_provisioning::exit::DataplaneExit;
use nix::sys::signal::{SigSet, Signal};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let first = args.next();
    if first.as_deref() == Some(std::ffi::OsStr::new("bench")) {
        return bench(args.map(|a| a.to_string_lossy().into_owned()).collect());
    }
    let config = match (first, args.next()) {
        (Some(flag), Some(path)) if flag == "--config" => PathBuf::from(path),
        _ => {
            dwcp_dataplane::say!(error, "usage: dwcp-dataplane --config FILE");
            return DataplaneExit::Usage.into();
        }
    };
    // Block the control signals before any thread starts, so every thread inherits the mask
    // and the control thread alone receives them.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        dwcp_dataplane::say!(error, "dwcp-dataplane: cannot block signals: {e}");
    }
    let cfg = match dwcp_provisioning::load_file(&config) {
        Ok(c) => c,
        Err(dwcp_provisioning::LoadError::Invalid(diags)) => {
            for d in diags {
                dwcp_dataplane::say!(error, "dwcp-dataplane: {d}");
            }
            return DataplaneExit::InvalidConfig.into();
        }
        Err(e) => {
            dwcp_dataplane::say!(error, "dwcp-dataplane: {e}");
            return DataplaneExit::InvalidConfig.into();
        }
    };
    if let Some(remote) = cfg.logging.remote {
        dwcp_dataplane::control::log::ship_to(remote, &cfg.name.to_string());
    }
    let running = match dwcp_dataplane::control::app::start(&cfg) {
        Ok(r) => r,
        Err(e) => {
            let mut msg = format!("dwcp-dataplane: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            dwcp_dataplane::say!(error, "{msg}");
            if e.cannot_run() {
                // The node cannot run this config: tell init why, and that restarting will
                // not help.
                let _ = dwcp_dataplane::control::readiness::notify_error(&e.to_string());
                return DataplaneExit::CannotStart.into();
            }
            return DataplaneExit::Failed.into();
        }
    };
    dwcp_dataplane::say!(
        info,
        "dwcp-dataplane: node {}: {} worker(s) on cores {:?}, engine {}, metrics on http://{}/metrics",
        cfg.name,
        cfg.cores.dataplane.len(),
        cfg.cores.dataplane,
        running.engine_kind(),
        cfg.metrics.listen
    );
    if let Err(code) = ready() {
        return code;
    }
    match running.control(&signals, &config) {
        Ok(()) => {
            dwcp_dataplane::say!(info, "dwcp-dataplane: stopped");
            DataplaneExit::Stopped.into()
        }
        Err(e) => {
            dwcp_dataplane::say!(error, "dwcp-dataplane: {e}");
            DataplaneExit::Failed.into()
        }
    }
}

fn ready() -> Result<(), ExitCode> {
    match dwcp_dataplane::control::readiness::notify_ready() {
        Ok(true) => {
            dwcp_dataplane::say!(info, "dwcp-dataplane: ready");
            Ok(())
        }
        Ok(false) => {
            dwcp_dataplane::say!(
                info,
                "dwcp-dataplane: ready (no DWCP_NOTIFY_SOCKET; not run by init)"
            );
            Ok(())
        }
        Err(e) => {
            dwcp_dataplane::say!(error, "dwcp-dataplane: cannot tell init we are ready: {e}");
            Err(DataplaneExit::ReadinessFailed.into())
        }
    }
}

fn bench(args: Vec<String>) -> ExitCode {
    if args.first().map(String::as_str) == Some("offload") {
        return bench_offload(&args);
    }
    if args.first().map(String::as_str) == Some("rdma") {
        return bench_rdma(&args);
    }
    if args.first().map(String::as_str) != Some("pipeline") {
        eprintln!(
            "usage: dwcp-dataplane bench pipeline [--json] [--seconds S] [--burst N] [--offload on|off|auto [--packets N]] [--backend memory|dpdk]\n       \
             dwcp-dataplane bench offload [--json] [--device N] [--quick]\n       \
             dwcp-dataplane bench rdma --config FILE [--messages N] [--json]"
        );
        return ExitCode::from(2);
    }
    let json = args.iter().any(|a| a == "--json");
    let seconds: f64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    // A worker's burst (`dataplane.burst`) for the gateway pair and the offload check.
    let burst = args
        .iter()
        .position(|a| a == "--burst")
        .and_then(|i| args.get(i + 1))
        .map_or(Ok(dwcp_dataplane::worker::BURST), |s| s.parse::<usize>());
    let max = usize::from(dwcp_provisioning::schema::BURST_MAX);
    let burst = match burst {
        Ok(b @ 1..) if b <= max => b,
        _ => {
            eprintln!("dwcp-dataplane: --burst: expected a whole number of frames, 1 to {max}");
            return ExitCode::from(2);
        }
    };
    let offload = args
        .iter()
        .position(|a| a == "--offload")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    if let Some(mode) = offload {
        use dwcp_provisioning::schema::GpuMode;
        let mode = match mode {
            "on" => GpuMode::On,
            "off" => GpuMode::Off,
            "auto" => GpuMode::Auto,
            other => {
                eprintln!("dwcp-dataplane: --offload {other}: expected on, off or auto");
                return ExitCode::from(2);
            }
        };
        let packets = args
            .iter()
            .position(|a| a == "--packets")
            .and_then(|i| args.get(i + 1))
            .map_or(Ok(20_000), |s| s.parse::<usize>());
        let Ok(packets @ 1..) = packets else {
            eprintln!("dwcp-dataplane: --packets: expected a whole number of packets above 0");
            return ExitCode::from(2);
        };
        let check = dwcp_dataplane::bench::offload_check(mode, packets, burst);
        print!("{}", check.text());
        if check.mismatches != 0 {
            return ExitCode::FAILURE;
        }
        if mode == GpuMode::On && check.engine.0 != "gpu" {
            eprintln!("dwcp-dataplane: --offload on asked for the GPU engine, and there is none");
            return ExitCode::FAILURE;
        }
    }
    let backend = args
        .iter()
        .position(|a| a == "--backend")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    if let Some(b) = backend.filter(|b| *b != "memory") {
        if b != "dpdk" {
            eprintln!("dwcp-dataplane: --backend {b}: expected memory or dpdk");
            return ExitCode::from(2);
        }
        let budget = std::time::Duration::from_secs_f64(seconds.clamp(0.05, 60.0));
        match dwcp_dataplane::bench::dpdk_rows(budget) {
            Ok(rows) => print!("{}", dwcp_dataplane::bench::dpdk_table(&rows)),
            Err(e) => {
                eprintln!("dwcp-dataplane: bench on DPDK: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let rows = dwcp_dataplane::bench::run(std::time::Duration::from_secs_f64(
        seconds.clamp(0.05, 60.0),
    ));
    if json {
        print!("{}", dwcp_dataplane::bench::json(&rows));
        return ExitCode::SUCCESS;
    }
    print!("{}", dwcp_dataplane::bench::table(&rows));
    let budget = std::time::Duration::from_secs_f64(seconds.clamp(0.05, 60.0) / 2.0);
    match dwcp_dataplane::bench::gateway_rows(burst, budget) {
        Ok(rows) => print!("\n{}", dwcp_dataplane::bench::gateway_table(&rows, burst)),
        Err(e) => {
            eprintln!("dwcp-dataplane: bench through the gateway pair: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// `bench offload`: the GPU engine against the pinned-copy ceiling and the CPU engine.
/// The RDMA transport's per-message cost beside UDP, on the device the config's RDMA peers
/// use (`dwcp_dataplane::rdma::bench`).
fn bench_rdma(args: &[String]) -> ExitCode {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let Some(path) = value("--config") else {
        eprintln!("usage: dwcp-dataplane bench rdma --config FILE [--messages N] [--json]");
        return DataplaneExit::Usage.into();
    };
    let messages = value("--messages")
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000usize)
        .max(1);
    let cfg = match dwcp_provisioning::load_file(std::path::Path::new(path)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench rdma: {e}");
            return DataplaneExit::InvalidConfig.into();
        }
    };
    let plan = match dwcp_dataplane::control::app::rdma_plan(&cfg) {
        Ok(Some((_, endpoint, _))) => endpoint,
        Ok(None) => {
            eprintln!("bench rdma: no peer in {path} uses transport = \"rdma\"");
            return DataplaneExit::CannotStart.into();
        }
        Err(e) => {
            eprintln!("bench rdma: {e}");
            return DataplaneExit::CannotStart.into();
        }
    };
    let Some(addr) = cfg
        .rdma
        .iter()
        .find(|d| d.device.0 == plan.device)
        .map(|d| d.address.addr())
    else {
        eprintln!(
            "bench rdma: device {} is not one of the [[rdma]] devices",
            plan.device
        );
        return DataplaneExit::InvalidConfig.into();
    };
    match dwcp_dataplane::rdma::bench::run(&plan, addr, messages) {
        Ok(rows) => {
            if args.iter().any(|a| a == "--json") {
                println!("{}", dwcp_dataplane::rdma::bench::json(&rows));
            } else {
                print!("{}", dwcp_dataplane::rdma::bench::table(&plan, &rows));
            }
            println!("bench rdma: finished");
            DataplaneExit::Stopped.into()
        }
        Err(e) => {
            eprintln!("bench rdma: finished: FAILED: {e}");
            DataplaneExit::CannotStart.into()
        }
    }
}

fn bench_offload(args: &[String]) -> ExitCode {
    let json = args.iter().any(|a| a == "--json");
    let quick = args.iter().any(|a| a == "--quick");
    let device: u32 = args
        .iter()
        .position(|a| a == "--device")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (sizes, batches, reps): (&[usize], &[usize], usize) = if quick {
        (&[64, 1408], &[256, 4096], 3)
    } else {
        (
            &dwcp_kernels::bench::SIZES,
            &dwcp_kernels::bench::BATCHES,
            5,
        )
    };
    match dwcp_kernels::bench::offload(device, sizes, batches, reps) {
        Ok(report) => {
            if json {
                print!("{}", report.json());
            } else {
                print!("{}", report.table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            // No GPU rows, but the CPU engine's own figures are still worth having; the exit
            // status says the GPU part is missing.
            eprintln!(
                "dwcp-dataplane bench offload: no GPU engine: {e}; measuring the CPU engine alone"
            );
            let budget = std::time::Duration::from_millis(if quick { 50 } else { 300 });
            let report = dwcp_kernels::bench::cpu_only(e.to_string(), sizes, budget);
            if json {
                print!("{}", report.json());
            } else {
                print!("{}", report.table());
            }
            ExitCode::FAILURE
        }
    }
}
