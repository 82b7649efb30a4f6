//! `dwcp`, the operator CLI for DWCP appliance nodes. See `dwcp --help`.

fn main() -> std::process::ExitCode {
    dwcp_cli::main()
}
