//! The `dpdk` backend: poll-mode drivers on vfio-bound NICs (or DPDK virtual devices), through
//! `dpdk-sys`. The EAL is started once per process with arguments derived from the node config
//! (lcores = data-plane cores, hugepage directory, PCI allow-list, virtual devices, in-memory,
//! file prefix); each port gets one RX and one TX queue per worker (RSS over addresses and UDP
//! ports when there are several), its mbufs from one pool per NUMA socket; outgoing frames are
//! built in mbufs lent from a transmit pool and sent without a copy. What DPDK would
//! report as a log dump — no hugepages, a NIC not bound to vfio-pci, a PCI address that does
//! not exist — is checked first and reported as one sentence naming it.

use std::ffi::{CStr, CString, c_char, c_int};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use dpdk_sys as sys;
use dwcp_provisioning::schema::{Backend, NodeConfig, Port};

use super::PacketPort;

/// Frames per RX burst.
pub const BURST: usize = 64;
/// Frames queued for TX before a burst is forced.
const TX_QUEUE: usize = 64;
/// Descriptors per RX and TX ring.
const RING: u16 = 1024;

/// A DPDK start-up or port error, as one sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DpdkError(pub String);

fn strerror(e: c_int) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string.
    unsafe { CStr::from_ptr(sys::dwcp_strerror(e)) }
        .to_string_lossy()
        .into_owned()
}

/// Where things live, for the checks (a test points it at a fake tree).
#[derive(Clone, Debug)]
pub struct SysPaths {
    /// `/sys`.
    pub sys: std::path::PathBuf,
    /// `/proc/mounts`.
    pub mounts: std::path::PathBuf,
    /// `/dev/vfio/vfio`.
    pub vfio: std::path::PathBuf,
}

impl Default for SysPaths {
    fn default() -> Self {
        Self {
            sys: "/sys".into(),
            mounts: "/proc/mounts".into(),
            vfio: "/dev/vfio/vfio".into(),
        }
    }
}

fn dpdk_ports(cfg: &NodeConfig) -> impl Iterator<Item = (usize, &Port)> {
    cfg.ports
        .iter()
        .enumerate()
        .filter(|(_, p)| p.backend == Backend::Dpdk)
}

/// PCI vendor ID of Mellanox (NVIDIA networking): ConnectX NICs, driven by mlx5.
const MELLANOX: &str = "0x15b3";

/// Checks what DPDK needs before starting it: hugepages when the config asks for them, and
/// every PCI NIC present and bound to vfio-pci (a ConnectX to the kernel's mlx5_core).
pub fn check(cfg: &NodeConfig, paths: &SysPaths) -> Result<(), DpdkError> {
    let pcis: Vec<(usize, &Port)> = dpdk_ports(cfg).filter(|(_, p)| p.pci.is_some()).collect();
    if cfg.hugepages.count > 0 {
        let free_path = paths
            .sys
            .join("kernel/mm/hugepages/hugepages-1048576kB/free_hugepages");
        let free: u64 = std::fs::read_to_string(&free_path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if free == 0 {
            return Err(DpdkError(format!(
                "no free 1 GiB hugepages (hugepages.count = {}, {} says 0): DPDK's packet buffers need them",
                cfg.hugepages.count,
                free_path.display()
            )));
        }
        let mounts = std::fs::read_to_string(&paths.mounts).unwrap_or_default();
        if !mounts
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some("hugetlbfs"))
        {
            return Err(DpdkError(
                "no hugetlbfs mounted (init mounts one on /dev/hugepages): DPDK's packet buffers need it".into(),
            ));
        }
    }
    let mut mlx5 = 0;
    for (i, p) in &pcis {
        let Some(addr) = p.pci else { continue };
        let dev = paths.sys.join("bus/pci/devices").join(addr.to_string());
        if !dev.exists() {
            return Err(DpdkError(format!(
                "ports[{i}] (`{}`): PCI address {addr} does not exist on this machine",
                p.name
            )));
        }
        let driver = std::fs::read_link(dev.join("driver"))
            .ok()
            .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()));
        let vendor = std::fs::read_to_string(dev.join("vendor")).unwrap_or_default();
        if vendor.trim() == MELLANOX {
            // ConnectX: DPDK's mlx5 driver works beside the kernel's mlx5_core (bifurcated),
            // through rdma-core's verbs; vfio-pci cannot drive it.
            if driver.as_deref() != Some("mlx5_core") {
                return Err(DpdkError(format!(
                    "ports[{i}] (`{}`): NIC {addr} is a ConnectX (mlx5) bound to `{}`: DPDK's mlx5 driver needs the kernel's mlx5_core on it (bifurcated), never vfio-pci",
                    p.name,
                    driver.as_deref().unwrap_or("no driver")
                )));
            }
            mlx5 += 1;
            continue;
        }
        match driver.as_deref() {
            Some("vfio-pci") => {}
            Some(other) => {
                return Err(DpdkError(format!(
                    "ports[{i}] (`{}`): NIC {addr} is bound to `{other}`, not vfio-pci",
                    p.name
                )));
            }
            None => {
                return Err(DpdkError(format!(
                    "ports[{i}] (`{}`): NIC {addr} is not bound to vfio-pci (no driver)",
                    p.name
                )));
            }
        }
    }
    if pcis.len() > mlx5 && !paths.vfio.exists() {
        return Err(DpdkError(format!(
            "{} is missing: the vfio-pci module is not loaded",
            paths.vfio.display()
        )));
    }
    Ok(())
}

/// The EAL arguments for a node: lcores = the data-plane cores, the PCI allow-list (or no PCI
/// scan), the virtual devices, hugepages from `/dev/hugepages` in memory only (or none, when
/// the config reserves none), and a file prefix.
pub fn eal_args(cfg: &NodeConfig, prefix: &str) -> Vec<String> {
    let mut a = vec!["dwcp-dataplane".to_owned()];
    let cores = if cfg.cores.dataplane.is_empty() {
        "0".to_owned()
    } else {
        dwcp_provisioning::cmdline::cpu_list(&cfg.cores.dataplane)
    };
    a.extend(["-l".into(), cores]);
    if cfg.hugepages.count > 0 {
        a.extend([
            "--huge-dir".into(),
            "/dev/hugepages".into(),
            "--in-memory".into(),
        ]);
    } else {
        a.extend([
            "--no-huge".into(),
            "-m".into(),
            "512".into(),
            "--no-shconf".into(),
        ]);
    }
    let mut any_pci = false;
    for (_, p) in dpdk_ports(cfg) {
        if let Some(addr) = p.pci {
            any_pci = true;
            a.extend(["-a".into(), addr.to_string()]);
        }
        if let Some(v) = &p.vdev {
            a.extend(["--vdev".into(), v.clone()]);
        }
    }
    if !any_pci {
        a.push("--no-pci".into());
    }
    a.extend([
        "--file-prefix".into(),
        prefix.to_owned(),
        "--log-level".into(),
        "*:error".into(),
    ]);
    a
}

static EAL: OnceLock<Result<(), DpdkError>> = OnceLock::new();

/// Starts the EAL once per process with `args`; later calls return the first result. The
/// calling thread's CPU affinity is restored afterwards (the EAL pins its caller to the main
/// lcore; the control thread should not sit on a worker's core).
pub fn init(args: &[String]) -> Result<(), DpdkError> {
    EAL.get_or_init(|| {
        // The EAL keeps its runtime files under /var/run/dpdk even in memory-only mode; the
        // appliance's initramfs has /run only.
        let _ = std::fs::create_dir_all("/var/run/dpdk");
        let before = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok();
        let owned: Vec<CString> = args
            .iter()
            .map(|a| {
                CString::new(a.as_str())
                    .map_err(|_| DpdkError(format!("EAL argument {a:?} has a NUL")))
            })
            .collect::<Result<_, _>>()?;
        let mut argv: Vec<*mut c_char> = owned.iter().map(|c| c.as_ptr().cast_mut()).collect();
        let argc = c_int::try_from(argv.len()).unwrap_or(c_int::MAX);
        // SAFETY: argv holds argc valid NUL-terminated strings that outlive the call (DPDK may
        // keep pointers into them: `owned` is leaked below on success); called once.
        let r = unsafe { sys::dwcp_eal_init(argc, argv.as_mut_ptr()) };
        if let Some(set) = before {
            let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
        }
        if r < 0 {
            return Err(DpdkError(format!(
                "DPDK could not start (EAL: {}); arguments: {}",
                strerror(r),
                args.join(" ")
            )));
        }
        std::mem::forget(owned);
        Ok(())
    })
    .clone()
}

/// An mbuf pool (one per NUMA socket, shared by every port on it).
#[derive(Clone, Copy, Debug)]
struct Pool(*mut sys::rte_mempool);

// SAFETY: DPDK mempools are multi-producer/multi-consumer safe; the pointer is never freed.
unsafe impl Send for Pool {}

static POOLS: Mutex<Vec<(c_int, u32, usize)>> = Mutex::new(Vec::new());

fn pool_for(socket: c_int, data_room: u32) -> Result<Pool, DpdkError> {
    let mut pools = POOLS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(&(_, _, p)) = pools
        .iter()
        .find(|(s, d, _)| *s == socket && *d == data_room)
    {
        return Ok(Pool(p as *mut sys::rte_mempool));
    }
    let name = CString::new(format!("dwcp_mbufs_s{}_{data_room}", socket.max(0)))
        .map_err(|_| DpdkError("pool name".into()))?;
    // 8191 mbufs per worker queue pair would be generous; 16383 serves several ports.
    // SAFETY: EAL is initialised (callers go through `open`); the name is NUL-terminated.
    let p = unsafe { sys::dwcp_pool_create(name.as_ptr(), 16_383, 256, data_room, socket) };
    if p.is_null() {
        return Err(DpdkError(format!(
            "cannot create the mbuf pool on NUMA socket {socket} (out of hugepage memory?)"
        )));
    }
    pools.push((socket, data_room, p as usize));
    Ok(Pool(p))
}

/// An empty mbuf lent out as a packet buffer (its data room), so the gateway builds an
/// outgoing frame where the NIC will read it: a DPDK port sends it without a copy.
pub struct TxMbuf {
    m: *mut sys::rte_mbuf,
    data: *mut u8,
    room: usize,
    pool: Pool,
}

// SAFETY: the mbuf and its data room are owned by this handle alone.
unsafe impl Send for TxMbuf {}

impl TxMbuf {
    fn alloc(pool: Pool) -> Option<Self> {
        // SAFETY: the pool lives for the process.
        let m = unsafe { sys::dwcp_mbuf_alloc(pool.0) };
        if m.is_null() {
            return None;
        }
        let (mut len, mut segs) = (0u16, 0u16);
        // SAFETY: m is a fresh mbuf of ours; its data pointer is the start of the room.
        let data = unsafe { sys::dwcp_mbuf_data(m, &raw mut len, &raw mut segs) };
        // SAFETY: as above.
        let room = usize::from(unsafe { sys::dwcp_mbuf_tailroom(m) });
        Some(Self {
            m,
            data,
            room,
            pool,
        })
    }

    /// The data room.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `data` points to `room` bytes inside the mbuf we own.
        unsafe { std::slice::from_raw_parts(self.data, self.room) }
    }

    /// The data room, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in bytes, exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.data, self.room) }
    }

    fn into_raw(self) -> *mut sys::rte_mbuf {
        let m = self.m;
        std::mem::forget(self);
        m
    }
}

impl Drop for TxMbuf {
    fn drop(&mut self) {
        // SAFETY: the mbuf is ours and not queued anywhere.
        unsafe { sys::dwcp_mbuf_free(self.m) };
    }
}

/// `count` packet buffers of at least `size` bytes that are mbufs of a transmit pool sized for
/// `queues` TX queues besides them (they wait in the NICs' rings until sent).
pub fn tx_buffers(
    count: usize,
    size: usize,
    queues: usize,
) -> Result<Vec<crate::io::Buffer>, DpdkError> {
    let room = u32::try_from(size + 128).map_err(|_| DpdkError("TX buffer size".into()))?;
    let n = count + queues * usize::from(RING) + 1024;
    let name = CString::new(format!("dwcp_tx_{room}")).map_err(|_| DpdkError("pool".into()))?;
    // SAFETY: EAL initialised; name NUL-terminated; -1 = any NUMA socket.
    let p = unsafe {
        sys::dwcp_pool_create(
            name.as_ptr(),
            u32::try_from(n).unwrap_or(u32::MAX),
            256,
            room,
            -1,
        )
    };
    if p.is_null() {
        return Err(DpdkError(format!(
            "cannot create the transmit mbuf pool ({n} x {room} bytes; out of hugepage memory?)"
        )));
    }
    let pool = Pool(p);
    (0..count)
        .map(|_| {
            TxMbuf::alloc(pool)
                .filter(|m| m.room >= size)
                .map(crate::io::Buffer::Mbuf)
                .ok_or_else(|| DpdkError("transmit mbuf pool too small".into()))
        })
        .collect()
}

/// The DPDK device name of a config port: its PCI address, or the virtual device's name.
pub fn device_name(p: &Port) -> Option<String> {
    p.pci.map(|a| a.to_string()).or_else(|| {
        p.vdev
            .as_ref()
            .map(|v| v.split(',').next().unwrap_or_default().to_owned())
    })
}

/// Opens a configured port with `queues` queue pairs (one per worker) and starts it.
pub fn open(p: &Port, queues: u16) -> Result<Vec<DpdkQueue>, DpdkError> {
    let name = device_name(p)
        .ok_or_else(|| DpdkError(format!("port `{}` has neither `pci` nor `vdev`", p.name)))?;
    open_device(&p.name.to_string(), &name, queues, p.mtu)
}

/// Opens DPDK device `name` (a PCI address or a vdev name) as port `label` with `queues`
/// queue pairs and IP MTU `mtu`, and starts it.
pub fn open_device(
    label: &str,
    name: &str,
    queues: u16,
    mtu: u16,
) -> Result<Vec<DpdkQueue>, DpdkError> {
    let cname = CString::new(name).map_err(|_| DpdkError("device name".into()))?;
    let mut port = 0u16;
    // SAFETY: EAL initialised; cname is NUL-terminated; port is a valid out-pointer.
    if unsafe { sys::dwcp_port_by_name(cname.as_ptr(), &raw mut port) } != 0 {
        return Err(DpdkError(format!(
            "port `{label}`: DPDK has no device `{name}` (not probed: wrong address, or no driver for it)"
        )));
    }
    // SAFETY: `port` is a valid port id.
    let socket = unsafe { sys::dwcp_port_socket(port) }.max(0);
    let data_room = if mtu > 1500 { 10_240 } else { 2_304 };
    let pool = pool_for(socket, data_room)?;
    let mut err = [0 as c_char; 256];
    // SAFETY: valid port and pool; err is a writable buffer of the given length.
    let r = unsafe {
        sys::dwcp_port_setup(
            port,
            queues,
            RING,
            RING,
            pool.0,
            mtu,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if r != 0 {
        // SAFETY: the shim NUL-terminates what it writes into err (snprintf).
        let why = unsafe { CStr::from_ptr(err.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        return Err(DpdkError(format!("port `{label}` ({name}): {why}")));
    }
    let mut mac = [0u8; 6];
    // SAFETY: valid port; mac has 6 bytes.
    unsafe { sys::dwcp_port_mac(port, mac.as_mut_ptr()) };
    Ok((0..queues)
        .map(|q| DpdkQueue {
            port,
            queue: q,
            pool,
            mac,
            rx: [std::ptr::null_mut(); BURST],
            tx: [std::ptr::null_mut(); TX_QUEUE],
            tx_len: 0,
            registered: false,
            tx_dropped: 0,
        })
        .collect())
}

/// One worker's RX/TX queue pair on a port.
pub struct DpdkQueue {
    port: u16,
    queue: u16,
    pool: Pool,
    mac: [u8; 6],
    rx: [*mut sys::rte_mbuf; BURST],
    tx: [*mut sys::rte_mbuf; TX_QUEUE],
    tx_len: usize,
    registered: bool,
    /// Frames the device would not take at flush (freed), not yet reported by
    /// [`PacketPort::take_dropped`].
    pub tx_dropped: u64,
}

// SAFETY: a queue pair is used by one thread at a time (the worker that owns it); the mbufs
// it holds are owned by it alone.
unsafe impl Send for DpdkQueue {}

impl DpdkQueue {
    /// The DPDK port id.
    pub fn port_id(&self) -> u16 {
        self.port
    }

    fn register(&mut self) {
        if !self.registered {
            // SAFETY: registers the calling thread with the EAL (gives it an lcore id, so the
            // mempool's per-lcore cache works); harmless if it fails.
            unsafe { sys::dwcp_thread_register() };
            self.registered = true;
        }
    }
}

impl PacketPort for DpdkQueue {
    fn rx_burst(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> usize {
        self.register();
        // Up to BURST mbufs per driver call; a larger burst takes several while they come
        // back full.
        let mut total = 0;
        while total < max {
            let want = u16::try_from((max - total).min(BURST)).unwrap_or(0);
            // SAFETY: rx has room for BURST ≥ want pointers; this thread owns the queue.
            let n = usize::from(unsafe {
                sys::dwcp_rx_burst(self.port, self.queue, self.rx.as_mut_ptr(), want)
            });
            for &m in &self.rx[..n] {
                let (mut len, mut segs) = (0u16, 0u16);
                // SAFETY: m is an mbuf the device just handed us.
                let data = unsafe { sys::dwcp_mbuf_data(m, &raw mut len, &raw mut segs) };
                if segs == 1 && !data.is_null() {
                    // SAFETY: data points to len initialised bytes inside m, alive until freed.
                    f(unsafe { std::slice::from_raw_parts(data, usize::from(len)) });
                }
            }
            if n > 0 {
                // SAFETY: the n mbufs are ours and no longer referenced.
                unsafe {
                    sys::dwcp_mbuf_free_bulk(self.rx.as_mut_ptr(), u32::try_from(n).unwrap_or(0))
                };
            }
            total += n;
            if n < usize::from(want) {
                break;
            }
        }
        total
    }

    fn tx(&mut self, frame: &[u8]) -> bool {
        if self.tx_len == TX_QUEUE {
            self.flush();
        }
        let Ok(len) = u16::try_from(frame.len()) else {
            return false;
        };
        // SAFETY: the pool outlives the process.
        let m = unsafe { sys::dwcp_mbuf_alloc(self.pool.0) };
        if m.is_null() {
            return false;
        }
        // SAFETY: m is a fresh mbuf of ours.
        let dst = unsafe { sys::dwcp_mbuf_append(m, len) };
        if dst.is_null() {
            // SAFETY: m is ours, not queued.
            unsafe { sys::dwcp_mbuf_free(m) };
            return false;
        }
        // SAFETY: dst has room for len bytes inside m.
        unsafe { std::ptr::copy_nonoverlapping(frame.as_ptr(), dst, frame.len()) };
        self.tx[self.tx_len] = m;
        self.tx_len += 1;
        true
    }

    fn tx_buffer(&mut self, buf: &mut crate::io::Buffer, len: usize) -> bool {
        let crate::io::Buffer::Mbuf(lent) = buf else {
            return buf.bytes().get(..len).is_some_and(|f| self.tx(f));
        };
        let Ok(n) = u16::try_from(len) else {
            return false;
        };
        if len > lent.room {
            return false;
        }
        // Send this mbuf itself; the batch gets a fresh one (or, with the pool empty, the
        // frame is copied into a receive-pool mbuf like any other).
        let Some(fresh) = TxMbuf::alloc(lent.pool) else {
            return buf.bytes().get(..len).is_some_and(|f| self.tx(f));
        };
        if self.tx_len == TX_QUEUE {
            self.flush();
        }
        let crate::io::Buffer::Mbuf(sent) = std::mem::replace(buf, crate::io::Buffer::Mbuf(fresh))
        else {
            return false;
        };
        let m = sent.into_raw();
        // SAFETY: m is an empty mbuf of ours whose room holds the frame's `len` bytes already;
        // append only sets its data and packet lengths.
        if unsafe { sys::dwcp_mbuf_append(m, n) }.is_null() {
            // SAFETY: m is ours, not queued.
            unsafe { sys::dwcp_mbuf_free(m) };
            return false;
        }
        self.tx[self.tx_len] = m;
        self.tx_len += 1;
        true
    }

    fn flush(&mut self) {
        self.register();
        let mut sent = 0;
        for _ in 0..4 {
            if sent == self.tx_len {
                break;
            }
            let left = u16::try_from(self.tx_len - sent).unwrap_or(0);
            // SAFETY: tx[sent..tx_len] are our mbufs; the device takes ownership of those sent.
            sent += usize::from(unsafe {
                sys::dwcp_tx_burst(self.port, self.queue, self.tx.as_mut_ptr().add(sent), left)
            });
        }
        if sent < self.tx_len {
            let rest = self.tx_len - sent;
            self.tx_dropped += rest as u64;
            // SAFETY: the unsent mbufs are still ours.
            unsafe {
                sys::dwcp_mbuf_free_bulk(
                    self.tx.as_mut_ptr().add(sent),
                    u32::try_from(rest).unwrap_or(0),
                );
            }
        }
        self.tx_len = 0;
    }

    fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.tx_dropped)
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }
}

impl Drop for DpdkQueue {
    fn drop(&mut self) {
        if self.tx_len > 0 {
            // SAFETY: queued mbufs are ours.
            unsafe {
                sys::dwcp_mbuf_free_bulk(
                    self.tx.as_mut_ptr(),
                    u32::try_from(self.tx_len).unwrap_or(0),
                );
            }
        }
    }
}

/// The port id of a probed DPDK device.
pub fn port_id(name: &str) -> Option<u16> {
    let c = CString::new(name).ok()?;
    let mut port = 0u16;
    // SAFETY: c is NUL-terminated; port is a valid out-pointer; the EAL is initialised
    // (callers have opened the port).
    (unsafe { sys::dwcp_port_by_name(c.as_ptr(), &raw mut port) } == 0).then_some(port)
}

/// A port's link: up, and speed in Mbit/s.
pub fn link(port: u16) -> Option<(bool, u32)> {
    let (mut up, mut speed) = (0, 0u32);
    // SAFETY: valid out-pointers; an invalid port id returns an error.
    (unsafe { sys::dwcp_link(port, &raw mut up, &raw mut speed) } == 0).then_some((up != 0, speed))
}

/// A port's extended statistics (name, value).
pub fn xstats(port: u16) -> Vec<(String, u64)> {
    // SAFETY: null names asks for the count only.
    let n = unsafe { sys::dwcp_xstats(port, std::ptr::null_mut(), std::ptr::null_mut(), 0) };
    let Ok(n) = usize::try_from(n) else {
        return Vec::new();
    };
    let mut names = vec![[0 as c_char; 64]; n];
    let mut values = vec![0u64; n];
    // SAFETY: names and values have n entries each.
    let got = unsafe {
        sys::dwcp_xstats(
            port,
            names.as_mut_ptr(),
            values.as_mut_ptr(),
            u32::try_from(n).unwrap_or(0),
        )
    };
    let got = usize::try_from(got).unwrap_or(0).min(n);
    names[..got]
        .iter()
        .zip(&values[..got])
        .map(|(name, &v)| {
            // SAFETY: the shim NUL-terminates every name (snprintf into 64 bytes).
            let s = unsafe { CStr::from_ptr(name.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            (s, v)
        })
        .collect()
}

/// Whether DPDK's own forwarding tool is here (for `bench pipeline --backend dpdk`).
pub fn testpmd() -> Option<&'static Path> {
    let p = Path::new("/usr/bin/dpdk-testpmd");
    p.exists().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dwcp_provisioning::SourceFile;

    fn example() -> NodeConfig {
        let text = dwcp_provisioning::example::example().expect("example");
        dwcp_provisioning::check(&SourceFile::new("node.toml".to_owned(), text)).expect("valid")
    }

    #[test]
    fn eal_arguments_come_from_the_config() {
        let cfg = example();
        let a = eal_args(&cfg, "dwcp").join(" ");
        assert!(a.starts_with("dwcp-dataplane -l 1-3 "), "{a}");
        assert!(a.contains("--huge-dir /dev/hugepages --in-memory"), "{a}");
        assert!(a.contains("-a 0000:03:00.0 -a 0000:03:00.1"), "{a}");
        assert!(
            !a.contains("--no-pci") && a.contains("--file-prefix dwcp"),
            "{a}"
        );
        let mut cfg = cfg;
        cfg.hugepages.count = 0;
        for p in &mut cfg.ports {
            p.pci = None;
            p.vdev = Some(format!("net_null{},x=1", p.name.to_string().len()));
        }
        let a = eal_args(&cfg, "t").join(" ");
        assert!(a.contains("--no-huge -m 512 --no-shconf"), "{a}");
        assert!(
            a.contains("--vdev net_null4,x=1") && a.contains("--no-pci"),
            "{a}"
        );
        assert_eq!(device_name(&cfg.ports[0]).as_deref(), Some("net_null4"));
    }

    /// A fake /sys with the example's two NICs, both bound to vfio-pci, and free hugepages.
    fn fake(dir: &Path) -> SysPaths {
        let sys = dir.join("sys");
        let hp = sys.join("kernel/mm/hugepages/hugepages-1048576kB");
        std::fs::create_dir_all(&hp).unwrap();
        std::fs::write(hp.join("free_hugepages"), "2\n").unwrap();
        let drivers = sys.join("bus/pci/drivers");
        for d in ["vfio-pci", "ixgbe"] {
            std::fs::create_dir_all(drivers.join(d)).unwrap();
        }
        for addr in ["0000:03:00.0", "0000:03:00.1"] {
            let dev = sys.join("bus/pci/devices").join(addr);
            std::fs::create_dir_all(&dev).unwrap();
            std::os::unix::fs::symlink(drivers.join("vfio-pci"), dev.join("driver")).unwrap();
        }
        std::fs::write(
            dir.join("mounts"),
            "hugetlbfs /dev/hugepages hugetlbfs rw,pagesize=1024M 0 0\n",
        )
        .unwrap();
        std::fs::write(dir.join("vfio"), "").unwrap();
        SysPaths {
            sys,
            mounts: dir.join("mounts"),
            vfio: dir.join("vfio"),
        }
    }

    #[test]
    fn missing_hugepages_unbound_nics_and_absent_addresses_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let paths = fake(dir.path());
        let cfg = example();
        assert_eq!(check(&cfg, &paths), Ok(()));
        // A NIC on its kernel driver.
        let dev = paths.sys.join("bus/pci/devices/0000:03:00.1");
        std::fs::remove_file(dev.join("driver")).unwrap();
        std::os::unix::fs::symlink(paths.sys.join("bus/pci/drivers/ixgbe"), dev.join("driver"))
            .unwrap();
        let e = check(&cfg, &paths).unwrap_err().0;
        assert_eq!(
            e,
            "ports[1] (`wan0`): NIC 0000:03:00.1 is bound to `ixgbe`, not vfio-pci"
        );
        // No driver at all.
        std::fs::remove_file(dev.join("driver")).unwrap();
        let e = check(&cfg, &paths).unwrap_err().0;
        assert!(e.ends_with("is not bound to vfio-pci (no driver)"), "{e}");
        // A ConnectX: DPDK's mlx5 driver needs mlx5_core on it, not vfio-pci.
        std::fs::write(dev.join("vendor"), "0x15b3\n").unwrap();
        let e = check(&cfg, &paths).unwrap_err().0;
        assert!(
            e.contains("is a ConnectX (mlx5) bound to `no driver`"),
            "{e}"
        );
        let mlx5_core = paths.sys.join("bus/pci/drivers/mlx5_core");
        std::fs::create_dir_all(&mlx5_core).unwrap();
        std::os::unix::fs::symlink(&mlx5_core, dev.join("driver")).unwrap();
        assert_eq!(check(&cfg, &paths), Ok(()));
        std::fs::remove_file(dev.join("driver")).unwrap();
        std::os::unix::fs::symlink(
            paths.sys.join("bus/pci/drivers/vfio-pci"),
            dev.join("driver"),
        )
        .unwrap();
        let e = check(&cfg, &paths).unwrap_err().0;
        assert!(e.contains("ConnectX (mlx5) bound to `vfio-pci`"), "{e}");
        std::fs::remove_file(dev.join("vendor")).unwrap();
        std::fs::remove_file(dev.join("driver")).unwrap();
        // An address that does not exist.
        std::fs::remove_dir_all(&dev).unwrap();
        let e = check(&cfg, &paths).unwrap_err().0;
        assert_eq!(
            e,
            "ports[1] (`wan0`): PCI address 0000:03:00.1 does not exist on this machine"
        );
        // No free hugepages.
        std::fs::write(
            paths
                .sys
                .join("kernel/mm/hugepages/hugepages-1048576kB/free_hugepages"),
            "0",
        )
        .unwrap();
        let e = check(&cfg, &paths).unwrap_err().0;
        assert!(
            e.starts_with("no free 1 GiB hugepages (hugepages.count = "),
            "{e}"
        );
    }
}
