// flash_bwd.cu — FlashAttention-2's backward (dQ, dK, dV and the sink gradient) for the flash-cuda
// backend, deterministic: no atomics, every sum in a fixed order.
//
// Entry points (one FlashBwdParams argument by value, as the forward):
// - flash_bwd_preprocess: D_i = Σ_t dO_it·O_it per row (f32, one warp per row, a fixed shuffle
//   tree), and zeroes the num_splits dQ partial buffers. Grid ceil(B·H·N_q / BWD_ROWS_PER_BLOCK).
// - flash_bwd_{f16,bf16}_d{DP}: the main kernel. Grid (num_splits, H_kv, B or sequences); a block
//   owns the key blocks jb ≡ blockIdx.x (mod num_splits) of one KV head. Per key block of BC keys
//   it keeps dK and dV for the tile in registers (f32, BC·DP/128 each per thread), and visits every
//   query head of the KV group (GQA/MQA accumulate in the kernel, as FlashAttention 3) and every
//   tile of BR query rows whose band reaches the keys: it recomputes S = scale·Q·Kᵀ, the modified
//   score (softcap, ALiBi), P = exp(S' − LSE) from the saved LSE, dP = dO·Vᵀ and
//   dS = P∘(dP − D)·c' (c' the softcap's tanh derivative), then dV += Pᵀ·dO, dK += scale·dSᵀ·Q and
//   dQ += scale·dS·K. dQ goes into the block's own partial buffer dq_accum[blockIdx.x] (plain
//   read-modify-write: only this block touches it for this head, in a fixed key-block order).
//   dK and dV are written once per key block (f32, final: one block owns a key block).
// - flash_bwd_convert: dQ = Σ_s dq_accum[s], summed in split order (FlashAttention's
//   deterministic=True: per-split buffers and a convert kernel instead of atomicAdd).
// - flash_bwd_dsink (sinks only): dσ_h = −Σ_{b,i} exp(σ_h − LSE_i)·D_i, one block per head,
//   per-thread strided sums and a fixed shared-memory tree.
//
// Arithmetic: CUDA-core FP32 FMAs on f32 tiles in shared memory (Q, K, V widened from 16 bits on
// load; O, dO, LSE, D are f32 already). P and dS are never rounded to 16 bits, unlike FA2, whose
// five GEMMs run on tensor cores with P and dS packed to f16/bf16: this kernel is the correct,
// spill-free first step (kernels/README.md, "Backward launch plan"), not FA2's speed.
//
// Modifiers: causal and windows (the forward's key band, host-clamped, causal folded in), packed
// varlen (blockIdx.z = sequence, its rows and keys from cu_seqlens_q/k), seqused_k (later keys get
// zero gradients), softcap (dS times 1 − tanh²), ALiBi (applied on recompute; no slope gradient),
// sinks (their gradient from D and LSE alone). Masked pairs get P = dS = 0 explicitly; query tiles
// outside a key block's band are not visited. A row with no allowed key has no pair and so gets
// zero gradients. Caveat (not yet the CPU backward's NaN policy): a masked pair's P = 0 still
// multiplies its dO/Q row in the dV/dK sums, so a NaN/∞ in dO or Q of a row inside a visited tile
// can reach dK/dV of a key that row does not see; finite inputs are unaffected.
//
// Shared memory (dynamic, f32): K and V tiles BC×(DP+1) (the pad keeps the per-thread key rows of
// the score loop on distinct banks), Q and dO tiles BR×DP, P and dS BR×BC, LSE and D for BR rows.
// Columns d..DP and rows past the sequence are zero-filled.
//
// Same source under the CPU emulation (kernels/cuda_host_emu.hpp, kernels/emu/driver_bwd.cpp).
// Requires kernels/flash_ptx.cuh and kernels/flash_common.cuh before it (the host prepends them).

// ------------------------------------------------------------------------------------------
// The argument of every backward entry point. Mirrors FlashBwdParams in src/cuda/bwd.rs field for
// field; tests/cuda_emulated_bwd.rs compares the layouts (offsetof here, offset_of! there).
// ------------------------------------------------------------------------------------------
struct FlashBwdParams {
    const unsigned short* q;  // B·H·N_q·d, 16-bit
    const unsigned short* k;  // B·H_kv·N_k·d, 16-bit
    const unsigned short* v;  // B·H_kv·N_k·d, 16-bit
    const float* o;           // B·H·N_q·d, the forward's output
    const float* dout;        // B·H·N_q·d
    const float* lse;         // B·H·N_q, natural log (the sink included when there is one)
    float* delta;             // B·H·N_q, written by flash_bwd_preprocess
    float* dq_accum;          // num_splits·B·H·N_q·d partial dQ
    float* dq;                // B·H·N_q·d
    float* dk;                // B·H_kv·N_k·d
    float* dv;                // B·H_kv·N_k·d
    float* dsinks;            // (H,) when sinks is set
    int batch, heads, kv_heads, nq, nk, d;
    float scale;              // softmax scale (natural units)
    int win_left, win_right;  // pre-clamped band, causal folded in; −1 = unbounded
    int num_splits;           // key-block residues, one dQ partial buffer each
    float softcap;            // 0 = off
    int alibi_seq_stride;     // 0: slopes (H,); H: (S, H)
    const float* alibi_slopes;
    const float* sinks;
    const int* cu_seqlens_q;  // varlen: S+1 offsets (blockIdx.z = sequence), else null
    const int* cu_seqlens_k;
    const int* seqused_k;     // (S,) keys used per batch entry / sequence, or null
};

// Per-variant tiles: BC·DP ≤ 4096 keeps dK + dV at ≤ 64 registers per thread; BC divides the 128
// threads and BR·BC, BR·DP are multiples of them, so every thread owns the same number of elements. Keep in sync
// with BWD_CFG in src/cuda/bwd.rs (tests/cuda_emulated_bwd.rs compares them).
template <int DP>
struct FlashBwdCfg;
// clang-format off
template <> struct FlashBwdCfg<32>  { enum { BC = 64, BR = 32 }; };
template <> struct FlashBwdCfg<48>  { enum { BC = 64, BR = 32 }; };
template <> struct FlashBwdCfg<64>  { enum { BC = 64, BR = 32 }; };
template <> struct FlashBwdCfg<80>  { enum { BC = 32, BR = 32 }; };
template <> struct FlashBwdCfg<96>  { enum { BC = 32, BR = 32 }; };
template <> struct FlashBwdCfg<128> { enum { BC = 32, BR = 32 }; };
template <> struct FlashBwdCfg<160> { enum { BC = 16, BR = 16 }; };
template <> struct FlashBwdCfg<192> { enum { BC = 16, BR = 16 }; };
template <> struct FlashBwdCfg<256> { enum { BC = 16, BR = 16 }; };
// clang-format on

#define BWD_THREADS 128
#define BWD_ROWS_PER_BLOCK 4  // preprocess: one warp per row

template <int DP>
struct FlashBwdGeom {
    enum {
        BC = FlashBwdCfg<DP>::BC,
        BR = FlashBwdCfg<DP>::BR,
        KSTR = DP + 1,
        SMEM_BYTES = (2 * BC * KSTR + 2 * BR * DP + 2 * BR * BC + 2 * BR) * 4,
    };
};

// The rows and keys of the sequence of blockIdx.z: batch entry b, or packed sequence b under
// varlen (then bb = 0 and the rows q_start.. of every head). nk_all keys are stored, nk used
// (seqused_k); the band is bottom-right aligned on the used keys, as in the forward.
struct BwdSeq {
    int b, bb, q_start, nq, k_start, nk_all, nk, off;
    DEVI BwdSeq(const FlashBwdParams& p, int z) {
        b = z;
        bb = z;
        q_start = 0;
        k_start = 0;
        nq = p.nq;
        nk_all = p.nk;
        if (p.cu_seqlens_q != nullptr) {
            bb = 0;
            q_start = p.cu_seqlens_q[z];
            nq = p.cu_seqlens_q[z + 1] - q_start;
            k_start = p.cu_seqlens_k[z];
            nk_all = p.cu_seqlens_k[z + 1] - k_start;
        }
        nk = p.seqused_k != nullptr ? min(p.seqused_k[z], nk_all) : nk_all;
        off = nk - nq;
    }
};

// Rows [r0, r0+R) of a (rows × d) 16-bit matrix into f32 smem (row stride STR), zero past the rows
// and in columns d..DP.
template <int R, int DP, int STR, bool BF16>
DEVI void load_rows16(float* s, const unsigned short* g, int r0, int rows, int d, int tid) {
    for (int e = tid; e < R * DP; e += BWD_THREADS) {
        const int r = e / DP, c = e % DP;
        s[r * STR + c] = r0 + r < rows && c < d ? half_to_float<BF16>(g[(long long)(r0 + r) * d + c]) : 0.f;
    }
}
template <int R, int DP>
DEVI void load_rows32(float* s, const float* g, int r0, int rows, int d, int tid) {
    for (int e = tid; e < R * DP; e += BWD_THREADS) {
        const int r = e / DP, c = e % DP;
        s[r * DP + c] = r0 + r < rows && c < d ? g[(long long)(r0 + r) * d + c] : 0.f;
    }
}

template <int DP, bool BF16>
DEVI void flash_bwd_body(const FlashBwdParams& p) {
    typedef FlashBwdGeom<DP> G;
    constexpr int BC = G::BC, BR = G::BR, KSTR = G::KSTR;
    // dK/dV ownership: thread t holds key kj = t % BC, columns kc0 = t / BC + CSTEP·e.
    constexpr int CSTEP = BWD_THREADS / BC;
    constexpr int EK = DP / CSTEP;             // dK and dV elements per thread
    constexpr int ES = BR * BC / BWD_THREADS;  // (row, key) pairs per thread
    constexpr int EQ = BR * DP / BWD_THREADS;  // dQ elements per thread
    static_assert(CSTEP * BC == BWD_THREADS && EK * CSTEP == DP && ES * BWD_THREADS == BR * BC &&
                      EQ * BWD_THREADS == BR * DP,
                  "tiles must split evenly over the threads");

    DECLARE_DYNAMIC_SMEM(smem_raw);
    float* const sK = reinterpret_cast<float*>(smem_raw);
    float* const sV = sK + BC * KSTR;
    float* const sQ = sV + BC * KSTR;
    float* const sdO = sQ + BR * DP;
    float* const sP = sdO + BR * DP;
    float* const sdS = sP + BR * BC;
    float* const sLse = sdS + BR * BC;
    float* const sD = sLse + BR;

    const int tid = threadIdx.x, d = p.d, kvh = blockIdx.y;
    const int kj = tid % BC, kc0 = tid / BC;
    const BwdSeq sq(p, blockIdx.z);
    const int group = p.heads / p.kv_heads;
    const float scale = p.scale, cap = p.softcap;
    const float inv_cap = cap > 0.f ? fast_rcp(cap) : 0.f, bound = softcap_bound(cap);
    const long long rows_total = (long long)p.batch * p.heads * p.nq;
    float* const dq_acc = p.dq_accum + (long long)blockIdx.x * rows_total * d;
    const long long kv_row0 = ((long long)sq.bb * p.kv_heads + kvh) * p.nk + sq.k_start;
    const int kblocks = (sq.nk_all + BC - 1) / BC;

    for (int jb = blockIdx.x; jb < kblocks; jb += p.num_splits) {
        const int n0 = jb * BC;
        __syncthreads();  // every thread is done with the previous key block's K and V tiles
        load_rows16<BC, DP, KSTR, BF16>(sK, p.k + kv_row0 * d, n0, sq.nk_all, d, tid);
        load_rows16<BC, DP, KSTR, BF16>(sV, p.v + kv_row0 * d, n0, sq.nk_all, d, tid);
        float dk[EK], dv[EK];
#pragma unroll
        for (int e = 0; e < EK; ++e) dk[e] = dv[e] = 0.f;
        // Rows whose band [lo, hi) meets the used keys of this block (empty past the used keys).
        const int key_hi = min(n0 + BC, sq.nk);
        int i_lo = p.win_right >= 0 ? max(0, n0 - sq.off - p.win_right) : 0;
        int i_hi = p.win_left >= 0 ? min(sq.nq, key_hi - 1 - sq.off + p.win_left + 1) : sq.nq;
        if (n0 >= key_hi) i_hi = 0;
        i_lo -= i_lo % BR;  // whole tiles: a (row, column) of dQ always falls to the same thread
        for (int h = kvh * group; h < (kvh + 1) * group; ++h) {
            const float slope = p.alibi_slopes != nullptr ? p.alibi_slopes[sq.b * p.alibi_seq_stride + h] : 0.f;
            const long long row0 = ((long long)sq.bb * p.heads + h) * p.nq + sq.q_start;
            for (int m0 = i_lo; m0 < i_hi; m0 += BR) {
                __syncthreads();  // the previous tile's P, dS, Q and dO are no longer read
                load_rows16<BR, DP, DP, BF16>(sQ, p.q + row0 * d, m0, sq.nq, d, tid);
                load_rows32<BR, DP>(sdO, p.dout + row0 * d, m0, sq.nq, d, tid);
                for (int r = tid; r < BR; r += BWD_THREADS) {
                    const bool in = m0 + r < sq.nq;
                    sLse[r] = in ? p.lse[row0 + m0 + r] : 0.f;
                    sD[r] = in ? p.delta[row0 + m0 + r] : 0.f;
                }
                __syncthreads();  // tiles (and, on the first, K and V) visible to every thread
                // P and dS of this thread's pairs; a pair outside the band gets exactly 0. The
                // loops that index no register array stay rolled (unrolled, ptxas hoisted their
                // shared loads and spilled next to the 2·EK accumulators).
#pragma unroll 1
                for (int e = 0; e < ES; ++e) {
                    const int idx = tid + e * BWD_THREADS, i = idx / BC, j = idx % BC;
                    const int row = m0 + i, key = n0 + j;
                    float pv = 0.f, ds = 0.f;
                    if (row < sq.nq && key < band_hi(row, sq.off, p.win_right, sq.nk) &&
                        key >= band_lo(row, sq.off, p.win_left)) {
                        float s = 0.f, dp = 0.f;
#pragma unroll 4
                        for (int c = 0; c < DP; ++c) {
                            s += sQ[i * DP + c] * sK[j * KSTR + c];
                            dp += sdO[i * DP + c] * sV[j * KSTR + c];
                        }
                        s *= scale;
                        float chain = 1.f;
                        if (cap > 0.f) {
                            float t;
                            s = softcap_score(s, inv_cap, bound, &t);
                            chain = 1.f - t * t;
                        }
                        s -= slope * fabsf((float)(row + sq.off - key));
                        pv = fast_exp2((s - sLse[i]) * 1.4426950408889634f);
                        ds = pv * (dp - sD[i]) * chain * scale;
                    }
                    sP[i * BC + j] = pv;
                    sdS[i * BC + j] = ds;
                }
                __syncthreads();  // P and dS visible
                // dV += Pᵀ·dO and dK += dSᵀ·Q for this thread's key kj and columns kc0 + CSTEP·e:
                // one P/dS address and one dO/Q address plus compile-time offsets, so nothing but
                // the accumulators stays live across the tile loop.
                {
                    const float* const pP = sP + kj;
                    const float* const pS = sdS + kj;
                    const float* const pO = sdO + kc0;
                    const float* const pQ = sQ + kc0;
#pragma unroll 1
                    for (int i = 0; i < BR; ++i) {
                        const float pv = pP[i * BC], ds = pS[i * BC];
#pragma unroll
                        for (int e = 0; e < EK; ++e) {
                            dv[e] += pv * pO[i * DP + e * CSTEP];
                            dk[e] += ds * pQ[i * DP + e * CSTEP];
                        }
                    }
                }
                // dQ += dS·K into this split's partial buffer.
#pragma unroll 1
                for (int e = 0; e < EQ; ++e) {
                    const int idx = tid + e * BWD_THREADS, i = idx / DP, c = idx % DP;
                    if (m0 + i < sq.nq && c < d) {
                        float acc = 0.f;
#pragma unroll 4
                        for (int j = 0; j < BC; ++j) acc += sdS[i * BC + j] * sK[j * KSTR + c];
                        dq_acc[(row0 + m0 + i) * d + c] += acc;
                    }
                }
            }
        }
        // dK and dV of the tile's stored keys (zero for keys no row sees), written once.
        if (n0 + kj < sq.nk_all) {
#pragma unroll
            for (int e = 0; e < EK; ++e) {
                const int c = kc0 + e * CSTEP;
                if (c < d) {
                    const long long o = (kv_row0 + n0 + kj) * d + c;
                    p.dk[o] = dk[e];
                    p.dv[o] = dv[e];
                }
            }
        }
    }
}

// D = rowsum(dO∘O), and zeroed dQ partials (every row of every split: a split whose key blocks a
// row never reaches still adds its partial in flash_bwd_convert).
DEVI void flash_bwd_preprocess_body(const FlashBwdParams& p) {
    const long long rows_total = (long long)p.batch * p.heads * p.nq;
    const long long row = (long long)blockIdx.x * BWD_ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (row >= rows_total) return;  // warp-uniform
    const int lane = threadIdx.x & 31, d = p.d;
    float sum = 0.f;
    for (int c = lane; c < d; c += 32) sum += p.dout[row * d + c] * p.o[row * d + c];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0) p.delta[row] = sum;
    for (int s = 0; s < p.num_splits; ++s) {
        for (int c = lane; c < d; c += 32) p.dq_accum[(s * rows_total + row) * d + c] = 0.f;
    }
}

// dQ = Σ_s dq_accum[s], in split order; one element per thread.
DEVI void flash_bwd_convert_body(const FlashBwdParams& p) {
    const long long n = (long long)p.batch * p.heads * p.nq * p.d;
    const long long e = (long long)blockIdx.x * BWD_THREADS + threadIdx.x;
    if (e >= n) return;
    float acc = 0.f;
    for (int s = 0; s < p.num_splits; ++s) acc += p.dq_accum[s * n + e];
    p.dq[e] = acc;
}

// dσ_h = −Σ_{b,i} exp(σ_h − LSE_i)·D_i for head blockIdx.x; a row with LSE = −∞ adds nothing.
DEVI void flash_bwd_dsink_body(const FlashBwdParams& p) {
    DECLARE_DYNAMIC_SMEM(smem_raw);
    float* const red = reinterpret_cast<float*>(smem_raw);
    const int h = blockIdx.x, tid = threadIdx.x;
    const float sigma = p.sinks[h];
    float acc = 0.f;
    for (long long r = tid; r < (long long)p.batch * p.nq; r += BWD_THREADS) {
        const long long row = ((r / p.nq) * p.heads + h) * p.nq + r % p.nq;
        const float l = p.lse[row];
        if (l != neg_inf()) acc -= fast_exp2((sigma - l) * 1.4426950408889634f) * p.delta[row];
    }
    red[tid] = acc;
    for (int w = BWD_THREADS / 2; w > 0; w >>= 1) {
        __syncthreads();
        if (tid < w) red[tid] += red[tid + w];
    }
    if (tid == 0) p.dsinks[h] = red[0];
}

// ------------------------------------------------------------------------------------------
// Entry points. FLASH_BWD_ONLY_DT / _DP restrict the module to one main variant (the runtime path
// compiles what it launches); the three helpers are in every module.
// ------------------------------------------------------------------------------------------
// minBlocks = 1: without it ptxas 12 for sm_90 capped the main kernels at 128 registers and
// spilled d80/d128/d160/d256 (kernels/README.md); they need ~125-165.
#define FLASH_BWD_ENTRY(DT, IS_BF16, DP)                                                                     \
    extern "C" __global__ void __launch_bounds__(BWD_THREADS, 1) flash_bwd_##DT##_d##DP(const FlashBwdParams p) { \
        flash_bwd_body<DP, IS_BF16>(p);                                                                      \
    }
#define FLASH_BWD_ALL_VARIANTS(X)                                                                            \
    X(f16, false, 32) X(f16, false, 48) X(f16, false, 64) X(f16, false, 80) X(f16, false, 96)                \
    X(f16, false, 128) X(f16, false, 160) X(f16, false, 192) X(f16, false, 256)                              \
    X(bf16, true, 32) X(bf16, true, 48) X(bf16, true, 64) X(bf16, true, 80) X(bf16, true, 96)                \
    X(bf16, true, 128) X(bf16, true, 160) X(bf16, true, 192) X(bf16, true, 256)

#if defined(FLASH_BWD_ONLY_DT) && defined(FLASH_BWD_ONLY_DP)
#define FLASH_BWD_EXPAND(DT, BF, DP) FLASH_BWD_ENTRY(DT, BF, DP)
FLASH_BWD_EXPAND(FLASH_BWD_ONLY_DT, FLASH_BWD_ONLY_BF16, FLASH_BWD_ONLY_DP)
#else
FLASH_BWD_ALL_VARIANTS(FLASH_BWD_ENTRY)
#endif

extern "C" __global__ void __launch_bounds__(32 * BWD_ROWS_PER_BLOCK) flash_bwd_preprocess(const FlashBwdParams p) {
    flash_bwd_preprocess_body(p);
}
extern "C" __global__ void __launch_bounds__(BWD_THREADS) flash_bwd_convert(const FlashBwdParams p) {
    flash_bwd_convert_body(p);
}
extern "C" __global__ void __launch_bounds__(BWD_THREADS) flash_bwd_dsink(const FlashBwdParams p) {
    flash_bwd_dsink_body(p);
}
