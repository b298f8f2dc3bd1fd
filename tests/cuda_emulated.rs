//! The flash-cuda kernel source (kernels/flash_fwd.cu) run on the CPU through the CUDA
//! emulation header (kernels/cuda_host_emu.hpp), compared with the f64 reference.
//!
//! The test compiles kernels/emu/driver.cpp (which includes the emulator and the unmodified
//! kernel source) into a shared library with g++ -std=c++20 -pthread, loads it, and runs every
//! kernel variant over the cross-validation shapes: ragged lengths, causal, sliding window,
//! cross-attention, empty rows, GQA, MQA, f16 and bf16, every compiled head dim.
//!
//! Shapes: the shared cross-validation table (tests/common) × {f16, bf16}, plus a few extra rows
//! so every compiled head-dim variant runs, and decode shapes that take the split-KV path
//! (partials + flash_combine; N_q = 1, GQA packing, ragged N_k, causal, windows). The f16 run of
//! a table shape is planned for a 1-SM GPU (never split: the whole key range goes through the
//! pipeline in one block), the bf16 run for `DEFAULT_SMS` (split where the plan
//! chooses it); `split_*` shapes always use the default. cp.async runs eagerly or lazily
//! (landing only at its wait_group) alternating over cases and dtypes, so both a copy into a
//! buffer still in use and a read before the wait would show. Tolerance: `attnkit::validate::exact_tolerance`
//! (FlashAttention's rule, the same as tests/cross_validation.rs); LSE within 1e-4·max(1, |LSE|),
//! −∞ exactly where the band is empty. O is pre-filled with NaN, so an unwritten element fails.
//!
//! The kernel argument is the `FlashFwdParams` the GPU launch builds (`FlashLaunch::plan` plus the
//! buffer addresses), passed by value with the plan's grid; a test compares that struct's layout
//! with the C compiler's.
//!
//! What this proves: indexing, fragment layouts, masking, ragged tails, tile skipping, the online
//! softmax, GQA mapping and the host-side launch plan. What it cannot: GPU-only races, speed.
//! Runs with or without the `cuda` feature (it needs g++, not cudarc).

mod common;

use attnkit::backends::reference::attention_f64;
use attnkit::cuda::{DEFAULT_SMS, FlashFwdParams, FlashLaunch, ModData, variants};
use attnkit::validate::{compare, exact_tolerance};
use attnkit::{AttnArgs, DType, Problem, Tensor, Window, alibi_slopes};
use std::ffi::c_char;
use std::sync::OnceLock;

type RunFn = unsafe extern "C" fn(i32, i32, i32, u32, u32, u32, FlashFwdParams, *mut c_char, usize) -> i32;
type CombineFn = unsafe extern "C" fn(u32, FlashFwdParams, *mut c_char, usize) -> i32;
type LazyFn = unsafe extern "C" fn(i32);
type LayoutFn = unsafe extern "C" fn(*mut c_char, usize) -> i32;
type ConfigFn = unsafe extern "C" fn(i32, i32, i32, *mut i32, *mut i32, *mut i32, *mut i32, *mut i32) -> i32;

const SOURCES: [&str; 5] = [
    include_str!("../kernels/flash_common.cuh"),
    include_str!("../kernels/flash_fwd.cu"),
    include_str!("../kernels/flash_combine.cu"),
    include_str!("../kernels/cuda_host_emu.hpp"),
    include_str!("../kernels/emu/driver.cpp"),
];

/// Compiles the emulated kernel once per source version; `Err` says why it cannot (skip).
fn emu_library() -> Result<&'static libloading::Library, String> {
    static LIB: OnceLock<Result<libloading::Library, String>> = OnceLock::new();
    LIB.get_or_init(build_and_load).as_ref().map_err(Clone::clone)
}

fn build_and_load() -> Result<libloading::Library, String> {
    common::emu::build_and_load("kernels/emu/driver.cpp", &SOURCES, "libattnkit_cuda_emu")
}

const LSE_REL_TOL: f64 = 1e-4;

macro_rules! require_emu {
    () => {
        match emu_library() {
            Ok(lib) => lib,
            Err(why) => {
                eprintln!("SKIPPED: CUDA emulation unavailable: {why}");
                return;
            }
        }
    };
}

#[test]
fn emulator_config_matches_rust_variant_table() {
    let lib = require_emu!();
    // SAFETY: symbol type matches attnkit_emu_config in kernels/emu/driver.cpp.
    let config: libloading::Symbol<ConfigFn> = unsafe { lib.get(b"attnkit_emu_config") }.expect("symbol");
    for v in variants() {
        let (mut br, mut bc, mut smem, mut stages, mut ovl) = (0, 0, 0, 0, 0);
        // SAFETY: out-pointers are valid locals.
        let rc = unsafe {
            config(v.bf16 as i32, v.dp as i32, v.mods as i32, &mut br, &mut bc, &mut smem, &mut stages, &mut ovl)
        };
        assert_eq!(rc, 0, "{} missing in the kernel", v.kernel_name());
        assert_eq!(
            (br as usize, bc as usize, smem as usize, stages as usize, ovl != 0),
            (v.br(), v.bc, v.smem_bytes(), v.stages, v.overlap),
            "{}",
            v.kernel_name()
        );
    }
}

#[test]
fn params_layout_matches_the_c_compiler() {
    let lib = require_emu!();
    // SAFETY: symbol type matches attnkit_emu_params_layout in kernels/emu/driver.cpp.
    let layout: libloading::Symbol<LayoutFn> = unsafe { lib.get(b"attnkit_emu_params_layout") }.expect("symbol");
    let mut buf = vec![0 as c_char; 1024];
    // SAFETY: buf has buf.len() bytes; the function NUL-terminates within them.
    let n = unsafe { layout(buf.as_mut_ptr(), buf.len()) };
    assert!(n > 0 && (n as usize) < buf.len(), "layout string of {n} bytes");
    let c_side: String = buf.iter().take_while(|&&b| b != 0).map(|&b| b as u8 as char).collect();
    assert_eq!(c_side, FlashFwdParams::layout_string(), "kernels/flash_fwd.cu and src/cuda/params.rs disagree");
}

/// Extra shapes beyond the shared table, so every compiled variant (d48, d96, d160, d192) runs
/// and tile skipping / decode-like shapes are covered: (name, B, H, H_kv, N_q, N_k, D, causal, window).
#[allow(clippy::type_complexity)]
const EXTRA: &[(&str, usize, usize, usize, usize, usize, usize, bool, (i64, i64))] = &[
    ("d48_causal_left_window", 1, 1, 1, 140, 140, 48, true, (20, -1)),
    ("d96_right_window_cross", 1, 1, 1, 64, 200, 96, false, (-1, 10)),
    ("d160", 1, 1, 1, 50, 70, 160, false, (-1, -1)),
    ("d192_causal", 1, 1, 1, 40, 45, 192, true, (-1, -1)),
    ("d64_narrow_window_skips_tiles", 1, 1, 1, 450, 450, 64, false, (30, 0)),
    ("d128_gqa_batch2_causal", 2, 4, 2, 90, 90, 128, true, (-1, -1)),
    ("d80_decode_like", 1, 2, 2, 3, 190, 80, true, (-1, -1)),
    // Several key tiles of the new widths and schedules, ragged last tile: one-buffer (FA2)
    // schedule d48 128 keys, d128/d256 64 keys (d64's 128 runs in the table's ragged1000 and
    // windows); overlapped softmax d192 32 keys (d160 in the table's d160 and modifier cases).
    ("d48_gqa_ragged_3_tiles", 1, 2, 1, 60, 300, 48, false, (-1, -1)),
    ("d128_ragged_window_6_tiles", 1, 1, 1, 130, 333, 128, false, (150, 40)),
    ("d192_causal_5_tiles", 1, 1, 1, 150, 150, 192, true, (-1, -1)),
    ("d256_gqa_ragged_3_tiles", 1, 2, 1, 40, 150, 256, false, (-1, -1)),
    // Split-KV (few blocks): N_q = 1 with GQA packing, ragged N_k, causal, windows, MQA, d256.
    ("split_decode_gqa_ragged", 2, 8, 2, 1, 333, 64, false, (-1, -1)),
    ("split_decode_mqa_causal_d128", 1, 4, 1, 1, 201, 128, true, (-1, -1)),
    ("split_decode_window_d256", 1, 2, 2, 1, 150, 256, false, (40, 0)),
    ("split_decode_gqa_window_d32", 1, 4, 2, 1, 700, 32, true, (300, -1)),
    ("split_multirow_causal_window", 1, 2, 1, 5, 260, 80, true, (100, -1)),
];

fn cases() -> Vec<common::Case> {
    let mut t = common::shape_table();
    for &(name, b, h, hkv, nq, nk, d, causal, (l, r)) in EXTRA {
        let problem = Problem::new(b, h, nq, d)
            .with_kv_heads(hkv)
            .with_seq_k(nk)
            .with_causal(causal)
            .with_window(Window::new(l, r));
        t.push(common::Case { name, problem });
    }
    t
}

/// Runs the emulated kernel; returns (O, LSE) or the emulator's fault message.
fn emulate(
    lib: &libloading::Library,
    p: &Problem,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    sms: usize,
    lazy: bool,
) -> Result<(Vec<f32>, Vec<f32>, usize), String> {
    let bits = common::emu::half_bits;
    // The emulator's fault record, buffer registry and copy schedule are process-wide: one
    // launch at a time across the tests of this binary.
    static EMU_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = EMU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (qb, kb, vb) = (bits(q), bits(k), bits(v));
    let l = FlashLaunch::plan_for(p, p.dtype, sms).map_err(|r| r.join("; "))?;
    let mut o = vec![f32::NAN; p.out_len()];
    let mut lse = vec![f32::NAN; p.lse_len()];
    let (ao, al) = l.accum_elems();
    let (mut o_acc, mut lse_acc) = (vec![f32::NAN; ao], vec![f32::NAN; al]);
    let mut err = vec![0 as c_char; 512];
    // SAFETY: symbol types match attnkit_emu_flash_fwd / _flash_combine / _set_lazy_copies in
    // kernels/emu/driver.cpp.
    let (run, combine, set_lazy) = unsafe {
        let run: libloading::Symbol<RunFn> = lib.get(b"attnkit_emu_flash_fwd").map_err(|e| e.to_string())?;
        let combine: libloading::Symbol<CombineFn> =
            lib.get(b"attnkit_emu_flash_combine").map_err(|e| e.to_string())?;
        let set_lazy: libloading::Symbol<LazyFn> =
            lib.get(b"attnkit_emu_set_lazy_copies").map_err(|e| e.to_string())?;
        (run, combine, set_lazy)
    };
    // SAFETY: plain setter of the emulator's copy schedule.
    unsafe { set_lazy(lazy as i32) };
    let addr = |p: *const u16| p as usize as u64;
    // The modifier buffers (host addresses under emulation), alive until the calls return.
    let md = ModData::of(p);
    let fa = |x: &Option<Vec<f32>>| x.as_ref().map_or(0, |x| x.as_ptr() as usize as u64);
    let ia = |x: &Option<Vec<i32>>| x.as_ref().map_or(0, |x| x.as_ptr() as usize as u64);
    let mods = [fa(&md.alibi_slopes), fa(&md.sinks), ia(&md.cu_seqlens_q), ia(&md.cu_seqlens_k), ia(&md.seqused_k)];
    let params = l
        .params
        .with_mods(mods)
        .with_buffers(
            addr(qb.as_ptr()),
            addr(kb.as_ptr()),
            addr(vb.as_ptr()),
            o.as_mut_ptr() as usize as u64,
            lse.as_mut_ptr() as usize as u64,
        )
        .with_accum(o_acc.as_mut_ptr() as usize as u64, lse_acc.as_mut_ptr() as usize as u64);
    let (gx, gy, gz) = l.grid;
    // SAFETY: the params' buffers live until the call returns and have the lengths the problem
    // implies (the same contract as the GPU launch); err has err.len() bytes.
    let rc = unsafe {
        run(
            l.variant.bf16 as i32,
            l.variant.dp as i32,
            l.variant.mods as i32,
            gx,
            gy,
            gz,
            params,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    let msg = |err: &[c_char]| -> String { err.iter().take_while(|&&b| b != 0).map(|&b| b as u8 as char).collect() };
    if rc != 0 {
        return Err(msg(&err));
    }
    if let Some(blocks) = l.combine_blocks {
        // SAFETY: as above; o_acc/lse_acc hold accum_elems() floats, written by the run above.
        let rc = unsafe { combine(blocks, params, err.as_mut_ptr(), err.len()) };
        if rc != 0 {
            return Err(format!("flash_combine: {}", msg(&err)));
        }
    }
    Ok((o, lse, l.splits()))
}

/// Runs one case in one dtype and compares O and LSE with the f64 oracle; returns the number of
/// key splits, or `None` (with the failure recorded) when the emulator faulted.
fn check_run(
    lib: &libloading::Library,
    name: &str,
    p: &Problem,
    sms: usize,
    lazy: bool,
    failures: &mut Vec<String>,
) -> Option<usize> {
    let dtype = p.dtype;
    let t = std::time::Instant::now();
    let (q, k, v) = common::qkv(p, 7);
    let args = AttnArgs::new(p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    let (o, lse, splits) = match emulate(lib, p, &q, &k, &v, sms, lazy) {
        Ok(r) => r,
        Err(e) => {
            failures.push(format!("{name} {dtype}: emulator fault: {e}"));
            return None;
        }
    };
    let (oracle, oracle_lse) = attention_f64(&args);
    let stats = compare(&o, &oracle);
    let tol = exact_tolerance(&args, &oracle, dtype);
    let mut lse_err = 0.0f64;
    for (i, (&got, &want)) in lse.iter().zip(&oracle_lse).enumerate() {
        if want == f64::NEG_INFINITY {
            if got != f32::NEG_INFINITY {
                failures.push(format!("{name} {dtype}: row {i} is empty but LSE = {got}"));
            }
        } else {
            lse_err = lse_err.max((got as f64 - want).abs() / want.abs().max(1.0));
        }
    }
    eprintln!(
        "{:<32} {:<4} {} splits {:>2}  max|O-ref| {:.3e}  naive {:.3e}  bound {:.3e} (ratio {:.3})  LSE rel {:.1e}  ({:.1}s)",
        name,
        dtype.as_str(),
        if lazy { "lazy " } else { "eager" },
        splits,
        stats.max_abs,
        tol.naive_err,
        tol.bound,
        stats.max_abs / tol.bound,
        lse_err,
        t.elapsed().as_secs_f64()
    );
    if stats.non_finite > 0 || stats.max_abs > tol.bound || lse_err > LSE_REL_TOL {
        failures.push(format!(
            "{name} {dtype}: max_abs {:.3e} > bound {:.3e} or LSE rel {lse_err:.1e} or {} non-finite/unwritten",
            stats.max_abs, tol.bound, stats.non_finite
        ));
    }
    Some(splits)
}

#[test]
fn emulated_kernel_matches_reference() {
    let lib = require_emu!();
    let mut failures = Vec::new();
    let (mut checked, mut split_runs) = (0, 0);
    for (ci, case) in cases().into_iter().enumerate() {
        for dtype in [DType::F16, DType::BF16] {
            let p = case.problem.clone().with_dtype(dtype);
            let reasons = attnkit::cuda::unsupported_reasons(&p);
            if !reasons.is_empty() {
                eprintln!("skip {} {dtype}: {}", case.name, reasons.join("; "));
                continue;
            }
            let lazy = (ci % 2 == 1) != (dtype == DType::BF16);
            let sms = if dtype == DType::F16 && !case.name.starts_with("split_") { 1 } else { DEFAULT_SMS };
            if let Some(splits) = check_run(lib, case.name, &p, sms, lazy, &mut failures) {
                checked += 1;
                split_runs += (splits > 1) as usize;
            }
        }
    }
    assert!(checked >= 2 * cases().len() - 4, "only {checked} runs were checked");
    assert!(split_runs >= 10, "only {split_runs} runs took the split-KV path");
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// Score modifiers on the `_mods` entry points: each alone and combined, ALiBi per head and per
/// sequence, sinks with empty rows, packed varlen with ragged and empty sequences, seqused_k
/// ragged down to 0, across d32…d256 (the plain variants' tiles). f16 runs of
/// non-`split_` cases on one SM (never split), everything else with the default plan.
fn mod_cases() -> Vec<(&'static str, Problem)> {
    let sinks = |h: usize| attnkit::seeded::normal_values(h, 11);
    let per_seq = |n: usize| attnkit::seeded::normal_values(n, 12).iter().map(|x| x.abs() * 0.3).collect();
    let (cq, ck) = (vec![0, 37, 37, 150, 200], vec![0, 50, 60, 150, 230]);
    let packed = |cq: &[usize], ck: &[usize], h: usize, hkv: usize, d: usize| {
        Problem::new(1, h, *cq.last().unwrap(), d)
            .with_kv_heads(hkv)
            .with_seq_k(*ck.last().unwrap())
            .with_varlen(cq.to_vec(), ck.to_vec())
    };
    vec![
        (
            "alibi_causal_gqa_d64",
            Problem::new(1, 4, 150, 64).with_kv_heads(2).with_causal(true).with_alibi(alibi_slopes(4)),
        ),
        (
            "alibi_per_seq_window_d48",
            Problem::new(2, 2, 70, 48).with_seq_k(130).with_window(Window::new(30, -1)).with_alibi(per_seq(4)),
        ),
        ("softcap_d32", Problem::new(1, 2, 200, 32).with_softcap(2.0)),
        // Caps where s/c is tiny (1e4) or subnormal (2e38): the kernel switches to tanh's series.
        ("softcap_1e4_d64", Problem::new(1, 2, 70, 64).with_softcap(1e4)),
        ("softcap_2e38_d64", Problem::new(1, 1, 40, 64).with_seq_k(90).with_softcap(2e38)),
        ("sinks_empty_rows_d128", Problem::new(1, 3, 100, 128).with_seq_k(60).with_causal(true).with_sinks(sinks(3))),
        (
            "all_score_mods_causal_d80",
            Problem::new(2, 2, 90, 80)
                .with_causal(true)
                .with_alibi(alibi_slopes(2))
                .with_softcap(3.0)
                .with_sinks(sinks(2)),
        ),
        ("varlen_ragged_causal_d64", packed(&cq, &ck, 2, 1, 64).with_causal(true)),
        (
            "varlen_alibi_sinks_window_d96",
            packed(&[0, 100, 105, 160], &[0, 100, 140, 190], 2, 2, 96)
                .with_window(Window::new(20, 5))
                .with_alibi(per_seq(6))
                .with_sinks(sinks(2)),
        ),
        (
            "varlen_seqused_softcap_d160",
            packed(&cq, &ck, 1, 1, 160).with_causal(true).with_seqused_k(vec![3, 0, 30, 12]).with_softcap(4.0),
        ),
        ("seqused_ragged_d64", Problem::new(3, 2, 40, 64).with_seq_k(150).with_seqused_k(vec![150, 7, 0])),
        (
            "split_decode_seqused_sinks_alibi",
            Problem::new(2, 4, 1, 64)
                .with_kv_heads(2)
                .with_seq_k(200)
                .with_seqused_k(vec![200, 70])
                .with_sinks(sinks(4))
                .with_alibi(alibi_slopes(4)),
        ),
        (
            "split_varlen_decode_softcap_d128",
            packed(&[0, 1, 2, 3], &[0, 200, 201, 330], 2, 1, 128).with_softcap(3.0).with_sinks(sinks(2)),
        ),
        (
            "softcap_alibi_window_d128",
            Problem::new(1, 2, 90, 128)
                .with_seq_k(200)
                .with_window(Window::new(60, 10))
                .with_softcap(4.0)
                .with_alibi(alibi_slopes(2)),
        ),
        (
            "alibi_softcap_ragged_d256",
            Problem::new(1, 2, 40, 256).with_seq_k(200).with_softcap(5.0).with_alibi(alibi_slopes(2)),
        ),
        (
            "split_alibi_window_d256",
            Problem::new(1, 2, 2, 256)
                .with_seq_k(150)
                .with_causal(true)
                .with_window(Window::new(40, -1))
                .with_alibi(alibi_slopes(2)),
        ),
        (
            "split_seqused_causal_d192",
            Problem::new(2, 1, 3, 192)
                .with_seq_k(170)
                .with_causal(true)
                .with_seqused_k(vec![2, 170])
                .with_sinks(vec![0.7]),
        ),
    ]
}

#[test]
fn emulated_kernel_with_modifiers_matches_reference() {
    let lib = require_emu!();
    let mut failures = Vec::new();
    let (mut checked, mut split_runs) = (0, 0);
    let cases = mod_cases();
    for (ci, (name, problem)) in cases.iter().enumerate() {
        for dtype in [DType::F16, DType::BF16] {
            let p = problem.clone().with_dtype(dtype);
            p.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            let l = FlashLaunch::plan(&p, dtype).unwrap_or_else(|r| panic!("{name}: refused: {r:?}"));
            assert!(l.variant.mods, "{name}: modifiers must launch the _mods entry point");
            let lazy = (ci % 2 == 1) != (dtype == DType::BF16);
            let sms = if dtype == DType::F16 && !name.starts_with("split_") { 1 } else { DEFAULT_SMS };
            if let Some(splits) = check_run(lib, name, &p, sms, lazy, &mut failures) {
                checked += 1;
                split_runs += (splits > 1) as usize;
            }
        }
    }
    assert!(checked == 2 * cases.len() || !failures.is_empty(), "only {checked} of {} runs checked", 2 * cases.len());
    assert!(split_runs >= 8, "only {split_runs} modifier runs took the split-KV path");
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// The NaN/Inf policy on the emulated kernel: a NaN in V at one key reaches only the rows whose
/// band holds the key (a dropped pair's P = 0 must not multiply it; kernels/flash_fwd.cu's
/// `guard_v`), in f16 and bf16, on one SM and split; on the one-buffer (d64, d128), two-stage
/// (d32) and overlapped (d192) schedules, and decode rows that see the key in a boundary tile.
#[test]
fn emulated_kernel_keeps_a_nan_in_v_in_its_band() {
    let lib = require_emu!();
    let mut failures = Vec::new();
    let decode = Problem::new(1, 4, 1, 64).with_kv_heads(2).with_seq_k(700).with_window(Window::new(300, 0));
    let cases = [
        ("causal_gqa_d64", Problem::new(1, 4, 150, 64).with_kv_heads(2).with_causal(true), 70),
        ("window_d128", Problem::new(1, 2, 200, 128).with_window(Window::new(20, 20)), 100),
        ("causal_d32", Problem::new(1, 1, 130, 32).with_causal(true), 40),
        ("causal_cross_d192", Problem::new(1, 1, 60, 192).with_seq_k(100).with_causal(true), 60),
        ("split_decode_window_unseen", decode.clone(), 350),
        ("split_decode_window_seen", decode, 420),
    ];
    for (name, problem, key) in cases {
        for (dtype, sms) in [(DType::F16, 1), (DType::BF16, DEFAULT_SMS)] {
            let p = problem.clone().with_dtype(dtype);
            let d = p.head_dim;
            let (q, k, v) = common::qkv(&p, 7);
            let mut vd = v.to_f32();
            for kvh in 0..p.kv_heads {
                vd[(kvh * p.seq_k + key) * d + 5] = f32::NAN;
            }
            let v_nan = Tensor::from_f32(&vd, dtype);
            let clean = emulate(lib, &p, &q, &k, &v, sms, false).unwrap().0;
            let dirty = emulate(lib, &p, &q, &k, &v_nan, sms, false).unwrap().0;
            for (r, (c, x)) in clean.chunks(d).zip(dirty.chunks(d)).enumerate() {
                let i = r % p.seq_q;
                let (lo, hi) = p.key_range(i);
                if (lo..hi).contains(&key) {
                    if x.iter().all(|e| e.is_finite()) {
                        failures.push(format!("{name} {dtype}: row {r} sees key {key} but is finite"));
                    }
                } else if c.iter().zip(x).any(|(a, b)| a.to_bits() != b.to_bits()) {
                    failures.push(format!("{name} {dtype}: row {r} cannot see key {key} but changed"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
