//! FlashAttention's `flash_attn_with_kvcache(..., block_table=...)` on pages the caller owns
//! (`attnkit._attnkit._kvcache_paged`, called by `attnkit.kvcache_attention` and by
//! `attnkit.flash_attn.flash_attn_with_kvcache`), on NumPy arrays or CPU torch tensors.
//!
//! `k_cache`/`v_cache` are `(num_pages, page_size, nheads_k, headdim)` (FlashAttention's paged
//! NHD layout), contiguous, float32, float16 or bfloat16; `block_table` `(batch, max_pages)`.
//! Steps: every check (shapes, dtypes, page indices the new and the attended slots reach, room
//! in the table, rotary range, the attention's own arguments) runs first; then the new k/v
//! rows are rotated (k only) in f32, rounded to the cache's dtype and written **into the
//! pages** at `cache_seqlens` ([`attnkit::kvcache::append_pages`]); then q is rotated and the
//! kernel ([`attnkit::kvcache::PagedKv::attend`]) reads the pages where they lie: no gather
//! into a contiguous copy. The kernel computes in f32; `out` gets q's dtype, `lse` is f32.
//! Everything after argument parsing runs with the GIL released.

use crate::arrays::{Borrowed, overlaps};
use crate::flash::{Mods, apply_mods, dst, f32_contiguous, lse_slice, rank4, src, write_out};
use crate::layout::is_row_major;
use crate::to_py;
use attnkit::kvcache::{
    AppendOptions, PageIndex, PagedKv, Pages, PagesMut, Rotary, RotaryLayout, append_pages, rotate_q,
};
use attnkit::{AttnError, DType, Problem, Window};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// (B, N, H, D) → (B, H, N, D).
const BNHD: [usize; 4] = [0, 2, 1, 3];

fn err(msg: String) -> PyErr {
    PyValueError::new_err(msg)
}

fn pages<'a>(name: &str, b: &'a Borrowed<'_>) -> PyResult<Pages<'a>> {
    Ok(match b.dtype {
        DType::F32 => Pages::F32(b.span(name)?.0),
        DType::F16 => Pages::F16(b.span(name)?.0),
        DType::BF16 => Pages::BF16(b.span(name)?.0),
    })
}

fn pages_mut<'a>(name: &str, b: &'a mut Borrowed<'_>) -> PyResult<PagesMut<'a>> {
    Ok(match b.dtype {
        DType::F32 => PagesMut::F32(b.span_mut(name)?.0),
        DType::F16 => PagesMut::F16(b.span_mut(name)?.0),
        DType::BF16 => PagesMut::BF16(b.span_mut(name)?.0),
    })
}

/// Non-negative lengths, one per sequence.
fn lengths(name: &str, xs: &[i64], batch: usize) -> PyResult<Vec<usize>> {
    if xs.len() != batch {
        return Err(err(format!("{name} has {} entries, expected batch = {batch}", xs.len())));
    }
    xs.iter()
        .enumerate()
        .map(|(b, &x)| usize::try_from(x).map_err(|_| err(format!("{name}[{b}] = {x} is negative"))))
        .collect()
}

/// The block table's rows, flattened to i32 (an entry outside i32 is no page index).
fn table(rows: &[Vec<i64>], batch: usize) -> PyResult<Vec<i32>> {
    if rows.len() != batch || rows.is_empty() {
        return Err(err(format!("block_table has {} rows, expected batch = {batch}", rows.len())));
    }
    let width = rows[0].len();
    let mut flat = Vec::with_capacity(batch * width);
    for (b, r) in rows.iter().enumerate() {
        if r.len() != width {
            return Err(err(format!("block_table row {b} has {} entries, row 0 has {width}", r.len())));
        }
        for (slot, &x) in r.iter().enumerate() {
            flat.push(
                i32::try_from(x)
                    .map_err(|_| err(format!("block_table[{b}][{slot}] = {x} is not a page index (outside int32)")))?,
            );
        }
    }
    Ok(flat)
}

/// A rank-2 contiguous float32 rotary table; returns it and its row length (rotary_dim / 2).
fn rotary_table<'a>(name: &str, b: &'a Borrowed<'_>) -> PyResult<(&'a [f32], usize)> {
    match b.shape[..] {
        [_, half] if b.dtype == DType::F32 && is_row_major(&b.shape, &b.strides) => {
            Ok((&b.span::<f32>(name)?.0[..b.shape.iter().product::<usize>()], half))
        }
        _ => Err(err(format!("{name} must be a contiguous float32 (seqlen_ro, rotary_dim / 2) array; got {b:?}"))),
    }
}

/// Append `k`/`v` (if given) into the pages at `cache_seqlens`, then attention of `q` over
/// the pages; writes `out` (q's shape and dtype) and `lse` ((B, H, N_q) float32).
#[pyfunction]
#[pyo3(signature = (q, k_cache, v_cache, block_table, cache_seqlens, out, lse, mods, k=None, v=None,
    rotary_cos=None, rotary_sin=None, rotary_interleaved=true, cache_leftpad=None))]
#[allow(clippy::too_many_arguments)]
pub fn _kvcache_paged(
    py: Python<'_>,
    q: &Bound<'_, PyAny>,
    k_cache: &Bound<'_, PyAny>,
    v_cache: &Bound<'_, PyAny>,
    block_table: Vec<Vec<i64>>,
    cache_seqlens: Vec<i64>,
    out: &Bound<'_, PyAny>,
    lse: &Bound<'_, PyAny>,
    mods: Mods,
    k: Option<&Bound<'_, PyAny>>,
    v: Option<&Bound<'_, PyAny>>,
    rotary_cos: Option<&Bound<'_, PyAny>>,
    rotary_sin: Option<&Bound<'_, PyAny>>,
    rotary_interleaved: bool,
    cache_leftpad: Option<Vec<i64>>,
) -> PyResult<()> {
    let (qb, mut kcb, mut vcb) = (
        Borrowed::from_object("q", q)?,
        Borrowed::from_object("k_cache", k_cache)?,
        Borrowed::from_object("v_cache", v_cache)?,
    );
    let (mut ob, mut lb) = (Borrowed::from_object("out", out)?, Borrowed::from_object("lse", lse)?);
    let knew = k.map(|x| Borrowed::from_object("k", x)).transpose()?;
    let vnew = v.map(|x| Borrowed::from_object("v", x)).transpose()?;
    let [b, nq, h, d] = rank4("q", &qb)?;
    let [num_pages, page_size, hkv, dc] = rank4("k_cache", &kcb)?;
    for (name, c) in [("k_cache", &kcb), ("v_cache", &vcb)] {
        if c.shape != kcb.shape || c.dtype != kcb.dtype || !is_row_major(&c.shape, &c.strides) || dc != d {
            return Err(err(format!(
                "{name} must be a contiguous (num_pages, page_size, nheads_k, headdim={d}) array, k_cache and \
                 v_cache alike; got k_cache {kcb:?}, v_cache {vcb:?}"
            )));
        }
    }
    let n_new = match (&knew, &vnew) {
        (None, None) => 0,
        (Some(kn), Some(vn)) => {
            let want = [b, rank4("k", kn)?[1], hkv, d];
            if kn.shape != want || vn.shape != want {
                return Err(err(format!(
                    "k and v must both have shape (batch, seqlen_new, nheads_k, headdim) = {want:?}; got {kn:?}, {vn:?}"
                )));
            }
            want[1]
        }
        _ => return Err(err("k and v must be given together (the new keys and values to append)".into())),
    };
    let (cos_b, sin_b) = match (rotary_cos, rotary_sin) {
        (None, None) => (None, None),
        (Some(c), Some(s)) if n_new > 0 => {
            (Some(Borrowed::from_object("rotary_cos", c)?), Some(Borrowed::from_object("rotary_sin", s)?))
        }
        (Some(_), Some(_)) => {
            return Err(err("rotary_cos/rotary_sin need k and v: rotary is applied to the appended keys (and to q) \
                 (FlashAttention refuses them without new keys too); pass k and v, or no tables"
                .into()));
        }
        _ => return Err(err("rotary_cos and rotary_sin must be given together".into())),
    };
    let rotary = match (&cos_b, &sin_b) {
        (Some(c), Some(s)) => {
            let ((cos, half), (sin, _)) = (rotary_table("rotary_cos", c)?, rotary_table("rotary_sin", s)?);
            let layout = if rotary_interleaved { RotaryLayout::Interleaved } else { RotaryLayout::HalfSplit };
            Some(Rotary { cos, sin, rotary_dim: 2 * half, layout })
        }
        _ => None,
    };
    let table = table(&block_table, b)?;
    let seqlens = lengths("cache_seqlens", &cache_seqlens, b)?;
    let leftpad = match &cache_leftpad {
        Some(lp) => lengths("cache_leftpad", lp, b)?,
        None => vec![0; b],
    };
    let after: Vec<usize> = seqlens.iter().map(|&s| s + n_new).collect();
    let kverr = |e: attnkit::kvcache::KvCacheError| to_py(AttnError::from(e));
    let before = PageIndex::new(hkv, d, page_size, num_pages, &table, &seqlens, &leftpad, n_new).map_err(kverr)?;
    let index = PageIndex::new(hkv, d, page_size, num_pages, &table, &after, &leftpad, 0).map_err(kverr)?;

    let mut p = Problem::new(b, h, nq, d).with_kv_heads(hkv);
    p = p.with_causal(mods.causal).with_window(Window::new(mods.window.0, mods.window.1));
    if let Some(s) = mods.scale {
        p = p.with_scale(s);
    }
    apply_mods(&mut p, mods.softcap, mods.alibi_slopes.clone(), None, None, None, None).map_err(to_py)?;
    let mut q32 = f32_contiguous(&src("q", &qb, BNHD)?, [b, h, nq, d]);
    let new32 = |x: &Option<Borrowed<'_>>, name| -> PyResult<Vec<f32>> {
        match x {
            Some(x) => Ok(f32_contiguous(&src(name, x, BNHD)?, [b, hkv, n_new, d])),
            None => Ok(Vec::new()),
        }
    };
    let (k32, v32) = (new32(&knew, "k")?, new32(&vnew, "v")?);
    let (start, per_pos) =
        (seqlens.iter().zip(&leftpad).map(|(s, l)| s - l).collect::<Vec<_>>(), p.causal || !p.window.is_unbounded());
    if let Some(r) = &rotary {
        // Append checks K's positions; q's reach `start + N_q − 1` when it rotates per position.
        let last = start.iter().max().copied().unwrap_or(0) + if per_pos { nq.saturating_sub(1) } else { 0 };
        r.check(d, Some(last)).map_err(kverr)?;
    }
    PagedKv::new(index, pages("k_cache", &kcb)?, pages("v_cache", &vcb)?)
        .map_err(kverr)?
        .check_attend(&p, &q32, None, p.out_len(), Some(p.lse_len()))
        .map_err(to_py)?;
    let mut ins = vec![&qb, &kcb, &vcb];
    ins.extend(knew.iter().chain(&vnew).chain(&cos_b).chain(&sin_b));
    for (name, o) in [("out", &ob), ("lse", &lb)] {
        if ins.iter().any(|i| overlaps(o, i)) {
            return Err(err(format!("{name} overlaps an input; pass a fresh array")));
        }
    }
    if n_new > 0 && overlaps(&kcb, &vcb) {
        return Err(err("k_cache and v_cache share memory; appending needs two distinct caches".into()));
    }
    let out_dst = dst("out", &mut ob, [b, nq, h, d], qb.dtype)?;
    let lse_dst = &mut lse_slice(&mut lb, &p)?[..p.lse_len()];
    let opts = AppendOptions { cache_batch_idx: None, rotary };
    if n_new > 0 {
        let (kp, vp) = (pages_mut("k_cache", &mut kcb)?, pages_mut("v_cache", &mut vcb)?);
        py.detach(|| append_pages(&before, kp, vp, &k32, &v32, n_new, &opts)).map_err(to_py)?;
    }
    let kv = PagedKv::new(index, pages("k_cache", &kcb)?, pages("v_cache", &vcb)?).map_err(kverr)?;
    py.detach(|| -> Result<(), AttnError> {
        if let Some(r) = &opts.rotary {
            rotate_q(&mut q32, h, nq, d, r, &start, per_pos);
        }
        let mut o32 = vec![0.0f32; p.out_len()];
        kv.attend(&p, &q32, None, &mut o32, Some(lse_dst))?;
        write_out(&o32, [b, h, nq, d], BNHD, out_dst);
        Ok(())
    })
    .map_err(to_py)
}
