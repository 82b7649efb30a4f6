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

#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

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
// The order run_block takes a block's ready threads in: 0 by thread index, each until it
// waits (the last to reach a barrier goes on at once); 1 the same backwards; anything else
// seeds a fresh random order every sweep, each thread running only to its next wait. A GPU
// promises no order between two barriers, so a kernel without races writes the same bytes in
// every order, and one where a thread reads or writes what another writes between the same
// two barriers shows it as bytes that depend on the order.
static u64 order;
static u64 order_state;  // the random orders' xorshift state
static std::vector<unsigned> sweep;

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
    if (__start_dwcp_simt_shared) {
        memset(__start_dwcp_simt_shared, 0xA5,
               (size_t)(__stop_dwcp_simt_shared - __start_dwcp_simt_shared));
    }
    bad_mask = false;
    bool random = order > 1;
    if (random && order_state == 0) order_state = order;
    sweep.resize(n);
    for (;;) {
        for (unsigned k = 0; k < n; k++) sweep[k] = order == 1 ? n - 1 - k : k;
        for (unsigned k = n; random && k > 1; k--) {
            order_state ^= order_state << 13;
            order_state ^= order_state >> 7;
            order_state ^= order_state << 17;
            std::swap(sweep[k - 1], sweep[order_state % k]);
        }
        bool ran = false, all_done = true;
        for (unsigned i : sweep) {
            while (fibers[i].state == READY) {
                current = i;
                threadIdx = SimDim3{fibers[i].tid, 0, 0};
                swap(scheduler, fibers[i].ctx);
                ran = true;
                if (bad_mask) return false;
                if (random) break;
            }
            if (fibers[i].state != DONE) all_done = false;
        }
        if (all_done) return true;
        if (!ran) return false;
    }
}

// Sets the order (see `order`); a random order's sequence starts again from its seed.
static void set_order(u64 o) {
    order = o;
    order_state = o;
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

#endif
