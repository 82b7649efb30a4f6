//! The complete, commented example node config printed by `dwcp config example`.

use crate::types::{KEY_LEN, PresharedKey, PrivateKey};
use base64::Engine as _;

/// The example's text with placeholders for its keys.
pub const TEMPLATE: &str = include_str!("example/node.toml");
/// The config matching the VM `dwcp qemu boot` builds, with placeholders for its keys.
pub const QEMU_TEMPLATE: &str = include_str!("example/qemu-node.toml");

/// Why an example could not be made.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random generator failed")]
pub struct ExampleError(#[source] getrandom::Error);

/// The example with fresh random keys, so that no two copies share a private key.
///
/// The peer's public key and the pre-shared key are random placeholders: replace them with
/// the peer's real public key and a key shared with it.
pub fn example() -> Result<String, ExampleError> {
    fill(TEMPLATE)
}

/// The QEMU node config with fresh random keys.
pub fn qemu_example() -> Result<String, ExampleError> {
    fill(QEMU_TEMPLATE)
}

fn fill(template: &str) -> Result<String, ExampleError> {
    let own = PrivateKey::generate().map_err(ExampleError)?;
    let peer = PrivateKey::generate().map_err(ExampleError)?;
    let mut psk = [0u8; KEY_LEN];
    getrandom::fill(&mut psk).map_err(ExampleError)?;
    let psk_b64 = base64::engine::general_purpose::STANDARD.encode(psk);
    debug_assert!(psk_b64.parse::<PresharedKey>().is_ok());
    Ok(template
        .replace("@PRIVATE_KEY@", &own.expose_base64())
        .replace("@PEER_PUBLIC_KEY@", &peer.public_key().to_string())
        .replace("@PRESHARED_KEY@", &psk_b64))
}
