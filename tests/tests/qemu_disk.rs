//! UEFI disk boot under QEMU (OVMF, systemd-boot): `disk.img` boots to `DWCP READY` with the
//! node name from its config partition; replacing only that partition with
//! `dwcp config set-partition` and rebooting shows the new name.

// Integration tests are their own crate: the lint is for tests inside library code.
#![allow(clippy::tests_outside_test_module)]

use std::process::Command;
use std::time::Duration;

use dwcp_cli::{image_build, qemu_boot};
use dwcp_tests::{BOOT_TIMEOUT, qemu_lock, require_qemu};

fn dwcp(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO"))
        .current_dir(dwcp_tests::workspace_root())
        .args(["run", "-q", "-p", "dwcp-cli", "--bin", "dwcp", "--"])
        .args(args)
        .output()
        .unwrap()
}

/// The boot logged in `log` marked its slot good (`change` is `from -> to`), and the ESP now
/// holds exactly `entries`.
fn assert_marked_good(disk: &std::path::Path, log: &str, change: &str, entries: &[&str]) {
    let text =
        std::fs::read_to_string(dwcp_tests::workspace_root().join("target").join(log)).unwrap();
    assert!(
        text.contains(&format!("boot: slot marked good ({change})")),
        "{text}"
    );
    let want: Vec<String> = entries.iter().map(|e| (*e).to_owned()).collect();
    assert_eq!(dwcp_image::disk::loader_entries(disk).unwrap(), want);
}

fn boot_name(image: &std::path::Path, log: &str) -> String {
    let mut spec = qemu_boot::disk_spec("disk", image).unwrap();
    spec.console_log = Some(dwcp_tests::workspace_root().join("target").join(log));
    let mut vm = dwcp_qemu::Vm::start(&spec).unwrap();
    let ready = vm.wait_for("DWCP READY", BOOT_TIMEOUT).unwrap();
    assert!(
        vm.console()
            .contains("from config partition /dev/vda2 (DWCP-CONFIG)"),
        "{}",
        vm.tail(30)
    );
    vm.monitor("system_powerdown").unwrap();
    vm.wait_for("shutdown: clean", Duration::from_secs(60))
        .unwrap();
    assert!(vm.wait_exit(Duration::from_secs(60)).unwrap().success());
    ready
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("node="))
        .unwrap()
        .to_owned()
}

#[test]
fn disk_boots_with_its_config_partition_and_set_partition_changes_it() {
    if !require_qemu("disk_boots_with_its_config_partition_and_set_partition_changes_it") {
        return;
    }
    assert!(
        std::path::Path::new(dwcp_qemu::OVMF_CODE).exists(),
        "OVMF missing: scripts/setup.sh installs ovmf"
    );
    let _one = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    let base = dwcp_provisioning::example::qemu_example().unwrap();
    let first = dir.path().join("first.toml");
    std::fs::write(&first, base.replace("qemu-node", "disk-first")).unwrap();
    let out = dir.path().join("art");
    image_build::build(Some(&first), &out, dwcp_tests::binaries()).unwrap();
    let disk = out.join("disk.img");
    assert_eq!(boot_name(&disk, "console-disk-1.log"), "disk-first");
    // systemd-boot counted the try down (slot-a+3 → slot-a+2-1) and init, once READY, marked
    // the slot good by dropping the counter.
    assert_marked_good(
        &disk,
        "console-disk-1.log",
        "slot-a+2-1.conf -> slot-a.conf",
        &["slot-a.conf"],
    );
    // After READY, init kept the config it ran with as the last-known-good copy.
    let saved = dwcp_image::disk::read_config_partition(&disk, "dwcp.last-good.toml").unwrap();
    assert_eq!(saved, std::fs::read(&first).unwrap());

    // Replace only the config partition with the operator command, then boot again.
    let second = dir.path().join("second.toml");
    std::fs::write(&second, base.replace("qemu-node", "disk-second")).unwrap();
    let set = dwcp(&[
        std::ffi::OsStr::new("config"),
        std::ffi::OsStr::new("set-partition"),
        disk.as_os_str(),
        second.as_os_str(),
    ]);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    assert_eq!(boot_name(&disk, "console-disk-2.log"), "disk-second");

    // A good update: the new system goes into slot B with a boot counter, boots, and is marked
    // good; slot A stays as the fallback.
    let upd = dwcp(&[
        std::ffi::OsStr::new("update"),
        std::ffi::OsStr::new("--image"),
        out.as_os_str(),
        disk.as_os_str(),
    ]);
    assert!(
        upd.status.success(),
        "{}",
        String::from_utf8_lossy(&upd.stderr)
    );
    assert_eq!(dwcp_image::disk::default_slot(&disk).unwrap(), Some('b'));
    assert_eq!(boot_name(&disk, "console-disk-3.log"), "disk-second");
    assert_marked_good(
        &disk,
        "console-disk-3.log",
        "slot-b+2-1.conf -> slot-b.conf",
        &["slot-a.conf", "slot-b.conf"],
    );

    // An invalid config is refused and leaves the partition alone.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, base.replace("count = 1", "count = \"x\"")).unwrap();
    let refused = dwcp(&[
        std::ffi::OsStr::new("config"),
        std::ffi::OsStr::new("set-partition"),
        disk.as_os_str(),
        bad.as_os_str(),
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("hugepages.count"));
    let kept = dwcp_image::disk::read_config_partition(&disk, "dwcp.toml").unwrap();
    assert!(String::from_utf8_lossy(&kept).contains("disk-second"));

    // A broken dwcp.toml on the partition (edited by hand, say) next to a valid last-known-good
    // copy: the node runs with the copy and says why.
    let good = std::fs::read(&second).unwrap();
    dwcp_image::disk::write_config_partition(
        &disk,
        &[
            (
                "dwcp.toml".to_owned(),
                base.replace("count = 1", "count = \"x\"").into_bytes(),
            ),
            ("dwcp.last-good.toml".to_owned(), good),
        ],
    )
    .unwrap();
    let mut spec = qemu_boot::disk_spec("disk", &disk).unwrap();
    spec.console_log = Some(dwcp_tests::workspace_root().join("target/console-disk-4.log"));
    let mut vm = dwcp_qemu::Vm::start(&spec).unwrap();
    vm.wait_for("USING THE LAST-KNOWN-GOOD COPY", BOOT_TIMEOUT)
        .unwrap();
    let ready = vm.wait_for("DWCP READY", BOOT_TIMEOUT).unwrap();
    assert!(ready.contains("node=disk-second"), "{ready}");
    assert!(
        vm.console()
            .contains("hugepages.count: expected an integer"),
        "{}",
        vm.tail(30)
    );
    vm.monitor("system_powerdown").unwrap();
    assert!(vm.wait_exit(Duration::from_secs(60)).unwrap().success());
}

#[test]
fn another_node_s_disk_attached_first_is_passed_over() {
    if !require_qemu("another_node_s_disk_attached_first_is_passed_over") {
        return;
    }
    let _one = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    let base = dwcp_provisioning::example::qemu_example().unwrap();
    // Two nodes' disks: this node's, and another's attached before it (it becomes vda).
    let disk = |name: &str| {
        let cfg = dir.path().join(format!("{name}.toml"));
        std::fs::write(&cfg, base.replace("qemu-node", name)).unwrap();
        let out = dir.path().join(name);
        image_build::build(Some(&cfg), &out, dwcp_tests::binaries()).unwrap();
        out
    };
    let (mine, other) = (disk("disk-mine"), disk("disk-other"));
    let (mine_img, other_img) = (mine.join("disk.img"), other.join("disk.img"));
    let other_entries = dwcp_image::disk::loader_entries(&other_img).unwrap();
    let log = dwcp_tests::workspace_root().join("target/console-two-disks-uefi.log");
    let mut spec = qemu_boot::disk_spec("disk", &mine_img).unwrap();
    spec.other_disks = vec![other_img.clone()];
    spec.console_log = Some(log);
    let mut vm = dwcp_qemu::Vm::start(&spec).unwrap();
    let ready = vm.wait_for("DWCP READY", BOOT_TIMEOUT).unwrap();
    assert!(ready.contains("node=disk-mine"), "{ready}");
    let console = vm.console();
    assert!(!console.contains("modules: FAILED"), "{console}");
    for line in [
        "boot disk: vdb (the boot loader was started from vdb1)",
        "config partition: passed over /dev/vda2 on other disks than the boot disk vdb",
        "config: node disk-mine from config partition /dev/vdb2 (DWCP-CONFIG)",
    ] {
        assert!(
            console.contains(line),
            "`{line}` not on the console:\n{console}"
        );
    }
    vm.wait_for("slot marked good", Duration::from_secs(30))
        .unwrap();
    vm.monitor("system_powerdown").unwrap();
    assert!(vm.wait_exit(Duration::from_secs(60)).unwrap().success());
    // This node's slot was marked good on its own disk; the other disk is as it was.
    assert_eq!(
        dwcp_image::disk::loader_entries(&mine_img).unwrap(),
        ["slot-a.conf"]
    );
    assert_eq!(
        dwcp_image::disk::loader_entries(&other_img).unwrap(),
        other_entries
    );
    assert!(dwcp_image::disk::read_config_partition(&other_img, "dwcp.last-good.toml").is_err());

    // Booted without UEFI (a kernel started directly, as PXE does) with both disks attached:
    // which disk is this node's cannot be told, so neither partition is used; the config the
    // initramfs carries is.
    let (mut vm, _d) = dwcp_tests::boot_from(
        &mine,
        "two-disks-no-uefi",
        &base.replace("qemu-node", "disk-initramfs"),
        &[],
        |spec| spec.other_disks = vec![other_img.clone(), mine_img.clone()],
    )
    .unwrap();
    let ready = vm.wait_for("DWCP READY", BOOT_TIMEOUT).unwrap();
    assert!(ready.contains("node=disk-initramfs"), "{ready}");
    let console = vm.console();
    for line in [
        "boot disk: unknown: not booted through UEFI",
        "config partition: 2 partitions named DWCP-CONFIG (/dev/vda2, /dev/vdb2) and the boot disk is unknown (not booted through UEFI): using none of them",
        "config: node disk-initramfs from initramfs file",
    ] {
        assert!(
            console.contains(line),
            "`{line}` not on the console:\n{console}"
        );
    }
    vm.monitor("system_powerdown").unwrap();
    assert!(vm.wait_exit(Duration::from_secs(60)).unwrap().success());
}

#[test]
fn flash_refuses_bad_input_verifies_and_the_flashed_file_boots() {
    if !require_qemu("flash_refuses_bad_input_verifies_and_the_flashed_file_boots") {
        return;
    }
    let _one = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    let base = dwcp_provisioning::example::qemu_example().unwrap();
    let out = dir.path().join("art");
    image_build::build(None, &out, dwcp_tests::binaries()).unwrap();
    let image = out.join("disk.img");
    let good = dir.path().join("node.toml");
    std::fs::write(&good, base.replace("qemu-node", "flashed-node")).unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, base.replace("count = 1", "count = \"x\"")).unwrap();
    let target = dir.path().join("target.img");
    let os = |p: &std::path::Path| p.as_os_str().to_owned();
    let flag = |s: &str| std::ffi::OsString::from(s);

    let r = dwcp(&[
        &flag("flash"),
        &flag("--image"),
        &os(&image),
        &flag("--config"),
        &os(&bad),
        &os(&target),
    ]);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("hugepages.count"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(!target.exists(), "nothing written for an invalid config");

    let small = dir.path().join("small.img");
    std::fs::write(&small, vec![0u8; 1 << 20]).unwrap();
    let r = dwcp(&[
        &flag("flash"),
        &flag("--image"),
        &os(&image),
        &flag("--config"),
        &os(&good),
        &os(&small),
    ]);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("refusing"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(
        std::fs::metadata(&small).unwrap().len(),
        1 << 20,
        "a too-small target is left alone"
    );

    let r = dwcp(&[
        &flag("flash"),
        &flag("--image"),
        &os(&image),
        &flag("--config"),
        &os(&good),
        &os(&target),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stdout).contains("verified:"));
    // A disk whose slot never reached READY is not updated.
    let r = dwcp(&[&flag("update"), &flag("--image"), &os(&out), &os(&target)]);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("has not been marked good yet"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(boot_name(&target, "console-flashed.log"), "flashed-node");
}

#[test]
fn an_update_that_never_gets_ready_falls_back_to_the_old_slot() {
    if !require_qemu("an_update_that_never_gets_ready_falls_back_to_the_old_slot") {
        return;
    }
    let _one = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        dwcp_provisioning::example::qemu_example()
            .unwrap()
            .replace("qemu-node", "rollback-node"),
    )
    .unwrap();
    let out = dir.path().join("art");
    image_build::build(Some(&cfg), &out, dwcp_tests::binaries()).unwrap();
    let disk = out.join("disk.img");
    assert_eq!(boot_name(&disk, "console-rollback-0.log"), "rollback-node");

    // A system built for the test whose init exits at once: the kernel panics and, with
    // panic=5, reboots (QEMU runs with -no-reboot, so it exits instead).
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let mut initrd = dwcp_image::initramfs::Initramfs::new();
    initrd.file(
        "init",
        std::fs::read(dwcp_tests::binaries().1).unwrap(),
        0o755,
    );
    initrd.add(
        "dev/console",
        dwcp_image::initramfs::EntryKind::CharDev(5, 1),
        0o600,
    );
    std::fs::write(bad.join("initrd.img"), initrd.to_gzip().unwrap()).unwrap();
    std::fs::copy(out.join("vmlinuz"), bad.join("vmlinuz")).unwrap();
    let upd = dwcp(&[
        std::ffi::OsStr::new("update"),
        std::ffi::OsStr::new("--image"),
        bad.as_os_str(),
        disk.as_os_str(),
    ]);
    assert!(
        upd.status.success(),
        "{}",
        String::from_utf8_lossy(&upd.stderr)
    );

    for attempt in 1..=3 {
        let mut spec = qemu_boot::disk_spec("rollback", &disk).unwrap();
        spec.console_log = Some(
            dwcp_tests::workspace_root()
                .join("target")
                .join(format!("console-rollback-{attempt}.log")),
        );
        let mut vm = dwcp_qemu::Vm::start(&spec).unwrap();
        vm.wait_for("Kernel panic", BOOT_TIMEOUT).unwrap();
        vm.wait_exit(Duration::from_secs(60)).unwrap();
    }
    assert!(
        dwcp_image::disk::loader_entries(&disk)
            .unwrap()
            .contains(&"slot-b+0-3.conf".to_owned()),
        "three tries used up: {:?}",
        dwcp_image::disk::loader_entries(&disk).unwrap()
    );
    // The fourth boot: systemd-boot skips the slot with no tries left and boots slot A.
    let mut spec = qemu_boot::disk_spec("rollback", &disk).unwrap();
    spec.console_log = Some(dwcp_tests::workspace_root().join("target/console-rollback-4.log"));
    let mut vm = dwcp_qemu::Vm::start(&spec).unwrap();
    vm.wait_for("boot: running slot A", BOOT_TIMEOUT).unwrap();
    let ready = vm.wait_for("DWCP READY", BOOT_TIMEOUT).unwrap();
    assert!(ready.contains("node=rollback-node"), "{ready}");
    vm.monitor("system_powerdown").unwrap();
    assert!(vm.wait_exit(Duration::from_secs(60)).unwrap().success());
}
