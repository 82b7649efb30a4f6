//! Network namespaces for traffic tests: created with `ip netns` and veth pairs, removed
//! (with every process started in them) when the [`Lab`] is dropped, also on panic.

use std::io::Read as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs a command, failing loudly with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Whether this process may create namespaces (root).
pub fn is_root() -> bool {
    nix_uid() == 0
}

fn nix_uid() -> u32 {
    // /proc/self/status has "Uid: real effective ...".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

/// A set of namespaces and the processes running in them.
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Lab {
    /// A lab whose names start with a prefix unique to this process.
    pub fn new(tag: &str) -> Self {
        let prefix = format!("dw{}{tag}", std::process::id() % 100_000);
        Self {
            prefix,
            namespaces: Vec::new(),
            children: Vec::new(),
        }
    }

    /// The full name of a namespace or interface (`short` is at most 5 characters).
    pub fn name(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    /// Creates a namespace with `lo` up.
    pub fn netns(&mut self, short: &str) -> String {
        let ns = self.name(short);
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        run("ip", &["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        self.exec(&ns, "ip", &["link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command in a namespace and waits for it, failing loudly.
    pub fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", ns, program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// A command that runs in a namespace.
    pub fn command(&self, ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }

    /// Starts a process in a namespace; it is killed when the lab is dropped.
    pub fn spawn(&mut self, ns: &str, program: &str, args: &[&str], log: &Path) -> usize {
        let file = std::fs::File::create(log).expect("log file");
        let err = file.try_clone().expect("log file");
        let child = self
            .command(ns, program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        self.children.push(child);
        self.children.len() - 1
    }

    /// The process id of a child started by [`Lab::spawn`] (`ip netns exec` execs the
    /// program, so it is the program's).
    pub fn pid(&self, i: usize) -> u32 {
        self.children[i].id()
    }

    /// The child started by [`Lab::spawn`].
    pub fn child(&mut self, i: usize) -> &mut Child {
        &mut self.children[i]
    }

    /// A veth pair between two namespaces, both ends up, with IPv6 off and the offloads that
    /// a packet socket cannot see through (checksum, segmentation) disabled.
    pub fn veth(&self, a_ns: &str, a: &str, b_ns: &str, b: &str) {
        run(
            "ip",
            &[
                "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns,
            ],
        );
        for (ns, dev) in [(a_ns, a), (b_ns, b)] {
            self.exec(
                ns,
                "sysctl",
                &["-qw", &format!("net.ipv6.conf.{dev}.disable_ipv6=1")],
            );
            self.exec(
                ns,
                "ethtool",
                &[
                    "-K", dev, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
                ],
            );
            self.exec(ns, "ip", &["link", "set", dev, "up"]);
        }
    }
}

/// Two sites in a [`Lab`]: host A (10.1.0.2/24) — gateway A — WAN — gateway B — host B
/// (10.2.0.2/24), the hosts routing through 10.1.0.1 and 10.2.0.1 (the gateways' LAN
/// addresses, which their data planes own).
pub struct Sites {
    /// Host A's namespace.
    pub ha: String,
    /// Gateway A's namespace.
    pub ga: String,
    /// Gateway B's namespace.
    pub gb: String,
    /// Host B's namespace.
    pub hb: String,
    /// Gateway A's LAN and WAN interfaces.
    pub ga_ports: (String, String),
    /// Gateway B's LAN and WAN interfaces.
    pub gb_ports: (String, String),
}

impl Lab {
    /// Creates the namespaces, links and host addresses of [`Sites`].
    pub fn two_sites(&mut self) -> Sites {
        let (ha, ga, gb, hb) = (
            self.netns("hA"),
            self.netns("gA"),
            self.netns("gB"),
            self.netns("hB"),
        );
        let n = |s: &str| self.name(s);
        let (ha_eth, ga_lan, ga_wan, gb_wan, gb_lan, hb_eth) =
            (n("ha0"), n("gal"), n("gaw"), n("gbw"), n("gbl"), n("hb0"));
        self.veth(&ha, &ha_eth, &ga, &ga_lan);
        self.veth(&ga, &ga_wan, &gb, &gb_wan);
        self.veth(&gb, &gb_lan, &hb, &hb_eth);
        self.exec(&ha, "ip", &["addr", "add", "10.1.0.2/24", "dev", &ha_eth]);
        self.exec(&ha, "ip", &["route", "add", "default", "via", "10.1.0.1"]);
        self.exec(&hb, "ip", &["addr", "add", "10.2.0.2/24", "dev", &hb_eth]);
        self.exec(&hb, "ip", &["route", "add", "default", "via", "10.2.0.1"]);
        Sites {
            ha,
            ga,
            gb,
            hb,
            ga_ports: (ga_lan, ga_wan),
            gb_ports: (gb_lan, gb_wan),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// One gateway's config for the netns tests: LAN and WAN ports on veths (our `af_packet`
/// backend, or DPDK's `net_af_packet` on the same veths), one peer, metrics on the management
/// address, and `extra` appended (say an `[offload]` table).
pub struct GatewayConfig<'a> {
    /// Node name.
    pub name: &'a str,
    /// Management interface and address (metrics on port 9100).
    pub mgmt: (&'a str, &'a str),
    /// LAN interface and address with prefix.
    pub lan: (&'a str, &'a str),
    /// WAN interface and address with prefix.
    pub wan: (&'a str, &'a str),
    /// This gateway's private key, base64.
    pub private_key: String,
    /// The peer's public key, base64.
    pub peer_public_key: String,
    /// The peer's WAN endpoint.
    pub endpoint: &'a str,
    /// The prefix behind the peer.
    pub allowed: &'a str,
    /// Housekeeping and data-plane cores.
    pub cores: (u16, u16),
    /// DPDK's `net_af_packet` instead of our `af_packet` backend.
    pub dpdk: bool,
    /// Appended as is.
    pub extra: &'a str,
}

impl GatewayConfig<'_> {
    /// The config file's text.
    pub fn text(&self) -> String {
        let port_backend = |ifname: &str, n: u8| {
            if self.dpdk {
                format!("backend = \"dpdk\"\nvdev = \"net_af_packet{n},iface={ifname}\"")
            } else {
                format!("backend = \"af_packet\"\ninterface = \"{ifname}\"")
            }
        };
        let psk = "xGuz/w55aVHb8h0O4fuTN0Xru1Klr2WND/zg0JnI3lw=";
        format!(
            "name = \"{}\"\n[management]\ninterface = \"{}\"\naddress = \"{}/24\"\n\
             [cores]\nhousekeeping = [{}]\ndataplane = [{}]\n[hugepages]\ncount = 0\n\
             [[ports]]\nname = \"lan0\"\nrole = \"lan\"\n{}\naddress = \"{}\"\n\
             [[ports]]\nname = \"wan0\"\nrole = \"wan\"\n{}\naddress = \"{}\"\n\
             [tunnel]\nlisten_port = 51900\nprivate_key = \"{}\"\n\
             [[tunnel.peers]]\nname = \"peer\"\npublic_key = \"{}\"\npreshared_key = \"{psk}\"\nendpoint = \"{}\"\n\
             allowed_prefixes = [\"{}\"]\n[metrics]\nlisten = \"{}:9100\"\n{}",
            self.name,
            self.mgmt.0,
            self.mgmt.1,
            self.cores.0,
            self.cores.1,
            port_backend(self.lan.0, 0),
            self.lan.1,
            port_backend(self.wan.0, 1),
            self.wan.1,
            self.private_key,
            self.peer_public_key,
            self.endpoint,
            self.allowed,
            self.mgmt.1,
            self.extra
        )
    }
}

/// Waits until a line of `log` contains `needle` and returns it; fails with the log's text
/// after `timeout`.
pub fn wait_for_line(log: &Path, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains(needle)) {
            return l.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "`{needle}` not in {} within {timeout:?}:\n{text}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the first sample in Prometheus `text` whose line starts with `name`.
pub fn metric(text: &str, name: &str) -> u64 {
    sample(text, name)
}

/// The value of the sample `name` (its labels included) in Prometheus `text`, as a float
/// (seconds, ratios).
pub fn metric_f(text: &str, name: &str) -> f64 {
    sample(text, name)
}

fn sample<T: std::str::FromStr>(text: &str, name: &str) -> T {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in metrics:\n{text}"))
}

/// Sends `mib` MiB of `kind` (`random` or `text`, with the demo's plaintext marker every
/// 4 KiB) over TCP from namespace `from` to 10.2.0.2:5001 in namespace `to`, with the demo's
/// sender and receiver (scripts written into `dir`), and requires the same byte count and
/// SHA-256 at both ends. Returns the sender's report: bytes, SHA-256, seconds.
pub fn checked_transfer(
    lab: &mut Lab,
    dir: &Path,
    (from, to): (&str, &str),
    mib: u32,
    kind: &str,
) -> Vec<String> {
    use dwcp_cli::demo::{MARKER, RECEIVER, SENDER};
    let (receiver, sender) = (dir.join("rx.py"), dir.join("tx.py"));
    std::fs::write(&receiver, RECEIVER).expect("receiver script");
    std::fs::write(&sender, SENDER).expect("sender script");
    let rx_log = dir.join("rx.log");
    let rx = lab.spawn(
        to,
        "python3",
        &[receiver.to_str().unwrap_or_default(), "10.2.0.2", "5001"],
        &rx_log,
    );
    wait_for_line(&rx_log, "listening", Duration::from_secs(10));
    let sent = lab
        .command(from, "python3")
        .arg(&sender)
        .args(["10.2.0.2", "5001", &mib.to_string(), MARKER, kind])
        .output()
        .expect("run the sender");
    let sent_out = String::from_utf8_lossy(&sent.stdout).trim().to_owned();
    assert!(
        sent.status.success(),
        "sender failed: {sent_out}\n{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let _ = lab.child(rx).wait();
    let mut received = String::new();
    std::fs::File::open(&rx_log)
        .and_then(|mut f| f.read_to_string(&mut received))
        .expect("receiver log");
    let received = received.lines().last().unwrap_or_default().to_owned();
    let s: Vec<String> = sent_out.split(' ').map(str::to_owned).collect();
    let r: Vec<&str> = received.split(' ').collect();
    assert!(
        s.len() == 3 && r.len() >= 2 && s[0] == r[0] && s[1] == r[1],
        "bytes and SHA-256 differ: sent {sent_out}, received {received}"
    );
    s
}
