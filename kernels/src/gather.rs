//! Gathering in front of the GPU: one thread owns the accelerator (the CUDA engine) and every
//! worker's dispatcher reaches it through a [`GatherClient`], itself an [`Accelerator`]. The
//! thread gathers the batches workers hand it until `max_batch` packets, until every worker
//! has handed one, or until the oldest has waited `max_delay`, then runs each operation's
//! share as one batch and hands each worker back its own jobs' results — in its order, with
//! how far the GPU got when it failed, so the worker's dispatcher finishes the rest on its own
//! CPU. Workers hand over their jobs in place (no copy): a worker stays in [`GatherClient`]'s
//! call until the thread is done with its jobs — running, meanwhile, the share of its batch it
//! kept for its own CPU ([`Accelerator::try_beside`]), so the GPU adds to the CPUs instead of
//! standing in for them.
//!
//! The jobs cross threads as raw pointers; the wait is what makes that sound (see the
//! `SAFETY` notes). Each worker has one slot, so nothing is allocated per batch.

use std::cell::UnsafeCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use crate::dispatch::accelerator::RecoverError;
use crate::dispatch::{Accelerator, Batch, Failure, Stop};
use crate::{CompressJob, DecompressJob, OpenJob, SealJob};

/// Gathering settings (`offload.max_batch`, `offload.max_delay_us`).
#[derive(Clone, Copy, Debug)]
pub struct GatherSettings {
    /// Gather until this many packets.
    pub max_batch: usize,
    /// ... or until the oldest batch waited this long.
    pub max_delay: Duration,
    /// The thread spins this long for work before it parks.
    pub spin: Duration,
    /// The core the thread runs on (`offload.core`); `None` leaves it where it starts.
    pub core: Option<usize>,
}

/// Where the gathering thread runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// No core was asked for.
    Unpinned,
    /// Pinned to this core.
    Pinned(usize),
    /// This core was asked for but the thread could not be pinned there (it runs unpinned).
    Refused(usize),
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unpinned => f.write_str("unpinned"),
            Self::Pinned(c) => write!(f, "on core {c}"),
            Self::Refused(c) => write!(f, "NOT on core {c} (the kernel refused it; unpinned)"),
        }
    }
}

impl Default for GatherSettings {
    fn default() -> Self {
        Self {
            max_batch: 1024,
            max_delay: Duration::from_micros(50),
            spin: Duration::from_micros(200),
            core: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    Seal,
    Open,
    Compress,
    Decompress,
    Recover,
}

/// A worker's slot: free, handed to the thread, or done.
const FREE: u8 = 0;
const HANDED: u8 = 1;
const DONE: u8 = 2;

struct Request {
    work: Work,
    /// The worker's jobs: `len` jobs of the type `work` names.
    jobs: *mut (),
    len: usize,
    deadline: Instant,
    handed_at: Instant,
    /// When the thread finished with it (set before DONE).
    done_at: Instant,
    result: Result<(), Failure>,
}

#[repr(align(128))]
struct Slot {
    state: AtomicU8,
    req: UnsafeCell<Request>,
}

// SAFETY: `req` is only touched by the slot's worker while `state` is FREE (it writes the
// request, then publishes it with a release store of HANDED) or DONE (it reads the result
// after an acquire load), and only by the gathering thread while HANDED (acquire load; it
// publishes with a release store of DONE). The job pointer inside is only dereferenced by the
// thread while HANDED, when the worker is inside `GatherClient::hand` holding the jobs'
// exclusive borrow (it touches only other jobs meanwhile, and waits for DONE before it
// returns, even by unwinding).
unsafe impl Sync for Slot {}
// SAFETY: as above; the raw job pointer is the only non-Send field and it is only used under
// that protocol.
unsafe impl Send for Slot {}

struct Shared {
    slots: Vec<Slot>,
    stop: AtomicBool,
    /// The thread has finished: nothing handed from now on will be taken.
    exited: AtomicBool,
    parked: AtomicBool,
    thread: std::sync::OnceLock<Thread>,
    name: &'static str,
    describe: String,
    gathers: AtomicU64,
    packets: AtomicU64,
    largest: AtomicU64,
    most_workers: AtomicU64,
    /// What `running` counts from.
    epoch: Instant,
    /// When the gather now running began, nanoseconds after `epoch` plus one; 0 between
    /// gathers.
    running: AtomicU64,
}

/// Nanoseconds from `epoch` to now.
fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl Shared {
    /// How long the gather now running has been running; `None` between gathers.
    fn running_for(&self) -> Option<Duration> {
        match self.running.load(Ordering::Relaxed) {
            0 => None,
            began => Some(Duration::from_nanos(
                nanos_since(self.epoch).saturating_sub(began - 1),
            )),
        }
    }
}

/// What the gathering thread did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatherStats {
    /// Gathers run (each runs one batch per operation present).
    pub gathers: u64,
    /// Packets run.
    pub packets: u64,
    /// Largest gather, packets.
    pub largest: u64,
    /// Most workers in one gather.
    pub most_workers: u64,
    /// How long the gather now running has been running (zero between gathers).
    pub running: Duration,
}

/// The gathering thread; stops (failing what it has not taken, so no worker waits forever)
/// when dropped.
pub struct Gatherer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    placement: Placement,
}

/// Watches how long the gathering thread's current gather has been running.
#[derive(Clone)]
pub struct GatherWatch {
    shared: Arc<Shared>,
}

impl GatherWatch {
    /// As [`Gatherer::running_for`].
    pub fn running_for(&self) -> Option<Duration> {
        self.shared.running_for()
    }
}

/// A worker's way to the gathering thread: an [`Accelerator`] for its dispatcher.
pub struct GatherClient {
    worker: usize,
    shared: Arc<Shared>,
}

impl Gatherer {
    /// Starts the thread over `acc` for `workers` workers; returns one client per worker.
    pub fn start(
        acc: Box<dyn Accelerator>,
        workers: usize,
        set: GatherSettings,
    ) -> std::io::Result<(Self, Vec<GatherClient>)> {
        let now = Instant::now();
        let shared = Arc::new(Shared {
            slots: (0..workers)
                .map(|_| Slot {
                    state: AtomicU8::new(FREE),
                    req: UnsafeCell::new(Request {
                        work: Work::Recover,
                        jobs: std::ptr::null_mut(),
                        len: 0,
                        deadline: now,
                        handed_at: now,
                        done_at: now,
                        result: Ok(()),
                    }),
                })
                .collect(),
            stop: AtomicBool::new(false),
            exited: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            thread: std::sync::OnceLock::new(),
            name: acc.name(),
            describe: acc.describe(),
            gathers: AtomicU64::new(0),
            packets: AtomicU64::new(0),
            largest: AtomicU64::new(0),
            most_workers: AtomicU64::new(0),
            epoch: now,
            running: AtomicU64::new(0),
        });
        let s = Arc::clone(&shared);
        let (placed, placement) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("dwcp-gather".into())
            .spawn(move || {
                let _ = placed.send(place(set.core));
                run(&s, acc, set);
                s.exited.store(true, Ordering::Release);
            })?;
        let _ = shared.thread.set(thread.thread().clone());
        // The thread says where it runs before it looks for work.
        let placement = placement.recv().unwrap_or(Placement::Unpinned);
        let clients = (0..workers)
            .map(|worker| GatherClient {
                worker,
                shared: Arc::clone(&shared),
            })
            .collect();
        Ok((
            Self {
                shared,
                thread: Some(thread),
                placement,
            },
            clients,
        ))
    }

    /// Where the thread runs.
    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// How long the gather now running has been running; `None` between gathers. Far past
    /// every batch deadline, it means a driver call that does not return: the workers in that
    /// gather wait for it and cannot give up on their own (their jobs are the thread's until
    /// it is done).
    pub fn running_for(&self) -> Option<Duration> {
        self.shared.running_for()
    }

    /// A handle another thread can watch [`Gatherer::running_for`] with.
    pub fn watch(&self) -> GatherWatch {
        GatherWatch {
            shared: Arc::clone(&self.shared),
        }
    }

    /// What it did so far.
    pub fn stats(&self) -> GatherStats {
        let s = &self.shared;
        GatherStats {
            gathers: s.gathers.load(Ordering::Relaxed),
            packets: s.packets.load(Ordering::Relaxed),
            largest: s.largest.load(Ordering::Relaxed),
            most_workers: s.most_workers.load(Ordering::Relaxed),
            running: self.running_for().unwrap_or_default(),
        }
    }
}

impl Drop for Gatherer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl GatherClient {
    /// Hands `len` jobs at `jobs` to the thread, runs `meanwhile`, then waits for the jobs;
    /// returns how long the thread took from the hand-over until it was done with them.
    fn hand(
        &self,
        work: Work,
        jobs: *mut (),
        len: usize,
        deadline: Instant,
        meanwhile: &mut dyn FnMut(),
    ) -> Result<Duration, Failure> {
        let s = &*self.shared;
        let slot = &s.slots[self.worker];
        debug_assert_eq!(slot.state.load(Ordering::Acquire), FREE);
        let now = Instant::now();
        // SAFETY: the slot is FREE (each client is its worker's only way in, and the previous
        // call took its result back), so the thread does not touch `req`.
        unsafe {
            *slot.req.get() = Request {
                work,
                jobs,
                len,
                deadline,
                handed_at: now,
                done_at: now,
                result: Ok(()),
            };
        }
        // SeqCst with the thread's `parked` store and re-check: of this store and that one,
        // each side sees the other's, so a handed batch never waits out a park.
        slot.state.store(HANDED, Ordering::SeqCst);
        if s.parked.load(Ordering::SeqCst)
            && let Some(t) = s.thread.get()
        {
            t.unpark();
        }
        // Waits even if `meanwhile` panics: the caller's borrow of the jobs must not end while
        // the thread may still be writing them.
        let pending = Pending(self);
        meanwhile();
        std::mem::forget(pending);
        self.wait()
    }

    /// Waits for the slot's request to be DONE (or for the thread to have stopped without
    /// taking it) and frees the slot.
    fn wait(&self) -> Result<Duration, Failure> {
        let s = &*self.shared;
        let slot = &s.slots[self.worker];
        let mut spins = 0u32;
        loop {
            if slot.state.load(Ordering::Acquire) == DONE {
                break;
            }
            if s.exited.load(Ordering::Acquire)
                && slot
                    .state
                    .compare_exchange(HANDED, FREE, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                return Err(Failure {
                    done: 0,
                    reason: "the GPU gathering thread has stopped".into(),
                    kind: Stop::Error,
                });
            }
            spins = spins.saturating_add(1);
            if spins < 4096 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // SAFETY: DONE, read with acquire: the thread has finished with the request and the
        // jobs, and will not touch them until the slot is HANDED again.
        let (result, took) = unsafe {
            let r = &mut *slot.req.get();
            (
                std::mem::replace(&mut r.result, Ok(())),
                r.done_at.saturating_duration_since(r.handed_at),
            )
        };
        slot.state.store(FREE, Ordering::Release);
        result.map(|()| took)
    }
}

/// A request handed over and not yet waited for: dropped (by a panic in the work done
/// meanwhile), it waits.
struct Pending<'a>(&'a GatherClient);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let _ = self.0.wait();
    }
}

impl Accelerator for GatherClient {
    fn name(&self) -> &'static str {
        self.shared.name
    }
    fn try_seal(&mut self, jobs: &mut [SealJob<'_>], deadline: Instant) -> Result<(), Failure> {
        self.try_beside(Batch::Seal(jobs), deadline, &mut || {})
            .map(drop)
    }
    fn try_open(&mut self, jobs: &mut [OpenJob<'_>], deadline: Instant) -> Result<(), Failure> {
        self.try_beside(Batch::Open(jobs), deadline, &mut || {})
            .map(drop)
    }
    fn try_compress(
        &mut self,
        jobs: &mut [CompressJob<'_>],
        deadline: Instant,
    ) -> Result<(), Failure> {
        self.try_beside(Batch::Compress(jobs), deadline, &mut || {})
            .map(drop)
    }
    fn try_decompress(
        &mut self,
        jobs: &mut [DecompressJob<'_>],
        deadline: Instant,
    ) -> Result<(), Failure> {
        self.try_beside(Batch::Decompress(jobs), deadline, &mut || {})
            .map(drop)
    }
    fn recover(&mut self) -> Result<(), RecoverError> {
        let far = Instant::now() + Duration::from_secs(3600);
        self.hand(Work::Recover, std::ptr::null_mut(), 0, far, &mut || {})
            .map(drop)
            .map_err(RecoverError::Gathered)
    }
    fn describe(&self) -> String {
        self.shared.describe.clone()
    }
    fn overlaps(&self) -> bool {
        true
    }
    fn try_beside(
        &mut self,
        batch: Batch<'_, '_>,
        deadline: Instant,
        meanwhile: &mut dyn FnMut(),
    ) -> Result<Duration, Failure> {
        // The jobs stay borrowed until `hand` returns, which is after the thread is done.
        let (work, jobs, len) = match batch {
            Batch::Seal(j) => (Work::Seal, j.as_mut_ptr().cast(), j.len()),
            Batch::Open(j) => (Work::Open, j.as_mut_ptr().cast(), j.len()),
            Batch::Compress(j) => (Work::Compress, j.as_mut_ptr().cast(), j.len()),
            Batch::Decompress(j) => (Work::Decompress, j.as_mut_ptr().cast(), j.len()),
        };
        self.hand(work, jobs, len, deadline, meanwhile)
    }
}

/// Allocations the thread reuses from gather to gather.
#[derive(Default)]
struct Spare {
    taken: Vec<usize>,
    seal: Vec<SealJob<'static>>,
    open: Vec<OpenJob<'static>>,
    compress: Vec<CompressJob<'static>>,
    decompress: Vec<DecompressJob<'static>>,
    oks: Vec<bool>,
    lens: Vec<Option<usize>>,
}

/// Cores `core_affinity` can name: its set is glibc's `cpu_set_t` (it panics past it).
const CPU_SET_CORES: usize = 1024;

/// Pins the calling thread to `core`; false when the kernel refuses or the core is past what
/// a CPU set can name (the thread then stays where it was).
pub fn pin_current_thread(core: usize) -> bool {
    core < CPU_SET_CORES && core_affinity::set_for_current(core_affinity::CoreId { id: core })
}

/// Pins the calling thread to `core`, when one is asked for.
fn place(core: Option<usize>) -> Placement {
    match core {
        None => Placement::Unpinned,
        Some(c) if pin_current_thread(c) => Placement::Pinned(c),
        Some(c) => Placement::Refused(c),
    }
}

fn run(s: &Shared, mut acc: Box<dyn Accelerator>, set: GatherSettings) {
    let workers = s.slots.len();
    let mut spare = Spare {
        taken: Vec::with_capacity(workers),
        ..Spare::default()
    };
    let mut idle_since = Instant::now();
    loop {
        // Gather.
        let mut first: Option<Instant> = None;
        let mut packets = 0usize;
        loop {
            for (w, slot) in s.slots.iter().enumerate() {
                if slot.state.load(Ordering::Acquire) == HANDED && !spare.taken.contains(&w) {
                    // SAFETY: HANDED, read with acquire: the request is the thread's.
                    let r = unsafe { &*slot.req.get() };
                    packets += r.len;
                    first = Some(first.map_or(r.handed_at, |f| f.min(r.handed_at)));
                    spare.taken.push(w);
                }
            }
            let Some(t0) = first else {
                if s.stop.load(Ordering::Acquire) {
                    return;
                }
                if idle_since.elapsed() < set.spin {
                    std::hint::spin_loop();
                } else {
                    s.parked.store(true, Ordering::SeqCst);
                    // Look once more after saying so, then sleep until a worker hands work.
                    if !s
                        .slots
                        .iter()
                        .any(|slot| slot.state.load(Ordering::SeqCst) == HANDED)
                    {
                        std::thread::park_timeout(Duration::from_millis(5));
                    }
                    s.parked.store(false, Ordering::Release);
                }
                continue;
            };
            if packets >= set.max_batch
                || spare.taken.len() == workers
                || t0.elapsed() >= set.max_delay
                || s.stop.load(Ordering::Acquire)
            {
                break;
            }
            std::hint::spin_loop();
        }
        // Run: recovery first, then one batch per operation.
        s.running
            .store(nanos_since(s.epoch).saturating_add(1), Ordering::Relaxed);
        s.gathers.fetch_add(1, Ordering::Relaxed);
        s.packets.fetch_add(packets as u64, Ordering::Relaxed);
        s.largest.fetch_max(packets as u64, Ordering::Relaxed);
        s.most_workers
            .fetch_max(spare.taken.len() as u64, Ordering::Relaxed);
        for &w in &spare.taken {
            // SAFETY: taken while HANDED; the thread alone touches the request until DONE.
            let r = unsafe { &mut *s.slots[w].req.get() };
            if r.work == Work::Recover {
                r.result = acc.recover().map_err(|e| Failure {
                    done: 0,
                    reason: e.to_string(),
                    kind: Stop::Error,
                });
            }
        }
        run_seal(&mut *acc, s, &mut spare);
        run_open(&mut *acc, s, &mut spare);
        run_compress(&mut *acc, s, &mut spare);
        run_decompress(&mut *acc, s, &mut spare);
        s.running.store(0, Ordering::Relaxed);
        let done_at = Instant::now();
        for &w in &spare.taken {
            // SAFETY: taken while HANDED and not yet DONE: the request is still the thread's.
            unsafe { (*s.slots[w].req.get()).done_at = done_at };
            s.slots[w].state.store(DONE, Ordering::Release);
        }
        spare.taken.clear();
        idle_since = Instant::now();
    }
}

/// The share of a failure at combined offset `done` that falls on a request of `len` jobs
/// starting at `start`.
fn share(result: &Result<(), Failure>, start: usize, len: usize) -> Result<(), Failure> {
    match result {
        Ok(()) => Ok(()),
        Err(f) => {
            let done = f.done.saturating_sub(start).min(len);
            if done == len {
                Ok(())
            } else {
                Err(Failure {
                    done,
                    reason: f.reason.clone(),
                    kind: f.kind,
                })
            }
        }
    }
}

/// The jobs a request carries.
///
/// # Safety
/// `J` is the job type `r.work` names, and the worker that handed `r` is still inside
/// `GatherClient::hand` (its slot is HANDED and taken by the gathering thread).
unsafe fn jobs_of<'x, J>(r: &Request) -> &'x mut [J] {
    // SAFETY: per the contract, the worker handed `len` jobs of type `J` at `jobs` and holds
    // their exclusive borrow, unused, until the thread marks the slot DONE.
    unsafe { std::slice::from_raw_parts_mut(r.jobs.cast::<J>(), r.len) }
}

/// Defines the runner for one operation: every taken request of that operation, in worker
/// order, as one batch on the accelerator; then each job's result (`$field`) written back to
/// the worker's job and each request's share of a failure.
macro_rules! runner {
    ($name:ident, $work:expr, $Job:ident, $spare:ident, $try:ident, $field:ident, $results:ident) => {
        fn $name(acc: &mut dyn Accelerator, s: &Shared, spare: &mut Spare) {
            let mut deadline: Option<Instant> = None;
            let mut jobs: Vec<$Job<'_>> = std::mem::take(&mut spare.$spare)
                .into_iter()
                .map(|_| unreachable!("the spare list is empty"))
                .collect();
            for &w in &spare.taken {
                // SAFETY: taken while HANDED; the thread alone touches the request until DONE.
                let r = unsafe { &*s.slots[w].req.get() };
                if r.work != $work || r.len == 0 {
                    continue;
                }
                deadline = Some(deadline.map_or(r.deadline, |d| d.min(r.deadline)));
                // SAFETY: the worker handed `len` jobs of this type at `jobs` and stays in
                // `GatherClient::hand` until DONE, holding their exclusive borrow; the
                // reborrows below end before DONE is stored.
                let theirs: &mut [$Job<'_>] = unsafe { jobs_of(r) };
                jobs.extend(theirs.iter_mut().map(|j| j.reborrow()));
            }
            let Some(deadline) = deadline else {
                spare.$spare = jobs.into_iter().map(|_| unreachable!("empty")).collect();
                return;
            };
            let result = acc.$try(&mut jobs, deadline);
            spare.$results.clear();
            spare.$results.extend(jobs.iter().map(|j| j.$field));
            jobs.clear();
            spare.$spare = jobs.into_iter().map(|_| unreachable!("cleared")).collect();
            let mut at = 0;
            for &w in &spare.taken {
                // SAFETY: as above.
                let r = unsafe { &mut *s.slots[w].req.get() };
                if r.work != $work || r.len == 0 {
                    continue;
                }
                // SAFETY: as above; the batch's reborrows are gone.
                let theirs: &mut [$Job<'_>] = unsafe { jobs_of(r) };
                for (j, v) in theirs.iter_mut().zip(&spare.$results[at..]) {
                    j.$field = *v;
                }
                r.result = share(&result, at, r.len);
                at += r.len;
            }
        }
    };
}

runner!(run_seal, Work::Seal, SealJob, seal, try_seal, ok, oks);
runner!(run_open, Work::Open, OpenJob, open, try_open, ok, oks);
runner!(
    run_compress,
    Work::Compress,
    CompressJob,
    compress,
    try_compress,
    out_len,
    lens
);
runner!(
    run_decompress,
    Work::Decompress,
    DecompressJob,
    decompress,
    try_decompress,
    out_len,
    lens
);

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use super::*;
    use crate::cpu::CpuEngine;
    use crate::dispatch::fault_injector::{Fault, TestAccelerator};
    use crate::dispatch::{Dispatcher, Mode, Settings};
    use crate::suite::{self, Rng};
    use crate::{AeadKey, Engine, TAG_LEN};

    fn settings(max_delay: Duration) -> GatherSettings {
        GatherSettings {
            max_batch: 4096,
            max_delay,
            spin: Duration::from_micros(100),
            ..GatherSettings::default()
        }
    }

    fn on() -> Settings {
        Settings {
            mode: Mode::On,
            deadline: Duration::from_secs(5),
            retry: Duration::from_secs(60),
            retry_max: Duration::from_secs(60),
            ..Settings::default()
        }
    }

    /// `n` random 1408-byte packets sealed by `engine` (nonces from `base`): the sealed
    /// buffers and whether each job said ok.
    fn seal_with(engine: &mut dyn Engine, key: &AeadKey, n: usize, base: u64) -> Vec<Vec<u8>> {
        let mut rng = Rng(base + 1);
        let mut bufs: Vec<Vec<u8>> = (0..n)
            .map(|_| {
                let mut b = vec![0u8; 1408 + TAG_LEN];
                rng.fill(&mut b[..1408]);
                b
            })
            .collect();
        let mut jobs: Vec<SealJob<'_>> = bufs
            .iter_mut()
            .enumerate()
            .map(|(i, buf)| SealJob {
                key,
                nonce: crate::nonce(base + i as u64),
                aad: &[3u8; 16],
                buf,
                len: 1408,
                ok: false,
            })
            .collect();
        engine.seal(&mut jobs);
        assert!(jobs.iter().all(|j| j.ok));
        bufs
    }

    /// Four workers each run the correctness suite through their own dispatcher over one
    /// gathering thread: every result is right, and batches from several workers were run
    /// together.
    #[test]
    fn work_from_all_workers_is_gathered_and_every_result_is_right() {
        let acc = TestAccelerator::new(Fault::None, Duration::ZERO);
        let (g, clients) =
            Gatherer::start(Box::new(acc), 4, settings(Duration::from_millis(50))).unwrap();
        let barrier = Barrier::new(4);
        std::thread::scope(|scope| {
            for (w, c) in clients.into_iter().enumerate() {
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut d = Dispatcher::new(Some(Box::new(c)), on());
                    let key = AeadKey::new(&[u8::try_from(w).unwrap(); 32]);
                    for round in 0..5u64 {
                        barrier.wait();
                        let base = round * 1000 + w as u64 * 100;
                        let got = seal_with(&mut d, &key, 32, base);
                        assert_eq!(got, seal_with(&mut CpuEngine, &key, 32, base));
                    }
                    suite::gcm_vectors(&mut d);
                    suite::gcm_random(&mut d, 300, 37, w as u64);
                    suite::lz4_round_trips(&mut d, 200, 29, w as u64);
                    let st = d.offload_stats().unwrap();
                    assert_eq!(st.gpu_errors, 0);
                    assert!(st.batches.iter().map(|b| b[1]).sum::<u64>() > 0);
                });
            }
        });
        let st = g.stats();
        assert!(st.most_workers >= 2, "{st:?}");
        assert!(st.largest > 32, "{st:?}");
        assert!(st.gathers < st.packets, "{st:?}");
    }

    /// The accelerator fails part-way through a gathered batch: each worker gets its own
    /// share of what was done, its dispatcher finishes the rest on its CPU, and every packet
    /// is sealed once and right.
    #[test]
    fn a_failure_in_a_gathered_batch_is_finished_by_each_worker() {
        let acc = TestAccelerator::new(Fault::ErrorAfter(40), Duration::ZERO);
        let (g, clients) =
            Gatherer::start(Box::new(acc), 3, settings(Duration::from_millis(200))).unwrap();
        let barrier = Barrier::new(3);
        let fallbacks: u64 = std::thread::scope(|scope| {
            let handles: Vec<_> = clients
                .into_iter()
                .enumerate()
                .map(|(w, c)| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        let mut d = Dispatcher::new(Some(Box::new(c)), on());
                        let key = AeadKey::new(&[7; 32]);
                        barrier.wait();
                        let base = w as u64 * 1000;
                        let got = seal_with(&mut d, &key, 32, base);
                        assert_eq!(got, seal_with(&mut CpuEngine, &key, 32, base));
                        d.offload_stats().unwrap().fallback_jobs
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let st = g.stats();
        if st.gathers == 1 {
            // All three in one batch of 96: 40 done on the accelerator, 56 on the CPUs.
            assert_eq!(fallbacks, 56, "{st:?}");
        } else {
            assert!(fallbacks >= 56, "{fallbacks} {st:?}");
        }
    }

    #[test]
    fn a_lone_worker_waits_no_longer_than_max_delay() {
        let acc = TestAccelerator::new(Fault::None, Duration::ZERO);
        let (_g, mut clients) =
            Gatherer::start(Box::new(acc), 2, settings(Duration::from_millis(30))).unwrap();
        let mut d = Dispatcher::new(Some(Box::new(clients.remove(0))), on());
        let key = AeadKey::new(&[1; 32]);
        let t = Instant::now();
        let got = seal_with(&mut d, &key, 8, 0);
        let waited = t.elapsed();
        assert_eq!(got, seal_with(&mut CpuEngine, &key, 8, 0));
        assert!(waited >= Duration::from_millis(30), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }

    /// A gather stuck in the accelerator (here a 400 ms call) shows as running for as long;
    /// between gathers nothing is running.
    #[test]
    fn a_long_gather_shows_how_long_it_has_been_running() {
        let acc = TestAccelerator::new(Fault::None, Duration::from_millis(400));
        let (g, mut clients) =
            Gatherer::start(Box::new(acc), 1, settings(Duration::from_millis(1))).unwrap();
        assert_eq!(g.running_for(), None);
        let watch = g.watch();
        let mut d = Dispatcher::new(Some(Box::new(clients.remove(0))), on());
        let key = AeadKey::new(&[4; 32]);
        let longest = std::thread::scope(|scope| {
            let worker = scope.spawn(|| seal_with(&mut d, &key, 4, 0));
            let mut longest = Duration::ZERO;
            while !worker.is_finished() {
                longest = longest.max(watch.running_for().unwrap_or_default());
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(
                worker.join().unwrap(),
                seal_with(&mut CpuEngine, &key, 4, 0)
            );
            longest
        });
        assert!(
            longest >= Duration::from_millis(300) && longest < Duration::from_secs(5),
            "{longest:?}"
        );
        assert_eq!(g.running_for(), None);
    }

    #[test]
    fn after_the_gatherer_stops_nobody_waits_forever() {
        let acc = TestAccelerator::new(Fault::None, Duration::ZERO);
        let (g, mut clients) =
            Gatherer::start(Box::new(acc), 1, settings(Duration::from_millis(1))).unwrap();
        drop(g);
        let mut c = clients.remove(0);
        let key = AeadKey::new(&[1; 32]);
        let mut buf = vec![0u8; 64 + TAG_LEN];
        let mut jobs = [SealJob {
            key: &key,
            nonce: crate::nonce(1),
            aad: &[],
            buf: &mut buf,
            len: 64,
            ok: false,
        }];
        let err = c.try_seal(&mut jobs, Instant::now()).unwrap_err();
        assert_eq!(err.done, 0);
        assert!(!jobs[0].ok);
        assert!(c.recover().is_err());
        // Its dispatcher finishes on the CPU.
        let mut d = Dispatcher::new(Some(Box::new(c)), on());
        assert_eq!(
            seal_with(&mut d, &key, 4, 9),
            seal_with(&mut CpuEngine, &key, 4, 9)
        );
    }

    /// The cores the kernel lets the process's `dwcp-gather` threads run on.
    fn gather_threads_cores() -> Vec<String> {
        let mut found = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() != "dwcp-gather" {
                continue;
            }
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            if let Some(list) = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            {
                found.push(list.trim().to_owned());
            }
        }
        found
    }

    /// A gatherer for one worker, asked to run on `core`, and that worker's dispatcher.
    fn on_core(core: usize) -> (Gatherer, Dispatcher) {
        let acc = TestAccelerator::new(Fault::None, Duration::ZERO);
        let (g, mut clients) = Gatherer::start(
            Box::new(acc),
            1,
            GatherSettings {
                core: Some(core),
                ..settings(Duration::from_millis(1))
            },
        )
        .unwrap();
        let d = Dispatcher::new(Some(Box::new(clients.remove(0))), on());
        (g, d)
    }

    /// Four packets sealed through `d` come out as the CPU seals them.
    fn seals_right(d: &mut Dispatcher) {
        let key = AeadKey::new(&[2; 32]);
        assert_eq!(
            seal_with(d, &key, 4, 0),
            seal_with(&mut CpuEngine, &key, 4, 0)
        );
    }

    #[test]
    fn the_thread_runs_on_the_core_asked_for() {
        let last = core_affinity::get_core_ids().unwrap().last().unwrap().id;
        let (g, mut d) = on_core(last);
        assert_eq!(g.placement(), Placement::Pinned(last));
        assert_eq!(g.placement().to_string(), format!("on core {last}"));
        let cores = gather_threads_cores();
        assert!(cores.contains(&last.to_string()), "{cores:?}");
        seals_right(&mut d);
        assert_eq!(g.stats().packets, 4);
    }

    #[test]
    fn a_core_the_kernel_refuses_leaves_the_thread_unpinned_and_working() {
        for core in [4000, usize::MAX] {
            let (g, mut d) = on_core(core);
            assert_eq!(g.placement(), Placement::Refused(core));
            assert!(g.placement().to_string().starts_with("NOT on core"));
            seals_right(&mut d);
            assert_eq!(g.stats().gathers, 1);
        }
    }

    fn auto() -> Settings {
        Settings {
            mode: Mode::Auto,
            ..on()
        }
    }

    /// Seals `rounds` batches of `n` packets through an `auto` dispatcher over one gathering
    /// thread running `acc`, each checked against the CPU engine; the dispatcher's counters
    /// after the first `warm` batches and at the end.
    fn seal_auto(
        acc: TestAccelerator,
        rounds: u64,
        warm: u64,
        n: usize,
    ) -> (crate::dispatch::Stats, crate::dispatch::Stats) {
        let (_g, clients) =
            Gatherer::start(Box::new(acc), 1, settings(Duration::from_micros(10))).unwrap();
        let c = clients.into_iter().next().unwrap();
        let mut d = Dispatcher::new(Some(Box::new(c)), auto());
        let key = AeadKey::new(&[5; 32]);
        let mut warmed = None;
        for round in 0..rounds {
            if round == warm {
                warmed = Some(d.offload_stats().unwrap().clone());
            }
            let base = round * 10_000;
            let got = seal_with(&mut d, &key, n, base);
            assert_eq!(
                got,
                seal_with(&mut CpuEngine, &key, n, base),
                "batch {round}"
            );
        }
        (warmed.unwrap(), d.offload_stats().unwrap().clone())
    }

    /// The accelerator's share of the sealed bytes between two snapshots of the counters.
    fn gpu_fraction(a: &crate::dispatch::Stats, b: &crate::dispatch::Stats) -> f64 {
        let o = crate::cuda::Op::Seal.index();
        let gpu = b.bytes[o][1] - a.bytes[o][1];
        let cpu = b.bytes[o][0] - a.bytes[o][0];
        gpu as f64 / (gpu + cpu).max(1) as f64
    }

    /// With an accelerator behind the gathering thread, `auto` splits each batch: the worker
    /// seals its share while the thread seals the rest, every packet right, every operation.
    #[test]
    fn auto_splits_batches_between_the_worker_and_the_gathering_thread() {
        let (_, st) = seal_auto(TestAccelerator::new(Fault::None, Duration::ZERO), 30, 0, 64);
        let o = crate::cuda::Op::Seal.index();
        assert!(st.split_batches > 0, "{st:?}");
        assert!(st.bytes[o][0] > 0 && st.bytes[o][1] > 0, "{st:?}");
        let share = st.gpu_share[o].unwrap();
        assert!(share > 0.0 && share < 1.0, "{share}");
        assert_eq!(st.batches[o][0] + st.batches[o][1], 30 + st.split_batches);
        assert_eq!(
            (st.gpu_errors, st.fallback_jobs, st.corrected_jobs),
            (0, 0, 0)
        );

        let (_g, clients) = Gatherer::start(
            Box::new(TestAccelerator::new(Fault::None, Duration::ZERO)),
            1,
            settings(Duration::from_micros(10)),
        )
        .unwrap();
        let mut d = Dispatcher::new(Some(Box::new(clients.into_iter().next().unwrap())), auto());
        suite::gcm_vectors(&mut d);
        suite::gcm_random(&mut d, 600, 61, 3);
        suite::lz4_round_trips(&mut d, 400, 53, 3);
        assert!(d.offload_stats().unwrap().split_batches > 0);
    }

    /// An accelerator whose batches take far longer than the CPU's is given less and less,
    /// down to nothing; one as fast as the CPU keeps a share.
    #[test]
    fn the_share_follows_the_measured_costs() {
        let (w, slow) = seal_auto(
            TestAccelerator::new(Fault::None, Duration::from_millis(20)),
            24,
            8,
            64,
        );
        let slow = gpu_fraction(&w, &slow);
        // The stand-in's cost includes waking the gathering thread, which on a loaded 2-core
        // machine can take a scheduler time slice; one such spike shuts its share until the
        // next exploration. The best of three runs says what the dispatcher does when the
        // thread is scheduled.
        let fast = (0..3)
            .map(|_| {
                let (w, f) =
                    seal_auto(TestAccelerator::new(Fault::None, Duration::ZERO), 24, 8, 64);
                gpu_fraction(&w, &f)
            })
            .fold(0.0, f64::max);
        assert!(slow < 0.02, "slow accelerator's share {slow}");
        assert!(fast > 0.1, "fast accelerator's share {fast}");
    }

    /// An accelerator error in a split batch: the worker's own share is done once, the
    /// accelerator's unfinished jobs are finished on the worker's CPU, every packet right.
    #[test]
    fn an_error_in_a_split_batch_loses_nothing() {
        let (_, st) = seal_auto(
            TestAccelerator::new(Fault::ErrorAfter(3), Duration::ZERO),
            6,
            0,
            64,
        );
        assert!(st.gpu_errors > 0, "{st:?}");
        assert!(st.fallback_jobs > 0, "{st:?}");
        assert!(st.split_batches > 0, "{st:?}");
    }
}
