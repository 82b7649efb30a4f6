//! What the dispatcher asks of an accelerator (the GPU): run a prefix of each batch, leave
//! the rest untouched, and say how far it got and why it stopped.

use std::time::{Duration, Instant};

use crate::{CompressJob, DecompressJob, OpenJob, SealJob};

/// An accelerator stopped part-way: `jobs[..done]` are complete, the rest untouched.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{} after {done} jobs: {reason}", kind.describe())]
pub struct Failure {
    /// Completed leading jobs.
    pub done: usize,
    /// What happened.
    pub reason: String,
    /// Why it stopped.
    pub kind: Stop,
}

/// Why an accelerator stopped part-way through a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// An error: the accelerator is taken out of service until a probe finds it working.
    Error,
    /// The batch missed its deadline: out of service the same way.
    Timeout,
    /// The next job is one it cannot take (larger than its staging buffers). It is in order
    /// and stays in service; the CPU engine runs the rest of the batch.
    Declined,
}

impl Stop {
    /// What the accelerator did, in words (`took too long`).
    pub const fn describe(self) -> &'static str {
        match self {
            Stop::Error => "failed",
            Stop::Timeout => "took too long",
            Stop::Declined => "declined a job",
        }
    }
}

/// Why an accelerator failed a check of its answers against the CPU engine (the start-up
/// check, or its repeat after a recovery).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// It stopped part-way through one of the check's batches.
    #[error("{op} {failure}")]
    Stopped {
        /// The operation (`seal`).
        op: &'static str,
        /// How far it got and why it stopped.
        #[source]
        failure: Failure,
    },
    /// An answer differed from the CPU engine's or the known answer: which operation,
    /// packet and byte.
    #[error("{0}")]
    Wrong(String),
}

/// Why an accelerator could not be brought back into service.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The driver did not recover.
    #[error("{0}")]
    Driver(#[from] crate::cuda::CudaError),
    /// It runs again, but its answers are still wrong (a fault can leave a GPU that runs but
    /// computes wrong).
    #[error("recovered, but failed the start-up check again: {0}")]
    Recheck(#[source] CheckError),
    /// The gathering thread's accelerator did not recover (its reason, as it reported it).
    #[error("{}", .0.reason)]
    Gathered(#[source] Failure),
}

/// An engine that can fail: the GPU. It must complete a prefix of each batch and leave the
/// rest untouched, and say how far it got. A job it refuses (a seal or open reported not ok,
/// a decompression with no length) keeps its buffer as handed over, so the dispatcher can
/// recheck the refusal on the CPU ([`crate::dispatch::verify::Checked::recheck_refusals`]).
pub trait Accelerator: Send {
    /// Short name (`cuda`).
    fn name(&self) -> &'static str;
    /// Seals, or says how far it got.
    fn try_seal(&mut self, jobs: &mut [SealJob<'_>], deadline: Instant) -> Result<(), Failure>;
    /// Opens, or says how far it got.
    fn try_open(&mut self, jobs: &mut [OpenJob<'_>], deadline: Instant) -> Result<(), Failure>;
    /// Compresses, or says how far it got.
    fn try_compress(
        &mut self,
        jobs: &mut [CompressJob<'_>],
        deadline: Instant,
    ) -> Result<(), Failure>;
    /// Decompresses, or says how far it got.
    fn try_decompress(
        &mut self,
        jobs: &mut [DecompressJob<'_>],
        deadline: Instant,
    ) -> Result<(), Failure>;
    /// Gets ready again after a failure (waits out abandoned work); an error keeps it
    /// unhealthy.
    fn recover(&mut self) -> Result<(), RecoverError>;
    /// One line for operators: device, memory, and whatever else the driver tells.
    fn describe(&self) -> String;

    /// Whether the accelerator runs a batch off the calling thread, so that the caller's CPU
    /// can work on something else meanwhile ([`Accelerator::try_beside`]); the dispatcher
    /// then splits batches between the two. A CUDA engine called directly keeps its caller
    /// waiting on its streams; the gathering thread's client
    /// ([`crate::gather::GatherClient`]) overlaps.
    fn overlaps(&self) -> bool {
        false
    }

    /// Runs `batch` while `meanwhile` runs on the calling thread, and returns once both are
    /// done, with how long the accelerator took from the call until its results were ready.
    /// `meanwhile` runs exactly once, whatever happens to the batch. The default runs one
    /// after the other.
    fn try_beside(
        &mut self,
        batch: Batch<'_, '_>,
        deadline: Instant,
        meanwhile: &mut dyn FnMut(),
    ) -> Result<Duration, Failure> {
        let t = Instant::now();
        let r = batch.run_on(self, deadline);
        let took = t.elapsed();
        meanwhile();
        r.map(|()| took)
    }
}

/// One operation's jobs, for [`Accelerator::try_beside`].
pub enum Batch<'a, 'b> {
    /// Seals.
    Seal(&'a mut [SealJob<'b>]),
    /// Opens.
    Open(&'a mut [OpenJob<'b>]),
    /// Compressions.
    Compress(&'a mut [CompressJob<'b>]),
    /// Decompressions.
    Decompress(&'a mut [DecompressJob<'b>]),
}

impl Batch<'_, '_> {
    /// Runs the batch on `acc` with the operation's own call, the caller waiting.
    pub fn run_on<A: Accelerator + ?Sized>(
        self,
        acc: &mut A,
        deadline: Instant,
    ) -> Result<(), Failure> {
        match self {
            Batch::Seal(j) => acc.try_seal(j, deadline),
            Batch::Open(j) => acc.try_open(j, deadline),
            Batch::Compress(j) => acc.try_compress(j, deadline),
            Batch::Decompress(j) => acc.try_decompress(j, deadline),
        }
    }
}
