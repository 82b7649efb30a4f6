//! 1 GiB hugepage reservation: ask the kernel for the configured count (in all or per NUMA
//! node), read back what it actually obtained, and judge it by the configured policy.

use dwcp_provisioning::schema::{HugepagePolicy, Hugepages};

use crate::sys::SysFs;

const GLOBAL: &str = "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages";

fn node_path(node: usize) -> String {
    format!("/sys/devices/system/node/node{node}/hugepages/hugepages-1048576kB/nr_hugepages")
}

/// What the reservation came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Pages asked for.
    pub wanted: u32,
    /// Pages the kernel holds now.
    pub obtained: u32,
    /// Whether the data plane may run with this (policy applied).
    pub acceptable: bool,
    /// One line for the console.
    pub message: String,
}

/// Why no reservation could be tried.
#[derive(Debug, thiserror::Error)]
pub enum HugepageError {
    /// The kernel has no 1 GiB page size (CPU without pdpe1gb, or hugetlbfs missing).
    #[error("1 GiB hugepages are not supported here (no {GLOBAL}): the CPU needs pdpe1gb")]
    Unsupported,
    /// A sysfs file could not be read or written.
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
}

fn read_count(fs: &dyn SysFs, path: &str) -> Result<u32, HugepageError> {
    let text = fs
        .read(path)
        .map_err(|e| HugepageError::Io(path.to_owned(), e))?;
    text.trim().parse().map_err(|_| {
        HugepageError::Io(
            path.to_owned(),
            std::io::Error::other(format!("not a count: {text:?}")),
        )
    })
}

/// Reserves the configured pages. Pages already reserved on the kernel command line count:
/// nothing is written when there are enough.
pub fn reserve(fs: &dyn SysFs, cfg: &Hugepages) -> Result<Outcome, HugepageError> {
    if !fs.exists(GLOBAL) {
        return Err(HugepageError::Unsupported);
    }
    let wanted = cfg.count;
    if cfg.per_numa_node.is_empty() {
        if read_count(fs, GLOBAL)? < wanted {
            // The kernel may grant fewer than asked (fragmented memory); what it got is
            // read back below.
            fs.write(GLOBAL, &wanted.to_string())
                .map_err(|e| HugepageError::Io(GLOBAL.into(), e))?;
        }
    } else {
        for (node, &n) in cfg.per_numa_node.iter().enumerate() {
            let path = node_path(node);
            if !fs.exists(&path) {
                return Err(HugepageError::Io(
                    path,
                    std::io::Error::other(format!(
                        "NUMA node {node} does not exist on this machine"
                    )),
                ));
            }
            if read_count(fs, &path)? < n {
                fs.write(&path, &n.to_string())
                    .map_err(|e| HugepageError::Io(path.clone(), e))?;
            }
        }
    }
    let obtained = read_count(fs, GLOBAL)?;
    let short = obtained < wanted;
    let acceptable = !short || cfg.policy == HugepagePolicy::BestEffort;
    let message = match (short, cfg.policy) {
        (false, _) => format!("hugepages: {obtained} x 1 GiB reserved (wanted {wanted})"),
        (true, HugepagePolicy::BestEffort) => {
            format!(
                "hugepages: WARNING only {obtained} of {wanted} x 1 GiB obtained; running with them (best-effort)"
            )
        }
        (true, HugepagePolicy::Required) => {
            format!(
                "hugepages: only {obtained} of {wanted} x 1 GiB obtained and policy is required: data plane stays down"
            )
        }
    };
    Ok(Outcome {
        wanted,
        obtained,
        acceptable,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::RootedFs;

    fn tree(global: u32) -> (tempfile::TempDir, RootedFs) {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootedFs::new(dir.path());
        let p = fs.path(GLOBAL);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("{global}\n")).unwrap();
        (dir, fs)
    }

    fn cfg(count: u32, policy: HugepagePolicy) -> Hugepages {
        Hugepages {
            count,
            per_numa_node: Vec::new(),
            policy,
        }
    }

    #[test]
    fn enough_from_command_line_writes_nothing() {
        let (_d, fs) = tree(4);
        let o = reserve(&fs, &cfg(2, HugepagePolicy::Required)).unwrap();
        assert_eq!((o.wanted, o.obtained, o.acceptable), (2, 4, true));
        assert_eq!(fs.read(GLOBAL).unwrap(), "4\n");
    }

    #[test]
    fn writes_the_count_and_reads_back() {
        let (_d, fs) = tree(0);
        // The fake kernel grants everything: the written value is what is read back.
        let o = reserve(&fs, &cfg(3, HugepagePolicy::Required)).unwrap();
        assert_eq!((o.obtained, o.acceptable), (3, true));
    }

    #[test]
    fn shortfall_judged_by_policy() {
        // A kernel that grants nothing: make the file read-only so the write fails? No —
        // simulate by a count the fake cannot change: a directory in place of the node file
        // is not needed; instead pre-set 1 and ask per node where node0 holds 1.
        let (_d, fs) = tree(1);
        let node0 = fs.path(&node_path(0));
        std::fs::create_dir_all(node0.parent().unwrap()).unwrap();
        std::fs::write(&node0, "1\n").unwrap();
        let mut c = cfg(2, HugepagePolicy::Required);
        c.per_numa_node = vec![1];
        // Node 0 has its 1 page, so nothing is written, and the global count stays 1 < 2.
        let o = reserve(&fs, &c).unwrap();
        assert_eq!((o.obtained, o.acceptable), (1, false));
        assert!(o.message.contains("only 1 of 2"), "{}", o.message);
        c.policy = HugepagePolicy::BestEffort;
        let o = reserve(&fs, &c).unwrap();
        assert!(o.acceptable);
        assert!(o.message.contains("WARNING"));
    }

    #[test]
    fn missing_numa_node_is_an_error() {
        let (_d, fs) = tree(0);
        let mut c = cfg(2, HugepagePolicy::Required);
        c.per_numa_node = vec![1, 1];
        let e = reserve(&fs, &c).unwrap_err().to_string();
        assert!(e.contains("node0"), "{e}");
    }

    #[test]
    fn no_1g_support() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootedFs::new(dir.path());
        assert!(matches!(
            reserve(&fs, &cfg(1, HugepagePolicy::Required)),
            Err(HugepageError::Unsupported)
        ));
    }
}
