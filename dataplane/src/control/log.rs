//! The data plane's log lines: to the console (stdout, or stderr for warnings and errors)
//! and, with `[logging] remote`, to the syslog collector (`dwcp_provisioning::syslog`).
//! Only the control thread and `main` log; workers never do.

use std::sync::Mutex;

use dwcp_provisioning::syslog::{Severity, Shipper};
use dwcp_provisioning::types::SyslogRemote;

static SHIPPER: Mutex<Option<Shipper>> = Mutex::new(None);

/// Ships the lines logged from now on to `remote` too, naming the node `hostname`.
pub fn ship_to(remote: SyslogRemote, hostname: &str) {
    if let Ok(mut s) = SHIPPER.lock() {
        *s = Some(Shipper::new(remote, hostname, "dwcp-dataplane"));
    }
}

/// Logs one line: errors and warnings on stderr, the rest on stdout; shipped too when set.
pub fn line(severity: Severity, text: &str) {
    if severity == Severity::Info {
        println!("{text}");
    } else {
        eprintln!("{text}");
    }
    if let Ok(mut s) = SHIPPER.lock()
        && let Some(s) = s.as_mut()
    {
        s.ship(severity, text);
    }
}

/// `say!(info, …)`, `say!(warn, …)`, `say!(error, …)`: formats and logs one line.
#[macro_export]
macro_rules! say {
    (info, $($arg:tt)*) => {
        $crate::control::log::line(dwcp_provisioning::syslog::Severity::Info, &format!($($arg)*))
    };
    (warn, $($arg:tt)*) => {
        $crate::control::log::line(dwcp_provisioning::syslog::Severity::Warning, &format!($($arg)*))
    };
    (error, $($arg:tt)*) => {
        $crate::control::log::line(dwcp_provisioning::syslog::Severity::Error, &format!($($arg)*))
    };
}
