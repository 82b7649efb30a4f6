//! `dwcp-dataplane`: the process init launches. Loads and validates its config, tells init
//! it is ready, and stops cleanly on SIGTERM.
//!
//! Exit codes: 0 stopped on request, 2 bad arguments, 3 invalid config, 4 readiness failed.

use std::path::PathBuf;
use std::process::ExitCode;

use nix::sys::signal::{SigSet, Signal};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let config = match (args.next(), args.next()) {
        (Some(flag), Some(path)) if flag == "--config" => PathBuf::from(path),
        _ => {
            eprintln!("usage: dwcp-dataplane --config FILE");
            return ExitCode::from(2);
        }
    };
    // Block the stop signals before anything else so none is lost while starting.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    if let Err(e) = stop.thread_block() {
        eprintln!("dwcp-dataplane: cannot block signals: {e}");
    }
    let cfg = match dwcp_provisioning::load_file(&config) {
        Ok(c) => c,
        Err(dwcp_provisioning::LoadError::Invalid(diags)) => {
            for d in diags {
                eprintln!("dwcp-dataplane: {d}");
            }
            return ExitCode::from(3);
        }
        Err(e) => {
            eprintln!("dwcp-dataplane: {e}");
            return ExitCode::from(3);
        }
    };
    println!(
        "dwcp-dataplane: node {}: {} port(s), {} peer(s), {} worker core(s); packet path not built yet (data-plane issue)",
        cfg.name,
        cfg.ports.len(),
        cfg.tunnel.peers.len(),
        cfg.cores.dataplane.len()
    );
    match dwcp_dataplane::readiness::notify_ready() {
        Ok(true) => println!("dwcp-dataplane: ready"),
        Ok(false) => println!("dwcp-dataplane: ready (no DWCP_NOTIFY_SOCKET; not run by init)"),
        Err(e) => {
            eprintln!("dwcp-dataplane: cannot tell init we are ready: {e}");
            return ExitCode::from(4);
        }
    }
    match stop.wait() {
        Ok(sig) => println!("dwcp-dataplane: {sig}, stopping"),
        Err(e) => eprintln!("dwcp-dataplane: waiting for a stop signal failed: {e}"),
    }
    ExitCode::SUCCESS
}
