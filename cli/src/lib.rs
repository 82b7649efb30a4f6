//! The operator CLI `dwcp`: argument parsing and the commands, the top of the crate graph.
//! `src/main.rs` only calls [`main`].

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod demo;
pub mod flash;
pub mod image_build;
pub mod pxe;
pub mod qemu_boot;
pub mod status;
pub mod update;

use dwcp_provisioning::document::SourceFile;
use dwcp_provisioning::types::PrivateKey;
use dwcp_provisioning::{docs, example, summary, validate};

/// Exit codes of `dwcp`, documented in `dwcp --help`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// The config has problems (each printed on stderr).
    Invalid = 1,
    /// Bad command line (clap prints why).
    Usage = 2,
    /// Something else failed: a file could not be read or written.
    Failed = 3,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "dwcp",
    version,
    about = "Operator tool for DWCP appliance nodes",
    after_help = "Exit codes: 0 success, 1 invalid config, 2 bad command line, 3 other failure."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check, explain and create node configs.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Make an X25519 key pair for a node's tunnel.
    Keygen {
        /// Write the private key to this file (mode 0600) and print only the public key.
        /// Without it, both keys are printed.
        #[arg(long, value_name = "PATH")]
        private_key: Option<PathBuf>,
        /// Overwrite an existing private key file.
        #[arg(long)]
        force: bool,
    },
    /// Print the public key of a private key read from a file (`-` for standard input).
    Pubkey {
        /// The private key file.
        file: PathBuf,
    },
    /// Build boot artifacts.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Boot artifacts under QEMU.
    #[command(subcommand)]
    Qemu(QemuCommand),
    /// The whole product on one machine: two appliances in QEMU carrying two sites' traffic
    /// (root). Builds the image if needed, reports, and removes everything it made.
    Demo {
        /// MiB for the transfer checked by SHA-256.
        #[arg(long, default_value_t = 200)]
        mib: u64,
        /// MiB per stream for each step of the step load (1, 2, 4 streams).
        #[arg(long, default_value_t = 10)]
        step_mib: u64,
        /// Pings for the latency percentiles.
        #[arg(long, default_value_t = 200)]
        pings: u32,
        /// Image directory (built there when missing or stale).
        #[arg(long, value_name = "DIR")]
        artifacts: Option<PathBuf>,
        /// Use KVM instead of TCG.
        #[arg(long)]
        kvm: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// How the appliances drive their NICs: `dpdk` (vfio-pci, hugepages; the real path)
        /// or `af-packet` (the kernel's driver).
        #[arg(long, value_enum, default_value = "dpdk")]
        backend: demo::DataPath,
        /// Carry the tunnel's data over RDMA: Soft-RoCE on a fourth NIC of each appliance,
        /// peers with `transport = "rdma"`; adds the RDMA checks to the report.
        #[arg(long)]
        rdma: bool,
    },
    /// A node's state over the management network (its metrics endpoint's `GET /status`):
    /// node, version, slot, config source, data plane, engine, clock, ports, peers.
    Status {
        /// The node's management address, with the metrics port if not 9100.
        #[arg(value_name = "ADDR[:PORT]")]
        addr: String,
        /// Print the node's JSON as it came.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks that print figures against a ceiling measured in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Write a disk image and a node's config onto a block device or a file, then verify.
    Flash {
        /// The disk image (`dwcp image build` writes DIR/disk.img).
        #[arg(long, value_name = "IMG")]
        image: Option<PathBuf>,
        /// The node's config, validated first and written to its config partition.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Block device or file.
        target: PathBuf,
        /// Go ahead on a real block device.
        #[arg(long)]
        yes: bool,
    },
    /// Write a new system into the inactive slot of a disk and make it the default, with a
    /// boot counter (systemd-boot falls back when it never reaches READY).
    Update {
        /// Directory with the new vmlinuz and initrd.img (`dwcp image build --out DIR`).
        #[arg(long, value_name = "DIR")]
        image: PathBuf,
        /// Disk image or block device.
        target: PathBuf,
    },
    /// Network boot for a fleet.
    #[command(subcommand)]
    Pxe(PxeCommand),
}

#[derive(Debug, Subcommand)]
enum PxeCommand {
    /// Write a TFTP/HTTP tree: iPXE script choosing the node by MAC, kernel, initramfs, and one
    /// config initramfs per node. Every node config is validated first.
    Build {
        /// Directory with vmlinuz and initrd.img (`dwcp image build --out DIR`).
        #[arg(long, value_name = "DIR")]
        artifacts: PathBuf,
        /// The inventory: `[[node]]` tables with `mac` and `config` (a path relative to it).
        #[arg(long, value_name = "FILE")]
        inventory: PathBuf,
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// One core's DWCP encap/decap on the memory backend at 64, 512 and 1408 bytes,
    /// compression off and on, against `openssl speed -evp aes-256-gcm` (same run).
    Pipeline {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Also send 20,000 packets each way through the offload engine this mode selects
        /// (`on`, `off`, `auto`) against the CPU engine, checking every packet.
        #[arg(long, value_name = "MODE")]
        offload: Option<String>,
        /// `dpdk`: also run the pipeline through the DPDK backend on a `net_ring` device,
        /// beside `dpdk-testpmd` forwarding on the same kind of device.
        #[arg(long, value_name = "BACKEND")]
        backend: Option<String>,
        /// Frames per burst (per engine batch) through the gateway pair and the offload check,
        /// as `dataplane.burst` sets a worker's (1 to 256).
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=256))]
        burst: u16,
    },
    /// The GPU engine: seal, open, compress and decompress at 64, 512, 1408 and 9000 bytes and
    /// batches of 256 to 65536 — kernel-only and end-to-end GB/s — against the pinned copy
    /// bandwidth and the CPU engine on every core, all in the same run.
    Offload {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// CUDA device index.
        #[arg(long, default_value_t = 0)]
        device: u32,
        /// Two sizes and two batch sizes only.
        #[arg(long)]
        quick: bool,
    },
    /// The RDMA transport: half a round trip and messages per second at 64 to 8192 bytes, two
    /// queue pairs looped through the RDMA device the config's peers use, beside UDP on the
    /// same address (needs that device on this machine, e.g. Soft-RoCE).
    Rdma {
        /// A node config with `[[rdma]]` and a peer on `transport = "rdma"`.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Round trips, and streamed messages, per size.
        #[arg(long, default_value_t = 2000)]
        messages: u32,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Build vmlinuz, initrd.img and manifest.json from the pinned kernel and this workspace.
    Build {
        /// A node config to embed as /etc/dwcp/dwcp.toml (validated first).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Use this init binary instead of building one (its shared libraries are added).
        #[arg(long, value_name = "FILE", requires = "dataplane")]
        init: Option<PathBuf>,
        /// Use this data-plane binary instead of building one (its shared libraries are added).
        #[arg(long, value_name = "FILE", requires = "init")]
        dataplane: Option<PathBuf>,
        /// Carry the NVIDIA driver stack (image/nvidia-pin.toml: kernel modules built for the
        /// pinned kernel, GSP firmware, libcuda, NVML, NVRTC) for nodes with a GPU.
        #[arg(long)]
        gpu: bool,
    },
}

#[derive(Debug, Subcommand)]
enum QemuCommand {
    /// Boot one node, wait for DWCP READY (or safe mode), then power it off.
    Boot {
        /// Directory with vmlinuz and initrd.img (`dwcp image build --out DIR`).
        #[arg(long, value_name = "DIR", required_unless_present_any = ["pxe", "disk"])]
        artifacts: Option<PathBuf>,
        /// Boot from this PXE tree (`dwcp pxe build`) instead, over QEMU's TFTP and iPXE.
        #[arg(
            long,
            value_name = "TREE",
            requires = "mac",
            conflicts_with = "artifacts"
        )]
        pxe: Option<PathBuf>,
        /// The MAC address the PXE-booting NIC has.
        #[arg(long, value_name = "MAC")]
        mac: Option<dwcp_provisioning::types::MacAddress>,
        /// Boot this disk image through UEFI (OVMF) instead.
        #[arg(long, value_name = "IMG", conflicts_with_all = ["artifacts", "pxe"])]
        disk: Option<PathBuf>,
        /// Node config to boot with; default: the config matching the VM (`dwcp config example --qemu`).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Seconds to wait for READY or safe mode.
        #[arg(long, default_value_t = 180)]
        timeout: u64,
        /// Use KVM instead of TCG (hangs on some build machines).
        #[arg(long)]
        kvm: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a node config; print a summary, or every problem as FILE:LINE:COL: field: message.
    Check {
        /// The config file, `-` for standard input.
        file: PathBuf,
        /// Print only the problems, no summary.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Print a complete, commented example config with fresh keys.
    Example {
        /// The config matching the VM `dwcp qemu boot` builds instead.
        #[arg(long)]
        qemu: bool,
    },
    /// Print the field reference (Markdown), the text of docs/config.md.
    Docs,
    /// Print the config's JSON schema (for editors with TOML schema support).
    Schema,
    /// Replace only the config partition (DWCP-CONFIG) of a disk image or device with FILE,
    /// after validating it.
    SetPartition {
        /// Disk image or block device.
        target: PathBuf,
        /// The node config.
        file: PathBuf,
    },
}

/// Runs `dwcp` with the process's arguments.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            }
            .into();
        }
    };
    match run(cli) {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("dwcp: {e:#}");
            Exit::Failed.into()
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<Exit> {
    match cli.command {
        Command::Config(c) => config_command(c),
        Command::Image(ImageCommand::Build {
            config,
            out,
            init,
            dataplane,
            gpu,
        }) => image_command(config.as_deref(), &out, init.zip(dataplane), gpu),
        Command::Demo {
            mib,
            step_mib,
            pings,
            artifacts,
            kvm,
            json,
            backend,
            rdma,
        } => demo_command(
            demo::DemoOptions {
                backend,
                rdma,
                mib,
                step_mib,
                pings,
                kvm,
                artifacts: artifacts.unwrap_or_else(|| {
                    image_build::workspace_root()
                        .join("target")
                        .join("artifacts")
                }),
                progress: true,
            },
            json,
        ),
        Command::Flash {
            image,
            config,
            target,
            yes,
        } => flash_command(image, &config, &target, yes),
        Command::Update { image, target } => update_command(&image, &target),
        Command::Pxe(PxeCommand::Build {
            artifacts,
            inventory,
            out,
        }) => pxe_command(&artifacts, &inventory, &out),
        Command::Bench(bench) => bench_command(bench),
        Command::Status { addr, json } => {
            let v = status::fetch(status::target(&addr)?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", status::table(&v));
            }
            Ok(Exit::Ok)
        }
        Command::Qemu(q) => qemu_command(q),
        Command::Keygen { private_key, force } => keygen(private_key.as_deref(), force),
        Command::Pubkey { file } => {
            let text = read_input(&file)?;
            let key: PrivateKey = text
                .trim()
                .parse()
                .map_err(|e: String| anyhow::anyhow!("{}: {e}", file.display()))?;
            println!("{}", key.public_key());
            Ok(Exit::Ok)
        }
    }
}

/// `dwcp config …`.
fn config_command(c: ConfigCommand) -> anyhow::Result<Exit> {
    match c {
        ConfigCommand::Check { file, quiet } => config_check(&file, quiet),
        ConfigCommand::Example { qemu } => {
            print!(
                "{}",
                if qemu {
                    example::qemu_example()?
                } else {
                    example::example()?
                }
            );
            Ok(Exit::Ok)
        }
        ConfigCommand::Docs => {
            print!("{}", docs::reference_markdown());
            Ok(Exit::Ok)
        }
        ConfigCommand::SetPartition { target, file } => {
            let text = image_build::checked_config(&file)?;
            dwcp_image::disk::write_config_partition(
                &target,
                &[("dwcp.toml".to_owned(), text.into_bytes())],
            )?;
            let back = dwcp_image::disk::read_config_partition(&target, "dwcp.toml")?;
            anyhow::ensure!(
                back == std::fs::read(&file)?,
                "read-back of the config partition differs"
            );
            println!(
                "{}: config partition now holds {} (verified)",
                target.display(),
                file.display()
            );
            Ok(Exit::Ok)
        }
        ConfigCommand::Schema => {
            println!("{}", serde_json::to_string_pretty(validate::json_schema())?);
            Ok(Exit::Ok)
        }
    }
}

/// `dwcp image build`: the given init and data plane, or release builds of them.
fn image_command(
    config: Option<&Path>,
    out: &Path,
    binaries: Option<(PathBuf, PathBuf)>,
    gpu: bool,
) -> anyhow::Result<Exit> {
    let binaries = match binaries {
        Some(b) => b,
        None => image_build::build_binaries(false)?,
    };
    let variant = if gpu {
        image_build::Variant::Gpu
    } else {
        image_build::Variant::Standard
    };
    let m = image_build::build_variant(config, out, binaries, variant)?;
    for (file, sha) in &m.files {
        println!("{}  {}", sha, out.join(file).display());
    }
    println!(
        "kernel {} {}, {} modules, {} files in the initramfs{}; manifest: {}",
        m.kernel_package,
        m.kernel_version,
        m.modules.len(),
        m.initramfs.len(),
        m.nvidia_driver
            .as_ref()
            .map(|v| format!(", NVIDIA driver {v}"))
            .unwrap_or_default(),
        out.join("manifest.json").display()
    );
    Ok(Exit::Ok)
}

/// `dwcp demo`: the report as a table or JSON; fails unless the transfer arrived intact.
fn demo_command(opts: demo::DemoOptions, json: bool) -> anyhow::Result<Exit> {
    let report = demo::run_demo(&opts)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", demo::table(&report));
    }
    let ok = report.transfer.sha256_sent == report.transfer.sha256_received;
    Ok(if ok { Exit::Ok } else { Exit::Failed })
}

/// `dwcp flash`.
fn flash_command(
    image: Option<PathBuf>,
    config: &Path,
    target: &Path,
    yes: bool,
) -> anyhow::Result<Exit> {
    let image = image.unwrap_or_else(flash::default_image);
    flash::flash(
        &image,
        config,
        target,
        yes,
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    )?;
    println!(
        "{}: flashed with {} and {}",
        target.display(),
        image.display(),
        config.display()
    );
    Ok(Exit::Ok)
}

/// `dwcp update`.
fn update_command(image: &Path, target: &Path) -> anyhow::Result<Exit> {
    let u = update::update(image, target)?;
    println!(
        "{}: slot {} written and made the default with {} tries; slot {} stays as the fallback",
        target.display(),
        u.to.to_ascii_uppercase(),
        image_build::BOOT_TRIES,
        u.from.to_ascii_uppercase()
    );
    Ok(Exit::Ok)
}

/// `dwcp pxe build`.
fn pxe_command(artifacts: &Path, inventory: &Path, out: &Path) -> anyhow::Result<Exit> {
    let nodes = pxe::build(artifacts, inventory, out)?;
    for (mac, name) in &nodes {
        println!("{mac}  {name}");
    }
    println!(
        "{} node(s); serve {} over TFTP or HTTP, boot file boot.ipxe",
        nodes.len(),
        out.display()
    );
    Ok(Exit::Ok)
}

/// `dwcp bench …`: runs the release data plane's benchmark.
fn bench_command(bench: BenchCommand) -> anyhow::Result<Exit> {
    let bin = image_build::release_dataplane()?;
    let mut cmd = std::process::Command::new(&bin);
    match bench {
        BenchCommand::Pipeline {
            json,
            seconds,
            offload,
            backend,
            burst,
        } => {
            cmd.args(["bench", "pipeline", "--seconds", &seconds.to_string()]);
            cmd.args(["--burst", &burst.to_string()]);
            if let Some(b) = backend {
                cmd.args(["--backend", &b]);
            }
            if json {
                cmd.arg("--json");
            }
            if let Some(mode) = offload {
                cmd.args(["--offload", &mode]);
            }
        }
        BenchCommand::Offload {
            json,
            device,
            quick,
        } => {
            cmd.args(["bench", "offload", "--device", &device.to_string()]);
            if json {
                cmd.arg("--json");
            }
            if quick {
                cmd.arg("--quick");
            }
        }
        BenchCommand::Rdma {
            config,
            messages,
            json,
        } => {
            cmd.args(["bench", "rdma", "--messages", &messages.to_string()]);
            cmd.arg("--config").arg(&config);
            if json {
                cmd.arg("--json");
            }
        }
    }
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", bin.display()))?;
    Ok(if status.success() {
        Exit::Ok
    } else {
        Exit::Failed
    })
}

/// `dwcp qemu boot`.
fn qemu_command(q: QemuCommand) -> anyhow::Result<Exit> {
    let QemuCommand::Boot {
        artifacts,
        pxe,
        mac,
        disk,
        config,
        timeout,
        kvm,
    } = q;
    let timeout = std::time::Duration::from_secs(timeout);
    let ready = match (pxe, mac, artifacts) {
        _ if disk.is_some() => qemu_boot::boot_disk(
            disk.as_deref().unwrap_or(std::path::Path::new("")),
            timeout,
            kvm,
        )?,
        (Some(tree), Some(mac), _) => qemu_boot::boot_pxe(&tree, &mac, timeout, kvm)?,
        (_, _, Some(artifacts)) => qemu_boot::boot(&artifacts, config.as_deref(), timeout, kvm)?,
        _ => anyhow::bail!("give --artifacts DIR, or --pxe TREE with --mac MAC"),
    };
    Ok(if ready { Exit::Ok } else { Exit::Invalid })
}

/// The text of `file`, or of standard input for `-`.
fn read_input(file: &Path) -> anyhow::Result<String> {
    String::from_utf8(read_input_bytes(file)?)
        .map_err(|e| anyhow::anyhow!("{}: not UTF-8: {e}", file.display()))
}

/// The bytes of `file`, or of standard input for `-`.
fn read_input_bytes(file: &Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context as _;
    if file == Path::new("-") {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .context("cannot read standard input")?;
        Ok(b)
    } else {
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
    }
}

fn config_check(file: &Path, quiet: bool) -> anyhow::Result<Exit> {
    let name = if file == Path::new("-") {
        "<stdin>".to_owned()
    } else {
        file.display().to_string()
    };
    let checked = SourceFile::from_bytes(name.clone(), read_input_bytes(file)?)
        .map_err(|d| vec![d])
        .and_then(|src| validate::check(&src));
    match checked {
        Ok(config) => {
            if !quiet {
                print!("{}", summary::summary(&config));
                println!("{name}: OK");
            }
            Ok(Exit::Ok)
        }
        Err(diags) => {
            let mut err = std::io::stderr().lock();
            for d in &diags {
                let _ = writeln!(err, "{d}");
            }
            let _ = writeln!(err, "{name}: {} problem(s) found", diags.len());
            Ok(Exit::Invalid)
        }
    }
}

fn keygen(path: Option<&Path>, force: bool) -> anyhow::Result<Exit> {
    use anyhow::Context as _;
    let key = PrivateKey::generate().context("the operating system's random generator failed")?;
    match path {
        Some(path) => {
            write_private_key(path, &key, force)
                .with_context(|| format!("cannot write private key to {}", path.display()))?;
            eprintln!("private key written to {} (mode 0600)", path.display());
            println!("{}", key.public_key());
        }
        None => {
            println!("private_key = \"{}\"", key.expose_base64());
            println!("public_key = \"{}\"", key.public_key());
        }
    }
    Ok(Exit::Ok)
}

/// Writes the key with mode 0600 from the moment the file exists (never world-readable, not
/// even briefly).
fn write_private_key(path: &Path, key: &PrivateKey, force: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path)?;
    // An existing file keeps its old mode on truncate: set it explicitly.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    writeln!(f, "{}", key.expose_base64())?;
    f.sync_all()
}
