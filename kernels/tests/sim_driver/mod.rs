//! Builds the simulated CUDA driver (`dwcp_kernels::sim`), makes it the driver the CUDA engine
//! loads, and reaches its test controls.
#![allow(dead_code, reason = "each test binary uses part of this module")]

use std::sync::{Mutex, MutexGuard, OnceLock};

use dwcp_kernels::cuda::{Capacity, CudaEngine};

/// A failure to inject into a launch.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// None (clears an injection not yet used).
    None = 0,
    /// `cuLaunchKernel` refuses the launch.
    Refuse = 1,
    /// The launch faults on the device; its stream reports it.
    Device = 2,
    /// The launch runs for the given milliseconds.
    Hang = 3,
    /// From this launch on, every copy back to the host has one bit flipped (cleared by
    /// `None`).
    Corrupt = 4,
}

/// The order the stand-in's SIMT emulator runs a block's threads in between two barriers
/// (`simt::order`).
#[derive(Clone, Copy, Debug)]
pub enum Order {
    /// By thread index, each until it waits (the default).
    Forward,
    /// Backwards.
    Reverse,
    /// A fresh random order every sweep from this seed, each thread only to its next wait.
    Random(u64),
}

impl Order {
    fn code(self) -> u64 {
        match self {
            Self::Forward => 0,
            Self::Reverse => 1,
            Self::Random(seed) => seed.max(2),
        }
    }
}

/// The stand-in's counters (`dwcp_sim_stats`).
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub launches: u64,
    pub copies: u64,
    pub device_allocs: u64,
    pub unpinned_copies: u64,
    pub kernel_streams: u64,
    pub deepest_queue: u64,
}

type InjectFn = unsafe extern "C" fn(i32, u32, u32);
type StatsFn = unsafe extern "C" fn(*mut u64);
type LaunchesOfFn = unsafe extern "C" fn(*const std::ffi::c_char) -> u64;
type OrderFn = unsafe extern "C" fn(u64);

/// The loaded stand-in.
pub struct Sim {
    inject: InjectFn,
    stats: StatsFn,
    launches_of: LaunchesOfFn,
    order: OrderFn,
    serial: Mutex<()>,
}

/// Set (by the race-check test, in the child it runs) to build the stand-in with the race
/// check ([`dwcp_kernels::sim::Build::RaceCheck`]).
pub const RACE_CHECK: &str = "DWCP_SIM_RACE_CHECK";

/// Builds and loads the stand-in once per test binary.
pub fn sim() -> &'static Sim {
    static SIM: OnceLock<Sim> = OnceLock::new();
    SIM.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dwcp-sim-cuda-{}", std::process::id()));
        let how = if std::env::var_os(RACE_CHECK).is_some() {
            dwcp_kernels::sim::Build::RaceCheck
        } else {
            dwcp_kernels::sim::Build::Plain
        };
        let lib = dwcp_kernels::sim::build_as(&dir, how).unwrap_or_else(|e| panic!("{e}"));
        dwcp_kernels::cuda::use_driver(&lib).expect("load the stand-in");
        // SAFETY: the library was just built from sim_driver.cpp, whose controls have
        // exactly these C signatures; the handle is leaked so the pointers stay valid.
        unsafe {
            let handle = libloading::os::unix::Library::open(
                Some(&lib),
                libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
            )
            .expect("reopen the stand-in");
            let inject = *handle
                .get::<InjectFn>(b"dwcp_sim_inject\0")
                .expect("dwcp_sim_inject");
            let stats = *handle
                .get::<StatsFn>(b"dwcp_sim_stats\0")
                .expect("dwcp_sim_stats");
            let launches_of = *handle
                .get::<LaunchesOfFn>(b"dwcp_sim_launches_of\0")
                .expect("dwcp_sim_launches_of");
            let order = *handle
                .get::<OrderFn>(b"dwcp_sim_order\0")
                .expect("dwcp_sim_order");
            std::mem::forget(handle);
            Sim {
                inject,
                stats,
                launches_of,
                order,
                serial: Mutex::new(()),
            }
        }
    })
}

impl Sim {
    /// Holds every other test of this binary off (injected faults and counters are global).
    pub fn serial(&self) -> MutexGuard<'_, ()> {
        self.serial.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Injects `fault` into the `at`-th launch from now (`ms`: how long a hang lasts).
    pub fn inject(&self, fault: Fault, at: u32, ms: u32) {
        // SAFETY: a plain C function of the stand-in taking integers.
        unsafe { (self.inject)(fault as i32, at, ms) }
    }
    /// The counters now.
    pub fn stats(&self) -> Stats {
        let mut v = [0u64; 6];
        // SAFETY: the stand-in writes exactly six u64s.
        unsafe { (self.stats)(v.as_mut_ptr()) };
        Stats {
            launches: v[0],
            copies: v[1],
            device_allocs: v[2],
            unpinned_copies: v[3],
            kernel_streams: v[4],
            deepest_queue: v[5],
        }
    }
    /// Runs every block's threads in `order` from now on (the default is [`Order::Forward`];
    /// a test that changes it holds [`Sim::serial`] and sets it back).
    pub fn set_order(&self, order: Order) {
        // SAFETY: a plain C function of the stand-in taking an integer.
        unsafe { (self.order)(order.code()) }
    }
    /// Launches of the kernel `name` so far.
    pub fn launches_of(&self, name: &str) -> u64 {
        let name = std::ffi::CString::new(name).expect("a kernel name");
        // SAFETY: a plain C function of the stand-in reading a NUL-terminated string, which
        // outlives the call.
        unsafe { (self.launches_of)(name.as_ptr()) }
    }
}

/// A CUDA engine on the stand-in.
pub fn engine(cap: Capacity) -> CudaEngine {
    sim();
    let e = CudaEngine::new(0, cap).unwrap_or_else(|e| {
        panic!("the CUDA engine does not start on the stand-in: {e} (NVRTC: scripts/setup.sh)")
    });
    assert_eq!(e.info().name, dwcp_kernels::sim::DEVICE_NAME);
    e
}
