//! Off x86-64 there is no AVX512_BF16: the bf16 prefill hooks of [`super::waves`] never apply
//! (an uninhabited token makes the bf16 arms unreachable by type).

use super::block::{BlockSpec, Scratch};
use crate::attention::AttnArgs;
use crate::problem::Problem;
use crate::simd::Isa;

/// No value exists: the bf16 kernel is never chosen here.
#[derive(Clone, Copy)]
pub(super) enum Never {}

pub(super) fn applies(_isa: Isa, _p: &Problem) -> Option<Never> {
    None
}

pub(super) fn head_bytes(_p: &Problem, _kp: usize) -> u64 {
    0
}

pub(super) struct Packed {
    pub nkeys: usize,
    pub vbad: Vec<usize>,
}

pub(super) fn pack_head(_args: &AttnArgs<'_>, _b: usize, _g: usize, _kp: usize) -> Packed {
    Packed { nkeys: 0, vbad: Vec::new() }
}

pub(super) fn run_query_block(
    t: Never,
    _spec: &BlockSpec<'_>,
    _packed: &Packed,
    _scr: &mut Scratch<u32>,
    _out: &mut [f32],
    _lse: Option<&mut [f32]>,
) {
    match t {}
}
