//! The boot flow on a real machine (docs/architecture.md, "Boot flow") and init's event
//! loop: signals, the console, the power button, the data plane's readiness and its
//! supervision.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::Duration;

use dwcp_provisioning::NodeConfig;
use dwcp_provisioning::exit::GPU_DISABLED_ENV;
use dwcp_provisioning::schema::{Backend, GpuMode};
use nix::mount::{MsFlags, mount};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CpuSet, sched_setaffinity};
use nix::sys::reboot::{RebootMode, reboot, set_cad_enabled};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::time::{ClockId, clock_gettime};
use nix::unistd::Pid;

use crate::config_source::{ConfigState, discover};
use crate::console::{self, Command};
use crate::lifecycle::{Effect, Lifecycle, PlaneEnd, SafeReason};
use crate::sys::{RootedFs, SysFs};
use crate::{boot_disk, cpus, hugepages, irq, management, modules, say, vfio};

/// The data-plane binary in the image.
pub const DATAPLANE: &str = "/usr/bin/dwcp-dataplane";
/// Where init puts the validated config for the data plane.
pub const RUN_CONFIG: &str = "/run/dwcp/dwcp.toml";
/// The datagram socket the data plane sends `READY=1` to.
pub const NOTIFY_SOCKET: &str = "/run/dwcp/notify";
/// How long the data plane gets to drain on shutdown.
const DRAIN: Duration = Duration::from_secs(5);

/// Time since boot (includes the kernel's own start-up).
fn uptime() -> Duration {
    clock_gettime(ClockId::CLOCK_BOOTTIME).map_or(Duration::ZERO, Duration::from)
}

fn mount_all() {
    let mounts: [(&str, &str, &str, MsFlags, Option<&str>); 6] = [
        (
            "proc",
            "/proc",
            "proc",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None,
        ),
        (
            "sysfs",
            "/sys",
            "sysfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None,
        ),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "hugetlbfs",
            "/dev/hugepages",
            "hugetlbfs",
            MsFlags::empty(),
            Some("pagesize=1G"),
        ),
    ];
    for (src, target, fstype, flags, data) in mounts {
        let _ = std::fs::create_dir_all(target);
        if let Err(e) = mount(Some(src), target, Some(fstype), flags, data) {
            // devtmpfs may already be mounted by the kernel; hugetlbfs fails without 1G pages.
            if e != nix::errno::Errno::EBUSY {
                say!("mount {target} ({fstype}): {}", e.desc());
            }
        }
    }
}

/// Loads the image's modules, then a GPU image's NVIDIA driver; returns how the driver went.
fn load_modules() -> crate::gpu::Outcome {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = PathBuf::from("/lib/modules").join(release.trim());
    let Ok(dep) = std::fs::read_to_string(dir.join("modules.dep")) else {
        say!("modules: no {}/modules.dep, none loaded", dir.display());
        return crate::gpu::Outcome::NotInImage;
    };
    // efivarfs refuses to load (no such device) where the kernel was not booted through
    // UEFI, and is only there to read the boot loader's variables: left out then.
    let efi = Path::new("/sys/firmware/efi").exists();
    let (order, left_out): (Vec<String>, Vec<String>) =
        modules::load_order(&modules::parse_dep(&dep))
            .into_iter()
            .partition(|rel| efi || !rel.ends_with("/efivarfs.ko"));
    let (mut loaded, mut failed) = (0, Vec::new());
    for rel in &order {
        match modules::load(&dir.join(rel)) {
            modules::Loaded::Loaded | modules::Loaded::AlreadyLoaded => loaded += 1,
            modules::Loaded::NoDevice => failed.push(format!("{rel}: no such device")),
            modules::Loaded::Failed(e) => failed.push(format!("{rel}: {e}")),
        }
    }
    let note = if left_out.is_empty() {
        ""
    } else {
        " (efivarfs left out: not booted through UEFI)"
    };
    say!("modules: {loaded} of {} loaded{note}", order.len());
    for f in failed {
        say!("modules: FAILED {f}");
    }
    // A GPU image's NVIDIA driver, after the modules it needs (drm).
    let outcome = crate::gpu::bring_up(&RootedFs::new("/"), &dir);
    if outcome != crate::gpu::Outcome::NotInImage {
        say!("{}", outcome.line());
    }
    outcome
}

/// Writes the running config as the last-known-good copy on the (read-only mounted) config
/// partition, remounting it writable for the moment; `false` when the copy is already current.
fn save_last_good(text: &str) -> Result<bool, String> {
    let dir = Path::new("/").join(crate::config_source::PARTITION_MOUNT);
    let target = dir.join(crate::config_source::LAST_GOOD);
    if std::fs::read_to_string(&target).is_ok_and(|t| t == text) {
        return Ok(false);
    }
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(None::<&str>, &dir, None::<&str>, flags, None::<&str>)
        .map_err(|e| format!("remount rw: {}", e.desc()))?;
    let written = std::fs::write(&target, text).map_err(|e| e.to_string());
    nix::unistd::sync();
    let _ = mount(
        None::<&str>,
        &dir,
        None::<&str>,
        flags | MsFlags::MS_RDONLY,
        None::<&str>,
    );
    written.map(|()| true)
}

/// Mounts efivarfs when the kernel was booted through UEFI and says which disk it booted
/// from.
fn find_boot_disk(fs: &dyn SysFs, partitions: &[boot_disk::Partition]) -> boot_disk::BootDisk {
    if fs.exists("/sys/firmware/efi") {
        let flags =
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
        if let Err(e) = mount(
            Some("efivarfs"),
            boot_disk::EFIVARS,
            Some("efivarfs"),
            flags,
            None::<&str>,
        ) && e != nix::errno::Errno::EBUSY
        {
            say!("mount {} (efivarfs): {}", boot_disk::EFIVARS, e.desc());
        }
    }
    let boot = boot_disk::detect(fs, partitions);
    say!("boot disk: {boot}");
    boot
}

/// Mounts the config partition `choice` names read-only; returns its device.
fn mount_config_partition(choice: boot_disk::Choice) -> Option<String> {
    if let Some(note) = &choice.note {
        say!("config partition: {note}");
    }
    let dev = choice.dev?;
    let target = Path::new("/").join(crate::config_source::PARTITION_MOUNT);
    let _ = std::fs::create_dir_all(&target);
    let source = format!("/dev/{dev}");
    match mount(
        Some(source.as_str()),
        &target,
        Some("vfat"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("codepage=437,iocharset=iso8859-1"),
    ) {
        Ok(()) => {
            say!("config partition: /dev/{dev} mounted read-only");
            Some(dev)
        }
        Err(e) => {
            say!(
                "config partition: /dev/{dev} found but cannot be mounted ({}); ignoring it",
                e.desc()
            );
            None
        }
    }
}

/// What applying the config established, for `DWCP READY` and `status`.
#[derive(Clone, Debug, Default)]
struct Facts {
    node: String,
    hugepages_1g: u32,
    vfio_bound: Vec<String>,
    dataplane_cores: BTreeSet<u16>,
}

/// Applies the config to the machine: cores, hugepages, IRQs, vfio. Errors keep the data
/// plane down.
/// The configured cores that are not online (the GPU gathering core only when a GPU may be
/// used), as an error for the console.
fn cores_not_online(c: &NodeConfig, online: &BTreeSet<u16>) -> Option<String> {
    let mut wanted: BTreeSet<u16> = c.cores.housekeeping.iter().copied().collect();
    wanted.extend(c.cores.dataplane.iter().copied());
    if c.offload.gpu != GpuMode::Off {
        wanted.extend(c.offload.core);
    }
    let missing: Vec<String> = wanted
        .iter()
        .filter(|c| !online.contains(c))
        .map(ToString::to_string)
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "cores: {} configured but not online here (online: {})",
            missing.join(","),
            cpus::format_list(online)
        )
    })
}

fn apply(fs: &dyn SysFs, c: &NodeConfig) -> Result<Facts, Vec<String>> {
    let mut errors = Vec::new();
    let mut facts = Facts {
        node: c.name.to_string(),
        ..Facts::default()
    };
    let online = fs
        .read("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| cpus::parse_list(&s));
    let housekeeping: BTreeSet<u16> = c.cores.housekeeping.iter().copied().collect();
    facts.dataplane_cores = c.cores.dataplane.iter().copied().collect();
    match &online {
        Some(online) => errors.extend(cores_not_online(c, online)),
        None => errors.push("cores: cannot read /sys/devices/system/cpu/online".into()),
    }
    if c.hugepages.count > 0 {
        match hugepages::reserve(fs, &c.hugepages) {
            Ok(o) => {
                say!("{}", o.message);
                facts.hugepages_1g = o.obtained;
                if !o.acceptable {
                    errors.push(o.message);
                }
            }
            Err(e) => {
                let msg = format!("hugepages: {e}");
                say!("{msg}");
                if c.hugepages.policy == dwcp_provisioning::schema::HugepagePolicy::Required {
                    errors.push(msg);
                }
            }
        }
    } else {
        say!("hugepages: none configured; the data plane uses regular pages");
    }
    if errors.is_empty() {
        match irq::confine(fs, &housekeeping) {
            Ok(o) => say!(
                "irq: {} interrupts moved to housekeeping cores {}, {} fixed by the kernel",
                o.moved,
                cpus::format_list(&housekeeping),
                o.fixed
            ),
            Err(e) => say!("irq: cannot set affinity: {e}"),
        }
    }
    for port in c.ports.iter().filter(|p| p.backend == Backend::Dpdk) {
        let Some(pci) = port.pci else { continue };
        match vfio::prepare(fs, &pci.to_string()) {
            Ok(vfio::Prepared::Vfio(b)) => {
                say!(
                    "vfio: {} ({}) bound to vfio-pci, was {}, IOMMU group {}",
                    port.name,
                    b.pci,
                    b.previous_driver.as_deref().unwrap_or("unbound"),
                    b.iommu_group
                );
                facts.vfio_bound.push(b.pci);
            }
            Ok(vfio::Prepared::Bifurcated { pci }) => say!(
                "port {}: {pci} is a ConnectX (mlx5): left with mlx5_core for DPDK's bifurcated driver",
                port.name
            ),
            Err(e) => errors.push(format!("vfio: port {}: {e}", port.name)),
        }
    }
    for port in c.ports.iter().filter(|p| p.backend == Backend::AfPacket) {
        let Some(name) = &port.interface else {
            continue;
        };
        match management::link_up(fs, &name.0) {
            Ok(_) => {
                let gro = match crate::ethtool::disable_gro(&name.0) {
                    Ok(()) => "GRO off".to_owned(),
                    Err(e) => format!(
                        "GRO could not be turned off ({e}); oversized frames will be dropped as too-big"
                    ),
                };
                say!(
                    "port {}: interface {} up (af_packet), {gro}",
                    port.name,
                    name
                );
            }
            Err(e) => errors.push(format!("port {}: {e}", port.name)),
        }
    }
    for d in &c.rdma {
        match crate::rdma::bring_up(fs, d) {
            Ok(line) => say!("{line}"),
            Err(e) => errors.push(e.to_string()),
        }
    }
    setup_management(fs, c);
    if errors.is_empty() {
        Ok(facts)
    } else {
        Err(errors)
    }
}

/// Management comes up even when the data plane cannot: operators need it most then. So
/// does the loopback interface, which the kernel needs for traffic between the node's own
/// addresses (the console's `bench rdma` sends UDP from the RDMA interface's address to
/// itself).
fn setup_management(fs: &dyn SysFs, c: &NodeConfig) {
    if let Err(e) = management::link_up(fs, "lo") {
        say!("loopback: {e}");
    }
    let m = &c.management;
    let iface = match management::find(fs, m) {
        Ok(i) => i,
        Err(e) => {
            say!("management: {e}");
            return;
        }
    };
    if let Err(e) = management::configure(&iface, m) {
        say!("management: {}: {e}", iface.name);
        return;
    }
    let route = match (m.gateway, management::default_gateway(fs)) {
        (None, _) => "no gateway configured".to_owned(),
        (Some(gw), Some((dev, kgw))) if kgw == gw && dev == iface.name => {
            format!("default via {gw} (kernel route table agrees)")
        }
        (Some(gw), other) => {
            format!("WARNING default via {gw} not in the kernel route table (found {other:?})")
        }
    };
    say!("management: {} up, {}, {route}", iface.name, m.address);
}

struct Init {
    config: Option<NodeConfig>,
    config_text: String,
    source: String,
    facts: Facts,
    /// The data plane's state and what init decides about it.
    life: Lifecycle,
    notify: Option<UnixDatagram>,
    /// The EFI system partition whose loader entries say which slot is good: the boot disk's.
    esp: boot_disk::Choice,
    /// The config came from the partition: keep a last-known-good copy there after READY.
    save_last_good: bool,
    /// How init's bring-up of a GPU image's NVIDIA driver went.
    gpu_driver: crate::gpu::Outcome,
    /// In safe mode: init answers `GET /status` on the metrics address itself.
    safe_status: Option<crate::safe_status::SafeStatus>,
    /// How the clock was set at boot.
    clock: crate::sntp::Clock,
}

impl Init {
    fn enter_safe_mode(&mut self, reason: SafeReason) {
        let effects = self.life.enter_safe_mode(reason);
        self.carry_out(effects);
    }

    fn start_dataplane(&mut self) {
        let effects = self.life.start();
        self.carry_out(effects);
    }

    /// Does what the data plane's lifecycle asks, and what that leads to, in order.
    fn carry_out(&mut self, effects: Vec<Effect>) {
        let mut todo: std::collections::VecDeque<Effect> = effects.into();
        while let Some(effect) = todo.pop_front() {
            match effect {
                Effect::Say(line) => say!("{line}"),
                Effect::Start { gpu_disabled } => {
                    if let Err(e) = self.spawn_dataplane(gpu_disabled.as_deref()) {
                        say!("dataplane: cannot start {DATAPLANE}: {e}");
                        todo.extend(self.life.ended(&PlaneEnd::NotStarted, uptime()));
                    }
                }
                Effect::Signal(sig) => {
                    if let Some(pid) = self.dataplane_pid() {
                        let _ = kill(pid, sig);
                    }
                }
                Effect::Announce { pid, restarts } => {
                    let vfio = if self.facts.vfio_bound.is_empty() {
                        "none".to_owned()
                    } else {
                        self.facts.vfio_bound.join(",")
                    };
                    console::announce(&format!(
                        "DWCP READY node={} hugepages_1g={} vfio_bound={vfio} dataplane_pid={pid} restarts={restarts} boot_ms={}",
                        self.facts.node,
                        self.facts.hugepages_1g,
                        uptime().as_millis()
                    ));
                }
                Effect::FirstReady => self.first_ready(),
            }
        }
        self.sync_safe_status();
    }

    /// Listens on the metrics address while in safe mode (so `dwcp status` says why), and
    /// not otherwise: the data plane binds it when it runs.
    fn sync_safe_status(&mut self) {
        let safe = self.life.safe_reason().is_some();
        if !safe {
            self.safe_status = None;
            return;
        }
        if self.safe_status.is_some() {
            return;
        }
        let Some(addr) = self.config.as_ref().map(|c| c.metrics.listen) else {
            return;
        };
        match crate::safe_status::SafeStatus::bind(addr) {
            Ok(s) => {
                say!("status: answering GET /status on {addr} while the data plane is down");
                self.safe_status = Some(s);
            }
            Err(e) => say!("status: cannot listen on {addr}: {e}"),
        }
    }

    /// The node's state for `GET /status` in safe mode, in the data plane's format.
    fn safe_status_json(&self) -> String {
        let slot = std::fs::read_to_string("/proc/cmdline")
            .ok()
            .and_then(|c| crate::boot_assessment::slot_from_cmdline(&c))
            .map(|s| s.to_string());
        let why = self.life.safe_reason().map(|r| {
            r.lines()
                .iter()
                .map(|l| l.trim())
                .collect::<Vec<_>>()
                .join(" ")
        });
        serde_json::json!({
            "node": self.facts.node,
            "version": env!("CARGO_PKG_VERSION"),
            "slot": slot,
            "config_source": self.source,
            "uptime_seconds": uptime().as_secs_f64(),
            "clock": {"synchronised": self.clock.synchronised(), "why": self.clock.line()},
            "dataplane": {
                "state": "safe_mode",
                "safe_mode": why,
                "restarts": self.life.restarts(),
                "workers": 0,
            },
            "engine": {"kind": null, "why": "the data plane is down"},
            "hugepages_1g": self.facts.hugepages_1g,
            "ports": [],
            "peers": [],
        })
        .to_string()
    }

    /// Starts the data plane on its cores, the GPU left out (and why) when asked.
    fn spawn_dataplane(&mut self, gpu_disabled: Option<&str>) -> std::io::Result<()> {
        // The metrics address is the data plane's from now on.
        self.safe_status = None;
        let cores = &self.facts.dataplane_cores;
        let mut set = CpuSet::new();
        for &c in cores {
            let _ = set.set(usize::from(c));
        }
        let own = nix::sched::sched_getaffinity(Pid::from_raw(0)).ok();
        // The child inherits init's affinity at fork: confine init briefly, then restore.
        let confined = sched_setaffinity(Pid::from_raw(0), &set).is_ok();
        let spawned = Process::new(DATAPLANE)
            .arg("--config")
            .arg(RUN_CONFIG)
            .env("DWCP_NOTIFY_SOCKET", NOTIFY_SOCKET)
            .env("DWCP_VFIO_DEVICES", self.facts.vfio_bound.join(","))
            // What only init knows, for the data plane's `GET /status`.
            .env("DWCP_CONFIG_SOURCE", &self.source)
            .env("DWCP_RESTARTS", self.life.restarts().to_string())
            .env("DWCP_HUGEPAGES_1G", self.facts.hugepages_1g.to_string())
            .env("DWCP_CLOCK", self.clock.line())
            .env(
                "DWCP_CLOCK_SYNCHRONISED",
                u8::from(self.clock.synchronised()).to_string(),
            )
            .envs(
                std::fs::read_to_string("/proc/cmdline")
                    .ok()
                    .and_then(|c| crate::boot_assessment::slot_from_cmdline(&c))
                    .map(|slot| ("DWCP_SLOT", slot.to_string())),
            )
            .envs(gpu_disabled.map(|why| (GPU_DISABLED_ENV, why)))
            .spawn();
        if let Some(own) = own {
            let _ = sched_setaffinity(Pid::from_raw(0), &own);
        }
        let child = spawned?;
        say!(
            "dataplane: started pid {} on cores {}{}",
            child.id(),
            cpus::format_list(cores),
            if confined { "" } else { " (affinity NOT set)" }
        );
        // The reaper waits for it by pid (`waitpid(-1)`), not through `Child`.
        self.life.started(child.id());
        Ok(())
    }

    /// The first READY since boot: keep the config as the last-known-good copy and mark the
    /// booted slot good.
    fn first_ready(&mut self) {
        if self.save_last_good {
            match save_last_good(&self.config_text) {
                Ok(true) => {
                    say!("config: saved as the last-known-good copy on the config partition")
                }
                Ok(false) => {}
                Err(e) => say!("config: could not save the last-known-good copy: {e}"),
            }
        }
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        match crate::boot_assessment::mark_good(&self.esp, &cmdline) {
            Ok(Some((from, to))) => say!("boot: slot marked good ({from} -> {to})"),
            Ok(None) => {}
            Err(e) => say!("boot: could not mark the slot good: {e}"),
        }
    }

    fn dataplane_pid(&self) -> Option<Pid> {
        self.life
            .pid()
            .and_then(|p| i32::try_from(p).ok())
            .map(Pid::from_raw)
    }

    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    let pid = status.pid();
                    if pid.is_some() && pid == self.dataplane_pid() {
                        let end = match status {
                            WaitStatus::Exited(_, code) => PlaneEnd::Exited(code),
                            WaitStatus::Signaled(_, sig, _) => PlaneEnd::Killed(sig),
                            // Stopped or continued: it has not ended.
                            _ => continue,
                        };
                        // An `ERROR=` it sent just before it exited says why (a `READY=1`
                        // from a process that is gone is not announced).
                        self.life.stopped();
                        self.on_notify();
                        let effects = self.life.ended(&end, uptime());
                        self.carry_out(effects);
                    }
                }
            }
        }
    }

    fn on_notify(&mut self) {
        let mut buf = [0u8; 2048];
        loop {
            let Some(sock) = &self.notify else { return };
            let Ok(n) = sock.recv(&mut buf) else { return };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let effects = self.life.notified(&msg);
            self.carry_out(effects);
        }
    }

    fn status(&self) {
        say!(
            "status: node {} | data plane {} | restarts {}",
            self.facts.node_or("-"),
            self.life.state_line(),
            self.life.restarts()
        );
        say!("status: {}", self.clock.line());
        say!(
            "status: hugepages_1g {} | vfio {} | config from {} | uptime {}s",
            self.facts.hugepages_1g,
            if self.facts.vfio_bound.is_empty() {
                "none".to_owned()
            } else {
                self.facts.vfio_bound.join(",")
            },
            self.source,
            uptime().as_secs()
        );
        if self.gpu_driver != crate::gpu::Outcome::NotInImage {
            say!("status: {}", self.gpu_driver.line());
        }
        if let Some(line) = self.life.status_line() {
            say!("status: {line}");
        }
    }

    fn on_command(&mut self, cmd: Command) -> Option<RebootMode> {
        match cmd {
            Command::Help | Command::Unknown(_) => {
                if let Command::Unknown(c) = cmd {
                    say!("unknown command `{c}`");
                }
                say!("{}", console::HELP);
            }
            Command::Status => self.status(),
            Command::Config => match (self.life.safe(), &self.config) {
                (Some(SafeReason::InvalidConfig(errs)), _) => {
                    for e in errs {
                        say!("config: {e}");
                    }
                }
                (_, Some(c)) => {
                    for l in dwcp_provisioning::summary::summary(c).lines() {
                        say!("config: {l}");
                    }
                }
                _ => say!("config: none (unprovisioned)"),
            },
            Command::Restart => {
                let effects = self.life.restart();
                self.carry_out(effects);
            }
            Command::KillDataplane => {
                let effects = self.life.kill();
                self.carry_out(effects);
            }
            Command::BenchRdma => self.bench_rdma(),
            Command::Reboot => return Some(RebootMode::RB_AUTOBOOT),
            Command::Poweroff => return Some(RebootMode::RB_POWER_OFF),
        }
        None
    }

    /// Starts the RDMA bench beside the running data plane; its lines go to the console and
    /// the reaper collects it (it is not the data plane).
    fn bench_rdma(&self) {
        let rdma_peers = self.config.as_ref().is_some_and(|c| {
            c.tunnel
                .peers
                .iter()
                .any(|p| p.transport == dwcp_provisioning::schema::Transport::Rdma)
        });
        if !rdma_peers {
            say!("bench rdma: no peer of this node uses transport = \"rdma\"");
            return;
        }
        match Process::new(DATAPLANE)
            .args([
                "bench",
                "rdma",
                "--config",
                RUN_CONFIG,
                "--messages",
                "1000",
            ])
            .spawn()
        {
            Ok(child) => say!("bench rdma: started pid {}", child.id()),
            Err(e) => say!("bench rdma: cannot start {DATAPLANE}: {e}"),
        }
    }

    /// Drains the data plane, syncs and powers off or reboots. Never returns.
    fn shutdown(&mut self, why: &str, mode: RebootMode) -> ! {
        say!("shutdown: {why}; draining data plane");
        if let Some(pid) = self.dataplane_pid() {
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = uptime() + DRAIN;
            loop {
                match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) if uptime() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Ok(WaitStatus::StillAlive) => {
                        say!(
                            "shutdown: data plane did not stop in {}s, killing it",
                            DRAIN.as_secs()
                        );
                        let _ = kill(pid, Signal::SIGKILL);
                        let _ = waitpid(pid, None);
                        break;
                    }
                    _ => break,
                }
            }
        }
        self.life.stopped();
        nix::unistd::sync();
        let what = if mode == RebootMode::RB_AUTOBOOT {
            "rebooting"
        } else {
            "powering off"
        };
        say!("shutdown: clean, file systems synced, {what}");
        loop {
            let _ = reboot(mode);
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

impl Facts {
    fn node_or<'a>(&'a self, d: &'a str) -> &'a str {
        if self.node.is_empty() { d } else { &self.node }
    }
}

/// The input device of the ACPI power button, if the kernel has one.
fn power_button() -> Option<std::fs::File> {
    let fs = RootedFs::new("/");
    for dev in fs.list("/sys/class/input").ok()? {
        if !dev.starts_with("event") {
            continue;
        }
        let name = fs
            .read(&format!("/sys/class/input/{dev}/device/name"))
            .unwrap_or_default();
        if name.trim() == "Power Button" {
            use std::os::unix::fs::OpenOptionsExt as _;
            return std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
                .open(Path::new("/dev/input").join(&dev))
                .ok();
        }
    }
    None
}

/// Whether a batch of input events holds a power-key press.
fn power_pressed(buf: &[u8]) -> bool {
    const EV_KEY: u16 = 1;
    const KEY_POWER: u16 = 116;
    // struct input_event on x86_64: timeval (16 bytes), type u16, code u16, value i32.
    buf.chunks_exact(24).any(|e| {
        let ty = u16::from_ne_bytes([e[16], e[17]]);
        let code = u16::from_ne_bytes([e[18], e[19]]);
        let value = i32::from_ne_bytes([e[20], e[21], e[22], e[23]]);
        ty == EV_KEY && code == KEY_POWER && value == 1
    })
}

/// Runs init as PID 1. Never returns.
pub fn run() -> ! {
    mount_all();
    console::attach_kmsg();
    say!("DWCP init {} starting", env!("CARGO_PKG_VERSION"));
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Some(slot) = crate::boot_assessment::slot_from_cmdline(&cmdline) {
        say!("boot: running slot {}", slot.to_ascii_uppercase());
    }
    // Ctrl-Alt-Del becomes SIGINT to init instead of an immediate reboot.
    let _ = set_cad_enabled(false);
    let signals = block_signals();
    let gpu_driver = load_modules();
    // Open the power button before anything can print READY or SAFE MODE, so a press that
    // follows either is never missed.
    let button = power_button();
    if button.is_none() {
        say!("power button: none found; use the console `poweroff` or SIGTERM");
    }
    let fs = RootedFs::new("/");
    let _ = std::fs::create_dir_all("/run/dwcp");
    let notify = UnixDatagram::bind(NOTIFY_SOCKET).ok();
    if let Some(n) = &notify {
        let _ = n.set_nonblocking(true);
    }
    let mut init = Init {
        config: None,
        config_text: String::new(),
        source: "none".into(),
        facts: Facts::default(),
        life: Lifecycle::default(),
        notify,
        esp: boot_disk::Choice::default(),
        save_last_good: false,
        gpu_driver,
        safe_status: None,
        clock: crate::sntp::Clock::NoSource,
    };
    init.configure(&fs);
    init.serve(signals, button)
}

/// Blocks the signals init handles and opens a descriptor that reads them.
fn block_signals() -> Option<SignalFd> {
    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGPWR,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        signals.add(s);
    }
    let _ = signals.thread_block();
    SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).ok()
}

/// What became readable while init waited.
#[derive(Clone, Copy, Debug, Default)]
struct Ready {
    signal: bool,
    console: bool,
    notify: bool,
    button: bool,
    status: bool,
}

/// The serial console's input: commands, one per line.
struct ConsoleInput {
    stdin: std::io::Stdin,
    /// A closed console would poll readable forever: it is watched only while open.
    open: bool,
    pending: String,
}

impl ConsoleInput {
    /// Reads what is there and returns the complete lines' commands.
    fn commands(&mut self) -> Vec<Command> {
        let mut buf = [0u8; 256];
        let mut out = Vec::new();
        match self.stdin.read(&mut buf) {
            Ok(0) | Err(_) => self.open = false,
            Ok(n) => {
                self.pending.push_str(&String::from_utf8_lossy(&buf[..n]));
                while let Some(i) = self.pending.find(['\n', '\r']) {
                    let line: String = self.pending.drain(..=i).collect();
                    out.extend(console::parse(&line));
                }
                if self.pending.len() > 1024 {
                    self.pending.clear();
                }
            }
        }
        out
    }
}

impl Init {
    /// Finds the config (on the boot disk's config partition, else in the initramfs), and
    /// applies it and starts the data plane, or stays down in safe mode saying why.
    fn configure(&mut self, fs: &RootedFs) {
        let partitions = boot_disk::partitions(fs);
        let boot = find_boot_disk(fs, &partitions);
        let partition = mount_config_partition(boot_disk::choose(
            &partitions,
            boot_disk::CONFIG_PARTITION,
            &boot,
        ));
        self.esp = boot_disk::choose(&partitions, boot_disk::EFI_PARTITION, &boot);
        let (source, config, text_path) = match discover(Path::new("/"), partition.as_deref()) {
            ConfigState::Unprovisioned => {
                self.enter_safe_mode(SafeReason::Unprovisioned);
                return;
            }
            ConfigState::Invalid {
                source,
                diagnostics,
            } => {
                self.source = source.to_string();
                let errs = diagnostics.iter().map(ToString::to_string).collect();
                self.enter_safe_mode(SafeReason::InvalidConfig(errs));
                return;
            }
            ConfigState::Provisioned { source, config } => {
                say!("config: node {} from {source}", config.name);
                let p = source.path().to_path_buf();
                (source, config, p)
            }
            ConfigState::LastGood {
                source,
                config,
                rejected,
            } => {
                say!(
                    "config: {source}: dwcp.toml has {} problem(s):",
                    rejected.len()
                );
                for d in &rejected {
                    say!("  {d}");
                }
                say!(
                    "config: USING THE LAST-KNOWN-GOOD COPY ({}): node {}",
                    crate::config_source::LAST_GOOD,
                    config.name
                );
                let p = source
                    .path()
                    .with_file_name(crate::config_source::LAST_GOOD);
                (source, config, p)
            }
        };
        self.save_last_good = matches!(source, crate::config_source::Candidate::Partition { .. });
        self.source = source.to_string();
        self.config_text = std::fs::read_to_string(&text_path).unwrap_or_default();
        self.facts.node = config.name.to_string();
        if let Some(remote) = config.logging.remote {
            // Lines said before the management interface is up (in `apply`) find no route
            // and are counted as dropped; the console has them all.
            crate::console::ship_to(remote, &config.name.to_string());
        }
        match apply(fs, &config) {
            Ok(facts) => {
                self.facts = facts;
                // The clock, before the data plane's first handshake timestamp.
                let servers: Vec<_> = config.time.servers.iter().map(|e| e.0).collect();
                self.clock = crate::sntp::sync(&servers);
                say!("{}", self.clock.line());
                match std::fs::write(RUN_CONFIG, &self.config_text) {
                    Ok(()) => self.start_dataplane(),
                    Err(e) => self.enter_safe_mode(SafeReason::ApplyFailed(vec![format!(
                        "cannot write {RUN_CONFIG}: {e}"
                    )])),
                }
            }
            Err(errs) => self.enter_safe_mode(SafeReason::ApplyFailed(errs)),
        }
        self.config = Some(*config);
        // Safe mode entered above, before the config was kept: listen now.
        self.sync_safe_status();
    }

    /// Init's event loop: signals, the data plane's notifications, the power button, console
    /// commands, and the data plane's restart timer. Never returns (a shutdown reboots).
    fn serve(mut self, signals: Option<SignalFd>, mut button: Option<std::fs::File>) -> ! {
        let mut console = ConsoleInput {
            stdin: std::io::stdin(),
            open: true,
            pending: String::new(),
        };
        loop {
            let ready = self.wait(&console, signals.as_ref(), button.as_ref());
            if ready.signal
                && let Some(sfd) = &signals
            {
                while let Ok(Some(info)) = sfd.read_signal() {
                    self.on_signal(Signal::try_from(i32::try_from(info.ssi_signo).unwrap_or(0)));
                }
            }
            if ready.notify {
                self.on_notify();
            }
            if ready.status
                && let Some(s) = &self.safe_status
            {
                s.serve(&self.safe_status_json());
            }
            if ready.button
                && let Some(b) = &mut button
            {
                let mut buf = [0u8; 24 * 16];
                if let Ok(n) = b.read(&mut buf)
                    && power_pressed(&buf[..n])
                {
                    self.shutdown("power button", RebootMode::RB_POWER_OFF);
                }
            }
            if ready.console {
                for cmd in console.commands() {
                    if let Some(mode) = self.on_command(cmd) {
                        self.shutdown("operator command", mode);
                    }
                }
            }
            let effects = self.life.tick(uptime());
            self.carry_out(effects);
        }
    }

    /// Waits until something is readable, or the data plane's restart is due.
    fn wait(
        &self,
        console: &ConsoleInput,
        signals: Option<&SignalFd>,
        button: Option<&std::fs::File>,
    ) -> Ready {
        let timeout = self.life.wait(uptime()).max(Duration::from_millis(1));
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        let mut fds = Vec::with_capacity(4);
        let events = if console.open {
            PollFlags::POLLIN
        } else {
            PollFlags::empty()
        };
        fds.push(PollFd::new(console.stdin.as_fd(), events));
        // Where each watched descriptor is in `fds`.
        let mut at = [None; 4];
        let watched = [
            signals.map(AsFd::as_fd),
            self.notify.as_ref().map(AsFd::as_fd),
            button.map(AsFd::as_fd),
            self.safe_status
                .as_ref()
                .map(crate::safe_status::SafeStatus::fd),
        ];
        for (slot, fd) in at.iter_mut().zip(watched) {
            if let Some(fd) = fd {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
                *slot = Some(fds.len() - 1);
            }
        }
        let [sig_i, notify_i, button_i, status_i] = at;
        let _ = poll(&mut fds, timeout);
        let readable = |i: Option<usize>| {
            i.and_then(|i| fds[i].revents())
                .is_some_and(|r| r.intersects(PollFlags::POLLIN))
        };
        Ready {
            signal: readable(sig_i),
            console: console.open
                && fds[0]
                    .revents()
                    .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP)),
            notify: readable(notify_i),
            button: readable(button_i),
            status: readable(status_i),
        }
    }

    /// A signal to init.
    fn on_signal(&mut self, signal: nix::Result<Signal>) {
        match signal {
            Ok(Signal::SIGCHLD) => self.reap(),
            Ok(Signal::SIGINT) => self.shutdown("ctrl-alt-del", RebootMode::RB_POWER_OFF),
            Ok(Signal::SIGTERM | Signal::SIGPWR | Signal::SIGUSR2) => {
                self.shutdown("power-off requested", RebootMode::RB_POWER_OFF)
            }
            Ok(other) => say!("signal {other} ignored"),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use dwcp_provisioning::{SourceFile, check, example};

    use super::*;

    fn config() -> NodeConfig {
        check(&SourceFile::new("node.toml", example::example().unwrap())).unwrap()
    }

    #[test]
    fn every_configured_core_must_be_online() {
        let mut c = config();
        let online: BTreeSet<u16> = (0..=3).collect();
        assert_eq!(cores_not_online(&c, &online), None);
        c.offload.core = Some(5);
        assert_eq!(
            cores_not_online(&c, &online).as_deref(),
            Some("cores: 5 configured but not online here (online: 0-3)")
        );
        // Without a GPU the gathering core is never used: not a reason to stay down.
        c.offload.gpu = GpuMode::Off;
        assert_eq!(cores_not_online(&c, &online), None);
        let two: BTreeSet<u16> = (0..=1).collect();
        assert_eq!(
            cores_not_online(&c, &two).as_deref(),
            Some("cores: 2,3 configured but not online here (online: 0-1)")
        );
    }
}
