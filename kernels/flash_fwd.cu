// flash_fwd.cu — FlashAttention-2-style forward kernel (fp16/bf16 in, fp32 accumulate, fp32 out).
//
// Entry points: flash_fwd_{f16,bf16}_d{DP}(FlashFwdParams), DP ∈ {32,48,64,80,96,128,160,192,256},
// one struct argument passed by value. DP is the *padded* head dim the variant is compiled for;
// the runtime head dim d (a multiple of 8, d ≤ DP) is a field of the argument and columns d..DP
// are zero-filled in shared memory, so e.g. D=40 runs on the d48 variant.
//
// Design (one thread block = one tile of BR query rows of one (batch, head)):
// - Grid (ceil(N_q/BR), H, B); 128 threads = 4 warps; warp w owns MT m16 row tiles (16·MT rows),
//   so BR = 64·MT. The KV head is h / (H/H_kv): GQA and MQA are only an index mapping.
// - Shared memory (dynamic only): Q tile BR×DP, one K tile BC×DP and one V tile BC×DP, rows padded
//   by 8 halves (16 bytes) so the 8 row addresses of every ldmatrix hit 8 distinct 4-bank groups
//   (conflict-free without a swizzle). Tiles are loaded with 16-byte cp.async; rows past N and
//   columns past d are zero-filled by cp.async's src-size operand, which is how ragged tails are
//   handled (no branchy scalar tail loop, no out-of-bounds reads).
// - Pipeline (FA2's): K_j is in flight while the previous P·V_{j-1} runs, V_j is in flight while
//   S_j = Q·K_jᵀ and the softmax run. One buffer each for K and V; two __syncthreads per KV tile.
// - S = Q·Kᵀ and O += P·V use mma.sync.m16n8k16 (f16 or bf16 inputs, fp32 accumulators).
//   Operands come from ldmatrix (.trans for V). The S accumulator fragment is re-packed in
//   registers as the A operand of P·V (the FA2 register trick: no round trip through smem).
// - Online softmax in the log2 domain: scores stay unscaled in the accumulator, the running max m
//   is kept per row, p = exp2(s·c − m·c) with c = scale·log2(e) folded into one FFMA; the row sum
//   l is kept as per-lane partials and reduced with two shuffles only at the end. O is normalized
//   once at the end; LSE = (m·c + log2 l)·ln 2 is written alongside it. Empty rows: O = 0, LSE = −∞.
// - Masks: causal and sliding window are one contiguous key band per row. KV tiles outside the
//   block's band are never visited (whole-tile skipping); tiles entirely inside every row's band
//   run unmasked; only boundary tiles (and the ragged last tile) evaluate the per-element mask.
// - Q fragments live in registers for DP ≤ 128 (QREG); for DP ≥ 160 they are re-read from smem
//   by ldmatrix every KV tile to stay under 255 registers without spilling.
// - No N×N buffer anywhere: global traffic is Q, K, V once per (q tile, kv tile) pair, O and LSE.
//
// Tile configuration per padded head dim (FlashCfg below): BC keys per KV tile, MT m16 row
// tiles per warp (BR = 64·MT query rows per block), Q in registers or re-read from smem. They were
// chosen so ptxas reports zero spills for both sm_80 and sm_90 under 255 registers:
//   DP 32/48: BC 64, MT 2, Q in regs | DP 64: BC 32, MT 2, Q in regs | DP 80/96: BC 64, MT 1
//   DP 128: BC 32, MT 1, Q in regs   | DP 160/192: BC 32, MT 1, Q from smem | DP 256: BC 16, MT 1
//
// Expected bottlenecks: (1) registers: every variant uses 167–255 registers, so 2 blocks (8 warps,
// 12.5% occupancy) are resident per SM (3 on sm_80 for DP 32/80/128) — FA2 has the same
// register-bound regime; latency is hidden by the cp.async overlap and ILP inside each warp's
// 16·MT rows, not by occupancy. (2) shared-memory bandwidth of the K/V ldmatrix reads: each B
// fragment feeds MT mma's, so MT = 1 variants (DP ≥ 80) read twice the smem per FLOP of FA2's
// 128-row tiles. (3) The exp2/max/shuffle softmax between the two GEMMs is not overlapped with
// tensor-core work (no warp specialization; FA2 on sm_80 has the same limit, FA3 removes it on
// sm_90 with wgmma/TMA, which this kernel does not use). (4) Two __syncthreads per KV tile, which
// matters most for BC = 16/32. Output is written directly from the accumulator fragments as
// float2 (32-byte sectors fully used), not staged through smem. No split-KV: with few
// (batch·head·q-tile) blocks — decode-like shapes — the GPU is under-filled.
//
// The same source compiles for the CPU as C++20 with kernels/cuda_host_emu.hpp (ATTNKIT_EMU),
// which supplies the primitives below with their documented PTX semantics.

#ifndef ATTNKIT_EMU
// ------------------------------------------------------------------------------------------
// GPU primitives (inline PTX). No headers are included, so NVRTC needs no include path.
// ------------------------------------------------------------------------------------------
#define DEVI __device__ __forceinline__
#define DECLARE_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]

DEVI float neg_inf() { return __int_as_float(0xff800000); }

DEVI unsigned smem_addr(const void* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// Copies 16 bytes global → shared; only the first src_bytes are read, the rest are zero-filled.
DEVI void cp_async_16(void* smem_dst, const void* gmem_src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem_dst)), "l"(gmem_src),
                 "r"(src_bytes));
}
DEVI void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
DEVI void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

DEVI void ldmatrix_x4(unsigned (&r)[4], const unsigned short* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
DEVI void ldmatrix_x4_trans(unsigned (&r)[4], const unsigned short* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

// D = A·B + D for one m16n8k16 tile; A row-major 16×16, B column-major 16×8, fp32 accumulators.
template <bool BF16>
DEVI void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    if (BF16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

// Rounds (lo, hi) to nearest-even 16-bit floats; lo goes to the low half (lower column index).
template <bool BF16>
DEVI unsigned pack2(float lo, float hi) {
    unsigned r;
    if (BF16) {
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    } else {
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    }
    return r;
}

DEVI float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
DEVI float fast_log2(float x) {
    float y;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
#endif  // !ATTNKIT_EMU

// ------------------------------------------------------------------------------------------
// The kernel's one argument, passed by value (as FlashAttention's Flash_fwd_params). Mirrors
// FlashFwdParams in src/cuda/params.rs field for field; tests/cuda_emulated.rs compares the two
// layouts (offsetof here, offset_of! there). Arguments by value live in the constant bank, so
// passing a struct costs no registers over 13 scalars.
// ------------------------------------------------------------------------------------------
struct FlashFwdParams {
    const unsigned short* q;  // B·H·N_q·d, 16-bit
    const unsigned short* k;  // B·H_kv·N_k·d, 16-bit
    const unsigned short* v;  // B·H_kv·N_k·d, 16-bit
    float* o;                 // B·H·N_q·d
    float* lse;               // B·H·N_q
    int batch, heads, kv_heads, nq, nk, d;
    float scale_log2;         // softmax scale · log2(e)
    int win_left, win_right;  // pre-clamped band, causal folded in; −1 = unbounded
    int pad;                  // explicit tail padding (0)
};

// ------------------------------------------------------------------------------------------
// Per-variant configuration. Keep in sync with src/cuda/variants.rs (a test compares them
// through the emulator's attnkit_emu_config).
// ------------------------------------------------------------------------------------------
template <int DP>
struct FlashCfg;
// clang-format off
template <> struct FlashCfg<32>  { enum { BC = 64, MT = 2, QREG = 1 }; };
template <> struct FlashCfg<48>  { enum { BC = 64, MT = 2, QREG = 1 }; };
template <> struct FlashCfg<64>  { enum { BC = 32, MT = 2, QREG = 1 }; };
template <> struct FlashCfg<80>  { enum { BC = 64, MT = 1, QREG = 1 }; };
template <> struct FlashCfg<96>  { enum { BC = 64, MT = 1, QREG = 1 }; };
template <> struct FlashCfg<128> { enum { BC = 32, MT = 1, QREG = 1 }; };
template <> struct FlashCfg<160> { enum { BC = 32, MT = 1, QREG = 0 }; };
template <> struct FlashCfg<192> { enum { BC = 32, MT = 1, QREG = 0 }; };
template <> struct FlashCfg<256> { enum { BC = 16, MT = 1, QREG = 0 }; };
// clang-format on

#define FLASH_THREADS 128
#define FLASH_WARPS 4

template <int DP>
struct FlashGeom {
    enum {
        BC = FlashCfg<DP>::BC,
        MT = FlashCfg<DP>::MT,
        QREG = FlashCfg<DP>::QREG,
        BR = 16 * MT * FLASH_WARPS,
        STRIDE = DP + 8,  // halves per smem row (16-byte pad)
        SMEM_BYTES = (BR + 2 * BC) * STRIDE * 2,
    };
};

// Loads rows [row0, row0+R) of a (rows_total × d) row-major 16-bit matrix into smem (stride
// STRIDE), zero-filling rows ≥ rows_total and columns ≥ d.
template <int R, int DP>
DEVI void load_tile(unsigned short* s, const unsigned short* g, int row0, int rows_total, int d, int tid) {
    constexpr int CPR = DP / 8;  // 16-byte chunks per row
    constexpr int CHUNKS = R * CPR;
    constexpr int STRIDE = DP + 8;
#pragma unroll
    for (int it = 0; it < (CHUNKS + FLASH_THREADS - 1) / FLASH_THREADS; ++it) {
        const int c = it * FLASH_THREADS + tid;
        if (CHUNKS % FLASH_THREADS == 0 || c < CHUNKS) {
            const int r = c / CPR, col = (c % CPR) * 8;
            const int row = row0 + r;
            const bool ok = row < rows_total && col < d;
            // A zero-byte cp.async reads nothing; the base pointer keeps the operand a valid address.
            const unsigned short* src = ok ? g + (long long)row * d + col : g;
            cp_async_16(s + r * STRIDE + col, src, ok ? 16 : 0);
        }
    }
}

// Key band of query row i: [lo, hi). Window bounds are pre-clamped by the host (−1 = unbounded,
// causal folded into right = 0), so nothing here overflows 32 bits.
DEVI int band_lo(int i, int off, int left) { return left >= 0 ? max(0, i + off - left) : 0; }
DEVI int band_hi(int i, int off, int right, int nk) { return right >= 0 ? min(nk, i + off + right + 1) : nk; }

template <int DP, bool BF16>
DEVI void flash_fwd_body(const unsigned short* __restrict__ Q, const unsigned short* __restrict__ K,
                         const unsigned short* __restrict__ V, float* __restrict__ O, float* __restrict__ LSE,
                         int heads, int kv_heads, int nq, int nk, int d, float scale_log2, int win_left,
                         int win_right) {
    typedef FlashGeom<DP> G;
    constexpr int BC = G::BC, MT = G::MT, BR = G::BR, STR = G::STRIDE;
    constexpr bool QREG = G::QREG != 0;
    constexpr int KS = DP / 16;     // k-steps of Q·Kᵀ
    constexpr int NTS = BC / 8;     // n8 tiles of S
    constexpr int NTO = DP / 8;     // n8 tiles of O
    constexpr int KSP = BC / 16;    // k-steps of P·V
    // Q·Kᵀ k-steps unrolled: all of them, except for DP = 256 on sm_90, where full unrolling of
    // the smem-fed A fragments leaves ptxas one register short (16 bytes of spills).
    [[maybe_unused]] constexpr int KS_UNROLL = DP >= 256 ? 8 : KS;  // unused by the emulator (g++ ignores the pragma)

    DECLARE_DYNAMIC_SMEM(smem_raw);
    unsigned short* sQ = reinterpret_cast<unsigned short*>(smem_raw);
    unsigned short* sK = sQ + BR * STR;
    unsigned short* sV = sK + BC * STR;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;  // groupID, threadID_in_group (PTX ISA fragment layout)
    const int q0 = blockIdx.x * BR;
    const int h = blockIdx.y, b = blockIdx.z;
    const int kvh = h / (heads / kv_heads);
    const long long bh = (long long)b * heads + h;
    const unsigned short* gQ = Q + bh * nq * d;
    const long long kv_base = ((long long)b * kv_heads + kvh) * nk * d;
    const unsigned short* gK = K + kv_base;
    const unsigned short* gV = V + kv_base;

    const int off = nk - nq;
    const int q_last = min(q0 + BR, nq) - 1;
    const int tile_lo = band_lo(q0, off, win_left);            // smallest lo over the block's rows
    const int tile_hi = band_hi(q_last, off, win_right, nk);   // largest hi
    const int full_lo = band_lo(q_last, off, win_left);        // keys ≥ this are ≥ lo of every row
    const int full_hi = band_hi(q0, off, win_right, nk);       // keys < this are < hi of every row
    const int j_begin = tile_lo < tile_hi ? tile_lo / BC : 0;
    const int j_end = tile_lo < tile_hi ? (tile_hi + BC - 1) / BC : 0;

    float acc_o[MT][NTO][4];
    float m_i[MT][2], l_i[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int nt = 0; nt < NTO; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) acc_o[mt][nt][e] = 0.f;
        }
        m_i[mt][0] = m_i[mt][1] = neg_inf();
        l_i[mt][0] = l_i[mt][1] = 0.f;
    }
    unsigned qf[QREG ? MT : 1][QREG ? KS : 1][4];

    // Rows of this thread: row_of(mt, rr) = q0 + warp·16·MT + mt·16 + g + 8·rr.
    const int row_base = q0 + warp * 16 * MT + g;

    if (j_begin < j_end) {
        load_tile<BR, DP>(sQ, gQ, q0, nq, d, tid);
        load_tile<BC, DP>(sK, gK, j_begin * BC, nk, d, tid);
        cp_async_commit();

        for (int j = j_begin; j < j_end; ++j) {
            const int n0 = j * BC;
            cp_async_wait_all();
            __syncthreads();  // K_j (and Q) visible; every warp is done reading V_{j-1}
            load_tile<BC, DP>(sV, gV, n0, nk, d, tid);
            cp_async_commit();

            if (QREG && j == j_begin) {
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                    for (int kk = 0; kk < KS; ++kk) {
                        const int r = warp * 16 * MT + mt * 16 + (lane & 15);
                        ldmatrix_x4(qf[QREG ? mt : 0][QREG ? kk : 0], sQ + r * STR + kk * 16 + (lane >> 4) * 8);
                    }
                }
            }

            // S = Q·K_jᵀ (unscaled), fp32.
            float s[MT][NTS][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                for (int nt = 0; nt < NTS; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.f;
                }
            }
#pragma unroll KS_UNROLL
            for (int kk = 0; kk < KS; ++kk) {
                unsigned a_tmp[QREG ? 1 : MT][4];
                if (!QREG) {
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        const int r = warp * 16 * MT + mt * 16 + (lane & 15);
                        ldmatrix_x4(a_tmp[QREG ? 0 : mt], sQ + r * STR + kk * 16 + (lane >> 4) * 8);
                    }
                }
#pragma unroll
                for (int np = 0; np < NTS / 2; ++np) {
                    unsigned bk[4];
                    const int key = np * 16 + ((lane >> 4) & 1) * 8 + (lane & 7);
                    ldmatrix_x4(bk, sK + key * STR + kk * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        const unsigned (&a)[4] = QREG ? qf[QREG ? mt : 0][QREG ? kk : 0] : a_tmp[QREG ? 0 : mt];
                        mma_16816<BF16>(s[mt][2 * np], a, bk[0], bk[1]);
                        mma_16816<BF16>(s[mt][2 * np + 1], a, bk[2], bk[3]);
                    }
                }
            }

            // Mask only boundary tiles: the band edges or the ragged end of K.
            if (n0 < full_lo || n0 + BC > full_hi) {
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                    for (int rr = 0; rr < 2; ++rr) {
                        const int row = row_base + mt * 16 + 8 * rr;
                        const int lo = band_lo(row, off, win_left), hi = band_hi(row, off, win_right, nk);
#pragma unroll
                        for (int nt = 0; nt < NTS; ++nt) {
#pragma unroll
                            for (int e = 0; e < 2; ++e) {
                                const int key = n0 + nt * 8 + 2 * t + e;
                                if (key < lo || key >= hi) s[mt][nt][2 * rr + e] = neg_inf();
                            }
                        }
                    }
                }
            }

            // Online softmax (log2 domain).
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                for (int rr = 0; rr < 2; ++rr) {
                    float mx = m_i[mt][rr];
#pragma unroll
                    for (int nt = 0; nt < NTS; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * rr], s[mt][nt][2 * rr + 1]));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                    // A row with no allowed key yet keeps m = −∞; subtract 0 so p = exp2(−∞) = 0, not NaN.
                    const float m_scaled = mx == neg_inf() ? 0.f : mx * scale_log2;
                    const float alpha = fast_exp2(m_i[mt][rr] * scale_log2 - m_scaled);
                    m_i[mt][rr] = mx;
                    float sum = 0.f;
#pragma unroll
                    for (int nt = 0; nt < NTS; ++nt) {
#pragma unroll
                        for (int e = 0; e < 2; ++e) {
                            const float p = fast_exp2(s[mt][nt][2 * rr + e] * scale_log2 - m_scaled);
                            s[mt][nt][2 * rr + e] = p;
                            sum += p;
                        }
                    }
                    l_i[mt][rr] = l_i[mt][rr] * alpha + sum;
#pragma unroll
                    for (int nt = 0; nt < NTO; ++nt) {
                        acc_o[mt][nt][2 * rr] *= alpha;
                        acc_o[mt][nt][2 * rr + 1] *= alpha;
                    }
                }
            }

            cp_async_wait_all();
            __syncthreads();  // V_j visible; every warp is done reading K_j
            if (j + 1 < j_end) {
                load_tile<BC, DP>(sK, gK, n0 + BC, nk, d, tid);
                cp_async_commit();
            }

            // O += P·V_j; P's accumulator fragment is the A operand after packing to 16 bits.
#pragma unroll
            for (int kk = 0; kk < KSP; ++kk) {
                unsigned pa[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    pa[mt][0] = pack2<BF16>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                    pa[mt][1] = pack2<BF16>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                    pa[mt][2] = pack2<BF16>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                    pa[mt][3] = pack2<BF16>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
                }
#pragma unroll
                for (int np = 0; np < NTO / 2; ++np) {
                    unsigned bv[4];
                    const int key = kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
                    ldmatrix_x4_trans(bv, sV + key * STR + np * 16 + (lane >> 4) * 8);
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma_16816<BF16>(acc_o[mt][2 * np], pa[mt], bv[0], bv[1]);
                        mma_16816<BF16>(acc_o[mt][2 * np + 1], pa[mt], bv[2], bv[3]);
                    }
                }
            }
        }
    }

    // Epilogue: finish the row sums, normalize, write O and LSE.
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            float l = l_i[mt][rr];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const float inv = l == 0.f ? 0.f : 1.f / l;
            const int row = row_base + mt * 16 + 8 * rr;
            if (row < nq) {
                float* o_row = O + (bh * nq + row) * d;
#pragma unroll
                for (int nt = 0; nt < NTO; ++nt) {
                    const int col = nt * 8 + 2 * t;
                    if (col < d) {
                        float2 v2;
                        v2.x = acc_o[mt][nt][2 * rr] * inv;
                        v2.y = acc_o[mt][nt][2 * rr + 1] * inv;
                        *reinterpret_cast<float2*>(o_row + col) = v2;
                    }
                }
                if (t == 0) {
                    LSE[bh * nq + row] =
                        l == 0.f ? neg_inf() : (m_i[mt][rr] * scale_log2 + fast_log2(l)) * 0.6931471805599453f;
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Entry points. FLASH_ONLY(DT, DP) restricts the module to one variant (the runtime path
// compiles only what it launches); without it every variant is instantiated.
// ------------------------------------------------------------------------------------------
#define FLASH_ENTRY(DT, IS_BF16, DP)                                                                           \
    extern "C" __global__ void __launch_bounds__(FLASH_THREADS) flash_fwd_##DT##_d##DP(const FlashFwdParams p) { \
        flash_fwd_body<DP, IS_BF16>(p.q, p.k, p.v, p.o, p.lse, p.heads, p.kv_heads, p.nq, p.nk, p.d,            \
                                    p.scale_log2, p.win_left, p.win_right);                                    \
    }

#define FLASH_ALL_VARIANTS(X)                                                                                  \
    X(f16, false, 32) X(f16, false, 48) X(f16, false, 64) X(f16, false, 80) X(f16, false, 96)                  \
    X(f16, false, 128) X(f16, false, 160) X(f16, false, 192) X(f16, false, 256)                                \
    X(bf16, true, 32) X(bf16, true, 48) X(bf16, true, 64) X(bf16, true, 80) X(bf16, true, 96)                  \
    X(bf16, true, 128) X(bf16, true, 160) X(bf16, true, 192) X(bf16, true, 256)

#if defined(FLASH_ONLY_DT) && defined(FLASH_ONLY_DP)
#define FLASH_EXPAND(DT, BF, DP) FLASH_ENTRY(DT, BF, DP)
FLASH_EXPAND(FLASH_ONLY_DT, FLASH_ONLY_BF16, FLASH_ONLY_DP)
#else
FLASH_ALL_VARIANTS(FLASH_ENTRY)
#endif
