// flash_common.cuh — device helpers shared by the forward (kernels/flash_fwd.cu) and the
// backward (kernels/flash_bwd.cu): the key band of a query row and the softcap's tanh.
//
// Not a standalone file: the host prepends it after kernels/flash_ptx.cuh (src/cuda/mod.rs), and
// the emulator drivers include it after kernels/cuda_host_emu.hpp; it uses only their primitives.

// Key band of query position i: [lo, hi). Window bounds are pre-clamped by the host (−1 =
// unbounded, causal folded into right = 0), so nothing here overflows 32 bits.
DEVI int band_lo(int i, int off, int left) { return left >= 0 ? max(0, i + off - left) : 0; }
DEVI int band_hi(int i, int off, int right, int nk) { return right >= 0 ? min(nk, i + off + right + 1) : nk; }

// tanh(x) = 1 − 2/(e^{2x} + 1): exact limits ±1, absolute error ~1e-7 with ex2.approx.
DEVI float softcap_tanh(float x) { return 1.f - 2.f * fast_rcp(fast_exp2(x * 2.8853900817779268f) + 1.f); }
