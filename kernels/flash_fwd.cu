// flash_fwd.cu — FlashAttention-2-style forward kernel (fp16/bf16 in, fp32 accumulate, fp32 out),
// with split-KV (flash-decoding); kernels/flash_combine.cu merges the split partials.
//
// Entry points: flash_fwd_{f16,bf16}_d{DP}[_mods](FlashFwdParams), DP ∈ {32,48,64,80,96,128,160,192,256},
// one struct argument passed by value. DP is the *padded* head
// dim; the runtime head dim d (a multiple of 8, d ≤ DP) is a field and columns d..DP are
// zero-filled in shared memory, so e.g. D=40 runs on the d48 variant.
//
// Design (one thread block = one tile of BR query rows of one (batch, head[, key split])):
// - Grid (ceil(rows/BR), H/pack, B·splits); 128 threads = 4 warps; warp w owns MT m16 row tiles
//   (16·MT rows), BR = 64·MT. The KV head is h / (H/H_kv): GQA and MQA are an index mapping.
//   Decode with GQA (N_q = 1) packs the pack = H/H_kv query heads of one KV head into the rows of
//   one block (FA2's "seqlen_q ↔ ngroups swap"): they are contiguous in Q, O and LSE, share K/V,
//   and all sit at query position 0, so one K/V read serves the whole group.
// - Split-KV (flash-decoding): when (row tiles · heads · batch) blocks cannot fill the GPU, the
//   key range is cut into num_splits ranges of keys_per_split keys (a multiple of BC); each block
//   writes its normalized partial O and natural-log LSE to o_accum/lse_accum, and flash_combine
//   (kernels/flash_combine.cu) merges them per row (the counterpart of attnkit::merge_partials).
// - Shared memory (dynamic only): Q tile BR×DP and STAGES pairs of (K, V) tiles BC×DP, rows
//   padded by 8 halves (16 bytes) so the 8 row addresses of every ldmatrix hit 8 distinct 4-bank
//   groups. Tiles are loaded with 16-byte cp.async, a thread keeping one column and stepping by
//   whole rows (one 64-bit offset, no per-chunk addresses live across the key loop); rows past N
//   and columns past d are zero-filled by cp.async's src-size operand (ragged tails without
//   scalar loops or out-of-bounds reads).
// - Pipeline, per variant (FlashCfg::STAGES):
//   2 — two (K, V) stages, one __syncthreads per key tile. At the top of tile j each thread waits
//       for its copies of tile j (the only group in flight), the barrier publishes them and proves
//       every warp finished tile j−1, and the copy of tile j+1 into the freed stage is issued
//       before any math of tile j, so it overlaps the whole of tile j's Q·Kᵀ, softmax and P·V.
//   1 — FA2's schedule: one K and one V buffer, two barriers per key tile. After the first
//       barrier (K_j landed) V_j's copy is issued and overlaps Q·K_jᵀ and the softmax; after the
//       second (V_j landed, every warp done with K_j) K_{j+1}'s copy overlaps P·V_j. FA2 issues
//       K_{j+1} before the softmax; here it comes after P is packed, when S's registers are dead
//       (issued earlier, d64 128×128 and d128 128×64 spill: kernels/README.md). Half the K/V
//       smem of two stages, which is what lets FA2's wider key tiles fit two blocks per SM.
// - S = Q·Kᵀ and O += P·V use mma.sync.m16n8k16 (f16 or bf16 inputs, fp32 accumulators).
//   Operands come from ldmatrix (.trans for V). The S accumulator fragment is re-packed in
//   registers as the A operand of P·V (the FA2 register trick: no round trip through smem).
// - Online softmax in the log2 domain: scores stay unscaled in the accumulator, the running max m
//   is kept per row, p = exp2(s·c − m·c) with c = scale·log2(e) folded into one FFMA; the row sum
//   l is kept as per-lane partials, reduced with two shuffles at the end. The O rescale by
//   exp2(m_old − m_new) is skipped when no row of the warp raised its max (__any_sync vote), the
//   common case once the first tiles have been seen. O is normalized once at the end;
//   LSE = (m·c + log2 l)·ln 2. Empty rows: O = 0, LSE = −∞.
// - Masks: causal and sliding window are one contiguous key band per row. Key tiles outside the
//   block's band are never visited; tiles inside every row's band run unmasked; only boundary
//   tiles (and the ragged last tile) evaluate the per-element mask, and only they scan their V
//   tile for NaN/∞ (guard_v: a dropped pair's P = 0 times NaN must not reach its row).
// - Score modifiers (the flash_fwd_{DT}_d{DP}_mods entry points, MODS = true; launched only when
//   one is set, so the plain kernel's registers are untouched): S is turned in place into
//   scale·s → softcap c·tanh(s/c) → − slope·|i + N_k − N_q − j| before the band mask; varlen
//   maps blockIdx.z to a packed sequence (its offsets from cu_seqlens_q/k, bands bottom-right
//   aligned per sequence, blocks past its rows return at once, key tiles outside it are never
//   visited); seqused_k shortens N_k, so later keys are neither loaded nor counted; a sink
//   joins the row's denominator in the epilogue, or in flash_combine when the keys are split.
//   GQA decode packing is off with modifiers (slopes and sinks are per head).
// - Q fragments stay in registers (QREG) only where registers allow; elsewhere they are re-read
//   from smem by ldmatrix every key tile, as FA2 does at d128.
// - Overlapped softmax (FlashCfg::OVL, two stages): K is kept one tile ahead of V, so tile j+1's
//   Q·Kᵀ is issued before tile j's softmax in the same basic block, and the softmax steps (row
//   maxima, exponentials per n8 tile) are placed between its k-steps (ptxas reorders them; the
//   point is that they no longer depend on the mma around them): FA3's intra-warp overlap with
//   mma.sync. It needs a second S accumulator (MT·BC/2 registers per thread), so only the
//   variants with register headroom use it (kernels/README.md has the ptxas figures of the rest).
//
// Tile configuration per padded head dim: FlashCfg below (FA2's key-tile widths at d64, d128 and
// d256 on the one-buffer schedule; see kernels/README.md for the table, registers, smem and
// blocks per SM).
//
// The same source compiles for the CPU as C++20 with kernels/cuda_host_emu.hpp (ATTNKIT_EMU),
// which supplies the primitives of kernels/flash_ptx.cuh with their documented PTX semantics.

// GPU primitives (inline PTX): kernels/flash_ptx.cuh, prepended to this source by the host; the
// CPU emulation supplies its own (kernels/cuda_host_emu.hpp). The key band and the softcap's
// tanh come from kernels/flash_common.cuh (shared with the backward), prepended after them.

// ------------------------------------------------------------------------------------------
// The kernels' one argument, passed by value (as FlashAttention's Flash_fwd_params). Mirrors
// FlashFwdParams in src/cuda/params.rs field for field; tests/cuda_emulated.rs compares the two
// layouts (offsetof here, offset_of! there). Arguments by value live in the constant bank.
// ------------------------------------------------------------------------------------------
struct FlashFwdParams {
    const unsigned short* q;  // B·H·N_q·d, 16-bit
    const unsigned short* k;  // B·H_kv·N_k·d, 16-bit
    const unsigned short* v;  // B·H_kv·N_k·d, 16-bit
    float* o;                 // B·H·N_q·d
    float* lse;               // B·H·N_q
    float* o_accum;           // num_splits·B·H·N_q·d partial O (num_splits > 1 only)
    float* lse_accum;         // num_splits·B·H·N_q partial LSE (num_splits > 1 only)
    int batch, heads, kv_heads, nq, nk, d;
    float scale_log2;         // softmax scale · log2(e)
    int win_left, win_right;  // pre-clamped band, causal folded in; −1 = unbounded
    int num_splits;           // key ranges per row (1: no split, O/LSE written directly)
    int keys_per_split;       // a multiple of the variant's BC
    int pack;                 // query heads per block row set: H/H_kv when packed (needs N_q = 1), else 1
    // Score modifiers, read only by the _mods entry points (the host launches those whenever one
    // is set, with pack = 1). Null pointer / 0 = modifier off.
    float softcap;            // s ← c·tanh(s/c) on the scaled score
    int alibi_seq_stride;     // 0: slopes per head (H,); H: per (sequence, head) (S, H)
    const float* alibi_slopes;
    const float* sinks;       // (H,) natural-log logits joining every row's denominator
    const int* cu_seqlens_q;  // varlen: S+1 offsets into the packed rows (blockIdx.z / splits = sequence)
    const int* cu_seqlens_k;
    const int* seqused_k;     // (S,) keys used per batch entry / sequence; later keys neither read nor counted
};

// ------------------------------------------------------------------------------------------
// Per-variant configuration. Keep in sync with src/cuda/variants.rs (a test compares them
// through the emulator's attnkit_emu_config).
// ------------------------------------------------------------------------------------------
template <int DP>
struct FlashCfg;
// clang-format off
template <> struct FlashCfg<32>  { enum { BC = 128, MT = 2, QREG = 1, STAGES = 2, OVL = 0 }; };
template <> struct FlashCfg<48>  { enum { BC = 128, MT = 2, QREG = 0, STAGES = 1, OVL = 0 }; };
template <> struct FlashCfg<64>  { enum { BC = 128, MT = 2, QREG = 0, STAGES = 1, OVL = 0 }; };
template <> struct FlashCfg<80>  { enum { BC = 64,  MT = 2, QREG = 0, STAGES = 2, OVL = 0 }; };
template <> struct FlashCfg<96>  { enum { BC = 64,  MT = 2, QREG = 0, STAGES = 2, OVL = 0 }; };
template <> struct FlashCfg<128> { enum { BC = 64,  MT = 2, QREG = 0, STAGES = 1, OVL = 0 }; };
template <> struct FlashCfg<160> { enum { BC = 32,  MT = 1, QREG = 0, STAGES = 2, OVL = 1 }; };
template <> struct FlashCfg<192> { enum { BC = 32,  MT = 1, QREG = 0, STAGES = 2, OVL = 1 }; };
template <> struct FlashCfg<256> { enum { BC = 64,  MT = 1, QREG = 0, STAGES = 1, OVL = 0 }; };
// The _mods entry points run the same tiles (FlashCfgM kept as the place to narrow one should
// the modifiers' extra live values ever spill there).
template <int DP, bool MODS> struct FlashCfgM : FlashCfg<DP> {};
// clang-format on

#define FLASH_THREADS 128
#define FLASH_WARPS 4
#define COMBINE_ROWS_PER_BLOCK 4  // one warp per row
#define COMBINE_MAX_COLS 8        // d ≤ 32·8 = 256 columns per lane

template <int DP, bool MODS = false>
struct FlashGeom {
    enum {
        BC = FlashCfgM<DP, MODS>::BC,
        MT = FlashCfgM<DP, MODS>::MT,
        QREG = FlashCfgM<DP, MODS>::QREG,
        STAGES = FlashCfgM<DP, MODS>::STAGES,
        OVL = FlashCfgM<DP, MODS>::OVL,
        BR = 16 * MT * FLASH_WARPS,
        STRIDE = DP + 8,  // halves per smem row (16-byte pad)
        SMEM_BYTES = (BR + 2 * STAGES * BC) * STRIDE * 2,
    };
};

// Loads rows [row0, row0+R) of a (rows_total × d) row-major 16-bit matrix into smem at the
// shared-window byte address sdst (row stride STRIDE halves), zero-filling rows ≥ rows_total and
// columns ≥ d.
template <int R, int DP>
DEVI void load_tile(unsigned sdst, const unsigned short* g, int row0, int rows_total, int d, int tid) {
    constexpr int CPR = DP / 8;  // 16-byte chunks per row
    constexpr int STRIDE = DP + 8;
    // A pass covers RPI whole rows with RPI·CPR threads (the other FLASH_THREADS % CPR idle), so
    // a thread keeps its column and one 64-bit offset advances by RPI rows per pass: no per-pass
    // offsets for the compiler to keep live across the key loop.
    constexpr int RPI = FLASH_THREADS / CPR;
    constexpr int PASSES = (R + RPI - 1) / RPI;
    constexpr bool EXACT = FLASH_THREADS % CPR == 0 && R % RPI == 0;
    const int r0 = tid / CPR, col = (tid % CPR) * 8;
    const int rows_mine = r0 < RPI ? R - r0 : 0;                   // copy while it·RPI < this
    const int rows_left = col < d ? rows_total - row0 - r0 : 0;  // read while it·RPI < this, else zero-fill
    long long off = (long long)(row0 + r0) * d + col;
#pragma unroll
    for (int it = 0; it < PASSES; ++it) {
        if (EXACT || it * RPI < rows_mine) {
            const bool ok = it * RPI < rows_left;
            // A zero-byte cp.async reads nothing; the base pointer keeps the operand a valid address.
            cp_async_16(sdst + ((r0 + it * RPI) * STRIDE + col) * 2, ok ? g + off : g, ok ? 16 : 0);
        }
        off += (long long)RPI * d;
    }
}

// The query rows of a block (blockIdx.y = by, blockIdx.z = bz): its first query head h0, key
// split, and sequence (batch entry b, or packed sequence b under varlen: B = 1, rows q_start..
// of every head); row0 is the global index of its row 0, rows the sequence's query rows × packed
// heads.
template <bool MODS>
struct BlockRows {
    int h0, split, b, bb, q_start, nq, rows;
    long long row0;
    DEVI BlockRows(const FlashFwdParams& p, unsigned by, unsigned bz) {
        h0 = by * p.pack;
        split = bz % p.num_splits;
        b = bz / p.num_splits;
        bb = b;
        q_start = 0;
        nq = p.nq;
        if (MODS && p.cu_seqlens_q != nullptr) {
            bb = 0;
            q_start = p.cu_seqlens_q[b];
            nq = p.cu_seqlens_q[b + 1] - q_start;
        }
        row0 = ((long long)bb * p.heads + h0) * p.nq + q_start;
        rows = nq * p.pack;
    }
};

template <int DP, bool BF16, bool MODS>
DEVI void flash_fwd_body(const FlashFwdParams& p) {
    typedef FlashGeom<DP, MODS> G;
    constexpr int BC = G::BC, MT = G::MT, BR = G::BR, STR = G::STRIDE;
    constexpr bool QREG = G::QREG != 0;
    // One K and one V buffer, loads interleaved with the math (FA2), instead of two (K, V) stages.
    constexpr bool ILV = G::STAGES == 1;
    // Q·K_{j+1}ᵀ issued before the softmax of tile j (needs two stages and MT·BC/2 more registers).
    constexpr bool OVL = G::OVL != 0;
    static_assert(!OVL || G::STAGES == 2, "the overlapped loop keeps K one tile ahead in two stages");
    constexpr int KS = DP / 16;   // k-steps of Q·Kᵀ
    constexpr int NTS = BC / 8;   // n8 tiles of S
    constexpr int NTO = DP / 8;   // n8 tiles of O
    constexpr int KSP = BC / 16;  // k-steps of P·V
    constexpr int STAGE = 2 * BC * STR;  // halves per (K, V) stage

    DECLARE_DYNAMIC_SMEM(smem_raw);
    // Byte addresses in the shared window for ldmatrix: a per-lane part computed once, plus
    // compile-time tile offsets.
    // Q at aQ; stage s: K at aKV + 2·s·STAGE, V right after it.
    const unsigned aQ = smem_addr(smem_raw), aKV = aQ + BR * STR * 2;

    const int d = p.d, pack = p.pack;
    // With modifiers the scores are replaced in place by their modified scaled values (scaled,
    // capped, ALiBi'd), so the softmax below multiplies by log2 e instead of scale·log2 e.
    const float scale_log2 = MODS ? 1.4426950408889634f : p.scale_log2;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;  // groupID, threadID_in_group (PTX ISA fragment layout)
    const int q0 = blockIdx.x * BR;
    const BlockRows<MODS> br(p, blockIdx.y, blockIdx.z);
    const int h0 = br.h0, split = br.split, b = br.b, nq = br.nq, rows = br.rows;
    const int kvh = h0 / (p.heads / p.kv_heads);
    // The sequence's keys: nk, from k_start; seqused_k shortens them.
    int nk = p.nk, k_start = 0;
    if (MODS && p.cu_seqlens_q != nullptr) {  // varlen sets both offset arrays
        k_start = p.cu_seqlens_k[b];
        nk = p.cu_seqlens_k[b + 1] - k_start;
    }
    if (MODS && p.seqused_k != nullptr) nk = p.seqused_k[b];
    if (MODS && (int)blockIdx.x * G::BR >= nq) return;  // past this sequence's rows (block-uniform)
    const unsigned short* gQ = p.q + br.row0 * d;
    const long long kv_base = (((long long)br.bb * p.kv_heads + kvh) * p.nk + k_start) * d;
    const unsigned short* gK = p.k + kv_base;
    const unsigned short* gV = p.v + kv_base;
    // Query position of a row: the row itself, or 0 for every packed head (pack > 1 ⇒ N_q = 1).
    const int off = nk - nq;
    const int q_last = min(q0 + BR, rows) - 1;
    const int pos_first = pack > 1 ? 0 : q0, pos_last = pack > 1 ? 0 : q_last;
    const int key_lo = split * p.keys_per_split, key_hi = min(nk, key_lo + p.keys_per_split);
    const int tile_lo = max(key_lo, band_lo(pos_first, off, p.win_left));    // smallest lo of the block
    const int tile_hi = min(key_hi, band_hi(pos_last, off, p.win_right, nk)); // largest hi
    const int full_lo = band_lo(pos_last, off, p.win_left);        // keys ≥ this are ≥ lo of every row
    const int full_hi = band_hi(pos_first, off, p.win_right, nk);  // keys < this are < hi of every row
    const int j_begin = tile_lo < tile_hi ? tile_lo / BC : 0;
    const int j_end = tile_lo < tile_hi ? (tile_hi + BC - 1) / BC : 0;
    const float slope =
        MODS && p.alibi_slopes != nullptr ? p.alibi_slopes[b * p.alibi_seq_stride + h0] : 0.f;

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

    // Rows of this thread: q0 + warp·16·MT + mt·16 + g + 8·rr.
    const int row_base = q0 + warp * 16 * MT + g;
    // ldmatrix lane roles (PTX ISA): Q (A, row-major) rows lane%16, column half lane/16; K (B)
    // key lane%8 + 8·bit4, column half bit3; V (B, .trans) key lane%8 + 8·bit3, column half bit4.
    const unsigned lq = aQ + ((warp * 16 * MT + (lane & 15)) * STR + (lane >> 4) * 8) * 2;
    const unsigned lk = (((lane >> 4) & 1) * 8 + (lane & 7)) * STR * 2 + ((lane >> 3) & 1) * 16;
    const unsigned lv = (((lane >> 3) & 1) * 8 + (lane & 7)) * STR * 2 + (lane >> 4) * 16;

    // The steps of one key tile, shared by both loops below.
    // Score modifiers and the band mask of the key tile starting at n0, in place.
    auto scores = [&](float (&s)[MT][NTS][4], int n0) {
        if (MODS) {
            // scale → softcap → ALiBi (natural units; scale_log2 = log2 e does the rest); the
            // mask below comes after, so masked keys stay −∞.
            const float scale = p.scale_log2 * 0.6931471805599453f, cap = p.softcap;
            const float inv_cap = cap > 0.f ? fast_rcp(cap) : 0.f, bound = softcap_bound(cap);
            // One uniform branch on the softcap per tile, not one per element (ptxas keeps those
            // as branches: the tanh is not if-converted).
            auto modify = [&](const bool capped) {
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                    for (int rr = 0; rr < 2; ++rr) {
                        // Query position (+ N_k − N_q) minus this lane's first key; pack = 1 with modifiers.
                        const int diag = row_base + mt * 16 + 8 * rr + off - (n0 + 2 * t);
#pragma unroll
                        for (int nt = 0; nt < NTS; ++nt) {
#pragma unroll
                            for (int e = 0; e < 2; ++e) {
                                float x = s[mt][nt][2 * rr + e] * scale;
                                if (capped) {
                                    float t;
                                    x = softcap_score(x, inv_cap, bound, &t);
                                }
                                x -= slope * fabsf((float)(diag - (nt * 8 + e)));
                                s[mt][nt][2 * rr + e] = x;
                            }
                        }
                    }
                }
            };
            if (cap > 0.f) {
                modify(true);
            } else {
                modify(false);
            }
        }

        // Mask only boundary tiles: the band edges or the ragged end of K.
        if (n0 < full_lo || n0 + BC > full_hi) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                for (int rr = 0; rr < 2; ++rr) {
                    const int pos = pack > 1 ? 0 : row_base + mt * 16 + 8 * rr;
                    // The band relative to this lane's first key, so each comparison is
                    // against the column's compile-time offset (no key index registers).
                    const int k0 = n0 + 2 * t;
                    const int lo = band_lo(pos, off, p.win_left) - k0;
                    const int hi = band_hi(pos, off, p.win_right, nk) - k0;
#pragma unroll
                    for (int nt = 0; nt < NTS; ++nt) {
#pragma unroll
                        for (int e = 0; e < 2; ++e) {
                            if (nt * 8 + e < lo || nt * 8 + e >= hi) s[mt][nt][2 * rr + e] = neg_inf();
                        }
                    }
                }
            }
        }
    };
    // Online softmax of S into P (packed to 16 bits, the A operand of P·V) and the O rescale.
    // Online softmax (log2 domain) in three steps, so the overlapped loop can spread them over
    // the next tile's Q·Kᵀ: the row maxima (m_i updated; msc = m·scale, alpha = the O rescale
    // factor), the exponentials of one n8 tile (p = exp2(s·scale − msc), row sums into sum), and
    // the rest (l_i, the O rescale, P packed to 16 bits as the A operand of P·V).
    auto row_max = [&](float (&s)[MT][NTS][4], float (&msc)[MT][2], float (&alpha)[MT][2]) {
        bool raised = false;
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
                msc[mt][rr] = mx == neg_inf() ? 0.f : mx * scale_log2;
                alpha[mt][rr] = fast_exp2(m_i[mt][rr] * scale_log2 - msc[mt][rr]);
                raised |= mx > m_i[mt][rr];
                m_i[mt][rr] = mx;
            }
        }
        return raised;
    };
    auto exp_tile = [&](float (&s)[MT][NTS][4], const float (&msc)[MT][2], float (&sum)[MT][2], int nt) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[mt][nt][e] = fast_exp2(s[mt][nt][e] * scale_log2 - msc[mt][e >> 1]);
                sum[mt][e >> 1] += s[mt][nt][e];
            }
        }
    };
    auto finish = [&](float (&s)[MT][NTS][4], const float (&alpha)[MT][2], bool raised, const float (&sum)[MT][2],
                      unsigned (&pa)[MT][KSP][4]) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            l_i[mt][0] = l_i[mt][0] * alpha[mt][0] + sum[mt][0];
            l_i[mt][1] = l_i[mt][1] * alpha[mt][1] + sum[mt][1];
        }
        // alpha = 1 exactly for every row whose max did not rise: skip the rescale when that
        // holds for the whole warp (a warp-uniform branch).
        if (__any_sync(0xffffffffu, raised)) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                for (int nt = 0; nt < NTO; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc_o[mt][nt][e] *= alpha[mt][e >> 1];
                }
            }
        }
        // All of P is packed before P·V, so S's fp32 registers are dead by then (as in FA2).
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int kk = 0; kk < KSP; ++kk) {
                pa[mt][kk][0] = pack2<BF16>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                pa[mt][kk][1] = pack2<BF16>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                pa[mt][kk][2] = pack2<BF16>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                pa[mt][kk][3] = pack2<BF16>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
            }
        }
    };
    // The overlapped loop's softmax of the previous tile, run in steps between this tile's
    // k-steps (null: none). NVRTC rejects generic lambdas (host functions in JIT mode), hence no
    // callback.
    struct Overlap {
        float (*s)[MT][NTS][4];
        float msc[MT][2], alpha[MT][2], sum[MT][2];
        bool raised;
    };
    Overlap* const no_overlap = nullptr;
    // S = Q·Kᵀ (unscaled, fp32) of the K tile at shared address aK.
    auto qk = [&](float (&s)[MT][NTS][4], unsigned aK, Overlap* ov) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int nt = 0; nt < NTS; ++nt) {
#pragma unroll
                for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.f;
            }
        }
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
            unsigned a_tmp[QREG ? 1 : MT][4];
            if (!QREG) {
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    ldmatrix_x4(a_tmp[QREG ? 0 : mt], lq + (mt * 16 * STR + kk * 16) * 2);
                }
            }
#pragma unroll
            for (int np = 0; np < NTS / 2; ++np) {
                unsigned bk[4];
                ldmatrix_x4(bk, aK + lk + (np * 16 * STR + kk * 16) * 2);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    const unsigned (&a)[4] = QREG ? qf[QREG ? mt : 0][QREG ? kk : 0] : a_tmp[QREG ? 0 : mt];
                    mma_16816<BF16>(s[mt][2 * np], a, bk[0], bk[1]);
                    mma_16816<BF16>(s[mt][2 * np + 1], a, bk[2], bk[3]);
                }
            }
            if (ov != nullptr) {
                // Row maxima after the first k-step, then one n8 tile of exponentials after each
                // later one, so the FP32 work sits among independent mma in program order.
                if (kk == 0) ov->raised = row_max(*ov->s, ov->msc, ov->alpha);
#pragma unroll
                for (int nt = 0; nt < NTS; ++nt) {
                    if (kk == (KS > 1 ? 1 + nt * (KS - 1) / NTS : 0)) exp_tile(*ov->s, ov->msc, ov->sum, nt);
                }
            }
        }
    };
    auto softmax = [&](float (&s)[MT][NTS][4], unsigned (&pa)[MT][KSP][4]) {
        float msc[MT][2], alpha[MT][2], sum[MT][2] = {};
        const bool raised = row_max(s, msc, alpha);
#pragma unroll
        for (int nt = 0; nt < NTS; ++nt) exp_tile(s, msc, sum, nt);
        finish(s, alpha, raised, sum, pa);
    };
    // O += P·V of the V tile at shared address aV.
    auto pv = [&](const unsigned (&pa)[MT][KSP][4], unsigned aV) {
#pragma unroll
        for (int kk = 0; kk < KSP; ++kk) {
#pragma unroll
            for (int np = 0; np < NTO / 2; ++np) {
                unsigned bv[4];
                ldmatrix_x4_trans(bv, aV + lv + (kk * 16 * STR + np * 16) * 2);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma_16816<BF16>(acc_o[mt][2 * np], pa[mt][kk], bv[0], bv[1]);
                    mma_16816<BF16>(acc_o[mt][2 * np + 1], pa[mt][kk], bv[2], bv[3]);
                }
            }
        }
    };
    // Row r's "saw a non-finite V" flag: the first word of Q row r's 16-byte smem pad, which no
    // load or ldmatrix touches. Cleared here; the first key tile's barriers order it before use.
    auto nan_flag = [&](int r) { return reinterpret_cast<unsigned*>(smem_raw + (r * STR + DP) * 2); };
    for (int r = tid; r < BR; r += FLASH_THREADS) *nan_flag(r) = 0u;
    // A NaN or ∞ in V must not reach a row that does not see its key (the NaN/Inf policy), but
    // a dropped pair's P = 0 times NaN is NaN in P·V. Only boundary tiles drop pairs; each scans
    // its V tile (one block-wide vote, the only cost when V is finite). When a value is not
    // finite (rare), every row that sees one of its keys is flagged (its output becomes NaN in
    // the epilogue: what the product would have made it) and the values are zeroed, so P·V adds
    // 0 for the rows that do not see them. The flags live in the Q tile's row padding, and the
    // rare path walks the block's rows one per thread rather than this thread's fragment rows:
    // no register stays live across the key loop for it (writing NaN into acc_o here spilled
    // d64/d128 _mods). Call with V_j visible to every thread, before pv(·, aV).
    auto guard_v = [&](unsigned aV, int n0) {
        constexpr unsigned EXP = BF16 ? 0x7f80u : 0x7c00u;  // exponent bits all set: NaN or ±∞
        constexpr int WPR = DP / 2;                           // 32-bit words (two values) per row
        unsigned* const v32 = reinterpret_cast<unsigned*>(smem_raw + (aV - aQ));
        bool any = false;
        for (int e = tid; e < BC * WPR; e += FLASH_THREADS) {
            const unsigned w = v32[(e / WPR) * (STR / 2) + e % WPR];
            any |= (w & EXP) == EXP || ((w >> 16) & EXP) == EXP;
        }
        if (!__syncthreads_or(any)) return;
        for (int r = tid; r < BR; r += FLASH_THREADS) {
            const int pos = pack > 1 ? 0 : q0 + r;
            const int lo = max(n0, band_lo(pos, off, p.win_left));
            const int hi = min(n0 + BC, band_hi(pos, off, p.win_right, nk));
            bool sees = false;
            for (int e = (lo - n0) * WPR; e < (hi - n0) * WPR; ++e) {
                const unsigned w = v32[(e / WPR) * (STR / 2) + e % WPR];
                sees |= (w & EXP) == EXP || ((w >> 16) & EXP) == EXP;
            }
            if (sees) *nan_flag(r) = 1u;
        }
        __syncthreads();  // every row has looked before the values are zeroed
        for (int e = tid; e < BC * WPR; e += FLASH_THREADS) {
            unsigned& w = v32[(e / WPR) * (STR / 2) + e % WPR];
            if ((w & EXP) == EXP) w &= 0xffff0000u;
            if (((w >> 16) & EXP) == EXP) w &= 0x0000ffffu;
        }
        __syncthreads();  // zeroed values visible to every warp's P·V
    };
    // The tiles whose scores get the per-element mask (see `scores`).
    auto boundary = [&](int n0) { return n0 < full_lo || n0 + BC > full_hi; };

    auto load_q_frags = [&]() {
        if (QREG) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                for (int kk = 0; kk < KS; ++kk) {
                    ldmatrix_x4(qf[QREG ? mt : 0][QREG ? kk : 0], lq + (mt * 16 * STR + kk * 16) * 2);
                }
            }
        }
    };

    if (j_begin < j_end && !OVL) {
        load_tile<BR, DP>(aQ, gQ, q0, rows, d, tid);
        load_tile<BC, DP>(aKV, gK, j_begin * BC, nk, d, tid);
        if (!ILV) load_tile<BC, DP>(aKV + BC * STR * 2, gV, j_begin * BC, nk, d, tid);
        cp_async_commit();

        for (int j = j_begin; j < j_end; ++j) {
            const int n0 = j * BC;
            const unsigned aK = aKV + (ILV ? 0 : ((j - j_begin) & 1) * STAGE * 2), aV = aK + BC * STR * 2;
            cp_async_wait<0>();  // this thread's copies of K_j (the one group in flight) landed
            __syncthreads();     // everyone's copies visible; every warp is done with tile j−1's buffers
            if (ILV) {
                // One K and one V buffer (FA2's schedule): V_j's copy overlaps Q·K_jᵀ.
                load_tile<BC, DP>(aKV + BC * STR * 2, gV, n0, nk, d, tid);
                cp_async_commit();
            } else if (j + 1 < j_end) {
                const unsigned nK = aKV + ((j + 1 - j_begin) & 1) * STAGE * 2;
                load_tile<BC, DP>(nK, gK, n0 + BC, nk, d, tid);
                load_tile<BC, DP>(nK + BC * STR * 2, gV, n0 + BC, nk, d, tid);
                cp_async_commit();
            }
            if (j == j_begin) load_q_frags();

            float s[MT][NTS][4];
            qk(s, aK, no_overlap);
            scores(s, n0);
            unsigned pa[MT][KSP][4];
            softmax(s, pa);
            if (ILV) {
                cp_async_wait<0>();  // V_j landed
                __syncthreads();     // V_j visible; every warp is done reading K_j
                // K_{j+1}'s copy overlaps P·V_j. Issued after the softmax, not before it as FA2 does:
                // S's registers are dead here (P is packed), and ptxas spills otherwise (README).
                if (j + 1 < j_end) {
                    load_tile<BC, DP>(aKV, gK, n0 + BC, nk, d, tid);
                    cp_async_commit();
                }
            }
            if (boundary(n0)) guard_v(aV, n0);
            pv(pa, aV);
        }
    }

    if (j_begin < j_end && OVL) {
        // Two (K, V) stages, K one tile ahead of V: S_{j+1} = Q·K_{j+1}ᵀ is issued before the
        // softmax of S_j, in the same basic block, so the tensor work of one overlaps the FP32
        // work of the other (FA3's intra-warp overlap, with mma.sync). Stage s holds K_i and V_i
        // for i − j_begin ≡ s (mod 2); K_{j+2} and V_{j+1} are copied during tile j.
        load_tile<BR, DP>(aQ, gQ, q0, rows, d, tid);
        load_tile<BC, DP>(aKV, gK, j_begin * BC, nk, d, tid);
        cp_async_commit();
        if (j_begin + 1 < j_end) load_tile<BC, DP>(aKV + STAGE * 2, gK, (j_begin + 1) * BC, nk, d, tid);
        load_tile<BC, DP>(aKV + BC * STR * 2, gV, j_begin * BC, nk, d, tid);
        cp_async_commit();
        cp_async_wait<1>();  // Q and K_{j_begin} landed
        __syncthreads();
        load_q_frags();
        float s[MT][NTS][4];
        qk(s, aKV, no_overlap);
        scores(s, j_begin * BC);

        for (int j = j_begin;; ++j) {
            const int n0 = j * BC;
            const unsigned aCur = aKV + ((j - j_begin) & 1) * STAGE * 2, aNext = aKV + ((j + 1 - j_begin) & 1) * STAGE * 2;
            cp_async_wait<0>();  // K_{j+1} and V_j landed
            __syncthreads();     // visible; every warp is done with K_j and V_{j−1}
            // Here, not just before P·V: S_{j+1} and P_j are not live yet (fewer registers).
            if (boundary(n0)) guard_v(aCur + BC * STR * 2, n0);
            unsigned pa[MT][KSP][4];
            if (j + 1 == j_end) {
                softmax(s, pa);
                pv(pa, aCur + BC * STR * 2);
                break;
            }
            if (j + 2 < j_end) load_tile<BC, DP>(aCur, gK, n0 + 2 * BC, nk, d, tid);
            load_tile<BC, DP>(aNext + BC * STR * 2, gV, n0 + BC, nk, d, tid);
            cp_async_commit();
            // Tile j's softmax runs in steps between tile j+1's k-steps (qk above).
            float sn[MT][NTS][4];
            Overlap ov{&s, {}, {}, {}, false};
            qk(sn, aNext, &ov);
            finish(s, ov.alpha, ov.raised, ov.sum, pa);
            pv(pa, aCur + BC * STR * 2);
            scores(sn, n0 + BC);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                for (int nt = 0; nt < NTS; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) s[mt][nt][e] = sn[mt][nt][e];
                }
            }
        }
    }

    // Epilogue: finish the row sums, normalize, write O and LSE (or this split's partials). The
    // block's rows are recomputed from opaque copies of blockIdx rather than held in registers
    // across the key loop (ptxas spilled them at d128 _mods 128×64).
    const BlockRows<MODS> er(p, opaque(blockIdx.y), opaque(blockIdx.z));
    const long long row0 = er.row0;
    const bool partial = p.num_splits > 1;
    const long long total_rows = (long long)p.batch * p.heads * p.nq;
    float* o_out = partial ? p.o_accum + er.split * total_rows * d : p.o;
    float* lse_out = partial ? p.lse_accum + er.split * total_rows : p.lse;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            float l = l_i[mt][rr];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            float inv = l == 0.f ? 0.f : 1.f / l;
            float lse_v = l == 0.f ? neg_inf() : (m_i[mt][rr] * scale_log2 + fast_log2(l)) * 0.6931471805599453f;
            if (MODS && p.sinks != nullptr && !partial) {
                // The sink joins the denominator once: here, or in flash_combine when split.
                const float sk = p.sinks[er.h0] * 1.4426950408889634f;
                const float mm = l == 0.f ? neg_inf() : m_i[mt][rr] * scale_log2;
                const float mf = fmaxf(mm, sk);
                const float a = l == 0.f ? 0.f : fast_exp2(mm - mf);
                const float ls = l * a + fast_exp2(sk - mf);
                inv = a / ls;
                lse_v = (mf + fast_log2(ls)) * 0.6931471805599453f;
            }
            const int row = row_base + mt * 16 + 8 * rr;
            // Local row from threadIdx (as row_base is built), not row − q0: no q0 kept live.
            const int lrow = (int)(opaque(threadIdx.x) >> 5) * 16 * MT + (int)((opaque(threadIdx.x) & 31) >> 2) + mt * 16 + 8 * rr;
            if (*nan_flag(lrow) != 0u) inv = __int_as_float(0x7fc00000);  // saw a NaN/∞ in V
            if (row < er.rows) {
                float* o_row = o_out + (row0 + row) * d;
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
                if (t == 0) lse_out[row0 + row] = lse_v;
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Entry points. FLASH_ONLY(DT, DP) restricts the module to one variant (the runtime path
// compiles only what it launches); without it every variant is instantiated. flash_combine
// (kernels/flash_combine.cu, appended to this source by the host) is in every module.
// ------------------------------------------------------------------------------------------
// _mods entry points (MODS = true) add softcap, ALiBi, sinks, varlen and seqused_k; the plain
// ones keep the registers of the unmodified kernel.
#define FLASH_ENTRY(DT, IS_BF16, DP, SUF, MODS)                                                                 \
    extern "C" __global__ void __launch_bounds__(FLASH_THREADS) flash_fwd_##DT##_d##DP##SUF(const FlashFwdParams p) { \
        flash_fwd_body<DP, IS_BF16, MODS>(p);                                                                   \
    }
#define FLASH_ENTRY_PAIR(DT, IS_BF16, DP) FLASH_ENTRY(DT, IS_BF16, DP, , false) FLASH_ENTRY(DT, IS_BF16, DP, _mods, true)

#define FLASH_ALL_VARIANTS(X)                                                                                  \
    X(f16, false, 32) X(f16, false, 48) X(f16, false, 64) X(f16, false, 80) X(f16, false, 96)                  \
    X(f16, false, 128) X(f16, false, 160) X(f16, false, 192) X(f16, false, 256)                                \
    X(bf16, true, 32) X(bf16, true, 48) X(bf16, true, 64) X(bf16, true, 80) X(bf16, true, 96)                  \
    X(bf16, true, 128) X(bf16, true, 160) X(bf16, true, 192) X(bf16, true, 256)

#if defined(FLASH_ONLY_DT) && defined(FLASH_ONLY_DP) && defined(FLASH_ONLY_MODS)
#define FLASH_EXPAND(DT, BF, DP, SUF, M) FLASH_ENTRY(DT, BF, DP, SUF, M)
FLASH_EXPAND(FLASH_ONLY_DT, FLASH_ONLY_BF16, FLASH_ONLY_DP, FLASH_ONLY_SUF, FLASH_ONLY_MODS)
#else
FLASH_ALL_VARIANTS(FLASH_ENTRY_PAIR)
#endif
