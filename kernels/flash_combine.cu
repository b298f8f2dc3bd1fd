// flash_combine.cu — merges split-KV partial results (the device counterpart of
// attnkit::merge_partials in src/lse.rs).
//
// Not a standalone file: the host appends it to kernels/flash_fwd.cu (FLASH_FWD_SRC in
// src/cuda/mod.rs; the emulator driver includes both), whose FlashFwdParams, neg_inf, fast_exp2
// and fast_log2 it uses. Entry point flash_combine(FlashFwdParams), grid ceil(B·H·N_q /
// COMBINE_ROWS_PER_BLOCK), 32·COMBINE_ROWS_PER_BLOCK threads, no shared memory. It reads
// num_splits partial rows of d floats per row and writes O and LSE once: memory-bound, a small
// fraction of the split forward pass's K/V traffic whenever N_k ≫ num_splits·d.

// Merges the num_splits partial (O, LSE) of each row: L = log Σ e^{L_s}, O = Σ e^{L_s − L} O_s.
// One warp per row, COMBINE_ROWS_PER_BLOCK rows per block; lanes own columns lane + 32·c.
// A row empty in every split stays O = 0, LSE = −∞; a NaN partial LSE makes the row NaN.
// Attention sinks join here, once per row, as one more partial with LSE = sink and O = 0 (split
// forward blocks leave them out), so an empty row gets O = 0, LSE = sink.
DEVI void flash_combine_body(const FlashFwdParams& p) {
    const long long total_rows = (long long)p.batch * p.heads * p.nq;
    const long long row = (long long)blockIdx.x * COMBINE_ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (row >= total_rows) return;  // warp-uniform
    const int lane = threadIdx.x & 31, d = p.d, splits = p.num_splits;
    constexpr float LOG2E = 1.4426950408889634f;
    // Rows are B·H·N_q (varlen: 1·H·total), so the head is (row / N_q) mod H.
    const float sink = p.sinks != nullptr ? p.sinks[(row / p.nq) % p.heads] : neg_inf();
    float mx = sink;
    for (int s = lane; s < splits; s += 32) mx = fmaxf(mx, p.lse_accum[s * total_rows + row]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = lane == 0 && sink != neg_inf() ? fast_exp2((sink - mx) * LOG2E) : 0.f;
    for (int s = lane; s < splits; s += 32) {
        const float ls = p.lse_accum[s * total_rows + row];
        sum += ls == neg_inf() ? 0.f : fast_exp2((ls - mx) * LOG2E);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    const bool empty = mx == neg_inf() && sum == 0.f;
    const float lse = empty ? neg_inf() : mx + fast_log2(sum) * 0.6931471805599453f;
    float acc[COMBINE_MAX_COLS];
#pragma unroll
    for (int c = 0; c < COMBINE_MAX_COLS; ++c) acc[c] = 0.f;
    if (!empty) {
        for (int s = 0; s < splits; ++s) {
            const float ls = p.lse_accum[s * total_rows + row];
            if (ls == neg_inf()) continue;  // uniform: an empty split adds nothing
            const float w = fast_exp2((ls - lse) * LOG2E);
            const float* src = p.o_accum + (s * total_rows + row) * d;
#pragma unroll
            for (int c = 0; c < COMBINE_MAX_COLS; ++c) {
                if (lane + 32 * c < d) acc[c] += w * src[lane + 32 * c];
            }
        }
    }
#pragma unroll
    for (int c = 0; c < COMBINE_MAX_COLS; ++c) {
        if (lane + 32 * c < d) p.o[row * d + lane + 32 * c] = acc[c];
    }
    if (lane == 0) p.lse[row] = lse;
}

extern "C" __global__ void __launch_bounds__(32 * COMBINE_ROWS_PER_BLOCK) flash_combine(const FlashFwdParams p) {
    flash_combine_body(p);
}
