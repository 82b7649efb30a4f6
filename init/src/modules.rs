//! Loading the image's kernel modules with `finit_module`, in the dependency order that
//! `modules.dep` gives.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;

/// One line of `modules.dep`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepLine {
    /// Module path relative to `lib/modules/RELEASE`.
    pub path: String,
    /// Paths it depends on.
    pub depends: Vec<String>,
}

/// Parses `modules.dep`.
pub fn parse_dep(text: &str) -> Vec<DepLine> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(path, deps)| DepLine {
            path: path.trim().to_owned(),
            depends: deps.split_whitespace().map(str::to_owned).collect(),
        })
        .collect()
}

/// Every module after all its dependencies; ties in file order.
pub fn load_order(lines: &[DepLine]) -> Vec<String> {
    let deps: BTreeMap<&str, &[String]> = lines
        .iter()
        .map(|l| (l.path.as_str(), l.depends.as_slice()))
        .collect();
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut order = Vec::new();
    fn visit(
        m: &str,
        deps: &BTreeMap<&str, &[String]>,
        placed: &mut BTreeSet<String>,
        order: &mut Vec<String>,
        depth: usize,
    ) {
        if placed.contains(m) || depth > 64 {
            return;
        }
        for d in deps.get(m).copied().unwrap_or_default() {
            visit(d, deps, placed, order, depth + 1);
        }
        if placed.insert(m.to_owned()) {
            order.push(m.to_owned());
        }
    }
    for l in lines {
        visit(&l.path, &deps, &mut placed, &mut order, 0);
    }
    order
}

/// How loading one module went.
#[derive(Debug)]
pub enum Loaded {
    /// Loaded now.
    Loaded,
    /// Already in the kernel.
    AlreadyLoaded,
    /// The module found no device to drive and refused to load (`ENODEV`).
    NoDevice,
    /// Failed; the error.
    Failed(String),
}

/// Loads one module file.
pub fn load(path: &std::path::Path) -> Loaded {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return Loaded::Failed(e.to_string()),
    };
    let no_params = CString::default();
    match nix::kmod::finit_module(&file, &no_params, nix::kmod::ModuleInitFlags::empty()) {
        Ok(()) => Loaded::Loaded,
        Err(nix::errno::Errno::EEXIST) => Loaded::AlreadyLoaded,
        Err(nix::errno::Errno::ENODEV) => Loaded::NoDevice,
        Err(e) => Loaded::Failed(e.desc().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_first() {
        let dep = "kernel/b.ko: kernel/a.ko\nkernel/c.ko: kernel/b.ko kernel/a.ko\nkernel/a.ko:\n";
        let lines = parse_dep(dep);
        assert_eq!(lines.len(), 3);
        assert_eq!(
            load_order(&lines),
            ["kernel/a.ko", "kernel/b.ko", "kernel/c.ko"]
        );
    }
}
