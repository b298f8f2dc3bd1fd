// cuda_host_emu.hpp — runs CUDA kernel source on the CPU, for testing kernel logic without a GPU.
//
// Compile the kernel as C++20 with -DATTNKIT_EMU after including this header. Every construct
// kernels/flash_fwd.cu uses is provided here with its documented semantics:
// - threadIdx / blockIdx / blockDim / gridDim: thread-local, one OS thread per CUDA thread.
// - __syncthreads(): one std::barrier per block; __syncthreads_or: per-thread slots read
//   between two meetings of that barrier.
// - Dynamic shared memory: one buffer per block, pre-filled with 0xFF bytes (a NaN in f16/bf16)
//   so reading smem nobody wrote shows up as NaN in the result.
// - Warp collectives (__shfl_xor_sync, ldmatrix, mma.sync): each lane writes its operands to a
//   per-warp scratch slot, the warp meets at a per-warp std::barrier, then each lane reads what
//   the PTX ISA says it receives. Slots alternate between two buffers so one barrier per
//   collective suffices (a slot is rewritten only after everyone passed the next barrier).
// - mma.sync.m16n8k16 (.row.col, f32 accumulate) with the PTX ISA fragment layouts
//   (groupID = lane>>2, threadID_in_group = lane%4), f16 or bf16 operands.
// - ldmatrix.m8n8.x4[.trans].b16: lanes 8i..8i+7 supply the row addresses of matrix i; lane l
//   receives row l/4, columns 2(l%4), 2(l%4)+1 of each matrix (of its transpose with .trans).
// - cp.async (16 bytes, src-size zero-fill) with commit_group / wait_group N, under one of two
//   legal schedules chosen per launch (emu::set_lazy_copies): eager (each copy lands when issued:
//   exposes a copy into a buffer other warps still read) or lazy (copies land only when a
//   wait_group retires their group: exposes smem read before its wait + barrier, which then sees
//   the 0xFF fill, a NaN). Shared addresses are 32-bit offsets into the block's buffer.
// - __any_sync: a warp vote through the same scratch slots.
// - cvt.rn.{f16,bf16}x2.f32: round to nearest even; ex2/lg2.approx: std::exp2/std::log2.
// Checked as it runs: ldmatrix/cp.async destinations inside the block's shared memory and
// 16-byte aligned, cp.async sources inside a registered global buffer. Violations are recorded
// (emu::first_error) instead of crashing, so the test reports them.
//
// What this does not model: GPU-only races between warps that the barriers do not order,
// bank conflicts, coalescing, timing. It runs blocks one after another.
#pragma once

#include <barrier>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <algorithm>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(...)
#define DEVI inline

namespace emu {

struct Dim3 {
    unsigned x = 1, y = 1, z = 1;
};

struct LaneSlot {
    uint32_t r[6];
    const void* p;
    float f;
};

struct Warp {
    std::barrier<> bar{32};
    LaneSlot slot[2][32];
};

struct Block {
    unsigned char* smem;
    size_t smem_bytes;
    std::barrier<>* bar;
    unsigned char* votes;  // one __syncthreads_or slot per thread
    unsigned nthreads;
};

struct Copy {
    void* dst;
    const void* src;
    int bytes;
};

struct ThreadCtx {
    Dim3 tid, bid, bdim, gdim;
    Warp* warp;
    Block* block;
    int lane;
    unsigned phase;
    bool lazy;
    std::vector<Copy> open_group;              // cp.async issued since the last commit
    std::vector<std::vector<Copy>> committed;  // oldest first
};

inline thread_local ThreadCtx ctx;

struct Global {
    std::mutex mu;
    bool lazy_copies = false;
    std::string first_error;
    std::vector<std::pair<const unsigned char*, size_t>> buffers;
};
inline Global& global() {
    static Global g;
    return g;
}

inline void fail(const std::string& msg) {
    std::lock_guard<std::mutex> l(global().mu);
    if (global().first_error.empty()) global().first_error = msg;
}

inline void register_buffer(const void* p, size_t bytes) {
    std::lock_guard<std::mutex> l(global().mu);
    global().buffers.emplace_back(static_cast<const unsigned char*>(p), bytes);
}

inline bool in_registered(const void* p, size_t bytes) {
    auto* c = static_cast<const unsigned char*>(p);
    std::lock_guard<std::mutex> l(global().mu);
    for (auto& [base, len] : global().buffers)
        if (c >= base && c + bytes <= base + len) return true;
    return false;
}

inline bool in_smem(const void* p, size_t bytes) {
    auto* c = static_cast<const unsigned char*>(p);
    const Block& b = *ctx.block;
    return c >= b.smem && c + bytes <= b.smem + b.smem_bytes;
}

// One warp-collective exchange: publish `mine`, wait for the warp, return the warp's slots.
inline const LaneSlot* exchange(const LaneSlot& mine) {
    Warp& w = *ctx.warp;
    unsigned s = ctx.phase++ & 1;
    w.slot[s][ctx.lane] = mine;
    w.bar.arrive_and_wait();
    return w.slot[s];
}

// ---- 16-bit float conversions (round to nearest even) ----
inline float f16_to_f32(uint16_t h) { return static_cast<float>(std::bit_cast<_Float16>(h)); }
inline uint16_t f32_to_f16(float f) { return std::bit_cast<uint16_t>(static_cast<_Float16>(f)); }
inline float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }
inline uint16_t f32_to_bf16(float f) {
    uint32_t u = std::bit_cast<uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}

inline void set_lazy_copies(bool lazy) {
    std::lock_guard<std::mutex> l(global().mu);
    global().lazy_copies = lazy;
}

inline void do_copy(const Copy& c) {
    std::memcpy(c.dst, c.src, static_cast<size_t>(c.bytes));
    std::memset(static_cast<unsigned char*>(c.dst) + c.bytes, 0, static_cast<size_t>(16 - c.bytes));
}

// Copies m into err (len bytes, NUL-terminated, truncated): the drivers' error out-parameter.
inline void copy_msg(const std::string& m, char* err, size_t len) {
    if (err == nullptr || len == 0) return;
    const size_t n = std::min(len - 1, m.size());
    std::memcpy(err, m.data(), n);
    err[n] = 0;
}

// Clears the fault record and the registered buffers, runs `body` (which registers what the
// kernels may cp.async from, then launches), and reports the first fault into err (−2) or 0.
template <class F>
int run_checked(char* err, size_t err_len, F body) {
    {
        std::lock_guard<std::mutex> l(global().mu);
        global().buffers.clear();
        global().first_error.clear();
    }
    body();
    std::lock_guard<std::mutex> l(global().mu);
    if (!global().first_error.empty()) {
        copy_msg(global().first_error, err, err_len);
        return -2;
    }
    return 0;
}

// Runs `kernel` over the grid, blocks one after another, one OS thread per CUDA thread.
template <class F>
void launch(Dim3 grid, Dim3 block, size_t smem_bytes, F kernel) {
    const unsigned nthreads = block.x * block.y * block.z;
    if (nthreads % 32 != 0) {
        fail("block size must be a multiple of 32");
        return;
    }
    bool lazy;
    {
        std::lock_guard<std::mutex> l(global().mu);
        lazy = global().lazy_copies;
    }
    std::vector<unsigned char> smem(smem_bytes + 16);
    unsigned char* base = smem.data() + ((16 - reinterpret_cast<uintptr_t>(smem.data()) % 16) % 16);
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                std::memset(base, 0xff, smem_bytes);
                std::barrier<> bar(nthreads);
                std::vector<unsigned char> votes(nthreads);
                Block blk{base, smem_bytes, &bar, votes.data(), nthreads};
                std::vector<std::unique_ptr<Warp>> warps;
                for (unsigned w = 0; w < nthreads / 32; ++w) warps.push_back(std::make_unique<Warp>());
                std::vector<std::jthread> threads;
                threads.reserve(nthreads);
                for (unsigned t = 0; t < nthreads; ++t) {
                    threads.emplace_back([&, t] {
                        ctx.tid = Dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        ctx.bid = Dim3{bx, by, bz};
                        ctx.bdim = block;
                        ctx.gdim = grid;
                        ctx.warp = warps[t / 32].get();
                        ctx.block = &blk;
                        ctx.lane = static_cast<int>(t % 32);
                        ctx.phase = 0;
                        ctx.lazy = lazy;
                        ctx.open_group.clear();
                        ctx.committed.clear();
                        kernel();
                        if (!ctx.open_group.empty() || !ctx.committed.empty())
                            fail("cp.async: thread exited with copies not waited for");
                    });
                }
            }
}

}  // namespace emu

// ---- CUDA built-ins ----
#define threadIdx (emu::ctx.tid)
#define blockIdx (emu::ctx.bid)
#define blockDim (emu::ctx.bdim)
#define gridDim (emu::ctx.gdim)
#define DECLARE_DYNAMIC_SMEM(name) unsigned char* name = emu::ctx.block->smem

struct float2 {
    float x, y;
};

using std::max;
using std::min;

inline void __syncthreads() { emu::ctx.block->bar->arrive_and_wait(); }
// Each thread publishes its predicate in its own slot, the block meets, every thread ORs all
// slots, and the block meets again so no slot is rewritten before everyone has read it.
inline int __syncthreads_or(int pred) {
    emu::Block& b = *emu::ctx.block;
    const emu::Dim3& t = emu::ctx.tid;
    b.votes[t.x + emu::ctx.bdim.x * (t.y + emu::ctx.bdim.y * t.z)] = pred != 0;
    b.bar->arrive_and_wait();
    int any = 0;
    for (unsigned i = 0; i < b.nthreads; ++i) any |= b.votes[i];
    b.bar->arrive_and_wait();
    return any;
}
inline float __int_as_float(int i) { return std::bit_cast<float>(i); }
inline float __int_as_float(unsigned i) { return std::bit_cast<float>(i); }
inline float fmaxf(float a, float b) { return std::fmax(a, b); }

inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask) {
    if (mask != 0xffffffffu) emu::fail("__shfl_xor_sync: only full-warp masks are emulated");
    emu::LaneSlot mine{};
    mine.f = v;
    const emu::LaneSlot* all = emu::exchange(mine);
    return all[(emu::ctx.lane ^ lane_mask) & 31].f;
}

// ---- The kernel's PTX wrappers, host versions ----
inline float neg_inf() { return -std::numeric_limits<float>::infinity(); }
inline unsigned opaque(unsigned x) { return x; }
inline float fast_exp2(float x) { return std::exp2(x); }
inline float fast_log2(float x) { return std::log2(x); }
inline float fast_rcp(float x) { return 1.f / x; }

inline unsigned smem_addr(const void* p) {
    const auto* c = static_cast<const unsigned char*>(p);
    if (!emu::in_smem(p, 0)) emu::fail("smem_addr: pointer outside shared memory");
    return static_cast<unsigned>(c - emu::ctx.block->smem);
}

inline void cp_async_16(unsigned sdst, const void* gmem_src, int src_bytes) {
    const emu::Block& b = *emu::ctx.block;
    if (sdst % 16 != 0 || static_cast<size_t>(sdst) + 16 > b.smem_bytes) {
        emu::fail("cp.async: destination outside shared memory or not 16-byte aligned");
        return;
    }
    void* smem_dst = b.smem + sdst;
    if (src_bytes < 0 || src_bytes > 16) {
        emu::fail("cp.async: src-size must be in [0, 16]");
        return;
    }
    if (src_bytes > 0 &&
        (reinterpret_cast<uintptr_t>(gmem_src) % 16 != 0 || !emu::in_registered(gmem_src, src_bytes))) {
        emu::fail("cp.async: source outside the global buffers or not 16-byte aligned");
        return;
    }
    const emu::Copy c{smem_dst, gmem_src, src_bytes};
    if (emu::ctx.lazy)
        emu::ctx.open_group.push_back(c);
    else
        emu::do_copy(c);
}
inline void cp_async_commit() {
    emu::ctx.committed.push_back(std::move(emu::ctx.open_group));
    emu::ctx.open_group.clear();
}
// Retires (lands) every committed group but the newest N. Copies not yet committed stay pending,
// as on the GPU, where wait_group does not cover them.
template <int N>
inline void cp_async_wait() {
    auto& q = emu::ctx.committed;
    while (q.size() > static_cast<size_t>(N)) {
        for (const emu::Copy& c : q.front()) emu::do_copy(c);
        q.erase(q.begin());
    }
}

inline bool __any_sync(unsigned mask, bool pred) {
    if (mask != 0xffffffffu) emu::fail("__any_sync: only full-warp masks are emulated");
    emu::LaneSlot mine{};
    mine.r[0] = pred ? 1u : 0u;
    const emu::LaneSlot* all = emu::exchange(mine);
    bool any = false;
    for (int l = 0; l < 32; ++l) any |= all[l].r[0] != 0;
    return any;
}

template <bool TRANS>
inline void ldmatrix_x4_impl(unsigned (&r)[4], unsigned saddr) {
    const emu::Block& b = *emu::ctx.block;
    const unsigned short* p = nullptr;
    if (saddr % 16 != 0 || static_cast<size_t>(saddr) + 16 > b.smem_bytes)
        emu::fail("ldmatrix: row address outside shared memory or not 16-byte aligned");
    else
        p = reinterpret_cast<const unsigned short*>(b.smem + saddr);
    emu::LaneSlot mine{};
    mine.p = p;
    const emu::LaneSlot* all = emu::exchange(mine);
    const int l = emu::ctx.lane;
    for (int i = 0; i < 4; ++i) {
        auto elem = [&](int row, int col) -> uint32_t {
            const auto* rp = static_cast<const unsigned short*>(all[i * 8 + row].p);
            return rp ? rp[col] : 0xffffu;
        };
        if (TRANS)
            r[i] = elem((l % 4) * 2, l / 4) | (elem((l % 4) * 2 + 1, l / 4) << 16);
        else
            r[i] = elem(l / 4, (l % 4) * 2) | (elem(l / 4, (l % 4) * 2 + 1) << 16);
    }
}
inline void ldmatrix_x4(unsigned (&r)[4], unsigned saddr) { ldmatrix_x4_impl<false>(r, saddr); }
inline void ldmatrix_x4_trans(unsigned (&r)[4], unsigned saddr) { ldmatrix_x4_impl<true>(r, saddr); }

template <bool BF16>
inline void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    emu::LaneSlot mine{};
    for (int i = 0; i < 4; ++i) mine.r[i] = a[i];
    mine.r[4] = b0;
    mine.r[5] = b1;
    const emu::LaneSlot* all = emu::exchange(mine);
    auto half = [](uint32_t reg, int hi) -> float {
        const auto h = static_cast<uint16_t>(hi ? reg >> 16 : reg & 0xffffu);
        return BF16 ? emu::bf16_to_f32(h) : emu::f16_to_f32(h);
    };
    // A (16×16, row): element (r, k) is in lane (r%8)·4 + (k%8)/2, register (r/8) + 2·(k/8), half k%2.
    auto A = [&](int r, int k) { return half(all[(r % 8) * 4 + (k % 8) / 2].r[(r / 8) + 2 * (k / 8)], k % 2); };
    // B (16×8, col): element (k, n) is in lane n·4 + (k%8)/2, register k/8, half k%2.
    auto B = [&](int k, int n) { return half(all[n * 4 + (k % 8) / 2].r[4 + k / 8], k % 2); };
    const int g = emu::ctx.lane >> 2, t = emu::ctx.lane & 3;
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i / 2), col = 2 * t + (i % 2);
        float acc = d[i];
        for (int k = 0; k < 16; ++k) acc = std::fma(A(row, k), B(k, col), acc);
        d[i] = acc;
    }
}

template <bool BF16>
inline unsigned pack2(float lo, float hi) {
    const uint32_t l = BF16 ? emu::f32_to_bf16(lo) : emu::f32_to_f16(lo);
    const uint32_t h = BF16 ? emu::f32_to_bf16(hi) : emu::f32_to_f16(hi);
    return l | (h << 16);
}

template <bool BF16>
inline float half_to_float(unsigned short h) {
    return BF16 ? emu::bf16_to_f32(h) : emu::f16_to_f32(h);
}
