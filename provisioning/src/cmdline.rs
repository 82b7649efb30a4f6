//! The kernel command line a node's config implies: consoles, 1 GiB hugepages, isolated
//! data-plane cores and the IOMMU. Used for QEMU boots now and boot entries later.

use std::collections::BTreeSet;

use crate::schema::{Backend, NodeConfig};

/// Formats CPUs as a kernel CPU list (`0-3,8`), sorted, duplicates merged.
pub fn cpu_list(cores: &[u16]) -> String {
    let set: BTreeSet<u16> = cores.iter().copied().collect();
    let mut parts = Vec::new();
    let mut iter = set.into_iter().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

/// The kernel command line for a node.
///
/// `hugepagesz=`/`hugepages=` stay together and in this order: the kernel applies
/// `hugepages=` to the size named just before it (reordering broke 1 GiB reservations for
/// Talos users, talos #11310).
pub fn kernel_cmdline(c: &NodeConfig) -> String {
    let mut args: Vec<String> = c
        .boot
        .console
        .iter()
        .map(|con| format!("console={con}"))
        .collect();
    // Init's own messages go to the console directly; keep kernel chatter to warnings.
    args.push("loglevel=4".into());
    // A kernel panic (a broken image, init gone) reboots after 5 s, so systemd-boot's boot
    // counting can fall back to the previous slot instead of the node hanging.
    args.push("panic=5".into());
    if c.hugepages.count > 0 {
        args.push("default_hugepagesz=1G".into());
        args.push("hugepagesz=1G".into());
        args.push(format!("hugepages={}", c.hugepages.count));
    }
    // A gathering-thread core of its own is kept from the kernel like the workers' cores.
    let mut isolated = c.cores.dataplane.clone();
    if let Some(core) = c.offload.core
        && !c.cores.housekeeping.contains(&core)
    {
        isolated.push(core);
    }
    let isolated = cpu_list(&isolated);
    args.push(format!("isolcpus=managed_irq,domain,{isolated}"));
    args.push(format!("nohz_full={isolated}"));
    args.push(format!("rcu_nocbs={isolated}"));
    args.push(format!("irqaffinity={}", cpu_list(&c.cores.housekeeping)));
    if c.ports.iter().any(|p| p.backend == Backend::Dpdk) {
        args.push("intel_iommu=on".into());
        args.push("iommu=pt".into());
    }
    args.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SourceFile, check, example};

    #[test]
    fn example_cmdline() {
        let c = check(&SourceFile::new("x", example::example().unwrap())).unwrap();
        let line = kernel_cmdline(&c);
        assert!(
            line.starts_with("console=tty0 console=ttyS0,115200 "),
            "{line}"
        );
        assert!(
            line.contains("default_hugepagesz=1G hugepagesz=1G hugepages=2"),
            "{line}"
        );
        assert!(
            line.contains("isolcpus=managed_irq,domain,1-3 nohz_full=1-3"),
            "{line}"
        );
        assert!(line.contains("irqaffinity=0"), "{line}");
        assert!(line.contains("intel_iommu=on"), "{line}");
    }

    #[test]
    fn a_gathering_core_of_its_own_is_isolated_a_housekeeping_one_is_not() {
        let mut c = check(&SourceFile::new("x", example::example().unwrap())).unwrap();
        c.offload.core = Some(5);
        let line = kernel_cmdline(&c);
        assert!(
            line.contains("isolcpus=managed_irq,domain,1-3,5 nohz_full=1-3,5 rcu_nocbs=1-3,5"),
            "{line}"
        );
        c.offload.core = Some(0);
        let line = kernel_cmdline(&c);
        assert!(
            line.contains("isolcpus=managed_irq,domain,1-3 nohz_full=1-3 rcu_nocbs=1-3"),
            "{line}"
        );
    }
}
