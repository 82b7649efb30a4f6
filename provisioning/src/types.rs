//! Value types of the node config (addresses, keys, names), each parsed from one TOML string.
//!
//! Every type here has a `FromStr` whose error message is what an operator sees, and a JSON
//! schema `format` name, so the structural checker ([`crate::structure`]) reports a bad value
//! with the same message the typed parser would give, alongside every other error.

use std::borrow::Cow;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ipnet::Ipv4Net;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest interface name Linux accepts (`IFNAMSIZ` - 1).
pub const IFNAME_MAX: usize = 15;
/// Longest node name (one DNS label).
pub const NODE_NAME_MAX: usize = 63;
/// Length of X25519 keys and pre-shared keys, in bytes.
pub const KEY_LEN: usize = 32;

/// Implements `Serialize`/`Deserialize` through `Display`/`FromStr`, and a string JSON schema
/// carrying `format`, for a type that already has both.
macro_rules! string_value {
    ($ty:ty, $format:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = Cow::<'de, str>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                $format.into()
            }
            fn inline_schema() -> bool {
                true
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({ "type": "string", "format": $format })
            }
        }
    };
}

/// Checks a string against one of the formats this module defines (and `ipv4`).
///
/// Returns `None` for a format this crate does not know, so the checker ignores it.
pub fn check_format(format: &str, value: &str) -> Option<Result<(), String>> {
    fn ok<T>(r: Result<T, String>) -> Result<(), String> {
        r.map(|_| ())
    }
    Some(match format {
        "ipv4" => ok(value
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("`{value}` is not an IPv4 address"))),
        "ipv4-prefix" => ok(value.parse::<Ipv4Prefix>()),
        "ipv4-interface" => ok(value.parse::<InterfaceAddress>()),
        "ipv4-endpoint" => ok(value.parse::<Endpoint>()),
        "syslog-remote" => ok(value.parse::<SyslogRemote>()),
        "pci-address" => ok(value.parse::<PciAddress>()),
        "mac-address" => ok(value.parse::<MacAddress>()),
        "x25519-public-key" => ok(value.parse::<PublicKey>()),
        "x25519-private-key" => ok(value.parse::<PrivateKey>()),
        "preshared-key" => ok(value.parse::<PresharedKey>()),
        "ifname" => ok(value.parse::<IfName>()),
        "node-name" => ok(value.parse::<NodeName>()),
        _ => return None,
    })
}

/// An IPv4 network prefix, such as `10.2.0.0/16`; host bits must be zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Prefix(pub Ipv4Net);

impl Ipv4Prefix {
    /// Whether the two prefixes share any address.
    pub fn overlaps(&self, other: &Ipv4Prefix) -> bool {
        self.0.contains(&other.0) || other.0.contains(&self.0)
    }
}

impl FromStr for Ipv4Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let net: Ipv4Net = s
            .parse()
            .map_err(|_| format!("`{s}` is not an IPv4 prefix (expected e.g. 10.2.0.0/16)"))?;
        if net.trunc() != net {
            return Err(format!(
                "`{s}` has host bits set: the address is outside its prefix (did you mean {}?)",
                net.trunc()
            ));
        }
        Ok(Self(net))
    }
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
string_value!(Ipv4Prefix, "ipv4-prefix");

/// An interface's IPv4 address with its prefix length, such as `10.1.0.1/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InterfaceAddress(pub Ipv4Net);

impl InterfaceAddress {
    /// The address itself.
    pub fn addr(&self) -> Ipv4Addr {
        self.0.addr()
    }
    /// The network the address is on.
    pub fn network(&self) -> Ipv4Prefix {
        Ipv4Prefix(self.0.trunc())
    }
}

impl FromStr for InterfaceAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let net: Ipv4Net = s.parse().map_err(|_| {
            format!("`{s}` is not an IPv4 address with prefix length (expected e.g. 10.1.0.1/24)")
        })?;
        if net.prefix_len() < 31 && (net.addr() == net.network() || net.addr() == net.broadcast()) {
            let which = if net.addr() == net.network() {
                "network"
            } else {
                "broadcast"
            };
            return Err(format!(
                "`{s}` is the {which} address of {}, not a host address inside it",
                net.trunc()
            ));
        }
        Ok(Self(net))
    }
}

impl fmt::Display for InterfaceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
string_value!(InterfaceAddress, "ipv4-interface");

/// A UDP endpoint `IPv4:PORT`, port not zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint(pub SocketAddrV4);

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let sa: SocketAddrV4 = s
            .parse()
            .map_err(|_| format!("`{s}` is not IPv4:PORT (expected e.g. 203.0.113.7:51900)"))?;
        if sa.port() == 0 {
            return Err(format!("`{s}`: port 0 is not a valid destination"));
        }
        if sa.ip().is_unspecified() || sa.ip().is_broadcast() || sa.ip().is_multicast() {
            return Err(format!("`{s}` is not a unicast address"));
        }
        Ok(Self(sa))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
string_value!(Endpoint, "ipv4-endpoint");

/// Where log lines go: `udp://IPv4:PORT` or `tcp://IPv4:PORT` (RFC 5424 syslog; TCP with
/// RFC 6587 octet counting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyslogRemote {
    /// `true` for TCP, `false` for UDP.
    pub tcp: bool,
    /// The collector.
    pub addr: SocketAddrV4,
}

impl FromStr for SyslogRemote {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (tcp, rest) = if let Some(r) = s.strip_prefix("udp://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("tcp://") {
            (true, r)
        } else {
            return Err(format!(
                "`{s}` is not udp://IPv4:PORT or tcp://IPv4:PORT (e.g. udp://192.0.2.1:514)"
            ));
        };
        let Endpoint(addr) = rest.parse()?;
        Ok(Self { tcp, addr })
    }
}

impl fmt::Display for SyslogRemote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}",
            if self.tcp { "tcp" } else { "udp" },
            self.addr
        )
    }
}
string_value!(SyslogRemote, "syslog-remote");

/// A PCI address `DDDD:BB:DD.F` (the domain may be left out and defaults to 0000).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    /// PCI domain (segment).
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number, 0..=31.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

impl FromStr for PciAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("`{s}` is not a PCI address (expected DDDD:BB:DD.F, e.g. 0000:03:00.0)");
        let parts: Vec<&str> = s.split(':').collect();
        let (domain, bus, devfn) = match parts.as_slice() {
            [d, b, df] if d.len() == 4 => (u16::from_str_radix(d, 16).map_err(|_| bad())?, *b, *df),
            [b, df] => (0, *b, *df),
            _ => return Err(bad()),
        };
        let (dev, func) = devfn.split_once('.').ok_or_else(bad)?;
        if bus.len() != 2 || dev.len() != 2 || func.len() != 1 {
            return Err(bad());
        }
        let bus = u8::from_str_radix(bus, 16).map_err(|_| bad())?;
        let device = u8::from_str_radix(dev, 16).map_err(|_| bad())?;
        let function = u8::from_str_radix(func, 16).map_err(|_| bad())?;
        if device > 0x1f || function > 7 {
            return Err(format!("`{s}`: device must be 00..1f and function 0..7"));
        }
        Ok(Self {
            domain,
            bus,
            device,
            function,
        })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}
string_value!(PciAddress, "pci-address");

/// An Ethernet MAC address `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

impl FromStr for MacAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a MAC address (expected e.g. 52:54:00:12:34:56)");
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self(out))
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}
string_value!(MacAddress, "mac-address");

fn decode_key(s: &str, what: &str) -> Result<[u8; KEY_LEN], String> {
    let bytes = BASE64
        .decode(s.trim())
        .map_err(|_| format!("{what} is not valid base64 (make one with `dwcp keygen`)"))?;
    bytes.as_slice().try_into().map_err(|_| {
        format!(
            "{what} must be {KEY_LEN} bytes of base64, this one is {} bytes",
            bytes.len()
        )
    })
}

/// An X25519 public key, 32 bytes in base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl FromStr for PublicKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        decode_key(s, "public key").map(Self)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}
string_value!(PublicKey, "x25519-public-key");

/// An X25519 private key, 32 bytes in base64. Never printed: `Debug` and `Display` redact it.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; KEY_LEN]);

impl PrivateKey {
    /// Makes a new random key from the operating system's generator.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes)?;
        Ok(Self(bytes))
    }
    /// The raw key bytes, for the handshake.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
    /// The key in base64, for writing a key file. The only way to print it.
    pub fn expose_base64(&self) -> String {
        BASE64.encode(self.0)
    }
    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }
}

impl FromStr for PrivateKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        decode_key(s, "private key").map(Self)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl Serialize for PrivateKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}
impl<'de> Deserialize<'de> for PrivateKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
impl JsonSchema for PrivateKey {
    fn schema_name() -> Cow<'static, str> {
        "x25519-private-key".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "x25519-private-key" })
    }
}

/// A pre-shared symmetric key mixed into the handshake, 32 bytes in base64. Redacted like
/// [`PrivateKey`].
#[derive(Clone, PartialEq, Eq)]
pub struct PresharedKey([u8; KEY_LEN]);

impl PresharedKey {
    /// The raw key bytes, for the handshake.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl FromStr for PresharedKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        decode_key(s, "pre-shared key").map(Self)
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

impl Serialize for PresharedKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}
impl<'de> Deserialize<'de> for PresharedKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
impl JsonSchema for PresharedKey {
    fn schema_name() -> Cow<'static, str> {
        "preshared-key".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "preshared-key" })
    }
}

/// A Linux interface name or a port name: 1 to 15 characters of `[A-Za-z0-9_.-]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(pub String);

impl FromStr for IfName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > IFNAME_MAX {
            return Err(format!("`{s}` must be 1 to {IFNAME_MAX} characters long"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(format!(
                "`{s}` may hold only letters, digits, `_`, `.` and `-`"
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_value!(IfName, "ifname");

/// A node name: one DNS label (letters, digits, `-`; not starting or ending with `-`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeName(pub String);

impl FromStr for NodeName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let valid = !s.is_empty()
            && s.len() <= NODE_NAME_MAX
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if !valid {
            return Err(format!(
                "`{s}` is not a valid node name (1 to {NODE_NAME_MAX} letters, digits or `-`, \
                 not starting or ending with `-`)"
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_value!(NodeName, "node-name");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rejects_host_bits() {
        let e = "10.2.0.5/16".parse::<Ipv4Prefix>().unwrap_err();
        assert!(e.contains("did you mean 10.2.0.0/16"), "{e}");
        assert!("10.2.0.0/16".parse::<Ipv4Prefix>().is_ok());
    }

    #[test]
    fn interface_address_rejects_network_and_broadcast() {
        assert!(
            "10.1.0.0/24"
                .parse::<InterfaceAddress>()
                .unwrap_err()
                .contains("network")
        );
        assert!(
            "10.1.0.255/24"
                .parse::<InterfaceAddress>()
                .unwrap_err()
                .contains("broadcast")
        );
        assert!("10.1.0.1/24".parse::<InterfaceAddress>().is_ok());
        assert!("10.1.0.0/31".parse::<InterfaceAddress>().is_ok());
    }

    #[test]
    fn pci_address_forms() {
        let a: PciAddress = "03:00.1".parse().unwrap();
        assert_eq!(a.to_string(), "0000:03:00.1");
        assert_eq!("0000:03:00.1".parse::<PciAddress>().unwrap(), a);
        assert!("0000:03:20.0".parse::<PciAddress>().is_err());
        assert!("0000:03:00.8".parse::<PciAddress>().is_err());
        assert!("eth0".parse::<PciAddress>().is_err());
    }

    #[test]
    fn mac_round_trip() {
        let m: MacAddress = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert!("52:54:00:ab:cd".parse::<MacAddress>().is_err());
        assert!("52:54:00:ab:cd:0f:00".parse::<MacAddress>().is_err());
    }

    #[test]
    fn keys_must_be_32_bytes() {
        let e = BASE64.encode([1u8; 31]).parse::<PublicKey>().unwrap_err();
        assert!(e.contains("31 bytes"), "{e}");
        assert!(
            "not base64!"
                .parse::<PublicKey>()
                .unwrap_err()
                .contains("base64")
        );
        let k = PrivateKey::generate().unwrap();
        let again: PrivateKey = k.expose_base64().parse().unwrap();
        assert_eq!(k.public_key(), again.public_key());
    }

    #[test]
    fn secrets_are_redacted() {
        let k = PrivateKey::generate().unwrap();
        assert!(!format!("{k:?}").contains(&k.expose_base64()));
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(json, "\"<redacted>\"");
    }

    #[test]
    fn x25519_public_key_matches_rfc7748() {
        // RFC 7748 §6.1, Alice's key pair.
        let private: [u8; 32] = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ];
        let public = PrivateKey(private).public_key();
        assert_eq!(
            public.0[..4],
            [0x85, 0x20, 0xf0, 0x09],
            "public key {public} does not match RFC 7748"
        );
    }

    #[test]
    fn names() {
        assert!("site-a-gw1".parse::<NodeName>().is_ok());
        assert!("-bad".parse::<NodeName>().is_err());
        assert!("lan0".parse::<IfName>().is_ok());
        assert!("a/b".parse::<IfName>().is_err());
        assert!("sixteen-chars-xx".parse::<IfName>().is_err());
    }
}
