//! The data plane's supervision policy: restart after a crash with exponential back-off, and
//! give up into safe mode after too many crashes within a window. Pure: time comes in.

use std::collections::VecDeque;
use std::time::Duration;

/// Tunables.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Delay before the first restart.
    pub initial_backoff: Duration,
    /// Longest delay between restarts.
    pub max_backoff: Duration,
    /// Crashes are counted within this window.
    pub window: Duration,
    /// This many crashes within the window end in safe mode.
    pub max_crashes: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            window: Duration::from_secs(60),
            max_crashes: 3,
        }
    }
}

/// What to do after the data plane exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after this delay.
    RestartAfter(Duration),
    /// Too many crashes: stay down, safe mode.
    GiveUp {
        /// Crashes within the window.
        crashes: usize,
    },
}

/// Crash history. Times are durations since boot.
#[derive(Clone, Debug, Default)]
pub struct Supervisor {
    policy: Policy,
    crashes: VecDeque<Duration>,
    /// Restarts so far (for `DWCP READY restarts=`).
    pub restarts: u32,
}

impl Supervisor {
    /// A supervisor with a policy.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            crashes: VecDeque::new(),
            restarts: 0,
        }
    }

    /// Records an unexpected exit at `now` and decides.
    pub fn crashed(&mut self, now: Duration) -> Decision {
        self.crashes.push_back(now);
        while let Some(&first) = self.crashes.front() {
            if now.saturating_sub(first) > self.policy.window {
                self.crashes.pop_front();
            } else {
                break;
            }
        }
        let n = self.crashes.len();
        if n >= self.policy.max_crashes {
            return Decision::GiveUp { crashes: n };
        }
        let shift = u32::try_from(n.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(16);
        let delay = self
            .policy
            .initial_backoff
            .saturating_mul(1 << shift)
            .min(self.policy.max_backoff);
        self.restarts += 1;
        Decision::RestartAfter(delay)
    }

    /// Forgets the crash history (an operator's `restart` after safe mode).
    pub fn reset(&mut self) {
        self.crashes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn backs_off_then_gives_up() {
        let mut s = Supervisor::new(Policy::default());
        assert_eq!(
            s.crashed(S(10)),
            Decision::RestartAfter(Duration::from_millis(500))
        );
        assert_eq!(
            s.crashed(S(12)),
            Decision::RestartAfter(Duration::from_secs(1))
        );
        assert_eq!(s.crashed(S(14)), Decision::GiveUp { crashes: 3 });
        assert_eq!(s.restarts, 2);
    }

    #[test]
    fn old_crashes_leave_the_window() {
        let mut s = Supervisor::new(Policy::default());
        s.crashed(S(0));
        s.crashed(S(50));
        // The first crash is more than 60 s old by now: two in the window, not three.
        assert_eq!(
            s.crashed(S(95)),
            Decision::RestartAfter(Duration::from_secs(1))
        );
    }

    #[test]
    fn backoff_is_capped() {
        let policy = Policy {
            max_crashes: 100,
            ..Policy::default()
        };
        let mut s = Supervisor::new(policy);
        let mut last = Decision::RestartAfter(Duration::ZERO);
        for i in 0..20 {
            last = s.crashed(S(i));
        }
        assert_eq!(last, Decision::RestartAfter(S(30)));
    }
}
