//! The data-plane process: turns a validated node config into ports, gateways and pinned
//! workers, then runs the control thread — signals, the metrics endpoint — until told to
//! stop. Start-up checks everything it can before starting anything, so a bad config stops
//! it with an error that names the port, and nothing is left half-started.

use std::net::TcpListener;
use std::os::fd::AsFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_queue::ArrayQueue;
use dwcp_provisioning::NodeConfig;
use dwcp_provisioning::exit::DataplaneExit;
use dwcp_provisioning::schema::{BURST_MAX, Backend, Compression, Port, PortRole};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::control::metrics::{self, Labels};
use crate::control::offload::GPU_HANG;
use crate::control::stats::{self, WorkerStats};
use crate::gateway::{Gateway, GatewayConfig, PortAddr, TxBatch};
use crate::io::PacketPort;
use crate::io::af_packet::AfPacket;
use crate::io::memory::Mailbox;
use crate::proto::tunnel::{Params, PeerSpec, Tunnel};
use crate::worker::{Reload, Worker};

/// Output frames per worker for bursts of `burst` frames (a LAN burst, a WAN burst and
/// timers).
fn tx_frames(burst: usize) -> usize {
    burst * 3
}
/// Frames another worker can hand over before they are processed locally instead.
const INBOX_FRAMES: usize = 1024;

/// The exit code that tells init the GPU hung: restart on the CPU engine
/// ([`crate::control::offload::GPU_DISABLED_ENV`]).
pub const EXIT_GPU_HUNG: i32 = DataplaneExit::GpuHung.code() as i32;

/// Watches the GPU gathering thread from a thread of its own (not the control thread, which
/// reads the GPU's state for the metrics and could block on a hung driver too): a gather
/// running for [`GPU_HANG`] makes the process tell init why and leave at once with
/// [`EXIT_GPU_HUNG`]. The workers in that gather wait for it and cannot give up (their jobs
/// are the gathering thread's until it is done), and destructors would join the stuck
/// threads, so none run; init restarts the data plane on the CPU engine.
#[expect(
    clippy::exit,
    reason = "leaving without destructors is the point: they would join the stuck threads"
)]
fn watch_gpu(watch: dwcp_kernels::gather::GatherWatch) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("dwcp-gpu-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(500));
                if let Some(why) = gpu_hang(watch.running_for()) {
                    crate::say!(warn,
                        "dwcp-dataplane: {why}; exiting (code {EXIT_GPU_HUNG}) so init restarts it without the GPU"
                    );
                    let _ = crate::control::readiness::notify_error(&why);
                    std::process::exit(EXIT_GPU_HUNG);
                }
            }
        })
        .map(drop)
}

/// Why the data plane must leave, when the GPU gathering thread has been in one gather
/// `running` long.
pub fn gpu_hang(running: Option<Duration>) -> Option<String> {
    running.filter(|d| *d >= GPU_HANG).map(|d| {
        format!(
            "the GPU hung: one batch has been in the driver for {:.1} s",
            d.as_secs_f64()
        )
    })
}

/// Why the data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The node needs exactly one LAN and one WAN port for now.
    #[error("the data plane needs exactly one LAN and one WAN port (found {lan} LAN, {wan} WAN)")]
    PortCount {
        /// LAN ports.
        lan: usize,
        /// WAN ports.
        wan: usize,
    },
    /// A backend this build cannot drive.
    #[error("port `{port}`: backend `{backend}` is not available in this build ({why})")]
    Backend {
        /// Port name.
        port: String,
        /// Backend.
        backend: &'static str,
        /// Why.
        why: &'static str,
    },
    /// DPDK could not start or open a port (the node cannot run this config).
    #[error("DPDK: {0}")]
    Dpdk(crate::io::dpdk::DpdkError),
    /// A port's interface could not be opened.
    #[error("port `{port}`: cannot open interface `{interface}`")]
    Open {
        /// Port name.
        port: String,
        /// Interface.
        interface: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The metrics address could not be bound.
    #[error("metrics: cannot listen on {addr} (is it the management address of this node?)")]
    Metrics {
        /// Address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Signals could not be set up.
    #[error("signals: {0}")]
    Signals(#[source] nix::Error),
    /// A peer's RDMA device cannot be used (the node cannot run this config).
    #[error("peer `{peer}` (transport rdma): {source}")]
    Rdma {
        /// The first RDMA peer.
        peer: String,
        /// Why.
        #[source]
        source: crate::rdma::link::LinkError,
    },
    /// RDMA peers name more than one device.
    #[error("RDMA peers use devices {0}: one RDMA device per node is supported")]
    RdmaDevices(String),
}

impl StartError {
    /// Whether the node cannot run this config at all (restarting will not help).
    pub fn cannot_run(&self) -> bool {
        matches!(
            self,
            Self::Dpdk(_) | Self::Rdma { .. } | Self::RdmaDevices(_)
        )
    }
}

/// The RDMA endpoint this node's RDMA peers share, and which peers use it (by index); `None`
/// when no peer uses RDMA.
pub fn rdma_plan(
    cfg: &NodeConfig,
) -> Result<Option<(String, crate::rdma::link::Endpoint, Vec<bool>)>, StartError> {
    let rdma: Vec<(
        &dwcp_provisioning::schema::Peer,
        &dwcp_provisioning::schema::PeerRdma,
    )> = cfg
        .tunnel
        .peers
        .iter()
        .filter(|p| p.transport == dwcp_provisioning::schema::Transport::Rdma)
        .filter_map(|p| p.rdma.as_ref().map(|r| (p, r)))
        .collect();
    let Some((first, r)) = rdma.first() else {
        return Ok(None);
    };
    let endpoint = crate::rdma::link::Endpoint {
        device: r.device.to_string(),
        port: r.port,
        gid_index: r.gid_index,
    };
    let mut devices: Vec<String> = rdma
        .iter()
        .map(|(_, r)| format!("{}:{}:{}", r.device, r.port, r.gid_index))
        .collect();
    devices.sort();
    devices.dedup();
    if devices.len() > 1 {
        return Err(StartError::RdmaDevices(devices.join(", ")));
    }
    let mask = cfg
        .tunnel
        .peers
        .iter()
        .map(|p| p.transport == dwcp_provisioning::schema::Transport::Rdma && p.rdma.is_some())
        .collect();
    Ok(Some((first.name.to_string(), endpoint, mask)))
}

/// One RDMA link per worker, or none when no peer uses RDMA.
fn rdma_links(
    cfg: &NodeConfig,
    workers: usize,
) -> Result<Vec<Option<crate::rdma::link::Link>>, StartError> {
    let Some((peer, endpoint, mask)) = rdma_plan(cfg)? else {
        return Ok((0..workers).map(|_| None).collect());
    };
    let mut links = Vec::with_capacity(workers);
    for w in 0..workers {
        let id = u8::try_from(w).unwrap_or(u8::MAX);
        let link = crate::rdma::link::Link::open(&endpoint, id, &mask).map_err(|source| {
            StartError::Rdma {
                peer: peer.clone(),
                source,
            }
        })?;
        if w == 0 {
            crate::say!(
                info,
                "dwcp-dataplane: RDMA on {} port {} GID index {}: buffers in {}, inline up to {} bytes to start",
                endpoint.device,
                endpoint.port,
                endpoint.gid_index,
                link.backing,
                link.inline_threshold()
            );
        }
        links.push(Some(link));
    }
    Ok(links)
}

fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Dpdk => "dpdk",
        Backend::AfPacket => "af_packet",
        Backend::Memory => "memory",
    }
}

/// Stable small number for a fanout group from an interface name.
fn fanout_id(name: &str) -> u16 {
    let h = name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    u16::try_from(h & 0xffff).unwrap_or(1) | 1
}

fn open_port(port: &Port, workers: usize) -> Result<Vec<Box<dyn PacketPort>>, StartError> {
    match port.backend {
        Backend::AfPacket => {
            let ifname = port
                .interface
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            let fanout = (workers > 1).then(|| fanout_id(&ifname));
            (0..workers)
                .map(|_| {
                    AfPacket::open(&ifname, fanout)
                        .map(|p| Box::new(p) as Box<dyn PacketPort>)
                        .map_err(|source| StartError::Open {
                            port: port.name.to_string(),
                            interface: ifname.clone(),
                            source,
                        })
                })
                .collect()
        }
        Backend::Dpdk => {
            let queues = u16::try_from(workers).unwrap_or(u16::MAX);
            Ok(crate::io::dpdk::open(port, queues)?
                .into_iter()
                .map(|q| Box::new(q) as Box<dyn PacketPort>)
                .collect())
        }
        Backend::Memory => Err(StartError::Backend {
            port: port.name.to_string(),
            backend: backend_name(Backend::Memory),
            why: "in-process rings exist only inside tests and benchmarks",
        }),
    }
}

impl From<crate::io::dpdk::DpdkError> for StartError {
    fn from(e: crate::io::dpdk::DpdkError) -> Self {
        Self::Dpdk(e)
    }
}

/// Tunnel parameters from the config.
pub fn params(cfg: &NodeConfig) -> Params {
    let t = &cfg.tunnel;
    Params {
        replay_window: t.replay_window,
        rekey_after: Duration::from_secs(u64::from(t.rekey_after_seconds)),
        reject_after: Duration::from_secs(u64::from(t.rekey_after_seconds) * 3 / 2 + 60),
        keepalive: (t.keepalive_seconds > 0)
            .then(|| Duration::from_secs(u64::from(t.keepalive_seconds))),
        ..Params::default()
    }
}

/// Peer specs from the config, in config order (peer index = position).
pub fn peers(cfg: &NodeConfig) -> Vec<PeerSpec> {
    cfg.tunnel
        .peers
        .iter()
        .map(|p| PeerSpec {
            public: p.public_key.0,
            psk: p
                .preshared_key
                .as_ref()
                .map_or([0; 32], |k| *k.expose_secret()),
            endpoint: p.endpoint.map(|e| e.0),
            compress: p.compression == Compression::Lz4,
        })
        .collect()
}

/// The data plane, started.
pub struct Running {
    config: NodeConfig,
    reloads: Vec<Arc<ArrayQueue<Reload>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stats: Vec<Arc<WorkerStats>>,
    /// The metrics endpoint (taken out of `self` while it runs a turn, which renders `self`).
    scrape: Option<crate::control::scrape::Server>,
    /// Its counters after its last turn.
    scrape_stats: crate::control::scrape::ScrapeStats,
    labels: (String, String, String, usize),
    offload: (&'static str, String),
    /// The GPU's latest status from NVML, sampled off the control loop.
    gpu: Option<dwcp_kernels::monitor::GpuSampler>,
    /// The thread gathering the workers' GPU batches (dropped after the workers stop).
    gather: Option<dwcp_kernels::gather::Gatherer>,
    /// DPDK ports: (config name, port id, last link state seen).
    dpdk: Vec<(String, u16, Option<bool>)>,
    /// What has been said about GPU failures.
    gpu_watch: GpuWatch,
    /// When this process started (Unix seconds): `process_start_time_seconds`, which tells a
    /// restart.
    started_unix: f64,
}

/// The GPU failures told to the operator: each worker's once, with its reason, and the GPU's
/// return on every worker.
#[derive(Debug, Default)]
struct GpuWatch {
    /// Failures logged so far, per worker.
    logged: Vec<u64>,
    /// Workers whose GPU was unhealthy when last looked at.
    unhealthy: u64,
    /// The last failure logged: worker and reason, for `status`.
    last: Option<(usize, String)>,
}

impl GpuWatch {
    /// The lines to log, given each worker's (failure count, reason) and how many of the
    /// `workers` have a healthy GPU.
    fn see(
        &mut self,
        failures: impl Iterator<Item = (u64, Option<String>)>,
        healthy: u64,
        workers: u64,
    ) -> Vec<String> {
        let mut lines = Vec::new();
        for (w, (count, reason)) in failures.enumerate() {
            if self.logged.len() <= w {
                self.logged.resize(w + 1, 0);
            }
            if count > self.logged[w] {
                let reason = reason.unwrap_or_else(|| "no reason given".into());
                lines.push(format!(
                    "dwcp-dataplane: worker {w}: GPU unhealthy ({count} failure(s) so far): {reason}; its batches run on the CPU engine until the GPU passes its start-up check again"
                ));
                self.logged[w] = count;
                self.last = Some((w, reason));
            }
        }
        let unhealthy = workers.saturating_sub(healthy);
        if unhealthy == 0 && self.unhealthy > 0 {
            lines.push(format!(
                "dwcp-dataplane: GPU healthy again on all {workers} workers"
            ));
        }
        self.unhealthy = unhealthy;
        lines
    }
}

/// Opens every port and binds the metrics address, then starts the workers.
pub fn start(cfg: &NodeConfig) -> Result<Running, StartError> {
    let (lan, wan) = lan_and_wan(cfg)?;
    let cores = &cfg.cores.dataplane;
    let workers = cores.len().clamp(1, 255);
    // Everything that can fail is done before any thread starts.
    if cfg.ports.iter().any(|p| p.backend == Backend::Dpdk) {
        crate::io::dpdk::check(cfg, &crate::io::dpdk::SysPaths::default())?;
        crate::io::dpdk::init(&crate::io::dpdk::eal_args(cfg, "dwcp"))?;
    }
    let lan_ports = open_port(lan, workers)?;
    let wan_ports = open_port(wan, workers)?;
    let mut rdma = rdma_links(cfg, workers)?.into_iter();
    // DPDK ports the control thread watches (link state) and exports (xstats).
    let dpdk_ports: Vec<(String, u16)> = [lan, wan]
        .iter()
        .filter(|p| p.backend == Backend::Dpdk)
        .filter_map(|p| {
            let name = crate::io::dpdk::device_name(p)?;
            Some((p.name.to_string(), crate::io::dpdk::port_id(&name)?))
        })
        .collect();
    let scrape = bind_metrics(cfg)?;
    let burst = usize::from(cfg.dataplane.burst).clamp(1, usize::from(BURST_MAX));
    let (tx_batches, inboxes) = frame_buffers(cfg, workers, burst)?;
    let gpu_disabled = std::env::var(crate::control::offload::GPU_DISABLED_ENV).ok();
    let offload = crate::control::offload::engines(
        &cfg.offload,
        cfg.offload.gather_core(&cfg.cores),
        workers,
        gpu_disabled.as_deref(),
    );
    crate::say!(
        info,
        "dwcp-dataplane: offload engine {}: {}",
        offload.kind,
        offload.why
    );
    let gpu_monitor = gpu_status(offload.monitor);
    let gatherer = offload.gatherer;
    if let Some(g) = &gatherer
        && let Err(e) = watch_gpu(g.watch())
    {
        crate::say!(
            warn,
            "dwcp-dataplane: WARNING: no thread watches the GPU for hangs: {e}"
        );
    }
    let shared = Shared {
        private: *cfg.tunnel.private_key.expose_secret(),
        wall: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
        epoch: Instant::now(),
        stop: Arc::new(AtomicBool::new(false)),
        stats: (0..workers)
            .map(|_| Arc::new(WorkerStats::default()))
            .collect(),
        reloads: (0..workers).map(|_| Arc::new(ArrayQueue::new(4))).collect(),
        inboxes,
        allowed: cfg
            .tunnel
            .peers
            .iter()
            .map(|p| p.allowed_prefixes.iter().map(|x| x.0).collect())
            .collect(),
        burst,
    };
    let mut engines = offload.engines.into_iter();
    let mut tx_batches = tx_batches.into_iter();
    let mut threads = Vec::with_capacity(workers);
    for (w, (lan_port, wan_port)) in lan_ports.into_iter().zip(wan_ports).enumerate() {
        let engine = engines
            .next()
            .unwrap_or_else(|| Box::new(dwcp_kernels::cpu::CpuEngine));
        let tx = tx_batches
            .next()
            .unwrap_or_else(|| TxBatch::new(tx_frames(burst)));
        let mut worker = shared.worker(cfg, w, [(lan, lan_port), (wan, wan_port)], engine, tx);
        worker.rdma = rdma.next().flatten();
        match spawn_worker(worker, w, cores.get(w).copied()) {
            Ok(t) => threads.push(t),
            Err(e) => {
                shared.stop.store(true, Ordering::Relaxed);
                for t in threads {
                    let _ = t.join();
                }
                return Err(StartError::Open {
                    port: "worker".into(),
                    interface: format!("thread {w}"),
                    source: e,
                });
            }
        }
    }
    Ok(Running {
        config: cfg.clone(),
        reloads: shared.reloads,
        stop: shared.stop,
        threads,
        stats: shared.stats,
        scrape: Some(scrape),
        scrape_stats: crate::control::scrape::ScrapeStats::default(),
        labels: (
            cfg.name.to_string(),
            lan.name.to_string(),
            wan.name.to_string(),
            workers,
        ),
        offload: (offload.kind, offload.why),
        gpu: gpu_monitor,
        gather: gatherer,
        dpdk: dpdk_ports
            .into_iter()
            .map(|(n, id)| (n, id, None))
            .collect(),
        gpu_watch: GpuWatch::default(),
        started_unix: unix_now(),
    })
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The config's one LAN port and one WAN port.
fn lan_and_wan(cfg: &NodeConfig) -> Result<(&Port, &Port), StartError> {
    let with = |role| cfg.ports.iter().filter(move |p| p.role == role);
    let (lans, wans): (Vec<&Port>, Vec<&Port>) =
        (with(PortRole::Lan).collect(), with(PortRole::Wan).collect());
    match (lans.as_slice(), wans.as_slice()) {
        (&[lan], &[wan]) => Ok((lan, wan)),
        _ => Err(StartError::PortCount {
            lan: lans.len(),
            wan: wans.len(),
        }),
    }
}

/// The metrics endpoint, bound to the management address.
fn bind_metrics(cfg: &NodeConfig) -> Result<crate::control::scrape::Server, StartError> {
    let err = |source| StartError::Metrics {
        addr: cfg.metrics.listen.to_string(),
        source,
    };
    let listener = TcpListener::bind(cfg.metrics.listen).map_err(err)?;
    crate::control::scrape::Server::new(listener).map_err(err)
}

/// Every worker's output frames and inbox, in one region of packet buffers (on a DPDK port,
/// output frames are built straight in mbufs, which the port sends without copying).
fn frame_buffers(
    cfg: &NodeConfig,
    workers: usize,
    burst: usize,
) -> Result<(Vec<TxBatch>, Vec<Arc<Mailbox>>), StartError> {
    let tx_frames = tx_frames(burst);
    let per_worker = tx_frames + INBOX_FRAMES;
    let size = crate::gateway::FRAME_MAX.max(crate::io::memory::FRAME_MAX);
    let (mut bufs, backing) =
        crate::io::pool::buffers(per_worker * workers, size).map_err(|source| {
            StartError::Open {
                port: "buffers".into(),
                interface: "memory".into(),
                source,
            }
        })?;
    crate::say!(
        info,
        "dwcp-dataplane: {} packet buffers ({} MiB) on {backing}; bursts of up to {burst} frames per poll",
        bufs.len(),
        (bufs.len() * size.div_ceil(64) * 64) >> 20
    );
    let mut mbufs = if cfg.ports.iter().any(|p| p.backend == Backend::Dpdk) {
        crate::io::dpdk::tx_buffers(tx_frames * workers, crate::gateway::FRAME_MAX, 2 * workers)?
    } else {
        Vec::new()
    };
    let mut tx_batches = Vec::with_capacity(workers);
    let mut inboxes: Vec<Arc<Mailbox>> = Vec::with_capacity(workers);
    for _ in 0..workers {
        let rest = bufs.split_off(per_worker);
        let mut mine = std::mem::replace(&mut bufs, rest);
        let inbox = mine.split_off(tx_frames);
        if mbufs.len() >= tx_frames {
            let rest = mbufs.split_off(tx_frames);
            mine = std::mem::replace(&mut mbufs, rest);
        }
        tx_batches.push(TxBatch::with_buffers(mine));
        inboxes.push(Mailbox::with_buffers(inbox));
    }
    Ok((tx_batches, inboxes))
}

/// The thread that samples the GPU's status from NVML, or a warning saying why there is none.
fn gpu_status(
    monitor: Option<Result<dwcp_kernels::monitor::GpuMonitor, dwcp_kernels::monitor::MonitorError>>,
) -> Option<dwcp_kernels::monitor::GpuSampler> {
    match monitor? {
        Ok(m) => {
            let from = m.describe();
            match dwcp_kernels::monitor::GpuSampler::start(m) {
                Ok(s) => {
                    crate::say!(info, "dwcp-dataplane: GPU status {from}");
                    Some(s)
                }
                Err(e) => {
                    crate::say!(
                        warn,
                        "dwcp-dataplane: WARNING: no GPU status: no thread to sample NVML: {e}"
                    );
                    None
                }
            }
        }
        Err(why) => {
            crate::say!(
                warn,
                "dwcp-dataplane: WARNING: no GPU status (name, memory, utilisation, temperature) for metrics and the console: {why}"
            );
            None
        }
    }
}

/// What every worker shares or gets one of.
struct Shared {
    private: [u8; 32],
    wall: Duration,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    stats: Vec<Arc<WorkerStats>>,
    reloads: Vec<Arc<ArrayQueue<Reload>>>,
    inboxes: Vec<Arc<Mailbox>>,
    allowed: Vec<Vec<ipnet::Ipv4Net>>,
    burst: usize,
}

impl Shared {
    /// Worker `w`, with its LAN and WAN ports (config and opened queue), engine and frames.
    fn worker(
        &self,
        cfg: &NodeConfig,
        w: usize,
        [(lan, lan_port), (wan, wan_port)]: [(&Port, Box<dyn PacketPort>); 2],
        engine: Box<dyn dwcp_kernels::Engine>,
        tx: TxBatch,
    ) -> Worker {
        let id = u8::try_from(w).unwrap_or(u8::MAX);
        let base = cfg.tunnel.listen_port;
        let workers = u16::try_from(self.stats.len()).unwrap_or(1);
        let port_addr = |p: &Port, io: &dyn PacketPort| PortAddr {
            mac: io.mac(),
            net: p.address.0,
            gateway: p.gateway,
            mtu: p.mtu,
        };
        let gcfg = GatewayConfig {
            lan: port_addr(lan, &*lan_port),
            wan: port_addr(wan, &*wan_port),
            udp_port: base.saturating_add(u16::from(id)),
            udp_ports: base..base.saturating_add(workers),
            allowed: self.allowed.clone(),
        };
        let tunnel = Tunnel::new(id, self.private, params(cfg), self.wall, peers(cfg));
        Worker {
            id,
            tx,
            burst: self.burst,
            lan: lan_port,
            wan: wan_port,
            gateway: Gateway::new(gcfg, tunnel, engine),
            inbox: Arc::clone(&self.inboxes[w]),
            inboxes: self.inboxes.clone(),
            stats: Arc::clone(&self.stats[w]),
            stop: Arc::clone(&self.stop),
            reloads: Arc::clone(&self.reloads[w]),
            epoch: self.epoch,
            rdma: None,
        }
    }
}

/// Starts worker `w`'s thread, pinned to `core` when given.
fn spawn_worker(
    worker: Worker,
    w: usize,
    core: Option<u16>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("dwcp-worker-{w}"))
        .spawn(move || {
            if let Some(c) = core {
                let pinned = dwcp_kernels::gather::pin_current_thread(usize::from(c));
                if !pinned {
                    crate::say!(
                        warn,
                        "dwcp-dataplane: worker {w}: could not pin to core {c}; running unpinned"
                    );
                }
            }
            worker.run();
        })
}

impl Running {
    /// Current totals over all workers.
    pub fn totals(&self) -> [u64; stats::COUNT] {
        stats::sum(self.stats.iter().map(|s| &**s))
    }

    /// Re-reads the config and applies its peers to every worker; peers whose keys did not
    /// change keep their sessions. Other changes need a restart, and are named.
    fn reload(&mut self, path: &std::path::Path) {
        let new = match dwcp_provisioning::load_file(path) {
            Ok(c) => c,
            Err(dwcp_provisioning::LoadError::Invalid(diags)) => {
                crate::say!(
                    warn,
                    "dwcp-dataplane: reload refused, the config has {} problem(s); keeping the running one:",
                    diags.len()
                );
                for d in diags {
                    crate::say!(warn, "dwcp-dataplane:   {d}");
                }
                return;
            }
            Err(e) => {
                crate::say!(warn, "dwcp-dataplane: reload refused: {e}");
                return;
            }
        };
        let old = &self.config;
        let mut needs_restart = Vec::new();
        if format!("{:?}", old.ports) != format!("{:?}", new.ports) {
            needs_restart.push("ports");
        }
        if old.cores.dataplane != new.cores.dataplane {
            needs_restart.push("cores");
        }
        if old.dataplane.burst != new.dataplane.burst {
            needs_restart.push("dataplane burst");
        }
        if old.tunnel.private_key != new.tunnel.private_key
            || old.tunnel.listen_port != new.tunnel.listen_port
        {
            needs_restart.push("tunnel key/port");
        }
        if old.metrics.listen != new.metrics.listen {
            needs_restart.push("metrics address");
        }
        let key = |p: &dwcp_provisioning::schema::Peer| p.public_key;
        let added = new
            .tunnel
            .peers
            .iter()
            .filter(|p| !old.tunnel.peers.iter().any(|o| key(o) == key(p)))
            .count();
        let removed = old
            .tunnel
            .peers
            .iter()
            .filter(|o| !new.tunnel.peers.iter().any(|p| key(o) == key(p)))
            .count();
        let allowed: Vec<Vec<ipnet::Ipv4Net>> = new
            .tunnel
            .peers
            .iter()
            .map(|p| p.allowed_prefixes.iter().map(|x| x.0).collect())
            .collect();
        for q in &self.reloads {
            let mut r = Reload {
                peers: peers(&new),
                allowed: allowed.clone(),
            };
            // A full queue means a reload is still pending: replace it with this one.
            while let Err(back) = q.push(r) {
                r = back;
                let _ = q.pop();
            }
        }
        crate::say!(
            warn,
            "dwcp-dataplane: reloaded peers: {} ({added} added, {removed} removed, others keep their sessions){}",
            new.tunnel.peers.len(),
            if needs_restart.is_empty() {
                String::new()
            } else {
                format!("; changes to {} need a restart", needs_restart.join(", "))
            }
        );
        let mut kept = new;
        // What runs is still the old ports, cores, keys and metrics address.
        kept.ports = old.ports.clone();
        kept.cores = old.cores.clone();
        kept.dataplane = old.dataplane.clone();
        kept.tunnel.private_key = old.tunnel.private_key.clone();
        kept.tunnel.listen_port = old.tunnel.listen_port;
        kept.metrics = old.metrics.clone();
        self.config = kept;
    }

    /// The offload engine label: `cpu`, `auto` or `gpu`.
    pub fn engine_kind(&self) -> &'static str {
        self.offload.0
    }

    /// One line on the offload engine for the console's `status`.
    pub fn offload_status(&self) -> String {
        let v = self.totals();
        let g = |n: &str| stats::get(&v, n);
        let sum = |path: &str| -> u64 {
            ["seal", "open", "compress", "decompress"]
                .iter()
                .map(|op| g(&format!("offload_{op}_{path}_batches")))
                .sum()
        };
        let gpu = match self.gpu.as_ref().and_then(|m| m.latest()) {
            // A sample this old says NVML has stopped answering.
            Some((s, age)) if age > 5 * dwcp_kernels::monitor::SAMPLE_PERIOD => {
                format!(" | gpu {} (sampled {} s ago)", s.line(), age.as_secs())
            }
            Some((s, _)) => format!(" | gpu {}", s.line()),
            None => String::new(),
        };
        let gathered = match self.gather.as_ref().map(|g| g.stats()) {
            Some(g) if g.gathers > 0 => format!(
                " | gathered {} batches, {:.1} packets each, largest {} from {} workers",
                g.gathers,
                g.packets as f64 / g.gathers as f64,
                g.largest,
                g.most_workers
            ),
            _ => String::new(),
        };
        let achieved = achieved_rates(&g);
        let failed = match &self.gpu_watch.last {
            Some((w, why)) => format!(" | last GPU failure (worker {w}): {why}"),
            None => String::new(),
        };
        format!(
            "offload {} ({}){gpu}{gathered} | healthy workers {}/{} | batches cpu {} gpu {} split {}{achieved} | gpu errors {} timeouts {} | fallback packets {} declined {} | checked batches {} spot-checked {} refusals rechecked {} wrong {} corrected packets {} dropped unchecked {}{failed}",
            self.offload.0,
            self.offload.1,
            g("offload_gpu_healthy"),
            self.labels.3,
            sum("cpu"),
            sum("gpu"),
            g("offload_split_batches"),
            g("offload_gpu_errors"),
            g("offload_gpu_timeouts"),
            g("offload_fallback_packets"),
            g("offload_declined_packets"),
            g("offload_gpu_checked_batches"),
            g("offload_gpu_spot_checked_batches"),
            g("offload_gpu_rechecked_refusals"),
            g("offload_gpu_wrong_batches"),
            g("offload_corrected_packets"),
            g("offload_gpu_dropped_unchecked_packets"),
        )
    }

    /// The node's state for `GET /status` ([`crate::control::status`]).
    fn status_json(&self) -> String {
        use crate::control::status::{ENV, PeerState, PortState, Status};
        let totals = self.totals();
        let g = |n: &str| stats::get(&totals, n);
        let now = unix_now();
        let ports = [PortRole::Lan, PortRole::Wan]
            .into_iter()
            .filter_map(|role| self.config.ports.iter().find(|p| p.role == role))
            .map(|p| {
                let side = if p.role == PortRole::Lan {
                    "lan"
                } else {
                    "wan"
                };
                PortState {
                    name: p.name.to_string(),
                    role: side,
                    backend: backend_name(p.backend),
                    rx_packets: g(&format!("{side}_rx_packets")),
                    tx_packets: g(&format!("{side}_tx_packets")),
                }
            })
            .collect();
        let rdma = self.rdma_rows();
        let field = |name: &str| {
            stats::PEER_FIELDS
                .iter()
                .position(|f| *f == name)
                .unwrap_or(0)
        };
        let qp = stats::RDMA_FIELDS
            .iter()
            .position(|f| *f == "qp_state")
            .unwrap_or(0);
        let peers = self
            .peer_rows()
            .into_iter()
            .map(|r| {
                let last = r.values[field("last_handshake_unix_ns")];
                let ip = u32::try_from(r.values[field("endpoint_ip")]).unwrap_or(0);
                PeerState {
                    transport: r.transport,
                    session_up: r.values[field("session_up")] == 1,
                    last_handshake_ago: (last > 0).then(|| now - last as f64 / 1e9),
                    endpoint: (ip != 0).then(|| {
                        format!(
                            "{}:{}",
                            std::net::Ipv4Addr::from(ip),
                            r.values[field("endpoint_port")]
                        )
                    }),
                    sent_bytes: r.values[field("tx_bytes")],
                    received_bytes: r.values[field("rx_bytes")],
                    rdma_qp: rdma
                        .iter()
                        .filter(|q| q.peer == r.peer)
                        .map(|q| {
                            rdma_sys::verbs::qp_state_name(
                                i32::try_from(q.values[qp]).unwrap_or(0) - 1,
                            )
                        })
                        .collect(),
                    name: r.peer,
                }
            })
            .collect();
        Status {
            node: self.labels.0.clone(),
            version: env!("CARGO_PKG_VERSION"),
            init: ENV
                .iter()
                .map(|&name| (name, std::env::var(name).ok()))
                .collect(),
            uptime_seconds: (now - self.started_unix).max(0.0),
            workers: self.labels.3,
            engine: (self.offload.0.to_owned(), self.offload.1.clone()),
            ports,
            peers,
        }
        .to_json()
    }

    /// Each configured peer's traffic and sessions, merged over the workers.
    fn peer_rows(&self) -> Vec<metrics::PeerRow> {
        self.config
            .tunnel
            .peers
            .iter()
            .take(stats::PEERS)
            .enumerate()
            .map(|(i, p)| metrics::PeerRow {
                peer: p.name.to_string(),
                transport: match p.transport {
                    dwcp_provisioning::schema::Transport::Udp => "udp",
                    dwcp_provisioning::schema::Transport::Rdma => "rdma",
                },
                values: stats::merge_peer(self.stats.iter().map(|s| s.read_peer(i))),
            })
            .collect()
    }

    /// Each worker's queue pair to each RDMA peer, as last published.
    fn rdma_rows(&self) -> Vec<metrics::RdmaPeerRow> {
        let mut rows = Vec::new();
        for (i, peer) in self.config.tunnel.peers.iter().enumerate() {
            if peer.transport != dwcp_provisioning::schema::Transport::Rdma || i >= stats::PEERS {
                continue;
            }
            for (w, s) in self.stats.iter().enumerate() {
                rows.push(metrics::RdmaPeerRow {
                    peer: peer.name.to_string(),
                    worker: w,
                    values: s.read_rdma(i),
                });
            }
        }
        rows
    }

    /// The RDMA queue pairs for the console's `status`: per peer, states and counts summed
    /// over workers; `None` without RDMA peers.
    pub fn rdma_status(&self) -> Option<String> {
        let rows = self.rdma_rows();
        if rows.is_empty() {
            return None;
        }
        let field = |name: &str| {
            stats::RDMA_FIELDS
                .iter()
                .position(|f| *f == name)
                .unwrap_or(0)
        };
        let mut peers: Vec<String> = Vec::new();
        for peer in rows.iter().map(|r| r.peer.as_str()) {
            if peers.last().is_some_and(|p| p == peer) {
                continue;
            }
            let mine: Vec<&metrics::RdmaPeerRow> = rows.iter().filter(|r| r.peer == peer).collect();
            let sum = |f: &str| mine.iter().map(|r| r.values[field(f)]).sum::<u64>();
            let states: Vec<&str> = mine
                .iter()
                .map(|r| {
                    rdma_sys::verbs::qp_state_name(
                        i32::try_from(r.values[field("qp_state")]).unwrap_or(0) - 1,
                    )
                })
                .collect();
            peers.push(format!(
                "rdma {peer}: qp {} sends {} (inline {}) receives {} errors {} reconnects {}",
                states.join(","),
                sum("sends"),
                sum("inline_sends"),
                sum("receives"),
                sum("errors_retry")
                    + sum("errors_rnr")
                    + sum("errors_flushed")
                    + sum("errors_other"),
                sum("reconnects"),
            ));
        }
        Some(peers.join(" | "))
    }

    /// The RDMA device's `hw_counters` (Soft-RoCE and mlx5 both have them).
    fn rdma_device_counters(&self) -> Vec<(String, u64)> {
        let Ok(Some((_, e, _))) = rdma_plan(&self.config) else {
            return Vec::new();
        };
        let dir = format!(
            "/sys/class/infiniband/{}/ports/{}/hw_counters",
            e.device, e.port
        );
        let mut out: Vec<(String, u64)> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|d| {
                let name = d.file_name().to_string_lossy().into_owned();
                let v = std::fs::read_to_string(d.path())
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                Some((name, v))
            })
            .collect();
        out.sort();
        out
    }

    fn metrics_text(&self) -> String {
        let (node, lan, wan, workers) = &self.labels;
        let labels = Labels {
            node,
            lan,
            wan,
            workers: *workers,
            engine: self.offload.0,
        };
        let mut text = metrics::render(&self.totals(), &labels);
        if let Some((snap, age)) = self.gpu.as_ref().and_then(|g| g.latest()) {
            text.push_str(&metrics::render_gpu(&snap, age, node));
        }
        if let Some(g) = &self.gather {
            text.push_str(&metrics::render_gather(&g.stats(), node));
        }
        text.push_str(&metrics::render_scrape(&self.scrape_stats, node));
        let hist = stats::sum_histograms(self.stats.iter().map(|s| &**s));
        text.push_str(&metrics::render_histograms(&hist, node));
        if !self.dpdk.is_empty() {
            let ports: Vec<metrics::DpdkPort> = self
                .dpdk
                .iter()
                .map(|(name, id, _)| metrics::DpdkPort {
                    name: name.clone(),
                    link: crate::io::dpdk::link(*id),
                    xstats: crate::io::dpdk::xstats(*id),
                })
                .collect();
            text.push_str(&metrics::render_dpdk(&ports, node));
        }
        text.push_str(&metrics::render_peers(&self.peer_rows(), node));
        let synced = std::env::var("DWCP_CLOCK_SYNCHRONISED").is_ok_and(|v| v == "1");
        text.push_str(&format!(
            "# HELP dwcp_clock_synchronised Whether init set the clock from a time server at boot (1) or not (0).\n\
             # TYPE dwcp_clock_synchronised gauge\n\
             dwcp_clock_synchronised{{node=\"{node}\"}} {}\n",
            u8::from(synced)
        ));
        text.push_str(&format!(
            "# HELP process_start_time_seconds Start time of the data-plane process since the Unix epoch.\n\
             # TYPE process_start_time_seconds gauge\n\
             process_start_time_seconds{{node=\"{node}\"}} {:.3}\n",
            self.started_unix
        ));
        let rdma = self.rdma_rows();
        if !rdma.is_empty() {
            text.push_str(&metrics::render_rdma(
                &rdma,
                &self.rdma_device_counters(),
                node,
            ));
        }
        text
    }

    /// Logs each worker's new GPU failures with their reason, and the GPU's return.
    fn watch_gpu_failures(&mut self) {
        if self.offload.0 == "cpu" {
            return;
        }
        let healthy = stats::get(&self.totals(), "offload_gpu_healthy");
        let failures = self.stats.iter().map(|s| s.gpu_failure());
        for line in self.gpu_watch.see(failures, healthy, self.labels.3 as u64) {
            crate::say!(info, "{line}");
        }
    }

    /// Logs DPDK link changes (and the first state seen).
    fn watch_links(&mut self) {
        for (name, id, last) in &mut self.dpdk {
            let now = crate::io::dpdk::link(*id).map(|(up, _)| up);
            if now != *last {
                match crate::io::dpdk::link(*id) {
                    Some((true, speed)) => {
                        crate::say!(info, "dwcp-dataplane: port {name}: link up, {speed} Mbit/s")
                    }
                    Some((false, _)) => crate::say!(info, "dwcp-dataplane: port {name}: link DOWN"),
                    None => crate::say!(info, "dwcp-dataplane: port {name}: link state unknown"),
                }
                *last = now;
            }
        }
    }

    /// Runs the control loop until SIGTERM or SIGINT; `signals` must already be blocked in
    /// every thread (main blocks them before starting anything).
    pub fn control(
        mut self,
        signals: &SigSet,
        config_path: &std::path::Path,
    ) -> Result<(), StartError> {
        let sfd = SignalFd::with_flags(signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(StartError::Signals)?;
        let mut last_status: Option<Instant> = None;
        loop {
            // Tell init how offload is doing, for the console's `status`.
            if last_status.is_none_or(|t| t.elapsed() >= Duration::from_secs(2)) {
                last_status = Some(Instant::now());
                self.watch_links();
                self.watch_gpu_failures();
                let mut line = self.offload_status();
                if let Some(rdma) = self.rdma_status() {
                    line.push_str(" | ");
                    line.push_str(&rdma);
                }
                let _ = crate::control::readiness::notify_status(&line);
            }
            let sig_ready = {
                let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
                if let Some(srv) = &self.scrape {
                    fds.extend(srv.fds().map(|(fd, writing)| {
                        let want = if writing {
                            PollFlags::POLLOUT
                        } else {
                            PollFlags::POLLIN
                        };
                        PollFd::new(fd, want)
                    }));
                }
                let _ = poll(&mut fds, PollTimeout::from(500u16));
                fds[0]
                    .revents()
                    .is_some_and(|r| r.contains(PollFlags::POLLIN))
            };
            // The metrics endpoint never blocks the loop (crate::control::scrape).
            if let Some(mut srv) = self.scrape.take() {
                srv.turn(Instant::now(), |page| match page {
                    crate::control::scrape::Page::Metrics => self.metrics_text(),
                    crate::control::scrape::Page::Status => self.status_json(),
                });
                self.scrape_stats = srv.stats();
                self.scrape = Some(srv);
            }
            if sig_ready {
                while let Ok(Some(info)) = sfd.read_signal() {
                    match Signal::try_from(i32::try_from(info.ssi_signo).unwrap_or(0)) {
                        Ok(Signal::SIGTERM | Signal::SIGINT) => {
                            self.stop.store(true, Ordering::Relaxed);
                            for t in self.threads {
                                let _ = t.join();
                            }
                            return Ok(());
                        }
                        Ok(Signal::SIGHUP) => self.reload(config_path),
                        _ => {}
                    }
                }
            }
        }
    }
}

/// Each engine's achieved rate per operation, its bytes over its busy time, for the console:
/// ` | achieved GB/s seal cpu 5.10 gpu 12.30, …`; empty when nothing was timed (no GPU engine:
/// a CPU-only dispatcher reads no clock per batch).
fn achieved_rates(g: &dyn Fn(&str) -> u64) -> String {
    let mut parts = Vec::new();
    for op in ["seal", "open", "compress", "decompress"] {
        let rates: Vec<String> = ["cpu", "gpu"]
            .iter()
            .filter_map(|path| {
                let ns = g(&format!("offload_{op}_{path}_ns"));
                let bytes = g(&format!("offload_{op}_{path}_bytes"));
                (ns > 0).then(|| format!("{path} {:.2}", bytes as f64 / ns as f64))
            })
            .collect();
        if !rates.is_empty() {
            parts.push(format!("{op} {}", rates.join(" ")));
        }
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" | achieved GB/s {}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(peers: &str) -> NodeConfig {
        let text = dwcp_provisioning::example::qemu_example()
            .unwrap()
            .replace(
                "[tunnel]\n",
                "[[rdma]]\ndevice = \"rxe0\"\ninterface = \"eth3\"\naddress = \"192.168.50.1/24\"\nsoft_roce = true\n\n\
                 [[rdma]]\ndevice = \"rxe1\"\ninterface = \"eth4\"\naddress = \"192.168.51.1/24\"\nsoft_roce = true\n\n[tunnel]\n",
            )
            .replace("allowed_prefixes = [\"10.2.0.0/16\"]\n", peers);
        dwcp_provisioning::check(&dwcp_provisioning::SourceFile::new("c", text))
            .unwrap_or_else(|d| panic!("{}", d[0]))
    }

    #[test]
    fn rdma_peers_share_one_device_and_a_missing_one_is_named() {
        let udp = config_with("allowed_prefixes = [\"10.2.0.0/16\"]\n");
        assert!(rdma_plan(&udp).unwrap().is_none());
        let one = config_with(
            "allowed_prefixes = [\"10.2.0.0/16\"]\ntransport = \"rdma\"\nrdma = { device = \"rxe0\", gid_index = 1 }\n",
        );
        let (peer, endpoint, mask) = rdma_plan(&one).unwrap().unwrap();
        assert_eq!(peer, "site-b");
        assert_eq!(
            (endpoint.device.as_str(), endpoint.port, endpoint.gid_index),
            ("rxe0", 1, 1)
        );
        assert_eq!(mask, vec![true]);
        // This machine has no such device (the build machines have no RDMA at all): the data
        // plane cannot run the config, and says which peer and device.
        let e = rdma_links(&one, 1).err().expect("no RDMA device here");
        assert!(e.cannot_run());
        let text = e.to_string();
        assert!(
            text.starts_with("peer `site-b` (transport rdma): RDMA device rxe0 port 1 GID index 1"),
            "{text}"
        );
        let two = config_with(
            "allowed_prefixes = [\"10.2.0.0/16\"]\ntransport = \"rdma\"\nrdma = { device = \"rxe0\", gid_index = 1 }\n\
             [[tunnel.peers]]\nname = \"site-c\"\npublic_key = \"SBiWjkSQEpzcEfv8fVnJxaWFrpbnzzV4mpLWjWODnlU=\"\n\
             allowed_prefixes = [\"10.3.0.0/16\"]\ntransport = \"rdma\"\nrdma = { device = \"rxe1\", gid_index = 1 }\n",
        );
        let e = rdma_plan(&two).unwrap_err();
        assert_eq!(
            e.to_string(),
            "RDMA peers use devices rxe0:1:1, rxe1:1:1: one RDMA device per node is supported"
        );
        assert!(e.cannot_run());
    }

    #[test]
    fn the_console_gives_each_engines_achieved_rate() {
        let v = |n: &str| match n {
            "offload_seal_cpu_bytes" => 6_000,
            "offload_seal_cpu_ns" => 1_000,
            "offload_seal_gpu_bytes" => 24_000,
            "offload_seal_gpu_ns" => 2_000,
            "offload_open_gpu_bytes" => 500,
            "offload_open_gpu_ns" => 1_000,
            _ => 0,
        };
        assert_eq!(
            achieved_rates(&v),
            " | achieved GB/s seal cpu 6.00 gpu 12.00, open gpu 0.50"
        );
        assert_eq!(achieved_rates(&|_| 0), "", "nothing timed, nothing said");
    }

    #[test]
    fn each_gpu_failure_is_told_once_and_the_return_on_every_worker() {
        let mut w = GpuWatch::default();
        let none = || [(0, None), (0, None)].into_iter();
        assert!(w.see(none(), 2, 2).is_empty());
        let why = || Some("a checked batch was wrong".to_owned());
        let lines = w.see([(0, None), (1, why())].into_iter(), 1, 2);
        assert_eq!(
            lines,
            [
                "dwcp-dataplane: worker 1: GPU unhealthy (1 failure(s) so far): a checked batch was wrong; its batches run on the CPU engine until the GPU passes its start-up check again"
            ]
        );
        // Told once; still out, nothing new.
        assert!(w.see([(0, None), (1, why())].into_iter(), 1, 2).is_empty());
        assert_eq!(w.last, Some((1, "a checked batch was wrong".to_owned())));
        // Back on both workers.
        assert_eq!(
            w.see([(0, None), (1, why())].into_iter(), 2, 2),
            ["dwcp-dataplane: GPU healthy again on all 2 workers"]
        );
        assert!(w.see([(0, None), (1, why())].into_iter(), 2, 2).is_empty());
        // A second failure on the same worker is told with its count.
        let lines = w.see([(0, None), (3, None)].into_iter(), 1, 2);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with(
                "dwcp-dataplane: worker 1: GPU unhealthy (3 failure(s) so far): no reason given;"
            ),
            "{lines:?}"
        );
    }

    #[test]
    fn only_a_gather_running_past_the_hang_limit_makes_the_data_plane_leave() {
        assert_eq!(gpu_hang(None), None);
        assert_eq!(gpu_hang(Some(Duration::from_millis(4999))), None);
        assert_eq!(
            gpu_hang(Some(Duration::from_millis(5250))).as_deref(),
            Some("the GPU hung: one batch has been in the driver for 5.2 s")
        );
    }

    /// The watchdog for real: a child process (this test binary again) whose gathering
    /// thread is stuck in a 60-second accelerator call, with a worker waiting on it, leaves
    /// with exit code 7 after [`GPU_HANG`] and says why.
    #[test]
    fn a_stuck_gather_makes_the_process_leave_with_code_7() {
        use dwcp_kernels::dispatch::Accelerator as _;
        use dwcp_kernels::dispatch::fault_injector::{Fault, TestAccelerator};
        use dwcp_kernels::gather::{GatherSettings, Gatherer};
        use dwcp_kernels::{AeadKey, SealJob, TAG_LEN};

        const CHILD: &str = "DWCP_TEST_STUCK_GATHER";
        if std::env::var_os(CHILD).is_some() {
            let acc = TestAccelerator::new(Fault::None, Duration::from_secs(60));
            let (g, mut clients) =
                Gatherer::start(Box::new(acc), 1, GatherSettings::default()).unwrap();
            watch_gpu(g.watch()).unwrap();
            let key = AeadKey::new(&[1; 32]);
            let mut buf = vec![0u8; 64 + TAG_LEN];
            let mut jobs = [SealJob {
                key: &key,
                nonce: dwcp_kernels::nonce(1),
                aad: &[],
                buf: &mut buf,
                len: 64,
                ok: false,
            }];
            let deadline = Instant::now() + Duration::from_millis(50);
            let _ = clients[0].try_seal(&mut jobs, deadline);
            panic!("the worker came back: the watchdog should have ended the process first");
        }
        let t = Instant::now();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "control::app::tests::a_stuck_gather_makes_the_process_leave_with_code_7",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .env_remove(crate::control::readiness::NOTIFY_ENV)
            .output()
            .unwrap();
        let took = t.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_GPU_HUNG), "{err}");
        assert!(
            err.contains("the GPU hung: one batch has been in the driver for 5.")
                && err.contains("exiting (code 7) so init restarts it without the GPU"),
            "{err}"
        );
        assert!(
            took >= GPU_HANG && took < GPU_HANG + Duration::from_secs(5),
            "{took:?}"
        );
    }
}
