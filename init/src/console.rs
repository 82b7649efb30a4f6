//! Console output and input: every init message is one line `dwcp-init: ...` on the serial
//! console (stdout) and in the kernel log; operators type a small command set, no shell.

use std::io::Write as _;
use std::sync::{Mutex, OnceLock};

use dwcp_provisioning::syslog::{Severity, Shipper};
use dwcp_provisioning::types::SyslogRemote;

static KMSG: OnceLock<std::fs::File> = OnceLock::new();
static SHIPPER: Mutex<Option<Shipper>> = Mutex::new(None);

/// Ships init's lines from now on to `remote` too (`[logging] remote`), naming the node
/// `hostname`.
pub fn ship_to(remote: SyslogRemote, hostname: &str) {
    if let Ok(mut s) = SHIPPER.lock() {
        *s = Some(Shipper::new(remote, hostname, "dwcp-init"));
    }
}

/// How bad a line of init's is, from its words.
fn severity(line: &str) -> Severity {
    if line.contains("FATAL") || line.contains("SAFE MODE") || line.contains("FAILED") {
        Severity::Error
    } else if line.contains("WARNING") {
        Severity::Warning
    } else {
        Severity::Info
    }
}

fn ship(line: &str) {
    if let Ok(mut s) = SHIPPER.lock()
        && let Some(s) = s.as_mut()
    {
        s.ship(severity(line), line);
    }
}

/// Sends init's messages to `/dev/kmsg` too, once `/dev` is mounted.
pub fn attach_kmsg() {
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = KMSG.set(f);
    }
}

/// Prints one message line.
pub fn say(msg: &str) {
    let mut out = std::io::stdout().lock();
    for line in msg.lines() {
        let _ = writeln!(out, "dwcp-init: {line}");
        if let Some(mut k) = KMSG.get() {
            // One write per record: /dev/kmsg makes a log entry of each write.
            let _ = k.write_all(format!("<6>dwcp-init: {line}\n").as_bytes());
        }
        ship(line);
    }
    let _ = out.flush();
}

/// Prints a line as is (`DWCP READY ...`, which tests and operators key on).
pub fn announce(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    if let Some(mut k) = KMSG.get() {
        let _ = k.write_all(format!("<5>{line}\n").as_bytes());
    }
    ship(line);
}

/// `say!` formats and prints one init message.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::console::say(&format!($($arg)*)) };
}

/// A console command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Node and data-plane state.
    Status,
    /// The config in use, or its errors in safe mode.
    Config,
    /// Restart the data plane (also out of safe mode after crashes).
    Restart,
    /// SIGKILL the data plane, to test supervision.
    KillDataplane,
    /// Run the RDMA transport's bench on this node (`dwcp-dataplane bench rdma`).
    BenchRdma,
    /// Drain and reboot.
    Reboot,
    /// Drain and power off.
    Poweroff,
    /// The command list.
    Help,
    /// Not a command.
    Unknown(String),
}

/// Parses one typed line; `None` for a blank one.
pub fn parse(line: &str) -> Option<Command> {
    let words: Vec<&str> = line.split_whitespace().collect();
    Some(match words.as_slice() {
        [] => return None,
        ["status"] => Command::Status,
        ["config"] => Command::Config,
        ["restart"] => Command::Restart,
        ["debug", "kill-dataplane"] => Command::KillDataplane,
        ["bench", "rdma"] => Command::BenchRdma,
        ["reboot"] => Command::Reboot,
        ["poweroff"] => Command::Poweroff,
        ["help"] => Command::Help,
        _ => Command::Unknown(line.trim().to_owned()),
    })
}

/// The help text.
pub const HELP: &str = "commands: status | config | restart | bench rdma | debug kill-dataplane | reboot | poweroff | help";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(parse("  status \r"), Some(Command::Status));
        assert_eq!(parse("debug kill-dataplane"), Some(Command::KillDataplane));
        assert_eq!(parse("bench  rdma"), Some(Command::BenchRdma));
        assert_eq!(parse(""), None);
        assert_eq!(parse("rm -rf /"), Some(Command::Unknown("rm -rf /".into())));
    }
}
