// The SIMT emulator of the simulated CUDA driver (sim_driver.cpp), apart so that the fuzz
// shim (fuzz/shim/lz4_device.cpp) runs the same kernels under it: the CUDA built-ins the
// kernels use, the kernels of gcm.cu and lz4.cu compiled for the host, and `simt::run_block`,
// which runs one block with every CUDA thread a fiber, warp shuffles, votes and barriers by
// cooperative switching. A barrier or shuffle that not every thread of its warp or block
// reaches at the same place in the source is a deadlock, reported by run_block. Shared memory
// starts as bytes no thread wrote, and `order` picks the order threads run in between barriers.
#ifndef DWCP_SIMT_H
#define DWCP_SIMT_H

#include <ucontext.h>
#ifdef DWCP_SIMT_TSAN
#include <sanitizer/tsan_interface.h>
#endif

#include <cstdint>
#include <cstring>
#include <utility>

// ---- The CUDA built-ins the kernels use ------------------------------------------------------

struct SimDim3 {
    unsigned x, y, z;
};
static SimDim3 threadIdx, blockIdx, blockDim, gridDim;

#define __device__
#define __forceinline__ inline
#define __global__
// A block's shared memory starts with bytes it did not write, as on a GPU (where they are
// often an earlier block's): every __shared__ variable lies in one section, which run_block
// fills with 0xA5 before each block.
#define __shared__ static __attribute__((section("dwcp_simt_shared")))
extern "C" char __start_dwcp_simt_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_dwcp_simt_shared[] __attribute__((weak, visibility("hidden")));

// Barriers, shuffles and votes take the place in the kernel source they are called from (an
// object unique to each expansion of SIM_SITE): threads of one warp or block must wait at the
// same one. Not the return address, which differs where the compiler duplicates a call into
// both arms of a branch the lanes of a warp take apart.
#define SIM_SITE ([]() -> const void* { static const char site = 0; return &site; }())
// [[maybe_unused]]: a kernel edit that drops the last use of one is still built.
[[maybe_unused]] static void sim_syncthreads(const void* site);
[[maybe_unused]] static void sim_syncwarp(const void* site, unsigned mask = 0xffffffffu);
template <class T>
static T sim_shfl_xor_sync(const void* site, unsigned mask, T v, int lane_mask);
template <class T>
static T sim_shfl_sync(const void* site, unsigned mask, T v, int src_lane);
[[maybe_unused]] static unsigned sim_ballot_sync(const void* site, unsigned mask, int pred);
[[maybe_unused]] static unsigned sim_match_any_sync(const void* site, unsigned mask, unsigned v);
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

// The race check (built with -fsanitize=thread -DDWCP_SIMT_TSAN, see sim_driver.cpp): each CUDA
// thread is a ThreadSanitizer fiber, switched to without synchronising, and the only
// happens-before edges between threads are those CUDA gives: the launch before every thread,
// every thread before the launch's end, and __syncwarp / __syncthreads among the threads they
// wait for. Votes and shuffles exchange their values but order no memory, as on a GPU. So
// ThreadSanitizer reports any two threads' accesses to the same bytes, one a write, with no
// barrier between them: a race on a GPU, whatever order the emulator ran them in. The
// emulator's own code (SIMT_UNCHECKED) is not instrumented: its scheduling state is shared by
// design.
#ifdef DWCP_SIMT_TSAN
#define SIMT_UNCHECKED __attribute__((no_sanitize_thread))
#else
#define SIMT_UNCHECKED
#endif

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

#ifdef DWCP_SIMT_TSAN
constexpr size_t STACK = 256 * 1024;  // instrumented frames are larger
#else
constexpr size_t STACK = 64 * 1024;
#endif
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

// Plain arrays, sized for CUDA's largest block: the race check leaves the emulator's own code
// uninstrumented, and std::vector's accessors would be instrumented functions of their own.
constexpr unsigned MAX_THREADS = 1024, MAX_WARPS = MAX_THREADS / 32;
static Fiber fibers[MAX_THREADS];
static unsigned nfibers;
static char* stacks[MAX_THREADS];
static Ctx scheduler;
static unsigned current;
static Group block_group;
static Group warps[MAX_WARPS];
// Two banks of 32 per warp, for shuffles and votes, used in turn: a lane can write one bank
// while a slower lane still reads the other from the exchange before, and never the bank that
// lane reads, as the exchange in between is a barrier. So each exchange is one barrier. Beside
// each slot, the number of the exchange that wrote it (a lane's count of its exchanges): a vote
// counts the lanes that took part in it, not those that have ended since, or had before.
static u64 slots[MAX_WARPS * 64], stamps[MAX_WARPS * 64];
#ifdef DWCP_SIMT_TSAN
static void* tsan_fibers[MAX_THREADS];  // each thread's, kept from block to block
static void* tsan_scheduler;
static char launch_sync, end_sync;  // addresses standing for the launch's start and end
#endif
static void (*body)(const u64*);
static u64 body_args[9];
static bool bad_mask;  // a partial mask, or threads of one group waiting at different places
// The order run_block takes a block's ready threads in: 0 by thread index, each until it
// waits (the last to reach a barrier goes on at once); 1 the same backwards; anything else
// seeds a fresh random order every sweep, each thread running only to its next wait. A GPU
// promises no order between two barriers, so a kernel without races writes the same bytes in
// every order, and one where a thread reads or writes what another writes between the same
// two barriers shows it as bytes that depend on the order.
static u64 order;
static u64 order_state;  // the random orders' xorshift state
static unsigned sweep[MAX_THREADS];

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
SIMT_UNCHECKED static void swap(Ctx& from, Ctx& to) { dwcp_sim_switch(&from.sp, to.sp); }
// A context that runs `fn` (which must never return) on `stack` when first switched to: its
// start address and six zeroed registers, with the stack aligned as at a call.
SIMT_UNCHECKED static void start(Ctx& c, char* stack, size_t size, void (*fn)()) {
    void** sp = (void**)(((uintptr_t)(stack + size)) & ~(uintptr_t)15);
    *--sp = nullptr;  // fn's return address: it never returns
    *--sp = (void*)fn;
    for (int i = 0; i < 6; i++) *--sp = nullptr;
    c.sp = sp;
}
#else
SIMT_UNCHECKED static void swap(Ctx& from, Ctx& to) { swapcontext(&from.uc, &to.uc); }
SIMT_UNCHECKED static void start(Ctx& c, char* stack, size_t size, void (*fn)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, fn, 0);
}
#endif

SIMT_UNCHECKED static Group& group(int g) { return g < 0 ? block_group : warps[(size_t)g]; }

// The running thread gives the CPU back to run_block.
SIMT_UNCHECKED static void to_scheduler() {
#ifdef DWCP_SIMT_TSAN
    __tsan_switch_to_fiber(tsan_scheduler, __tsan_switch_to_fiber_no_sync);
#endif
    swap(fibers[current].ctx, scheduler);
}

// run_block runs thread i until it waits.
SIMT_UNCHECKED static void to_thread(unsigned i) {
    current = i;
    threadIdx = SimDim3{fibers[i].tid, 0, 0};
#ifdef DWCP_SIMT_TSAN
    __tsan_switch_to_fiber(tsan_fibers[i], __tsan_switch_to_fiber_no_sync);
#endif
    swap(scheduler, fibers[i].ctx);
}

SIMT_UNCHECKED static void release_if_complete(int g) {
    Group& gr = group(g);
    if (gr.arrived == 0 || gr.arrived < gr.live) return;
    const void* site = nullptr;
    for (unsigned i = 0; i < nfibers; i++) {
        Fiber& f = fibers[i];
        if (f.state == WAITING && f.group == g && f.gen == gr.gen) {
            if (site && f.site != site) bad_mask = true;
            site = f.site;
            f.state = READY;
        }
    }
    gr.arrived = 0;
    gr.gen++;
}

// The running thread waits at `site` for the other threads of group `g`; a barrier
// (`orders_memory`) also makes each one's writes before it seen by every one's reads after.
SIMT_UNCHECKED static void arrive(int g, const void* site, bool orders_memory) {
    Fiber& f = fibers[current];
    Group& gr = group(g);
    f.state = WAITING;
    f.group = g;
    f.gen = gr.gen;
    f.site = site;
    gr.arrived++;
#ifdef DWCP_SIMT_TSAN
    if (orders_memory) __tsan_release(&gr);
#endif
    release_if_complete(g);
    to_scheduler();
#ifdef DWCP_SIMT_TSAN
    if (orders_memory) __tsan_acquire(&group(g));
#else
    (void)orders_memory;
#endif
}

SIMT_UNCHECKED static void entry() {
#ifdef DWCP_SIMT_TSAN
    __tsan_acquire(&launch_sync);
#endif
    body(body_args);
#ifdef DWCP_SIMT_TSAN
    __tsan_release(&end_sync);
#endif
    Fiber& f = fibers[current];
    f.state = DONE;
    int w = (int)(f.tid / 32);
    warps[(size_t)w].live--;
    block_group.live--;
    release_if_complete(w);
    release_if_complete(-1);
    to_scheduler();  // never resumed
}

// The end of run_block: with the race check, what the threads wrote is seen from here on.
SIMT_UNCHECKED static bool finish(bool ok) {
#ifdef DWCP_SIMT_TSAN
    __tsan_acquire(&end_sync);
    if (!ok) {  // threads left mid-kernel: new fibers for the next block
        for (void*& f : tsan_fibers) {
            if (f) __tsan_destroy_fiber(f);
            f = nullptr;
        }
    }
#endif
    return ok;
}

// Runs one block of `n` threads to the end; false on a deadlock (a barrier or shuffle that
// not every live thread of its group reached) or a shuffle with a partial mask.
SIMT_UNCHECKED static bool run_block(unsigned n) {
    if (n == 0 || n > MAX_THREADS) return false;
    for (unsigned i = 0; i < n; i++) {
        if (!stacks[i]) stacks[i] = new char[STACK];
#ifdef DWCP_SIMT_TSAN
        if (!tsan_fibers[i]) tsan_fibers[i] = __tsan_create_fiber(0);
#endif
        fibers[i] = Fiber{};
    }
#ifdef DWCP_SIMT_TSAN
    tsan_scheduler = __tsan_get_current_fiber();
#endif
    nfibers = n;
    unsigned nw = (n + 31) / 32;
    for (unsigned w = 0; w < nw; w++) warps[w] = Group{};
    for (unsigned i = 0; i < nw * 64; i++) slots[i] = stamps[i] = 0;
    block_group = Group{n, 0, 0};
    for (unsigned i = 0; i < n; i++) {
        Fiber& f = fibers[i];
        warps[i / 32].live++;
        f.state = READY;
        f.tid = i;
        start(f.ctx, stacks[i], STACK, entry);
    }
    if (__start_dwcp_simt_shared) {
        memset(__start_dwcp_simt_shared, 0xA5,
               (size_t)(__stop_dwcp_simt_shared - __start_dwcp_simt_shared));
    }
#ifdef DWCP_SIMT_TSAN
    __tsan_release(&launch_sync);
#endif
    bad_mask = false;
    bool random = order > 1;
    if (random && order_state == 0) order_state = order;
    for (;;) {
        for (unsigned k = 0; k < n; k++) sweep[k] = order == 1 ? n - 1 - k : k;
        for (unsigned k = n; random && k > 1; k--) {
            order_state ^= order_state << 13;
            order_state ^= order_state >> 7;
            order_state ^= order_state << 17;
            std::swap(sweep[k - 1], sweep[order_state % k]);
        }
        bool ran = false, all_done = true;
        for (unsigned k = 0; k < n; k++) {
            unsigned i = sweep[k];
            while (fibers[i].state == READY) {
                to_thread(i);
                ran = true;
                if (bad_mask) return finish(false);
                if (random) break;
            }
            if (fibers[i].state != DONE) all_done = false;
        }
        if (all_done) return finish(true);
        if (!ran) return finish(false);
    }
}

// Sets the order (see `order`); a random order's sequence starts again from its seed.
SIMT_UNCHECKED static void set_order(u64 o) {
    order = o;
    order_state = o;
}

template <class T>
SIMT_UNCHECKED static T exchange(unsigned mask, T v, unsigned from_lane_of(unsigned lane, int arg), int arg,
                  const void* site) {
    if (mask != 0xffffffffu) {
        bad_mask = true;
        to_scheduler();
    }
    unsigned lane = threadIdx.x & 31, w = threadIdx.x / 32;
    u64* bank = &slots[w * 64 + 32 * (fibers[current].bank++ & 1)];
    bank[lane] = (u64)v;
    arrive((int)w, site, false);
    return (T)bank[from_lane_of(lane, arg) & 31];
}

}  // namespace simt

// Every lane's `v`, and the mask of the warp's lanes for which `pick(theirs, ours)` holds.
namespace simt {
SIMT_UNCHECKED static unsigned vote(unsigned mask, u64 v, bool pick(u64, u64),
                                    const void* site) {
    if (mask != 0xffffffffu) {
        bad_mask = true;
        to_scheduler();
    }
    unsigned lane = threadIdx.x & 31, w = threadIdx.x / 32;
    unsigned at = w * 64 + 32 * (fibers[current].bank++ & 1);
    u64 *bank = &slots[at], *stamp = &stamps[at], mine = fibers[current].bank;
    bank[lane] = v;
    stamp[lane] = mine;
    arrive((int)w, site, false);
    unsigned r = 0;
    for (unsigned i = 0; i < 32; i++) {
        if (stamp[i] == mine && pick(bank[i], v)) r |= 1u << i;
    }
    return r;
}
static bool is_set(u64 theirs, u64) { return theirs != 0; }
static bool equal(u64 theirs, u64 ours) { return theirs == ours; }
}  // namespace simt

static void sim_syncthreads(const void* site) { simt::arrive(-1, site, true); }
static void sim_syncwarp(const void* site, unsigned mask) {
    if (mask != 0xffffffffu) {
        simt::bad_mask = true;
        simt::to_scheduler();
    }
    simt::arrive((int)(threadIdx.x / 32), site, true);
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

#endif
