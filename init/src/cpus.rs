//! CPU lists as the kernel writes them (`0-3,8,10-11`), and the masks `/proc/irq` wants.

use std::collections::BTreeSet;

/// Parses a kernel CPU list such as `0-3,8`.
pub fn parse_list(s: &str) -> Option<BTreeSet<u16>> {
    let mut out = BTreeSet::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u16, u16) = (a.parse().ok()?, b.parse().ok()?);
                if a > b {
                    return None;
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(part.parse().ok()?);
            }
        }
    }
    Some(out)
}

/// Formats CPUs as a kernel CPU list (`0-3,8`).
pub fn format_list(cpus: &BTreeSet<u16>) -> String {
    let cores: Vec<u16> = cpus.iter().copied().collect();
    dwcp_provisioning::cmdline::cpu_list(&cores)
}

/// The hex mask `/proc/irq/default_smp_affinity` takes: 32-bit groups separated by commas,
/// most significant first.
pub fn format_mask(cpus: &BTreeSet<u16>) -> String {
    let top = cpus.iter().next_back().map_or(0, |&c| usize::from(c) / 32);
    let mut words = vec![0u32; top + 1];
    for &c in cpus {
        words[usize::from(c) / 32] |= 1 << (c % 32);
    }
    words
        .iter()
        .rev()
        .map(|w| format!("{w:08x}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip() {
        let set = parse_list("0-3,8,10-11\n").unwrap();
        assert_eq!(set.len(), 7);
        assert_eq!(format_list(&set), "0-3,8,10-11");
        assert!(parse_list("3-1").is_none());
        assert!(parse_list("x").is_none());
    }

    #[test]
    fn masks() {
        assert_eq!(format_mask(&[0].into()), "00000001");
        assert_eq!(format_mask(&[0, 1, 33].into()), "00000002,00000003");
    }
}
