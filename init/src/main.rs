//! `dwcp-init`, the appliance's PID 1. For now it finds and validates the node config and
//! reports the outcome on the console; the full boot flow arrives with the boot-path issue.

use std::path::Path;
use std::process::ExitCode;

use dwcp_init::config_source::{ConfigState, discover};

fn main() -> ExitCode {
    match discover(Path::new("/")) {
        ConfigState::Provisioned { source, config } => {
            println!("dwcp-init: config: node {} from {source}", config.name);
            ExitCode::SUCCESS
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
