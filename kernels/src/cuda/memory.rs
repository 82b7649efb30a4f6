//! Device memory and pinned host memory, freed on drop, and the staging buffers each lane
//! holds: one structure-of-arrays descriptor set on the host and its twin on the device.

use super::*;

/// Device memory, freed on drop.
pub(super) struct DeviceBuf {
    pub(super) ptr: CUdeviceptr,
}

impl DeviceBuf {
    pub(super) fn new(bytes: usize) -> Result<Self, DriverError> {
        // SAFETY: plain allocation in the current context (the engine binds it first); the
        // memory is only reached through this handle and freed once in drop.
        let ptr = unsafe { result::malloc_sync(bytes.max(1)) }?;
        Ok(Self { ptr })
    }
}

impl Drop for DeviceBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from malloc_sync and is freed exactly once; the engine
        // synchronises its streams before dropping its buffers.
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

/// Page-locked host memory of `T`s, freed on drop.
pub(super) struct Pinned<T: Copy + Default> {
    pub(super) ptr: *mut T,
    pub(super) len: usize,
    /// Heap memory standing in for page-locked memory (tests of the staging code on machines
    /// without a driver); `ptr` points into it and drop does not call the driver.
    pub(super) heap: Option<Box<[T]>>,
}

// SAFETY: the buffer is plain memory owned by this handle; access goes through &/&mut self.
unsafe impl<T: Copy + Default + Send> Send for Pinned<T> {}

impl<T: Copy + Default> Pinned<T> {
    pub(super) fn new(len: usize) -> Result<Self, DriverError> {
        let len = len.max(1);
        let bytes = len * size_of::<T>();
        // SAFETY: flags 0 asks for ordinary (cached, not write-combined) page-locked memory;
        // the pointer is checked and initialised below before any read.
        let raw = unsafe { result::malloc_host(bytes, 0) }?;
        let ptr = raw.cast::<T>();
        // SAFETY: `ptr` points to `len` properly aligned (page-aligned) `T`s that we own.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }.fill(T::default());
        Ok(Self {
            ptr,
            len,
            heap: None,
        })
    }

    #[cfg(test)]
    pub(super) fn heap(len: usize) -> Self {
        let mut b = vec![T::default(); len.max(1)].into_boxed_slice();
        Self {
            ptr: b.as_mut_ptr(),
            len: b.len(),
            heap: Some(b),
        }
    }

    pub(super) fn as_slice(&self) -> &[T] {
        // SAFETY: `ptr` holds `len` initialised `T`s owned by self; the engine waits for its
        // stream before reading memory a copy writes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in as_slice, with exclusive access through &mut self; the engine waits for
        // its stream before writing memory a pending copy reads.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl<T: Copy + Default> Drop for Pinned<T> {
    fn drop(&mut self) {
        if self.heap.is_some() {
            return;
        }
        // SAFETY: `ptr` came from malloc_host and is freed once, after the streams are idle.
        let _ = unsafe { result::free_host(self.ptr.cast()) };
    }
}

/// One operation's descriptor columns, named per operation in the comments of `stage_*`.
pub(super) struct HostStage {
    pub(super) data: Pinned<u8>,
    pub(super) dst: Pinned<u8>,
    pub(super) a: Pinned<u32>,
    pub(super) b: Pinned<u32>,
    pub(super) c: Pinned<u32>,
    pub(super) d: Pinned<u32>,
    pub(super) out: Pinned<u32>,
    pub(super) ok: Pinned<u8>,
    pub(super) nonces: Pinned<u8>,
    pub(super) keys_raw: Pinned<u8>,
    /// Jobs the host refused before staging (buffer too short): not sent.
    pub(super) refused: Vec<bool>,
}

pub(super) struct DeviceStage {
    pub(super) data: DeviceBuf,
    pub(super) dst: DeviceBuf,
    pub(super) a: DeviceBuf,
    pub(super) b: DeviceBuf,
    pub(super) c: DeviceBuf,
    pub(super) d: DeviceBuf,
    pub(super) out: DeviceBuf,
    pub(super) ok: DeviceBuf,
    pub(super) nonces: DeviceBuf,
    pub(super) keys_raw: DeviceBuf,
    pub(super) keys: DeviceBuf,
}

/// What a lane holds in flight.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Chunk {
    pub(super) start: usize,
    pub(super) n: usize,
    pub(super) bytes: usize,
    pub(super) dst_bytes: usize,
    pub(super) keys: usize,
}

pub(super) struct Lane {
    pub(super) stream: Arc<CudaStream>,
    pub(super) host: HostStage,
    pub(super) dev: DeviceStage,
    pub(super) pending: Option<Chunk>,
    pub(super) start: CudaEvent,
    pub(super) stop: CudaEvent,
}
