// flash_common.cuh — device helpers shared by the forward (kernels/flash_fwd.cu) and the
// backward (kernels/flash_bwd.cu): the key band of a query row and the softcap's tanh.
//
// Not a standalone file: the host prepends it after kernels/flash_ptx.cuh (src/cuda/mod.rs), and
// the emulator drivers include it after kernels/cuda_host_emu.hpp; it uses only their primitives.

// Key band of query position i: [lo, hi). Window bounds are pre-clamped by the host (−1 =
// unbounded, causal folded into right = 0), so nothing here overflows 32 bits.
DEVI int band_lo(int i, int off, int left) { return left >= 0 ? max(0, i + off - left) : 0; }
DEVI int band_hi(int i, int off, int right, int nk) { return right >= 0 ? min(nk, i + off + right + 1) : nk; }

// The softcap c·tanh(s/c) of a scaled score s, with tanh(s/c) in *t (the backward's chain term),
// on the CPU kernels' rational fit (src/simd/score_mod.rs: tanh x = x·p(x²)/q(x²) on |x| ≤ 7.905,
// the fit Eigen and MLAS use) multiplied by the clamped score y rather than by c·x: relative
// precision at every cap. The exp form c·(1 − 2/(e^{2x} + 1)) has absolute error ~1e-7, a relative
// 1e-7·c/|s| for small s/c, and s/c is subnormal for a cap near FLT_MAX, which flush-to-zero
// turns into a zero score. `bound` = min(c·7.905311, FLT_MAX); NaN stays NaN.
DEVI float softcap_score(float s, float inv_cap, float bound, float* t) {
    const float y = fabsf(s) > bound ? copysignf(bound, s) : s;
    const float x = y * inv_cap, x2 = x * x;
    float p = -2.7607685e-16f;
    p = fmaf(p, x2, 2.000188e-13f);
    p = fmaf(p, x2, -8.604672e-11f);
    p = fmaf(p, x2, 5.122297e-8f);
    p = fmaf(p, x2, 1.4857224e-5f);
    p = fmaf(p, x2, 6.3726193e-4f);
    p = fmaf(p, x2, 4.8935246e-3f);
    float q = 1.1982584e-6f;
    q = fmaf(q, x2, 1.1853471e-4f);
    q = fmaf(q, x2, 2.2684347e-3f);
    q = fmaf(q, x2, 4.893525e-3f);
    const float pr = p * fast_rcp(q);
    *t = x * pr;
    return y * pr;
}

// The host-side constant of softcap_score: the clamp in score units, finite.
DEVI float softcap_bound(float cap) { return fminf(cap * 7.905311f, 3.4028235e38f); }
