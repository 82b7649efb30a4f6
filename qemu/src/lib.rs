//! The QEMU harness: boots appliance artifacts (direct kernel boot and PXE now; UEFI disk with
//! the provisioning issue) under TCG by default, captures the serial console, waits for
//! patterns with time-outs, drives the HMP monitor, and never leaves a QEMU process behind:
//! dropping a [`Vm`] kills it, also when a test panics.
//!
//! Generic mechanism: it knows machines, NICs and consoles, not DWCP config fields.

#![deny(unsafe_code)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// A virtual NIC.
#[derive(Clone, Debug)]
pub struct Nic {
    /// QEMU device model: `e1000e`, `virtio-net-pci`.
    pub model: String,
    /// MAC address.
    pub mac: String,
    /// PCI slot on the root bus (`3` → `0000:00:03.0`), or `None` to let QEMU choose.
    pub slot: Option<u8>,
    /// The `-netdev` backend options after the id, e.g. `user` or `socket,listen=:1234`.
    pub netdev: String,
    /// Capture every frame through the NIC's backend into this pcap file (QEMU's
    /// `filter-dump`).
    pub dump: Option<PathBuf>,
}

/// Network boot: QEMU user networking's TFTP server and boot file, through the NIC's iPXE ROM.
#[derive(Clone, Debug)]
pub struct PxeBoot {
    /// Directory served over TFTP.
    pub tftp_root: PathBuf,
    /// The file iPXE fetches first (an iPXE script).
    pub bootfile: String,
}

/// UEFI firmware code (Debian's `ovmf`).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// UEFI variable store template, copied per VM.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// What to boot and how.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// Name, for logs and the console log file.
    pub name: String,
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// Kernel command line.
    pub append: String,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u16,
    /// NICs in order.
    pub nics: Vec<Nic>,
    /// Use KVM (off by default: KVM hangs on our build machines).
    pub kvm: bool,
    /// An emulated Intel IOMMU (needed for vfio in the guest).
    pub iommu: bool,
    /// Where to copy the console output as it comes, if anywhere.
    pub console_log: Option<PathBuf>,
    /// Boot from the network instead of `kernel`/`initrd` (which are then not used); the first
    /// NIC with `user` networking serves the TFTP tree.
    pub pxe: Option<PxeBoot>,
    /// Boot this disk image (virtio-blk) through UEFI firmware instead of `kernel`/`initrd`.
    pub disk: Option<PathBuf>,
    /// More disk images (virtio-blk), attached before `disk` and never booted from: another
    /// node's disk, a USB stick left in.
    pub other_disks: Vec<PathBuf>,
    /// The real-time clock's start (QEMU's `-rtc base=`, e.g. `2015-01-01`): a node whose
    /// clock was reset. None: the host's time.
    pub rtc_base: Option<String>,
}

impl VmSpec {
    /// The QEMU arguments for this spec, given the monitor socket path.
    pub fn args(&self, monitor: &Path) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |s: &str| a.push(s.to_owned());
        push("-machine");
        push(if self.iommu {
            "q35,kernel-irqchip=split"
        } else {
            "q35"
        });
        if self.kvm {
            push("-enable-kvm");
            push("-cpu");
            push("host");
        } else {
            // `max` has pdpe1gb, which 1 GiB hugepages need.
            push("-accel");
            push("tcg,thread=multi");
            push("-cpu");
            push("max");
        }
        push("-m");
        push(&self.memory_mib.to_string());
        if let Some(base) = &self.rtc_base {
            push("-rtc");
            push(&format!("base={base}"));
        }
        push("-smp");
        push(&self.cpus.to_string());
        if self.iommu {
            push("-device");
            push("intel-iommu,intremap=on");
        }
        if self.disk.is_some() {
            push("-drive");
            push(&format!(
                "if=pflash,format=raw,readonly=on,file={OVMF_CODE}"
            ));
            push("-drive");
            push(&format!(
                "if=pflash,format=raw,file={}",
                monitor.with_file_name("OVMF_VARS.fd").display()
            ));
        } else if self.pxe.is_some() {
            push("-boot");
            push("n");
        } else {
            push("-kernel");
            push(&self.kernel.display().to_string());
            push("-initrd");
            push(&self.initrd.display().to_string());
            push("-append");
            push(&self.append);
        }
        push("-display");
        push("none");
        push("-serial");
        push("stdio");
        push("-monitor");
        push(&format!("unix:{},server=on,wait=off", monitor.display()));
        push("-no-reboot");
        push("-nodefaults");
        let pxe_nic = self
            .pxe
            .as_ref()
            .and_then(|_| self.nics.iter().position(|n| n.netdev.starts_with("user")));
        for (i, nic) in self.nics.iter().enumerate() {
            let tftp = match (&self.pxe, pxe_nic) {
                (Some(p), Some(j)) if j == i => {
                    format!(",tftp={},bootfile={}", p.tftp_root.display(), p.bootfile)
                }
                _ => String::new(),
            };
            push("-netdev");
            push(&format!("{}{tftp},id=n{i}", nic.netdev));
            let addr = nic
                .slot
                .map(|s| format!(",addr={s:#04x}"))
                .unwrap_or_default();
            push("-device");
            push(&format!("{},netdev=n{i},mac={}{addr}", nic.model, nic.mac));
            if let Some(file) = &nic.dump {
                push("-object");
                push(&format!(
                    "filter-dump,id=dump{i},netdev=n{i},file={}",
                    file.display()
                ));
            }
        }
        // Disks after the NICs, whose slots are fixed, so that theirs are the free ones: the
        // other disks first (vda, …), the one to boot from last and first in the firmware's
        // boot order.
        let disks = self
            .other_disks
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("other{i}"), d, ""))
            .chain(
                self.disk
                    .iter()
                    .map(|d| ("boot".to_owned(), d, ",bootindex=0")),
            );
        for (id, d, boot) in disks {
            push("-drive");
            push(&format!("file={},format=raw,if=none,id={id}", d.display()));
            push("-device");
            push(&format!("virtio-blk-pci,drive={id}{boot}"));
        }
        a
    }
}

/// Harness errors.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// QEMU is not installed.
    #[error(
        "{QEMU} not found: install it with `apt-get install qemu-system-x86` (scripts/setup.sh does)"
    )]
    NotInstalled,
    /// QEMU could not be started.
    #[error("cannot start {QEMU}")]
    Spawn(#[source] std::io::Error),
    /// A pattern did not appear in time.
    #[error("`{pattern}` did not appear on {vm}'s console within {secs}s; console tail:\n{tail}")]
    Timeout {
        /// The VM.
        vm: String,
        /// What was awaited.
        pattern: String,
        /// The time-out.
        secs: u64,
        /// The last console lines.
        tail: String,
    },
    /// QEMU exited while waiting for a pattern.
    #[error("{vm} exited ({status}) before `{pattern}` appeared; console tail:\n{tail}")]
    Exited {
        /// The VM.
        vm: String,
        /// What was awaited.
        pattern: String,
        /// How QEMU exited.
        status: String,
        /// The last console lines.
        tail: String,
    },
    /// The monitor socket failed.
    #[error("QEMU monitor: {0}")]
    Monitor(#[source] std::io::Error),
    /// Console input failed.
    #[error("console input: {0}")]
    Console(#[source] std::io::Error),
}

#[derive(Default)]
struct Console {
    text: String,
    closed: bool,
}

/// A running VM. Dropping it kills QEMU.
pub struct Vm {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    console: Arc<(Mutex<Console>, Condvar)>,
    monitor_path: PathBuf,
    /// Where the console search resumes (so the same line is not matched twice).
    cursor: usize,
    _dir: tempfile::TempDir,
}

/// Whether QEMU is installed.
pub fn available() -> bool {
    Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Vm {
    /// Starts QEMU.
    pub fn start(spec: &VmSpec) -> Result<Vm, QemuError> {
        if !available() {
            return Err(QemuError::NotInstalled);
        }
        let dir = tempfile::Builder::new()
            .prefix("dwcp-qemu-")
            .tempdir()
            .map_err(QemuError::Spawn)?;
        let monitor_path = dir.path().join("monitor.sock");
        if spec.disk.is_some() {
            // Each VM gets its own copy of the UEFI variable store.
            std::fs::copy(OVMF_VARS, dir.path().join("OVMF_VARS.fd")).map_err(QemuError::Spawn)?;
        }
        let mut child = Command::new(QEMU)
            .args(spec.args(&monitor_path))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(QemuError::Spawn)?;
        let console = Arc::new((Mutex::new(Console::default()), Condvar::new()));
        let mut log = spec
            .console_log
            .as_ref()
            .and_then(|p| std::fs::File::create(p).ok());
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let console = Arc::clone(&console);
            let mut log = log.as_mut().and_then(|l| l.try_clone().ok());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            if let Some(l) = log.as_mut() {
                                let _ = l.write_all(&line);
                            }
                            let text = String::from_utf8_lossy(&line).replace('\r', "");
                            let (lock, cv) = &*console;
                            if let Ok(mut c) = lock.lock() {
                                c.text.push_str(&text);
                            }
                            cv.notify_all();
                        }
                    }
                }
                let (lock, cv) = &*console;
                if let Ok(mut c) = lock.lock() {
                    c.closed = true;
                }
                cv.notify_all();
            });
        }
        let stdin = child.stdin.take();
        Ok(Vm {
            name: spec.name.clone(),
            child,
            stdin,
            console,
            monitor_path,
            cursor: 0,
            _dir: dir,
        })
    }

    /// The whole console output so far.
    pub fn console(&self) -> String {
        self.console
            .0
            .lock()
            .map(|c| c.text.clone())
            .unwrap_or_default()
    }

    /// The last `n` console lines.
    pub fn tail(&self, n: usize) -> String {
        let text = self.console();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until a console line after the last match contains `pattern`; returns that line.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<String, QemuError> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.console;
        let mut guard = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if let Some(pos) = guard.text.get(self.cursor..).and_then(|t| t.find(pattern)) {
                let start = self.cursor + pos;
                let line_start = guard.text[..start].rfind('\n').map_or(0, |i| i + 1);
                let line_end = guard.text[start..]
                    .find('\n')
                    .map_or(guard.text.len(), |i| start + i);
                let line = guard.text[line_start..line_end].to_owned();
                self.cursor = line_end;
                return Ok(line);
            }
            let now = Instant::now();
            if guard.closed || now >= deadline {
                let closed = guard.closed;
                drop(guard);
                let tail = self.tail(40);
                if closed {
                    let status = self
                        .child
                        .wait()
                        .map_or_else(|e| e.to_string(), |s| s.to_string());
                    return Err(QemuError::Exited {
                        vm: self.name.clone(),
                        pattern: pattern.to_owned(),
                        status,
                        tail,
                    });
                }
                return Err(QemuError::Timeout {
                    vm: self.name.clone(),
                    pattern: pattern.to_owned(),
                    secs: timeout.as_secs(),
                    tail,
                });
            }
            guard = cv
                .wait_timeout(guard, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Types a line on the serial console.
    pub fn send_line(&mut self, line: &str) -> Result<(), QemuError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| QemuError::Console(std::io::ErrorKind::BrokenPipe.into()))?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(QemuError::Console)
    }

    /// Sends one HMP monitor command (`system_powerdown`, `sendkey ctrl-alt-delete`).
    pub fn monitor(&mut self, command: &str) -> Result<(), QemuError> {
        let mut last = None;
        for _ in 0..50 {
            match UnixStream::connect(&self.monitor_path) {
                Ok(mut s) => {
                    s.write_all(format!("{command}\n").as_bytes())
                        .map_err(QemuError::Monitor)?;
                    // Give QEMU a moment to read the command before the socket closes.
                    std::thread::sleep(Duration::from_millis(300));
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(QemuError::Monitor(
            last.unwrap_or_else(|| std::io::ErrorKind::NotFound.into()),
        ))
    }

    /// Waits for QEMU to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, QemuError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(QemuError::Spawn)? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(QemuError::Timeout {
                    vm: self.name.clone(),
                    pattern: "QEMU exit".into(),
                    secs: timeout.as_secs(),
                    tail: self.tail(40),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_have_tcg_iommu_and_nics() {
        let spec = VmSpec {
            name: "t".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            append: "console=ttyS0".into(),
            memory_mib: 2048,
            cpus: 2,
            nics: vec![Nic {
                model: "e1000e".into(),
                mac: "52:54:00:00:00:03".into(),
                slot: Some(3),
                netdev: "user".into(),
                dump: None,
            }],
            kvm: false,
            iommu: true,
            console_log: None,
            pxe: None,
            disk: None,
            other_disks: Vec::new(),
            rtc_base: None,
        };
        let a = spec.args(Path::new("/tmp/m.sock")).join(" ");
        assert!(a.contains("-accel tcg"), "{a}");
        assert!(a.contains("-cpu max"), "{a}");
        assert!(a.contains("-device intel-iommu,intremap=on"), "{a}");
        assert!(
            a.contains("-device e1000e,netdev=n0,mac=52:54:00:00:00:03,addr=0x03"),
            "{a}"
        );
        assert!(!a.contains("kvm"), "{a}");
        // A disk boot with another disk attached first: the firmware boots `disk`.
        let spec = VmSpec {
            disk: Some("/boot.img".into()),
            other_disks: vec!["/other.img".into()],
            ..spec
        };
        let a = spec.args(Path::new("/tmp/m.sock")).join(" ");
        let other = a
            .find("file=/other.img,format=raw,if=none,id=other0")
            .unwrap();
        let boot = a.find("file=/boot.img,format=raw,if=none,id=boot").unwrap();
        assert!(other < boot, "{a}");
        assert!(
            a.contains("-device virtio-blk-pci,drive=boot,bootindex=0"),
            "{a}"
        );
        assert!(a.contains("-device virtio-blk-pci,drive=other0 "), "{a}");
        assert!(
            a.find("-device e1000e").unwrap() < other,
            "disks after the NICs: {a}"
        );
        assert!(!a.contains("-kernel"), "{a}");
    }
}
