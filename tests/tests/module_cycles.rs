//! No module of `dataplane` or `kernels` imports a module that imports it back, directly or
//! through others: their modules form a tree with dependencies pointing one way
//! (docs/architecture.md). Checked on the sources with `syn`.
//!
//! A module is a file (`src/a.rs` or `src/a/mod.rs` is `a`, `src/a/b.rs` is `a::b`); an edge
//! is any path or `use` naming another module's item (`crate::…`, `super::…`, `self::…`, a
//! child module by name), resolved through `pub use` re-exports. Code under `#[cfg(test)]`
//! is left out (a test may use anything), and so are edges from a module to its own
//! ancestors: a child using what its parent defines (the trait it implements) is the tree
//! itself, not a cycle.

// Integration tests are their own crate: the lint is for tests inside library code.
#![allow(clippy::tests_outside_test_module)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

type Module = Vec<String>;

/// A crate's modules (by path) and their files.
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "bin") {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            match parts.last().map(String::as_str) {
                Some("main") if parts.len() == 1 => continue,
                Some("lib") if parts.len() == 1 => parts.clear(),
                Some("mod") => {
                    parts.pop();
                }
                _ => {}
            }
            out.insert(parts, path);
        }
    }
    out
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

/// Every path a file names (as segments), outside `#[cfg(test)]` code; and its `pub use`
/// re-exports (name → path).
#[derive(Default)]
struct Names {
    paths: Vec<Vec<String>>,
    reexports: Vec<(String, Vec<String>)>,
}

impl Names {
    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree, public: bool) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree, public);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut full = prefix.clone();
                if n.ident != "self" {
                    full.push(n.ident.to_string());
                }
                if public {
                    self.reexports
                        .push((full.last().cloned().unwrap_or_default(), full.clone()));
                }
                self.paths.push(full);
            }
            syn::UseTree::Rename(r) => {
                let mut full = prefix.clone();
                full.push(r.ident.to_string());
                if public {
                    self.reexports.push((r.rename.to_string(), full.clone()));
                }
                self.paths.push(full);
            }
            syn::UseTree::Glob(_) => self.paths.push(prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t, public);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Names {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !is_cfg_test(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !is_cfg_test(&f.attrs) {
            syn::visit::visit_item_fn(self, f);
        }
    }
    fn visit_item_impl(&mut self, i: &'ast syn::ItemImpl) {
        if !is_cfg_test(&i.attrs) {
            syn::visit::visit_item_impl(self, i);
        }
    }
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        if !is_cfg_test(&u.attrs) {
            let public = matches!(u.vis, syn::Visibility::Public(_));
            self.use_tree(&mut Vec::new(), &u.tree, public);
        }
    }
    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        // `format!("{}", crate::app::X)`: the arguments are tokens, not syntax; read the
        // paths out of them.
        fn scan(tokens: proc_macro2::TokenStream, out: &mut Vec<Vec<String>>) {
            let mut path: Vec<String> = Vec::new();
            let mut colons = 0;
            for t in tokens {
                match t {
                    proc_macro2::TokenTree::Ident(i) if path.is_empty() || colons == 2 => {
                        path.push(i.to_string());
                        colons = 0;
                    }
                    proc_macro2::TokenTree::Punct(p) if p.as_char() == ':' && !path.is_empty() => {
                        colons += 1;
                    }
                    other => {
                        if path.len() > 1 {
                            out.push(std::mem::take(&mut path));
                        }
                        path.clear();
                        colons = 0;
                        match other {
                            proc_macro2::TokenTree::Group(g) => scan(g.stream(), out),
                            proc_macro2::TokenTree::Ident(i) => path.push(i.to_string()),
                            _ => {}
                        }
                    }
                }
            }
            if path.len() > 1 {
                out.push(path);
            }
        }
        scan(m.tokens.clone(), &mut self.paths);
        syn::visit::visit_macro(self, m);
    }
    fn visit_path(&mut self, p: &'ast syn::Path) {
        self.paths
            .push(p.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, p);
    }
}

/// Resolves a path named in module `from` to the module it reaches, if any.
fn resolve(
    from: &Module,
    path: &[String],
    mods: &BTreeMap<Module, PathBuf>,
    reexports: &BTreeMap<Module, Vec<(String, Vec<String>)>>,
    depth: usize,
) -> Option<Module> {
    let (mut at, rest): (Module, &[String]) = match path.first().map(String::as_str) {
        Some("crate") => (Vec::new(), &path[1..]),
        Some("self") => (from.clone(), &path[1..]),
        Some("super") => {
            let mut at = from.clone();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                at.pop();
                rest = &rest[1..];
            }
            (at, rest)
        }
        Some(first) => {
            let mut child = from.clone();
            child.push(first.to_owned());
            if !mods.contains_key(&child) {
                return None;
            }
            (from.clone(), path)
        }
        None => return None,
    };
    for seg in rest {
        let mut next = at.clone();
        next.push(seg.clone());
        if mods.contains_key(&next) {
            at = next;
            continue;
        }
        // An item re-exported here stands for the module it comes from.
        if depth < 8
            && let Some((_, target)) = reexports
                .get(&at)
                .and_then(|r| r.iter().find(|(name, _)| name == seg))
            && let Some(m) = resolve(&at, target, mods, reexports, depth + 1)
        {
            return Some(m);
        }
        break;
    }
    Some(at)
}

/// The module graph's edges (from → to), without self-edges and edges to an ancestor.
fn edges(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mods = modules(src);
    let mut names = BTreeMap::new();
    for (m, file) in &mods {
        let text = std::fs::read_to_string(file).unwrap();
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut n = Names::default();
        n.visit_file(&ast);
        names.insert(m.clone(), n);
    }
    let reexports: BTreeMap<Module, Vec<(String, Vec<String>)>> = names
        .iter()
        .map(|(m, n)| (m.clone(), n.reexports.clone()))
        .collect();
    let mut out: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (m, n) in &names {
        let set = out.entry(m.clone()).or_default();
        for p in &n.paths {
            if let Some(to) = resolve(m, p, &mods, &reexports, 0)
                && to != *m
                && !m.starts_with(&to)
            {
                set.insert(to);
            }
        }
    }
    out
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(g: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<String>> {
    struct State<'a> {
        g: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Module) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.g.get(v).into_iter().flatten() {
            let Some((w, _)) = s.g.get_key_value(w) else {
                continue;
            };
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                comp.push(name(w));
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

fn assert_no_cycles(krate: &str) {
    let src = dwcp_tests::workspace_root().join(krate).join("src");
    let g = edges(&src);
    assert!(g.len() > 3, "{krate}: found only {} modules", g.len());
    let found = cycles(&g);
    let mut why = String::new();
    for comp in &found {
        why.push_str(&format!("\n  {}:", comp.join(", ")));
        for m in comp {
            let key: Module = if m == "crate" {
                Vec::new()
            } else {
                m.split("::").map(str::to_owned).collect()
            };
            let uses: Vec<String> = g[&key]
                .iter()
                .map(name)
                .filter(|n| comp.contains(n))
                .collect();
            why.push_str(&format!("\n    {m} uses {}", uses.join(", ")));
        }
    }
    assert!(
        found.is_empty(),
        "{krate}: modules that import each other:{why}"
    );
}

#[test]
fn dataplane_modules_form_no_cycle() {
    assert_no_cycles("dataplane");
}

#[test]
fn kernels_modules_form_no_cycle() {
    assert_no_cycles("kernels");
}

#[test]
fn the_check_finds_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("io")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\npub mod io;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::B;\npub struct A;\n").unwrap();
    std::fs::write(src.join("b.rs"), "pub struct B(crate::io::Z);\n").unwrap();
    // `io` re-exports `a`'s item: naming `crate::io::Y` is using `a`.
    std::fs::write(
        src.join("io/mod.rs"),
        "pub mod x;\npub use x::X;\npub use crate::a::A as Y;\npub struct Z;\n",
    )
    .unwrap();
    // A child using its parent is not a cycle.
    std::fs::write(src.join("io/x.rs"), "pub struct X(super::Z);\n").unwrap();
    let g = edges(src);
    let found = cycles(&g);
    assert_eq!(
        found,
        vec![vec!["a".to_owned(), "b".to_owned(), "io".to_owned()]],
        "{g:?}"
    );
    // Cut `io`'s re-export of `a` and the cycle is gone.
    std::fs::write(
        src.join("io/mod.rs"),
        "pub mod x;\npub use x::X;\npub struct Z;\n",
    )
    .unwrap();
    assert!(cycles(&edges(src)).is_empty());
}
