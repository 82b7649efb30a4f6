//! One test per validation rule: a known-good file with one edit, and the exact
//! `FILE:LINE:COL: field.path: message` expected for it.

// Integration tests are their own crate: the lint is for tests inside library code.
#![allow(clippy::tests_outside_test_module)]

use dwcp_provisioning::{SourceFile, check};

const VALID: &str = include_str!("fixtures/valid.toml");
const FILE: &str = "node.toml";
/// The fixture's own public key (of its `tunnel.private_key`).
const OWN_PUBLIC_KEY: &str = "8x5iKo9RD9U5z17umS9k118+s6aZ65SxJv9jbbW60xU=";

/// Applies the edits (each `from` must occur exactly once) and returns every diagnostic.
fn errors_after(edits: &[(&str, &str)]) -> Vec<String> {
    let mut text = VALID.to_owned();
    for (from, to) in edits {
        assert_eq!(
            text.matches(from).count(),
            1,
            "edit `{from}` must match once"
        );
        text = text.replace(from, to);
    }
    match check(&SourceFile::new(FILE, text)) {
        Ok(_) => Vec::new(),
        Err(diags) => diags.iter().map(ToString::to_string).collect(),
    }
}

/// Asserts that the edits give exactly these diagnostics (without the file name).
#[track_caller]
fn assert_errors(edits: &[(&str, &str)], expected: &[&str]) {
    let got = errors_after(edits);
    let expected: Vec<String> = expected.iter().map(|e| format!("{FILE}:{e}")).collect();
    assert_eq!(got, expected);
}

#[test]
fn fixture_is_valid() {
    assert_errors(&[], &[]);
}

#[test]
fn toml_syntax_error() {
    let got = errors_after(&[("mtu = 1500", "mtu = = 1500")]);
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("node.toml:24:7: (document): TOML syntax error"),
        "{got:?}"
    );
}

/// A doubled `=` and then a dotted key under the same name: `toml_edit` 0.23 panicked on it
/// (found by `scripts/fuzz.sh`'s `config` target), which would have powered a booting node off
/// instead of leaving it in safe mode.
#[test]
fn dotted_key_after_a_doubled_equals_is_a_syntax_error() {
    let got = errors_after(&[("mtu = 1500", "mtu == 1500\nmtu.x = 1")]);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("node.toml:24:6: (document): TOML syntax error"),
        "{got:?}"
    );
}

/// A file saved in Latin-1 (an `é` in a comment) is named at its first byte that is not UTF-8.
#[test]
fn a_file_that_is_not_utf8_is_named_at_its_first_bad_byte() {
    let mut bytes = VALID
        .replace("mtu = 1500", "mtu = 1500 # caf?")
        .into_bytes();
    let at = bytes.iter().position(|&b| b == b'?').unwrap();
    bytes[at] = 0xE9;
    let err = SourceFile::from_bytes(FILE, bytes).expect_err("not UTF-8");
    assert_eq!(
        err.to_string(),
        "node.toml:24:17: (document): not UTF-8 (byte 0xE9): save the file as UTF-8"
    );
    assert!(SourceFile::from_bytes(FILE, VALID.as_bytes().to_vec()).is_ok());
}

#[test]
fn unknown_field_with_suggestion() {
    assert_errors(
        &[("mtu = 1500", "mtus = 1500")],
        &[
            "24:1: ports[0].mtus: unknown field `mtus` (did you mean `mtu`?); known fields: \
           name, role, backend, pci, interface, vdev, address, gateway, mtu, rx_queues, tx_queues",
        ],
    );
}

#[test]
fn unknown_section() {
    let got = errors_after(&[("[metrics]", "[metric]")]);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].starts_with("node.toml:1:1: metrics: missing required field `metrics`"),
        "{got:?}"
    );
    assert!(
        got[1].starts_with(
            "node.toml:51:2: metric: unknown field `metric` (did you mean `metrics`?)"
        ),
        "{got:?}"
    );
}

#[test]
fn wrong_type() {
    assert_errors(
        &[("dataplane = [1, 2]", "dataplane = [1, \"2\"]")],
        &["11:17: cores.dataplane[1]: expected an integer, found \"2\""],
    );
    assert_errors(
        &[("count = 2", "count = true")],
        &["14:9: hugepages.count: expected an integer, found true"],
    );
}

#[test]
fn wrong_enum_value() {
    assert_errors(
        &[("role = \"wan\"", "role = \"wide\"")],
        &["28:8: ports[1].role: expected one of \"lan\", \"wan\", found \"wide\""],
    );
}

#[test]
fn missing_required_field() {
    assert_errors(
        &[("address = \"10.1.0.1/24\"\n", "")],
        &["18:1: ports[0].address: missing required field `address` in `ports[0]`"],
    );
}

#[test]
fn mtu_out_of_range() {
    assert_errors(
        &[("mtu = 1500", "mtu = 575")],
        &["24:7: ports[0].mtu: 575 is out of range: must be 576 to 9216"],
    );
    assert_errors(
        &[("mtu = 1500", "mtu = 9217")],
        &["24:7: ports[0].mtu: 9217 is out of range: must be 576 to 9216"],
    );
    assert_errors(&[("mtu = 1500", "mtu = 9216")], &[]);
}

#[test]
fn integer_out_of_type_range() {
    assert_errors(
        &[("listen_port = 51900", "listen_port = 70000")],
        &["35:15: tunnel.listen_port: 70000 is out of range: must be 1 to 65535"],
    );
}

#[test]
fn key_not_base64() {
    assert_errors(
        &[(
            "public_key = \"yZa0xo+o0BTl933jm1AYZ1yLj9YpZ4b2VaBjjmoKE3s=\"",
            "public_key = \"not a key\"",
        )],
        &[
            "40:14: tunnel.peers[0].public_key: public key is not valid base64 (make one with `dwcp keygen`)",
        ],
    );
}

#[test]
fn key_not_32_bytes() {
    assert_errors(
        &[(
            "private_key = \"L8PN7XS+FMLDq83BGL8ZjDtjDlJ65geBVZTbamrUxL0=\"",
            "private_key = \"AAAA\"",
        )],
        &["36:15: tunnel.private_key: private key must be 32 bytes of base64, this one is 3 bytes"],
    );
    assert_errors(
        &[("preshared_key = \"xGuz", "preshared_key = \"xGuzxGuz")],
        &[
            "47:17: tunnel.peers[1].preshared_key: pre-shared key must be 32 bytes of base64, this one is 35 bytes",
        ],
    );
}

#[test]
fn private_key_is_not_echoed() {
    let got = errors_after(&[(
        "L8PN7XS+FMLDq83BGL8ZjDtjDlJ65geBVZTbamrUxL0=",
        "L8PN7XS+FMLDq83BGL8ZjDtjDlJ65geBVZTbamrUxL0",
    )]);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(!got[0].contains("L8PN7XS"), "secret in message: {}", got[0]);
}

#[test]
fn address_outside_prefix() {
    assert_errors(
        &[(
            "allowed_prefixes = [\"10.2.0.0/16\"]",
            "allowed_prefixes = [\"10.2.3.4/16\"]",
        )],
        &[
            "42:21: tunnel.peers[0].allowed_prefixes[0]: `10.2.3.4/16` has host bits set: the address is \
           outside its prefix (did you mean 10.2.0.0/16?)",
        ],
    );
    assert_errors(
        &[("gateway = \"192.0.2.1\"", "gateway = \"192.0.3.1\"")],
        &[
            "7:11: management.gateway: gateway 192.0.3.1 is outside the management network 192.0.2.0/24",
        ],
    );
    assert_errors(
        &[("gateway = \"198.51.100.2\"", "gateway = \"198.51.100.9\"")],
        &[
            "32:11: ports[1].gateway: gateway 198.51.100.9 must be another address on the port's network 198.51.100.0/30",
        ],
    );
    assert_errors(
        &[("address = \"10.1.0.1/24\"", "address = \"10.1.0.0/24\"")],
        &[
            "23:11: ports[0].address: `10.1.0.0/24` is the network address of 10.1.0.0/24, not a host address inside it",
        ],
    );
}

#[test]
fn core_listed_twice() {
    assert_errors(
        &[("dataplane = [1, 2]", "dataplane = [1, 2, 1]")],
        &[
            "11:20: cores.dataplane[2]: core 1 is listed twice in `cores.dataplane` (first at cores.dataplane[0])",
        ],
    );
}

#[test]
fn gathering_core_on_a_worker_core() {
    assert_errors(
        &[("[metrics]", "[offload]\ncore = 2\n\n[metrics]")],
        &[
            "52:8: offload.core: core 2 is a data-plane core (cores.dataplane[1]): the GPU gathering thread would take turns with that core's worker; give a core of its own or a housekeeping core",
        ],
    );
}

#[test]
fn gathering_core_may_be_a_housekeeping_core_or_its_own() {
    for core in ["0", "3"] {
        assert_errors(
            &[(
                "[metrics]",
                &format!("[offload]\ncore = {core}\n\n[metrics]"),
            )],
            &[],
        );
    }
}

#[test]
fn core_in_both_lists() {
    assert_errors(
        &[("housekeeping = [0]", "housekeeping = [0, 2]")],
        &[
            "11:17: cores.dataplane[1]: core 2 is both a housekeeping and a data-plane core (also at cores.housekeeping[1])",
        ],
    );
}

#[test]
fn core_out_of_range() {
    assert_errors(
        &[("dataplane = [1, 2]", "dataplane = [1, 4096]")],
        &["11:17: cores.dataplane[1]: 4096 is out of range: must be 0 to 4095"],
    );
}

#[test]
fn empty_core_list() {
    assert_errors(
        &[("dataplane = [1, 2]", "dataplane = []")],
        &["11:13: cores.dataplane: `cores.dataplane` needs at least one core"],
    );
}

#[test]
fn hugepages_split_must_add_up() {
    assert_errors(
        &[("per_numa_node = [1, 1]", "per_numa_node = [1, 2]")],
        &[
            "15:17: hugepages.per_numa_node: per-node counts add up to 3, but `hugepages.count` is 2",
        ],
    );
}

#[test]
fn duplicate_port_name() {
    assert_errors(
        &[("name = \"wan0\"", "name = \"lan0\"")],
        &["27:8: ports[1].name: port name `lan0` is also used by ports[0]"],
    );
}

#[test]
fn duplicate_pci_address() {
    assert_errors(
        &[(
            "backend = \"af_packet\"\ninterface = \"eth1\"",
            "backend = \"dpdk\"\npci = \"03:00.1\"",
        )],
        &["30:7: ports[1].pci: PCI address 0000:03:00.1 is also used by ports[0] (`lan0`)"],
    );
}

#[test]
fn backend_needs_its_device() {
    assert_errors(
        &[("pci = \"0000:03:00.1\"\n", "")],
        &[
            "29:11: ports[1].backend: port `wan0` uses backend `dpdk` and needs `pci`, the NIC's PCI address (or `vdev`, a DPDK virtual device)",
        ],
    );
}

#[test]
fn port_needs_lan_and_wan() {
    assert_errors(
        &[("role = \"wan\"", "role = \"lan\"")],
        &["18:1: ports: no port has role `wan`: a gateway needs a LAN and a WAN port"],
    );
}

#[test]
fn overlapping_peer_prefixes() {
    assert_errors(
        &[(
            "[\"10.3.0.0/16\", \"10.4.0.0/16\"]",
            "[\"10.3.0.0/16\", \"10.2.128.0/17\"]",
        )],
        &[
            "48:36: tunnel.peers[1].allowed_prefixes[1]: 10.2.128.0/17 overlaps 10.2.0.0/16 of peer `site-b`",
        ],
    );
    assert_errors(
        &[(
            "[\"10.3.0.0/16\", \"10.4.0.0/16\"]",
            "[\"10.3.0.0/16\", \"10.3.0.0/24\"]",
        )],
        &[
            "48:36: tunnel.peers[1].allowed_prefixes[1]: 10.3.0.0/24 overlaps 10.3.0.0/16 of another prefix of the same peer",
        ],
    );
}

#[test]
fn peer_prefix_overlapping_lan() {
    assert_errors(
        &[("[\"10.2.0.0/16\"]", "[\"10.1.0.0/16\"]")],
        &[
            "42:21: tunnel.peers[0].allowed_prefixes[0]: 10.1.0.0/16 overlaps the local network 10.1.0.0/24 of LAN port `lan0`",
        ],
    );
}

#[test]
fn duplicate_peer_name_and_own_key() {
    assert_errors(
        &[("name = \"site-c\"", "name = \"site-b\""), ("SBiW", "SBiW")],
        &["45:8: tunnel.peers[1].name: peer name `site-b` is also used by tunnel.peers[0]"],
    );
    let own = format!("public_key = \"{OWN_PUBLIC_KEY}\"");
    assert_errors(
        &[(
            "public_key = \"yZa0xo+o0BTl933jm1AYZ1yLj9YpZ4b2VaBjjmoKE3s=\"",
            own.as_str(),
        )],
        &["40:14: tunnel.peers[0].public_key: peer `site-b` has this node's own public key"],
    );
}

#[test]
fn metrics_must_be_on_management_network() {
    assert_errors(
        &[("listen = \"192.0.2.10:9100\"", "listen = \"10.1.0.1:9100\"")],
        &[
            "52:10: metrics.listen: 10.1.0.1 is not on the management network 192.0.2.0/24: metrics are served on \
           the management network only",
        ],
    );
    assert_errors(
        &[(
            "listen = \"192.0.2.10:9100\"",
            "listen = \"192.0.2.11:9100\"",
        )],
        &[
            "52:10: metrics.listen: 192.0.2.11 is not the management address 192.0.2.10; the node has no other \
           address on that network",
        ],
    );
}

#[test]
fn management_needs_exactly_one_selector() {
    assert_errors(
        &[("interface = \"eth0\"\n", "")],
        &[
            "4:1: management: missing `mac` or `interface`: say which NIC is the management interface",
        ],
    );
}

#[test]
fn three_mistakes_all_reported() {
    let got = errors_after(&[
        ("log_level = \"info\"", "log_level = \"loud\""),
        ("mtu = 1500", "mtu = 100"),
        ("listen = \"192.0.2.10:9100\"", "listen = \"10.9.9.9:9100\""),
    ]);
    assert_eq!(got.len(), 3, "{got:#?}");
    assert!(got[0].starts_with("node.toml:2:13: log_level:"));
    assert!(got[1].starts_with("node.toml:24:7: ports[0].mtu:"));
    assert!(got[2].starts_with("node.toml:52:10: metrics.listen:"));
}

#[test]
fn example_is_valid_and_covers_every_field() {
    let text = dwcp_provisioning::example::example().unwrap();
    let config =
        check(&SourceFile::new("example.toml", text.clone())).unwrap_or_else(|d| panic!("{d:#?}"));
    assert_eq!(config.ports.len(), 2);
    // Every field of the schema appears in the example, so it stays a complete reference.
    let schema = serde_json::to_string(dwcp_provisioning::validate::json_schema()).unwrap();
    let schema: serde_json::Value = serde_json::from_str(&schema).unwrap();
    let mut fields = Vec::new();
    collect_fields(&schema, &schema, &mut fields);
    for field in fields {
        assert!(
            text.lines().any(|l| {
                let l = l.trim_start().trim_start_matches("# ");
                l.starts_with(&format!("{field} ="))
            }),
            "the example lacks `{field}`"
        );
    }
}

fn collect_fields(root: &serde_json::Value, s: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    let resolve = |s: &Value| -> Value {
        match s.get("$ref").and_then(Value::as_str) {
            Some(r) => root["$defs"][r.rsplit('/').next().unwrap()].clone(),
            None => s.clone(),
        }
    };
    let s = resolve(s);
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            let prop = resolve(prop);
            let items = prop.get("items").map(&resolve);
            let is_table = prop.get("properties").is_some();
            let is_table_array = items
                .as_ref()
                .is_some_and(|i| i.get("properties").is_some());
            match (is_table, is_table_array) {
                (true, _) => collect_fields(root, &prop, out),
                (_, true) => collect_fields(root, items.as_ref().unwrap(), out),
                _ => out.push(name.clone()),
            }
        }
    }
}

/// Mangled files never panic the checker, and every diagnostic points inside the file.
#[test]
fn mangled_files_never_panic() {
    let mut seed: u64 = 0x5eed_d00d;
    let mut next = move || {
        // xorshift64: deterministic, so a failure reproduces.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let base = VALID.as_bytes();
    let alphabet = b"[]{}=\",.#\n 0123456789abcxyz-_/:'\\";
    for _ in 0..3000 {
        let mut bytes = base.to_vec();
        let edits = 1 + next() % 4;
        for _ in 0..edits {
            let len = u64::try_from(bytes.len()).unwrap();
            let at = usize::try_from(next() % len).unwrap();
            let c = alphabet[usize::try_from(next() % 36).unwrap() % alphabet.len()];
            match next() % 3 {
                0 => bytes[at] = c,
                1 => bytes.insert(at, c),
                _ => {
                    bytes.remove(at);
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let lines = text.lines().count().max(1) + 1;
        if let Err(diags) = check(&SourceFile::new(FILE, text.clone())) {
            assert!(!diags.is_empty());
            for d in diags {
                assert!(
                    d.line >= 1 && d.line <= lines,
                    "{d} outside the file:\n{text}"
                );
                assert!(d.column >= 1, "{d}");
            }
        }
    }
}

#[test]
fn gpu_spot_check_is_a_boolean() {
    assert_errors(
        &[("[metrics]", "[offload]\nspot_check = 1\n\n[metrics]")],
        &["52:14: offload.spot_check: expected a boolean, found 1"],
    );
    assert_errors(
        &[("[metrics]", "[offload]\nspot_check = false\n\n[metrics]")],
        &[],
    );
}

#[test]
fn gpu_check_sampling_is_bounded() {
    assert_errors(
        &[(
            "[metrics]",
            "[offload]\nverify_every = 1000001\n\n[metrics]",
        )],
        &["52:16: offload.verify_every: 1000001 is out of range: must be 0 to 1000000"],
    );
    for every in ["0", "1", "64", "1000000"] {
        assert_errors(
            &[(
                "[metrics]",
                &format!("[offload]\nverify_every = {every}\n\n[metrics]"),
            )],
            &[],
        );
    }
}

#[test]
fn the_burst_is_bounded() {
    for burst in ["0", "257", "-1"] {
        assert_errors(
            &[(
                "[metrics]",
                &format!("[dataplane]\nburst = {burst}\n\n[metrics]"),
            )],
            &[&format!(
                "52:9: dataplane.burst: {burst} is out of range: must be 1 to 256"
            )],
        );
    }
    for burst in ["1", "32", "256"] {
        assert_errors(
            &[(
                "[metrics]",
                &format!("[dataplane]\nburst = {burst}\n\n[metrics]"),
            )],
            &[],
        );
    }
}

/// Site B over Soft-RoCE on `eth3`.
const RDMA_PEER: &str = "allowed_prefixes = [\"10.2.0.0/16\"]\ntransport = \"rdma\"\nrdma = { device = \"rxe0\", gid_index = 1 }\n";
const RDMA_DEVICE: &str = "[tunnel]\n";
const WITH_RXE0: &str = "[[rdma]]\ndevice = \"rxe0\"\ninterface = \"eth3\"\naddress = \"192.168.50.1/24\"\nsoft_roce = true\n\n[tunnel]\n";

#[test]
fn an_rdma_peer_on_a_declared_device_is_valid() {
    assert_errors(
        &[
            ("allowed_prefixes = [\"10.2.0.0/16\"]\n", RDMA_PEER),
            (RDMA_DEVICE, WITH_RXE0),
        ],
        &[],
    );
}

#[test]
fn an_rdma_peer_needs_a_declared_device_and_its_settings() {
    assert_errors(
        &[("allowed_prefixes = [\"10.2.0.0/16\"]\n", RDMA_PEER)],
        &[
            "44:19: tunnel.peers[0].rdma.device: peer `site-b` names RDMA device `rxe0`, which is not one of this node's [[rdma]] devices (none listed)",
        ],
    );
    assert_errors(
        &[(
            "allowed_prefixes = [\"10.2.0.0/16\"]\n",
            "allowed_prefixes = [\"10.2.0.0/16\"]\ntransport = \"rdma\"\n",
        )],
        &[
            "43:13: tunnel.peers[0].transport: peer `site-b` uses transport `rdma` and needs `rdma = { device = \"…\", gid_index = … }`",
        ],
    );
    assert_errors(
        &[
            (
                "allowed_prefixes = [\"10.2.0.0/16\"]\n",
                "allowed_prefixes = [\"10.2.0.0/16\"]\nrdma = { device = \"rxe0\", gid_index = 1 }\n",
            ),
            (RDMA_DEVICE, WITH_RXE0),
        ],
        &[
            "49:8: tunnel.peers[0].rdma: peer `site-b` uses transport `udp`; `rdma` is only for transport `rdma`",
        ],
    );
}

#[test]
fn rdma_devices_are_unique_and_never_on_a_data_port() {
    let twice = WITH_RXE0.replace(
        "[[rdma]]",
        "[[rdma]]\ndevice = \"rxe0\"\ninterface = \"eth9\"\naddress = \"192.168.51.1/24\"\n\n[[rdma]]",
    );
    assert_errors(
        &[(RDMA_DEVICE, &twice)],
        &["40:10: rdma[1].device: RDMA device `rxe0` is also listed as rdma[0]"],
    );
    let on_a_port = WITH_RXE0.replace("eth3", "eth7");
    assert_errors(
        &[
            (
                "backend = \"dpdk\"\npci = \"0000:03:00.1\"",
                "backend = \"af_packet\"\ninterface = \"eth7\"",
            ),
            (RDMA_DEVICE, &on_a_port),
        ],
        &[
            "36:13: rdma[0].interface: interface `eth7` is data port `wan0`'s; RDMA runs on a kernel-owned NIC of its own",
        ],
    );
}

#[test]
fn a_syslog_remote_must_be_udp_or_tcp_to_an_ipv4_endpoint() {
    assert_errors(
        &[(
            "[metrics]\n",
            "[logging]\nremote = \"udp://192.0.2.1:514\"\n\n[metrics]\n",
        )],
        &[],
    );
    let got = errors_after(&[(
        "[metrics]\n",
        "[logging]\nremote = \"syslog.example:514\"\n\n[metrics]\n",
    )]);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].contains(
            "logging.remote: `syslog.example:514` is not udp://IPv4:PORT or tcp://IPv4:PORT"
        ),
        "{got:?}"
    );
}
