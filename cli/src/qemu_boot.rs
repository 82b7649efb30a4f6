//! `dwcp qemu boot`: boots built artifacts under QEMU with a VM shaped after the node config
//! (its data NICs at their PCI slots, its cores, enough memory for its hugepages), and waits
//! for `DWCP READY` or safe mode.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dwcp_qemu::{Nic, Vm, VmSpec};

use dwcp_provisioning::cmdline::kernel_cmdline;
use dwcp_provisioning::schema::{Backend, NodeConfig};

/// A VM for a node config: management NIC (virtio-net, user networking) by the config's MAC,
/// one e1000e per DPDK port at the port's PCI slot (bus 0 only), one per other port.
pub fn vm_spec(name: &str, c: &NodeConfig, artifacts: &Path, initrd: PathBuf) -> VmSpec {
    let mut nics = Vec::new();
    let mgmt_mac = c
        .management
        .mac
        .map_or_else(|| "52:54:00:00:00:02".to_owned(), |m| m.to_string());
    nics.push(Nic {
        model: "virtio-net-pci".into(),
        mac: mgmt_mac,
        slot: Some(2),
        netdev: "user".into(),
        dump: None,
    });
    for (i, p) in c.ports.iter().enumerate() {
        let slot = match (p.backend, p.pci) {
            (Backend::Dpdk, Some(pci)) if pci.domain == 0 && pci.bus == 0 && pci.function == 0 => {
                Some(pci.device)
            }
            _ => None,
        };
        let idx = u8::try_from(i + 1).unwrap_or(u8::MAX);
        nics.push(Nic {
            model: "e1000e".into(),
            mac: format!("52:54:00:00:01:{idx:02x}"),
            slot,
            netdev: "user".into(),
            dump: None,
        });
    }
    let cpus = c
        .cores
        .housekeeping
        .iter()
        .chain(&c.cores.dataplane)
        .max()
        .map_or(1, |m| m + 1);
    // Guest RAM below 4 GiB ends at 2 GiB on q35 and holds the initrd; 1 GiB pages come
    // from aligned RAM above 4 GiB, whose top the kernel's early allocations take a bite of:
    // one spare gigabyte there (measured: 3 GiB for one page got none, 4 GiB got it).
    let memory_mib = 2048 + 1024 * (c.hugepages.count + 1);
    VmSpec {
        name: name.to_owned(),
        kernel: artifacts.join("vmlinuz"),
        initrd,
        append: kernel_cmdline(c),
        memory_mib,
        cpus,
        nics,
        kvm: false,
        iommu: true,
        console_log: None,
        pxe: None,
        disk: None,
        other_disks: Vec::new(),
        rtc_base: None,
    }
}

/// Boots, waits for READY (or safe mode), reports, and powers the VM off.
pub fn boot(
    artifacts: &Path,
    config: Option<&Path>,
    timeout: Duration,
    kvm: bool,
) -> anyhow::Result<bool> {
    let text = match config {
        Some(p) => super::image_build::checked_config(p)?,
        None => dwcp_provisioning::example::qemu_example()?,
    };
    let cfg = dwcp_provisioning::validate::check(&dwcp_provisioning::SourceFile::new(
        "config",
        text.clone(),
    ))
    .map_err(|d| anyhow::anyhow!("config invalid: {}", d[0]))?;
    let dir = tempfile::tempdir()?;
    let base = std::fs::read(artifacts.join("initrd.img")).with_context(|| {
        format!(
            "no initrd.img in {} (run `dwcp image build --out {0}`)",
            artifacts.display()
        )
    })?;
    let mut combined = base;
    combined.extend(super::image_build::config_initrd(&text)?);
    let initrd = dir.path().join("initrd-with-config.img");
    std::fs::write(&initrd, combined)?;
    let mut spec = vm_spec(&cfg.name.to_string(), &cfg, artifacts, initrd);
    spec.kvm = kvm;
    eprintln!(
        "qemu: booting {} ({} MiB, {} vCPUs, {}), console follows",
        cfg.name,
        spec.memory_mib,
        spec.cpus,
        if kvm { "KVM" } else { "TCG" }
    );
    let started = Instant::now();
    let mut vm = Vm::start(&spec)?;
    let outcome = wait_ready_or_safe(&mut vm, timeout);
    print!("{}", vm.console());
    let line = outcome?;
    let ready = line.contains("DWCP READY");
    eprintln!(
        "qemu: {} after {:.1}s wall clock",
        if ready { "READY" } else { "SAFE MODE" },
        started.elapsed().as_secs_f64()
    );
    vm.monitor("system_powerdown")?;
    let status = vm.wait_exit(Duration::from_secs(60))?;
    eprintln!("qemu: powered off ({status})");
    Ok(ready)
}

/// A VM shaped like the QEMU example node that boots from a PXE tree with the given MAC on
/// its management NIC (the one iPXE uses).
pub fn pxe_spec(
    name: &str,
    tree: &Path,
    mac: &dwcp_provisioning::types::MacAddress,
) -> anyhow::Result<VmSpec> {
    let shape = dwcp_provisioning::validate::check(&dwcp_provisioning::SourceFile::new(
        "shape",
        dwcp_provisioning::example::qemu_example()?,
    ))
    .map_err(|d| anyhow::anyhow!("{}", d[0]))?;
    let mut spec = vm_spec(name, &shape, tree, PathBuf::new());
    spec.nics[0].mac = mac.to_string();
    spec.pxe = Some(dwcp_qemu::PxeBoot {
        tftp_root: tree.to_path_buf(),
        bootfile: "boot.ipxe".into(),
    });
    Ok(spec)
}

/// Boots a node from a PXE tree, waits for READY or safe mode, powers it off.
pub fn boot_pxe(
    tree: &Path,
    mac: &dwcp_provisioning::types::MacAddress,
    timeout: Duration,
    kvm: bool,
) -> anyhow::Result<bool> {
    let mut spec = pxe_spec("pxe-node", tree, mac)?;
    spec.kvm = kvm;
    eprintln!(
        "qemu: network-booting MAC {mac} from {} ({})",
        tree.display(),
        if kvm { "KVM" } else { "TCG" }
    );
    run_to_ready(&spec, timeout)
}

/// A VM that boots a disk image through UEFI, shaped after the config on the image's config
/// partition (the QEMU example's shape when that is missing or invalid).
pub fn disk_spec(name: &str, image: &Path) -> anyhow::Result<VmSpec> {
    let from_disk = dwcp_image::disk::read_config_partition(image, "dwcp.toml")
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|t| {
            dwcp_provisioning::validate::check(&dwcp_provisioning::SourceFile::new("partition", t))
                .ok()
        });
    let shape = match from_disk {
        Some(c) => c,
        None => dwcp_provisioning::validate::check(&dwcp_provisioning::SourceFile::new(
            "shape",
            dwcp_provisioning::example::qemu_example()?,
        ))
        .map_err(|d| anyhow::anyhow!("{}", d[0]))?,
    };
    let mut spec = vm_spec(name, &shape, Path::new("/"), PathBuf::new());
    spec.disk = Some(image.to_path_buf());
    Ok(spec)
}

/// Boots a disk image, waits for READY or safe mode, powers it off.
pub fn boot_disk(image: &Path, timeout: Duration, kvm: bool) -> anyhow::Result<bool> {
    let mut spec = disk_spec("disk-node", image)?;
    spec.kvm = kvm;
    eprintln!(
        "qemu: booting {} through UEFI ({})",
        image.display(),
        if kvm { "KVM" } else { "TCG" }
    );
    run_to_ready(&spec, timeout)
}

/// Starts a VM, waits for READY or safe mode, prints the console, powers it off; returns
/// whether it got READY.
fn run_to_ready(spec: &VmSpec, timeout: Duration) -> anyhow::Result<bool> {
    let mut vm = Vm::start(spec)?;
    let outcome = wait_ready_or_safe(&mut vm, timeout);
    print!("{}", vm.console());
    let line = outcome?;
    vm.monitor("system_powerdown")?;
    let _ = vm.wait_exit(Duration::from_secs(60))?;
    Ok(line.contains("DWCP READY"))
}

/// Waits for `DWCP READY` or `SAFE MODE`, whichever comes first.
pub fn wait_ready_or_safe(vm: &mut Vm, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = vm.console();
        if let Some(l) = text
            .lines()
            .find(|l| l.starts_with("DWCP READY") || l.contains("SAFE MODE"))
        {
            return Ok(l.to_owned());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "neither DWCP READY nor SAFE MODE within {}s; console tail:\n{}",
                timeout.as_secs(),
                vm.tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
