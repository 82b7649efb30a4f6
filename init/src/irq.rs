//! Interrupt affinity: every IRQ that can move goes to the housekeeping cores, so data-plane
//! cores are left to their workers.

use std::collections::BTreeSet;

use crate::cpus::{format_list, format_mask};
use crate::sys::SysFs;

/// What moving the IRQs came to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// IRQs moved.
    pub moved: usize,
    /// IRQs the kernel refused to move (per-CPU and managed interrupts).
    pub fixed: usize,
}

/// Points the default and every existing IRQ at the housekeeping cores.
pub fn confine(fs: &dyn SysFs, housekeeping: &BTreeSet<u16>) -> std::io::Result<Outcome> {
    fs.write("/proc/irq/default_smp_affinity", &format_mask(housekeeping))?;
    let list = format_list(housekeeping);
    let mut out = Outcome::default();
    for irq in fs.list("/proc/irq")? {
        if !irq.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        match fs.write(&format!("/proc/irq/{irq}/smp_affinity_list"), &list) {
            Ok(()) => out.moved += 1,
            Err(_) => out.fixed += 1,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::RootedFs;

    #[test]
    fn moves_numbered_irqs() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootedFs::new(dir.path());
        for irq in ["0", "24", "25"] {
            std::fs::create_dir_all(fs.path(&format!("/proc/irq/{irq}"))).unwrap();
        }
        std::fs::write(fs.path("/proc/irq/default_smp_affinity"), "f").unwrap();
        std::fs::write(fs.path("/proc/irq/24/smp_affinity_list"), "0-3").unwrap();
        std::fs::write(fs.path("/proc/irq/25/smp_affinity_list"), "0-3").unwrap();
        // IRQ 0 has no writable file: counted as fixed.
        let o = confine(&fs, &[0, 1].into()).unwrap();
        assert_eq!(o, Outcome { moved: 2, fixed: 1 });
        assert_eq!(fs.read("/proc/irq/24/smp_affinity_list").unwrap(), "0-1");
        assert_eq!(
            fs.read("/proc/irq/default_smp_affinity").unwrap(),
            "00000003"
        );
    }
}
