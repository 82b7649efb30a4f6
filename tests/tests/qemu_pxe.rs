//! PXE under QEMU: a tree built by `dwcp pxe build` network-boots two MACs of the inventory as
//! two different nodes (their configs arrive as a second initrd), and an unknown MAC boots the
//! same image unprovisioned.

// Integration tests are their own crate: the lint is for tests inside library code.
#![allow(clippy::tests_outside_test_module)]

use std::time::Duration;

use dwcp_cli::{pxe, qemu_boot};
use dwcp_tests::{BOOT_TIMEOUT, qemu_lock, require_qemu};

#[test]
fn inventory_macs_boot_as_their_nodes_and_unknown_macs_unprovisioned() {
    if !require_qemu("inventory_macs_boot_as_their_nodes_and_unknown_macs_unprovisioned") {
        return;
    }
    let _one = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    let base = dwcp_provisioning::example::qemu_example().unwrap();
    for (site, name) in [("a", "pxe-a"), ("b", "pxe-b")] {
        let cfg = base
            .replace("qemu-node", name)
            .replace("52:54:00:00:00:02", &format!("52:54:00:00:0{site}:02"));
        std::fs::write(dir.path().join(format!("{site}.toml")), cfg).unwrap();
    }
    let inventory = dir.path().join("nodes.toml");
    std::fs::write(
        &inventory,
        "[[node]]\nmac = \"52:54:00:00:0a:02\"\nconfig = \"a.toml\"\n[[node]]\nmac = \"52:54:00:00:0b:02\"\nconfig = \"b.toml\"\n",
    )
    .unwrap();
    let tree = dir.path().join("tree");
    let nodes = pxe::build(dwcp_tests::artifacts(), &inventory, &tree).unwrap();
    assert_eq!(nodes.len(), 2);

    for (mac, expect) in [
        ("52:54:00:00:0a:02", Some("pxe-a")),
        ("52:54:00:00:0b:02", Some("pxe-b")),
        ("52:54:00:00:0c:02", None),
    ] {
        let mut spec = qemu_boot::pxe_spec("pxe", &tree, &mac.parse().unwrap()).unwrap();
        spec.console_log = Some(
            dwcp_tests::workspace_root()
                .join("target")
                .join(format!("console-pxe-{}.log", &mac[12..14])),
        );
        let mut vm = dwcp_qemu::Vm::start(&spec).unwrap();
        match expect {
            Some(name) => {
                let ready = vm.wait_for("DWCP READY", BOOT_TIMEOUT).unwrap();
                assert!(ready.contains(&format!("node={name} ")), "{mac}: {ready}");
                assert!(
                    vm.console().contains("config: node"),
                    "config came with the second initrd"
                );
            }
            None => {
                vm.wait_for("SAFE MODE: no config found (unprovisioned)", BOOT_TIMEOUT)
                    .unwrap();
                assert!(!vm.console().contains("DWCP READY"));
            }
        }
        vm.monitor("system_powerdown").unwrap();
        vm.wait_for("shutdown: clean", Duration::from_secs(60))
            .unwrap();
        assert!(vm.wait_exit(Duration::from_secs(60)).unwrap().success());
    }
}
