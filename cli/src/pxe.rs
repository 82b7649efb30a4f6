//! `dwcp pxe build`: a TFTP/HTTP tree that network-boots a fleet. An iPXE script picks the
//! node by MAC; each known node gets the kernel, the common initramfs, and a small config
//! initramfs (`/etc/dwcp/dwcp.toml`) as a second initrd, with the kernel command line its own
//! config implies. An unknown MAC boots the same image without a config: unprovisioned.
//!
//! Only iPXE commands that Debian's `ipxe-qemu` ROM (2019) has are used: `iseq`, `goto`,
//! `echo`, `kernel`, `initrd`, `boot`, and the `${mac:hexhyp}` setting.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use dwcp_provisioning::document::SourceFile;
use dwcp_provisioning::inventory::Inventory;
use dwcp_provisioning::types::MacAddress;

/// The MAC as iPXE's `${mac:hexhyp}` prints it.
pub fn hexhyp(mac: &MacAddress) -> String {
    mac.0
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join("-")
}

/// Builds the tree; returns the node names by MAC.
pub fn build(
    artifacts: &Path,
    inventory: &Path,
    out: &Path,
) -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(inventory)
        .with_context(|| format!("cannot read {}", inventory.display()))?;
    let inv = Inventory::parse(&SourceFile::new(inventory.display().to_string(), text))
        .map_err(|d| anyhow::anyhow!("{d}"))?;
    let base = inventory.parent().unwrap_or(Path::new("."));
    let mut problems = Vec::new();
    let mut nodes = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut script = String::from("#!ipxe\necho DWCP PXE: this NIC is ${mac}\n");
    let mut bodies = String::new();
    // Written only once every node's config passed.
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for n in &inv.nodes {
        let key = hexhyp(&n.mac);
        if !seen.insert(key.clone()) {
            problems.push(format!(
                "{}: MAC {} is listed twice",
                inventory.display(),
                n.mac
            ));
            continue;
        }
        let path = base.join(&n.config);
        let src = match std::fs::read(&path) {
            Ok(b) => SourceFile::from_bytes(path.display().to_string(), b),
            Err(e) => {
                problems.push(format!("{}: cannot read: {e}", path.display()));
                continue;
            }
        };
        let src = match src {
            Ok(src) => src,
            Err(d) => {
                problems.push(d.to_string());
                continue;
            }
        };
        let cfg = match dwcp_provisioning::validate::check(&src) {
            Ok(c) => c,
            Err(diags) => {
                problems.extend(diags.iter().map(ToString::to_string));
                continue;
            }
        };
        let cpio = format!("node-{key}.cpio");
        files.push((cpio.clone(), super::image_build::config_initrd(&src.text)?));
        let _ = writeln!(script, "iseq ${{mac:hexhyp}} {key} && goto n-{key} ||");
        let _ = write!(
            bodies,
            ":n-{key}\necho DWCP PXE: booting node {name}\nkernel vmlinuz {cmdline}\ninitrd initrd.img\ninitrd {cpio}\nboot\n",
            name = cfg.name,
            cmdline = dwcp_provisioning::cmdline::kernel_cmdline(&cfg),
        );
        nodes.insert(key, cfg.name.to_string());
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        bail!(
            "{}: {} problem(s); no PXE tree written",
            inventory.display(),
            problems.len()
        );
    }
    script.push_str("goto unprovisioned\n");
    script.push_str(&bodies);
    script.push_str(
        ":unprovisioned\necho DWCP PXE: ${mac} is not in the inventory: booting unprovisioned\n\
         kernel vmlinuz console=ttyS0,115200 loglevel=4\ninitrd initrd.img\nboot\n",
    );
    std::fs::create_dir_all(out)?;
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::copy(artifacts.join(f), out.join(f))
            .with_context(|| format!("cannot copy {f} from {}", artifacts.display()))?;
    }
    for (name, data) in files {
        std::fs::write(out.join(name), data)?;
    }
    std::fs::write(out.join("boot.ipxe"), script)?;
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_picks_nodes_by_mac_and_refuses_bad_configs() {
        let dir = tempfile::tempdir().unwrap();
        let art = dir.path().join("art");
        std::fs::create_dir_all(&art).unwrap();
        std::fs::write(art.join("vmlinuz"), b"k").unwrap();
        std::fs::write(art.join("initrd.img"), b"i").unwrap();
        let cfg = dwcp_provisioning::example::qemu_example().unwrap();
        std::fs::write(dir.path().join("a.toml"), cfg.replace("qemu-node", "pxe-a")).unwrap();
        std::fs::write(
            dir.path().join("bad.toml"),
            cfg.replace("count = 1", "count = -1"),
        )
        .unwrap();
        let inv = dir.path().join("nodes.toml");
        std::fs::write(
            &inv,
            "[[node]]\nmac = \"52:54:00:00:0A:02\"\nconfig = \"a.toml\"\n",
        )
        .unwrap();
        let out = dir.path().join("tree");
        let nodes = build(&art, &inv, &out).unwrap();
        assert_eq!(nodes["52-54-00-00-0a-02"], "pxe-a");
        let script = std::fs::read_to_string(out.join("boot.ipxe")).unwrap();
        assert!(script.starts_with("#!ipxe\n"));
        assert!(
            script.contains("iseq ${mac:hexhyp} 52-54-00-00-0a-02 && goto n-52-54-00-00-0a-02 ||"),
            "{script}"
        );
        assert!(script.contains("initrd node-52-54-00-00-0a-02.cpio"));
        assert!(
            script.contains("hugepages=1"),
            "node's own kernel command line: {script}"
        );
        assert!(script.contains(":unprovisioned"));
        let cpio = dwcp_image::initramfs::read_gzip(
            &std::fs::read(out.join("node-52-54-00-00-0a-02.cpio")).unwrap(),
        )
        .unwrap();
        assert!(String::from_utf8_lossy(&cpio["etc/dwcp/dwcp.toml"].1).contains("pxe-a"));
        // An invalid config and a duplicate MAC stop the build.
        std::fs::write(
            &inv,
            "[[node]]\nmac = \"52:54:00:00:0a:02\"\nconfig = \"bad.toml\"\n[[node]]\nmac = \"52:54:00:00:0a:02\"\nconfig = \"a.toml\"\n",
        )
        .unwrap();
        let e = build(&art, &inv, &dir.path().join("tree2"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 problem(s)"), "{e}");
        assert!(!dir.path().join("tree2").join("boot.ipxe").exists());
    }
}
