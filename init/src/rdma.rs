//! The node's RDMA devices (`[[rdma]]`): each one's kernel interface brought up with its
//! address (RoCEv2 GIDs are made from it), Soft-RoCE created on it over the kernel's RDMA
//! netlink (what `rdma link add NAME type rxe netdev IF` sends), then the device awaited in
//! sysfs with its user-space verbs node in `/dev/infiniband`.

use std::time::{Duration, Instant};

use dwcp_provisioning::schema::RdmaDevice;
use netlink_sys::{Socket, SocketAddr};

use crate::sys::SysFs;

/// `NETLINK_RDMA` (linux/netlink.h).
const NETLINK_RDMA: isize = 20;
/// `RDMA_NL_GET_TYPE(RDMA_NL_NLDEV, RDMA_NLDEV_CMD_NEWLINK)` = (5 << 10) + 3.
const NLDEV_NEWLINK: u16 = (5 << 10) + 3;
/// `RDMA_NLDEV_ATTR_DEV_NAME`, `RDMA_NLDEV_ATTR_NDEV_NAME`, `RDMA_NLDEV_ATTR_LINK_TYPE`
/// (rdma/rdma_netlink.h).
const ATTR_DEV_NAME: u16 = 2;
const ATTR_NDEV_NAME: u16 = 51;
const ATTR_LINK_TYPE: u16 = 65;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLMSG_ERROR: u16 = 0x2;

/// How long a device may take to appear after it was asked for.
const APPEAR_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an RDMA device is not there.
#[derive(Debug, thiserror::Error)]
pub enum RdmaError {
    /// Its interface could not be brought up with its address.
    #[error("rdma {device}: interface {interface}: {detail}")]
    Interface {
        /// The RDMA device.
        device: String,
        /// Its interface.
        interface: String,
        /// Why.
        detail: String,
    },
    /// The kernel refused to create the Soft-RoCE device.
    #[error("rdma {device}: creating Soft-RoCE on {interface} failed: {detail}")]
    Create {
        /// The RDMA device.
        device: String,
        /// Its interface.
        interface: String,
        /// Why.
        detail: String,
    },
    /// The device did not appear.
    #[error(
        "rdma {device}: no such RDMA device after {}s (devices here: {found}){hint}",
        APPEAR_TIMEOUT.as_secs()
    )]
    Missing {
        /// The RDMA device.
        device: String,
        /// What `/sys/class/infiniband` lists.
        found: String,
        /// What to check.
        hint: &'static str,
    },
}

/// The netlink request that creates Soft-RoCE device `name` on interface `netdev`.
pub fn newlink_request(name: &str, netdev: &str, seq: u32) -> Vec<u8> {
    fn attr(out: &mut Vec<u8>, kind: u16, value: &str) {
        let len = 4 + value.len() + 1;
        out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value.as_bytes());
        out.push(0);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    let mut msg = vec![0u8; 16];
    attr(&mut msg, ATTR_DEV_NAME, name);
    attr(&mut msg, ATTR_LINK_TYPE, "rxe");
    attr(&mut msg, ATTR_NDEV_NAME, netdev);
    let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
    msg[0..4].copy_from_slice(&len.to_ne_bytes());
    msg[4..6].copy_from_slice(&NLDEV_NEWLINK.to_ne_bytes());
    msg[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg[8..12].copy_from_slice(&seq.to_ne_bytes());
    msg
}

/// The status in a netlink acknowledgement: 0, or a negative errno; None if it is not one.
pub fn ack_status(reply: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    if kind != NLMSG_ERROR {
        return None;
    }
    Some(i32::from_ne_bytes(reply.get(16..20)?.try_into().ok()?))
}

/// Asks the kernel for Soft-RoCE device `name` on `netdev`.
fn create_rxe(name: &str, netdev: &str) -> Result<(), String> {
    let mut sock = Socket::new(NETLINK_RDMA).map_err(|e| format!("netlink socket: {e}"))?;
    sock.bind_auto().map_err(|e| format!("netlink bind: {e}"))?;
    sock.connect(&SocketAddr::new(0, 0))
        .map_err(|e| format!("netlink connect: {e}"))?;
    sock.send(&newlink_request(name, netdev, 1), 0)
        .map_err(|e| format!("netlink send: {e}"))?;
    let mut buf = vec![0u8; 4096];
    let n = sock
        .recv(&mut &mut buf[..], 0)
        .map_err(|e| format!("netlink receive: {e}"))?;
    match ack_status(&buf[..n]) {
        Some(0) => Ok(()),
        // EEXIST: a data-plane restart or a second pass finds it already made.
        Some(code) if code == -(nix::errno::Errno::EEXIST as i32) => Ok(()),
        Some(code) => Err(std::io::Error::from_raw_os_error(-code).to_string()),
        None => Err("the kernel's answer is not an acknowledgement".into()),
    }
}

/// Waits for `/sys/class/infiniband/NAME` and a `/dev/infiniband/uverbs*` node.
fn await_device(fs: &dyn SysFs, d: &RdmaDevice) -> Result<(), RdmaError> {
    let start = Instant::now();
    let sys = format!("/sys/class/infiniband/{}", d.device);
    loop {
        let verbs = fs
            .list("/dev/infiniband")
            .is_ok_and(|l| l.iter().any(|n| n.starts_with("uverbs")));
        if fs.exists(&sys) && verbs {
            return Ok(());
        }
        if start.elapsed() >= APPEAR_TIMEOUT {
            let found = fs.list("/sys/class/infiniband").unwrap_or_default();
            return Err(RdmaError::Missing {
                device: d.device.to_string(),
                found: if found.is_empty() {
                    "none".into()
                } else {
                    found.join(", ")
                },
                hint: if d.soft_roce {
                    ""
                } else {
                    "; a ConnectX needs mlx5_core and mlx5_ib, and its name from `rdma link`"
                },
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Brings up one RDMA device; the line to say, or the one sentence naming what failed.
pub fn bring_up(fs: &dyn SysFs, d: &RdmaDevice) -> Result<String, RdmaError> {
    let iface = |detail: String| RdmaError::Interface {
        device: d.device.to_string(),
        interface: d.interface.to_string(),
        detail,
    };
    crate::management::up_with_address(fs, &d.interface.0, &d.address)
        .map_err(|e| iface(e.to_string()))?;
    if d.soft_roce && !fs.exists(&format!("/sys/class/infiniband/{}", d.device)) {
        create_rxe(&d.device.0, &d.interface.0).map_err(|detail| RdmaError::Create {
            device: d.device.to_string(),
            interface: d.interface.to_string(),
            detail,
        })?;
    }
    await_device(fs, d)?;
    Ok(format!(
        "rdma: {} on {} ({}){}",
        d.device,
        d.interface,
        d.address,
        if d.soft_roce { ", Soft-RoCE" } else { "" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_what_the_rdma_tool_sends() {
        let m = newlink_request("rxe0", "eth3", 7);
        // Header: length, type (RDMA_NL_NLDEV << 10 | NEWLINK), flags, sequence, port id.
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 5123);
        assert_eq!(u16::from_ne_bytes(m[6..8].try_into().unwrap()), 0x5);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        // Three NUL-terminated string attributes, each padded to 4 bytes.
        assert_eq!(&m[16..20], &[9, 0, 2, 0]);
        assert_eq!(&m[20..25], b"rxe0\0");
        assert_eq!(&m[28..32], &[8, 0, 65, 0]);
        assert_eq!(&m[32..36], b"rxe\0");
        assert_eq!(&m[36..40], &[9, 0, 51, 0]);
        assert_eq!(&m[40..45], b"eth3\0");
        assert_eq!(m.len(), 48);
    }

    #[test]
    fn acknowledgements_are_read_and_others_are_not() {
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack[16..20].copy_from_slice(&(-(nix::errno::Errno::EOPNOTSUPP as i32)).to_ne_bytes());
        assert_eq!(
            ack_status(&ack),
            Some(-(nix::errno::Errno::EOPNOTSUPP as i32))
        );
        ack[16..20].copy_from_slice(&0i32.to_ne_bytes());
        assert_eq!(ack_status(&ack), Some(0));
        ack[4..6].copy_from_slice(&16u16.to_ne_bytes());
        assert_eq!(ack_status(&ack), None);
        assert_eq!(ack_status(&[0; 3]), None);
    }
}
