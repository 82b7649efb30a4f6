// A CPU stand-in for the CUDA driver library (`libcuda.so`), for tests on machines with no GPU:
// it implements the driver calls the CUDA engine makes and runs the real kernels of gcm.cu and
// lz4.cu, compiled for the host, under a small SIMT emulator (every CUDA thread a fiber, warp
// shuffles, votes and barriers by cooperative switching). kernels/tests/cuda_sim.rs drives it.
//
// It is strict where a GPU is unforgiving, so that host-side mistakes show here and not first
// on an H100:
//   - stream work runs lazily, only when the host waits (cuStreamSynchronize / cuStreamQuery /
//     events), so a host that reads results before waiting, or rewrites staging memory that a
//     queued copy still has to read, gets wrong bytes;
//   - copies and kernel pointer arguments must lie inside memory from cuMemAlloc, and every
//     device allocation ends at a guard page, so a kernel running past a buffer faults (and a
//     SIGSEGV handler says so before the process dies); work
//     goes on streams the engine created (not the legacy default stream);
//   - a barrier or shuffle that not every thread of its warp or block reaches is a deadlock,
//     reported as a launch failure;
//   - the PTX a module is loaded from must come from NVRTC and hold the kernel asked for.
// What it cannot show: timing, the GPU memory model, register or shared-memory limits, and
// the driver's PTX JIT. `dwcp_sim_*` below let a test inject failures and read counters;
// DWCP_SIM_INJECT does the same for a whole process (see inject_from_env).
//
// Build: c++ -O2 -std=c++17 -shared -fPIC -Wl,-soname,libcuda.so -o libcuda.so sim_driver.cpp

#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

// ---- The CUDA built-ins the kernels use ------------------------------------------------------

struct SimDim3 {
    unsigned x, y, z;
};
static SimDim3 threadIdx, blockIdx, blockDim, gridDim;

#define __device__
#define __forceinline__ inline
#define __global__
#define __shared__ static

// Barriers, shuffles and votes take the place in the kernel source they are called from (an
// object unique to each expansion of SIM_SITE): threads of one warp or block must wait at the
// same one. Not the return address, which differs where the compiler duplicates a call into
// both arms of a branch the lanes of a warp take apart.
#define SIM_SITE ([]() -> const void* { static const char site = 0; return &site; }())
static void sim_syncthreads(const void* site);
static void sim_syncwarp(const void* site, unsigned mask = 0xffffffffu);
template <class T>
static T sim_shfl_xor_sync(const void* site, unsigned mask, T v, int lane_mask);
template <class T>
static T sim_shfl_sync(const void* site, unsigned mask, T v, int src_lane);
static unsigned sim_ballot_sync(const void* site, unsigned mask, int pred);
static unsigned sim_match_any_sync(const void* site, unsigned mask, unsigned v);
#define __syncthreads() sim_syncthreads(SIM_SITE)
#define __syncwarp() sim_syncwarp(SIM_SITE)
#define __shfl_xor_sync(mask, v, lane_mask) sim_shfl_xor_sync(SIM_SITE, mask, v, lane_mask)
#define __shfl_sync(mask, v, src_lane) sim_shfl_sync(SIM_SITE, mask, v, src_lane)
#define __ballot_sync(mask, pred) sim_ballot_sync(SIM_SITE, mask, pred)
#define __match_any_sync(mask, v) sim_match_any_sync(SIM_SITE, mask, v)
static int __ffs(int x) { return __builtin_ffs(x); }
static int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }

#include "common.cuh"
#include "gcm.cu"
#include "lz4.cu"

// ---- SIMT: one block at a time, each thread a fiber -------------------------------------------

namespace simt {

// A fiber's saved registers. On x86-64 a switch is a few instructions (dwcp_sim_switch below);
// swapcontext also saves and restores the signal mask, a system call each time, which made
// fiber switches most of the simulator's time in kernels with a vote every few instructions.
#if defined(__x86_64__)
#define SIM_FAST_SWITCH 1
struct Ctx {
    void* sp;
};
#else
struct Ctx {
    ucontext_t uc;
};
#endif

constexpr size_t STACK = 64 * 1024;
enum State { READY, WAITING, DONE };
struct Fiber {
    Ctx ctx;
    State state;
    unsigned tid;
    int group;  // -1: the block barrier; w: warp w
    u64 gen;
    const void* site;  // where in the kernel it waits
    unsigned bank;     // its shuffles and votes so far (the low bit: which slot bank is next)
};
struct Group {
    unsigned live;
    unsigned arrived;
    u64 gen;
};

static std::vector<Fiber> fibers;
static std::vector<char*> stacks;
static Ctx scheduler;
static unsigned current;
static Group block_group;
static std::vector<Group> warps;
// Two banks of 32 per warp, for shuffles and votes, used in turn: a lane can write one bank
// while a slower lane still reads the other from the exchange before, and never the bank that
// lane reads, as the exchange in between is a barrier. So each exchange is one barrier. Beside
// each slot, the number of the exchange that wrote it (a lane's count of its exchanges): a vote
// counts the lanes that took part in it, not those that have ended since, or had before.
static std::vector<u64> slots, stamps;
static void (*body)(const u64*);
static u64 body_args[9];
static bool bad_mask;  // a partial mask, or threads of one group waiting at different places

#if SIM_FAST_SWITCH
// Saves the callee-saved registers on the running stack and its stack pointer in *save, then
// takes up the stack at `load` and returns to where it was saved.
extern "C" void dwcp_sim_switch(void** save, void* load);
asm(R"(
    .text
    .globl dwcp_sim_switch
    .hidden dwcp_sim_switch
    .type dwcp_sim_switch, @function
dwcp_sim_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size dwcp_sim_switch, .-dwcp_sim_switch
)");
static void swap(Ctx& from, Ctx& to) { dwcp_sim_switch(&from.sp, to.sp); }
// A context that runs `fn` (which must never return) on `stack` when first switched to: its
// start address and six zeroed registers, with the stack aligned as at a call.
static void start(Ctx& c, char* stack, size_t size, void (*fn)()) {
    void** sp = (void**)(((uintptr_t)(stack + size)) & ~(uintptr_t)15);
    *--sp = nullptr;  // fn's return address: it never returns
    *--sp = (void*)fn;
    for (int i = 0; i < 6; i++) *--sp = nullptr;
    c.sp = sp;
}
#else
static void swap(Ctx& from, Ctx& to) { swapcontext(&from.uc, &to.uc); }
static void start(Ctx& c, char* stack, size_t size, void (*fn)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, fn, 0);
}
#endif

static Group& group(int g) { return g < 0 ? block_group : warps[(size_t)g]; }

static void release_if_complete(int g) {
    Group& gr = group(g);
    if (gr.arrived == 0 || gr.arrived < gr.live) return;
    const void* site = nullptr;
    for (auto& f : fibers) {
        if (f.state == WAITING && f.group == g && f.gen == gr.gen) {
            if (site && f.site != site) bad_mask = true;
            site = f.site;
            f.state = READY;
        }
    }
    gr.arrived = 0;
    gr.gen++;
}

static void arrive(int g, const void* site) {
    Fiber& f = fibers[current];
    Group& gr = group(g);
    f.state = WAITING;
    f.group = g;
    f.gen = gr.gen;
    f.site = site;
    gr.arrived++;
    release_if_complete(g);
    swap(f.ctx, scheduler);
}

static void entry() {
    body(body_args);
    Fiber& f = fibers[current];
    f.state = DONE;
    int w = (int)(f.tid / 32);
    warps[(size_t)w].live--;
    block_group.live--;
    release_if_complete(w);
    release_if_complete(-1);
    swap(f.ctx, scheduler);  // never resumed
}

// Runs one block of `n` threads to the end; false on a deadlock (a barrier or shuffle that
// not every live thread of its group reached) or a shuffle with a partial mask.
static bool run_block(unsigned n) {
    while (stacks.size() < n) stacks.push_back(new char[STACK]);
    fibers.assign(n, Fiber{});
    unsigned nw = (n + 31) / 32;
    warps.assign(nw, Group{});
    slots.assign(nw * 64, 0);
    stamps.assign(nw * 64, 0);
    block_group = Group{n, 0, 0};
    for (unsigned i = 0; i < n; i++) {
        Fiber& f = fibers[i];
        warps[i / 32].live++;
        f.state = READY;
        f.tid = i;
        start(f.ctx, stacks[i], STACK, entry);
    }
    bad_mask = false;
    for (;;) {
        bool ran = false, all_done = true;
        for (unsigned i = 0; i < n; i++) {
            while (fibers[i].state == READY) {
                current = i;
                threadIdx = SimDim3{fibers[i].tid, 0, 0};
                swap(scheduler, fibers[i].ctx);
                ran = true;
                if (bad_mask) return false;
            }
            if (fibers[i].state != DONE) all_done = false;
        }
        if (all_done) return true;
        if (!ran) return false;
    }
}

template <class T>
static T exchange(unsigned mask, T v, unsigned from_lane_of(unsigned lane, int arg), int arg,
                  const void* site) {
    if (mask != 0xffffffffu) {
        bad_mask = true;
        swap(fibers[current].ctx, scheduler);
    }
    unsigned lane = threadIdx.x & 31, w = threadIdx.x / 32;
    u64* bank = &slots[w * 64 + 32 * (fibers[current].bank++ & 1)];
    bank[lane] = (u64)v;
    arrive((int)w, site);
    return (T)bank[from_lane_of(lane, arg) & 31];
}

}  // namespace simt

// Every lane's `v`, and the mask of the warp's lanes for which `pick(theirs, ours)` holds.
namespace simt {
static unsigned vote(unsigned mask, u64 v, bool pick(u64, u64), const void* site) {
    if (mask != 0xffffffffu) {
        bad_mask = true;
        swap(fibers[current].ctx, scheduler);
    }
    unsigned lane = threadIdx.x & 31, w = threadIdx.x / 32;
    unsigned at = w * 64 + 32 * (fibers[current].bank++ & 1);
    u64 *bank = &slots[at], *stamp = &stamps[at], mine = fibers[current].bank;
    bank[lane] = v;
    stamp[lane] = mine;
    arrive((int)w, site);
    unsigned r = 0;
    for (unsigned i = 0; i < 32; i++) {
        if (stamp[i] == mine && pick(bank[i], v)) r |= 1u << i;
    }
    return r;
}
static bool is_set(u64 theirs, u64) { return theirs != 0; }
static bool equal(u64 theirs, u64 ours) { return theirs == ours; }
}  // namespace simt

static void sim_syncthreads(const void* site) { simt::arrive(-1, site); }
static void sim_syncwarp(const void* site, unsigned mask) {
    if (mask != 0xffffffffu) {
        simt::bad_mask = true;
        simt::swap(simt::fibers[simt::current].ctx, simt::scheduler);
    }
    simt::arrive((int)(threadIdx.x / 32), site);
}
static unsigned xor_lane(unsigned lane, int m) { return lane ^ (unsigned)m; }
static unsigned src_lane(unsigned, int s) { return (unsigned)s; }
template <class T>
static T sim_shfl_xor_sync(const void* site, unsigned mask, T v, int lane_mask) {
    return simt::exchange(mask, v, xor_lane, lane_mask, site);
}
template <class T>
static T sim_shfl_sync(const void* site, unsigned mask, T v, int src) {
    return simt::exchange(mask, v, src_lane, src, site);
}
static unsigned sim_ballot_sync(const void* site, unsigned mask, int pred) {
    return simt::vote(mask, pred != 0, simt::is_set, site);
}
static unsigned sim_match_any_sync(const void* site, unsigned mask, unsigned v) {
    return simt::vote(mask, v, simt::equal, site);
}

// ---- The kernels the modules may hold ------------------------------------------------------

struct Kernel {
    const char* name;
    unsigned nparams;
    unsigned sizes[9];
    void (*run)(const u64*);
};

#define P(i, T) ((T)a[i])
static const Kernel KERNELS[] = {
    {"gcm_key_setup", 3, {8, 8, 4},
     [](const u64* a) { gcm_key_setup(P(0, const u8*), P(1, GcmKey*), P(2, u32)); }},
    {"gcm_seal", 9, {8, 8, 8, 8, 8, 8, 8, 8, 4},
     [](const u64* a) {
         gcm_seal(P(0, u8*), P(1, const u32*), P(2, const u32*), P(3, const u32*),
                  P(4, const u32*), P(5, const u8*), P(6, const GcmKey*), P(7, u8*), P(8, u32));
     }},
    {"gcm_open", 9, {8, 8, 8, 8, 8, 8, 8, 8, 4},
     [](const u64* a) {
         gcm_open(P(0, u8*), P(1, const u32*), P(2, const u32*), P(3, const u32*),
                  P(4, const u32*), P(5, const u8*), P(6, const GcmKey*), P(7, u8*), P(8, u32));
     }},
    {"lz4_compress", 8, {8, 8, 8, 8, 8, 8, 8, 4},
     [](const u64* a) {
         lz4_compress(P(0, const u8*), P(1, const u32*), P(2, const u32*), P(3, u8*),
                      P(4, const u32*), P(5, const u32*), P(6, u32*), P(7, u32));
     }},
    {"lz4_decompress", 8, {8, 8, 8, 8, 8, 8, 8, 4},
     [](const u64* a) {
         lz4_decompress(P(0, const u8*), P(1, const u32*), P(2, const u32*), P(3, u8*),
                        P(4, const u32*), P(5, const u32*), P(6, u32*), P(7, u32));
     }},
    {"lz4_decompress_warp", 8, {8, 8, 8, 8, 8, 8, 8, 4},
     [](const u64* a) {
         lz4_decompress_warp(P(0, const u8*), P(1, const u32*), P(2, const u32*), P(3, u8*),
                             P(4, const u32*), P(5, const u32*), P(6, u32*), P(7, u32));
     }},
};
#undef P

// ---- The driver API ----------------------------------------------------------------------------

extern "C" {

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef void* CUcontext;
typedef void* CUstream;
typedef void* CUevent;
typedef void* CUmodule;
typedef void* CUfunction;

enum : int {
    SUCCESS = 0,
    INVALID_VALUE = 1,
    OUT_OF_MEMORY = 2,
    NOT_INITIALIZED = 3,
    NO_DEVICE = 100,
    INVALID_DEVICE = 101,
    INVALID_IMAGE = 200,
    INVALID_CONTEXT = 201,
    INVALID_HANDLE = 400,
    NOT_FOUND = 500,
    NOT_READY = 600,
    ILLEGAL_ADDRESS = 700,
    LAUNCH_OUT_OF_RESOURCES = 701,
    LAUNCH_FAILED = 719,
};

}  // extern "C"

namespace sim {

using Clock = std::chrono::steady_clock;

struct Event {
    Clock::time_point at;
    bool recorded = false;
    void* stream = nullptr;
};

struct Op {
    enum Kind { HTOD, DTOH, LAUNCH, RECORD } kind;
    void* host = nullptr;
    CUdeviceptr dev = 0;
    size_t n = 0;
    const Kernel* k = nullptr;
    unsigned grid = 0, block = 0;
    u64 args[9] = {};
    Event* ev = nullptr;
    int inject = 0;  // for LAUNCH: 2 = fail when run, 3 = hang
};

struct Stream {
    std::deque<Op> q;
    int error = SUCCESS;
    Clock::time_point busy_until{};
    bool used_for_kernels = false;
};

struct Module {
    std::set<std::string> entries;
};

static std::mutex lock;
static std::set<Stream*> streams;
static bool initialised = false;
static int ctx_token;
static thread_local void* current_ctx = nullptr;
static std::map<CUdeviceptr, size_t> device;  // start -> size
static std::map<CUdeviceptr, std::pair<void*, size_t>> mappings;  // start -> (mmap base, len)
static std::map<uintptr_t, size_t> pinned;
static size_t device_bytes = 0;
static const size_t DEVICE_MEMORY = 1ull << 30;

// Counters (dwcp_sim_stats) and the failure to inject (dwcp_sim_inject).
static u64 launches = 0, copies = 0, device_allocs = 0, unpinned_copies = 0, deepest_queue = 0;
// Launches per kernel, by place in KERNELS (dwcp_sim_launches_of).
static u64 kernel_launches[sizeof(KERNELS) / sizeof(KERNELS[0])] = {};
static int inject_kind = 0;
static u64 inject_at = 0;
// Set by a kind-4 injection: from then on every device-to-host copy comes back with one bit
// wrong (a GPU that computes wrong answers without reporting an error).
static bool corrupting = false;
static unsigned inject_ms = 0;

static void complain(const char* what) { fprintf(stderr, "dwcp-sim-cuda: %s\n", what); }

// Guard pages, one behind each device allocation: [start, start + page). Read by the SIGSEGV
// handler, so a fixed table of plain words.
static const size_t MAX_GUARDS = 4096;
static volatile uintptr_t guards[MAX_GUARDS];
static size_t guard_page_size = 4096;

// Says when a fault hit a guard page (a kernel ran past a device allocation), then lets the
// fault take its course.
static void on_segv(int sig, siginfo_t* info, void*) {
    auto a = (uintptr_t)info->si_addr;
    for (size_t i = 0; i < MAX_GUARDS; i++) {
        uintptr_t g = guards[i];
        if (g != 0 && a >= g && a < g + guard_page_size) {
            static const char msg[] =
                "dwcp-sim-cuda: a kernel ran past the end of a device allocation\n";
            ssize_t ignored = write(2, msg, sizeof msg - 1);
            (void)ignored;
            break;
        }
    }
    signal(sig, SIG_DFL);
}

static void watch_guard_pages() {
    guard_page_size = (size_t)sysconf(_SC_PAGESIZE);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, nullptr);
}

static bool in_device(CUdeviceptr p, size_t n) {
    auto it = device.upper_bound(p);
    if (it == device.begin()) return false;
    --it;
    return p >= it->first && p + n <= it->first + it->second;
}

static bool in_pinned(const void* h, size_t n) {
    auto p = (uintptr_t)h;
    auto it = pinned.upper_bound(p);
    if (it == pinned.begin()) return false;
    --it;
    return p >= it->first && p + n <= it->first + it->second;
}

static bool run_kernel(const Op& op) {
    simt::body = op.k->run;
    memcpy(simt::body_args, op.args, sizeof op.args);
    blockDim = SimDim3{op.block, 1, 1};
    gridDim = SimDim3{op.grid, 1, 1};
    for (unsigned b = 0; b < op.grid; b++) {
        blockIdx = SimDim3{b, 0, 0};
        if (!simt::run_block(op.block)) {
            fprintf(stderr,
                    "dwcp-sim-cuda: %s block %u: a barrier or shuffle not reached by every "
                    "thread of its group at the same place, or a partial mask\n",
                    op.k->name, b);
            return false;
        }
    }
    return true;
}

// Runs the stream's queued work until it is empty or a hung launch holds it; returns what a
// query would: SUCCESS, NOT_READY, or the error a failed launch left.
static int advance(Stream* s) {
    for (;;) {
        if (s->error != SUCCESS) {
            int e = s->error;
            s->error = SUCCESS;
            return e;
        }
        if (Clock::now() < s->busy_until) return NOT_READY;
        if (s->q.empty()) return SUCCESS;
        Op op = s->q.front();
        s->q.pop_front();
        switch (op.kind) {
            case Op::HTOD:
                memcpy((void*)op.dev, op.host, op.n);
                break;
            case Op::DTOH:
                memcpy(op.host, (const void*)op.dev, op.n);
                if (corrupting && op.n > 0) ((unsigned char*)op.host)[op.n / 2] ^= 1;
                break;
            case Op::RECORD:
                op.ev->at = Clock::now();
                op.ev->recorded = true;
                break;
            case Op::LAUNCH:
                if (op.inject == 2 || !run_kernel(op)) {
                    // Like a fault on the device: the launch's effects are undefined and
                    // nothing queued after it runs.
                    s->q.clear();
                    s->error = op.inject == 2 ? ILLEGAL_ADDRESS : LAUNCH_FAILED;
                } else if (op.inject == 3) {
                    s->busy_until = Clock::now() + std::chrono::milliseconds(inject_ms);
                }
                break;
        }
    }
}

static void enqueue(Stream* s, const Op& op) {
    s->q.push_back(op);
    if (s->q.size() > deepest_queue) deepest_queue = s->q.size();
}

}  // namespace sim

using namespace sim;

extern "C" {

// Test controls. Injects a failure into the `at`-th launch from now (1 = the next): kind 1 =
// cuLaunchKernel refuses it, 2 = it fails on the device (the stream reports
// CUDA_ERROR_ILLEGAL_ADDRESS), 3 = it runs `ms` milliseconds (the stream is busy), 4 = from it
// on, every copy back to the host has one bit flipped, silently. Kind 0 clears, corruption too.
void dwcp_sim_inject(int kind, unsigned at, unsigned ms) {
    std::lock_guard<std::mutex> g(sim::lock);
    if (kind == 0) corrupting = false;
    inject_kind = kind;
    inject_at = launches + at;
    inject_ms = ms;
}

// Counters: launches, copies, device allocations, copies touching host memory that did not
// come from cuMemHostAlloc, live streams that have run kernels, the deepest any stream's queue got.
void dwcp_sim_stats(u64 out[6]) {
    std::lock_guard<std::mutex> g(sim::lock);
    out[0] = launches;
    out[1] = copies;
    out[2] = device_allocs;
    out[3] = unpinned_copies;
    out[4] = 0;
    for (Stream* st : streams) out[4] += st->used_for_kernels ? 1 : 0;
    out[5] = deepest_queue;
}

// Launches of the kernel called `name` so far (0 for a name no module may hold).
u64 dwcp_sim_launches_of(const char* name) {
    std::lock_guard<std::mutex> g(sim::lock);
    for (size_t i = 0; i < sizeof(KERNELS) / sizeof(KERNELS[0]); i++) {
        if (strcmp(KERNELS[i].name, name) == 0) return kernel_launches[i];
    }
    return 0;
}

// Reads an injection from the environment, for a whole process under test:
// DWCP_SIM_INJECT=refuse|fault|hang|corrupt:AT[:MS] (as dwcp_sim_inject, counted from start-up).
static void inject_from_env() {
    const char* v = getenv("DWCP_SIM_INJECT");
    if (!v) return;
    char kind[16] = {0};
    unsigned at = 0, ms = 0;
    if (sscanf(v, "%15[a-z]:%u:%u", kind, &at, &ms) < 2) {
        fprintf(stderr, "dwcp-sim-cuda: DWCP_SIM_INJECT=%s: want refuse|fault|hang|corrupt:AT[:MS]\n", v);
        return;
    }
    int k = !strcmp(kind, "refuse") ? 1 : !strcmp(kind, "fault") ? 2 : !strcmp(kind, "hang") ? 3
            : !strcmp(kind, "corrupt") ? 4 : 0;
    if (k == 0) {
        fprintf(stderr, "dwcp-sim-cuda: DWCP_SIM_INJECT: unknown kind %s\n", kind);
        return;
    }
    inject_kind = k;
    inject_at = launches + at;
    inject_ms = ms;
    fprintf(stderr, "dwcp-sim-cuda: will %s launch %u\n", kind, at);
}

CUresult cuInit(unsigned flags) {
    if (flags != 0) return INVALID_VALUE;
    std::lock_guard<std::mutex> g(sim::lock);
    if (!initialised) {
        inject_from_env();
        watch_guard_pages();
    }
    initialised = true;
    return SUCCESS;
}

CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return SUCCESS;
}

CUresult cuDeviceGetCount(int* n) {
    if (!initialised) return NOT_INITIALIZED;
    *n = 1;
    return SUCCESS;
}

CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (!initialised) return NOT_INITIALIZED;
    if (ordinal != 0) return INVALID_DEVICE;
    *d = 0;
    return SUCCESS;
}

CUresult cuDeviceGetName(char* name, int len, CUdevice d) {
    if (d != 0 || len <= 0) return INVALID_VALUE;
    snprintf(name, (size_t)len, "DWCP simulated GPU (host CPU, libcuda stand-in)");
    return SUCCESS;
}

CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) {
    *bytes = DEVICE_MEMORY;
    return SUCCESS;
}

CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice d) {
    if (d != 0) return INVALID_DEVICE;
    switch (attr) {
        case 16: *v = 4; break;    // multiprocessors: few, so grid-stride loops go round
        case 75: *v = 9; break;    // compute capability 9.0
        case 76: *v = 0; break;
        case 1: *v = 1024; break;  // max threads per block
        case 10: *v = 32; break;   // warp size
        default: *v = 0; break;
    }
    return SUCCESS;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) {
    if (!initialised) return NOT_INITIALIZED;
    if (d != 0) return INVALID_DEVICE;
    *c = &ctx_token;
    return SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return SUCCESS; }

CUresult cuCtxSetCurrent(CUcontext c) {
    if (c != nullptr && c != &ctx_token) return INVALID_CONTEXT;
    current_ctx = c;
    return SUCCESS;
}

CUresult cuCtxGetCurrent(CUcontext* c) {
    *c = current_ctx;
    return SUCCESS;
}

CUresult cuCtxGetDevice(CUdevice* d) {
    if (!current_ctx) return INVALID_CONTEXT;
    *d = 0;
    return SUCCESS;
}

CUresult cuStreamSynchronize(CUstream s);

CUresult cuCtxSynchronize() {
    std::vector<Stream*> all;
    {
        std::lock_guard<std::mutex> g(sim::lock);
        all.assign(streams.begin(), streams.end());
    }
    CUresult r = SUCCESS;
    for (Stream* s : all) {
        CUresult e = cuStreamSynchronize(s);
        if (r == SUCCESS) r = e;
    }
    return r;
}

CUresult cuStreamCreate(CUstream* s, unsigned) {
    if (!current_ctx) return INVALID_CONTEXT;
    std::lock_guard<std::mutex> g(sim::lock);
    auto* st = new Stream();
    streams.insert(st);
    *s = st;
    return SUCCESS;
}

CUresult cuStreamDestroy_v2(CUstream s) {
    std::lock_guard<std::mutex> g(sim::lock);
    streams.erase((Stream*)s);
    delete (Stream*)s;
    return SUCCESS;
}

CUresult cuStreamQuery(CUstream s) {
    if (!current_ctx) return INVALID_CONTEXT;
    std::lock_guard<std::mutex> g(sim::lock);
    if (!streams.count((Stream*)s)) return INVALID_HANDLE;
    return advance((Stream*)s);
}

CUresult cuStreamSynchronize(CUstream s) {
    if (!current_ctx) return INVALID_CONTEXT;
    for (;;) {
        Clock::time_point until;
        {
            std::lock_guard<std::mutex> g(sim::lock);
            if (!streams.count((Stream*)s)) return INVALID_HANDLE;
            int r = advance((Stream*)s);
            if (r != NOT_READY) return r;
            until = ((Stream*)s)->busy_until;
        }
        std::this_thread::sleep_until(until);
    }
}

CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    if (!current_ctx) return INVALID_CONTEXT;
    if (bytes == 0) return INVALID_VALUE;
    std::lock_guard<std::mutex> g(sim::lock);
    if (device_bytes + bytes > DEVICE_MEMORY) return OUT_OF_MEMORY;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t body = (bytes + page - 1) / page * page;
    void* base = mmap(nullptr, body + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                      -1, 0);
    if (base == MAP_FAILED) return OUT_OF_MEMORY;
    // A guard page right after the allocation (rounded up to 256 bytes, the alignment
    // cuMemAlloc gives): a kernel that runs past the end faults.
    mprotect((char*)base + body, page, PROT_NONE);
    for (size_t i = 0; i < MAX_GUARDS; i++) {
        if (guards[i] == 0) {
            guards[i] = (uintptr_t)base + body;
            break;
        }
    }
    size_t used = (bytes + 255) / 256 * 256;
    auto start = (CUdeviceptr)((char*)base + body - used);
    device[start] = bytes;
    mappings[start] = {base, body + page};
    device_bytes += bytes;
    device_allocs++;
    *p = start;
    return SUCCESS;
}

CUresult cuMemFree_v2(CUdeviceptr p) {
    std::lock_guard<std::mutex> g(sim::lock);
    auto it = device.find(p);
    if (it == device.end()) return INVALID_VALUE;
    device_bytes -= it->second;
    device.erase(it);
    auto m = mappings.find(p);
    uintptr_t guard = (uintptr_t)m->second.first + m->second.second - (size_t)sysconf(_SC_PAGESIZE);
    for (size_t i = 0; i < MAX_GUARDS; i++) {
        if (guards[i] == guard) guards[i] = 0;
    }
    munmap(m->second.first, m->second.second);
    mappings.erase(m);
    return SUCCESS;
}

CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    std::lock_guard<std::mutex> g(sim::lock);
    *free_bytes = DEVICE_MEMORY - device_bytes;
    *total = DEVICE_MEMORY;
    return SUCCESS;
}

CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned) {
    if (!current_ctx) return INVALID_CONTEXT;
    void* m = aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
    if (!m) return OUT_OF_MEMORY;
    std::lock_guard<std::mutex> g(sim::lock);
    pinned[(uintptr_t)m] = bytes;
    *p = m;
    return SUCCESS;
}

CUresult cuMemFreeHost(void* p) {
    std::lock_guard<std::mutex> g(sim::lock);
    if (pinned.erase((uintptr_t)p) == 0) return INVALID_VALUE;
    free(p);
    return SUCCESS;
}

static CUresult copy(Op::Kind kind, void* host, CUdeviceptr dev, size_t n, CUstream s) {
    if (!current_ctx) return INVALID_CONTEXT;
    std::lock_guard<std::mutex> g(sim::lock);
    if (!streams.count((Stream*)s)) {
        complain("copy on the default stream or an unknown one: the engine uses its own streams");
        return INVALID_HANDLE;
    }
    if (!in_device(dev, n)) {
        fprintf(stderr, "dwcp-sim-cuda: copy of %zu bytes at device %#llx: outside every device "
                "allocation\n", n, dev);
        return INVALID_VALUE;
    }
    if (!in_pinned(host, n)) unpinned_copies++;
    copies++;
    Op op;
    op.kind = kind;
    op.host = host;
    op.dev = dev;
    op.n = n;
    enqueue((Stream*)s, op);
    return SUCCESS;
}

CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream s) {
    return copy(Op::HTOD, const_cast<void*>(src), dst, n, s);
}

CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream s) {
    return copy(Op::DTOH, dst, src, n, s);
}

CUresult cuEventCreate(CUevent* e, unsigned) {
    *e = new Event();
    return SUCCESS;
}

CUresult cuEventDestroy_v2(CUevent e) {
    std::lock_guard<std::mutex> g(sim::lock);
    delete (Event*)e;
    return SUCCESS;
}

CUresult cuEventRecord(CUevent e, CUstream s) {
    std::lock_guard<std::mutex> g(sim::lock);
    if (!streams.count((Stream*)s)) return INVALID_HANDLE;
    auto* ev = (Event*)e;
    ev->recorded = false;
    ev->stream = s;
    Op op;
    op.kind = Op::RECORD;
    op.ev = ev;
    enqueue((Stream*)s, op);
    return SUCCESS;
}

CUresult cuEventSynchronize(CUevent e) {
    auto* ev = (Event*)e;
    if (!ev->stream) return SUCCESS;
    return cuStreamSynchronize(ev->stream);
}

CUresult cuEventQuery(CUevent e) {
    auto* ev = (Event*)e;
    if (!ev->stream) return SUCCESS;
    return cuStreamQuery(ev->stream);
}

CUresult cuEventElapsedTime(float* ms, CUevent a, CUevent b) {
    std::lock_guard<std::mutex> g(sim::lock);
    auto *x = (Event*)a, *y = (Event*)b;
    if (!x->recorded || !y->recorded) return NOT_READY;
    *ms = std::chrono::duration<float, std::milli>(y->at - x->at).count();
    return SUCCESS;
}

CUresult cuEventElapsedTime_v2(float* ms, CUevent a, CUevent b) {
    return cuEventElapsedTime(ms, a, b);
}

CUresult cuModuleLoadData(CUmodule* m, const void* image) {
    if (!current_ctx) return INVALID_CONTEXT;
    std::string ptx((const char*)image);
    if (ptx.find(".version") == std::string::npos ||
        ptx.find(".target sm_") == std::string::npos) {
        complain("cuModuleLoadData: not PTX from NVRTC");
        return INVALID_IMAGE;
    }
    auto* mod = new Module();
    for (size_t at = ptx.find(".entry "); at != std::string::npos;
         at = ptx.find(".entry ", at + 1)) {
        size_t start = at + 7, end = ptx.find_first_of("( \n", start);
        mod->entries.insert(ptx.substr(start, end - start));
    }
    *m = mod;
    return SUCCESS;
}

CUresult cuModuleUnload(CUmodule m) {
    delete (Module*)m;
    return SUCCESS;
}

CUresult cuModuleGetFunction(CUfunction* f, CUmodule m, const char* name) {
    auto* mod = (Module*)m;
    if (!mod->entries.count(name)) return NOT_FOUND;
    for (const auto& k : KERNELS) {
        if (!strcmp(k.name, name)) {
            *f = (void*)&k;
            return SUCCESS;
        }
    }
    fprintf(stderr, "dwcp-sim-cuda: kernel %s is in the PTX but this stand-in cannot run it\n",
            name);
    return NOT_FOUND;
}

CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                        unsigned by, unsigned bz, unsigned shared, CUstream s, void** params,
                        void** extra) {
    if (!current_ctx) return INVALID_CONTEXT;
    auto* k = (const Kernel*)f;
    if (gy != 1 || gz != 1 || by != 1 || bz != 1 || gx == 0 || bx == 0 || bx > 1024 ||
        shared != 0 || extra != nullptr || params == nullptr) {
        return INVALID_VALUE;
    }
    std::lock_guard<std::mutex> g(sim::lock);
    if (!streams.count((Stream*)s)) {
        complain("launch on the default stream or an unknown one: the engine uses its own streams");
        return INVALID_HANDLE;
    }
    Op op;
    op.kind = Op::LAUNCH;
    op.k = k;
    op.grid = gx;
    op.block = bx;
    // The driver copies the parameter values at launch.
    for (unsigned i = 0; i < k->nparams; i++) {
        u64 v = 0;
        memcpy(&v, params[i], k->sizes[i]);
        op.args[i] = v;
        if (k->sizes[i] == 8 && !in_device(v, 1)) {
            fprintf(stderr, "dwcp-sim-cuda: %s parameter %u (%#llx) is not device memory\n",
                    k->name, i, v);
            return INVALID_VALUE;
        }
    }
    launches++;
    kernel_launches[k - KERNELS]++;
    if (inject_kind != 0 && launches == inject_at) {
        int kind = inject_kind;
        inject_kind = 0;
        if (kind == 1) return LAUNCH_OUT_OF_RESOURCES;
        if (kind == 4) corrupting = true;
        else op.inject = kind;
    }
    ((Stream*)s)->used_for_kernels = true;
    enqueue((Stream*)s, op);
    return SUCCESS;
}

CUresult cuGetErrorString(CUresult e, const char** s) {
    switch (e) {
        case SUCCESS: *s = "no error"; break;
        case INVALID_VALUE: *s = "invalid argument"; break;
        case OUT_OF_MEMORY: *s = "out of memory"; break;
        case NOT_READY: *s = "device not ready"; break;
        case ILLEGAL_ADDRESS: *s = "an illegal memory access was encountered"; break;
        case LAUNCH_OUT_OF_RESOURCES: *s = "too many resources requested for launch"; break;
        case LAUNCH_FAILED: *s = "unspecified launch failure"; break;
        default: *s = "error in the simulated CUDA driver"; break;
    }
    return SUCCESS;
}

CUresult cuGetErrorName(CUresult e, const char** s) {
    switch (e) {
        case SUCCESS: *s = "CUDA_SUCCESS"; break;
        case INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
        case NOT_READY: *s = "CUDA_ERROR_NOT_READY"; break;
        case ILLEGAL_ADDRESS: *s = "CUDA_ERROR_ILLEGAL_ADDRESS"; break;
        case LAUNCH_OUT_OF_RESOURCES: *s = "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"; break;
        case LAUNCH_FAILED: *s = "CUDA_ERROR_LAUNCH_FAILED"; break;
        default: *s = "CUDA_ERROR_UNKNOWN"; break;
    }
    return SUCCESS;
}

}  // extern "C"
