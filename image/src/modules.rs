//! Kernel module closure: from a list of module names, every module they need, read from
//! each module's ELF `.modinfo` (`depends=`), in load order, and the `modules.dep` that
//! describes them (the Debian package ships none).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use object::{Object as _, ObjectSection as _};

/// A module in the closure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// Canonical name (`-` written as `_`).
    pub name: String,
    /// Path relative to `lib/modules/RELEASE`, e.g. `kernel/drivers/net/virtio_net.ko`.
    pub rel_path: String,
    /// Canonical names of the modules it depends on.
    pub depends: Vec<String>,
}

/// The resolved closure.
#[derive(Clone, Debug, Default)]
pub struct Closure {
    /// Modules in load order: every module after all its dependencies.
    pub modules: Vec<Module>,
    /// Requested names that are built into the kernel (nothing to load).
    pub builtin: Vec<String>,
}

/// Why the closure could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// A directory or file could not be read.
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// A module is neither a file nor built in.
    #[error("module `{name}` (needed by {needed_by}) is neither in the package nor built in")]
    NotFound {
        /// Module.
        name: String,
        /// Who asked.
        needed_by: String,
    },
    /// A `.ko` file is not a readable ELF object with `.modinfo`.
    #[error("{0}: not a kernel module ({1})")]
    BadModule(PathBuf, String),
}

/// Canonical module name: `vfio-pci` and `vfio_pci` are the same module.
pub fn canonical(name: &str) -> String {
    name.trim_end_matches(".ko").replace('-', "_")
}

/// The `key=value` pairs of a module's `.modinfo` section.
pub fn modinfo(path: &Path) -> Result<Vec<(String, String)>, ModuleError> {
    let data = std::fs::read(path).map_err(|e| ModuleError::Read(path.to_owned(), e))?;
    let file = object::File::parse(&*data)
        .map_err(|e| ModuleError::BadModule(path.to_owned(), e.to_string()))?;
    let section = file
        .section_by_name(".modinfo")
        .ok_or_else(|| ModuleError::BadModule(path.to_owned(), "no .modinfo section".into()))?;
    let bytes = section
        .data()
        .map_err(|e| ModuleError::BadModule(path.to_owned(), e.to_string()))?;
    Ok(bytes
        .split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

fn index(modules_dir: &Path) -> Result<HashMap<String, String>, ModuleError> {
    let mut out = HashMap::new();
    let mut stack = vec![modules_dir.join("kernel")];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| ModuleError::Read(dir.clone(), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ModuleError::Read(dir.clone(), e))?;
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(file) = path.file_name().and_then(|f| f.to_str())
                && file.ends_with(".ko")
            {
                let rel = path
                    .strip_prefix(modules_dir)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                out.insert(canonical(file), rel);
            }
        }
    }
    Ok(out)
}

fn builtin(modules_dir: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(canonical)
        .collect()
}

/// Resolves the closure of `wanted` in an unpacked `lib/modules/RELEASE`.
pub fn resolve(modules_dir: &Path, wanted: &[&str]) -> Result<Closure, ModuleError> {
    let files = index(modules_dir)?;
    let builtins = builtin(modules_dir);
    let mut found: BTreeMap<String, Module> = BTreeMap::new();
    let mut closure = Closure::default();
    let mut queue: Vec<(String, String)> = wanted
        .iter()
        .map(|w| (canonical(w), "the image".to_owned()))
        .collect();
    while let Some((name, needed_by)) = queue.pop() {
        if found.contains_key(&name) || closure.builtin.contains(&name) {
            continue;
        }
        let Some(rel) = files.get(&name) else {
            if builtins.contains(&name) {
                closure.builtin.push(name);
                continue;
            }
            return Err(ModuleError::NotFound { name, needed_by });
        };
        let info = modinfo(&modules_dir.join(rel))?;
        let mut depends: Vec<String> = info
            .iter()
            .filter(|(k, _)| k == "depends")
            .flat_map(|(_, v)| {
                v.split(',')
                    .filter(|d| !d.is_empty())
                    .map(canonical)
                    .collect::<Vec<_>>()
            })
            .collect();
        depends.sort();
        depends.dedup();
        for d in &depends {
            queue.push((d.clone(), name.clone()));
        }
        found.insert(
            name.clone(),
            Module {
                name,
                rel_path: rel.clone(),
                depends,
            },
        );
    }
    closure.builtin.sort();
    // Load order: repeatedly take the (name-sorted) modules whose dependencies are all placed.
    let mut placed: BTreeSet<String> = BTreeSet::new();
    while placed.len() < found.len() {
        let ready: Vec<String> = found
            .values()
            .filter(|m| !placed.contains(&m.name))
            .filter(|m| {
                m.depends
                    .iter()
                    .all(|d| placed.contains(d) || !found.contains_key(d))
            })
            .map(|m| m.name.clone())
            .collect();
        if ready.is_empty() {
            // A dependency cycle: kernels refuse those; load the rest in name order.
            let rest: Vec<String> = found
                .keys()
                .filter(|n| !placed.contains(*n))
                .cloned()
                .collect();
            for n in rest {
                closure.modules.push(found[&n].clone());
                placed.insert(n);
            }
            break;
        }
        for n in ready {
            closure.modules.push(found[&n].clone());
            placed.insert(n);
        }
    }
    Ok(closure)
}

impl Closure {
    /// `modules.dep` text: `path: dep-path dep-path`, dependencies listed deepest last, as
    /// depmod writes them.
    pub fn modules_dep(&self) -> String {
        let by_name: HashMap<&str, &Module> =
            self.modules.iter().map(|m| (m.name.as_str(), m)).collect();
        let mut out = String::new();
        for m in &self.modules {
            // All transitive dependencies, in reverse load order.
            let mut all: Vec<&str> = Vec::new();
            let mut stack: Vec<&str> = m.depends.iter().map(String::as_str).collect();
            while let Some(d) = stack.pop() {
                if all.contains(&d) {
                    continue;
                }
                all.push(d);
                if let Some(dm) = by_name.get(d) {
                    stack.extend(dm.depends.iter().map(String::as_str));
                }
            }
            let order = |n: &str| self.modules.iter().position(|x| x.name == n).unwrap_or(0);
            all.sort_by_key(|n| std::cmp::Reverse(order(n)));
            let deps: Vec<&str> = all
                .iter()
                .filter_map(|d| by_name.get(d).map(|x| x.rel_path.as_str()))
                .collect();
            out.push_str(&m.rel_path);
            out.push(':');
            for d in deps {
                out.push(' ');
                out.push_str(d);
            }
            out.push('\n');
        }
        out
    }
}
