//! Adaptive dispatch: each batch goes to the CPU engine or the accelerator (the GPU), chosen
//! per operation by the measured cost per byte of both paths at that batch size, with periodic
//! exploration so both stay measured; `offload.gpu = on|off|auto` overrides. An accelerator
//! error or a batch past its deadline is finished on the CPU from the first job the
//! accelerator did not complete — nothing is lost or run twice — the accelerator is marked
//! unhealthy and probed again after a back-off. A sample of the accelerator's batches is
//! checked whole against the CPU engine, and one packet and the first refusals of every other
//! batch ([`crate::dispatch::verify`]): a wrong packet gets the CPU's result and the accelerator is
//! marked unhealthy the same way. Counters say all of it.

pub mod accelerator;
pub mod fault_injector;
pub mod selftest;
pub mod verify;

use std::time::{Duration, Instant};

use crate::cpu::CpuEngine;
use crate::cuda::{CudaEngine, Op};
pub use crate::dispatch::accelerator::{
    Accelerator, Batch, CheckError, Failure, RecoverError, Stop,
};
use crate::dispatch::verify::{Checked, Scratch};
use crate::{CompressJob, DecompressJob, Engine, OpenJob, SealJob};

/// Which engine a batch may use (`offload.gpu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The faster path, measured.
    Auto,
    /// The accelerator whenever it is healthy.
    On,
    /// The CPU only.
    Off,
}

/// How long each batch of the check a recovering GPU repeats may take: well inside the data
/// plane's watchdog (5 s), so a slow GPU stays unhealthy instead of stopping the data plane.
const RECHECK_TIMEOUT: Duration = Duration::from_secs(2);

fn failure(p: crate::cuda::Partial) -> Failure {
    use crate::cuda::CudaError;
    Failure {
        done: p.done,
        kind: match p.error {
            CudaError::Timeout(_) => Stop::Timeout,
            CudaError::TooBig => Stop::Declined,
            _ => Stop::Error,
        },
        reason: p.error.to_string(),
    }
}

impl Accelerator for CudaEngine {
    fn name(&self) -> &'static str {
        "cuda"
    }
    fn try_seal(&mut self, jobs: &mut [SealJob<'_>], deadline: Instant) -> Result<(), Failure> {
        CudaEngine::try_seal(self, jobs, deadline).map_err(failure)
    }
    fn try_open(&mut self, jobs: &mut [OpenJob<'_>], deadline: Instant) -> Result<(), Failure> {
        CudaEngine::try_open(self, jobs, deadline).map_err(failure)
    }
    fn try_compress(
        &mut self,
        jobs: &mut [CompressJob<'_>],
        deadline: Instant,
    ) -> Result<(), Failure> {
        CudaEngine::try_compress(self, jobs, deadline).map_err(failure)
    }
    fn try_decompress(
        &mut self,
        jobs: &mut [DecompressJob<'_>],
        deadline: Instant,
    ) -> Result<(), Failure> {
        CudaEngine::try_decompress(self, jobs, deadline).map_err(failure)
    }
    fn recover(&mut self) -> Result<(), RecoverError> {
        CudaEngine::recover(self)?;
        // Back only once its answers are right again (a fault can leave a GPU that runs but
        // computes wrong).
        crate::dispatch::selftest::check(
            self,
            crate::dispatch::selftest::MAX_PACKET,
            RECHECK_TIMEOUT,
        )
        .map(|_| ())
        .map_err(RecoverError::Recheck)
    }
    fn describe(&self) -> String {
        let i = self.info();
        let mem = match self.memory() {
            Ok((free, total)) => format!("{} MiB free of {} MiB", free >> 20, total >> 20),
            Err(e) => format!("memory unknown ({e})"),
        };
        format!(
            "{} (compute {}.{}, {} SMs, PCI {}), {mem}, driver for CUDA {}.{}, kernels compiled by NVRTC {}.{} for {}",
            i.name,
            i.compute_capability.0,
            i.compute_capability.1,
            i.multiprocessors,
            i.pci_bus_id,
            i.driver_cuda.0,
            i.driver_cuda.1,
            i.nvrtc.0,
            i.nvrtc.1,
            i.arch
        )
    }
}

/// Refused packets per accelerator batch re-run on the CPU engine to confirm the refusal (all
/// of the batch's once one was wrong): a false refusal shows at once, and a flood of forged
/// packets costs the CPU at most this many opens per batch.
const RECHECK_REFUSALS: usize = 4;

/// Batch-size classes the cost model keeps apart (the GPU's fixed cost per batch makes cost
/// per byte depend on batch size): < 16 KiB, < 256 KiB, < 4 MiB, larger.
const CLASSES: usize = 4;

fn class_of(bytes: usize) -> usize {
    match bytes {
        0..16_384 => 0,
        16_384..262_144 => 1,
        262_144..4_194_304 => 2,
        _ => 3,
    }
}

/// Exponentially weighted cost per byte, nanoseconds.
#[derive(Clone, Copy, Debug, Default)]
struct Ewma(Option<f64>);

/// A sample counts for at most this many times the estimate: one batch that lost its core to
/// an interrupt or a preemption raises the estimate by a fifth at most, not a hundredfold,
/// while a real rise is still followed (a tenfold one to 90 % in 17 batches).
const OUTLIER: f64 = 2.0;

impl Ewma {
    fn add(&mut self, ns_per_byte: f64) {
        self.0 = Some(match self.0 {
            None => ns_per_byte,
            Some(v) => 0.8 * v + 0.2 * ns_per_byte.min(OUTLIER * v),
        });
    }
}

/// The two paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The CPU engine.
    Cpu = 0,
    /// The accelerator.
    Gpu = 1,
}

/// What the dispatcher has done, for metrics and the console.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Batches per operation ([`Op::index`]) and path ([`Path`] as index). A batch both paths
    /// ran part of — split, or one the accelerator failed or declined part-way, its finished
    /// prefix its own — counts on both.
    pub batches: [[u64; 2]; 4],
    /// Payload bytes per operation and path.
    pub bytes: [[u64; 2]; 4],
    /// Accelerator errors.
    pub gpu_errors: u64,
    /// Accelerator batches past their deadline.
    pub gpu_timeouts: u64,
    /// Jobs the CPU finished after an accelerator failure.
    pub fallback_jobs: u64,
    /// Jobs the accelerator declined (larger than its staging buffers), with the rest of
    /// their batch, run on the CPU; the accelerator stayed in service.
    pub declined_jobs: u64,
    /// Accelerator batches checked against the CPU engine.
    pub verified_batches: u64,
    /// Accelerator batches not checked whole of which one packet was checked.
    pub spot_checked_batches: u64,
    /// Packets the accelerator refused (a drop: a seal, an open whose tag failed, a block
    /// that did not decompress) re-run on the CPU engine to confirm it.
    pub rechecked_refusals: u64,
    /// Packets the accelerator opened in a batch whose spot check found it wrong, dropped
    /// since their plaintext could not be checked (counted as failed opens too).
    pub dropped_unchecked: u64,
    /// Batches in which a check found a packet the accelerator got wrong.
    pub gpu_wrong_batches: u64,
    /// Packets the accelerator got wrong, given the CPU's result instead.
    pub corrected_jobs: u64,
    /// Health probes sent to an unhealthy accelerator.
    pub probes: u64,
    /// The accelerator is healthy (false also when there is none).
    pub gpu_healthy: bool,
    /// The last accelerator failure.
    pub last_error: Option<String>,
    /// The failure that took the accelerator out of service: the first since it was last
    /// healthy (later ones, such as failed probes, are in `last_error`).
    pub out_because: Option<String>,
    /// Batches split between the CPU engine and the accelerator, each running its share at
    /// the same time (counted in both paths' batches).
    pub split_batches: u64,
    /// Per operation, the share of the last split batch's bytes given to the accelerator.
    pub gpu_share: [Option<f64>; 4],
    /// Measured cost per byte, ns, per operation and path, at the batch size measured last.
    pub ns_per_byte: [[Option<f64>; 2]; 4],
    /// Nanoseconds each path spent on its share of the batches, per operation and path: the
    /// CPU engine's run, the accelerator's call until its results were ready (with the checks
    /// of an accelerator the caller waits for). With [`Stats::bytes`], each path's achieved
    /// rate. Counted only while an accelerator can be chosen: a CPU-only dispatcher reads no
    /// clock on the packet path.
    pub nanos: [[u64; 2]; 4],
}

/// Dispatcher settings.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// `offload.gpu`.
    pub mode: Mode,
    /// An accelerator batch not done after this is abandoned and re-run on the CPU.
    pub deadline: Duration,
    /// First wait before probing an unhealthy accelerator; doubles per failed probe.
    pub retry: Duration,
    /// Longest wait between probes.
    pub retry_max: Duration,
    /// In `auto`, one batch in this many goes to the path that currently looks slower.
    pub explore_every: u64,
    /// One accelerator batch in this many, per operation, is checked whole against the CPU
    /// engine (and the first after start-up and after each recovery); each other batch has
    /// one packet and its first refusals checked; 0: no checks at all.
    pub verify_every: u64,
    /// Whether a batch not checked whole has one packet checked (its refusals are rechecked
    /// either way).
    pub spot_check: bool,
}

impl Settings {
    /// `verify_every`'s default (`offload.verify_every`).
    pub const DEFAULT_VERIFY_EVERY: u64 = 64;
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mode: Mode::Auto,
            deadline: Duration::from_millis(100),
            retry: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            explore_every: 32,
            verify_every: Self::DEFAULT_VERIFY_EVERY,
            spot_check: true,
        }
    }
}

/// The adaptive dispatcher; an [`Engine`] like the others.
pub struct Dispatcher {
    cpu: CpuEngine,
    gpu: Option<Box<dyn Accelerator>>,
    set: Settings,
    cost: [[[Ewma; CLASSES]; 2]; 4],
    /// Batches per operation since the slower path was last explored.
    seen: [u64; 4],
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Accelerator batches per operation since the last checked one.
    since_check: [u64; 4],
    /// Where the spot checks' sequence is.
    spot: u64,
    scratch: Scratch,
    stats: Stats,
}

/// How an accelerator batch went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trouble {
    Error,
    Timeout,
    Wrong,
}

/// An [`Accelerator`] call for one kind of job: the jobs, the deadline, and what the caller
/// does meanwhile; the accelerator's own time.
type GpuCall<J> =
    fn(&mut dyn Accelerator, &mut [J], Instant, &mut dyn FnMut()) -> Result<Duration, Failure>;

impl Dispatcher {
    /// A dispatcher over the CPU engine and, when there is one, an accelerator.
    pub fn new(gpu: Option<Box<dyn Accelerator>>, set: Settings) -> Self {
        let healthy = gpu.is_some();
        Self {
            cpu: CpuEngine,
            gpu,
            set,
            cost: [[[Ewma::default(); CLASSES]; 2]; 4],
            seen: [0; 4],
            retry_at: None,
            backoff: set.retry,
            since_check: [0; 4],
            spot: 0,
            scratch: Scratch::default(),
            stats: Stats {
                gpu_healthy: healthy,
                ..Stats::default()
            },
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The accelerator's line for operators, if there is one.
    pub fn describe_gpu(&self) -> Option<String> {
        self.gpu.as_ref().map(|g| g.describe())
    }

    /// Where the next batch of `op` goes: how many of its leading jobs the accelerator runs
    /// (all, none, or — with an accelerator that overlaps — a share while the CPU engine runs
    /// the rest).
    fn route<J: Checked>(&mut self, op: Op, jobs: &[J], bytes: usize) -> usize {
        let n = jobs.len();
        if self.gpu.is_none() || self.set.mode == Mode::Off {
            return 0;
        }
        if let Some(at) = self.retry_at {
            if Instant::now() < at {
                return 0;
            }
            // Probe: recover, then let this batch try the accelerator.
            self.stats.probes += 1;
            let recovered = self.gpu.as_mut().map(|g| g.recover());
            if let Some(Err(e)) = recovered {
                self.unhealthy(e.to_string(), Trouble::Error);
                return 0;
            }
            self.retry_at = None;
            // The first batches after a recovery are checked.
            self.since_check = [0; 4];
            return n;
        }
        if self.set.mode == Mode::On {
            return n;
        }
        let o = op.index();
        self.seen[o] += 1;
        let c = class_of(bytes);
        let overlaps = self.gpu.as_ref().is_some_and(|g| g.overlaps());
        let (cpu, gpu) = match (self.cost[o][0][c].0, self.cost[o][1][c].0) {
            // Measure what is not measured yet: with an accelerator that overlaps, both at once.
            (None, None) | (Some(_), None) | (None, Some(_)) if overlaps => {
                return split_at_share(jobs, bytes, 0.5);
            }
            (_, None) => return n,
            (None, _) => return 0,
            (Some(cpu), Some(gpu)) => (cpu, gpu),
        };
        // Explore the slower path less the slower it is (a GPU call for a lone packet costs a
        // hundred times the CPU's: exploring it often would cost more than it tells).
        let ratio = (gpu.max(cpu) / gpu.min(cpu).max(1e-6)).clamp(1.0, 128.0);
        let mult = [1u64, 2, 4, 8, 16, 32, 64, 128]
            .into_iter()
            .find(|&k| k as f64 >= ratio)
            .unwrap_or(128);
        let explore = self.seen[o] >= self.set.explore_every.max(1) * mult;
        if explore {
            self.seen[o] = 0;
        }
        if overlaps {
            // Both run at once: the batch is done soonest when both finish together, with the
            // accelerator given cpu / (cpu + gpu) of the bytes. Its cost per byte is measured
            // on the shares it gets, so a fixed cost per batch shrinks its share until the two
            // balance (or to nothing, where the CPU alone is faster; exploring measures it again).
            let share = if explore {
                0.5
            } else {
                cpu / (cpu + gpu).max(1e-9)
            };
            return split_at_share(jobs, bytes, share);
        }
        let faster_is_gpu = gpu < cpu;
        if faster_is_gpu != explore { n } else { 0 }
    }

    fn unhealthy(&mut self, reason: String, trouble: Trouble) {
        match trouble {
            Trouble::Error => self.stats.gpu_errors += 1,
            Trouble::Timeout => self.stats.gpu_timeouts += 1,
            Trouble::Wrong => self.stats.gpu_wrong_batches += 1,
        }
        if self.stats.gpu_healthy {
            self.stats.out_because = Some(reason.clone());
        }
        self.stats.last_error = Some(reason);
        self.stats.gpu_healthy = false;
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(self.set.retry_max);
    }

    /// Counts `bytes` run on `path` in `t`, as part of a batch of `batch` bytes (whose size
    /// class the cost is kept under).
    fn record(&mut self, op: Op, path: Path, batch: usize, bytes: usize, t: Duration) {
        let (o, p) = (op.index(), path as usize);
        self.stats.batches[o][p] += 1;
        self.stats.bytes[o][p] += bytes as u64;
        self.stats.nanos[o][p] += u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
        if bytes > 0 {
            let ns = t.as_nanos() as f64 / bytes as f64;
            let c = class_of(batch);
            self.cost[o][p][c].add(ns);
            self.stats.ns_per_byte[o][p] = self.cost[o][p][c].0;
        }
    }

    /// Checks an accelerator batch that succeeded — whole (`full`), or its packet `spot` and
    /// the first packets it refused — against the CPU engine; wrong packets get the CPU's
    /// result. Returns why the accelerator is wrong, if it is.
    fn examine<J: Checked>(
        &mut self,
        jobs: &mut [J],
        full: bool,
        spot: Option<usize>,
    ) -> Option<String> {
        let (n, s, st) = (jobs.len(), &mut self.scratch, &mut self.stats);
        if full {
            st.verified_batches += 1;
            let v = J::check_all(jobs, s);
            st.corrected_jobs += v.wrong as u64;
            return (v.wrong > 0).then(|| {
                format!(
                    "{} of {n} packets in a checked batch were wrong, the first: {}; they were given the CPU engine's results",
                    v.wrong,
                    v.first.unwrap_or_default()
                )
            });
        }
        let (mut why, mut drop_rest) = (Vec::new(), false);
        if let Some(k) = spot {
            st.spot_checked_batches += 1;
            let v = J::check(&mut jobs[k..=k], s, k, n);
            if v.wrong > 0 {
                st.corrected_jobs += 1;
                let mut w = format!(
                    "the packet spot-checked in a batch of {n} was wrong: {}; it was given the CPU engine's result",
                    v.first.unwrap_or_default()
                );
                if J::INPUTS_SURVIVE {
                    // Its inputs are intact: the rest of the batch can still be put right.
                    st.verified_batches += 1;
                    let all = J::check_all(jobs, s);
                    st.corrected_jobs += all.wrong as u64;
                    w.push_str(&format!(
                        "; the whole batch, checked then, had {} more wrong, given the CPU engine's results",
                        all.wrong
                    ));
                } else {
                    // Marked now, refused after the recheck (which must not take them for
                    // the accelerator's refusals).
                    J::mark_unchecked(jobs, k, s);
                    drop_rest = true;
                }
                why.push(w);
            }
        }
        // Known wrong already: every refusal of the batch is rechecked.
        let limit = if why.is_empty() {
            RECHECK_REFUSALS
        } else {
            usize::MAX
        };
        let (rechecked, v) = J::recheck_refusals(jobs, limit);
        st.rechecked_refusals += rechecked as u64;
        if v.wrong > 0 {
            st.corrected_jobs += v.wrong as u64;
            why.push(format!(
                "{} of the packets it refused in a batch of {n} were right, the first: {}; they were given the CPU engine's results",
                v.wrong,
                v.first.unwrap_or_default()
            ));
        }
        if drop_rest {
            let dropped = J::refuse_marked(jobs, s);
            st.dropped_unchecked += dropped as u64;
            if dropped > 0 {
                why.push(format!(
                    "the batch's {dropped} other verified packets were dropped, as their plaintext could not be checked"
                ));
            }
        }
        (!why.is_empty()).then(|| why.join("; and "))
    }

    /// Runs one batch: routes it, runs it (split, the two shares at once), falls back on
    /// failure, checks a sample of the accelerator's share against the CPU, records the costs.
    fn run<J: Checked>(
        &mut self,
        op: Op,
        jobs: &mut [J],
        gpu_call: GpuCall<J>,
        cpu_call: fn(&mut CpuEngine, &mut [J]),
    ) {
        if jobs.is_empty() {
            return;
        }
        let bytes = jobs.iter().map(J::size).sum();
        if self.gpu.is_none() || self.set.mode == Mode::Off {
            // Nothing to choose between: no clock reads on the packet path, counters only.
            cpu_call(&mut self.cpu, jobs);
            let o = op.index();
            self.stats.batches[o][Path::Cpu as usize] += 1;
            self.stats.bytes[o][Path::Cpu as usize] += bytes as u64;
            return;
        }
        let t0 = Instant::now();
        let k = self.route(op, jobs, bytes);
        if k == 0 || self.gpu.is_none() {
            cpu_call(&mut self.cpu, jobs);
            self.record(op, Path::Cpu, bytes, bytes, t0.elapsed());
            return;
        }
        let (ours, theirs) = jobs.split_at_mut(k);
        let split = !theirs.is_empty();
        let gpu_bytes: usize = if split {
            ours.iter().map(J::size).sum()
        } else {
            bytes
        };
        let check = check_due(&mut self.since_check, self.set.verify_every, op);
        // A batch not checked whole has one packet checked (none when checks are off).
        let spot = (!check && self.set.verify_every > 0 && self.set.spot_check)
            .then(|| next_spot(&mut self.spot, k));
        if check {
            J::keep_inputs(ours, &mut self.scratch);
        } else if let Some(s) = spot {
            J::keep_inputs(&ours[s..=s], &mut self.scratch);
        }
        // The CPU engine's share, run while the accelerator runs its own.
        let cpu = &mut self.cpu;
        let mut cpu_took = None;
        let mut meanwhile = || {
            if split && cpu_took.is_none() {
                let t = Instant::now();
                cpu_call(cpu, theirs);
                cpu_took = Some(t.elapsed());
            }
        };
        let gpu = self.gpu.as_mut().expect("checked above");
        let overlaps = gpu.overlaps();
        let result = gpu_call(
            gpu.as_mut(),
            ours,
            Instant::now() + self.set.deadline,
            &mut meanwhile,
        );
        if split {
            // An accelerator that broke its contract and never ran `meanwhile` loses nothing.
            let cpu_took = cpu_took.unwrap_or_else(|| {
                let t = Instant::now();
                cpu_call(&mut self.cpu, theirs);
                t.elapsed()
            });
            self.stats.split_batches += 1;
            self.stats.gpu_share[op.index()] = Some(gpu_bytes as f64 / bytes.max(1) as f64);
            self.record(op, Path::Cpu, bytes, bytes - gpu_bytes, cpu_took);
        }
        match result {
            Ok(took) => {
                let t1 = Instant::now();
                let wrong = if self.set.verify_every > 0 {
                    self.examine(ours, check, spot)
                } else {
                    None
                };
                // An accelerator the caller waits for is charged its checks too (they are
                // CPU time its batches cost); one that overlaps is not: they do not move the
                // split at which both shares finish together.
                let charged = if overlaps { took } else { took + t1.elapsed() };
                self.record(op, Path::Gpu, bytes, gpu_bytes, charged);
                if let Some(reason) = wrong {
                    self.unhealthy(reason, Trouble::Wrong);
                    return;
                }
                self.stats.gpu_healthy = true;
                self.backoff = self.set.retry;
            }
            Err(f) => self.after_failure(op, ours, f, check, spot, cpu_call),
        }
    }

    /// The accelerator stopped part-way through its share `ours`: its finished prefix is
    /// counted and checked as its batches are, the rest is run on the CPU engine, and an
    /// error or time-out takes it out of service (a declined job does not).
    fn after_failure<J: Checked>(
        &mut self,
        op: Op,
        ours: &mut [J],
        f: Failure,
        check: bool,
        spot: Option<usize>,
        cpu_call: fn(&mut CpuEngine, &mut [J]),
    ) {
        let k = ours.len();
        let done = f.done.min(k);
        let left = (k - done) as u64;
        let o = op.index();
        // The accelerator's finished prefix is its work like any batch's: counted on
        // its path, and checked as the whole batch would have been (the spot packet
        // only if it lies there).
        let wrong = if done > 0 {
            let prefix = &mut ours[..done];
            let prefix_bytes: usize = prefix.iter().map(J::size).sum();
            self.stats.batches[o][Path::Gpu as usize] += 1;
            self.stats.bytes[o][Path::Gpu as usize] += prefix_bytes as u64;
            if self.set.verify_every > 0 {
                self.examine(prefix, check, spot.filter(|&s| s < done))
            } else {
                None
            }
        } else {
            // Nothing of the accelerator's to check: the check falls to its next batch.
            if check {
                self.since_check[o] = 0;
            }
            None
        };
        match f.kind {
            Stop::Declined => self.stats.declined_jobs += left,
            Stop::Timeout | Stop::Error => {
                let timeout = f.kind == Stop::Timeout;
                let trouble = if timeout {
                    Trouble::Timeout
                } else {
                    Trouble::Error
                };
                self.unhealthy(f.reason, trouble);
                self.stats.fallback_jobs += left;
            }
        }
        let rest = &mut ours[done..];
        let rest_bytes: usize = rest.iter().map(J::size).sum();
        cpu_call(&mut self.cpu, rest);
        self.stats.batches[o][Path::Cpu as usize] += 1;
        self.stats.bytes[o][Path::Cpu as usize] += rest_bytes as u64;
        if let Some(reason) = wrong {
            self.unhealthy(reason, Trouble::Wrong);
        }
    }
}

/// The number of leading jobs that hold about `share` of the batch's `bytes` (nearest job
/// boundary; an empty batch or share gives none).
fn split_at_share<J: Checked>(jobs: &[J], bytes: usize, share: f64) -> usize {
    let want = share.clamp(0.0, 1.0) * bytes as f64;
    let mut sum = 0usize;
    for (i, j) in jobs.iter().enumerate() {
        let next = sum + j.size();
        // Stop at the boundary nearer `want`.
        if next as f64 > want {
            return if want - sum as f64 >= next as f64 - want {
                i + 1
            } else {
                i
            };
        }
        sum = next;
    }
    jobs.len()
}

/// The next spot-checked packet of a batch of `n`, from the sequence at `at`: a Weyl sequence,
/// so every position is reached and none is favoured.
fn next_spot(at: &mut u64, n: usize) -> usize {
    *at = at.wrapping_add(0x9E37_79B9_7F4A_7C15);
    // In range: the remainder is below `n`.
    ((*at >> 32) % n.max(1) as u64) as usize
}

/// Whether the next accelerator batch of `op` is checked against the CPU engine, one in
/// `every` (counted in `since`).
fn check_due(since: &mut [u64; 4], every: u64, op: Op) -> bool {
    if every == 0 {
        return false;
    }
    let s = &mut since[op.index()];
    let due = *s == 0;
    *s = (*s + 1) % every;
    due
}

impl Engine for Dispatcher {
    fn name(&self) -> &'static str {
        match (&self.gpu, self.set.mode) {
            (None, _) | (_, Mode::Off) => "cpu",
            (Some(_), Mode::On) => "gpu",
            (Some(_), Mode::Auto) => "auto",
        }
    }

    fn seal(&mut self, jobs: &mut [SealJob<'_>]) {
        self.run(
            Op::Seal,
            jobs,
            |g, j, d, m| g.try_beside(Batch::Seal(j), d, m),
            |c, j| c.seal(j),
        );
    }

    fn open(&mut self, jobs: &mut [OpenJob<'_>]) {
        self.run(
            Op::Open,
            jobs,
            |g, j, d, m| g.try_beside(Batch::Open(j), d, m),
            |c, j| c.open(j),
        );
    }

    fn compress(&mut self, jobs: &mut [CompressJob<'_>]) {
        self.run(
            Op::Compress,
            jobs,
            |g, j, d, m| g.try_beside(Batch::Compress(j), d, m),
            |c, j| c.compress(j),
        );
    }

    fn offload_stats(&self) -> Option<&Stats> {
        Some(&self.stats)
    }

    fn decompress(&mut self, jobs: &mut [DecompressJob<'_>]) {
        self.run(
            Op::Decompress,
            jobs,
            |g, j, d, m| g.try_beside(Batch::Decompress(j), d, m),
            |c, j| c.decompress(j),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::fault_injector::{Fault, TestAccelerator};
    use crate::suite::{self, Rng};
    use crate::{AeadKey, TAG_LEN};

    /// A preempted batch barely moves the cost estimate; a real rise is followed within a few
    /// batches; a fall at once.
    #[test]
    fn the_cost_estimate_shrugs_off_one_slow_batch_and_follows_a_real_change() {
        let mut e = Ewma::default();
        e.add(1.0);
        e.add(500.0);
        assert!((e.0.unwrap() - 1.2).abs() < 1e-9, "{e:?}");
        let mut e = Ewma(Some(1.0));
        let n = (1..).find(|_| {
            e.add(10.0);
            e.0.unwrap() > 9.0
        });
        assert_eq!(n, Some(17), "{e:?}");
        e.add(0.5);
        assert!(e.0.unwrap() < 8.0, "{e:?}");
    }

    fn dispatcher(mode: Mode, acc: TestAccelerator, retry: Duration) -> Dispatcher {
        Dispatcher::new(
            Some(Box::new(acc)),
            Settings {
                mode,
                deadline: Duration::from_millis(30),
                retry,
                retry_max: retry * 4,
                ..Settings::default()
            },
        )
    }

    /// `n` packets of 1408 bytes sealed by `engine` and by the CPU engine.
    fn seal_both(engine: &mut dyn Engine, n: usize, seed: u64) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let key = AeadKey::new(&[9u8; 32]);
        let mut rng = Rng(seed);
        let mut bufs: Vec<Vec<u8>> = (0..n)
            .map(|_| {
                let mut b = vec![0u8; 1408 + TAG_LEN];
                rng.fill(&mut b[..1408]);
                b
            })
            .collect();
        let mut want = bufs.clone();
        for (which, set) in [(0, &mut bufs), (1, &mut want)] {
            let mut jobs: Vec<SealJob<'_>> = set
                .iter_mut()
                .enumerate()
                .map(|(i, buf)| SealJob {
                    key: &key,
                    nonce: crate::nonce(i as u64),
                    aad: &[1u8; 16],
                    buf,
                    len: 1408,
                    ok: false,
                })
                .collect();
            if which == 0 {
                engine.seal(&mut jobs);
            } else {
                CpuEngine.seal(&mut jobs);
            }
            assert!(jobs.iter().all(|j| j.ok));
        }
        (bufs, want)
    }

    /// Claims to overlap, then never runs the caller's share.
    struct Forgetful(TestAccelerator);

    impl Accelerator for Forgetful {
        fn name(&self) -> &'static str {
            "forgetful"
        }
        fn try_seal(&mut self, j: &mut [SealJob<'_>], d: Instant) -> Result<(), Failure> {
            self.0.try_seal(j, d)
        }
        fn try_open(&mut self, j: &mut [OpenJob<'_>], d: Instant) -> Result<(), Failure> {
            self.0.try_open(j, d)
        }
        fn try_compress(&mut self, j: &mut [CompressJob<'_>], d: Instant) -> Result<(), Failure> {
            self.0.try_compress(j, d)
        }
        fn try_decompress(
            &mut self,
            j: &mut [DecompressJob<'_>],
            d: Instant,
        ) -> Result<(), Failure> {
            self.0.try_decompress(j, d)
        }
        fn recover(&mut self) -> Result<(), RecoverError> {
            Ok(())
        }
        fn describe(&self) -> String {
            "forgetful".into()
        }
        fn overlaps(&self) -> bool {
            true
        }
        fn try_beside(
            &mut self,
            batch: Batch<'_, '_>,
            deadline: Instant,
            _meanwhile: &mut dyn FnMut(),
        ) -> Result<Duration, Failure> {
            let t = Instant::now();
            batch.run_on(self, deadline).map(|()| t.elapsed())
        }
    }

    /// A split batch whose accelerator never ran the worker's share still has every packet
    /// sealed, by the worker after the call.
    #[test]
    fn a_split_share_the_accelerator_forgot_is_still_done() {
        let acc = Forgetful(TestAccelerator::new(Fault::None, Duration::ZERO));
        let mut d = Dispatcher::new(
            Some(Box::new(acc)),
            Settings {
                mode: Mode::Auto,
                ..Settings::default()
            },
        );
        for i in 0..20 {
            let (got, want) = seal_both(&mut d, 40, i);
            assert!(got == want, "batch {i}");
        }
        assert!(d.stats().split_batches > 0, "{:?}", d.stats());
    }

    #[test]
    fn an_error_mid_batch_is_finished_on_the_cpu_exactly_once() {
        let mut acc = TestAccelerator::new(Fault::ErrorAfter(37), Duration::ZERO);
        acc.fail_calls = 1;
        let mut d = dispatcher(Mode::On, acc, Duration::from_millis(20));
        let (got, want) = seal_both(&mut d, 100, 1);
        assert!(got == want, "a packet was lost or sealed twice");
        let s = d.stats().clone();
        assert_eq!((s.gpu_errors, s.fallback_jobs), (1, 63));
        assert!(!s.gpu_healthy);
        assert_eq!(s.last_error.as_deref(), Some("injected error"));
        assert_eq!(s.out_because, s.last_error);
        // The 37 it finished count as its work, the 63 after them as the CPU's.
        assert_eq!((s.batches[0], s.bytes[0]), ([1, 1], [63 * 1408, 37 * 1408]));
        // While unhealthy, batches go to the CPU.
        let (got, want) = seal_both(&mut d, 10, 2);
        assert!(got == want);
        assert_eq!(d.stats().batches[0], [2, 1]);
        // After the back-off, a probe goes to the accelerator, which works again.
        std::thread::sleep(Duration::from_millis(30));
        let (got, want) = seal_both(&mut d, 10, 3);
        assert!(got == want);
        let s = d.stats();
        assert_eq!((s.probes, s.batches[0][1]), (1, 2));
        assert!(s.gpu_healthy);
    }

    /// A batch the accelerator declined part-way (a packet too large for it): the prefix it
    /// finished counts as its work, in batches and bytes, the rest as the CPU's, and the
    /// prefix is checked as the batch would have been — a wrong packet there is corrected and
    /// takes the accelerator out; a right prefix keeps it in.
    #[test]
    fn a_declined_batchs_finished_prefix_is_counted_and_checked() {
        for wrong in [false, true] {
            let fault = if wrong {
                Fault::WrongThenDeclineAfter(30)
            } else {
                Fault::DeclineAfter(30)
            };
            let mut acc = TestAccelerator::new(fault, Duration::ZERO);
            acc.fail_calls = 1;
            let mut d = dispatcher(Mode::On, acc, Duration::from_millis(20));
            d.set.verify_every = 1;
            let (got, want) = seal_both(&mut d, 100, 31);
            assert!(
                got == want,
                "wrong {wrong}: a packet left wrong, lost or sealed twice"
            );
            let s = d.stats().clone();
            assert_eq!(s.declined_jobs, 70, "{s:?}");
            assert_eq!(s.batches[0], [1, 1], "{s:?}");
            assert_eq!(s.bytes[0], [70 * 1408, 30 * 1408], "{s:?}");
            assert_eq!(s.verified_batches, 1, "{s:?}");
            let n = u64::from(wrong);
            assert_eq!((s.gpu_wrong_batches, s.corrected_jobs), (n, n), "{s:?}");
            assert_eq!(s.gpu_healthy, !wrong, "{s:?}");
            assert_eq!((s.gpu_errors, s.fallback_jobs), (0, 0), "{s:?}");
            if wrong {
                assert_eq!(
                    s.out_because.as_deref(),
                    Some(
                        "1 of 30 packets in a checked batch were wrong, the first: seal of a 1408-byte packet (packet 15 of 30) differs from the CPU engine's at byte 704; they were given the CPU engine's results"
                    )
                );
            }
        }
    }

    /// A batch due for a check that the accelerator declined before finishing any packet
    /// passes the check on to its next batch.
    #[test]
    fn a_check_due_on_a_batch_declined_whole_falls_to_the_next() {
        let mut acc = TestAccelerator::new(Fault::DeclineAfter(0), Duration::ZERO);
        acc.fail_calls = 1;
        let mut d = dispatcher(Mode::On, acc, Duration::from_millis(20));
        d.set.verify_every = 4;
        let (got, want) = seal_both(&mut d, 20, 41);
        assert!(got == want);
        let s = d.stats().clone();
        assert_eq!((s.declined_jobs, s.batches[0]), (20, [1, 0]), "{s:?}");
        assert_eq!(s.verified_batches, 0, "{s:?}");
        let (got, want) = seal_both(&mut d, 20, 42);
        assert!(got == want);
        let s = d.stats().clone();
        assert_eq!((s.batches[0], s.verified_batches), ([1, 1], 1), "{s:?}");
        // Then one in 4 again: the next three are not checked whole.
        for i in 0..3 {
            seal_both(&mut d, 20, 43 + i);
        }
        assert_eq!(d.stats().verified_batches, 1, "{:?}", d.stats());
    }

    #[test]
    fn a_batch_past_its_deadline_is_rerun_on_the_cpu() {
        let acc = TestAccelerator::new(Fault::HangAfter(5), Duration::ZERO);
        let mut d = dispatcher(Mode::On, acc, Duration::from_secs(5));
        let (got, want) = seal_both(&mut d, 50, 4);
        assert!(got == want);
        let s = d.stats();
        assert_eq!((s.gpu_timeouts, s.gpu_errors, s.fallback_jobs), (1, 0, 45));
    }

    #[test]
    fn a_failing_accelerator_still_passes_the_whole_suite() {
        // Every batch: the accelerator completes 3 jobs then fails; the CPU finishes.
        let acc = TestAccelerator::new(Fault::ErrorAfter(3), Duration::ZERO);
        let mut d = dispatcher(Mode::On, acc, Duration::ZERO);
        suite::gcm_vectors(&mut d);
        suite::gcm_random(&mut d, 2000, 300, 5);
        suite::lz4_round_trips(&mut d, 600, 100, 6);
        let s = d.stats();
        assert!(s.gpu_errors > 10 && s.fallback_jobs > 1000, "{s:?}");
    }

    #[test]
    fn auto_sends_most_batches_to_the_faster_path_and_keeps_measuring() {
        let acc = TestAccelerator::new(Fault::None, Duration::from_millis(2));
        let mut d = dispatcher(Mode::Auto, acc, Duration::from_secs(1));
        d.set.explore_every = 1;
        for i in 0..600 {
            seal_both(&mut d, 16, i);
        }
        let [cpu, gpu] = d.stats().batches[0];
        assert_eq!(cpu + gpu, 600);
        // Explored about once per (cost ratio) batches, never more often than that.
        assert!(
            (3..=40).contains(&gpu),
            "gpu batches {gpu}: exploration only"
        );
        let [c, g] = d.stats().ns_per_byte[0];
        assert!(g.unwrap() > c.unwrap(), "costs {c:?} {g:?}");
    }

    /// An accelerator the caller waits for is charged the checks of its batches: one exactly
    /// as fast as the CPU, every batch checked whole, costs the caller twice the CPU's time
    /// and gets exploration only.
    #[test]
    fn each_path_counts_the_time_it_spent() {
        // A GPU 2 ms slower per batch than its work: `on` sends it everything.
        let acc = TestAccelerator::new(Fault::None, Duration::from_millis(2));
        let mut d = dispatcher(Mode::On, acc, Duration::from_secs(1));
        for i in 0..5 {
            seal_both(&mut d, 8, i);
        }
        let s = d.stats();
        assert_eq!(s.batches[0], [0, 5]);
        assert!(s.nanos[0][1] >= 5 * 2_000_000, "{:?}", s.nanos);
        assert_eq!(s.nanos[0][0], 0, "{:?}", s.nanos);
        // With the GPU out, the CPU's batches are timed instead.
        d.set.mode = Mode::Auto;
        d.stats.gpu_healthy = false;
        d.retry_at = Some(Instant::now() + Duration::from_secs(60));
        seal_both(&mut d, 8, 9);
        let s = d.stats();
        assert_eq!(s.batches[0], [1, 5]);
        assert!(s.nanos[0][0] > 0, "{:?}", s.nanos);
        // A dispatcher with no accelerator reads no clock: nothing is timed.
        let mut cpu = Dispatcher::new(None, Settings::default());
        seal_both(&mut cpu, 8, 10);
        assert_eq!(cpu.stats().nanos, [[0; 2]; 4]);
    }

    #[test]
    fn auto_charges_a_waited_for_accelerator_its_checks() {
        let acc = TestAccelerator::new(Fault::None, Duration::ZERO);
        let mut d = dispatcher(Mode::Auto, acc, Duration::from_secs(1));
        d.set.verify_every = 1;
        for i in 0..300 {
            seal_both(&mut d, 32, i);
        }
        let [cpu, gpu] = d.stats().batches[0];
        assert_eq!(cpu + gpu, 300);
        assert_eq!(d.stats().verified_batches, gpu);
        assert!(gpu < 40, "gpu batches {gpu} of 300");
        let [c, g] = d.stats().ns_per_byte[0];
        assert!(g.unwrap() > 1.5 * c.unwrap(), "costs {c:?} {g:?}");
        assert_eq!(d.stats().split_batches, 0);
    }

    #[test]
    fn a_wrong_answer_in_a_checked_batch_is_corrected_and_keeps_the_gpu_out() {
        let mut acc = TestAccelerator::new(Fault::Corrupt, Duration::ZERO);
        acc.fail_calls = 1;
        let mut d = dispatcher(Mode::On, acc, Duration::from_millis(20));
        d.set.verify_every = 4;
        // The first GPU batch is checked: the wrong packet leaves with the CPU's result.
        let (got, want) = seal_both(&mut d, 100, 11);
        assert!(got == want, "a wrong packet left the dispatcher");
        let s = d.stats().clone();
        assert_eq!(
            (s.verified_batches, s.gpu_wrong_batches, s.corrected_jobs),
            (1, 1, 1)
        );
        assert_eq!((s.gpu_errors, s.gpu_timeouts, s.fallback_jobs), (0, 0, 0));
        assert!(!s.gpu_healthy);
        assert_eq!(
            s.last_error.as_deref(),
            Some(
                "1 of 100 packets in a checked batch were wrong, the first: seal of a 1408-byte packet (packet 50 of 100) differs from the CPU engine's at byte 704; they were given the CPU engine's results"
            )
        );
        // Kept out until the probe; the first batch after it is checked again.
        seal_both(&mut d, 10, 12);
        assert_eq!(d.stats().batches[0], [1, 1]);
        std::thread::sleep(Duration::from_millis(30));
        for i in 0..5 {
            let (got, want) = seal_both(&mut d, 10, 13 + i);
            assert!(got == want);
        }
        let s = d.stats();
        assert_eq!((s.probes, s.batches[0]), (1, [1, 6]));
        // Checked: the first batch, the first after the probe, and one in 4 after that.
        assert_eq!((s.verified_batches, s.gpu_wrong_batches), (3, 1));
        assert!(s.gpu_healthy);
    }

    #[test]
    fn every_operation_checked_passes_the_suite_on_an_accelerator_that_is_always_wrong() {
        let acc = TestAccelerator::new(Fault::Corrupt, Duration::ZERO);
        // Probed at once after each wrong batch: every batch runs on it and is checked.
        let mut d = dispatcher(Mode::On, acc, Duration::ZERO);
        d.set.verify_every = 1;
        suite::gcm_vectors(&mut d);
        suite::gcm_random(&mut d, 2000, 300, 14);
        suite::lz4_round_trips(&mut d, 600, 100, 15);
        let s = d.stats();
        assert_eq!(
            s.verified_batches,
            s.batches.iter().map(|b| b[1]).sum::<u64>()
        );
        assert!(s.gpu_wrong_batches > 10 && s.corrected_jobs >= s.gpu_wrong_batches);
        for op in Op::ALL {
            assert!(s.batches[op.index()][1] > 0, "{op:?} never ran on the GPU");
        }
    }

    #[test]
    fn unchecked_batches_are_not_checked() {
        let acc = TestAccelerator::new(Fault::Corrupt, Duration::ZERO);
        let mut d = dispatcher(Mode::On, acc, Duration::ZERO);
        d.set.verify_every = 0;
        let (got, want) = seal_both(&mut d, 10, 16);
        assert!(got != want, "the test accelerator did not corrupt");
        let s = d.stats();
        assert_eq!(
            (
                s.verified_batches,
                s.spot_checked_batches,
                s.rechecked_refusals
            ),
            (0, 0, 0)
        );
        let acc = TestAccelerator::new(Fault::None, Duration::ZERO);
        let mut d = dispatcher(Mode::On, acc, Duration::ZERO);
        d.set.verify_every = 4;
        for i in 0..12 {
            seal_both(&mut d, 3, 17 + i);
        }
        let s = d.stats();
        assert_eq!((s.verified_batches, s.gpu_wrong_batches), (3, 0));
        // The other nine: one packet each, and their refusals (none).
        assert_eq!((s.spot_checked_batches, s.rechecked_refusals), (9, 0));
        // Without spot checks: the whole checks and the rechecks of refusals only.
        let acc = TestAccelerator::new(Fault::RefuseAll, Duration::ZERO);
        let mut d = dispatcher(Mode::On, acc, Duration::from_secs(5));
        d.set.verify_every = 4;
        d.set.spot_check = false;
        d.since_check = [1; 4];
        let (got, want) = seal_both(&mut d, 6, 30);
        assert!(got == want, "a refused seal was lost");
        let s = d.stats();
        assert_eq!(
            (
                s.verified_batches,
                s.spot_checked_batches,
                s.rechecked_refusals
            ),
            (0, 0, 6)
        );
    }

    /// Opens `sealed` (as [`seal_both`] sealed them, 1408 bytes each) with `engine`; returns
    /// each packet's verdict and plaintext.
    fn open_with(engine: &mut dyn Engine, sealed: &[Vec<u8>]) -> Vec<(bool, Vec<u8>)> {
        let key = AeadKey::new(&[9u8; 32]);
        let mut bufs = sealed.to_vec();
        let mut jobs: Vec<OpenJob<'_>> = bufs
            .iter_mut()
            .enumerate()
            .map(|(i, buf)| OpenJob {
                key: &key,
                nonce: crate::nonce(i as u64),
                aad: &[1u8; 16],
                len: buf.len(),
                buf,
                ok: false,
            })
            .collect();
        engine.open(&mut jobs);
        jobs.iter()
            .map(|j| (j.ok, j.buf[..1408].to_vec()))
            .collect()
    }

    /// The position the `nth` spot check (from 1) of a new dispatcher picks in a batch of `n`.
    fn spot_at(nth: usize, n: usize) -> usize {
        let mut at = 0;
        (0..nth).map(|_| next_spot(&mut at, n)).last().unwrap()
    }

    #[test]
    fn spot_positions_cover_the_batch() {
        let mut at = 0;
        let mut seen = [0u32; 100];
        for _ in 0..10_000 {
            seen[next_spot(&mut at, 100)] += 1;
        }
        assert!(seen.iter().all(|&k| (60..=140).contains(&k)), "{seen:?}");
        assert_eq!(next_spot(&mut at, 1), 0);
    }

    #[test]
    fn a_gpu_turning_wrong_is_caught_by_the_next_batchs_spot_check() {
        // Right for its first (checked) batch, then every result wrong, reported as success.
        let mut acc = TestAccelerator::new(Fault::CorruptAll, Duration::ZERO);
        acc.clean_calls = 1;
        let mut d = dispatcher(Mode::On, acc, Duration::from_secs(5));
        let (got, want) = seal_both(&mut d, 100, 21);
        assert!(got == want);
        assert_eq!(d.stats().verified_batches, 1);
        // The second batch is not checked whole: its spot-checked packet is, and leaves right;
        // the others were sealed in place, so nothing is left to check them against.
        let (got, want) = seal_both(&mut d, 100, 22);
        let k = spot_at(1, 100);
        let right: Vec<usize> = (0..100).filter(|&i| got[i] == want[i]).collect();
        assert_eq!(right, [k]);
        let s = d.stats().clone();
        assert_eq!(
            (
                s.verified_batches,
                s.spot_checked_batches,
                s.gpu_wrong_batches
            ),
            (1, 1, 1)
        );
        assert_eq!(s.corrected_jobs, 1);
        assert!(!s.gpu_healthy);
        assert_eq!(
            s.last_error.unwrap(),
            format!(
                "the packet spot-checked in a batch of 100 was wrong: seal of a 1408-byte packet (packet {k} of 100) differs from the CPU engine's at byte 704; it was given the CPU engine's result"
            )
        );
        // Out of service: the next batches are the CPU's, and right.
        let (got, want) = seal_both(&mut d, 100, 23);
        assert!(got == want);
        assert_eq!(d.stats().batches[0], [1, 2]);
    }

    #[test]
    fn an_open_batch_whose_spot_check_fails_delivers_no_unchecked_plaintext() {
        let (_, sealed) = seal_both(&mut CpuEngine, 40, 25);
        let want = open_with(&mut CpuEngine, &sealed);
        let mut acc = TestAccelerator::new(Fault::CorruptAll, Duration::ZERO);
        acc.clean_calls = 1;
        let mut d = dispatcher(Mode::On, acc, Duration::from_secs(5));
        assert!(open_with(&mut d, &sealed) == want, "the first batch");
        // Every plaintext wrong, every tag "verified": the spot-checked packet gets the CPU's
        // plaintext; the others cannot be checked (decrypted in place) and are dropped.
        let got = open_with(&mut d, &sealed);
        let k = spot_at(1, 40);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            if i == k {
                assert!(g == w, "the spot-checked packet");
            } else {
                assert!(!g.0, "packet {i}: unchecked plaintext delivered");
            }
        }
        let s = d.stats();
        assert_eq!(
            (s.gpu_wrong_batches, s.corrected_jobs, s.dropped_unchecked),
            (1, 1, 39)
        );
        assert_eq!(
            s.last_error.as_deref().unwrap(),
            format!(
                "the packet spot-checked in a batch of 40 was wrong: open of a 1424-byte packet (packet {k} of 40) gives a plaintext that differs from the CPU engine's at byte 704; it was given the CPU engine's result; and the batch's 39 other verified packets were dropped, as their plaintext could not be checked"
            )
        );
    }

    /// Compresses `srcs` with `engine` twice (a batch each time); every packet must come out
    /// compressed and decompress with `lz4_flex` to its source.
    fn compress_twice(engine: &mut dyn Engine, srcs: &[Vec<u8>]) {
        for round in 0..2 {
            let mut dsts = vec![vec![0u8; crate::compress_bound(1500)]; srcs.len()];
            let mut jobs = CompressJob::batch(srcs, &mut dsts);
            engine.compress(&mut jobs);
            for (i, j) in jobs.iter().enumerate() {
                let n = j
                    .out_len
                    .unwrap_or_else(|| panic!("round {round}: packet {i} sent uncompressed"));
                let back = lz4_flex::block::decompress(&j.dst[..n], j.src.len()).unwrap();
                assert_eq!(back, j.src, "round {round}: packet {i}");
            }
        }
    }

    #[test]
    fn a_wrong_lz4_spot_check_puts_its_whole_batch_right() {
        let mut acc = TestAccelerator::new(Fault::CorruptAll, Duration::ZERO);
        acc.clean_calls = 1;
        let mut d = dispatcher(Mode::On, acc, Duration::from_secs(5));
        let srcs: Vec<Vec<u8>> = (0..40u8)
            .map(|i| format!("flow {i} row {i} ").repeat(40).into_bytes())
            .collect();
        compress_twice(&mut d, &srcs);
        let s = d.stats();
        // The first batch checked whole; the second spot-checked, found wrong, then checked
        // whole (its inputs were intact) and every packet given the CPU's block.
        assert_eq!((s.spot_checked_batches, s.verified_batches), (1, 2));
        assert_eq!((s.gpu_wrong_batches, s.corrected_jobs), (1, 40));
        let why = s.last_error.as_deref().unwrap();
        assert!(
            why.starts_with("the packet spot-checked in a batch of 40 was wrong: compress of a ")
                && why.ends_with(
                    "; the whole batch, checked then, had 39 more wrong, given the CPU engine's results"
                ),
            "{why}"
        );
    }

    #[test]
    fn a_gpu_that_stops_compressing_is_caught() {
        let mut acc = TestAccelerator::new(Fault::RefuseAll, Duration::ZERO);
        acc.clean_calls = 1;
        let mut d = dispatcher(Mode::On, acc, Duration::from_secs(5));
        let srcs: Vec<Vec<u8>> = (0..20u8)
            .map(|i| format!("row {i} status=200 OK; ").repeat(50).into_bytes())
            .collect();
        compress_twice(&mut d, &srcs);
        let s = d.stats();
        assert_eq!((s.gpu_wrong_batches, s.corrected_jobs), (1, 20));
        assert!(!s.gpu_healthy);
        let why = s.last_error.as_deref().unwrap();
        assert!(
            why.contains("): not compressed, where the CPU engine compresses it to "),
            "{why}"
        );
    }

    #[test]
    fn refused_packets_are_rechecked_and_a_gpu_refusing_right_ones_loses_none() {
        let (_, sealed) = seal_both(&mut CpuEngine, 50, 24);
        let mut want = open_with(&mut CpuEngine, &sealed);
        assert!(want.iter().all(|(ok, _)| *ok));
        // Ten tampered packets (every fifth): a right GPU refuses them; four are rechecked.
        let mut tampered = sealed.clone();
        for (i, b) in tampered.iter_mut().enumerate().filter(|(i, _)| i % 5 == 0) {
            b[1408 + i % TAG_LEN] ^= 4;
            want[i].0 = false;
        }
        let acc = TestAccelerator::new(Fault::None, Duration::ZERO);
        let mut d = dispatcher(Mode::On, acc, Duration::from_secs(5));
        open_with(&mut d, &sealed); // the first batch, checked whole
        let got = open_with(&mut d, &tampered);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.0, w.0, "packet {i}");
            assert!(!w.0 || g.1 == w.1, "packet {i}");
        }
        let s = d.stats().clone();
        assert_eq!((s.rechecked_refusals, s.gpu_wrong_batches), (4, 0));
        assert!(s.gpu_healthy);

        // A GPU that refuses everything after its first batch: each refusal rechecked once
        // one proved wrong, so every packet opens, none lost.
        let mut acc = TestAccelerator::new(Fault::RefuseAll, Duration::ZERO);
        acc.clean_calls = 1;
        let mut d = dispatcher(Mode::On, acc, Duration::from_secs(5));
        open_with(&mut d, &sealed);
        let got = open_with(&mut d, &sealed);
        let k = spot_at(1, 50);
        assert!(got.iter().zip(&want).all(|(g, w)| g.0 && g.1 == w.1));
        let s = d.stats();
        // The spot-checked packet, then the 49 other refusals.
        assert_eq!((s.rechecked_refusals, s.corrected_jobs), (49, 50));
        assert_eq!(s.gpu_wrong_batches, 1);
        assert_eq!(
            s.last_error.as_deref().unwrap(),
            format!(
                "the packet spot-checked in a batch of 50 was wrong: open of a 1424-byte packet (packet {k} of 50): tag verified false where the CPU engine says true; it was given the CPU engine's result; and 49 of the packets it refused in a batch of 50 were right, the first: open of a 1424-byte packet (packet {first} of 50): refused, but its tag verifies on the CPU engine; they were given the CPU engine's results",
                first = usize::from(k == 0)
            )
        );
    }

    #[test]
    fn a_gpu_refusing_seals_loses_none() {
        let mut acc = TestAccelerator::new(Fault::RefuseAll, Duration::ZERO);
        acc.clean_calls = 1;
        let mut d = dispatcher(Mode::On, acc, Duration::from_secs(5));
        for seed in [26, 27] {
            let (got, want) = seal_both(&mut d, 30, seed);
            assert!(got == want, "a seal was lost");
        }
        let s = d.stats();
        // The spot-checked packet, then the other 29 refusals resealed from their plaintext.
        assert_eq!((s.corrected_jobs, s.rechecked_refusals), (30, 29));
        assert!(
            s.last_error
                .as_deref()
                .unwrap()
                .contains("29 of the packets it refused in a batch of 30 were right, the first: seal of a 1408-byte packet (packet "),
            "{:?}",
            s.last_error
        );
    }

    #[test]
    fn refused_blocks_are_rechecked() {
        let mut acc = TestAccelerator::new(Fault::RefuseAll, Duration::ZERO);
        acc.clean_calls = 1;
        let mut d = dispatcher(Mode::On, acc, Duration::from_secs(5));
        let text = b"GET /index.html HTTP/1.1\r\n".repeat(30);
        let block = lz4_flex::block::compress(&text);
        let garbage = [0xf0u8, 0xff, 0xff, 1];
        // The garbage where the spot check looks: the blocks' refusals are found by the recheck.
        let g = spot_at(1, 3);
        for round in 0..2 {
            let mut srcs = [&block[..]; 3];
            srcs[g] = &garbage[..];
            let mut outs = vec![vec![0u8; 2048]; 3];
            let mut jobs = DecompressJob::batch(&srcs, &mut outs);
            d.decompress(&mut jobs);
            for (i, j) in jobs.iter().enumerate() {
                if i == g {
                    assert_eq!(j.out_len, None, "round {round}: garbage decompressed");
                } else {
                    assert_eq!(j.out_len, Some(text.len()), "round {round}, block {i}");
                    assert_eq!(&j.dst[..text.len()], &text[..]);
                }
            }
        }
        let s = d.stats();
        assert_eq!((s.spot_checked_batches, s.rechecked_refusals), (1, 3));
        assert_eq!((s.gpu_wrong_batches, s.corrected_jobs), (1, 2));
        assert!(!s.gpu_healthy);
        assert_eq!(
            s.last_error.as_deref().unwrap(),
            format!(
                "2 of the packets it refused in a batch of 3 were right, the first: decompress of a {}-byte block (packet {} of 3): refused, but the CPU engine decompresses it to {} bytes; they were given the CPU engine's results",
                block.len(),
                usize::from(g == 0),
                text.len()
            )
        );
    }

    #[test]
    fn off_never_touches_the_accelerator_and_none_means_cpu() {
        let acc = TestAccelerator::new(Fault::ErrorAfter(0), Duration::ZERO);
        let mut d = dispatcher(Mode::Off, acc, Duration::ZERO);
        let (got, want) = seal_both(&mut d, 20, 7);
        assert!(got == want);
        assert_eq!(d.stats().batches[0], [1, 0]);
        assert_eq!(d.stats().gpu_errors, 0);
        let mut d = Dispatcher::new(None, Settings::default());
        assert_eq!(d.name(), "cpu");
        seal_both(&mut d, 5, 8);
        assert!(!d.stats().gpu_healthy);
    }
}
