//! The kernel's one argument: `FlashFwdParams`, passed by value (as FlashAttention's
//! `Flash_fwd_params`). The same struct is declared in `kernels/flash_fwd.cu`; the cudarc launch,
//! the emulator driver (`kernels/emu/driver.cpp`) and the tests all fill this one definition, and
//! `tests/cuda_emulated.rs` compares its layout with the C compiler's `offsetof`.

use std::mem::offset_of;

/// Arguments of `flash_fwd_{f16|bf16}_d{DP}`. Pointers are device addresses (`CUdeviceptr`) on a
/// GPU and host addresses under emulation; both are 64-bit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FlashFwdParams {
    /// 16-bit Q, B·H·N_q·d elements.
    pub q: u64,
    /// 16-bit K, B·H_kv·N_k·d elements.
    pub k: u64,
    /// 16-bit V, B·H_kv·N_k·d elements.
    pub v: u64,
    /// f32 O, B·H·N_q·d elements.
    pub o: u64,
    /// f32 LSE, B·H·N_q elements.
    pub lse: u64,
    /// f32 partial O, num_splits·B·H·N_q·d elements (split-KV only, else 0).
    pub o_accum: u64,
    /// f32 partial LSE, num_splits·B·H·N_q elements (split-KV only, else 0).
    pub lse_accum: u64,
    pub batch: i32,
    pub heads: i32,
    pub kv_heads: i32,
    pub nq: i32,
    pub nk: i32,
    pub d: i32,
    /// scale · log2(e): the kernel works in the exp2 domain.
    pub scale_log2: f32,
    /// Window bounds with causal folded in, clamped to the sequence lengths; −1 = unbounded.
    pub win_left: i32,
    pub win_right: i32,
    /// Key ranges per query row (1: O and LSE written directly; more: partials + `flash_combine`).
    pub num_splits: i32,
    /// Keys per split, a multiple of the variant's key tile (≥ N_k when unsplit).
    pub keys_per_split: i32,
    /// Query heads packed into one block's rows (H/H_kv for GQA decode, N_q = 1 only), else 1.
    pub pack: i32,
    /// Softcap `c` (`s ← c·tanh(s/c)`), 0 = off. The modifier fields are read only by the
    /// `_mods` entry points.
    pub softcap: f32,
    /// Index stride of a sequence in `alibi_slopes`: 0 for (H,) slopes, H for (S, H).
    pub alibi_seq_stride: i32,
    /// f32 ALiBi slopes, or 0 = no ALiBi.
    pub alibi_slopes: u64,
    /// f32 sink logits (H,), or 0.
    pub sinks: u64,
    /// i32 varlen offsets (S+1 each), or 0 = not packed.
    pub cu_seqlens_q: u64,
    pub cu_seqlens_k: u64,
    /// i32 used keys per batch entry / sequence (S,), or 0.
    pub seqused_k: u64,
}

impl FlashFwdParams {
    /// (field, byte offset) in declaration order; the C side prints the same list.
    pub const LAYOUT: [(&'static str, usize); 26] = [
        ("q", offset_of!(Self, q)),
        ("k", offset_of!(Self, k)),
        ("v", offset_of!(Self, v)),
        ("o", offset_of!(Self, o)),
        ("lse", offset_of!(Self, lse)),
        ("o_accum", offset_of!(Self, o_accum)),
        ("lse_accum", offset_of!(Self, lse_accum)),
        ("batch", offset_of!(Self, batch)),
        ("heads", offset_of!(Self, heads)),
        ("kv_heads", offset_of!(Self, kv_heads)),
        ("nq", offset_of!(Self, nq)),
        ("nk", offset_of!(Self, nk)),
        ("d", offset_of!(Self, d)),
        ("scale_log2", offset_of!(Self, scale_log2)),
        ("win_left", offset_of!(Self, win_left)),
        ("win_right", offset_of!(Self, win_right)),
        ("num_splits", offset_of!(Self, num_splits)),
        ("keys_per_split", offset_of!(Self, keys_per_split)),
        ("pack", offset_of!(Self, pack)),
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

    /// These scalars with the five buffer addresses filled in.
    pub fn with_buffers(self, q: u64, k: u64, v: u64, o: u64, lse: u64) -> Self {
        Self { q, k, v, o, lse, ..self }
    }

    /// These params with the split-KV partial buffers filled in.
    pub fn with_accum(self, o_accum: u64, lse_accum: u64) -> Self {
        Self { o_accum, lse_accum, ..self }
    }

    /// These params with the modifier buffers' addresses (0 = absent), in the order of
    /// [`ModData`](super::ModData): ALiBi slopes, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k.
    pub fn with_mods(self, [alibi_slopes, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k]: [u64; 5]) -> Self {
        Self { alibi_slopes, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, ..self }
    }
}

/// `name=offset,…,size=S,align=A` of a `#[repr(C)]` kernel argument `T` with these fields (the
/// format the emulator drivers print from the C side).
pub(crate) fn layout_string_of<T>(fields: &[(&str, usize)]) -> String {
    let fields: Vec<String> = fields.iter().map(|(n, o)| format!("{n}={o}")).collect();
    format!("{},size={},align={}", fields.join(","), size_of::<T>(), align_of::<T>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_has_no_hidden_padding() {
        // 7 pointers, 14 four-byte fields, 5 pointers, 8-aligned: every byte belongs to a named field.
        assert_eq!(size_of::<FlashFwdParams>(), 12 * 8 + 14 * 4);
        let mut end = 0;
        for (name, off) in FlashFwdParams::LAYOUT {
            assert_eq!(off, end, "{name} is not packed after the previous field");
            end += if !(56..112).contains(&off) { 8 } else { 4 };
        }
        assert_eq!(end, size_of::<FlashFwdParams>());
        assert!(FlashFwdParams::layout_string().ends_with("seqused_k=144,size=152,align=8"));
    }
}
