//! Any bytes as a node config file: reading and checking it never panics, every problem
//! reported names the file, a line and column inside it, and a message, and a config that
//! passes can be summarised and turned into a kernel command line.
#![no_main]

use dwcp_provisioning::document::{Diagnostic, SourceFile};
use dwcp_provisioning::validate::check;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let lines = input.split(|&b| b == b'\n').count() + 1;
    let diags = match SourceFile::from_bytes("fuzz.toml", input.to_vec()) {
        Ok(src) => match check(&src) {
            Ok(config) => {
                // What the CLI and the image build then make of a valid config.
                let summary = dwcp_provisioning::summary::summary(&config);
                assert!(summary.contains(config.name.0.as_str()), "{summary}");
                let cmdline = dwcp_provisioning::cmdline::kernel_cmdline(&config);
                assert!(!cmdline.contains('\n'), "{cmdline:?}");
                return;
            }
            Err(diags) => diags,
        },
        Err(d) => vec![d],
    };
    assert!(!diags.is_empty(), "a refused config without a reason");
    for d in &diags {
        assert_inside(d, lines);
    }
});

fn assert_inside(d: &Diagnostic, lines: usize) {
    assert_eq!(d.file, "fuzz.toml");
    assert!(
        d.line >= 1 && d.line <= lines,
        "line {} of {lines}: {d:?}",
        d.line
    );
    assert!(d.column >= 1, "column {}: {d:?}", d.column);
    assert!(!d.message.is_empty(), "no message: {d:?}");
}
