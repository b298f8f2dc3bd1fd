//! The flash-cuda backward kernels (kernels/flash_bwd.cu) run on the CPU through the CUDA
//! emulation header, compared with the f64 gradient oracle.
//!
//! kernels/emu/driver_bwd.cpp (the emulator + the unmodified kernel source) is compiled by g++
//! into a shared library and called with the `FlashBwdParams` and grid that
//! `FlashBwdLaunch::plan_for` builds, as the GPU launch does: preprocess, main, convert, dsink.
//! O and LSE are the f64 forward's rounded to f32 (what the forward hands the backward); dO is
//! seeded normal f32.
//!
//! Cases: ragged last key and query tiles, several key tiles and several splits, GQA and MQA,
//! causal, windows (rows left empty), cross-attention both ways, packed varlen with an empty
//! sequence, seqused_k down to 0, softcap + ALiBi (per head and per sequence), sinks with empty
//! rows; every head-dim variant, f16 and bf16. Tolerance: `attnkit::validate::gradient_tolerance`
//! (twice the naive same-precision backward's error plus a rounding floor), the rule the CPU
//! backends meet. Buffers are pre-filled with NaN, so an element the kernels never write fails,
//! and the emulator fills shared memory with NaN, so a read before the barrier that publishes it
//! shows. A second test asserts bitwise run-to-run equality (no atomics, fixed sum orders).
//!
//! What this proves: indexing, tiling, masks, modifiers, GQA accumulation, the split/convert
//! bookkeeping and the host plan. What it cannot: GPU-only races, speed. Needs g++, not cudarc.

mod common;

use attnkit::backends::reference::attention_f64;
use attnkit::cuda::{DEFAULT_SMS, FlashBwdLaunch, FlashBwdParams, ModData, bwd_variants};
use attnkit::grad::oracle::gradients_f64;
use attnkit::validate::{compare, gradient_tolerance};
use attnkit::{AttnArgs, DType, Problem, Tensor, Window, alibi_slopes};
use std::ffi::c_char;
use std::sync::OnceLock;

type RunFn = unsafe extern "C" fn(i32, i32, u32, u32, u32, u32, u32, FlashBwdParams, *mut c_char, usize) -> i32;
type LayoutFn = unsafe extern "C" fn(*mut c_char, usize) -> i32;
type ConfigFn = unsafe extern "C" fn(i32, i32, *mut i32, *mut i32, *mut i32) -> i32;

const SOURCES: [&str; 4] = [
    include_str!("../kernels/flash_common.cuh"),
    include_str!("../kernels/flash_bwd.cu"),
    include_str!("../kernels/cuda_host_emu.hpp"),
    include_str!("../kernels/emu/driver_bwd.cpp"),
];

fn emu_library() -> Result<&'static libloading::Library, String> {
    static LIB: OnceLock<Result<libloading::Library, String>> = OnceLock::new();
    LIB.get_or_init(|| common::emu::build_and_load("kernels/emu/driver_bwd.cpp", &SOURCES, "libattnkit_cuda_emu_bwd"))
        .as_ref()
        .map_err(Clone::clone)
}

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

fn c_string(buf: &[c_char]) -> String {
    buf.iter().take_while(|&&b| b != 0).map(|&b| b as u8 as char).collect()
}

#[test]
fn bwd_params_layout_and_tiles_match_the_c_compiler() {
    let lib = require_emu!();
    // SAFETY: symbol types match attnkit_emu_bwd_params_layout / _bwd_config in driver_bwd.cpp.
    let (layout, config) = unsafe {
        let l: libloading::Symbol<LayoutFn> = lib.get(b"attnkit_emu_bwd_params_layout").expect("symbol");
        let c: libloading::Symbol<ConfigFn> = lib.get(b"attnkit_emu_bwd_config").expect("symbol");
        (l, c)
    };
    let mut buf = vec![0 as c_char; 1024];
    // SAFETY: buf has buf.len() bytes; the function NUL-terminates within them.
    let n = unsafe { layout(buf.as_mut_ptr(), buf.len()) };
    assert!(n > 0 && (n as usize) < buf.len(), "layout string of {n} bytes");
    assert_eq!(c_string(&buf), FlashBwdParams::layout_string(), "kernels/flash_bwd.cu and src/cuda/bwd.rs disagree");
    for v in bwd_variants() {
        let (mut bc, mut br, mut smem) = (0, 0, 0);
        // SAFETY: out-pointers are valid locals.
        let rc = unsafe { config(v.bf16 as i32, v.dp as i32, &mut bc, &mut br, &mut smem) };
        assert_eq!(rc, 0, "{} missing in the kernel", v.kernel_name());
        assert_eq!((bc as usize, br as usize, smem as usize), (v.bc, v.br, v.smem_bytes()), "{}", v.kernel_name());
    }
}

/// Gradients from the emulated kernels: (dq, dk, dv, dsinks, splits).
type EmuGrads = (Vec<f32>, Vec<f32>, Vec<f32>, Option<Vec<f32>>, usize);

/// Runs the emulated backward of `p` planned for `sms` SMs on the given inputs.
fn emulate(
    lib: &libloading::Library,
    p: &Problem,
    qkv: (&Tensor, &Tensor, &Tensor),
    (o, lse, d_out): (&[f32], &[f32], &[f32]),
    sms: usize,
) -> Result<EmuGrads, String> {
    let bits = common::emu::half_bits;
    // The emulator's fault record is process-wide: one launch at a time.
    static EMU_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = EMU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let l = FlashBwdLaunch::plan_for(p, p.dtype, sms).map_err(|r| r.join("; "))?;
    let (qb, kb, vb) = (bits(qkv.0), bits(qkv.1), bits(qkv.2));
    let (mut dq, mut dk, mut dv) =
        (vec![f32::NAN; p.out_len()], vec![f32::NAN; p.kv_len()], vec![f32::NAN; p.kv_len()]);
    let mut dsinks = p.mods.sinks.as_ref().map(|s| vec![f32::NAN; s.len()]);
    let (nd, na) = l.scratch_elems();
    let (mut delta, mut accum) = (vec![f32::NAN; nd], vec![f32::NAN; na]);
    let md = ModData::of(p);
    let fa = |x: &Option<Vec<f32>>| x.as_ref().map_or(0, |x| x.as_ptr() as usize as u64);
    let ia = |x: &Option<Vec<i32>>| x.as_ref().map_or(0, |x| x.as_ptr() as usize as u64);
    let a16 = |x: &[u16]| x.as_ptr() as usize as u64;
    let a32 = |x: &[f32]| x.as_ptr() as usize as u64;
    let m32 = |x: &mut [f32]| x.as_mut_ptr() as usize as u64;
    let params = l
        .params
        .with_inputs([a16(&qb), a16(&kb), a16(&vb), a32(o), a32(d_out), a32(lse)])
        .with_outputs([
            m32(&mut dq),
            m32(&mut dk),
            m32(&mut dv),
            dsinks.as_deref_mut().map_or(0, m32),
            m32(&mut delta),
            m32(&mut accum),
        ])
        .with_mods([
            fa(&md.alibi_slopes),
            fa(&md.sinks),
            ia(&md.cu_seqlens_q),
            ia(&md.cu_seqlens_k),
            ia(&md.seqused_k),
        ]);
    let mut err = vec![0 as c_char; 512];
    // SAFETY: symbol type matches attnkit_emu_flash_bwd in kernels/emu/driver_bwd.cpp.
    let run: libloading::Symbol<RunFn> = unsafe { lib.get(b"attnkit_emu_flash_bwd") }.map_err(|e| e.to_string())?;
    let (gx, gy, gz) = l.grid;
    // SAFETY: every buffer in params lives until the call returns and has the length the
    // problem and plan imply (the GPU launch's contract); err has err.len() bytes.
    let rc = unsafe {
        run(
            l.variant.bf16 as i32,
            l.variant.dp as i32,
            gx,
            gy,
            gz,
            l.preprocess_blocks,
            l.convert_blocks,
            params,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc != 0 {
        return Err(c_string(&err));
    }
    Ok((dq, dk, dv, dsinks, l.splits()))
}

/// O and LSE of the exact forward, rounded to f32, and a seeded dO.
fn forward_and_dout(args: &AttnArgs<'_>) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (o, lse) = attention_f64(args);
    let d_out = attnkit::seeded::normal_values(args.problem().out_len(), 21);
    (o.iter().map(|&x| x as f32).collect(), lse.iter().map(|&x| x as f32).collect(), d_out)
}

fn cases() -> Vec<(&'static str, Problem)> {
    let sinks = |h: usize| attnkit::seeded::normal_values(h, 11);
    let per_seq = |n: usize| attnkit::seeded::normal_values(n, 12).iter().map(|x| x.abs() * 0.3).collect();
    let packed = |cq: &[usize], ck: &[usize], h: usize, hkv: usize, d: usize| {
        Problem::new(1, h, *cq.last().unwrap(), d)
            .with_kv_heads(hkv)
            .with_seq_k(*ck.last().unwrap())
            .with_varlen(cq.to_vec(), ck.to_vec())
    };
    vec![
        ("ragged_several_tiles_d64", Problem::new(1, 2, 77, 64).with_seq_k(200)),
        ("gqa_causal_d32", Problem::new(2, 4, 70, 32).with_kv_heads(2).with_causal(true)),
        ("mqa_cross_q_gt_k_d128", Problem::new(1, 3, 90, 128).with_kv_heads(1).with_seq_k(45)),
        ("window_empty_rows_d40", Problem::new(1, 2, 60, 40).with_seq_k(25).with_window(Window::new(3, 0))),
        ("window_both_d80", Problem::new(1, 1, 110, 80).with_window(Window::new(20, 7))),
        ("causal_left_d96", Problem::new(1, 2, 66, 96).with_causal(true).with_window(Window::new(30, -1))),
        (
            "softcap_alibi_gqa_d160",
            Problem::new(1, 4, 40, 160).with_kv_heads(2).with_seq_k(50).with_softcap(3.0).with_alibi(alibi_slopes(4)),
        ),
        (
            "sinks_causal_empty_rows_d48",
            Problem::new(2, 2, 50, 48).with_seq_k(30).with_causal(true).with_sinks(sinks(2)),
        ),
        ("varlen_causal_gqa_d64", packed(&[0, 37, 37, 100], &[0, 50, 60, 130], 2, 1, 64).with_causal(true)),
        (
            "varlen_alibi_sinks_softcap_d192",
            packed(&[0, 20, 45], &[0, 30, 47], 2, 2, 192).with_alibi(per_seq(4)).with_sinks(sinks(2)).with_softcap(4.0),
        ),
        ("softcap_2e38_causal_d64", Problem::new(1, 2, 45, 64).with_causal(true).with_softcap(2e38)),
        ("seqused_ragged_d256", Problem::new(3, 1, 20, 256).with_seq_k(40).with_seqused_k(vec![40, 7, 0])),
    ]
}

#[test]
fn emulated_backward_matches_the_gradient_oracle() {
    let lib = require_emu!();
    let mut failures = Vec::new();
    let (mut checked, mut split_runs, mut shared_runs) = (0, 0, 0);
    let cases = cases();
    for (ci, (name, problem)) in cases.iter().enumerate() {
        // f16 planned for one SM (few splits: a split owns several key blocks, so its dQ partial
        // accumulates), bf16 for DEFAULT_SMS (a split per key block where the keys allow);
        // alternating per case so the table covers both dtypes without doubling its cost.
        let (dtype, sms) = if ci % 2 == 0 { (DType::F16, 1) } else { (DType::BF16, DEFAULT_SMS) };
        let p = problem.clone().with_dtype(dtype);
        p.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        let t = std::time::Instant::now();
        let (q, k, v) = common::qkv(&p, 7);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let (o, lse, d_out) = forward_and_dout(&args);
        let (dq, dk, dv, dsinks, splits) = match emulate(lib, &p, (&q, &k, &v), (&o, &lse, &d_out), sms) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{name} {dtype}: emulator fault: {e}"));
                continue;
            }
        };
        let oracle = gradients_f64(&args, &d_out, false);
        let tol = gradient_tolerance(&args, &d_out, &oracle);
        let mut line = format!("{name:<34} {:<4} splits {splits:>2}", dtype.as_str());
        let mut judge = |what: &str, got: &[f32], want: &[f64], bound: f64| {
            let st = compare(got, want);
            line += &format!("  {what} {:.2e}/{:.2e}", st.max_abs, bound);
            if !st.within(bound) {
                failures.push(format!(
                    "{name} {dtype} {what}: max|err| {:.3e} > bound {bound:.3e} (non-finite/unwritten {})",
                    st.max_abs, st.non_finite
                ));
            }
        };
        judge("dq", &dq, &oracle.dq, tol.dq.bound);
        judge("dk", &dk, &oracle.dk, tol.dk.bound);
        judge("dv", &dv, &oracle.dv, tol.dv.bound);
        if let (Some(g), Some(o), Some(t)) = (&dsinks, &oracle.dsinks, tol.dsinks) {
            judge("dsinks", g, o, t.bound);
        }
        eprintln!("{line}  ({:.1}s)", t.elapsed().as_secs_f64());
        checked += 1;
        split_runs += (splits > 1) as usize;
        let l = FlashBwdLaunch::plan_for(&p, dtype, sms).unwrap();
        let key_blocks = p
            .mods
            .varlen
            .as_ref()
            .map_or(p.seq_k, |v| v.cu_seqlens_k.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0));
        shared_runs += (key_blocks.div_ceil(l.variant.bc) > splits) as usize;
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(checked, cases.len());
    assert!(split_runs >= 4, "only {split_runs} runs had several dQ partial buffers");
    assert!(shared_runs >= 3, "only {shared_runs} runs had a split owning several key blocks");
}

/// Deterministic mode: the same launch twice gives bitwise identical dQ, dK, dV and dsinks
/// (several splits and GQA, so partial buffers and head accumulation are both exercised).
#[test]
fn emulated_backward_is_bitwise_deterministic() {
    let lib = require_emu!();
    let p = Problem::new(1, 4, 100, 64)
        .with_kv_heads(2)
        .with_seq_k(260)
        .with_causal(true)
        .with_sinks(vec![0.3, -0.1, 0.0, 0.5])
        .with_dtype(DType::BF16);
    let (q, k, v) = common::qkv(&p, 3);
    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    let (o, lse, d_out) = forward_and_dout(&args);
    let run = || emulate(lib, &p, (&q, &k, &v), (&o, &lse, &d_out), 3).unwrap();
    let (a, b) = (run(), run());
    assert!(a.4 > 1, "want several splits, got {}", a.4);
    let bits = |g: &EmuGrads| -> Vec<u32> {
        g.0.iter().chain(&g.1).chain(&g.2).chain(g.3.iter().flatten()).map(|x| x.to_bits()).collect()
    };
    assert_eq!(bits(&a), bits(&b), "two runs of the same launch differ");
}
