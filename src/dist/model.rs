//! Cost model of the ring and the all-gather schedules ("Beyond one machine").
//!
//! Per rank: compute at a measured rate F (FLOP/s), a link of bandwidth W (bytes/s) and
//! latency α. One K/V block is `2·B·H_kv·(N/P)·D·4` bytes, its transfer `t = α + bytes/W`.
//! The per-step compute `c` is the critical rank's allowed pairs per step × 4·D·H·B / F:
//! zigzag (causal) and contiguous (non-causal) give every rank N²/(2P²) resp. N²/P² pairs per
//! step; contiguous causal leaves the last rank a full block every step (N²/P² pairs), which
//! is why zigzag exists. Ring: `T = (P−1)·max(c, t) + c`, hidden fraction per step
//! `min(c, t)/t`. All-gather: `T = (P−1)·t + P·c` (the ring all-gather, nothing overlapped).
//! Backward: 2.5× the FLOPs (FlashAttention's convention) and two blocks per transfer
//! (K/V and the dK/dV accumulator). Efficiency: `T₁ / (P·T)` with `T₁` the whole problem's
//! FLOPs / F on one rank.
//! Caveats: it ignores per-pair kernel overheads, the small diagonal-pair imbalance of uneven
//! chunks and link contention; links are full duplex, one neighbour each way.

use super::Layout;
use serde::Serialize;

/// The problem and the machine one prediction is for.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Setup {
    pub n: f64,
    pub ranks: usize,
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub causal: bool,
    pub layout: Layout,
    pub all_gather: bool,
    pub backward: bool,
    /// Compute rate of one rank, FLOP/s.
    pub flops: f64,
    /// Link bandwidth, bytes/s, and latency, seconds.
    pub bandwidth: f64,
    pub latency: f64,
}

/// What the model predicts.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Prediction {
    /// Compute and transfer per step, seconds.
    pub step_compute_s: f64,
    pub step_transfer_s: f64,
    /// Fraction of each transfer hidden behind compute (ring), 0 for all-gather.
    pub hidden: f64,
    /// Predicted wall time and the one-rank time it is compared with.
    pub total_s: f64,
    pub single_s: f64,
    /// `single / (P · total)`.
    pub efficiency: f64,
}

/// Predicts one setup.
pub fn predict(s: &Setup) -> Prediction {
    let p = s.ranks as f64;
    let work = if s.backward { 2.5 } else { 1.0 };
    let per_pair = 4.0 * s.head_dim as f64 * s.heads as f64 * s.batch as f64 * work;
    let all_pairs = if s.causal { s.n * (s.n + 1.0) / 2.0 } else { s.n * s.n };
    let single_s = all_pairs * per_pair / s.flops;
    let block = s.n / p;
    let step_pairs = match (s.causal, s.layout) {
        (true, Layout::Zigzag) => block * block / 2.0,
        _ => block * block,
    };
    let c = step_pairs * per_pair / s.flops;
    let msgs = if s.backward { 2.0 } else { 1.0 };
    let bytes = msgs * 2.0 * s.batch as f64 * s.kv_heads as f64 * block * s.head_dim as f64 * 4.0;
    let t = if s.ranks > 1 { s.latency + bytes / s.bandwidth } else { 0.0 };
    let (total_s, hidden) = if s.all_gather {
        ((p - 1.0) * t + p * c, 0.0)
    } else {
        let hidden = if t > 0.0 { (c / t).min(1.0) } else { 1.0 };
        ((p - 1.0) * c.max(t) + c, hidden)
    };
    Prediction {
        step_compute_s: c,
        step_transfer_s: t,
        hidden,
        total_s,
        single_s,
        efficiency: single_s / (p * total_s),
    }
}

/// A link for the table: name, bytes/s, latency.
pub const LINKS: [(&str, f64, f64); 4] = [
    ("25 Gb/s Ethernet", 25e9 / 8.0, 10e-6),
    ("100 Gb/s", 100e9 / 8.0, 5e-6),
    ("400 Gb/s InfiniBand", 400e9 / 8.0, 3e-6),
    ("NVLink 4 (450 GB/s)", 450e9, 2e-6),
];

/// The markdown table of "Beyond one machine": efficiency (and hidden fraction) for P = 2…1024,
/// N up to 10M, causal (zigzag) and not (contiguous), ring and all-gather, per link, with
/// compute at `flops_per_core` × `cores` per rank.
pub fn table(
    flops_per_core: f64,
    cores: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    backward: bool,
) -> String {
    use std::fmt::Write as _;
    let ps = [2usize, 4, 8, 16, 64, 256, 1024];
    let ns = [131_072.0, 1_048_576.0, 10_485_760.0];
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Compute: {:.1} GFLOP/s per core × {cores} cores per rank; H={heads}, H_kv={kv_heads}, D={head_dim}, B=1, {}. \
         Cell: parallel efficiency (fraction of each transfer hidden behind compute, ring only).\n",
        flops_per_core / 1e9,
        if backward { "forward + backward" } else { "forward" }
    );
    for (link, bw, lat) in LINKS {
        let _ = writeln!(md, "**{link}** (latency {:.0} µs)\n", lat * 1e6);
        let _ = write!(md, "| N | mask | schedule |");
        ps.iter().for_each(|p| {
            let _ = write!(md, " P={p} |");
        });
        let _ = write!(md, "\n|---|---|---|");
        ps.iter().for_each(|_| md.push_str("---|"));
        md.push('\n');
        for n in ns {
            for causal in [true, false] {
                for all_gather in [false, true] {
                    let layout = if causal { Layout::Zigzag } else { Layout::Contiguous };
                    let _ = write!(
                        md,
                        "| {} | {} | {} |",
                        fmt_tokens(n),
                        if causal { "causal (zigzag)" } else { "full (contiguous)" },
                        if all_gather { "all-gather" } else { "ring" }
                    );
                    for &ranks in &ps {
                        let s = Setup {
                            n,
                            ranks,
                            batch: 1,
                            heads,
                            kv_heads,
                            head_dim,
                            causal,
                            layout,
                            all_gather,
                            backward,
                            flops: flops_per_core * cores as f64,
                            bandwidth: bw,
                            latency: lat,
                        };
                        let pr = predict(&s);
                        if all_gather {
                            let _ = write!(md, " {:.0}% |", 100.0 * pr.efficiency);
                        } else {
                            let _ = write!(md, " {:.0}% ({:.0}%) |", 100.0 * pr.efficiency, 100.0 * pr.hidden);
                        }
                    }
                    md.push('\n');
                }
            }
        }
        md.push('\n');
    }
    md
}

fn fmt_tokens(n: f64) -> String {
    if n >= 1_048_576.0 { format!("{:.0}M", n / 1_048_576.0) } else { format!("{:.0}K", n / 1024.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(ranks: usize, causal: bool, layout: Layout, bw: f64) -> Setup {
        Setup {
            n: 65536.0,
            ranks,
            batch: 1,
            heads: 8,
            kv_heads: 8,
            head_dim: 64,
            causal,
            layout,
            all_gather: false,
            backward: false,
            flops: 30e9,
            bandwidth: bw,
            latency: 5e-6,
        }
    }

    #[test]
    fn compute_bound_ring_is_ideal_and_contiguous_causal_halves_it() {
        let z = predict(&setup(8, true, Layout::Zigzag, 1e12));
        assert!(z.hidden == 1.0 && (z.efficiency - 1.0).abs() < 0.01, "{z:?}");
        let c = predict(&setup(8, true, Layout::Contiguous, 1e12));
        assert!((c.efficiency - 0.5).abs() < 0.01, "{c:?}");
        let slow = predict(&setup(8, false, Layout::Contiguous, 1e3));
        assert!(slow.hidden < 0.01 && slow.efficiency < 0.01, "{slow:?}");
        let one = predict(&setup(1, false, Layout::Contiguous, 1e3));
        assert!((one.efficiency - 1.0).abs() < 1e-9);
    }
}
