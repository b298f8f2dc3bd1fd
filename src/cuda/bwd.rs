//! The backward kernels of `flash-cuda` (`kernels/flash_bwd.cu`): their argument
//! [`FlashBwdParams`], the compiled variants and the launch plan of one backward call.
//!
//! Algorithm (the kernel's header has the details): a preprocess kernel computes D = rowsum(dO∘O)
//! and zeroes `num_splits` dQ partial buffers; the main kernel runs a grid (splits, H_kv,
//! sequences), each block owning every `splits`-th key block of one KV head, with dK/dV in
//! registers across the query heads of the group; a convert kernel sums the dQ partials in split
//! order; a fourth kernel reduces the sink gradient per head. No atomics: bitwise deterministic.
//!
//! Complexity: 2.5× the forward's FLOPs on CUDA cores (FP32 FMAs, not tensor cores), device
//! memory O(splits·B·H·N_q·D) for the dQ partials beyond the gradients. Caveat: not yet run on a
//! GPU; checked by NVRTC/ptxas (tests/cuda_nvrtc.rs) and host emulation
//! (tests/cuda_emulated_bwd.rs) only.

use super::params::layout_string_of;
use super::variants::{HEAD_DIMS, alibi_seq_stride, kernel_bf16, kernel_window, unsupported_reasons};
use crate::problem::{DType, Problem};
use std::mem::offset_of;

/// The backward kernels' source for NVRTC: the PTX primitives, the shared helpers, the kernels.
pub const FLASH_BWD_SRC: &str = concat!(
    include_str!("../../kernels/flash_ptx.cuh"),
    include_str!("../../kernels/flash_common.cuh"),
    include_str!("../../kernels/flash_bwd.cu")
);

/// D = rowsum(dO∘O) and the zeroed dQ partials; in every backward module.
pub const BWD_PREPROCESS_KERNEL: &str = "flash_bwd_preprocess";
/// dQ = Σ of the partials in split order; in every backward module.
pub const BWD_CONVERT_KERNEL: &str = "flash_bwd_convert";
/// The sink-logit gradient, one block per head; in every backward module.
pub const BWD_DSINK_KERNEL: &str = "flash_bwd_dsink";
/// Threads per block of the main, convert and dsink kernels.
pub const BWD_THREADS: u32 = 128;
/// Rows per preprocess block (one warp each).
pub const BWD_ROWS_PER_BLOCK: usize = 4;
/// Most dQ partial buffers (each B·H·N_q·D floats).
pub const MAX_BWD_SPLITS: usize = 16;

/// Arguments of every backward entry point, mirrored by `struct FlashBwdParams` in
/// `kernels/flash_bwd.cu` (tests/cuda_emulated_bwd.rs compares the layouts). Addresses are
/// device pointers on a GPU, host pointers under emulation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FlashBwdParams {
    /// 16-bit Q, K, V.
    pub q: u64,
    pub k: u64,
    pub v: u64,
    /// f32 O and dO, B·H·N_q·D.
    pub o: u64,
    pub dout: u64,
    /// f32 LSE of the forward, B·H·N_q.
    pub lse: u64,
    /// f32 D, B·H·N_q (scratch written by the preprocess kernel).
    pub delta: u64,
    /// f32 dQ partials, num_splits·B·H·N_q·D (scratch).
    pub dq_accum: u64,
    /// f32 gradients: dQ (B·H·N_q·D), dK and dV (B·H_kv·N_k·D), dsinks (H,) or 0.
    pub dq: u64,
    pub dk: u64,
    pub dv: u64,
    pub dsinks: u64,
    pub batch: i32,
    pub heads: i32,
    pub kv_heads: i32,
    pub nq: i32,
    pub nk: i32,
    pub d: i32,
    /// Softmax scale, natural units.
    pub scale: f32,
    /// Window bounds with causal folded in, clamped; −1 = unbounded (as the forward's).
    pub win_left: i32,
    pub win_right: i32,
    /// dQ partial buffers = key-block residues per block row.
    pub num_splits: i32,
    /// Softcap `c`, 0 = off.
    pub softcap: f32,
    /// 0 for (H,) ALiBi slopes, H for (S, H).
    pub alibi_seq_stride: i32,
    pub alibi_slopes: u64,
    pub sinks: u64,
    pub cu_seqlens_q: u64,
    pub cu_seqlens_k: u64,
    pub seqused_k: u64,
}

impl FlashBwdParams {
    /// (field, byte offset) in declaration order; the C side prints the same list.
    pub const LAYOUT: [(&'static str, usize); 29] = [
        ("q", offset_of!(Self, q)),
        ("k", offset_of!(Self, k)),
        ("v", offset_of!(Self, v)),
        ("o", offset_of!(Self, o)),
        ("dout", offset_of!(Self, dout)),
        ("lse", offset_of!(Self, lse)),
        ("delta", offset_of!(Self, delta)),
        ("dq_accum", offset_of!(Self, dq_accum)),
        ("dq", offset_of!(Self, dq)),
        ("dk", offset_of!(Self, dk)),
        ("dv", offset_of!(Self, dv)),
        ("dsinks", offset_of!(Self, dsinks)),
        ("batch", offset_of!(Self, batch)),
        ("heads", offset_of!(Self, heads)),
        ("kv_heads", offset_of!(Self, kv_heads)),
        ("nq", offset_of!(Self, nq)),
        ("nk", offset_of!(Self, nk)),
        ("d", offset_of!(Self, d)),
        ("scale", offset_of!(Self, scale)),
        ("win_left", offset_of!(Self, win_left)),
        ("win_right", offset_of!(Self, win_right)),
        ("num_splits", offset_of!(Self, num_splits)),
        ("softcap", offset_of!(Self, softcap)),
        ("alibi_seq_stride", offset_of!(Self, alibi_seq_stride)),
        ("alibi_slopes", offset_of!(Self, alibi_slopes)),
        ("sinks", offset_of!(Self, sinks)),
        ("cu_seqlens_q", offset_of!(Self, cu_seqlens_q)),
        ("cu_seqlens_k", offset_of!(Self, cu_seqlens_k)),
        ("seqused_k", offset_of!(Self, seqused_k)),
    ];

    /// The layout as `name=offset,…,size=S,align=A`, the format the emulator driver prints.
    pub fn layout_string() -> String {
        layout_string_of::<Self>(&Self::LAYOUT)
    }

    /// These params with the inputs' addresses: Q, K, V (16-bit), O, dO, LSE (f32).
    pub fn with_inputs(self, [q, k, v, o, dout, lse]: [u64; 6]) -> Self {
        Self { q, k, v, o, dout, lse, ..self }
    }

    /// These params with the outputs' and scratch addresses: dQ, dK, dV, dsinks (0 = none), D,
    /// dQ partials.
    pub fn with_outputs(self, [dq, dk, dv, dsinks, delta, dq_accum]: [u64; 6]) -> Self {
        Self { dq, dk, dv, dsinks, delta, dq_accum, ..self }
    }

    /// These params with the modifier buffers' addresses, in [`super::ModData`] order.
    pub fn with_mods(self, [alibi_slopes, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k]: [u64; 5]) -> Self {
        Self { alibi_slopes, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, ..self }
    }
}

/// (DP, BC keys, BR query rows) per padded head dim, as `FlashBwdCfg<DP>` in the kernel:
/// BC·DP ≤ 4096 keeps dK + dV at ≤ 64 registers per thread.
const BWD_CFG: [(usize, usize, usize); 9] = [
    (32, 64, 32),
    (48, 64, 32),
    (64, 64, 32),
    (80, 32, 32),
    (96, 32, 32),
    (128, 32, 32),
    (160, 16, 16),
    (192, 16, 16),
    (256, 16, 16),
];

/// One main backward entry point: `flash_bwd_{f16|bf16}_d{dp}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BwdVariant {
    pub bf16: bool,
    /// Padded head dim.
    pub dp: usize,
    /// Keys per key block (dK/dV tile).
    pub bc: usize,
    /// Query rows per tile.
    pub br: usize,
}

impl BwdVariant {
    /// f32 K and V tiles BC×(DP+1), Q and dO BR×DP, P and dS BR×BC, LSE and D for BR rows.
    pub fn smem_bytes(&self) -> usize {
        (2 * self.bc * (self.dp + 1) + 2 * self.br * self.dp + 2 * self.br * self.bc + 2 * self.br) * 4
    }
    pub fn dtype_name(&self) -> &'static str {
        if self.bf16 { "bf16" } else { "f16" }
    }
    pub fn kernel_name(&self) -> String {
        format!("flash_bwd_{}_d{}", self.dtype_name(), self.dp)
    }
    /// NVRTC defines that restrict the module to this main variant (plus the three helpers).
    pub fn only_defines(&self) -> Vec<String> {
        vec![
            format!("-DFLASH_BWD_ONLY_DT={}", self.dtype_name()),
            format!("-DFLASH_BWD_ONLY_BF16={}", self.bf16),
            format!("-DFLASH_BWD_ONLY_DP={}", self.dp),
        ]
    }
}

/// Every main backward variant, f16 then bf16.
pub fn bwd_variants() -> Vec<BwdVariant> {
    [false, true]
        .into_iter()
        .flat_map(|bf16| BWD_CFG.iter().map(move |&(dp, bc, br)| BwdVariant { bf16, dp, bc, br }))
        .collect()
}

/// The variant that runs `head_dim` in a 16-bit `kernel_dtype` (the forward's padding rule).
pub fn bwd_variant_for(kernel_dtype: DType, head_dim: usize) -> Option<BwdVariant> {
    let bf16 = kernel_bf16(kernel_dtype, head_dim)?;
    debug_assert_eq!(BWD_CFG.map(|c| c.0), HEAD_DIMS);
    bwd_variants().into_iter().find(|v| v.bf16 == bf16 && v.dp >= head_dim)
}

/// Everything one backward call launches, derived from the problem.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlashBwdLaunch {
    pub variant: BwdVariant,
    /// Main kernel: (splits, H_kv, sequences).
    pub grid: (u32, u32, u32),
    pub smem_bytes: u32,
    /// Blocks of the preprocess kernel (B·H·N_q / [`BWD_ROWS_PER_BLOCK`]).
    pub preprocess_blocks: u32,
    /// Blocks of the convert kernel (B·H·N_q·D / [`BWD_THREADS`]).
    pub convert_blocks: u32,
    /// Blocks of the dsink kernel (H), when the problem has sinks.
    pub dsink_blocks: Option<u32>,
    /// Every scalar set, every address 0.
    pub params: FlashBwdParams,
}

impl FlashBwdLaunch {
    /// The backward launch for `p` on a GPU of `sms` multiprocessors. `Err` lists why it cannot
    /// run (the forward's reasons: bias and mask refused, head_dim, index limits).
    ///
    /// Splits: enough key-block residues that (splits · H_kv · sequences) blocks fill two waves
    /// of `sms`, at most the key blocks of the longest sequence and [`MAX_BWD_SPLITS`] (each
    /// split costs a dQ-sized f32 buffer and one read of it in the convert kernel).
    pub fn plan_for(p: &Problem, kernel_dtype: DType, sms: usize) -> Result<Self, Vec<String>> {
        let mut reasons = unsupported_reasons(p);
        let variant = bwd_variant_for(kernel_dtype, p.head_dim);
        if variant.is_none() && reasons.is_empty() {
            reasons.push(format!("no backward variant for dtype {kernel_dtype} and head_dim {}", p.head_dim));
        }
        let (Some(variant), true) = (variant, reasons.is_empty()) else {
            return Err(reasons);
        };
        let m = &p.mods;
        let seqs = p.num_seqs();
        let max_k = match &m.varlen {
            Some(v) => v.cu_seqlens_k.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0),
            None => p.seq_k,
        };
        let base = (p.kv_heads * seqs).max(1);
        let key_blocks = max_k.div_ceil(variant.bc).max(1);
        let splits = (2 * sms).div_ceil(base).min(key_blocks).clamp(1, MAX_BWD_SPLITS);
        let (win_left, win_right) = kernel_window(p);
        let rows = p.batch * p.heads * p.seq_q;
        Ok(FlashBwdLaunch {
            variant,
            grid: (splits as u32, p.kv_heads as u32, seqs as u32),
            smem_bytes: variant.smem_bytes() as u32,
            preprocess_blocks: rows.div_ceil(BWD_ROWS_PER_BLOCK).max(1) as u32,
            convert_blocks: (rows * p.head_dim).div_ceil(BWD_THREADS as usize).max(1) as u32,
            dsink_blocks: m.sinks.as_ref().map(|_| p.heads as u32),
            params: FlashBwdParams {
                batch: p.batch as i32,
                heads: p.heads as i32,
                kv_heads: p.kv_heads as i32,
                nq: p.seq_q as i32,
                nk: p.seq_k as i32,
                d: p.head_dim as i32,
                scale: p.scale,
                win_left,
                win_right,
                num_splits: splits as i32,
                softcap: m.softcap.unwrap_or(0.0),
                alibi_seq_stride: alibi_seq_stride(p),
                ..FlashBwdParams::default()
            },
        })
    }

    /// dQ partial buffers.
    pub fn splits(&self) -> usize {
        self.params.num_splits as usize
    }

    /// f32 elements of the scratch: (D, dQ partials).
    pub fn scratch_elems(&self) -> (usize, usize) {
        let p = &self.params;
        let rows = p.batch as usize * p.heads as usize * p.nq as usize;
        (rows, self.splits() * rows * p.d as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_has_no_hidden_padding() {
        // 12 pointers, 12 four-byte fields, 5 pointers: every byte belongs to a named field.
        assert_eq!(size_of::<FlashBwdParams>(), 17 * 8 + 12 * 4);
        assert!(FlashBwdParams::layout_string().ends_with("seqused_k=176,size=184,align=8"));
    }

    #[test]
    fn plan_splits_key_blocks_and_refuses_like_the_forward() {
        // 1 × 2 KV heads, 1000 keys of d64 (16 key blocks of 64): ⌈264/2⌉ capped by 16 blocks.
        let p = Problem::new(1, 4, 300, 64).with_kv_heads(2).with_seq_k(1000);
        let l = FlashBwdLaunch::plan_for(&p, DType::F16, 132).unwrap();
        assert_eq!(l.grid, (16, 2, 1));
        assert_eq!(l.scratch_elems(), (4 * 300, 16 * 4 * 300 * 64));
        assert_eq!((l.variant.bc, l.variant.br), (64, 32));
        // Many blocks already: one split, no extra dQ buffer beyond the one partial.
        let big = Problem::new(64, 32, 128, 128);
        assert_eq!(FlashBwdLaunch::plan_for(&big, DType::BF16, 132).unwrap().splits(), 1);
        let r = FlashBwdLaunch::plan_for(&Problem::new(1, 1, 8, 60), DType::F16, 132).unwrap_err();
        assert!(r[0].contains("multiple of 8"), "{r:?}");
        assert_eq!(bwd_variant_for(DType::BF16, 136).map(|v| (v.dp, v.bf16)), Some((160, true)));
        assert!(bwd_variant_for(DType::F32, 64).is_none());
    }
}
