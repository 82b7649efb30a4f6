//! The data plane's life under init, as a state machine that does no I/O: events come in (it
//! started, it said `READY=1`, `STATUS=` or `ERROR=`, it ended, an operator asked for a
//! restart, time passed) and what init must do comes out as [`Effect`]s, which the boot loop
//! (`boot.rs`) carries out. Every decision — restart with back-off, safe mode after repeated
//! crashes or when the node cannot run the config, a restart without the GPU after it hung,
//! an operator's restart — is made here, and tested without a VM. Time comes in.

use std::time::Duration;

use dwcp_provisioning::exit::{DataplaneExit, NextStart};
use nix::sys::signal::Signal;

use crate::supervise::{Decision, Policy, Supervisor};

/// How long init waits for events when nothing is scheduled.
pub const IDLE_WAIT: Duration = Duration::from_secs(5);

/// Why the data plane is down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SafeReason {
    /// No config was found.
    Unprovisioned,
    /// The config has these problems.
    InvalidConfig(Vec<String>),
    /// The node does not match its config.
    ApplyFailed(Vec<String>),
    /// The data plane crashed this many times within the supervision window.
    Crashes(usize),
    /// The data plane refused to start on this node (exit code 6) and said why.
    CannotStart(String),
}

impl SafeReason {
    /// A few words for `status`.
    pub fn word(&self) -> &'static str {
        match self {
            SafeReason::Unprovisioned => "unprovisioned",
            SafeReason::InvalidConfig(_) => "invalid config, type `config`",
            SafeReason::ApplyFailed(_) => "node does not match config",
            SafeReason::Crashes(_) => "data plane crashed repeatedly",
            SafeReason::CannotStart(_) => "data plane cannot start",
        }
    }

    /// The console lines that announce it.
    pub fn lines(&self) -> Vec<String> {
        match self {
            SafeReason::Unprovisioned => vec![
                "SAFE MODE: no config found (unprovisioned); data plane down, management only"
                    .into(),
            ],
            SafeReason::InvalidConfig(errs) => std::iter::once(format!(
                "SAFE MODE: config invalid ({} problem(s)); data plane down:",
                errs.len()
            ))
            .chain(errs.iter().map(|e| format!("  {e}")))
            .collect(),
            SafeReason::ApplyFailed(errs) => std::iter::once(
                "SAFE MODE: the node does not match its config; data plane down:".to_owned(),
            )
            .chain(errs.iter().map(|e| format!("  {e}")))
            .collect(),
            SafeReason::Crashes(n) => vec![format!(
                "SAFE MODE: data plane crashed {n} times within {}s; staying down (type `restart` to try again)",
                Policy::default().window.as_secs()
            )],
            SafeReason::CannotStart(why) => vec![format!(
                "SAFE MODE: the data plane cannot start on this node: {why}; staying down (fix it, then type `restart`)"
            )],
        }
    }
}

/// How the data plane process ended, as the reaper saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlaneEnd {
    /// It exited with this code: one of [`DataplaneExit`]'s, or another (a panic's 101).
    Exited(i32),
    /// A signal killed it.
    Killed(Signal),
    /// It could not be started at all.
    NotStarted,
}

impl PlaneEnd {
    /// What init does next when the data plane ended this way unasked.
    pub fn next_start(&self) -> NextStart {
        match self {
            Self::Exited(code) => DataplaneExit::from_code(*code)
                .map_or(NextStart::Restart, DataplaneExit::next_start),
            Self::Killed(_) | Self::NotStarted => NextStart::Restart,
        }
    }
}

impl std::fmt::Display for PlaneEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(code) => match DataplaneExit::from_code(*code) {
                Some(known) => write!(f, "{known}"),
                None => write!(f, "exit code {code}"),
            },
            Self::Killed(sig) => write!(f, "killed by {sig}"),
            Self::NotStarted => f.write_str("did not start"),
        }
    }
}

/// Where the data plane is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plane {
    /// Not running: not started yet, in safe mode, or shutting down.
    Down,
    /// Running as `pid`; `ready` once it said so.
    Running {
        /// Its process id.
        pid: u32,
        /// It said `READY=1`.
        ready: bool,
    },
    /// Crashed; starts again at this uptime.
    Waiting {
        /// When.
        until: Duration,
    },
}

/// What init must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Say this line on the console.
    Say(String),
    /// Start the data plane, leaving the GPU out (and saying why) when it hung before; then
    /// report [`Lifecycle::started`], or [`Lifecycle::ended`] with [`PlaneEnd::NotStarted`].
    Start {
        /// Why the GPU is left out, if it is.
        gpu_disabled: Option<String>,
    },
    /// Send the running data plane this signal.
    Signal(Signal),
    /// The data plane is ready: print `DWCP READY` with these facts.
    Announce {
        /// Its process id.
        pid: u32,
        /// Restarts since boot.
        restarts: u32,
    },
    /// The first READY since boot: keep the config as the last-known-good copy and mark the
    /// booted slot good.
    FirstReady,
}

/// The data plane's state under init, and what init remembers of it.
#[derive(Debug)]
pub struct Lifecycle {
    plane: Plane,
    safe: Option<SafeReason>,
    supervisor: Supervisor,
    /// Set while an operator's `restart` is in progress: the exit is not a crash.
    expected_exit: bool,
    /// Its latest `STATUS=` line (offload engine and GPU state).
    status: Option<String>,
    /// Its `ERROR=` line, sent before it exits with code 6 or 7.
    error: Option<String>,
    /// The GPU hung (exit code 7, saying why): every later start leaves it out, until the
    /// next boot.
    gpu_disabled: Option<String>,
    /// A READY has been seen since boot.
    was_ready: bool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new(Policy::default())
    }
}

impl Lifecycle {
    /// Nothing started yet, supervised by `policy`.
    pub fn new(policy: Policy) -> Self {
        Self {
            plane: Plane::Down,
            safe: None,
            supervisor: Supervisor::new(policy),
            expected_exit: false,
            status: None,
            error: None,
            gpu_disabled: None,
            was_ready: false,
        }
    }

    /// Where the data plane is.
    pub fn plane(&self) -> Plane {
        self.plane
    }

    /// Why it is down, in safe mode.
    pub fn safe(&self) -> Option<&SafeReason> {
        self.safe.as_ref()
    }

    /// The running data plane's process id.
    pub fn pid(&self) -> Option<u32> {
        match self.plane {
            Plane::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// Restarts since boot.
    pub fn restarts(&self) -> u32 {
        self.supervisor.restarts
    }

    /// How long init may wait for events at `now` before [`Lifecycle::tick`] is due.
    pub fn wait(&self, now: Duration) -> Duration {
        match self.plane {
            Plane::Waiting { until } => until.saturating_sub(now),
            _ => IDLE_WAIT,
        }
    }

    /// The data plane's state for `status` (`running, pid 90`).
    pub fn state_line(&self) -> String {
        match (&self.safe, self.plane) {
            (Some(r), _) => format!("SAFE MODE ({})", r.word()),
            (None, Plane::Running { pid, ready: true }) => format!("running, pid {pid}"),
            (None, Plane::Running { pid, ready: false }) => format!("starting, pid {pid}"),
            (None, Plane::Waiting { .. }) => "restarting".to_owned(),
            (None, Plane::Down) => "down".to_owned(),
        }
    }

    /// Why the node is in safe mode, if it is.
    pub fn safe_reason(&self) -> Option<&SafeReason> {
        self.safe.as_ref()
    }

    /// The running data plane's latest `STATUS=` line.
    pub fn status_line(&self) -> Option<&str> {
        matches!(self.plane, Plane::Running { .. })
            .then_some(self.status.as_deref())
            .flatten()
    }

    /// Starts the data plane (the config is applied).
    pub fn start(&mut self) -> Vec<Effect> {
        vec![Effect::Start {
            gpu_disabled: self.gpu_disabled.clone(),
        }]
    }

    /// It started as `pid`.
    pub fn started(&mut self, pid: u32) {
        self.plane = Plane::Running { pid, ready: false };
    }

    /// Stays down, and says why.
    pub fn enter_safe_mode(&mut self, reason: SafeReason) -> Vec<Effect> {
        let effects = reason.lines().into_iter().map(Effect::Say).collect();
        self.safe = Some(reason);
        self.plane = Plane::Down;
        effects
    }

    /// A datagram on the notify socket: `STATUS=`, `ERROR=` and `READY=1` lines.
    pub fn notified(&mut self, msg: &str) -> Vec<Effect> {
        if let Some(line) = msg.lines().rev().find_map(|l| l.strip_prefix("STATUS=")) {
            self.status = Some(line.trim().to_owned());
        }
        if let Some(line) = msg.lines().rev().find_map(|l| l.strip_prefix("ERROR=")) {
            self.error = Some(line.trim().to_owned());
        }
        let mut effects = Vec::new();
        if msg.lines().any(|l| l.trim() == "READY=1")
            && let Plane::Running { pid, ready } = &mut self.plane
            && !*ready
        {
            *ready = true;
            effects.push(Effect::Announce {
                pid: *pid,
                restarts: self.supervisor.restarts,
            });
            if !std::mem::replace(&mut self.was_ready, true) {
                effects.push(Effect::FirstReady);
            }
        }
        effects
    }

    /// The data plane ended at `now` (init read its notify socket first, so an `ERROR=` it
    /// sent just before is known).
    pub fn ended(&mut self, end: &PlaneEnd, now: Duration) -> Vec<Effect> {
        let mut effects = vec![Effect::Say(format!("dataplane: exited ({end})"))];
        self.plane = Plane::Down;
        if std::mem::take(&mut self.expected_exit) {
            effects.extend(self.start());
            return effects;
        }
        match end.next_start() {
            // The node cannot run this config (no hugepages, a NIC not bound to vfio-pci, a
            // PCI address that is not there); restarting will not help.
            NextStart::SafeMode => {
                let why = self.error_or("no reason given (see the lines above)");
                effects.extend(self.enter_safe_mode(SafeReason::CannotStart(why)));
                return effects;
            }
            // A GPU batch never came back from the driver, and the workers waiting on it
            // could not give up. Restart without the GPU (counted as a crash, so a data plane
            // that keeps dying still ends in safe mode).
            NextStart::WithoutGpu => {
                let why = self.error_or("the GPU hung (no details given)");
                effects.push(Effect::Say(format!(
                    "dataplane: {why}; it runs on the CPU engine from now until the next boot"
                )));
                self.gpu_disabled = Some(why);
            }
            NextStart::Restart => {}
        }
        match self.supervisor.crashed(now) {
            Decision::RestartAfter(d) => {
                effects.push(Effect::Say(format!(
                    "dataplane: restarting in {} ms (restart {})",
                    d.as_millis(),
                    self.supervisor.restarts
                )));
                self.plane = Plane::Waiting { until: now + d };
            }
            Decision::GiveUp { crashes } => {
                effects.extend(self.enter_safe_mode(SafeReason::Crashes(crashes)));
            }
        }
        effects
    }

    /// Time passed: a crashed data plane whose back-off is over starts again.
    pub fn tick(&mut self, now: Duration) -> Vec<Effect> {
        match self.plane {
            Plane::Waiting { until } if now >= until => {
                self.plane = Plane::Down;
                self.start()
            }
            _ => Vec::new(),
        }
    }

    /// The operator typed `restart`: leaves safe mode after crashes or a refused start,
    /// stops a running data plane so that it starts again (not counted as a crash), or
    /// starts a stopped one.
    pub fn restart(&mut self) -> Vec<Effect> {
        match (&self.safe, self.plane) {
            (Some(SafeReason::Crashes(_) | SafeReason::CannotStart(_)), _) => {
                self.safe = None;
                self.supervisor.reset();
                let mut effects = vec![Effect::Say("restart: leaving safe mode".into())];
                effects.extend(self.start());
                effects
            }
            (Some(r), _) => vec![Effect::Say(format!(
                "restart: not possible in safe mode ({})",
                r.word()
            ))],
            (None, Plane::Running { .. }) => {
                self.expected_exit = true;
                vec![Effect::Signal(Signal::SIGTERM)]
            }
            (None, _) => self.start(),
        }
    }

    /// The operator asked to kill the data plane (a test of supervision).
    pub fn kill(&self) -> Vec<Effect> {
        match self.pid() {
            Some(pid) => vec![
                Effect::Say(format!("debug: SIGKILL to data plane pid {pid}")),
                Effect::Signal(Signal::SIGKILL),
            ],
            None => vec![Effect::Say("debug: no data plane running".into())],
        }
    }

    /// The data plane is gone (reaped, or stopped for a shutdown): it is down, and what it
    /// still says is not taken as readiness. [`Lifecycle::ended`] decides what comes next.
    pub fn stopped(&mut self) {
        self.plane = Plane::Down;
    }

    /// The `ERROR=` line the data plane sent before it exited, or `otherwise`.
    fn error_or(&mut self, otherwise: &str) -> String {
        self.error.take().unwrap_or_else(|| otherwise.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn says(effects: &[Effect]) -> Vec<&str> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Say(s) => Some(s.as_str()),
                _ => None,
            })
            .collect()
    }

    fn running() -> Lifecycle {
        let mut l = Lifecycle::default();
        assert_eq!(l.start(), [Effect::Start { gpu_disabled: None }]);
        l.started(90);
        l
    }

    #[test]
    fn exit_codes_6_and_7_are_not_crashes_like_the_others() {
        assert_eq!(PlaneEnd::Exited(6).next_start(), NextStart::SafeMode);
        assert_eq!(PlaneEnd::Exited(7).next_start(), NextStart::WithoutGpu);
        for other in [
            PlaneEnd::Exited(1),
            PlaneEnd::Exited(5),
            PlaneEnd::Exited(70),
            PlaneEnd::Killed(Signal::SIGSEGV),
            PlaneEnd::NotStarted,
        ] {
            assert_eq!(other.next_start(), NextStart::Restart, "{other:?}");
        }
        assert_eq!(
            PlaneEnd::Exited(7).to_string(),
            "exit code 7: the GPU hung in a driver call"
        );
        assert_eq!(PlaneEnd::Exited(70).to_string(), "exit code 70");
        assert_eq!(
            PlaneEnd::Killed(Signal::SIGKILL).to_string(),
            "killed by SIGKILL"
        );
    }

    #[test]
    fn ready_is_announced_once_and_the_slot_marked_good_on_the_first_only() {
        let mut l = running();
        assert_eq!(l.state_line(), "starting, pid 90");
        let e = l.notified("STATUS=offload cpu\nREADY=1\n");
        assert_eq!(
            e,
            [
                Effect::Announce {
                    pid: 90,
                    restarts: 0
                },
                Effect::FirstReady
            ]
        );
        assert_eq!(l.state_line(), "running, pid 90");
        assert_eq!(l.status_line(), Some("offload cpu"));
        assert!(l.notified("READY=1").is_empty(), "announced twice");
        // After a crash and restart: announced again, the slot not marked again.
        let e = l.ended(&PlaneEnd::Killed(Signal::SIGKILL), 10 * S);
        assert_eq!(
            says(&e),
            [
                "dataplane: exited (killed by SIGKILL)",
                "dataplane: restarting in 500 ms (restart 1)"
            ]
        );
        assert_eq!(l.status_line(), None, "no status line while not running");
        assert!(l.tick(10 * S).is_empty(), "too early");
        assert_eq!(l.wait(10 * S), Duration::from_millis(500));
        assert_eq!(l.state_line(), "restarting");
        assert_eq!(l.tick(11 * S), [Effect::Start { gpu_disabled: None }]);
        l.started(91);
        assert_eq!(
            l.notified("READY=1"),
            [Effect::Announce {
                pid: 91,
                restarts: 1
            }]
        );
    }

    #[test]
    fn repeated_crashes_end_in_safe_mode_until_an_operator_restarts() {
        let mut l = running();
        let mut now = 10 * S;
        let mut last = Vec::new();
        for _ in 0..3 {
            last = l.ended(&PlaneEnd::Exited(101), now);
            now += 2 * S;
            if !l.tick(now).is_empty() {
                l.started(92);
            }
        }
        assert_eq!(
            says(&last).last().copied(),
            Some(
                "SAFE MODE: data plane crashed 3 times within 60s; staying down (type `restart` to try again)"
            )
        );
        assert_eq!(l.plane(), Plane::Down);
        assert!(
            l.tick(now + 100 * S).is_empty(),
            "safe mode does not restart"
        );
        assert_eq!(l.state_line(), "SAFE MODE (data plane crashed repeatedly)");
        let e = l.restart();
        assert_eq!(says(&e), ["restart: leaving safe mode"]);
        assert!(e.contains(&Effect::Start { gpu_disabled: None }));
        assert_eq!(l.safe(), None);
    }

    #[test]
    fn a_node_that_cannot_run_the_config_stays_down_with_the_reason() {
        let mut l = running();
        assert!(l.notified("ERROR=no 1 GiB hugepages").is_empty());
        let e = l.ended(&PlaneEnd::Exited(6), 5 * S);
        assert_eq!(
            says(&e),
            [
                "dataplane: exited (exit code 6: this node cannot run the config)",
                "SAFE MODE: the data plane cannot start on this node: no 1 GiB hugepages; staying down (fix it, then type `restart`)"
            ]
        );
        assert_eq!(
            l.safe(),
            Some(&SafeReason::CannotStart("no 1 GiB hugepages".into()))
        );
        // Without an ERROR= line it says so.
        let mut l = running();
        let e = l.ended(&PlaneEnd::Exited(6), 5 * S);
        assert!(says(&e)[1].contains("no reason given"), "{e:?}");
    }

    #[test]
    fn a_hung_gpu_restarts_the_data_plane_without_it_from_then_on() {
        let mut l = running();
        l.notified("ERROR=the GPU hung: one batch has been in the driver for 5.2 s");
        let e = l.ended(&PlaneEnd::Exited(7), 5 * S);
        assert_eq!(
            says(&e)[1],
            "dataplane: the GPU hung: one batch has been in the driver for 5.2 s; it runs on the CPU engine from now until the next boot"
        );
        let why = Some("the GPU hung: one batch has been in the driver for 5.2 s".to_owned());
        assert_eq!(
            l.tick(6 * S),
            [Effect::Start {
                gpu_disabled: why.clone()
            }]
        );
        // ... and every later start too.
        l.started(93);
        l.ended(&PlaneEnd::Exited(101), 20 * S);
        assert_eq!(l.tick(30 * S), [Effect::Start { gpu_disabled: why }]);
    }

    #[test]
    fn an_operator_restart_is_not_a_crash() {
        let mut l = running();
        l.notified("READY=1");
        assert_eq!(l.restart(), [Effect::Signal(Signal::SIGTERM)]);
        let e = l.ended(&PlaneEnd::Exited(0), 5 * S);
        assert_eq!(
            e,
            [
                Effect::Say("dataplane: exited (exit code 0: stopped on request)".into()),
                Effect::Start { gpu_disabled: None }
            ]
        );
        assert_eq!(l.restarts(), 0);
        // A restart in safe mode for a bad config is refused; one while down starts it.
        let mut l = Lifecycle::default();
        l.enter_safe_mode(SafeReason::InvalidConfig(vec!["x".into()]));
        assert_eq!(
            says(&l.restart()),
            ["restart: not possible in safe mode (invalid config, type `config`)"]
        );
        let mut l = Lifecycle::default();
        assert_eq!(l.restart(), [Effect::Start { gpu_disabled: None }]);
    }

    #[test]
    fn kill_names_the_pid_or_says_there_is_none() {
        let l = running();
        assert_eq!(
            l.kill(),
            [
                Effect::Say("debug: SIGKILL to data plane pid 90".into()),
                Effect::Signal(Signal::SIGKILL)
            ]
        );
        assert_eq!(
            says(&Lifecycle::default().kill()),
            ["debug: no data plane running"]
        );
    }

    #[test]
    fn safe_mode_lines_list_every_problem() {
        let mut l = Lifecycle::default();
        let e = l.enter_safe_mode(SafeReason::InvalidConfig(vec![
            "a: wrong".into(),
            "b: missing".into(),
        ]));
        assert_eq!(
            says(&e),
            [
                "SAFE MODE: config invalid (2 problem(s)); data plane down:",
                "  a: wrong",
                "  b: missing"
            ]
        );
        assert_eq!(l.state_line(), "SAFE MODE (invalid config, type `config`)");
    }
}
