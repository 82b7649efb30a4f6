//! The image builder on the real pinned kernel: reproducible, self-contained, no shell.

// Integration tests are their own crate: the lint is for tests inside library code.
#![allow(clippy::tests_outside_test_module)]

use dwcp_cli::image_build;

#[test]
fn two_builds_are_byte_identical() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        dwcp_provisioning::example::qemu_example().unwrap(),
    )
    .unwrap();
    let ma = image_build::build(Some(config.path()), a.path(), dwcp_tests::binaries()).unwrap();
    let mb = image_build::build(Some(config.path()), b.path(), dwcp_tests::binaries()).unwrap();
    assert_eq!(
        ma.files, mb.files,
        "vmlinuz/initrd.img hashes differ between two builds"
    );
    for f in ["vmlinuz", "initrd.img", "disk.img", "manifest.json"] {
        let x = std::fs::read(a.path().join(f)).unwrap();
        let y = std::fs::read(b.path().join(f)).unwrap();
        assert!(x == y, "{f} differs between two builds");
    }
    for (name, sha) in &ma.files {
        eprintln!("{sha}  {name}");
    }
}

#[test]
fn initramfs_holds_init_modules_and_no_shell() {
    let dir = tempfile::tempdir().unwrap();
    let m = image_build::build(None, dir.path(), dwcp_tests::binaries()).unwrap();
    for needed in ["vfio_pci", "e1000e", "virtio_net", "vfat", "button"] {
        assert!(
            m.modules.iter().any(|x| x == needed),
            "{needed} missing from {:?}",
            m.modules
        );
    }
    let (root, files) = dwcp_tests::unpack_initramfs(dir.path());
    let release = &m.kernel_release;
    let dep = String::from_utf8(
        files[&format!("lib/modules/{release}/modules.dep")]
            .1
            .clone(),
    )
    .unwrap();
    assert!(dep.lines().any(|l| l.starts_with("kernel/drivers/vfio/pci/vfio-pci.ko:") && l.contains("vfio.ko")), "{dep}");
    for shell in ["bin/sh", "bin/busybox", "usr/bin/apt", "usr/bin/dpkg"] {
        assert!(
            !files.contains_key(shell),
            "{shell} must not be in the image"
        );
    }
    // The binaries are linked against glibc (decision 0014): the image carries the loader and
    // every library they name, and they resolve to those alone.
    let loader = root.path().join("lib64/ld-linux-x86-64.so.2");
    let libdir = root.path().join("lib/x86_64-linux-gnu");
    for lib in ["libc.so.6", "libm.so.6", "libgcc_s.so.1"] {
        assert!(
            files.contains_key(&format!("lib/x86_64-linux-gnu/{lib}")),
            "{lib} missing from the image"
        );
    }
    for bin in ["init", "usr/bin/dwcp-dataplane"] {
        let (mode, data) = &files[bin];
        assert_eq!(mode & 0o777, 0o755);
        let text = String::from_utf8_lossy(data);
        assert!(
            text.contains("/lib64/ld-linux-x86-64.so.2"),
            "{bin}: no loader named"
        );
        assert!(!text.contains("/root/"), "{bin} carries a host path");
        // The image's own loader, told to look only in the image's library folder, lists
        // where each library comes from: all of them from the image.
        let out = std::process::Command::new(&loader)
            .arg("--library-path")
            .arg(&libdir)
            .arg("--list")
            .arg(root.path().join(bin))
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{bin}: {list}");
        for line in list.lines().filter(|l| l.contains("=>")) {
            assert!(
                line.split("=>")
                    .nth(1)
                    .is_some_and(|to| to.contains(root.path().to_str().unwrap())),
                "{bin}: a library from outside the image: {line}"
            );
        }
    }
    // And the data plane runs on the image's glibc.
    let out = std::process::Command::new(&loader)
        .arg("--library-path")
        .arg(&libdir)
        .arg(root.path().join("usr/bin/dwcp-dataplane"))
        .arg("--help")
        .output()
        .unwrap();
    let said = dwcp_tests::output_text(&out);
    assert!(said.contains("usage: dwcp-dataplane"), "{said}");
}
