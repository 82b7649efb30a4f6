//! The node configuration (`dwcp.toml`): every field an appliance node reads, with its default.
//!
//! These types are the one source of truth: the structural checker, the field reference
//! (`dwcp config docs`) and the typed value init and the data plane use all come from them.
//! Doc comments here are the operator's documentation; keep them exact.

use std::net::{Ipv4Addr, SocketAddrV4};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::{
    Endpoint, IfName, InterfaceAddress, Ipv4Prefix, MacAddress, NodeName, PciAddress, PresharedKey,
    PrivateKey, PublicKey, SyslogRemote,
};

/// Lowest MTU accepted on a data port (IPv4's minimum reassembly size).
pub const MTU_MIN: u16 = 576;
/// Highest MTU accepted on a data port (jumbo frames).
pub const MTU_MAX: u16 = 9216;
/// Highest CPU number accepted in core lists.
pub const CORE_MAX: u16 = 4095;
/// Most RX or TX queues per port.
pub const QUEUES_MAX: u16 = 64;
/// Smallest anti-replay window, in messages.
pub const REPLAY_WINDOW_MIN: u32 = 2048;
/// Largest anti-replay window, in messages.
pub const REPLAY_WINDOW_MAX: u32 = 4096;
/// Largest offload batch, in packets.
pub const MAX_BATCH_MAX: u32 = 65536;
/// Largest offload batching delay, in microseconds.
pub const MAX_DELAY_US_MAX: u32 = 10_000;
/// Most frames a worker takes from a port per poll.
pub const BURST_MAX: u16 = 256;

/// One appliance node's configuration.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's name: shown on the console, in metrics labels and in logs. One DNS label.
    pub name: NodeName,
    /// How much the data plane and init log: `error`, `warn`, `info`, `debug` or `trace`.
    #[serde(default)]
    pub log_level: LogLevel,
    /// The management interface: the node's only kernel-owned network, for metrics and
    /// operators. Data ports are never used for management.
    pub management: Management,
    /// Which CPU cores do what. A core is in at most one list.
    pub cores: Cores,
    /// 1 GiB hugepages reserved at boot for packet buffers.
    #[serde(default)]
    pub hugepages: Hugepages,
    /// Boot settings that end up on the kernel command line.
    #[serde(default)]
    pub boot: Boot,
    /// The data ports: LAN ports face the site's hosts, WAN ports carry the tunnel.
    /// At least one of each.
    pub ports: Vec<Port>,
    /// RDMA devices (RoCEv2) for peers with `transport = "rdma"`: Soft-RoCE that init creates
    /// on a kernel-owned NIC, or a ConnectX (mlx5) port. None: no RDMA.
    #[serde(default)]
    pub rdma: Vec<RdmaDevice>,
    /// The DWCP tunnel: this node's key and its peers.
    pub tunnel: Tunnel,
    /// How the data-plane workers poll.
    #[serde(default)]
    pub dataplane: Dataplane,
    /// GPU offload of encryption and compression.
    #[serde(default)]
    pub offload: Offload,
    /// The Prometheus metrics endpoint.
    pub metrics: Metrics,
    /// Where log lines go besides the console.
    #[serde(default)]
    pub logging: Logging,
    /// Where the clock comes from.
    #[serde(default)]
    pub time: Time,
}

/// Time keeping.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Time {
    /// SNTP servers on the management network, `IPv4:PORT` (usually port 123), asked in
    /// order at boot before the data plane starts; the clock is stepped from the first good
    /// answer. None: the clock stays as the hardware had it (said on the console).
    #[serde(default)]
    pub servers: Vec<Endpoint>,
}

/// Log shipping.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    /// A syslog collector on the management network, `udp://IPv4:PORT` or `tcp://IPv4:PORT`:
    /// init's and the data plane's lines go there as RFC 5424 syslog (at most 100 lines a
    /// second each; the console keeps every line). None: the console only.
    #[serde(default)]
    pub remote: Option<SyslogRemote>,
}

/// Log verbosity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// Normal operation: start-up facts, peers coming and going.
    #[default]
    Info,
    /// Detail for diagnosing a problem.
    Debug,
    /// Everything; slow.
    Trace,
}

/// The management interface.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Management {
    /// Select the interface by MAC address (stable across reboots). Exactly one of `mac` and
    /// `interface` is given.
    #[serde(default)]
    pub mac: Option<MacAddress>,
    /// Select the interface by kernel name, e.g. `eno1`. Exactly one of `mac` and `interface`
    /// is given.
    #[serde(default)]
    pub interface: Option<IfName>,
    /// Static address with prefix length, e.g. `192.0.2.10/24`.
    pub address: InterfaceAddress,
    /// Default gateway for management traffic; must be on the management network. None: only
    /// the local network is reachable.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
}

/// CPU core assignment.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cores {
    /// Cores for init, the control thread, interrupts and the kernel. At least one.
    pub housekeeping: Vec<u16>,
    /// Cores for data-plane workers, one worker each, isolated from the kernel scheduler.
    /// At least one.
    #[schemars(inner(range(max = 4095)))]
    pub dataplane: Vec<u16>,
}

/// The data-plane workers' polling.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dataplane {
    /// Most frames a worker takes from a port per poll, 1 to 256. Each burst's messages are
    /// sealed (and opened, compressed, decompressed) in one engine batch, so a larger burst
    /// spreads a GPU's fixed cost per batch over more packets (`dwcp bench offload` prints
    /// that cost: its small-batch rows); a poll takes what has arrived, so bursts are short
    /// under light load whatever the setting. On the CPU engine alone larger bursts cost a
    /// little (more packets than the caches hold; `dwcp-dataplane bench pipeline --burst N`
    /// measures it). Output buffers per worker: three bursts.
    #[serde(default = "Dataplane::default_burst")]
    #[schemars(range(min = 1, max = 256))]
    pub burst: u16,
}

impl Dataplane {
    fn default_burst() -> u16 {
        32
    }
}

impl Default for Dataplane {
    fn default() -> Self {
        Self {
            burst: Self::default_burst(),
        }
    }
}

/// Hugepage reservation.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hugepages {
    /// Number of 1 GiB pages to reserve in all. 0 runs the data plane on regular pages
    /// (slower; said loudly at start-up).
    #[serde(default = "Hugepages::default_count")]
    #[schemars(range(max = 1024))]
    pub count: u32,
    /// Pages per NUMA node, node 0 first. When given, the counts must add up to `count`.
    /// Empty: the kernel spreads `count` over the nodes.
    #[serde(default)]
    #[schemars(inner(range(max = 1024)))]
    pub per_numa_node: Vec<u32>,
    /// `required`: fewer pages than asked keeps the data plane down (safe mode).
    /// `best-effort`: run with what was obtained and say so.
    #[serde(default)]
    pub policy: HugepagePolicy,
}

impl Hugepages {
    fn default_count() -> u32 {
        2
    }
}

impl Default for Hugepages {
    fn default() -> Self {
        Self {
            count: Self::default_count(),
            per_numa_node: Vec::new(),
            policy: HugepagePolicy::default(),
        }
    }
}

/// What to do when fewer hugepages are obtained than asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HugepagePolicy {
    /// Keep the data plane down until the full count is obtained.
    Required,
    /// Run with what was obtained, with a warning.
    #[default]
    BestEffort,
}

/// Settings for the kernel command line written by provisioning.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    /// Kernel consoles, last one primary, e.g. `["tty0", "ttyS0,115200"]`. Empty: no
    /// `console=` argument (for servers whose firmware hangs on a missing serial port).
    #[serde(default = "Boot::default_console")]
    pub console: Vec<String>,
}

impl Boot {
    fn default_console() -> Vec<String> {
        vec!["ttyS0,115200".to_owned()]
    }
}

impl Default for Boot {
    fn default() -> Self {
        Self {
            console: Self::default_console(),
        }
    }
}

/// One data port.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// Port name, used in metrics and logs, e.g. `lan0`. Unique on the node.
    pub name: IfName,
    /// `lan` (faces the site's hosts) or `wan` (carries the tunnel).
    pub role: PortRole,
    /// Packet I/O backend: `dpdk` (vfio-bound NIC, needs `pci`), `af_packet` (kernel
    /// interface, needs `interface`) or `memory` (in-process, tests only).
    #[serde(default)]
    pub backend: Backend,
    /// The NIC's PCI address, e.g. `0000:03:00.0` (for `dpdk`). Unique on the node.
    #[serde(default)]
    pub pci: Option<PciAddress>,
    /// The kernel interface name (for `af_packet`). Unique on the node.
    #[serde(default)]
    pub interface: Option<IfName>,
    /// A DPDK virtual device instead of a PCI NIC (for `dpdk`), in DPDK's own device-argument
    /// form, e.g. `net_af_packet0,iface=eth1` or `net_tap0,iface=dwcp0`: for tests and
    /// benchmarks on machines without spare NICs.
    #[serde(default)]
    pub vdev: Option<String>,
    /// The port's own address with prefix length, e.g. `10.1.0.1/24`.
    pub address: InterfaceAddress,
    /// Next hop for destinations off the port's network (WAN: towards the peers' endpoints).
    /// None: destinations must be on the port's own network.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// IP MTU of the port, 576 to 9216.
    #[serde(default = "Port::default_mtu")]
    #[schemars(range(min = 576, max = 9216))]
    pub mtu: u16,
    /// Receive queues (one per worker is usual). 1 to 64.
    #[serde(default = "Port::default_queues")]
    #[schemars(range(min = 1, max = 64))]
    pub rx_queues: u16,
    /// Transmit queues. 1 to 64.
    #[serde(default = "Port::default_queues")]
    #[schemars(range(min = 1, max = 64))]
    pub tx_queues: u16,
}

impl Port {
    fn default_mtu() -> u16 {
        1500
    }
    fn default_queues() -> u16 {
        1
    }
}

/// What a data port faces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PortRole {
    /// The site's hosts: plaintext inner traffic.
    Lan,
    /// The wide-area network: DWCP tunnel traffic.
    Wan,
}

/// Packet I/O backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// DPDK poll-mode driver on a vfio-bound NIC.
    #[default]
    Dpdk,
    /// Linux AF_PACKET (TPACKET_V3) on a kernel interface.
    AfPacket,
    /// In-process rings; for tests and benchmarks.
    Memory,
}

/// An RDMA device on a kernel-owned NIC (never a data port, never bound to vfio-pci).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RdmaDevice {
    /// The RDMA device's name, e.g. `rxe0` or `mlx5_0`; peers name it in `rdma.device`.
    /// Unique on the node.
    pub device: IfName,
    /// The kernel network interface it runs on, e.g. `eth3`. Init brings it up with
    /// `address`. Unique on the node; not a data port's interface.
    pub interface: IfName,
    /// The interface's address with prefix length, e.g. `192.168.50.1/24`: RoCEv2 GIDs are
    /// made from it.
    pub address: InterfaceAddress,
    /// `true`: init creates the device as Soft-RoCE (`rdma_rxe`) on the interface, as
    /// `rdma link add DEVICE type rxe netdev INTERFACE` does. `false`: a hardware device the
    /// NIC's driver provides (ConnectX: `mlx5_ib`).
    #[serde(default)]
    pub soft_roce: bool,
}

/// The DWCP tunnel.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tunnel {
    /// UDP port the node listens on for DWCP. Workers send from this port and the ones above
    /// it (one per worker).
    #[serde(default = "Tunnel::default_listen_port")]
    #[schemars(range(min = 1))]
    pub listen_port: u16,
    /// This node's X25519 private key, base64 (`dwcp keygen`). Never logged.
    pub private_key: PrivateKey,
    /// Anti-replay window per session, in messages, 2048 to 4096.
    #[serde(default = "Tunnel::default_replay_window")]
    #[schemars(range(min = 2048, max = 4096))]
    pub replay_window: u32,
    /// Start a new handshake after this many seconds on one session key.
    #[serde(default = "Tunnel::default_rekey_after_seconds")]
    #[schemars(range(min = 10, max = 86400))]
    pub rekey_after_seconds: u32,
    /// Send a keepalive after this many idle seconds. 0: no keepalives.
    #[serde(default = "Tunnel::default_keepalive_seconds")]
    #[schemars(range(max = 3600))]
    pub keepalive_seconds: u32,
    /// The sites this node exchanges traffic with. Names, keys and allowed prefixes are unique.
    pub peers: Vec<Peer>,
}

impl Tunnel {
    fn default_listen_port() -> u16 {
        51900
    }
    fn default_replay_window() -> u32 {
        REPLAY_WINDOW_MIN
    }
    fn default_rekey_after_seconds() -> u32 {
        120
    }
    fn default_keepalive_seconds() -> u32 {
        10
    }
}

/// A peer appliance.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Peer name, used in metrics and logs. Unique on the node.
    pub name: IfName,
    /// The peer's X25519 public key, base64.
    pub public_key: PublicKey,
    /// Optional pre-shared key mixed into the handshake (defence against a future break of
    /// X25519), base64, 32 bytes. Both sides must have the same. Never logged.
    #[serde(default)]
    pub preshared_key: Option<PresharedKey>,
    /// Where to reach the peer, `IPv4:PORT`. None: wait for the peer to connect (responder
    /// only).
    #[serde(default)]
    pub endpoint: Option<Endpoint>,
    /// Inner prefixes behind the peer: traffic to them goes to this peer, and traffic from
    /// this peer must come from them. Must not overlap another peer's or a LAN port's network.
    pub allowed_prefixes: Vec<Ipv4Prefix>,
    /// `lz4`: compress a packet when that makes it smaller; `off`: never.
    #[serde(default)]
    pub compression: Compression,
    /// How data messages travel: `udp` (in UDP on the WAN port) or `rdma` (as RDMA SENDs on
    /// reliable-connected queue pairs over `rdma.device`; handshakes stay on UDP).
    #[serde(default)]
    pub transport: Transport,
    /// The local RDMA device, port and GID for `transport = "rdma"`.
    #[serde(default)]
    pub rdma: Option<PeerRdma>,
}

/// How a peer's data messages travel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// UDP over IPv4 on the WAN port.
    #[default]
    Udp,
    /// RDMA SENDs on RoCEv2 reliable-connected queue pairs.
    Rdma,
}

/// Where a peer's RDMA queue pairs live on this node.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeerRdma {
    /// One of the node's `[[rdma]]` devices, e.g. `rxe0`.
    pub device: IfName,
    /// The device's port, from 1.
    #[serde(default = "PeerRdma::default_port")]
    #[schemars(range(min = 1))]
    pub port: u8,
    /// The index of this node's RoCEv2 GID on that port (the IPv4-mapped GID of the
    /// interface's address; on Soft-RoCE usually 1). The data plane refuses to start when the
    /// index holds no GID.
    pub gid_index: u8,
}

impl PeerRdma {
    fn default_port() -> u8 {
        1
    }
}

/// Payload compression.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// LZ4 block compression, used per packet only when it shrinks it.
    #[default]
    Lz4,
    /// No compression.
    Off,
}

/// GPU offload.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Offload {
    /// `auto`: use the GPU when present and faster; `on`: prefer the GPU (CPU when it fails);
    /// `off`: CPU only.
    #[serde(default)]
    pub gpu: GpuMode,
    /// CUDA device index.
    #[serde(default)]
    #[schemars(range(max = 63))]
    pub device: u32,
    /// Most packets in one offload batch, 1 to 65536.
    #[serde(default = "Offload::default_max_batch")]
    #[schemars(range(min = 1, max = 65536))]
    pub max_batch: u32,
    /// Longest a packet waits for its batch to fill, in microseconds, 1 to 10000.
    #[serde(default = "Offload::default_max_delay_us")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_delay_us: u32,
    /// One GPU batch in this many, per operation and worker, is checked packet by packet
    /// against the CPU engine, as is the first after start-up and after each recovery; every
    /// other GPU batch has one packet checked (`spot_check`), and the first 4 packets it
    /// refused (seals, failed tags, blocks that did not decompress) re-run on the CPU. A packet the GPU got wrong leaves
    /// with the CPU's result, and the GPU gets no traffic until it passes its start-up check
    /// again. 0: no checks at all; 1: check every batch whole (the CPU then repeats all the
    /// GPU's work). 0 to 1000000.
    #[serde(default = "Offload::default_verify_every")]
    #[schemars(range(max = 1_000_000))]
    pub verify_every: u32,
    /// Whether each GPU batch not checked whole has one packet checked against the CPU
    /// engine (a GPU turning wrong for every packet is then caught on its next batch). With
    /// the data plane's 32-packet batches that repeats about 1/32 of the GPU's work on the
    /// CPU (`dwcp bench offload` prints the cores it takes); false leaves the whole checks and
    /// the rechecks of refused packets. No effect when `verify_every` is 0.
    #[serde(default = "Offload::default_spot_check")]
    pub spot_check: bool,
    /// The core for the thread that gathers the workers' GPU batches and drives the GPU: a
    /// core of its own (isolated like the data-plane cores) or a housekeeping core, never a
    /// data-plane core (a worker polls each of those). Leave out: the first housekeeping core.
    /// Used only while a GPU engine runs.
    #[serde(default)]
    #[schemars(range(max = 4095))]
    pub core: Option<u16>,
}

impl Offload {
    /// The gathering thread's core: `core`, else the first housekeeping core.
    pub fn gather_core(&self, cores: &Cores) -> Option<u16> {
        self.core.or_else(|| cores.housekeeping.first().copied())
    }

    fn default_max_batch() -> u32 {
        1024
    }
    fn default_max_delay_us() -> u32 {
        50
    }
    fn default_verify_every() -> u32 {
        64
    }
    fn default_spot_check() -> bool {
        true
    }
}

impl Default for Offload {
    fn default() -> Self {
        Self {
            gpu: GpuMode::default(),
            device: 0,
            max_batch: Self::default_max_batch(),
            max_delay_us: Self::default_max_delay_us(),
            verify_every: Self::default_verify_every(),
            spot_check: Self::default_spot_check(),
            core: None,
        }
    }
}

/// GPU use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GpuMode {
    /// Use the GPU for a batch when it is measured faster than the CPU.
    #[default]
    Auto,
    /// Always try the GPU first.
    On,
    /// Never use the GPU.
    Off,
}

/// Metrics endpoint.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Address and port of the Prometheus endpoint, `IPv4:PORT`. Must be the management
    /// address: metrics are never served on data ports.
    pub listen: SocketAddrV4,
}
