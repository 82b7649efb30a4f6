//! Validation of a node config: structure first (every field, type and value), then the rules
//! that tie fields together (duplicates, overlaps, addresses on the right network).
//!
//! The result is a [`NodeConfig`] that init and the data plane can trust, or every problem in
//! the file as `FILE:LINE:COL: field.path: message`. Whether the node really has the cores,
//! NICs and memory listed is for init to check at boot, not for this module.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value as Json;

use crate::document::{Diagnostic, FieldPath, Node, SourceFile};
use crate::path;
use crate::schema::{Backend, NodeConfig, PortRole, Transport};
use crate::structure;

/// The JSON schema of [`NodeConfig`], generated once.
pub fn json_schema() -> &'static Json {
    static SCHEMA: OnceLock<Json> = OnceLock::new();
    SCHEMA.get_or_init(|| schemars::schema_for!(NodeConfig).to_value())
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file was read and has problems.
    #[error("{} has {} problem(s)", .0.first().map_or("config", |d| d.file.as_str()), .0.len())]
    Invalid(Vec<Diagnostic>),
}

/// Reads and validates a config file.
pub fn load_file(path: &Path) -> Result<NodeConfig, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let src = SourceFile::from_bytes(path.display().to_string(), bytes)
        .map_err(|d| LoadError::Invalid(vec![d]))?;
    check(&src).map_err(LoadError::Invalid)
}

/// Validates a config's text; returns the config or every problem found, in file order.
pub fn check(src: &SourceFile) -> Result<NodeConfig, Vec<Diagnostic>> {
    let root = src.parse().map_err(|d| vec![d])?;
    let findings = structure::check(json_schema(), &root);
    if !findings.is_empty() {
        let pruned: Vec<FieldPath> = findings.iter().map(|f| f.path.clone()).collect();
        let mut diags: Vec<Diagnostic> = findings
            .into_iter()
            .map(|f| src.diagnostic(f.offset, f.path, f.message))
            .collect();
        // Cross-field rules still run when the broken fields can simply be left out (they
        // have defaults); rule errors near a removed field are dropped as likely echoes.
        if let Some(config) =
            prune(&src.text, &pruned).and_then(|t| toml::from_str::<NodeConfig>(&t).ok())
        {
            let mut rules = Rules {
                src,
                root: &root,
                diags: Vec::new(),
            };
            rules.run(&config);
            diags.extend(
                rules
                    .diags
                    .into_iter()
                    .filter(|d| !pruned.iter().any(|p| near(p, &d.path))),
            );
        }
        sort(&mut diags);
        return Err(diags);
    }
    let config: NodeConfig = toml::from_str(&src.text).map_err(|e| {
        // The structural check should have caught everything serde rejects; if not, still
        // point at the place.
        let at = e.span().map_or(0, |s| s.start);
        vec![src.diagnostic(at, FieldPath::root(), e.message().to_owned())]
    })?;
    let mut rules = Rules {
        src,
        root: &root,
        diags: Vec::new(),
    };
    rules.run(&config);
    if rules.diags.is_empty() {
        Ok(config)
    } else {
        sort(&mut rules.diags);
        Err(rules.diags)
    }
}

/// The config text with every field named in `paths` removed (an array element's whole array),
/// or `None` when a path cannot be found (a missing required field, say).
fn prune(text: &str, paths: &[FieldPath]) -> Option<String> {
    use crate::document::Segment;
    let mut doc: toml_edit::DocumentMut = text.parse().ok()?;
    for path in paths {
        let keep = path.0.iter().rposition(|s| matches!(s, Segment::Key(_)))?;
        let Segment::Key(last) = &path.0[keep] else {
            return None;
        };
        let mut item = doc.as_item_mut();
        for seg in &path.0[..keep] {
            item = match seg {
                Segment::Key(k) => item.get_mut(k.as_str())?,
                Segment::Index(i) => item.get_mut(*i)?,
            };
        }
        item.as_table_like_mut()?.remove(last)?;
    }
    Some(doc.to_string())
}

/// Whether a rule error at `rule` may be an echo of a removed field `pruned`: it is about the
/// same table.
fn near(pruned: &FieldPath, rule: &FieldPath) -> bool {
    let parent = &pruned.0[..pruned.0.len().saturating_sub(1)];
    if parent.is_empty() {
        return rule == pruned;
    }
    rule.0.starts_with(parent) || parent.starts_with(&rule.0)
}

fn sort(diags: &mut [Diagnostic]) {
    diags.sort_by_key(|d| (d.line, d.column));
}

struct Rules<'a> {
    src: &'a SourceFile,
    root: &'a Node,
    diags: Vec<Diagnostic>,
}

impl Rules<'_> {
    fn error(&mut self, path: FieldPath, message: String) {
        let (span, _) = self.root.lookup(&path);
        self.diags
            .push(self.src.diagnostic(span.start, path, message));
    }

    fn run(&mut self, c: &NodeConfig) {
        self.management(c);
        self.cores(c);
        self.hugepages(c);
        self.ports(c);
        self.tunnel(c);
        self.rdma(c);
        self.offload(c);
        self.metrics(c);
    }

    /// RDMA devices are unique, on kernel-owned interfaces; an RDMA peer names one of them.
    fn rdma(&mut self, c: &NodeConfig) {
        for (i, d) in c.rdma.iter().enumerate() {
            for (j, other) in c.rdma.iter().enumerate().take(i) {
                if other.device == d.device {
                    self.error(
                        path!("rdma", i, "device"),
                        format!("RDMA device `{}` is also listed as rdma[{j}]", d.device),
                    );
                }
                if other.interface == d.interface {
                    self.error(
                        path!("rdma", i, "interface"),
                        format!(
                            "interface `{}` already carries rdma[{j}] (`{}`)",
                            d.interface, other.device
                        ),
                    );
                }
            }
            if let Some(p) = c
                .ports
                .iter()
                .find(|p| p.interface.as_ref() == Some(&d.interface))
            {
                self.error(
                    path!("rdma", i, "interface"),
                    format!("interface `{}` is data port `{}`'s; RDMA runs on a kernel-owned NIC of its own", d.interface, p.name),
                );
            }
        }
        for (i, peer) in c.tunnel.peers.iter().enumerate() {
            match (peer.transport, &peer.rdma) {
                (Transport::Rdma, None) => self.error(
                    path!("tunnel", "peers", i, "transport"),
                    format!("peer `{}` uses transport `rdma` and needs `rdma = {{ device = \"…\", gid_index = … }}`", peer.name),
                ),
                (Transport::Udp, Some(_)) => self.error(
                    path!("tunnel", "peers", i, "rdma"),
                    format!("peer `{}` uses transport `udp`; `rdma` is only for transport `rdma`", peer.name),
                ),
                (Transport::Rdma, Some(r)) if !c.rdma.iter().any(|d| d.device == r.device) => {
                    let known: Vec<&str> = c.rdma.iter().map(|d| d.device.0.as_str()).collect();
                    self.error(
                        path!("tunnel", "peers", i, "rdma", "device"),
                        format!(
                            "peer `{}` names RDMA device `{}`, which is not one of this node's [[rdma]] devices ({})",
                            peer.name,
                            r.device,
                            if known.is_empty() { "none listed".to_owned() } else { known.join(", ") }
                        ),
                    );
                }
                _ => {}
            }
        }
    }

    fn offload(&mut self, c: &NodeConfig) {
        let Some(core) = c.offload.core else { return };
        if let Some(i) = c.cores.dataplane.iter().position(|&d| d == core) {
            self.error(
                path!("offload", "core"),
                format!(
                    "core {core} is a data-plane core (cores.dataplane[{i}]): the GPU gathering thread would take turns with that core's worker; give a core of its own or a housekeeping core"
                ),
            );
        }
    }

    fn management(&mut self, c: &NodeConfig) {
        let m = &c.management;
        match (&m.mac, &m.interface) {
            (Some(_), Some(_)) => self.error(
                path!("management", "interface"),
                "give either `mac` or `interface`, not both".into(),
            ),
            (None, None) => self.error(
                path!("management"),
                "missing `mac` or `interface`: say which NIC is the management interface".into(),
            ),
            _ => {}
        }
        if let Some(gw) = m.gateway {
            let net = m.address.network();
            if !net.0.contains(&gw) {
                self.error(
                    path!("management", "gateway"),
                    format!("gateway {gw} is outside the management network {net}"),
                );
            } else if gw == m.address.addr() {
                self.error(
                    path!("management", "gateway"),
                    format!("gateway {gw} is the node's own management address"),
                );
            }
        }
    }

    fn cores(&mut self, c: &NodeConfig) {
        let mut seen: HashMap<u16, FieldPath> = HashMap::new();
        for list in ["housekeeping", "dataplane"] {
            let cores = match list {
                "housekeeping" => &c.cores.housekeeping,
                _ => &c.cores.dataplane,
            };
            if cores.is_empty() {
                self.error(
                    path!("cores", list),
                    format!("`cores.{list}` needs at least one core"),
                );
            }
            for (i, &core) in cores.iter().enumerate() {
                let here = path!("cores", list, i);
                match seen.get(&core) {
                    Some(first) => {
                        let same_list = first.0.get(1) == here.0.get(1);
                        let message = if same_list {
                            format!(
                                "core {core} is listed twice in `cores.{list}` (first at {first})"
                            )
                        } else {
                            format!(
                                "core {core} is both a housekeeping and a data-plane core (also at {first})"
                            )
                        };
                        self.error(here, message);
                    }
                    None => {
                        seen.insert(core, here);
                    }
                }
            }
        }
    }

    fn hugepages(&mut self, c: &NodeConfig) {
        let h = &c.hugepages;
        if !h.per_numa_node.is_empty() {
            let sum: u64 = h.per_numa_node.iter().map(|&n| u64::from(n)).sum();
            if sum != u64::from(h.count) {
                self.error(
                    path!("hugepages", "per_numa_node"),
                    format!(
                        "per-node counts add up to {sum}, but `hugepages.count` is {}",
                        h.count
                    ),
                );
            }
        }
    }

    fn ports(&mut self, c: &NodeConfig) {
        for role in [PortRole::Lan, PortRole::Wan] {
            if !c.ports.iter().any(|p| p.role == role) {
                let name = if role == PortRole::Lan { "lan" } else { "wan" };
                self.error(
                    path!("ports"),
                    format!("no port has role `{name}`: a gateway needs a LAN and a WAN port"),
                );
            }
        }
        let mgmt_net = c.management.address.network();
        for (i, p) in c.ports.iter().enumerate() {
            match (p.backend, &p.vdev) {
                (Backend::Dpdk, Some(_)) if p.pci.is_some() => self.error(
                    path!("ports", i, "vdev"),
                    format!("port `{}` names both a PCI NIC and a virtual device; keep one", p.name),
                ),
                (Backend::Dpdk, Some(v)) if !v.starts_with("net_") => self.error(
                    path!("ports", i, "vdev"),
                    format!("`{v}` is not a DPDK network virtual device (they start with `net_`, e.g. `net_af_packet0,iface=eth1`)"),
                ),
                (Backend::AfPacket | Backend::Memory, Some(_)) => self.error(
                    path!("ports", i, "vdev"),
                    format!("port `{}`: `vdev` is for backend `dpdk`; remove it", p.name),
                ),
                _ => {}
            }
            match (p.backend, &p.pci, &p.interface) {
                (Backend::Dpdk, None, _) if p.vdev.is_none() => self.error(
                    path!("ports", i, "backend"),
                    format!("port `{}` uses backend `dpdk` and needs `pci`, the NIC's PCI address (or `vdev`, a DPDK virtual device)", p.name),
                ),
                (Backend::Dpdk, Some(_), Some(_)) => self.error(
                    path!("ports", i, "interface"),
                    format!("port `{}` uses backend `dpdk`, which drives the NIC by `pci`; remove `interface`", p.name),
                ),
                (Backend::AfPacket, _, None) => self.error(
                    path!("ports", i, "backend"),
                    format!("port `{}` uses backend `af_packet` and needs `interface`, the kernel interface name", p.name),
                ),
                (Backend::AfPacket, Some(_), Some(_)) => self.error(
                    path!("ports", i, "pci"),
                    format!("port `{}` uses backend `af_packet`, which opens the NIC by `interface`; remove `pci`", p.name),
                ),
                _ => {}
            }
            if let Some(gw) = p.gateway {
                let net = p.address.network();
                if !net.0.contains(&gw) || gw == p.address.addr() {
                    self.error(
                        path!("ports", i, "gateway"),
                        format!("gateway {gw} must be another address on the port's network {net}"),
                    );
                }
            }
            if p.address.network().overlaps(&mgmt_net) {
                self.error(
                    path!("ports", i, "address"),
                    format!(
                        "network {} overlaps the management network {mgmt_net}",
                        p.address.network()
                    ),
                );
            }
            if let (Some(ifname), Some(mgmt)) = (&p.interface, &c.management.interface)
                && ifname == mgmt
            {
                self.error(
                    path!("ports", i, "interface"),
                    format!("`{ifname}` is the management interface; data ports cannot share it"),
                );
            }
            for (j, q) in c.ports.iter().enumerate().take(i) {
                if p.name == q.name {
                    self.error(
                        path!("ports", i, "name"),
                        format!("port name `{}` is also used by ports[{j}]", p.name),
                    );
                }
                if p.pci.is_some() && p.pci == q.pci {
                    let pci = p.pci.map(|a| a.to_string()).unwrap_or_default();
                    self.error(
                        path!("ports", i, "pci"),
                        format!(
                            "PCI address {pci} is also used by ports[{j}] (`{}`)",
                            q.name
                        ),
                    );
                }
                if p.interface.is_some() && p.interface == q.interface {
                    let ifname = p
                        .interface
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    self.error(
                        path!("ports", i, "interface"),
                        format!(
                            "interface `{ifname}` is also used by ports[{j}] (`{}`)",
                            q.name
                        ),
                    );
                }
                if p.address.network().overlaps(&q.address.network()) {
                    self.error(
                        path!("ports", i, "address"),
                        format!(
                            "network {} overlaps ports[{j}] (`{}`) network {}",
                            p.address.network(),
                            q.name,
                            q.address.network()
                        ),
                    );
                }
            }
        }
    }

    fn tunnel(&mut self, c: &NodeConfig) {
        let t = &c.tunnel;
        let workers = c.cores.dataplane.len();
        let last_port = usize::from(t.listen_port) + workers.saturating_sub(1);
        if last_port > usize::from(u16::MAX) {
            self.error(
                path!("tunnel", "listen_port"),
                format!(
                    "{workers} workers need UDP ports {}..={last_port}, past 65535",
                    t.listen_port
                ),
            );
        }
        let own = t.private_key.public_key();
        let lan_nets: Vec<_> = c
            .ports
            .iter()
            .filter(|p| p.role == PortRole::Lan)
            .map(|p| (p.name.clone(), p.address.network()))
            .collect();
        for (i, peer) in t.peers.iter().enumerate() {
            if peer.public_key == own {
                self.error(
                    path!("tunnel", "peers", i, "public_key"),
                    format!("peer `{}` has this node's own public key", peer.name),
                );
            }
            if peer.allowed_prefixes.is_empty() {
                self.error(
                    path!("tunnel", "peers", i, "allowed_prefixes"),
                    format!(
                        "peer `{}` has no allowed prefixes: no traffic could reach it",
                        peer.name
                    ),
                );
            }
            for (j, other) in t.peers.iter().enumerate().take(i) {
                if peer.name == other.name {
                    self.error(
                        path!("tunnel", "peers", i, "name"),
                        format!(
                            "peer name `{}` is also used by tunnel.peers[{j}]",
                            peer.name
                        ),
                    );
                }
                if peer.public_key == other.public_key {
                    self.error(
                        path!("tunnel", "peers", i, "public_key"),
                        format!(
                            "public key is also used by peer `{}` (tunnel.peers[{j}])",
                            other.name
                        ),
                    );
                }
            }
            for (k, prefix) in peer.allowed_prefixes.iter().enumerate() {
                let here = path!("tunnel", "peers", i, "allowed_prefixes", k);
                // Earlier prefixes of this peer, then every prefix of earlier peers.
                let earlier = t.peers[..=i].iter().enumerate().flat_map(|(j, p)| {
                    let n = if j == i { k } else { p.allowed_prefixes.len() };
                    p.allowed_prefixes[..n].iter().map(move |q| (j, p, q))
                });
                for (j, owner, q) in earlier {
                    if prefix.overlaps(q) {
                        let whose = if j == i {
                            "another prefix of the same peer".to_owned()
                        } else {
                            format!("peer `{}`", owner.name)
                        };
                        self.error(here.clone(), format!("{prefix} overlaps {q} of {whose}"));
                    }
                }
                for (name, net) in &lan_nets {
                    if prefix.overlaps(net) {
                        self.error(
                            here.clone(),
                            format!(
                                "{prefix} overlaps the local network {net} of LAN port `{name}`"
                            ),
                        );
                    }
                }
            }
        }
    }

    fn metrics(&mut self, c: &NodeConfig) {
        let listen = c.metrics.listen;
        let mgmt = c.management.address;
        let ip = *listen.ip();
        if !mgmt.network().0.contains(&ip) {
            self.error(
                path!("metrics", "listen"),
                format!("{ip} is not on the management network {}: metrics are served on the management network only", mgmt.network()),
            );
        } else if ip != mgmt.addr() {
            self.error(
                path!("metrics", "listen"),
                format!("{ip} is not the management address {}; the node has no other address on that network", mgmt.addr()),
            );
        }
        if listen.port() == 0 {
            self.error(
                path!("metrics", "listen"),
                "port 0 is not a listening port".into(),
            );
        }
    }
}
