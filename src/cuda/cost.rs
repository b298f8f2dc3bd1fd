//! Static cost model of each kernel variant (per key tile, from the tile shape alone) and the
//! markdown cost table `attnkit kernels --markdown` writes for kernels/README.md.
//!
//! Counts follow the kernel's loops in `kernels/flash_fwd.cu`: per warp and key tile of BC keys,
//! Q·Kᵀ issues MT·(DP/16)·(BC/8) mma.m16n8k16 and P·V MT·(BC/16)·(DP/8); ldmatrix.x4 moves 512
//! bytes per warp (Q re-read unless it stays in registers, K and V once); cp.async writes the K
//! and V tiles once per block, a quarter per warp. These are not measurements.

use super::bwd::{
    BWD_CONVERT_KERNEL, BWD_DSINK_KERNEL, BWD_PREPROCESS_KERNEL, BWD_ROWS_PER_BLOCK, BWD_THREADS, bwd_variants,
};
use super::variants::{THREADS, Variant};
use super::{KernelCompileReport, theoretical_occupancy};

/// Static per-tile figures of one variant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TileCost {
    /// mma.m16n8k16 per warp per key tile.
    pub mma_per_warp: usize,
    /// Shared-memory bytes moved (ldmatrix reads + the warp's share of cp.async writes) per mma.
    pub smem_bytes_per_mma: f64,
    /// __syncthreads per 1024 keys (one or two per key tile: [`Variant::barriers_per_tile`]).
    pub barriers_per_1k_keys: f64,
    /// K/V bytes read from L2 per FLOP: every block reads each K and V row once for BR rows.
    pub kv_l2_bytes_per_flop: f64,
}

impl Variant {
    /// The static cost of one key tile.
    pub fn tile_cost(&self) -> TileCost {
        let (dp, bc, mt) = (self.dp, self.bc, self.mt);
        let mma_per_warp = mt * (dp / 16) * (bc / 8) + mt * (bc / 16) * (dp / 8);
        let q_x4 = if self.q_in_regs { 0 } else { (dp / 16) * mt };
        let kv_x4 = (dp / 16) * (bc / 16) + (bc / 16) * (dp / 16);
        let warps = THREADS as usize / 32;
        let cp_async_per_warp = 2 * bc * dp * 2 / warps;
        TileCost {
            mma_per_warp,
            smem_bytes_per_mma: ((q_x4 + kv_x4) * 512 + cp_async_per_warp) as f64 / mma_per_warp as f64,
            barriers_per_1k_keys: (1024 * self.barriers_per_tile()) as f64 / bc as f64,
            // 2 bytes · 2 (K and V) · D per key, 4·BR·D FLOPs per key.
            kv_l2_bytes_per_flop: 1.0 / self.br() as f64,
        }
    }
}

/// One toolchain's compile report: ("CUDA 12.9", reports).
pub type ToolchainReport = (String, Vec<KernelCompileReport>);

/// The cost table in markdown: one row per f16 variant and arch (bf16 compiles to the same
/// resources; the NVRTC test checks both), registers and spills per toolchain.
pub fn cost_table_markdown(variants: &[Variant], toolchains: &[ToolchainReport], archs: &[String]) -> String {
    let names: Vec<&str> = toolchains.iter().map(|(n, _)| n.as_str()).collect();
    let mut s = format!(
        "| variant | BR×BC | Q | K/V | arch | regs ({n}) | spills ({n}) | smem/block | blocks/SM | smem B/mma | barriers/1K keys | K/V L2 B/FLOP |\n",
        n = names.join(" / ")
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let opt = |x: Option<u32>| x.map_or("–".to_string(), |v| v.to_string());
    for v in variants.iter().filter(|v| !v.bf16) {
        let c = v.tile_cost();
        for arch in archs {
            let rows: Vec<Option<&KernelCompileReport>> = toolchains
                .iter()
                .map(|(_, r)| r.iter().find(|r| r.kernel == v.kernel_name() && &r.arch == arch))
                .collect();
            let regs: Vec<String> = rows.iter().map(|r| opt(r.and_then(|r| r.registers))).collect();
            let spills: Vec<String> = rows.iter().map(|r| opt(r.and_then(|r| r.spill_bytes))).collect();
            let smem = v.smem_bytes() as u32;
            // Blocks/SM from the most registers any toolchain used (the binding case).
            let max_regs = rows.iter().filter_map(|r| r.and_then(|r| r.registers)).max();
            let blocks = max_regs.map(|r| theoretical_occupancy(arch, r, smem, THREADS).0);
            s.push_str(&format!(
                "| d{}{} | {}×{} | {} | {} | {arch} | {} | {} | {smem} | {} | {:.0} | {:.0} | 1/{} |\n",
                v.dp,
                if v.mods { " mods" } else { "" },
                v.br(),
                v.bc,
                if v.q_in_regs { "regs" } else { "smem" },
                match (v.stages, v.overlap) {
                    (1, _) => "1+1",
                    (_, false) => "2 stages",
                    (_, true) => "2 stages, S overlap",
                },
                regs.join(" / "),
                spills.join(" / "),
                opt(blocks),
                c.smem_bytes_per_mma,
                c.barriers_per_1k_keys,
                v.br(),
            ));
        }
    }
    s.push_str(&format!(
        "\n{THREADS} threads per block. K/V \"2 stages\": two (K, V) buffers, one barrier per key tile; \"1+1\": \
         one K and one V buffer on FA2's schedule, two barriers per key tile; \"S overlap\": two stages with K one tile \
         ahead, Q·K_{{j+1}}ᵀ issued before tile j's softmax. smem/block in bytes; blocks/SM \
         is theoretical (registers allocated per warp in units of 256, 1 KB reserved per block).\n"
    ));
    s.push_str(&bwd_cost_table(toolchains, archs));
    s
}

/// The backward rows: one per f16 main variant and arch, then the helper kernels (from the first
/// toolchain's figures for blocks/SM, as the forward rows take the most registers).
fn bwd_cost_table(toolchains: &[ToolchainReport], archs: &[String]) -> String {
    let names: Vec<&str> = toolchains.iter().map(|(n, _)| n.as_str()).collect();
    let mut s = format!(
        "\n| backward kernel | BC×BR | arch | regs ({n}) | spills ({n}) | smem/block | blocks/SM |\n|---|---|---|---|---|---|---|\n",
        n = names.join(" / ")
    );
    let opt = |x: Option<u32>| x.map_or("–".to_string(), |v| v.to_string());
    let mut kernels: Vec<(String, String, u32, u32)> = bwd_variants()
        .iter()
        .filter(|v| !v.bf16)
        .map(|v| (v.kernel_name(), format!("{}×{}", v.bc, v.br), v.smem_bytes() as u32, BWD_THREADS))
        .collect();
    kernels.push((BWD_PREPROCESS_KERNEL.into(), "–".into(), 0, 32 * BWD_ROWS_PER_BLOCK as u32));
    kernels.push((BWD_CONVERT_KERNEL.into(), "–".into(), 0, BWD_THREADS));
    kernels.push((BWD_DSINK_KERNEL.into(), "–".into(), 4 * BWD_THREADS, BWD_THREADS));
    for (name, tile, smem, threads) in &kernels {
        for arch in archs {
            let rows: Vec<Option<&KernelCompileReport>> =
                toolchains.iter().map(|(_, r)| r.iter().find(|r| &r.kernel == name && &r.arch == arch)).collect();
            let regs: Vec<String> = rows.iter().map(|r| opt(r.and_then(|r| r.registers))).collect();
            let spills: Vec<String> = rows.iter().map(|r| opt(r.and_then(|r| r.spill_bytes))).collect();
            let max_regs = rows.iter().filter_map(|r| r.and_then(|r| r.registers)).max();
            let blocks = max_regs.map(|r| theoretical_occupancy(arch, r, *smem, *threads).0);
            s.push_str(&format!(
                "| {name} | {tile} | {arch} | {} | {} | {smem} | {} |\n",
                regs.join(" / "),
                spills.join(" / "),
                opt(blocks)
            ));
        }
    }
    s.push_str(
        "\nBackward: BC keys per dK/dV tile (kept in registers), BR query rows per tile; f32 tiles in shared \
         memory, FP32 FMAs (no tensor cores yet). bf16 variants compile to the same resources (the NVRTC test \
         checks both).\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::variants;

    #[test]
    fn tile_cost_matches_hand_counts() {
        // FA2's d128 tile (128×64, Q from smem): 256 mma per warp, 80 ldmatrix.x4 + 8 KB of
        // cp.async per warp → 192 B/mma; the review figure for FA2 is ≈ 190.
        let fa2 =
            Variant { bf16: false, dp: 128, bc: 64, mt: 2, q_in_regs: false, stages: 1, overlap: false, mods: false };
        let c = fa2.tile_cost();
        assert_eq!(c.mma_per_warp, 256);
        assert_eq!(c.smem_bytes_per_mma, 192.0);
        assert_eq!(c.barriers_per_1k_keys, 32.0, "two barriers per tile on FA2's schedule");
        assert_eq!(Variant { stages: 2, ..fa2 }.tile_cost().barriers_per_1k_keys, 16.0);
        assert_eq!(fa2.smem_bytes(), (128 + 2 * 64) * 136 * 2);
        // The previous d128 tile (64×32, Q in registers): ≈ 320 B/mma in the same review.
        let old =
            Variant { bf16: false, dp: 128, bc: 32, mt: 1, q_in_regs: true, stages: 1, overlap: false, mods: false };
        assert_eq!(old.tile_cost().smem_bytes_per_mma, 320.0);
        assert_eq!(old.tile_cost().kv_l2_bytes_per_flop, 1.0 / 64.0);
    }

    #[test]
    fn markdown_has_a_row_per_f16_variant_and_arch() {
        let archs = vec!["sm_80".to_string(), "sm_90".to_string()];
        let t = cost_table_markdown(&variants(), &[("CUDA 12".into(), Vec::new())], &archs);
        let rows = t.lines().filter(|l| l.starts_with("| d")).count();
        assert_eq!(rows, 2 * variants().iter().filter(|v| !v.bf16).count());
        assert!(t.contains("| d128 | 128×64 | smem | 1+1 | sm_90 | – | – |"), "{t}");
        assert!(t.contains("| d128 mods | 128×64 | smem | 1+1 | sm_90 | – | – |"), "{t}");
        assert!(t.contains("| d192 | 64×32 | smem | 2 stages, S overlap | sm_80 | – | – |"), "{t}");
        // Backward: a row per f16 main variant and arch, and the three helpers.
        let bwd = t.lines().filter(|l| l.starts_with("| flash_bwd_")).count();
        assert_eq!(bwd, 2 * (bwd_variants().len() / 2 + 3));
        assert!(t.contains("| flash_bwd_f16_d128 | 32×32 | sm_90 | – | – | 74240 | – |"), "{t}");
    }
}
