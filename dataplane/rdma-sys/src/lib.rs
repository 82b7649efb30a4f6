//! RDMA verbs from Debian 12's rdma-core 44 through a small C shim (`shim/shim.c`), linked
//! statically with the Soft-RoCE (`rxe`) and ConnectX (`mlx5`) providers (decision 0028): the
//! raw entry points, and [`devices`], the one safe call the data plane needs so far (which RDMA
//! devices this node has), and [`verbs`], the safe types the transport builds on.

pub mod verbs;

use std::ffi::{CStr, c_char, c_int, c_void};

/// `struct ibv_device`, opaque.
#[repr(C)]
pub struct IbvDevice {
    _private: [u8; 0],
}

/// `struct ibv_context`, opaque.
#[repr(C)]
pub struct IbvContext {
    _private: [u8; 0],
}

// SAFETY: the shim's functions (shim/shim.c) with these exact C signatures; every pointer
// argument must be valid as the matching rdma-core verb documents.
unsafe extern "C" {
    /// `ibv_get_device_list`; `err` gets `errno` when it returns NULL.
    pub fn dwcp_ibv_get_device_list(num: *mut c_int, err: *mut c_int) -> *mut *mut IbvDevice;
    /// `ibv_free_device_list`.
    pub fn dwcp_ibv_free_device_list(list: *mut *mut IbvDevice);
    /// `ibv_get_device_name`.
    pub fn dwcp_ibv_get_device_name(dev: *mut IbvDevice) -> *const c_char;
    /// `ibv_get_device_guid` (network byte order).
    pub fn dwcp_ibv_get_device_guid(dev: *mut IbvDevice) -> u64;
    /// `ibv_open_device`; `err` gets `errno` when it returns NULL.
    pub fn dwcp_ibv_open_device(dev: *mut IbvDevice, err: *mut c_int) -> *mut IbvContext;
    /// `ibv_close_device`.
    pub fn dwcp_ibv_close_device(ctx: *mut IbvContext) -> c_int;
    /// `ibv_query_port`: state, active MTU and link layer.
    pub fn dwcp_ibv_query_port(
        ctx: *mut IbvContext,
        port: u8,
        state: *mut c_int,
        active_mtu: *mut c_int,
        link_layer: *mut c_int,
    ) -> c_int;
    /// `ibv_poll_cq` (static inline in verbs.h; `wc` points at `struct ibv_wc`s).
    pub fn dwcp_ibv_poll_cq(cq: *mut c_void, num_entries: c_int, wc: *mut c_void) -> c_int;
    /// `ibv_post_send` (static inline in verbs.h).
    pub fn dwcp_ibv_post_send(qp: *mut c_void, wr: *mut c_void, bad_wr: *mut *mut c_void) -> c_int;
    /// `ibv_post_recv` (static inline in verbs.h).
    pub fn dwcp_ibv_post_recv(qp: *mut c_void, wr: *mut c_void, bad_wr: *mut *mut c_void) -> c_int;
    /// `sizeof(struct ibv_wc)`, for the layout the Rust side mirrors.
    pub fn dwcp_sizeof_ibv_wc() -> usize;
}

/// An RDMA device as rdma-core lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Its name (`rxe0`, `mlx5_0`).
    pub name: String,
    /// Its node GUID, as the kernel reports it.
    pub guid: u64,
}

/// Why the devices could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceListError {
    /// The kernel has no RDMA support loaded (`ib_uverbs`).
    #[error("this kernel offers no RDMA (load ib_uverbs and a driver such as rdma_rxe): {0}")]
    NoKernelSupport(#[source] std::io::Error),
    /// Another failure of `ibv_get_device_list`.
    #[error("cannot list RDMA devices: {0}")]
    List(#[source] std::io::Error),
}

/// The RDMA devices this node has (none is an empty list).
pub fn devices() -> Result<Vec<Device>, DeviceListError> {
    let mut num: c_int = 0;
    let mut err: c_int = 0;
    // SAFETY: both are valid out-pointers for the call's duration.
    let list = unsafe { dwcp_ibv_get_device_list(&raw mut num, &raw mut err) };
    if list.is_null() {
        let e = std::io::Error::from_raw_os_error(err);
        return Err(if err == libc::ENOSYS {
            DeviceListError::NoKernelSupport(e)
        } else {
            DeviceListError::List(e)
        });
    }
    let count = usize::try_from(num).unwrap_or(0);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        // SAFETY: `list` holds `num` valid device pointers until it is freed below.
        let dev = unsafe { *list.add(i) };
        // SAFETY: `dev` is a listed device; the name is a NUL-terminated string it owns.
        let name = unsafe { CStr::from_ptr(dwcp_ibv_get_device_name(dev)) };
        out.push(Device {
            name: name.to_string_lossy().into_owned(),
            // SAFETY: `dev` is a listed device.
            guid: u64::from_be(unsafe { dwcp_ibv_get_device_guid(dev) }),
        });
    }
    // SAFETY: `list` came from `ibv_get_device_list` and is freed once; the names were copied.
    unsafe { dwcp_ibv_free_device_list(list) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_succeeds_or_names_the_missing_kernel_support() {
        match devices() {
            // The build machines have no RDMA device; a machine with Soft-RoCE lists rxe0.
            Ok(list) => {
                for d in &list {
                    assert!(!d.name.is_empty(), "{list:?}");
                }
            }
            Err(e @ DeviceListError::NoKernelSupport(_)) => {
                assert!(e.to_string().contains("ib_uverbs"), "{e}");
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_work_completion_is_the_size_verbs_h_says() {
        // SAFETY: a pure function of the header.
        let size = unsafe { dwcp_sizeof_ibv_wc() };
        // struct ibv_wc on x86_64 in rdma-core 44: 48 bytes.
        assert_eq!(size, 48);
    }
}
