//! Dynamic batching in front of the offload engine: workers submit packets (their own
//! buffers, moved in and handed back) through lock-free per-worker queues; one batcher thread
//! gathers work from all of them until `max_batch` packets or until the oldest has waited
//! `max_delay`, runs each operation's share as one batch on the [`Dispatcher`], and returns
//! every request to its worker's completion queue in the order that worker submitted it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use crate::cuda::Op;
use crate::dispatch::Dispatcher;
use crate::{AeadKey, CompressJob, DecompressJob, Engine, OpenJob, SealJob};

/// Longest AAD a request carries inline.
pub const MAX_AAD: usize = 32;

/// One packet's work. AEAD: `buf[..len]` in, result in `buf` (see [`SealJob`]/[`OpenJob`]).
/// LZ4: `buf[..len]` in, result in `out`.
#[derive(Debug)]
pub struct Request<B> {
    /// The operation.
    pub op: Op,
    /// AEAD key (unused for LZ4).
    pub key: Option<Arc<AeadKey>>,
    /// AEAD nonce.
    pub nonce: [u8; 12],
    /// AEAD additional data, `aad[..aad_len]`.
    pub aad: [u8; MAX_AAD],
    /// Length of the AAD.
    pub aad_len: usize,
    /// Input (and AEAD output).
    pub buf: B,
    /// Input length.
    pub len: usize,
    /// LZ4 output space.
    pub out: B,
    /// Set on completion: AEAD success.
    pub ok: bool,
    /// Set on completion: LZ4 output length.
    pub out_len: Option<usize>,
    /// The submitter's tag, handed back unchanged.
    pub tag: u64,
}

/// Batching settings (`offload.max_batch`, `offload.max_delay_us`).
#[derive(Clone, Copy, Debug)]
pub struct BatchSettings {
    /// Most packets per batch.
    pub max_batch: usize,
    /// Longest the oldest gathered packet waits for more.
    pub max_delay: Duration,
    /// Queue depth per worker, each way.
    pub queue: usize,
}

struct Shared<B> {
    submit: Vec<ArrayQueue<Request<B>>>,
    done: Vec<ArrayQueue<Request<B>>>,
    stop: AtomicBool,
    batches: AtomicU64,
    packets: AtomicU64,
    largest: AtomicU64,
}

/// A worker's handle.
pub struct Client<B> {
    worker: usize,
    shared: Arc<Shared<B>>,
}

impl<B> Client<B> {
    /// Queues a request; hands it back when this worker's queue is full.
    pub fn submit(&self, r: Request<B>) -> Result<(), Request<B>> {
        self.shared.submit[self.worker].push(r)
    }

    /// The next completed request, in submission order.
    pub fn poll(&self) -> Option<Request<B>> {
        self.shared.done[self.worker].pop()
    }
}

/// Batches run, packets run, and the largest batch so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Batches (one per operation present in a gather).
    pub batches: u64,
    /// Packets.
    pub packets: u64,
    /// Largest gather, packets.
    pub largest: u64,
}

/// The batcher thread and its queues.
pub struct Batcher<B> {
    shared: Arc<Shared<B>>,
    thread: Option<JoinHandle<Dispatcher>>,
}

impl<B: AsMut<[u8]> + Send + 'static> Batcher<B> {
    /// Starts the batcher thread for `workers` workers over `engine`; returns one client per
    /// worker.
    pub fn start(
        engine: Dispatcher,
        workers: usize,
        set: BatchSettings,
    ) -> std::io::Result<(Self, Vec<Client<B>>)> {
        let shared = Arc::new(Shared {
            submit: (0..workers)
                .map(|_| ArrayQueue::new(set.queue.max(1)))
                .collect(),
            done: (0..workers)
                .map(|_| ArrayQueue::new(set.queue.max(1)))
                .collect(),
            stop: AtomicBool::new(false),
            batches: AtomicU64::new(0),
            packets: AtomicU64::new(0),
            largest: AtomicU64::new(0),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("dwcp-offload".into())
            .spawn(move || run(&s, engine, set))?;
        let clients = (0..workers)
            .map(|worker| Client {
                worker,
                shared: Arc::clone(&shared),
            })
            .collect();
        Ok((
            Self {
                shared,
                thread: Some(thread),
            },
            clients,
        ))
    }

    /// The counters.
    pub fn stats(&self) -> BatchStats {
        BatchStats {
            batches: self.shared.batches.load(Ordering::Relaxed),
            packets: self.shared.packets.load(Ordering::Relaxed),
            largest: self.shared.largest.load(Ordering::Relaxed),
        }
    }

    /// Stops the thread once the queues are drained; returns the dispatcher.
    pub fn stop(mut self) -> Option<Dispatcher> {
        self.shared.stop.store(true, Ordering::Release);
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl<B> Drop for Batcher<B> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run<B: AsMut<[u8]>>(s: &Shared<B>, mut engine: Dispatcher, set: BatchSettings) -> Dispatcher {
    let max = set.max_batch.max(1);
    let mut batch: Vec<(usize, Request<B>)> = Vec::with_capacity(max);
    let mut results: Vec<(bool, Option<usize>)> = Vec::with_capacity(max);
    let mut next_worker = 0;
    loop {
        let mut first: Option<Instant> = None;
        loop {
            let workers = s.submit.len();
            for k in 0..workers {
                let w = (next_worker + k) % workers;
                while batch.len() < max {
                    let Some(r) = s.submit[w].pop() else { break };
                    first.get_or_insert_with(Instant::now);
                    batch.push((w, r));
                }
            }
            next_worker = (next_worker + 1) % workers.max(1);
            if batch.len() >= max || first.is_some_and(|t| t.elapsed() >= set.max_delay) {
                break;
            }
            if first.is_none() {
                if s.stop.load(Ordering::Acquire) {
                    return engine;
                }
                std::thread::sleep(Duration::from_micros(20));
            } else {
                std::hint::spin_loop();
            }
        }
        s.largest.fetch_max(batch.len() as u64, Ordering::Relaxed);
        s.packets.fetch_add(batch.len() as u64, Ordering::Relaxed);
        for op in Op::ALL {
            if batch.iter().any(|(_, r)| r.op == op) {
                run_op(&mut engine, op, &mut batch, &mut results);
                s.batches.fetch_add(1, Ordering::Relaxed);
            }
        }
        for (w, mut r) in batch.drain(..) {
            // The worker polls its completions; wait for room rather than lose a packet.
            loop {
                match s.done[w].push(r) {
                    Ok(()) => break,
                    Err(back) => {
                        r = back;
                        std::thread::yield_now();
                    }
                }
            }
        }
    }
}

/// Runs `op`'s requests of the gather as one batch and writes the results back.
fn run_op<B: AsMut<[u8]>>(
    engine: &mut Dispatcher,
    op: Op,
    batch: &mut [(usize, Request<B>)],
    results: &mut Vec<(bool, Option<usize>)>,
) {
    results.clear();
    let mine = batch.iter_mut().filter(|(_, r)| r.op == op).map(|(_, r)| r);
    match op {
        Op::Seal | Op::Open => {
            let empty = AeadKey::new(&[0; 32]);
            let mut seal: Vec<SealJob<'_>> = Vec::new();
            let mut open: Vec<OpenJob<'_>> = Vec::new();
            for r in mine {
                let Request {
                    key,
                    nonce,
                    aad,
                    aad_len,
                    buf,
                    len,
                    ..
                } = r;
                let key = key.as_deref().unwrap_or(&empty);
                let aad = &aad[..(*aad_len).min(MAX_AAD)];
                let buf = buf.as_mut();
                if op == Op::Seal {
                    seal.push(SealJob {
                        key,
                        nonce: *nonce,
                        aad,
                        buf,
                        len: *len,
                        ok: false,
                    });
                } else {
                    open.push(OpenJob {
                        key,
                        nonce: *nonce,
                        aad,
                        buf,
                        len: *len,
                        ok: false,
                    });
                }
            }
            engine.seal(&mut seal);
            engine.open(&mut open);
            results.extend(seal.iter().map(|j| (j.ok, None)));
            results.extend(open.iter().map(|j| (j.ok, None)));
        }
        Op::Compress | Op::Decompress => {
            let mut comp: Vec<CompressJob<'_>> = Vec::new();
            let mut decomp: Vec<DecompressJob<'_>> = Vec::new();
            for r in mine {
                let Request { buf, len, out, .. } = r;
                let src = &buf.as_mut()[..*len];
                let dst = out.as_mut();
                if op == Op::Compress {
                    comp.push(CompressJob {
                        src,
                        dst,
                        out_len: None,
                    });
                } else {
                    decomp.push(DecompressJob {
                        src,
                        dst,
                        out_len: None,
                    });
                }
            }
            engine.compress(&mut comp);
            engine.decompress(&mut decomp);
            results.extend(comp.iter().map(|j| (j.out_len.is_some(), j.out_len)));
            results.extend(decomp.iter().map(|j| (j.out_len.is_some(), j.out_len)));
        }
    }
    let mine = batch.iter_mut().filter(|(_, r)| r.op == op).map(|(_, r)| r);
    for (r, &(ok, out_len)) in mine.zip(results.iter()) {
        r.ok = ok;
        r.out_len = out_len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TAG_LEN;
    use crate::cpu::CpuEngine;
    use crate::dispatch::Settings;

    fn request(op: Op, key: &Arc<AeadKey>, n: u64, len: usize, tag: u64) -> Request<Vec<u8>> {
        let mut buf = vec![0u8; len + TAG_LEN];
        for (i, b) in buf[..len].iter_mut().enumerate() {
            *b = u8::try_from((i as u64 + n) % 251).unwrap_or(0);
        }
        Request {
            op,
            key: Some(Arc::clone(key)),
            nonce: crate::nonce(n),
            aad: [3; MAX_AAD],
            aad_len: 16,
            buf,
            len,
            out: Vec::new(),
            ok: false,
            out_len: None,
            tag,
        }
    }

    #[test]
    fn work_from_all_workers_comes_back_in_order_and_correct() {
        let (batcher, clients) = Batcher::start(
            Dispatcher::new(None, Settings::default()),
            4,
            BatchSettings {
                max_batch: 64,
                max_delay: Duration::from_micros(200),
                queue: 1024,
            },
        )
        .expect("start");
        std::thread::scope(|s| {
            for (w, c) in clients.iter().enumerate() {
                s.spawn(move || {
                    let key = Arc::new(AeadKey::new(&[u8::try_from(w).unwrap_or(0); 32]));
                    let total = 500u64;
                    let (mut sent, mut got) = (0u64, 0u64);
                    while got < total {
                        if sent < total {
                            let r = request(
                                Op::Seal,
                                &key,
                                sent,
                                100 + usize::try_from(sent % 900).unwrap_or(0),
                                sent,
                            );
                            if c.submit(r).is_ok() {
                                sent += 1;
                            }
                        }
                        while let Some(r) = c.poll() {
                            assert_eq!(r.tag, got, "worker {w}: completion out of order");
                            assert!(r.ok);
                            let mut want = request(Op::Seal, &key, r.tag, r.len, 0);
                            CpuEngine::seal_one(&mut SealJob {
                                key: &key,
                                nonce: want.nonce,
                                aad: &want.aad[..16],
                                len: want.len,
                                buf: &mut want.buf,
                                ok: false,
                            });
                            assert!(r.buf == want.buf, "worker {w} packet {got}");
                            got += 1;
                        }
                    }
                });
            }
        });
        let st = batcher.stats();
        assert_eq!(st.packets, 2000);
        assert!(st.largest <= 64);
        assert!(st.batches < 2000, "no batching happened: {st:?}");
        assert!(batcher.stop().is_some());
    }

    #[test]
    fn a_lone_packet_leaves_after_max_delay_and_lz4_requests_work() {
        let (batcher, clients) = Batcher::start(
            Dispatcher::new(None, Settings::default()),
            1,
            BatchSettings {
                max_batch: 1024,
                max_delay: Duration::from_millis(3),
                queue: 16,
            },
        )
        .expect("start");
        let text = b"abcdabcdabcdabcdabcdabcdabcdabcdabcdabcd".repeat(10);
        let r = Request {
            op: Op::Compress,
            key: None,
            nonce: [0; 12],
            aad: [0; MAX_AAD],
            aad_len: 0,
            len: text.len(),
            buf: text.clone(),
            out: vec![0; crate::compress_bound(text.len())],
            ok: false,
            out_len: None,
            tag: 9,
        };
        let t0 = Instant::now();
        clients[0].submit(r).expect("room");
        let r = loop {
            if let Some(r) = clients[0].poll() {
                break r;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "never completed");
            std::thread::sleep(Duration::from_micros(100));
        };
        assert!(
            t0.elapsed() >= Duration::from_millis(3),
            "left before max_delay"
        );
        let n = r.out_len.expect("compressed");
        let back = lz4_flex::block::decompress(&r.out[..n], text.len()).expect("valid");
        assert_eq!(back, text);
        assert_eq!(batcher.stats().batches, 1);
    }
}
