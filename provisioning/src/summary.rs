//! A one-screen summary of a validated node config, for `dwcp config check` and the console.
//! Secrets are never shown; public keys are shortened.

use std::fmt::Write as _;

use crate::schema::NodeConfig;

/// An enum value as the config spells it (`best-effort`, `af_packet`).
fn word<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|j| j.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn list(cores: &[u16]) -> String {
    cores
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Renders the summary.
pub fn summary(c: &NodeConfig) -> String {
    let mut o = String::new();
    let m = &c.management;
    let nic = match (&m.mac, &m.interface) {
        (Some(mac), _) => format!("mac {mac}"),
        (None, Some(name)) => format!("interface {name}"),
        (None, None) => "?".to_owned(),
    };
    let gw = m.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
    let _ = writeln!(
        o,
        "node        {} (log level {})",
        c.name,
        word(&c.log_level)
    );
    let _ = writeln!(o, "management  {nic}, {}{gw}", m.address);
    let _ = writeln!(
        o,
        "cores       housekeeping {} | data plane {} ({} workers, bursts of up to {})",
        list(&c.cores.housekeeping),
        list(&c.cores.dataplane),
        c.cores.dataplane.len(),
        c.dataplane.burst
    );
    let h = &c.hugepages;
    let split = if h.per_numa_node.is_empty() {
        String::new()
    } else {
        format!(" split {:?} per NUMA node", h.per_numa_node)
    };
    let _ = writeln!(
        o,
        "hugepages   {} x 1 GiB{split}, {}",
        h.count,
        word(&h.policy)
    );
    let _ = writeln!(o, "ports");
    for p in &c.ports {
        let dev = match (&p.pci, &p.interface) {
            (Some(pci), _) => pci.to_string(),
            (None, Some(i)) => i.to_string(),
            (None, None) => "-".to_owned(),
        };
        let _ = writeln!(
            o,
            "  {:<8} {:<4} {:<9} {:<13} {:<18} mtu {:<4} queues {}rx/{}tx",
            p.name.0,
            word(&p.role),
            word(&p.backend),
            dev,
            p.address.to_string(),
            p.mtu,
            p.rx_queues,
            p.tx_queues
        );
    }
    let t = &c.tunnel;
    let _ = writeln!(
        o,
        "tunnel      udp/{} public key {} replay window {} rekey {}s keepalive {}s",
        t.listen_port,
        short(&t.private_key.public_key().to_string()),
        t.replay_window,
        t.rekey_after_seconds,
        t.keepalive_seconds
    );
    for p in &t.peers {
        let prefixes = p
            .allowed_prefixes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let ep = p
            .endpoint
            .map(|e| e.to_string())
            .unwrap_or_else(|| "(responder)".to_owned());
        let psk = if p.preshared_key.is_some() {
            " +psk"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "  peer {:<10} {:<21} key {}{psk} {} -> {prefixes}",
            p.name.0,
            ep,
            short(&p.public_key.to_string()),
            word(&p.compression)
        );
    }
    let f = &c.offload;
    let _ = writeln!(
        o,
        "offload     gpu {} device {} batch {} max delay {}us {} gathering core {}",
        word(&f.gpu),
        f.device,
        f.max_batch,
        f.max_delay_us,
        match f.verify_every {
            0 => "unchecked".to_owned(),
            1 => "checked whole".to_owned(),
            n if f.spot_check => format!("checked whole 1 in {n}, the rest spot-checked"),
            n => format!("checked whole 1 in {n}"),
        },
        f.gather_core(&c.cores)
            .map_or_else(|| "-".to_owned(), |n| n.to_string())
    );
    let _ = writeln!(o, "metrics     http://{}/metrics", c.metrics.listen);
    o
}

fn short(key: &str) -> String {
    format!("{}…", &key[..key.len().min(8)])
}

#[cfg(test)]
mod tests {
    use crate::document::SourceFile;
    use crate::{example, validate};

    /// The offload line says how the GPU's batches are checked.
    #[test]
    fn the_offload_line_says_how_gpu_batches_are_checked() {
        let mut c = validate::check(&SourceFile::new("x", example::example().unwrap())).unwrap();
        let line = |c: &crate::schema::NodeConfig| {
            super::summary(c)
                .lines()
                .find(|l| l.starts_with("offload "))
                .unwrap_or_default()
                .to_owned()
        };
        for (every, says) in [
            (64, " checked whole 1 in 64, the rest spot-checked "),
            (1, " checked whole "),
            (0, " unchecked "),
        ] {
            c.offload.verify_every = every;
            assert!(line(&c).contains(says), "{every}: {}", line(&c));
        }
        c.offload.verify_every = 64;
        c.offload.spot_check = false;
        assert!(
            line(&c).contains(" checked whole 1 in 64 gathering"),
            "{}",
            line(&c)
        );
    }
}
