//! The management interface: found by MAC or name, brought up with its static address and
//! default route over rtnetlink, then checked against what the kernel reports.

use std::net::{IpAddr, Ipv4Addr};

use dwcp_provisioning::schema::Management;
use dwcp_provisioning::types::InterfaceAddress;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::sys::SysFs;

/// Why the management interface could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    /// No interface has the configured MAC or name.
    #[error("no network interface with {0} (interfaces here: {1})")]
    NotFound(String, String),
    /// A netlink request failed.
    #[error("netlink {what}: {detail}")]
    Netlink {
        /// The request.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

/// A found interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Kernel name.
    pub name: String,
    /// Index.
    pub index: u32,
}

/// Finds the interface the config names.
pub fn find(fs: &dyn SysFs, m: &Management) -> Result<Interface, ManagementError> {
    let names = fs.list("/sys/class/net").unwrap_or_default();
    let want = match (&m.mac, &m.interface) {
        (Some(mac), _) => format!("MAC {mac}"),
        (None, Some(name)) => format!("name {name}"),
        (None, None) => "no selector".to_owned(),
    };
    for name in &names {
        let matches = match (&m.mac, &m.interface) {
            (Some(mac), _) => fs
                .read(&format!("/sys/class/net/{name}/address"))
                .is_ok_and(|a| a.trim().eq_ignore_ascii_case(&mac.to_string())),
            (None, Some(n)) => n.0 == *name,
            (None, None) => false,
        };
        if matches {
            let index = fs
                .read(&format!("/sys/class/net/{name}/ifindex"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| ManagementError::NotFound(want.clone(), names.join(",")))?;
            return Ok(Interface {
                name: name.clone(),
                index,
            });
        }
    }
    Err(ManagementError::NotFound(want, names.join(",")))
}

fn request(
    sock: &Socket,
    what: &'static str,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> Result<(), ManagementError> {
    let err = |detail: String| ManagementError::Netlink { what, detail };
    let mut nl = NetlinkMessage::from(msg);
    nl.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    nl.header.sequence_number = 1;
    nl.finalize();
    let mut buf = vec![0u8; nl.buffer_len()];
    nl.serialize(&mut buf);
    sock.send(&buf, 0).map_err(|e| err(e.to_string()))?;
    let mut reply = vec![0u8; 8192];
    let n = sock
        .recv(&mut &mut reply[..], 0)
        .map_err(|e| err(e.to_string()))?;
    let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[..n])
        .map_err(|e| err(e.to_string()))?;
    match answer.payload {
        NetlinkPayload::Error(e) => match e.code {
            None => Ok(()),
            Some(code) => Err(err(
                std::io::Error::from_raw_os_error(-code.get()).to_string()
            )),
        },
        _ => Ok(()),
    }
}

fn route_socket() -> Result<Socket, ManagementError> {
    let nl = |what: &'static str| {
        move |e: std::io::Error| ManagementError::Netlink {
            what,
            detail: e.to_string(),
        }
    };
    let mut sock = Socket::new(NETLINK_ROUTE).map_err(nl("socket"))?;
    sock.bind_auto().map_err(nl("bind"))?;
    sock.connect(&SocketAddr::new(0, 0))
        .map_err(nl("connect"))?;
    Ok(sock)
}

fn set_up(sock: &Socket, index: u32) -> Result<(), ManagementError> {
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    request(sock, "link up", RouteNetlinkMessage::SetLink(link), 0)
}

/// Brings a data port's kernel interface up (for `af_packet`: no address, the data plane
/// owns the port's addressing).
pub fn link_up(fs: &dyn SysFs, name: &str) -> Result<u32, ManagementError> {
    let index: u32 = fs
        .read(&format!("/sys/class/net/{name}/ifindex"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            ManagementError::NotFound(
                format!("name {name}"),
                fs.list("/sys/class/net").unwrap_or_default().join(","),
            )
        })?;
    set_up(&route_socket()?, index)?;
    Ok(index)
}

/// Brings the interface up with its address and (when configured) the default route.
pub fn configure(iface: &Interface, m: &Management) -> Result<(), ManagementError> {
    let sock = route_socket()?;
    set_up(&sock, iface.index)?;
    add_address(&sock, iface.index, &m.address)?;
    if let Some(gw) = m.gateway {
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        r.header.destination_prefix_length = 0;
        r.header.table = RouteHeader::RT_TABLE_MAIN;
        r.header.protocol = RouteProtocol::Static;
        r.header.scope = RouteScope::Universe;
        r.header.kind = RouteType::Unicast;
        r.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        r.attributes.push(RouteAttribute::Oif(iface.index));
        request(
            &sock,
            "add default route",
            RouteNetlinkMessage::NewRoute(r),
            NLM_F_CREATE | NLM_F_REPLACE,
        )?;
    }
    Ok(())
}

fn add_address(
    sock: &Socket,
    index: u32,
    address: &InterfaceAddress,
) -> Result<(), ManagementError> {
    let addr = address.addr();
    let mut a = AddressMessage::default();
    a.header.family = AddressFamily::Inet;
    a.header.prefix_len = address.0.prefix_len();
    a.header.scope = AddressScope::Universe;
    a.header.index = index;
    a.attributes.push(AddressAttribute::Local(IpAddr::V4(addr)));
    a.attributes
        .push(AddressAttribute::Address(IpAddr::V4(addr)));
    if address.0.prefix_len() < 31 {
        a.attributes
            .push(AddressAttribute::Broadcast(address.0.broadcast()));
    }
    request(
        sock,
        "add address",
        RouteNetlinkMessage::NewAddress(a),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

/// Brings a kernel-owned interface up with an address (an RDMA device's NIC).
pub fn up_with_address(
    fs: &dyn SysFs,
    name: &str,
    address: &InterfaceAddress,
) -> Result<(), ManagementError> {
    let index = link_up(fs, name)?;
    add_address(&route_socket()?, index, address)
}

/// The default route's gateway as the kernel reports it in `/proc/net/route`.
pub fn default_gateway(fs: &dyn SysFs) -> Option<(String, Ipv4Addr)> {
    let table = fs.read("/proc/net/route").ok()?;
    table.lines().skip(1).find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        if cols.len() < 3 || cols[1] != "00000000" {
            return None;
        }
        let gw = u32::from_str_radix(cols[2], 16).ok()?;
        // The table prints the address in host (little-endian) byte order.
        Some((cols[0].to_owned(), Ipv4Addr::from(gw.swap_bytes())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::RootedFs;

    fn tree() -> (tempfile::TempDir, RootedFs) {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootedFs::new(dir.path());
        for (name, mac, idx) in [
            ("lo", "00:00:00:00:00:00", 1),
            ("eth0", "52:54:00:00:00:02", 2),
        ] {
            let d = fs.path(&format!("/sys/class/net/{name}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("address"), format!("{mac}\n")).unwrap();
            std::fs::write(d.join("ifindex"), format!("{idx}\n")).unwrap();
        }
        (dir, fs)
    }

    fn mgmt(mac: Option<&str>, name: Option<&str>) -> Management {
        Management {
            mac: mac.map(|m| m.parse().unwrap()),
            interface: name.map(|n| n.parse().unwrap()),
            address: "10.0.2.15/24".parse().unwrap(),
            gateway: None,
        }
    }

    #[test]
    fn finds_by_mac_and_by_name() {
        let (_d, fs) = tree();
        let want = Interface {
            name: "eth0".into(),
            index: 2,
        };
        assert_eq!(
            find(&fs, &mgmt(Some("52:54:00:00:00:02"), None)).unwrap(),
            want
        );
        assert_eq!(find(&fs, &mgmt(None, Some("eth0"))).unwrap(), want);
        let e = find(&fs, &mgmt(Some("52:54:00:00:00:09"), None))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("52:54:00:00:00:09") && e.contains("eth0,lo"),
            "{e}"
        );
    }

    #[test]
    fn reads_default_gateway() {
        let (_d, fs) = tree();
        std::fs::create_dir_all(fs.path("/proc/net")).unwrap();
        std::fs::write(
            fs.path("/proc/net/route"),
            "Iface\tDestination\tGateway \tFlags\nethX\t0002000A\t00000000\t0001\neth0\t00000000\t0202000A\t0003\n",
        )
        .unwrap();
        assert_eq!(
            default_gateway(&fs),
            Some(("eth0".into(), Ipv4Addr::new(10, 0, 2, 2)))
        );
    }
}
