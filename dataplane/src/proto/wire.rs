//! DWCP/1 message layouts (docs/protocol.md): parsed in two steps — a length-checked view,
//! then plain values — and emitted into the caller's buffer. No function here panics on any
//! input, and none allocates.

/// Handshake initiation.
pub const TYPE_INIT: u8 = 1;
/// Handshake response.
pub const TYPE_RESPONSE: u8 = 2;
/// Transport data (and keepalives: data with an empty payload).
pub const TYPE_DATA: u8 = 4;

/// Data header length; the header is the AEAD's associated data.
pub const DATA_HEADER_LEN: usize = 16;
/// Flag: the payload is LZ4-compressed.
pub const FLAG_LZ4: u8 = 0x01;
/// Flag: the payload is a control record between the two gateways (e.g. RDMA queue-pair
/// details), not an inner packet.
pub const FLAG_CONTROL: u8 = 0x02;
/// Flags a receiver understands; any other bit set is malformed.
pub const KNOWN_FLAGS: u8 = FLAG_LZ4 | FLAG_CONTROL;

/// Noise IKpsk2 message 1 length: e (32) + s (32 + 16) + payload (12-byte timestamp + 16).
pub const NOISE_INIT_LEN: usize = 32 + 48 + 28;
/// Noise IKpsk2 message 2 length: e (32) + empty payload (16).
pub const NOISE_RESPONSE_LEN: usize = 32 + 16;
/// Handshake initiation length: type, 3 reserved, sender index, Noise message.
pub const INIT_LEN: usize = 8 + NOISE_INIT_LEN;
/// Handshake response length: type, 3 reserved, sender and receiver index, Noise message.
pub const RESPONSE_LEN: usize = 12 + NOISE_RESPONSE_LEN;

/// A message that is not DWCP/1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

/// The 16-byte data header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader {
    /// Flags (bit 0: LZ4).
    pub flags: u8,
    /// The receiver's session index.
    pub receiver: u32,
    /// Message counter, the AEAD nonce.
    pub counter: u64,
}

impl DataHeader {
    /// Parses the header at the start of a datagram.
    pub fn parse(buf: &[u8]) -> Result<Self, Malformed> {
        let h: &[u8; DATA_HEADER_LEN] = buf
            .get(..DATA_HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(Malformed)?;
        if h[0] != TYPE_DATA || h[1] & !KNOWN_FLAGS != 0 || h[2] != 0 || h[3] != 0 {
            return Err(Malformed);
        }
        Ok(Self {
            flags: h[1],
            receiver: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            counter: u64::from_be_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]),
        })
    }

    /// Writes the header.
    pub fn emit(&self, out: &mut [u8; DATA_HEADER_LEN]) {
        out[0] = TYPE_DATA;
        out[1] = self.flags;
        out[2] = 0;
        out[3] = 0;
        out[4..8].copy_from_slice(&self.receiver.to_be_bytes());
        out[8..16].copy_from_slice(&self.counter.to_be_bytes());
    }
}

/// A handshake initiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Init<'a> {
    /// The initiator's index for the new session.
    pub sender: u32,
    /// Noise message 1.
    pub noise: &'a [u8; NOISE_INIT_LEN],
}

impl<'a> Init<'a> {
    /// Parses an initiation.
    pub fn parse(buf: &'a [u8]) -> Result<Self, Malformed> {
        if buf.len() != INIT_LEN || buf[0] != TYPE_INIT || buf[1..4] != [0, 0, 0] {
            return Err(Malformed);
        }
        let sender = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let noise = buf[8..].try_into().map_err(|_| Malformed)?;
        Ok(Self { sender, noise })
    }

    /// Writes an initiation; returns its length.
    pub fn emit(
        sender: u32,
        noise: &[u8; NOISE_INIT_LEN],
        out: &mut [u8],
    ) -> Result<usize, Malformed> {
        let out = out.get_mut(..INIT_LEN).ok_or(Malformed)?;
        out[..4].copy_from_slice(&[TYPE_INIT, 0, 0, 0]);
        out[4..8].copy_from_slice(&sender.to_be_bytes());
        out[8..].copy_from_slice(noise);
        Ok(INIT_LEN)
    }
}

/// A handshake response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response<'a> {
    /// The responder's index for the new session.
    pub sender: u32,
    /// The initiator's index (from the initiation).
    pub receiver: u32,
    /// Noise message 2.
    pub noise: &'a [u8; NOISE_RESPONSE_LEN],
}

impl<'a> Response<'a> {
    /// Parses a response.
    pub fn parse(buf: &'a [u8]) -> Result<Self, Malformed> {
        if buf.len() != RESPONSE_LEN || buf[0] != TYPE_RESPONSE || buf[1..4] != [0, 0, 0] {
            return Err(Malformed);
        }
        let sender = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let receiver = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let noise = buf[12..].try_into().map_err(|_| Malformed)?;
        Ok(Self {
            sender,
            receiver,
            noise,
        })
    }

    /// Writes a response; returns its length.
    pub fn emit(
        sender: u32,
        receiver: u32,
        noise: &[u8; NOISE_RESPONSE_LEN],
        out: &mut [u8],
    ) -> Result<usize, Malformed> {
        let out = out.get_mut(..RESPONSE_LEN).ok_or(Malformed)?;
        out[..4].copy_from_slice(&[TYPE_RESPONSE, 0, 0, 0]);
        out[4..8].copy_from_slice(&sender.to_be_bytes());
        out[8..12].copy_from_slice(&receiver.to_be_bytes());
        out[12..].copy_from_slice(noise);
        Ok(RESPONSE_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_header_round_trip_and_layout() {
        let h = DataHeader {
            flags: FLAG_LZ4,
            receiver: 0x0102_0304,
            counter: 0x0a0b_0c0d_0e0f_1011,
        };
        let mut out = [0u8; DATA_HEADER_LEN];
        h.emit(&mut out);
        assert_eq!(
            out,
            [
                4, 1, 0, 0, 1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11
            ]
        );
        assert_eq!(DataHeader::parse(&out), Ok(h));
    }

    #[test]
    fn data_header_rejects_malformed() {
        let mut ok = [0u8; DATA_HEADER_LEN];
        DataHeader {
            flags: 0,
            receiver: 1,
            counter: 1,
        }
        .emit(&mut ok);
        assert!(DataHeader::parse(&ok[..15]).is_err(), "short");
        for (i, v) in [(0usize, 9u8), (1, 0x04), (2, 1), (3, 1)] {
            let mut b = ok;
            b[i] = v;
            assert_eq!(DataHeader::parse(&b), Err(Malformed), "byte {i} = {v}");
        }
    }

    #[test]
    fn handshake_messages_round_trip() {
        let noise = [7u8; NOISE_INIT_LEN];
        let mut buf = [0u8; 200];
        let n = Init::emit(42, &noise, &mut buf).unwrap();
        let p = Init::parse(&buf[..n]).unwrap();
        assert_eq!((p.sender, p.noise), (42, &noise));
        assert!(Init::parse(&buf[..n - 1]).is_err());
        let noise2 = [9u8; NOISE_RESPONSE_LEN];
        let n = Response::emit(5, 42, &noise2, &mut buf).unwrap();
        let r = Response::parse(&buf[..n]).unwrap();
        assert_eq!((r.sender, r.receiver, r.noise), (5, 42, &noise2));
        assert!(Response::emit(5, 42, &noise2, &mut [0u8; 10]).is_err());
    }

    #[test]
    fn any_bytes_parse_without_panic() {
        let mut x: u32 = 1;
        for len in 0..200 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    x.to_be_bytes()[1] % 5
                })
                .collect();
            let _ = DataHeader::parse(&buf);
            let _ = Init::parse(&buf);
            let _ = Response::parse(&buf);
        }
    }
}
