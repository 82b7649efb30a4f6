//! An accelerator that does the CPU engine's work, slowly or failing on purpose: for the
//! dispatcher's and the gathering thread's tests, and for `bench offload`'s rows of the
//! gathering thread on a machine without a GPU.

use std::time::{Duration, Instant};

use crate::cpu::CpuEngine;
use crate::dispatch::accelerator::{Accelerator, Failure, RecoverError, Stop};
use crate::{CompressJob, DecompressJob, Engine, OpenJob, SealJob};

/// How the test accelerator misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Works, taking `delay` extra per batch.
    None,
    /// Completes this many jobs of each batch, then reports an error.
    ErrorAfter(usize),
    /// Completes this many jobs, then runs past the deadline.
    HangAfter(usize),
    /// Completes this many jobs, then declines the rest (as a packet too large for the
    /// staging buffers does), staying in service.
    DeclineAfter(usize),
    /// As `DeclineAfter`, with one bit of the middle completed job's result wrong.
    WrongThenDeclineAfter(usize),
    /// Completes the batch and reports success, but one bit of the middle job's result is
    /// wrong (a GPU giving a wrong answer without an error).
    Corrupt,
    /// As `Corrupt`, in every job's result.
    CorruptAll,
    /// Reports success but refuses every job (an open's tag failed, a block did not
    /// decompress, a seal's buffer too short, nothing compressed), leaving their buffers
    /// as they were.
    RefuseAll,
}

/// The CPU engine behind the [`Accelerator`] face, with a fault and a per-batch delay.
#[derive(Debug)]
pub struct TestAccelerator {
    /// The fault in effect.
    pub fault: Fault,
    /// Extra time per batch.
    pub delay: Duration,
    /// Batches it was handed.
    pub calls: u64,
    /// The fault applies to this many calls, then it works.
    pub fail_calls: u64,
    /// ... after this many calls that work.
    pub clean_calls: u64,
    /// `recover` calls.
    pub recovers: u64,
}

impl TestAccelerator {
    /// A test accelerator with `fault`, `delay` per batch.
    pub fn new(fault: Fault, delay: Duration) -> Self {
        Self {
            fault,
            delay,
            calls: 0,
            fail_calls: u64::MAX,
            clean_calls: 0,
            recovers: 0,
        }
    }

    fn go<J>(
        &mut self,
        jobs: &mut [J],
        deadline: Instant,
        f: fn(&mut CpuEngine, &mut [J]),
        corrupt: fn(&mut J),
        refuse: fn(&mut J),
    ) -> Result<(), Failure> {
        self.calls += 1;
        std::thread::sleep(self.delay);
        let faulty = self.calls - self.clean_calls.min(self.calls);
        let fault = if (1..=self.fail_calls).contains(&faulty) {
            self.fault
        } else {
            Fault::None
        };
        match fault {
            Fault::None => {
                f(&mut CpuEngine, jobs);
                Ok(())
            }
            Fault::Corrupt => {
                f(&mut CpuEngine, jobs);
                let mid = jobs.len() / 2;
                if let Some(j) = jobs.get_mut(mid) {
                    corrupt(j);
                }
                Ok(())
            }
            Fault::CorruptAll => {
                f(&mut CpuEngine, jobs);
                jobs.iter_mut().for_each(corrupt);
                Ok(())
            }
            Fault::RefuseAll => {
                jobs.iter_mut().for_each(refuse);
                Ok(())
            }
            Fault::ErrorAfter(k) => {
                let k = k.min(jobs.len());
                f(&mut CpuEngine, &mut jobs[..k]);
                Err(Failure {
                    done: k,
                    reason: "injected error".into(),
                    kind: Stop::Error,
                })
            }
            Fault::DeclineAfter(k) | Fault::WrongThenDeclineAfter(k) => {
                let k = k.min(jobs.len());
                f(&mut CpuEngine, &mut jobs[..k]);
                if matches!(fault, Fault::WrongThenDeclineAfter(_))
                    && let Some(j) = jobs[..k].get_mut(k / 2)
                {
                    corrupt(j);
                }
                Err(Failure {
                    done: k,
                    reason: "injected decline".into(),
                    kind: Stop::Declined,
                })
            }
            Fault::HangAfter(k) => {
                let k = k.min(jobs.len());
                f(&mut CpuEngine, &mut jobs[..k]);
                while Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(Failure {
                    done: k,
                    reason: "injected hang".into(),
                    kind: Stop::Timeout,
                })
            }
        }
    }
}

impl Accelerator for TestAccelerator {
    fn name(&self) -> &'static str {
        "test"
    }
    fn try_seal(&mut self, jobs: &mut [SealJob<'_>], d: Instant) -> Result<(), Failure> {
        // Ciphertext, or the tag of an empty packet.
        self.go(
            jobs,
            d,
            |c, j| c.seal(j),
            |j| j.buf[j.len / 2] ^= 1,
            |j| j.ok = false,
        )
    }
    fn try_open(&mut self, jobs: &mut [OpenJob<'_>], d: Instant) -> Result<(), Failure> {
        self.go(
            jobs,
            d,
            |c, j| c.open(j),
            |j| match j.len.checked_sub(crate::TAG_LEN) {
                Some(n) if j.ok && n > 0 => j.buf[n / 2] ^= 1,
                _ => j.ok = !j.ok,
            },
            |j| j.ok = false,
        )
    }
    fn try_compress(&mut self, jobs: &mut [CompressJob<'_>], d: Instant) -> Result<(), Failure> {
        self.go(
            jobs,
            d,
            |c, j| c.compress(j),
            |j| {
                if let Some(n) = j.out_len {
                    j.dst[n / 2] ^= 1;
                }
            },
            |j| j.out_len = None,
        )
    }
    fn try_decompress(
        &mut self,
        jobs: &mut [DecompressJob<'_>],
        d: Instant,
    ) -> Result<(), Failure> {
        self.go(
            jobs,
            d,
            |c, j| c.decompress(j),
            |j| match j.out_len {
                Some(n) if n > 0 => j.dst[n / 2] ^= 1,
                _ => {}
            },
            |j| j.out_len = None,
        )
    }
    fn recover(&mut self) -> Result<(), RecoverError> {
        self.recovers += 1;
        Ok(())
    }
    fn describe(&self) -> String {
        "test accelerator".into()
    }
}
