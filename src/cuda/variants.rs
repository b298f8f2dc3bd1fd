//! The compiled variants of `kernels/flash_fwd.cu` and the launch plan for one problem: tile
//! variant, GQA head packing for decode, and the split-KV (flash-decoding) choice.
//!
//! The table here mirrors `FlashCfg<DP>` in the kernel source; tests/cuda_emulated.rs checks
//! the two agree through the emulator's `attnkit_emu_config`.

use super::params::FlashFwdParams;
use crate::problem::{DType, Problem};

/// Threads per block (4 warps).
pub const THREADS: u32 = 128;

/// Padded head dims with a compiled variant; head_dim d runs on the smallest DP ≥ d.
pub const HEAD_DIMS: [usize; 9] = [32, 48, 64, 80, 96, 128, 160, 192, 256];

/// Rows merged per block by `flash_combine` (one warp each).
pub const COMBINE_ROWS_PER_BLOCK: usize = 4;

/// Most key splits per row (keeps the partial buffers and the combine loop small).
pub const MAX_SPLITS: usize = 128;

/// SMs assumed when the caller does not know the device (an H100 SXM has 132).
pub const DEFAULT_SMS: usize = 132;

/// One row of the variant table: (DP, BC, MT, Q in registers, K/V stages, overlapped softmax).
type Cfg = (usize, usize, usize, bool, usize, bool);

/// As in `FlashCfg<DP>`: FA2's tiles (d64 128×128, d128 128×64, d256 64×64) on FA2's one-buffer
/// schedule, two stages where they fit, Q·K_{j+1}ᵀ overlapped with tile j's softmax where the
/// registers allow (d160, d192); chosen so ptxas 12 and 13 report zero spills (kernels/README.md).
const CFG: [Cfg; 9] = [
    (32, 128, 2, true, 2, false),
    (48, 128, 2, false, 1, false),
    (64, 128, 2, false, 1, false),
    (80, 64, 2, false, 2, false),
    (96, 64, 2, false, 2, false),
    (128, 64, 2, false, 1, false),
    (160, 32, 1, false, 2, true),
    (192, 32, 1, false, 2, true),
    (256, 64, 1, false, 1, false),
];

/// One kernel entry point: `flash_fwd_{f16|bf16}_d{dp}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    pub bf16: bool,
    /// Padded head dim the variant is compiled for.
    pub dp: usize,
    /// Keys per KV tile.
    pub bc: usize,
    /// m16 row tiles per warp.
    pub mt: usize,
    /// Q fragments kept in registers across KV tiles.
    pub q_in_regs: bool,
    /// K/V buffers: 2 = two (K, V) stages, tile j+1 copied during tile j (one barrier per tile);
    /// 1 = one K and one V buffer, V_j copied during Q·K_jᵀ and K_{j+1} during P·V_j (FA2's
    /// schedule, two barriers per tile, half the K/V shared memory).
    pub stages: usize,
    /// Two stages with K one tile ahead: Q·K_{j+1}ᵀ is issued before tile j's softmax (the
    /// kernel's `OVL`), costing a second S accumulator (MT·BC/2 registers per thread).
    pub overlap: bool,
    /// The `_mods` entry point: softcap, ALiBi, sinks, varlen and seqused_k (compiled apart so
    /// the plain kernel keeps its registers).
    pub mods: bool,
}

impl Variant {
    /// Query rows per thread block.
    pub fn br(&self) -> usize {
        16 * self.mt * (THREADS as usize / 32)
    }
    /// Dynamic shared memory per block: the Q tile and `stages` (K, V) tile pairs, rows padded by
    /// 8 halves.
    pub fn smem_bytes(&self) -> usize {
        (self.br() + 2 * self.stages * self.bc) * (self.dp + 8) * 2
    }
    /// `__syncthreads` per key tile: one with two stages, two on the one-buffer schedule.
    pub fn barriers_per_tile(&self) -> usize {
        if self.stages == 1 { 2 } else { 1 }
    }
    pub fn dtype_name(&self) -> &'static str {
        if self.bf16 { "bf16" } else { "f16" }
    }
    /// The `extern "C"` entry point name.
    pub fn kernel_name(&self) -> String {
        format!("flash_fwd_{}_d{}{}", self.dtype_name(), self.dp, if self.mods { "_mods" } else { "" })
    }
    /// NVRTC defines that restrict the module to this variant.
    pub fn only_defines(&self) -> Vec<String> {
        vec![
            format!("-DFLASH_ONLY_DT={}", self.dtype_name()),
            format!("-DFLASH_ONLY_BF16={}", if self.bf16 { "true" } else { "false" }),
            format!("-DFLASH_ONLY_DP={}", self.dp),
            format!("-DFLASH_ONLY_SUF={}", if self.mods { "_mods" } else { "" }),
            format!("-DFLASH_ONLY_MODS={}", self.mods),
        ]
    }
}

/// Every compiled variant: f16 then bf16, plain then `_mods` for each.
pub fn variants() -> Vec<Variant> {
    [false, true]
        .into_iter()
        .flat_map(|bf16| {
            [false, true].into_iter().flat_map(move |mods| {
                // The `_mods` entry points run the plain tiles (`FlashCfgM` in the kernel).
                CFG.iter().map(move |&(dp, bc, mt, q_in_regs, stages, overlap)| Variant {
                    bf16,
                    dp,
                    bc,
                    mt,
                    q_in_regs,
                    stages,
                    overlap,
                    mods,
                })
            })
        })
        .collect()
}

/// Whether a 16-bit kernel dtype is bf16, for a head_dim the kernels can pad (a multiple of 8);
/// `None` for f32 or another head_dim. Shared by the forward and backward variant choice.
pub(crate) fn kernel_bf16(kernel_dtype: DType, head_dim: usize) -> Option<bool> {
    let bf16 = match kernel_dtype {
        DType::F16 => false,
        DType::BF16 => true,
        DType::F32 => return None,
    };
    (head_dim > 0 && head_dim.is_multiple_of(8)).then_some(bf16)
}

/// The variant that runs `head_dim` for a 16-bit kernel dtype.
pub fn variant_for(kernel_dtype: DType, head_dim: usize) -> Option<Variant> {
    let bf16 = kernel_bf16(kernel_dtype, head_dim)?;
    variants().into_iter().find(|v| v.bf16 == bf16 && !v.mods && v.dp >= head_dim)
}

/// Every reason the kernel cannot run `p` (dtype aside: f32 is converted before launch).
pub fn unsupported_reasons(p: &Problem) -> Vec<String> {
    let mut r = Vec::new();
    let max_d = *HEAD_DIMS.last().unwrap_or(&0);
    if !p.head_dim.is_multiple_of(8) || p.head_dim > max_d {
        r.push(format!("head_dim {} must be a multiple of 8 and ≤ {max_d} (16-byte cp.async rows)", p.head_dim));
    }
    if p.seq_q as u64 + p.seq_k as u64 >= 1 << 30 {
        r.push(format!(
            "seq_q + seq_k = {} must be < 2^30 (the kernel's 32-bit row/key index math)",
            p.seq_q as u64 + p.seq_k as u64
        ));
    }
    if p.heads > 65_535 || p.num_seqs() > 65_535 {
        r.push(format!("heads ({}) and sequences ({}) must be ≤ 65535 (grid y/z limits)", p.heads, p.num_seqs()));
    }
    if p.mods.diag_shift != 0 {
        r.push(format!(
            "diagonal shift {} is not in the CUDA kernel (its band and ALiBi use the bottom-right diagonal); use flash-cpu",
            p.mods.diag_shift
        ));
    }
    if p.mods.bias.is_some() || p.mods.mask.is_some() {
        r.push(
            "additive bias and boolean mask are not in the CUDA kernel (a per-element global load in the score \
             loop of variants mostly at 238-255 registers); use flash-cpu"
                .into(),
        );
    }
    r
}

/// The kernels' window bounds (forward and backward): causal folded in, −1 = unbounded. Clamping
/// keeps the band identical: left ≥ N_k already admits key 0 for every row, and right ≥ N_q
/// already admits key N_k − 1; afterwards all index sums fit in i32.
pub(crate) fn kernel_window(p: &Problem) -> (i32, i32) {
    let (left, right) = p.effective_window();
    (left.map_or(-1, |l| l.min(p.seq_k) as i32), right.map_or(-1, |r| r.min(p.seq_q) as i32))
}

/// Index stride of a sequence in the ALiBi slopes: 0 for (H,) slopes, H for (S, H).
pub(crate) fn alibi_seq_stride(p: &Problem) -> i32 {
    match &p.mods.alibi_slopes {
        Some(s) if s.len() != p.heads => p.heads as i32,
        _ => 0,
    }
}

/// Host copies of the modifier buffers the `_mods` kernel reads, in [`FlashFwdParams::with_mods`]
/// order; each is uploaded and its address passed (absent = 0).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModData {
    pub alibi_slopes: Option<Vec<f32>>,
    pub sinks: Option<Vec<f32>>,
    pub cu_seqlens_q: Option<Vec<i32>>,
    pub cu_seqlens_k: Option<Vec<i32>>,
    pub seqused_k: Option<Vec<i32>>,
}

impl ModData {
    /// The buffers of `p`'s modifiers (indices fit i32: the plan refuses N ≥ 2^30).
    pub fn of(p: &Problem) -> ModData {
        let ints = |v: &Vec<usize>| v.iter().map(|&x| x as i32).collect::<Vec<i32>>();
        let m = &p.mods;
        ModData {
            alibi_slopes: m.alibi_slopes.clone(),
            sinks: m.sinks.clone(),
            cu_seqlens_q: m.varlen.as_ref().map(|v| ints(&v.cu_seqlens_q)),
            cu_seqlens_k: m.varlen.as_ref().map(|v| ints(&v.cu_seqlens_k)),
            seqused_k: m.seqused_k.as_ref().map(ints),
        }
    }
}

/// Everything one launch needs, derived from the problem: the host side of the kernel contract.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlashLaunch {
    pub variant: Variant,
    /// (row tiles, heads / pack, batch · splits).
    pub grid: (u32, u32, u32),
    pub smem_bytes: u32,
    /// Blocks of `flash_combine` (rows / [`COMBINE_ROWS_PER_BLOCK`]) when split, else `None`.
    pub combine_blocks: Option<u32>,
    /// The kernel argument with every scalar set and the buffer addresses still 0
    /// (see [`FlashFwdParams::with_buffers`] and [`FlashFwdParams::with_accum`]).
    pub params: FlashFwdParams,
}

impl FlashLaunch {
    /// The launch for `p` with 16-bit inputs of `kernel_dtype`, for a GPU of [`DEFAULT_SMS`] SMs.
    pub fn plan(p: &Problem, kernel_dtype: DType) -> Result<FlashLaunch, Vec<String>> {
        Self::plan_for(p, kernel_dtype, DEFAULT_SMS)
    }

    /// The launch for `p` on a GPU with `sms` multiprocessors. `Err` lists why it cannot run.
    ///
    /// Decode with GQA (N_q = 1, H > H_kv) packs the H/H_kv query heads of a KV head into one
    /// block. When the blocks would fill under 80% of one wave of `sms`, the keys are split into
    /// up to `min(⌈sms/blocks⌉, key tiles, MAX_SPLITS)` ranges of whole key tiles (FA2's
    /// flash-decoding heuristic, simplified) and `flash_combine` merges the partials.
    pub fn plan_for(p: &Problem, kernel_dtype: DType, sms: usize) -> Result<FlashLaunch, Vec<String>> {
        let mut reasons = unsupported_reasons(p);
        let variant = variant_for(kernel_dtype, p.head_dim);
        if variant.is_none() && reasons.is_empty() {
            reasons.push(format!("no kernel variant for dtype {kernel_dtype} and head_dim {}", p.head_dim));
        }
        let (Some(mut variant), true) = (variant, reasons.is_empty()) else {
            return Err(reasons);
        };
        let m = &p.mods;
        if !m.active().is_empty() {
            let plain = variant;
            variant =
                variants().into_iter().find(|v| v.mods && v.bf16 == plain.bf16 && v.dp == plain.dp).unwrap_or(plain);
        }
        // Per-sequence lengths: grid x covers the longest sequence, z the sequences; a varlen
        // block past its sequence's rows returns at once.
        let seqs = p.num_seqs();
        let (max_q, max_k) = match &m.varlen {
            Some(v) => {
                let longest = |cu: &[usize]| cu.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
                (longest(&v.cu_seqlens_q), longest(&v.cu_seqlens_k))
            }
            None => (p.seq_q, p.seq_k),
        };
        let (win_left, win_right) = kernel_window(p);
        // Modifiers are per head (slopes, sinks): no GQA packing with them.
        let pack = if p.seq_q == 1 && p.heads > p.kv_heads && !variant.mods { p.heads / p.kv_heads } else { 1 };
        let q_tiles = (max_q * pack).div_ceil(variant.br()).max(1);
        let blocks = q_tiles * (p.heads / pack) * seqs;
        let key_tiles = max_k.div_ceil(variant.bc).max(1);
        let mut splits = if blocks * 5 >= sms * 4 {
            1
        } else {
            sms.div_ceil(blocks.max(1)).min(key_tiles).min(MAX_SPLITS).min(65_535 / seqs.max(1)).max(1)
        };
        // Whole key tiles per split, and no split left empty by the rounding.
        let tiles_per_split = key_tiles.div_ceil(splits);
        splits = key_tiles.div_ceil(tiles_per_split);
        let rows = p.batch * p.heads * p.seq_q;
        Ok(FlashLaunch {
            variant,
            grid: (q_tiles as u32, (p.heads / pack) as u32, (seqs * splits) as u32),
            smem_bytes: variant.smem_bytes() as u32,
            combine_blocks: (splits > 1).then(|| rows.div_ceil(COMBINE_ROWS_PER_BLOCK) as u32),
            params: FlashFwdParams {
                batch: p.batch as i32,
                heads: p.heads as i32,
                kv_heads: p.kv_heads as i32,
                nq: p.seq_q as i32,
                nk: p.seq_k as i32,
                d: p.head_dim as i32,
                scale_log2: p.scale * std::f32::consts::LOG2_E,
                win_left,
                win_right,
                num_splits: splits as i32,
                keys_per_split: (tiles_per_split * variant.bc) as i32,
                pack: pack as i32,
                softcap: m.softcap.unwrap_or(0.0),
                alibi_seq_stride: alibi_seq_stride(p),
                ..FlashFwdParams::default()
            },
        })
    }

    /// Key splits per row (1 = no split-KV).
    pub fn splits(&self) -> usize {
        self.params.num_splits as usize
    }

    /// f32 elements of the partial O and partial LSE buffers (0, 0 when unsplit).
    pub fn accum_elems(&self) -> (usize, usize) {
        if self.splits() <= 1 {
            return (0, 0);
        }
        let p = &self.params;
        let rows = p.batch as usize * p.heads as usize * p.nq as usize;
        (self.splits() * rows * p.d as usize, self.splits() * rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::Window;

    #[test]
    fn picks_smallest_padded_variant() {
        let cases = [
            (8, Some(32)),
            (32, Some(32)),
            (40, Some(48)),
            (64, Some(64)),
            (72, Some(80)),
            (128, Some(128)),
            (136, Some(160)),
            (256, Some(256)),
            (264, None),
            (60, None),
        ];
        for (d, want) in cases {
            assert_eq!(variant_for(DType::F16, d).map(|v| v.dp), want, "d={d}");
        }
        assert!(variant_for(DType::F32, 64).is_none());
        assert!(variant_for(DType::BF16, 64).unwrap().bf16);
    }

    #[test]
    fn plan_clamps_windows_and_folds_causal() {
        let p = Problem::new(2, 4, 100, 64)
            .with_kv_heads(2)
            .with_seq_k(300)
            .with_window(Window::new(1 << 40, 1 << 40))
            .with_dtype(DType::F16);
        let l = FlashLaunch::plan_for(&p, DType::F16, 1).unwrap();
        assert_eq!((l.params.win_left, l.params.win_right), (300, 100));
        assert_eq!(l.grid, (100u32.div_ceil(128), 4, 2), "one SM: no split");
        let c = p.clone().with_causal(true);
        assert_eq!(FlashLaunch::plan(&c, DType::F16).unwrap().params.win_right, 0);
        let r = FlashLaunch::plan(&Problem::new(1, 1, 8, 60), DType::F16).unwrap_err();
        assert!(r[0].contains("multiple of 8"), "{r:?}");
    }

    #[test]
    fn decode_packs_gqa_heads_and_splits_keys() {
        // 32 query heads on 8 KV heads, one query, 4096 keys: 8 packed blocks, far under a wave.
        let p = Problem::new(1, 32, 1, 128).with_kv_heads(8).with_seq_k(4096);
        let l = FlashLaunch::plan_for(&p, DType::F16, 132).unwrap();
        assert_eq!(l.params.pack, 4);
        assert_eq!((l.grid.0, l.grid.1), (1, 8));
        // ⌈132/8⌉ = 17 wanted; 64 key tiles of 64 in whole ranges of ⌈64/17⌉ = 4 tiles → 16.
        assert_eq!(l.splits(), 16, "{l:?}");
        assert_eq!(l.grid.2, 16);
        let kps = l.params.keys_per_split as usize;
        assert!(kps.is_multiple_of(l.variant.bc) && kps * l.splits() >= 4096 && kps * (l.splits() - 1) < 4096);
        assert_eq!(l.combine_blocks, Some(32u32.div_ceil(4)));
        assert_eq!(l.accum_elems(), (16 * 32 * 128, 16 * 32));
        // Enough blocks for a wave: no split, keys_per_split covers every key.
        let big = Problem::new(8, 32, 2048, 128);
        let l = FlashLaunch::plan_for(&big, DType::F16, 132).unwrap();
        assert_eq!((l.splits(), l.params.pack, l.combine_blocks), (1, 1, None));
        assert!(l.params.keys_per_split >= 2048);
        // N_q > 1 never packs; splits never exceed the key tiles.
        let few = Problem::new(1, 2, 3, 64).with_kv_heads(1).with_seq_k(100);
        let l = FlashLaunch::plan_for(&few, DType::F16, 132).unwrap();
        assert_eq!(l.params.pack, 1);
        assert_eq!(l.splits(), 100usize.div_ceil(l.variant.bc));
    }
}
