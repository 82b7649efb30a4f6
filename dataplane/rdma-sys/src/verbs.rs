//! The transport's verbs as safe types: a [`Context`] per worker (device, protection domain,
//! one completion queue, one shared receive queue), [`MemoryRegion`]s registered on it, and
//! reliable-connected [`QueuePair`]s. Posting work is `unsafe` where the device reads or
//! writes memory after the call returns; everything else is checked here.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::ptr::NonNull;

/// The shim's per-worker context (`struct dwcp_rdma`), opaque.
#[repr(C)]
pub struct RawRdma {
    _private: [u8; 0],
}

/// A work completion as the shim reduces it (`struct dwcp_wc` in shim.c).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    /// The work request's id, as posted.
    pub wr_id: u64,
    /// `enum ibv_wc_status` ([`WC_SUCCESS`] or an error).
    pub status: u32,
    /// `enum ibv_wc_opcode` ([`WC_SEND`], [`WC_RECV`]).
    pub opcode: u32,
    /// Bytes received (receives only).
    pub byte_len: u32,
    /// The local queue pair it belongs to.
    pub qp_num: u32,
}

/// `IBV_WC_SUCCESS`.
pub const WC_SUCCESS: u32 = 0;
/// `IBV_WC_WR_FLUSH_ERR`: the QP went to the error state with this request outstanding.
pub const WC_WR_FLUSH_ERR: u32 = 5;
/// `IBV_WC_RETRY_EXC_ERR`: the peer did not acknowledge (gone, rebooted, link down).
pub const WC_RETRY_EXC_ERR: u32 = 12;
/// `IBV_WC_RNR_RETRY_EXC_ERR`: the peer had no receive buffer posted, retries exhausted.
pub const WC_RNR_RETRY_EXC_ERR: u32 = 13;
/// `IBV_WC_SEND`.
pub const WC_SEND: u32 = 0;
/// `IBV_WC_RECV`.
pub const WC_RECV: u32 = 128;
/// `IBV_QPS_RTS`: the queue pair sends and receives.
pub const QPS_RTS: i32 = 3;
/// `IBV_QPS_ERR`.
pub const QPS_ERR: i32 = 6;
/// Most completions one [`Context::poll`] returns.
pub const POLL_MAX: usize = 64;

/// `enum ibv_qp_state`'s name, for metrics and the console.
pub fn qp_state_name(state: i32) -> &'static str {
    match state {
        0 => "reset",
        1 => "init",
        2 => "rtr",
        3 => "rts",
        4 => "sqd",
        5 => "sqe",
        6 => "error",
        _ => "unknown",
    }
}

/// `ibv_wc_status_str`, for logs.
pub fn wc_status_name(status: u32) -> String {
    // SAFETY: the shim returns a static string for every value.
    let s = unsafe { CStr::from_ptr(dwcp_rdma_wc_status_str(status)) };
    s.to_string_lossy().into_owned()
}

// SAFETY: the shim's functions (shim/shim.c) with these exact C signatures.
unsafe extern "C" {
    fn dwcp_rdma_open(
        name: *const c_char,
        port: u8,
        gid_index: u8,
        cqe: c_int,
        srq_wr: u32,
        step: *mut *const c_char,
        err: *mut c_int,
    ) -> *mut RawRdma;
    fn dwcp_rdma_close(r: *mut RawRdma);
    fn dwcp_rdma_gid(r: *const RawRdma, out: *mut u8);
    fn dwcp_rdma_mtu(r: *const RawRdma) -> c_int;
    fn dwcp_rdma_reg(
        r: *mut RawRdma,
        addr: *mut c_void,
        len: usize,
        lkey: *mut u32,
        err: *mut c_int,
    ) -> *mut c_void;
    fn dwcp_rdma_dereg(mr: *mut c_void) -> c_int;
    fn dwcp_rdma_qp_create(
        r: *mut RawRdma,
        max_send: u32,
        max_inline: *mut u32,
        qpn: *mut u32,
        err: *mut c_int,
    ) -> *mut c_void;
    fn dwcp_rdma_qp_connect(
        r: *mut RawRdma,
        qp: *mut c_void,
        remote_qpn: u32,
        remote_psn: u32,
        remote_gid: *const u8,
        local_psn: u32,
        mtu: c_int,
        step: *mut *const c_char,
    ) -> c_int;
    fn dwcp_rdma_qp_state(qp: *mut c_void) -> c_int;
    fn dwcp_rdma_qp_destroy(qp: *mut c_void) -> c_int;
    fn dwcp_rdma_send(
        qp: *mut c_void,
        wr_id: u64,
        addr: *const c_void,
        len: u32,
        lkey: u32,
        inline_data: c_int,
    ) -> c_int;
    fn dwcp_rdma_post_recv(
        r: *mut RawRdma,
        wr_id: u64,
        addr: *mut c_void,
        len: u32,
        lkey: u32,
    ) -> c_int;
    fn dwcp_rdma_poll(r: *mut RawRdma, out: *mut Completion, n: c_int) -> c_int;
    fn dwcp_rdma_wc_status_str(status: u32) -> *const c_char;
    /// `sizeof(struct dwcp_wc)`, for [`Completion`]'s layout test.
    pub fn dwcp_sizeof_dwcp_wc() -> usize;
}

/// A verbs call that failed: which step, and the errno when there is one.
#[derive(Debug, thiserror::Error)]
#[error("{step}{}", .errno.map(|e| format!(": {}", std::io::Error::from_raw_os_error(e))).unwrap_or_default())]
pub struct VerbsError {
    /// What was being done.
    pub step: String,
    /// The errno, if the call set one.
    pub errno: Option<i32>,
}

impl VerbsError {
    fn new(step: impl Into<String>, errno: c_int) -> Self {
        Self {
            step: step.into(),
            errno: (errno != 0).then_some(errno),
        }
    }
}

/// One worker's RDMA context: the device opened, with a protection domain, one completion
/// queue for all its queue pairs' sends and receives, and one shared receive queue. Drop its
/// queue pairs and memory regions first (the device refuses to free what is in use).
pub struct Context {
    raw: NonNull<RawRdma>,
}

// SAFETY: a verbs context may be used from any thread; `Context` is not `Sync`, so one thread
// at a time uses it (the worker that owns it).
unsafe impl Send for Context {}

impl Context {
    /// Opens `device`, checks `port` is active and holds a GID at `gid_index`, and makes the
    /// protection domain, a completion queue of `cqe` entries and a shared receive queue of
    /// `srq_wr` receives.
    pub fn open(
        device: &str,
        port: u8,
        gid_index: u8,
        cqe: u32,
        srq_wr: u32,
    ) -> Result<Self, VerbsError> {
        let name = CString::new(device).map_err(|_| VerbsError::new("device name", 0))?;
        let mut step: *const c_char = std::ptr::null();
        let mut err: c_int = 0;
        // SAFETY: valid C string and out-pointers for the call's duration.
        let raw = unsafe {
            dwcp_rdma_open(
                name.as_ptr(),
                port,
                gid_index,
                c_int::try_from(cqe).unwrap_or(c_int::MAX),
                srq_wr,
                &raw mut step,
                &raw mut err,
            )
        };
        NonNull::new(raw).map(|raw| Self { raw }).ok_or_else(|| {
            let s = if step.is_null() {
                "open".to_owned()
            } else {
                // SAFETY: the shim sets `step` to a static string on failure.
                unsafe { CStr::from_ptr(step) }
                    .to_string_lossy()
                    .into_owned()
            };
            VerbsError::new(s, err)
        })
    }

    /// This node's GID at the configured index (RoCEv2: the IPv4-mapped address).
    pub fn gid(&self) -> [u8; 16] {
        let mut gid = [0u8; 16];
        // SAFETY: `raw` is open; `gid` has room for 16 bytes.
        unsafe { dwcp_rdma_gid(self.raw.as_ptr(), gid.as_mut_ptr()) };
        gid
    }

    /// The port's active path MTU (`enum ibv_mtu`: 1 = 256 … 5 = 4096 bytes).
    pub fn mtu(&self) -> u8 {
        // SAFETY: `raw` is open.
        let m = unsafe { dwcp_rdma_mtu(self.raw.as_ptr()) };
        u8::try_from(m).unwrap_or(1)
    }

    /// Registers `len` bytes at `addr` for the device's local access.
    ///
    /// # Safety
    /// The memory stays allocated, and is not handed to anything else that frees it, for as
    /// long as the returned region lives.
    pub unsafe fn register(
        &mut self,
        addr: *mut u8,
        len: usize,
    ) -> Result<MemoryRegion, VerbsError> {
        let mut lkey = 0u32;
        let mut err: c_int = 0;
        // SAFETY: `raw` is open; the caller vouches for the memory.
        let mr = unsafe {
            dwcp_rdma_reg(
                self.raw.as_ptr(),
                addr.cast(),
                len,
                &raw mut lkey,
                &raw mut err,
            )
        };
        NonNull::new(mr)
            .map(|mr| MemoryRegion { mr, lkey })
            .ok_or_else(|| VerbsError::new("register memory", err))
    }

    /// A reliable-connected queue pair on this context's completion and shared receive
    /// queues, in INIT: `max_send` outstanding sends, and up to `max_inline` bytes inline
    /// (the device may give less: [`QueuePair::max_inline`]).
    pub fn queue_pair(&mut self, max_send: u32, max_inline: u32) -> Result<QueuePair, VerbsError> {
        let mut inline = max_inline;
        let mut qpn = 0u32;
        let mut err: c_int = 0;
        // SAFETY: `raw` is open; out-pointers valid for the call.
        let qp = unsafe {
            dwcp_rdma_qp_create(
                self.raw.as_ptr(),
                max_send,
                &raw mut inline,
                &raw mut qpn,
                &raw mut err,
            )
        };
        NonNull::new(qp)
            .map(|qp| QueuePair {
                qp,
                qpn,
                max_inline: inline,
            })
            .ok_or_else(|| VerbsError::new("create queue pair", err))
    }

    /// Connects `qp` to the remote queue pair `remote_qpn` at `remote_gid` (INIT → RTR →
    /// RTS): the remote starts sending at `remote_psn`, this side at `local_psn`.
    pub fn connect(
        &mut self,
        qp: &mut QueuePair,
        remote_qpn: u32,
        remote_psn: u32,
        remote_gid: &[u8; 16],
        local_psn: u32,
        mtu: u8,
    ) -> Result<(), VerbsError> {
        let mut step: *const c_char = std::ptr::null();
        // SAFETY: `raw` and `qp` are live and belong together; the GID is 16 bytes.
        let rc = unsafe {
            dwcp_rdma_qp_connect(
                self.raw.as_ptr(),
                qp.qp.as_ptr(),
                remote_qpn,
                remote_psn,
                remote_gid.as_ptr(),
                local_psn,
                c_int::from(mtu),
                &raw mut step,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let s = if step.is_null() {
            "connect".to_owned()
        } else {
            // SAFETY: a static string from the shim.
            unsafe { CStr::from_ptr(step) }
                .to_string_lossy()
                .into_owned()
        };
        Err(VerbsError::new(s, rc))
    }

    /// Posts a receive buffer to the shared receive queue.
    ///
    /// # Safety
    /// `addr..addr + len` lies in a live [`MemoryRegion`] of this context with key `lkey`,
    /// and nothing else reads or writes it until its completion has been polled.
    pub unsafe fn post_recv(
        &mut self,
        wr_id: u64,
        addr: *mut u8,
        len: u32,
        lkey: u32,
    ) -> Result<(), VerbsError> {
        // SAFETY: as the caller vouches.
        let rc = unsafe { dwcp_rdma_post_recv(self.raw.as_ptr(), wr_id, addr.cast(), len, lkey) };
        if rc == 0 {
            Ok(())
        } else {
            Err(VerbsError::new("post receive", rc))
        }
    }

    /// Takes up to [`POLL_MAX`] completions (sends and receives of every queue pair) into
    /// `out`; returns how many. No system call: the provider reads the queue in memory.
    pub fn poll(&mut self, out: &mut [Completion]) -> Result<usize, VerbsError> {
        let n = c_int::try_from(out.len().min(POLL_MAX)).unwrap_or(0);
        // SAFETY: `out` has room for `n` completions.
        let got = unsafe { dwcp_rdma_poll(self.raw.as_ptr(), out.as_mut_ptr(), n) };
        usize::try_from(got).map_err(|_| VerbsError::new("poll completion queue", -got))
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: opened by `open`, closed once.
        unsafe { dwcp_rdma_close(self.raw.as_ptr()) };
    }
}

/// Memory registered with a [`Context`].
pub struct MemoryRegion {
    mr: NonNull<c_void>,
    lkey: u32,
}

// SAFETY: a registration is a handle the owning worker moves with its context.
unsafe impl Send for MemoryRegion {}

impl MemoryRegion {
    /// Its local key, for work requests.
    pub fn lkey(&self) -> u32 {
        self.lkey
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: registered by `Context::register`, deregistered once.
        unsafe { dwcp_rdma_dereg(self.mr.as_ptr()) };
    }
}

/// A reliable-connected queue pair.
pub struct QueuePair {
    qp: NonNull<c_void>,
    qpn: u32,
    max_inline: u32,
}

// SAFETY: moved with its worker's context; used by one thread at a time.
unsafe impl Send for QueuePair {}

impl QueuePair {
    /// Its number, which the peer connects to.
    pub fn qpn(&self) -> u32 {
        self.qpn
    }
    /// The most bytes it sends inline.
    pub fn max_inline(&self) -> u32 {
        self.max_inline
    }
    /// Its state as the device reports it (`enum ibv_qp_state`; see [`qp_state_name`]), or
    /// -1 when it cannot be read. A system call: not for the data path.
    pub fn state(&self) -> i32 {
        // SAFETY: `qp` is live.
        unsafe { dwcp_rdma_qp_state(self.qp.as_ptr()) }
    }

    /// Posts one signaled SEND of `len` bytes at `addr`. Inline (`inline` and `len` at most
    /// [`QueuePair::max_inline`]): the bytes are copied during the call.
    ///
    /// # Safety
    /// Unless inline, `addr..addr + len` lies in a live [`MemoryRegion`] with key `lkey` and
    /// stays unchanged until the send's completion has been polled.
    pub unsafe fn send(
        &mut self,
        wr_id: u64,
        addr: *const u8,
        len: u32,
        lkey: u32,
        inline: bool,
    ) -> Result<(), VerbsError> {
        // SAFETY: as the caller vouches.
        let rc = unsafe {
            dwcp_rdma_send(
                self.qp.as_ptr(),
                wr_id,
                addr.cast(),
                len,
                lkey,
                c_int::from(inline),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(VerbsError::new("post send", rc))
        }
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        // SAFETY: created by `Context::queue_pair`, destroyed once.
        unsafe { dwcp_rdma_qp_destroy(self.qp.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_completion_is_laid_out_as_the_shim_writes_it() {
        // SAFETY: a pure function of the shim's struct.
        let size = unsafe { dwcp_sizeof_dwcp_wc() };
        assert_eq!(size, std::mem::size_of::<Completion>());
        assert_eq!(size, 24);
    }

    #[test]
    fn a_missing_device_is_named() {
        match Context::open("dwcp-no-such-rdma", 1, 1, 16, 16) {
            Ok(_) => panic!("opened a device that does not exist"),
            // With ib_uverbs: the device is not in the list; without: listing fails.
            Err(e) => assert!(e.step == "find device" || e.step == "list devices", "{e}"),
        }
    }

    #[test]
    fn status_and_state_names() {
        assert_eq!(qp_state_name(QPS_RTS), "rts");
        assert_eq!(qp_state_name(QPS_ERR), "error");
        assert_eq!(wc_status_name(WC_SUCCESS), "success");
        assert!(wc_status_name(WC_RETRY_EXC_ERR).contains("retry"));
    }
}
