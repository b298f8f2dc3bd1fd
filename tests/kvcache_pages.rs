//! Caller-owned pages (`attnkit::kvcache::{PageIndex, PagedKv, append_pages}`, what the Python
//! `flash_attn_with_kvcache(block_table=...)` and the candle door run on): append and attention
//! on borrowed storage give bitwise the results of an owned [`KvCache`] with the same block table
//! (same writes, same staged blocks), and the borrowed index's refusals write nothing. The owned
//! cache itself is checked against the f64 oracle in tests/kvcache.rs.

use attnkit::kvcache::{
    AppendOptions, KvCache, KvCacheError, KvDType, PageIndex, PagedKv, Pages, PagesMut, Rotary, RotaryLayout,
    append_pages,
};
use attnkit::{Problem, seeded::normal_values};
use half::bf16;

const HKV: usize = 2;
const D: usize = 32;
const PS: usize = 16;
const MP: usize = 4;
const NUM_PAGES: usize = 10;

/// A shuffled table for 2 sequences: pages of the two interleaved, 1 and 6 spare.
const TABLE: [i32; 8] = [9, 0, 7, 2, 8, 3, 5, 4];

fn rows() -> usize {
    NUM_PAGES * PS * HKV * D
}

/// Appends `lens[b]` tokens (then `n` more with rotary) into borrowed pages of `dtype` and into an
/// owned cache; returns both attention outputs.
fn both(dtype: KvDType, lens: [usize; 2], n: usize) -> (Vec<f32>, Vec<f32>) {
    let mut owned = KvCache::paged(2, HKV, D, PS, NUM_PAGES, MP, TABLE.to_vec(), dtype).unwrap();
    let (mut k32, mut v32) = (vec![0.0f32; rows()], vec![0.0f32; rows()]);
    let (mut k16, mut v16) = (vec![bf16::ZERO; rows()], vec![bf16::ZERO; rows()]);
    let (cos, sin) = Rotary::tables(MP * PS, D / 2, 10000.0);
    let rot = Rotary { cos: &cos, sin: &sin, rotary_dim: D / 2, layout: RotaryLayout::HalfSplit };
    let mut seqlens = vec![0usize; 2];
    let lp = [0usize, 3];
    owned.set_lengths(&[lp[0], lp[1]], Some(&lp)).unwrap();
    seqlens.copy_from_slice(&lp);
    for (step, (count, rotary)) in [(lens, None), ([n, n], Some(rot))].into_iter().enumerate() {
        for b in 0..2 {
            let idx = [b];
            let opts = AppendOptions { cache_batch_idx: Some(&idx), rotary };
            let kn = normal_values(HKV * count[b] * D, 10 * step as u64 + 2 * b as u64);
            let vn = normal_values(HKV * count[b] * D, 10 * step as u64 + 2 * b as u64 + 1);
            owned.append(&kn, &vn, count[b], &opts).unwrap();
            // Reserve 0: the reserve applies to every sequence, and this appends to one;
            // append_pages checks the room and the entries of the sequence it writes.
            let ix = PageIndex::new(HKV, D, PS, NUM_PAGES, &TABLE, &seqlens, &lp, 0).unwrap();
            let (kp, vp) = match dtype {
                KvDType::F32 => (PagesMut::F32(&mut k32), PagesMut::F32(&mut v32)),
                _ => (PagesMut::BF16(&mut k16), PagesMut::BF16(&mut v16)),
            };
            append_pages(&ix, kp, vp, &kn, &vn, count[b], &opts).unwrap();
            seqlens[b] += count[b];
        }
    }
    assert_eq!(owned.seqlens(), seqlens.as_slice());
    let p = Problem::new(2, 4, n, D).with_kv_heads(HKV).with_causal(true);
    let q = normal_values(p.q_len(), 99);
    let (mut o_owned, mut o_borrowed) = (vec![0.0f32; p.out_len()], vec![0.0f32; p.out_len()]);
    owned.attend(&p, &q, None, &mut o_owned, None).unwrap();
    let ix = PageIndex::new(HKV, D, PS, NUM_PAGES, &TABLE, &seqlens, &lp, 0).unwrap();
    let (kp, vp) = match dtype {
        KvDType::F32 => (Pages::F32(&k32), Pages::F32(&v32)),
        _ => (Pages::BF16(&k16), Pages::BF16(&v16)),
    };
    PagedKv::new(ix, kp, vp).unwrap().attend(&p, &q, None, &mut o_borrowed, None).unwrap();
    (o_owned, o_borrowed)
}

#[test]
fn borrowed_pages_equal_an_owned_cache_bitwise() {
    for (dtype, lens, n) in [(KvDType::F32, [20, 45], 1), (KvDType::BF16, [3, 33], 4), (KvDType::F32, [0, 47], 9)] {
        let (a, b) = both(dtype, lens, n);
        assert!(a.iter().all(|x| x.is_finite()));
        assert!(a == b, "{dtype} lens {lens:?} n {n}: borrowed pages differ from the owned cache");
    }
}

#[test]
fn borrowed_index_refusals_write_nothing() {
    let (mut k, mut v) = (vec![1.0f32; rows()], vec![2.0f32; rows()]);
    let lp = [0usize, 0];
    let kn = normal_values(2 * HKV * D, 1);
    // Padding past the reached slots is accepted (never read); a reached bad entry is not.
    let mut table = TABLE;
    table[5] = -1; // sequence 1's second page
    assert!(PageIndex::new(HKV, D, PS, NUM_PAGES, &table, &[5, 16], &lp, 0).is_ok());
    let e = PageIndex::new(HKV, D, PS, NUM_PAGES, &table, &[5, 16], &lp, 1).unwrap_err();
    assert_eq!(e, KvCacheError::BadPageIndex { batch: 1, slot: 1, page: -1, num_pages: NUM_PAGES });
    let e = PageIndex::new(HKV, D, PS, NUM_PAGES, &TABLE, &[5, 64], &lp, 1).unwrap_err();
    assert_eq!(e, KvCacheError::CacheFull { batch: 1, seqlen: 64, new_tokens: 1, capacity: 64 });
    assert!(e.to_string().contains("block_table"), "{e}");
    let e = PageIndex::new(HKV, D, PS, NUM_PAGES, &TABLE[..7], &[5, 6], &lp, 0).unwrap_err();
    assert!(matches!(e, KvCacheError::ShapeMismatch { what: "block_table", .. }), "{e:?}");
    let e = PageIndex::new(HKV, D, 8, NUM_PAGES, &TABLE, &[5, 6], &lp, 0).unwrap_err();
    assert_eq!(e, KvCacheError::PageSizeTooSmall { page_size: 8, min: 16 });
    // An index built without the reserve: append_pages still refuses the unreached bad entry.
    let ix = PageIndex::new(HKV, D, PS, NUM_PAGES, &table, &[5, 16], &lp, 0).unwrap();
    let r = append_pages(&ix, PagesMut::F32(&mut k), PagesMut::F32(&mut v), &kn, &kn, 1, &AppendOptions::default());
    assert!(matches!(r, Err(attnkit::AttnError::KvCache(KvCacheError::BadPageIndex { batch: 1, slot: 1, .. }))));
    // Storage of the wrong length, and K/V of different types.
    let ix = PageIndex::new(HKV, D, PS, NUM_PAGES, &TABLE, &[5, 6], &lp, 1).unwrap();
    let r = append_pages(&ix, PagesMut::F32(&mut k[D..]), PagesMut::F32(&mut v), &kn, &kn, 1, &Default::default());
    assert!(matches!(r, Err(attnkit::AttnError::KvCache(KvCacheError::ShapeMismatch { what: "k_cache", .. }))));
    assert!(k.iter().all(|&x| x == 1.0) && v.iter().all(|&x| x == 2.0), "a refusal wrote");
    let k16 = vec![bf16::ZERO; rows()];
    let ix = PageIndex::new(HKV, D, PS, NUM_PAGES, &TABLE, &[5, 6], &lp, 0).unwrap();
    assert_eq!(PagedKv::new(ix, Pages::BF16(&k16), Pages::F32(&v)).unwrap_err(), KvCacheError::DTypeMismatch);
}
