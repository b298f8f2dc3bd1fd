//! The compiled variants of `kernels/flash_fwd.cu` and the launch plan for one problem.
//!
//! The table here mirrors `FlashCfg<DP>` in the kernel source; tests/cuda_emulated.rs checks
//! the two agree through the emulator's `attnkit_emu_config`.

use super::params::FlashFwdParams;
use crate::problem::{DType, Problem};

/// Threads per block (4 warps).
pub const THREADS: u32 = 128;

/// Padded head dims with a compiled variant; head_dim d runs on the smallest DP ≥ d.
pub const HEAD_DIMS: [usize; 9] = [32, 48, 64, 80, 96, 128, 160, 192, 256];

/// (DP, BC, MT, Q in registers), as in `FlashCfg<DP>`.
const CFG: [(usize, usize, usize, bool); 9] = [
    (32, 64, 2, true),
    (48, 64, 2, true),
    (64, 32, 2, true),
    (80, 64, 1, true),
    (96, 64, 1, true),
    (128, 32, 1, true),
    (160, 32, 1, false),
    (192, 32, 1, false),
    (256, 16, 1, false),
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
}

impl Variant {
    /// Query rows per thread block.
    pub fn br(&self) -> usize {
        16 * self.mt * (THREADS as usize / 32)
    }
    /// Dynamic shared memory per block: Q, K and V tiles with rows padded by 8 halves.
    pub fn smem_bytes(&self) -> usize {
        (self.br() + 2 * self.bc) * (self.dp + 8) * 2
    }
    pub fn dtype_name(&self) -> &'static str {
        if self.bf16 { "bf16" } else { "f16" }
    }
    /// The `extern "C"` entry point name.
    pub fn kernel_name(&self) -> String {
        format!("flash_fwd_{}_d{}", self.dtype_name(), self.dp)
    }
    /// NVRTC defines that restrict the module to this variant.
    pub fn only_defines(&self) -> Vec<String> {
        vec![
            format!("-DFLASH_ONLY_DT={}", self.dtype_name()),
            format!("-DFLASH_ONLY_BF16={}", if self.bf16 { "true" } else { "false" }),
            format!("-DFLASH_ONLY_DP={}", self.dp),
        ]
    }
}

/// Every compiled variant, f16 first.
pub fn variants() -> Vec<Variant> {
    [false, true]
        .into_iter()
        .flat_map(|bf16| CFG.iter().map(move |&(dp, bc, mt, q_in_regs)| Variant { bf16, dp, bc, mt, q_in_regs }))
        .collect()
}

/// The variant that runs `head_dim` for a 16-bit kernel dtype.
pub fn variant_for(kernel_dtype: DType, head_dim: usize) -> Option<Variant> {
    let bf16 = match kernel_dtype {
        DType::F16 => false,
        DType::BF16 => true,
        DType::F32 => return None,
    };
    if head_dim == 0 || !head_dim.is_multiple_of(8) {
        return None;
    }
    variants().into_iter().find(|v| v.bf16 == bf16 && v.dp >= head_dim)
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
    if p.heads > 65_535 || p.batch > 65_535 {
        r.push(format!("heads ({}) and batch ({}) must be ≤ 65535 (grid y/z limits)", p.heads, p.batch));
    }
    r
}

/// Everything one launch needs, derived from the problem: the host side of the kernel contract.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlashLaunch {
    pub variant: Variant,
    /// (q tiles, heads, batch).
    pub grid: (u32, u32, u32),
    pub smem_bytes: u32,
    /// The kernel argument with every scalar set and the buffer addresses still 0
    /// (see [`FlashFwdParams::with_buffers`]).
    pub params: FlashFwdParams,
}

impl FlashLaunch {
    /// The launch for `p` with 16-bit inputs of `kernel_dtype`. `Err` lists why it cannot run.
    pub fn plan(p: &Problem, kernel_dtype: DType) -> Result<FlashLaunch, Vec<String>> {
        let mut reasons = unsupported_reasons(p);
        let variant = variant_for(kernel_dtype, p.head_dim);
        if variant.is_none() && reasons.is_empty() {
            reasons.push(format!("no kernel variant for dtype {kernel_dtype} and head_dim {}", p.head_dim));
        }
        let (Some(variant), true) = (variant, reasons.is_empty()) else {
            return Err(reasons);
        };
        // Clamping keeps the band identical: left ≥ N_k already admits key 0 for every row, and
        // right ≥ N_q already admits key N_k − 1; afterwards all index sums fit in i32.
        let (left, right) = p.effective_window();
        let win_left = left.map_or(-1, |l| l.min(p.seq_k) as i32);
        let win_right = right.map_or(-1, |r| r.min(p.seq_q) as i32);
        let q_tiles = p.seq_q.div_ceil(variant.br());
        Ok(FlashLaunch {
            variant,
            grid: (q_tiles as u32, p.heads as u32, p.batch as u32),
            smem_bytes: variant.smem_bytes() as u32,
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
                ..FlashFwdParams::default()
            },
        })
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
        let l = FlashLaunch::plan(&p, DType::F16).unwrap();
        assert_eq!((l.params.win_left, l.params.win_right), (300, 100));
        assert_eq!(l.grid, (100u32.div_ceil(128), 4, 2));
        let c = p.clone().with_causal(true);
        assert_eq!(FlashLaunch::plan(&c, DType::F16).unwrap().params.win_right, 0);
        let r = FlashLaunch::plan(&Problem::new(1, 1, 8, 60), DType::F16).unwrap_err();
        assert!(r[0].contains("multiple of 8"), "{r:?}");
    }
}
