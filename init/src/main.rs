//! `dwcp-init`, the appliance's PID 1.
//!
//! Panic policy: a panic in PID 1 would panic the kernel and, with `panic=`, boot-loop. Init
//! catches it at the top, says so on the console, syncs and powers the node off, so a broken
//! image stops visibly instead of looping (docs/decisions/0003-init-panic-policy.md).
//!
//! Run as any other PID (on a host, in tests) it only finds and checks the config under `/`
//! and reports, so its config handling can be tried without booting.

use std::path::Path;
use std::process::ExitCode;

use dwcp_init::config_source::{ConfigState, discover};

fn main() -> ExitCode {
    if std::process::id() == 1 {
        let outcome = std::panic::catch_unwind(|| dwcp_init::boot::run());
        let why = match outcome {
            Err(p) => p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown panic".to_owned()),
        };
        dwcp_init::console::say(&format!(
            "FATAL: init panicked: {why}; syncing and powering off"
        ));
        nix::unistd::sync();
        loop {
            let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    match discover(Path::new("/"), None) {
        ConfigState::Provisioned { source, config } => {
            println!("dwcp-init: config: node {} from {source}", config.name);
            ExitCode::SUCCESS
        }
        ConfigState::LastGood {
            source,
            config,
            rejected,
        } => {
            println!(
                "dwcp-init: config: {source} has {} problem(s); last-known-good copy is node {}",
                rejected.len(),
                config.name
            );
            ExitCode::FAILURE
        }
        ConfigState::Invalid {
            source,
            diagnostics,
        } => {
            println!(
                "dwcp-init: config: INVALID ({source}), safe mode; {} problem(s):",
                diagnostics.len()
            );
            for d in diagnostics {
                println!("dwcp-init: config: {d}");
            }
            ExitCode::FAILURE
        }
        ConfigState::Unprovisioned => {
            println!("dwcp-init: config: none found, node is unprovisioned");
            ExitCode::FAILURE
        }
    }
}
