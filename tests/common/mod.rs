//! Shared shape tables and input generation for the integration tests.
#![allow(dead_code)]

pub mod emu;

use attnkit::{DType, Problem, Tensor, Window};

/// One row of the cross-validation table.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: &'static str,
    pub problem: Problem,
}

/// A table row: `Problem::new(b, h, nq, d)` with `hkv` KV heads and `nk` keys.
pub fn case(name: &'static str, b: usize, h: usize, hkv: usize, nq: usize, nk: usize, d: usize) -> Case {
    Case { name, problem: Problem::new(b, h, nq, d).with_kv_heads(hkv).with_seq_k(nk) }
}

/// The shapes every exact backend is checked on. Covers N=1, ragged lengths (17, 1000),
/// N_q ≠ N_k both ways, GQA and MQA, D ∈ {32, 40, 64, 80, 128, 256}, causal and windows
/// (including windows that leave rows empty). Multiply by [`DType::ALL`] for dtypes.
pub fn shape_table() -> Vec<Case> {
    let mut t = vec![
        case("n1", 1, 2, 2, 1, 1, 64),
        case("n1_causal", 1, 1, 1, 1, 1, 32),
        case("ragged17", 2, 2, 2, 17, 17, 64),
        case("ragged1000", 1, 1, 1, 1000, 1000, 64),
        case("cross_q_lt_k", 1, 2, 2, 33, 130, 64),
        case("cross_q_gt_k", 1, 2, 2, 130, 33, 64),
        case("gqa_4_to_2", 1, 4, 2, 70, 70, 64),
        case("mqa_4_to_1", 2, 4, 1, 65, 65, 32),
        case("d32", 1, 2, 2, 100, 100, 32),
        case("d40", 1, 2, 2, 100, 100, 40),
        case("d80", 1, 2, 2, 100, 100, 80),
        case("d128", 1, 2, 2, 100, 100, 128),
        case("d256", 1, 1, 1, 100, 100, 256),
        case("d7_odd", 1, 1, 1, 50, 50, 7),
    ];
    t[1].problem.causal = true;
    let masked = [
        ("causal_ragged", 1, 2, 2, 200, 200, 64, true, Window::UNBOUNDED),
        ("causal_q_lt_k", 1, 2, 1, 40, 150, 64, true, Window::UNBOUNDED),
        ("causal_q_gt_k_empty_rows", 1, 1, 1, 150, 40, 64, true, Window::UNBOUNDED),
        ("window_16_16", 1, 2, 2, 300, 300, 64, false, Window::new(16, 16)),
        ("window_causal_32", 1, 2, 2, 300, 300, 80, true, Window::new(32, -1)),
        ("window_left_only_7", 1, 1, 1, 129, 129, 40, false, Window::new(7, -1)),
        ("window_right_only_5", 1, 1, 1, 129, 129, 32, false, Window::new(-1, 5)),
        ("window_0_0_diag", 1, 1, 1, 64, 64, 128, false, Window::new(0, 0)),
        ("window_cross_empty_rows", 1, 2, 1, 100, 30, 64, false, Window::new(3, 0)),
        ("window_gqa_d256", 1, 4, 2, 90, 90, 256, true, Window::new(20, 0)),
    ];
    for (name, b, h, hkv, nq, nk, d, causal, window) in masked {
        let mut c = case(name, b, h, hkv, nq, nk, d);
        c.problem.causal = causal;
        c.problem.window = window;
        t.push(c);
    }
    t
}

/// Seeded standard-normal data rounded to `dtype` (the crate's one generator).
pub fn randn(len: usize, seed: u64, dtype: DType) -> Tensor {
    Tensor::from_f32(&attnkit::seeded::normal_values(len, seed), dtype)
}

/// Seeded Q, K, V for `p` in `p.dtype` (the crate's one generator).
pub fn qkv(p: &Problem, seed: u64) -> (Tensor, Tensor, Tensor) {
    attnkit::seeded::normal_qkv(p, seed)
}
