//! Any text as a node config: the check never panics, and every problem it reports names the
//! file, a line and column inside the text, and a message.
#![no_main]

use dwcp_provisioning::document::SourceFile;
use dwcp_provisioning::validate::check;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let src = SourceFile::new("fuzz.toml", text);
    let lines = text.lines().count().max(1) + 1;
    if let Err(diags) = check(&src) {
        assert!(!diags.is_empty(), "a refused config without a reason");
        for d in &diags {
            assert_eq!(d.file, "fuzz.toml");
            assert!(
                d.line >= 1 && d.line <= lines,
                "line {} of {lines}: {d:?}",
                d.line
            );
            assert!(d.column >= 1, "column {}: {d:?}", d.column);
            assert!(!d.message.is_empty(), "no message: {d:?}");
        }
    }
});
