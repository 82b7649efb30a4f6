//! The contract between the data plane and init: the data plane's exit statuses, what each
//! means for init's next move, and the environment init passes to a restarted data plane.
//!
//! Both sides link this module, so a status is a name on both, never a number in one and a
//! parsed string in the other.

use std::fmt;

/// Why `dwcp-dataplane` exited: its process exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DataplaneExit {
    /// Stopped on request (SIGTERM or SIGINT), after draining.
    Stopped = 0,
    /// Bad command-line arguments.
    Usage = 2,
    /// The config file is invalid or unreadable.
    InvalidConfig = 3,
    /// It could not tell init it was ready.
    ReadinessFailed = 4,
    /// It could not start or keep running (the error names the port or address).
    Failed = 5,
    /// This node cannot run the config (no hugepages, a NIC not bound to vfio-pci, a PCI
    /// address that does not exist). The reason goes to init as `ERROR=` first.
    CannotStart = 6,
    /// A GPU batch never came back from the driver. The reason goes to init as `ERROR=`
    /// first; init restarts the data plane with [`GPU_DISABLED_ENV`] set.
    GpuHung = 7,
}

/// Tells a restarted data plane to leave the GPU out, and why (set by init after
/// [`DataplaneExit::GpuHung`]).
pub const GPU_DISABLED_ENV: &str = "DWCP_GPU_DISABLED";

/// What init does after a data plane exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextStart {
    /// Restarting cannot help on this node: stay down in safe mode.
    SafeMode,
    /// Restart without the GPU (counted as a crash, so one that keeps dying still ends in
    /// safe mode).
    WithoutGpu,
    /// A crash: restart with back-off.
    Restart,
}

impl DataplaneExit {
    /// Every status, in code order.
    pub const ALL: [Self; 7] = [
        Self::Stopped,
        Self::Usage,
        Self::InvalidConfig,
        Self::ReadinessFailed,
        Self::Failed,
        Self::CannotStart,
        Self::GpuHung,
    ];

    /// The process exit code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The status an exit code stands for, if it is one of ours.
    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|e| i32::from(e.code()) == code)
    }

    /// The reason, in words, for logs and the console.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Stopped => "stopped on request",
            Self::Usage => "bad arguments",
            Self::InvalidConfig => "invalid config",
            Self::ReadinessFailed => "could not tell init it was ready",
            Self::Failed => "could not start or keep running",
            Self::CannotStart => "this node cannot run the config",
            Self::GpuHung => "the GPU hung in a driver call",
        }
    }

    /// What init does next when the data plane exited this way unasked.
    pub const fn next_start(self) -> NextStart {
        match self {
            Self::CannotStart => NextStart::SafeMode,
            Self::GpuHung => NextStart::WithoutGpu,
            _ => NextStart::Restart,
        }
    }
}

impl fmt::Display for DataplaneExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit code {}: {}", self.code(), self.reason())
    }
}

impl From<DataplaneExit> for std::process::ExitCode {
    fn from(e: DataplaneExit) -> Self {
        Self::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        for e in DataplaneExit::ALL {
            assert_eq!(DataplaneExit::from_code(i32::from(e.code())), Some(e));
        }
        let mut codes: Vec<u8> = DataplaneExit::ALL.iter().map(|e| e.code()).collect();
        codes.dedup();
        assert_eq!(codes.len(), DataplaneExit::ALL.len());
        for other in [1, 8, 70, 101, 255, -1] {
            assert_eq!(DataplaneExit::from_code(other), None, "{other}");
        }
    }

    #[test]
    fn only_cannot_start_and_gpu_hung_are_not_plain_crashes() {
        for e in DataplaneExit::ALL {
            let want = match e {
                DataplaneExit::CannotStart => NextStart::SafeMode,
                DataplaneExit::GpuHung => NextStart::WithoutGpu,
                _ => NextStart::Restart,
            };
            assert_eq!(e.next_start(), want, "{e}");
        }
        assert_eq!(
            DataplaneExit::CannotStart.to_string(),
            "exit code 6: this node cannot run the config"
        );
    }
}
