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
//   - each block's shared memory starts as bytes it did not write, and the threads between
//     two barriers can run backwards or in random orders (DWCP_SIM_ORDER, dwcp_sim_order), so
//     a kernel reading what another thread writes without a barrier between gets other bytes;
//   - the PTX a module is loaded from must come from NVRTC and hold the kernel asked for.
// What it cannot show: timing, register or shared-memory limits, and the driver's PTX JIT. A
// vote or shuffle waits for every lane here, so it orders memory too, which it does not on a
// GPU: built with the race check (simt.h) it does not, and ThreadSanitizer reports a
// __syncwarp missing beside one. `dwcp_sim_*` below let a test inject failures and read counters;
// DWCP_SIM_INJECT does the same for a whole process (see inject_from_env), and
// DWCP_SIM_ORDER changes the order the threads of a block run in (see order_from_env).
//
// Its SIMT emulator and the kernels it runs are in simt.h.
//
// Build: c++ -O2 -std=c++17 -shared -fPIC -Wl,-soname,libcuda.so -o libcuda.so sim_driver.cpp
// With the race check (simt.h): add -fsanitize=thread -DDWCP_SIMT_TSAN, and load the process
// with ThreadSanitizer's runtime (LD_PRELOAD=$(c++ -print-file-name=libtsan.so)).

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

#include "simt.h"

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

// The order the SIMT emulator runs each block's threads in between barriers (simt::order):
// 0 by thread index (the default), 1 backwards, anything else the seed of random orders.
void dwcp_sim_order(u64 order) {
    std::lock_guard<std::mutex> g(sim::lock);
    simt::set_order(order);
}

// DWCP_SIM_ORDER=forward|reverse|random[:SEED], for a whole process under test.
static void order_from_env() {
    const char* v = getenv("DWCP_SIM_ORDER");
    if (!v) return;
    unsigned long long seed = 0x9e3779b97f4a7c15ull;
    if (!strcmp(v, "forward")) {
        simt::set_order(0);
    } else if (!strcmp(v, "reverse")) {
        simt::set_order(1);
    } else if (!strcmp(v, "random") || sscanf(v, "random:%llu", &seed) == 1) {
        simt::set_order(seed > 1 ? seed : seed + 2);
    } else {
        fprintf(stderr, "dwcp-sim-cuda: DWCP_SIM_ORDER=%s: want forward|reverse|random[:SEED]\n", v);
        return;
    }
    fprintf(stderr, "dwcp-sim-cuda: threads run in %s order\n", v);
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
#ifdef DWCP_SIMT_TSAN
        fprintf(stderr, "dwcp-sim-cuda: race check on: ThreadSanitizer sees only the barriers' ordering\n");
#endif
        inject_from_env();
        order_from_env();
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
        case 33: *v = 0x41; break; // PCI bus: 0000:41:00.0, where the NVML stand-in
        case 34: *v = 0; break;    // (sim_nvml.cpp) has this device as its second
        case 50: *v = 0; break;    // PCI domain
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
