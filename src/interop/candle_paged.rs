//! candle door for paged decode (feature `candle`): attention of candle query tensors over a
//! paged KV cache, either pages held in candle tensors ([`paged_attention`]) or an attnkit
//! [`KvCache`] ([`kvcache_attention`]), read in place by the KV-cache kernel
//! ([`crate::kvcache::PagedKv::attend`]).
//!
//! Shapes: q is (B, N_q, H, D) with [`Layout::Bnhd`] (FlashAttention's and candle-nn's order) or
//! (B, H, N_q, D) with [`Layout::Bhnd`]; `k_cache`/`v_cache` are (num_pages, page_size, H_kv, D),
//! contiguous, of q's dtype (f32, f16, bf16), read in place from candle's storage (no copy);
//! `block_table` (B, max_pages) and `cache_seqlens` (B,) of any integer dtype. Causal and
//! windows are bottom-right aligned to each sequence's length (`cache_seqlens[b]` keys), as in
//! FlashAttention's `flash_attn_with_kvcache`. The output has q's shape, layout and dtype.
//!
//! Cost: q is copied to f32 (B, H, N_q, D) (O(N_q·H·D), nothing beside the O(N_k·H_kv·D) cache
//! read), the block table and lengths are copied out (O(B·max_pages)). Not differentiable (an
//! inference door: the pages are the cache of a running model). CPU tensors only. Appending
//! is the engine's: write new rows into the pages (or use [`KvCache::append`]) before the call.

use super::{AttnOptions, Layout};
use crate::kvcache::{KvCache, PageIndex, PagedKv, Pages};
use crate::problem::Problem;
use candle_core::{CpuStorage, DType as CDType, Device, Error, Layout as CLayout, Result, Storage, Tensor};

/// Attention of `q` over the pages `k_cache`/`v_cache` addressed by `block_table`, each
/// sequence holding `cache_seqlens[b]` tokens (see the module docs). Refusals (a bad page
/// index the lengths reach, a length beyond the table, shapes, dtypes) are errors naming the
/// value.
pub fn paged_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    block_table: &Tensor,
    cache_seqlens: &Tensor,
    opts: &AttnOptions,
) -> Result<Tensor> {
    for (name, t) in [("q", q), ("k_cache", k_cache), ("v_cache", v_cache)] {
        if !t.device().is_cpu() {
            return Err(Error::Msg(format!("{name} is on {:?}; attnkit takes CPU tensors", t.device().location())));
        }
    }
    let (num_pages, page_size, kv_heads, d) = k_cache.dims4()?;
    if v_cache.dims() != k_cache.dims() || v_cache.dtype() != k_cache.dtype() || k_cache.dtype() != q.dtype() {
        return Err(Error::Msg(format!(
            "k_cache {:?} {:?} and v_cache {:?} {:?} must share shape and dtype, the dtype of q ({:?})",
            k_cache.dims(),
            k_cache.dtype(),
            v_cache.dims(),
            v_cache.dtype(),
            q.dtype()
        )));
    }
    let table = block_table
        .to_dtype(CDType::I64)?
        .to_vec2::<i64>()?
        .into_iter()
        .enumerate()
        .flat_map(|(b, row)| row.into_iter().enumerate().map(move |(slot, x)| (b, slot, x)))
        .map(|(b, slot, x)| {
            i32::try_from(x).map_err(|_| Error::Msg(format!("block_table[{b}][{slot}] = {x} is not a page index")))
        })
        .collect::<Result<Vec<i32>>>()?;
    let seqlens = cache_seqlens
        .to_dtype(CDType::I64)?
        .to_vec1::<i64>()?
        .into_iter()
        .enumerate()
        .map(|(b, x)| usize::try_from(x).map_err(|_| Error::Msg(format!("cache_seqlens[{b}] = {x} is negative"))))
        .collect::<Result<Vec<usize>>>()?;
    let leftpad = vec![0; seqlens.len()];
    let ix = PageIndex::new(kv_heads, d, page_size, num_pages, &table, &seqlens, &leftpad, 0).map_err(Error::wrap)?;
    let (ks, kl) = k_cache.storage_and_layout();
    let (vs, vl) = v_cache.storage_and_layout();
    let kv = PagedKv::new(ix, pages("k_cache", &ks, kl)?, pages("v_cache", &vs, vl)?).map_err(Error::wrap)?;
    attend(q, &kv, opts)
}

/// Attention of `q` over an attnkit [`KvCache`] (its lengths, leftpad and block table).
pub fn kvcache_attention(q: &Tensor, cache: &KvCache, opts: &AttnOptions) -> Result<Tensor> {
    if !q.device().is_cpu() {
        return Err(Error::Msg(format!("q is on {:?}; attnkit takes CPU tensors", q.device().location())));
    }
    attend(q, &cache.view(), opts)
}

/// The cache's storage in place: a contiguous CPU tensor of f32, f16 or bf16.
fn pages<'a>(name: &str, s: &'a Storage, l: &CLayout) -> Result<Pages<'a>> {
    let (a, z) = l
        .contiguous_offsets()
        .ok_or_else(|| Error::Msg(format!("{name} must be contiguous (num_pages, page_size, H_kv, D)")))?;
    match s {
        Storage::Cpu(CpuStorage::F32(x)) => Ok(Pages::F32(&x[a..z])),
        Storage::Cpu(CpuStorage::F16(x)) => Ok(Pages::F16(&x[a..z])),
        Storage::Cpu(CpuStorage::BF16(x)) => Ok(Pages::BF16(&x[a..z])),
        _ => Err(Error::Msg(format!("{name} must be an f32, f16 or bf16 CPU tensor"))),
    }
}

fn attend(q: &Tensor, kv: &PagedKv<'_>, opts: &AttnOptions) -> Result<Tensor> {
    let qb = match opts.layout {
        Layout::Bnhd => q.transpose(1, 2)?,
        Layout::Bhnd => q.clone(),
    };
    let (b, h, nq, d) = qb.dims4()?;
    let q32: Vec<f32> = qb.to_dtype(CDType::F32)?.flatten_all()?.to_vec1()?;
    let mut p =
        Problem::new(b, h, nq, d).with_kv_heads(kv.index.kv_heads).with_causal(opts.causal).with_window(opts.window);
    if let Some(s) = opts.scale {
        p = p.with_scale(s);
    }
    let mut out = vec![0.0f32; p.out_len()];
    kv.attend(&p, &q32, None, &mut out, None).map_err(Error::wrap)?;
    let o = Tensor::from_vec(out, (b, h, nq, d), &Device::Cpu)?;
    let o = match opts.layout {
        Layout::Bnhd => o.transpose(1, 2)?.contiguous()?,
        Layout::Bhnd => o,
    };
    o.to_dtype(q.dtype())
}
