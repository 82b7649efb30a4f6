//! DWCP/1, the protocol itself: the wire format, the Noise handshake, the anti-replay window
//! and one worker's tunnel state, which takes a burst's messages through the engine. Owns no
//! I/O and no clock.

pub mod anti_replay;
pub mod handshake;
pub mod tunnel;
pub mod wire;
