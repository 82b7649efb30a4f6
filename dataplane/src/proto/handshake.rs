//! The DWCP/1 handshake: Noise `IKpsk2` (X25519, AES-256-GCM, SHA-256) through `snow`. The
//! initiator knows the responder's static key; the responder learns the initiator's from
//! message 1 and picks that peer's pre-shared key before answering. The result is one
//! AES-256-GCM key per direction.
//!
//! Message 1 carries a 12-byte timestamp (seconds and nanoseconds, big-endian); a responder
//! accepts an initiation from a peer only if its timestamp is newer than the last one
//! accepted, so a recorded initiation cannot be replayed.

use crate::proto::wire::{NOISE_INIT_LEN, NOISE_RESPONSE_LEN};

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_IKpsk2_25519_AESGCM_SHA256";
/// Mixed into the handshake hash: both sides must speak DWCP/1.
pub const PROLOGUE: &[u8] = b"DWCP/1";
/// Timestamp length in message 1.
pub const TIMESTAMP_LEN: usize = 12;

/// Session keys, one per direction.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// Key for what this side sends.
    pub send: [u8; 32],
    /// Key for what this side receives.
    pub recv: [u8; 32],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(<redacted>)")
    }
}

/// Why a handshake message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Noise refused the message (wrong key, corrupted, wrong pre-shared key).
    #[error("handshake message did not authenticate")]
    Auth,
    /// The initiator's static key belongs to no configured peer.
    #[error("initiation from an unknown static key")]
    UnknownPeer,
    /// The initiation's timestamp is not newer than the last accepted one.
    #[error("replayed or stale initiation")]
    Replayed,
}

/// A timestamp for message 1 from a wall-clock time in nanoseconds.
pub fn timestamp(wall_ns: u128) -> [u8; TIMESTAMP_LEN] {
    let secs = u64::try_from(wall_ns / 1_000_000_000).unwrap_or(u64::MAX);
    let nanos = u32::try_from(wall_ns % 1_000_000_000).unwrap_or(0);
    let mut t = [0u8; TIMESTAMP_LEN];
    t[..8].copy_from_slice(&secs.to_be_bytes());
    t[8..].copy_from_slice(&nanos.to_be_bytes());
    t
}

fn params() -> snow::params::NoiseParams {
    NOISE_PARAMS
        .parse()
        .unwrap_or_else(|_| unreachable!("the protocol name is a constant snow knows"))
}

/// An initiation waiting for its response.
pub struct Pending {
    state: snow::HandshakeState,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

/// Starts a handshake: returns the state to keep and Noise message 1.
pub fn initiate(
    local_private: &[u8; 32],
    peer_public: &[u8; 32],
    psk: &[u8; 32],
    ts: [u8; TIMESTAMP_LEN],
) -> Result<(Pending, [u8; NOISE_INIT_LEN]), HandshakeError> {
    let mut state = snow::Builder::new(params())
        .local_private_key(local_private)
        .and_then(|b| b.remote_public_key(peer_public))
        .and_then(|b| b.prologue(PROLOGUE))
        .and_then(|b| b.psk(2, psk))
        .and_then(snow::Builder::build_initiator)
        .map_err(|_| HandshakeError::Auth)?;
    let mut msg = [0u8; NOISE_INIT_LEN];
    let n = state
        .write_message(&ts, &mut msg)
        .map_err(|_| HandshakeError::Auth)?;
    debug_assert_eq!(n, NOISE_INIT_LEN);
    Ok((Pending { state }, msg))
}

impl Pending {
    /// Reads Noise message 2 and returns the session keys.
    pub fn finish(mut self, msg: &[u8; NOISE_RESPONSE_LEN]) -> Result<SessionKeys, HandshakeError> {
        let mut payload = [0u8; 16];
        self.state
            .read_message(msg, &mut payload)
            .map_err(|_| HandshakeError::Auth)?;
        if !self.state.is_handshake_finished() {
            return Err(HandshakeError::Auth);
        }
        let (i2r, r2i) = self.state.dangerously_get_raw_split();
        Ok(SessionKeys {
            send: i2r,
            recv: r2i,
        })
    }
}

/// What a responder learned from an initiation.
#[derive(Debug)]
pub struct Accepted {
    /// The peer (as `lookup` named it).
    pub peer: usize,
    /// The initiation's timestamp, to remember.
    pub timestamp: [u8; TIMESTAMP_LEN],
    /// Keys for the new session.
    pub keys: SessionKeys,
    /// Noise message 2 to send back.
    pub response: [u8; NOISE_RESPONSE_LEN],
}

/// Answers Noise message 1. `lookup` maps the initiator's static key to a peer, its
/// pre-shared key and the last timestamp accepted from it.
pub fn respond(
    local_private: &[u8; 32],
    msg: &[u8; NOISE_INIT_LEN],
    lookup: impl Fn(&[u8; 32]) -> Option<(usize, [u8; 32], [u8; TIMESTAMP_LEN])>,
) -> Result<Accepted, HandshakeError> {
    let mut state = snow::Builder::new(params())
        .local_private_key(local_private)
        .and_then(|b| b.prologue(PROLOGUE))
        .and_then(snow::Builder::build_responder)
        .map_err(|_| HandshakeError::Auth)?;
    let mut ts = [0u8; 64];
    let n = state
        .read_message(msg, &mut ts)
        .map_err(|_| HandshakeError::Auth)?;
    let timestamp: [u8; TIMESTAMP_LEN] = ts
        .get(..n)
        .and_then(|t| t.try_into().ok())
        .ok_or(HandshakeError::Auth)?;
    let remote: [u8; 32] = state
        .get_remote_static()
        .and_then(|k| k.try_into().ok())
        .ok_or(HandshakeError::UnknownPeer)?;
    let (peer, psk, last) = lookup(&remote).ok_or(HandshakeError::UnknownPeer)?;
    if timestamp <= last {
        return Err(HandshakeError::Replayed);
    }
    state.set_psk(2, &psk).map_err(|_| HandshakeError::Auth)?;
    let mut response = [0u8; NOISE_RESPONSE_LEN];
    state
        .write_message(&[], &mut response)
        .map_err(|_| HandshakeError::Auth)?;
    let (i2r, r2i) = state.dangerously_get_raw_split();
    Ok(Accepted {
        peer,
        timestamp,
        keys: SessionKeys {
            send: r2i,
            recv: i2r,
        },
        response,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair(seed: u8) -> ([u8; 32], [u8; 32]) {
        let k = snow::Builder::new(params()).generate_keypair().unwrap();
        let _ = seed;
        (k.private.try_into().unwrap(), k.public.try_into().unwrap())
    }

    #[test]
    fn two_peers_agree_on_keys() {
        let (a_priv, a_pub) = keypair(1);
        let (b_priv, b_pub) = keypair(2);
        let psk = [5u8; 32];
        let (pending, m1) = initiate(&a_priv, &b_pub, &psk, timestamp(10)).unwrap();
        let acc = respond(&b_priv, &m1, |k| (k == &a_pub).then_some((7, psk, [0; 12]))).unwrap();
        assert_eq!(acc.peer, 7);
        let a_keys = pending.finish(&acc.response).unwrap();
        assert_eq!(a_keys.send, acc.keys.recv);
        assert_eq!(a_keys.recv, acc.keys.send);
        assert_ne!(a_keys.send, a_keys.recv);
    }

    #[test]
    fn wrong_psk_unknown_peer_and_replay_are_refused() {
        let (a_priv, a_pub) = keypair(1);
        let (b_priv, b_pub) = keypair(2);
        let (pending, m1) = initiate(&a_priv, &b_pub, &[5u8; 32], timestamp(10)).unwrap();
        // The responder holds another PSK: its response does not authenticate at A.
        let acc = respond(&b_priv, &m1, |_| Some((0, [6u8; 32], [0; 12]))).unwrap();
        assert_eq!(
            pending.finish(&acc.response).unwrap_err(),
            HandshakeError::Auth
        );
        assert_eq!(
            respond(&b_priv, &m1, |_| None).unwrap_err(),
            HandshakeError::UnknownPeer
        );
        let seen = timestamp(10);
        assert_eq!(
            respond(&b_priv, &m1, |k| (k == &a_pub)
                .then_some((0, [5u8; 32], seen)))
            .unwrap_err(),
            HandshakeError::Replayed
        );
        let mut bad = m1;
        bad[40] ^= 1;
        assert_eq!(
            respond(&b_priv, &bad, |_| Some((0, [5u8; 32], [0; 12]))).unwrap_err(),
            HandshakeError::Auth
        );
    }
}
