//! The flash-cuda kernel source (kernels/flash_fwd.cu) run on the CPU through the CUDA
//! emulation header (kernels/cuda_host_emu.hpp), compared with the f64 reference.
//!
//! The test compiles kernels/emu/driver.cpp (which includes the emulator and the unmodified
//! kernel source) into a shared library with g++ -std=c++20 -pthread, loads it, and runs every
//! kernel variant over the cross-validation shapes: ragged lengths, causal, sliding window,
//! cross-attention, empty rows, GQA, MQA, f16 and bf16, every compiled head dim.
//!
//! Tolerance (FlashAttention's rule): max |O − O_f64| ≤ 2·max |O_naive − O_f64| + 1e-4, where
//! O_naive is `reference::naive_same_precision` in the same dtype. LSE: |LSE − LSE_f64| ≤ 1e-3
//! (scores are accumulated in f32 from exact 16-bit products), −∞ exactly where the band is empty.
//!
//! What this proves: indexing, fragment layouts, masking, ragged tails, tile skipping, the online
//! softmax, GQA mapping and the host-side launch plan. What it cannot: GPU-only races, speed.

use attnkit::backends::reference::{attention_f64, naive_same_precision};
use attnkit::cuda::{FlashLaunch, variants};
use attnkit::{AttnArgs, DType, Problem, Tensor, Window};
use rand::{RngExt, SeedableRng};
use std::ffi::c_char;
use std::path::PathBuf;
use std::sync::OnceLock;

type RunFn = unsafe extern "C" fn(
    i32,
    i32,
    *const u16,
    *const u16,
    *const u16,
    *mut f32,
    *mut f32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    i32,
    i32,
    *mut c_char,
    usize,
) -> i32;
type ConfigFn = unsafe extern "C" fn(i32, i32, *mut i32, *mut i32, *mut i32) -> i32;

const SOURCES: [&str; 3] = [
    include_str!("../kernels/flash_fwd.cu"),
    include_str!("../kernels/cuda_host_emu.hpp"),
    include_str!("../kernels/emu/driver.cpp"),
];

/// Compiles the emulated kernel once per source version; `Err` says why it cannot (skip).
fn emu_library() -> Result<&'static libloading::Library, String> {
    static LIB: OnceLock<Result<libloading::Library, String>> = OnceLock::new();
    LIB.get_or_init(build_and_load)
        .as_ref()
        .map_err(Clone::clone)
}

fn build_and_load() -> Result<libloading::Library, String> {
    if !cfg!(target_os = "linux") {
        return Err("the emulation harness is built for Linux only".into());
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    SOURCES.hash(&mut h);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let lib_path = dir.join(format!("libattnkit_cuda_emu_{:016x}.so", h.finish()));
    if !lib_path.exists() {
        let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
        let compiler = cc::Build::new()
            .cpp(true)
            .target(&target)
            .host(&target)
            .opt_level(2)
            .cargo_metadata(false)
            .cargo_warnings(false)
            .try_get_compiler()
            .map_err(|e| format!("no C++ compiler: {e}"))?;
        let tmp = lib_path.with_extension(format!("tmp{}", std::process::id()));
        let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels/emu/driver.cpp");
        let mut cmd = compiler.to_command();
        cmd.args([
            "-std=c++20",
            "-pthread",
            "-O2",
            "-fPIC",
            "-shared",
            "-Wall",
            "-Wextra",
            "-Wno-unknown-pragmas",
            "-Werror",
            "-o",
        ])
        .arg(&tmp)
        .arg(&driver);
        let out = cmd.output().map_err(|e| {
            format!(
                "could not run the C++ compiler ({:?}): {e}",
                compiler.path()
            )
        })?;
        if !out.status.success() {
            // A compiler that exists but rejects the source is a failure, not a skip.
            panic!(
                "emulator build failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::rename(&tmp, &lib_path).map_err(|e| e.to_string())?;
    }
    // SAFETY: the library is the driver we just built; loading it runs no initializers beyond
    // C++ static constructors of that driver (none with side effects).
    unsafe { libloading::Library::new(&lib_path) }
        .map_err(|e| format!("dlopen {}: {e}", lib_path.display()))
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

#[test]
fn emulator_config_matches_rust_variant_table() {
    let lib = require_emu!();
    // SAFETY: symbol type matches attnkit_emu_config in kernels/emu/driver.cpp.
    let config: libloading::Symbol<ConfigFn> =
        unsafe { lib.get(b"attnkit_emu_config") }.expect("symbol");
    for v in variants() {
        let (mut br, mut bc, mut smem) = (0, 0, 0);
        // SAFETY: out-pointers are valid locals.
        let rc = unsafe { config(v.bf16 as i32, v.dp as i32, &mut br, &mut bc, &mut smem) };
        assert_eq!(rc, 0, "{} missing in the kernel", v.kernel_name());
        assert_eq!(
            (br as usize, bc as usize, smem as usize),
            (v.br(), v.bc, v.smem_bytes()),
            "{}",
            v.kernel_name()
        );
    }
}

struct Case {
    name: &'static str,
    dtype: DType,
    b: usize,
    h: usize,
    hkv: usize,
    nq: usize,
    nk: usize,
    d: usize,
    causal: bool,
    window: Window,
}

const fn case(
    name: &'static str,
    dtype: DType,
    b: usize,
    h: usize,
    hkv: usize,
    nq: usize,
    nk: usize,
    d: usize,
    causal: bool,
    window: (i64, i64),
) -> Case {
    Case {
        name,
        dtype,
        b,
        h,
        hkv,
        nq,
        nk,
        d,
        causal,
        window: Window {
            left: window.0,
            right: window.1,
        },
    }
}

use DType::{BF16, F16};
const UNB: (i64, i64) = (-1, -1);

/// The cross-validation shapes, sized for 128 OS threads per block on a 2-core machine.
const CASES: &[Case] = &[
    case("f16 d64 ragged", F16, 1, 2, 2, 100, 100, 64, false, UNB),
    case(
        "f16 d64 causal 2 q-tiles",
        F16,
        1,
        1,
        1,
        150,
        150,
        64,
        true,
        UNB,
    ),
    case("bf16 d64 single token", BF16, 1, 1, 1, 1, 1, 64, false, UNB),
    case(
        "bf16 d128 window",
        BF16,
        1,
        1,
        1,
        130,
        130,
        128,
        false,
        (16, 8),
    ),
    case(
        "f16 d128 causal batch 2",
        F16,
        2,
        1,
        1,
        70,
        70,
        128,
        true,
        UNB,
    ),
    case(
        "f16 d40 GQA causal cross",
        F16,
        1,
        4,
        2,
        70,
        90,
        40,
        true,
        UNB,
    ),
    case("bf16 d80 MQA", BF16, 1, 3, 1, 33, 65, 80, false, UNB),
    case(
        "f16 d96 right window cross",
        F16,
        1,
        1,
        1,
        64,
        200,
        96,
        false,
        (-1, 10),
    ),
    case(
        "bf16 d32 causal empty rows",
        BF16,
        1,
        2,
        1,
        200,
        60,
        32,
        true,
        UNB,
    ),
    case("f16 d160", F16, 1, 1, 1, 50, 70, 160, false, UNB),
    case("bf16 d192 causal", BF16, 1, 1, 1, 40, 45, 192, true, UNB),
    case("f16 d256 window", F16, 1, 1, 1, 65, 33, 256, false, (5, 5)),
    case(
        "bf16 d48 causal+left window",
        BF16,
        1,
        1,
        1,
        140,
        140,
        48,
        true,
        (20, -1),
    ),
    case(
        "f16 d64 narrow window skips tiles",
        F16,
        1,
        1,
        1,
        450,
        450,
        64,
        false,
        (30, 0),
    ),
    case(
        "bf16 d128 GQA batch 2 causal",
        BF16,
        2,
        4,
        2,
        90,
        90,
        128,
        true,
        UNB,
    ),
    case("f16 d80 decode-like", F16, 1, 2, 2, 3, 190, 80, true, UNB),
];

#[derive(Debug)]
struct Measured {
    err: f64,
    naive_err: f64,
    lse_err: f64,
}

fn run_case(lib: &libloading::Library, c: &Case, seed: u64) -> Measured {
    let p = Problem::new(c.b, c.h, c.nq, c.d)
        .with_kv_heads(c.hkv)
        .with_seq_k(c.nk)
        .with_causal(c.causal)
        .with_window(c.window)
        .with_dtype(c.dtype);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut gen_t = |n: usize| {
        Tensor::from_f32(
            &(0..n)
                .map(|_| rng.random_range(-2.0f32..2.0))
                .collect::<Vec<_>>(),
            c.dtype,
        )
    };
    let (q, k, v) = (gen_t(p.q_len()), gen_t(p.kv_len()), gen_t(p.kv_len()));
    let bits = |t: &Tensor| -> Vec<u16> {
        match t {
            Tensor::F16(x) => x.iter().map(|e| e.to_bits()).collect(),
            Tensor::BF16(x) => x.iter().map(|e| e.to_bits()).collect(),
            Tensor::F32(_) => unreachable!("cases are 16-bit"),
        }
    };
    let (qb, kb, vb) = (bits(&q), bits(&k), bits(&v));
    let l = FlashLaunch::plan(&p, c.dtype).expect("plan");
    let mut o = vec![f32::NAN; p.out_len()];
    let mut lse = vec![f32::NAN; p.lse_len()];
    let mut err = vec![0 as c_char; 512];
    // SAFETY: symbol type matches attnkit_emu_flash_fwd in kernels/emu/driver.cpp.
    let run: libloading::Symbol<RunFn> =
        unsafe { lib.get(b"attnkit_emu_flash_fwd") }.expect("symbol");
    // SAFETY: every buffer has the length the problem implies; err has err.len() bytes.
    let rc = unsafe {
        run(
            l.variant.bf16 as i32,
            l.variant.dp as i32,
            qb.as_ptr(),
            kb.as_ptr(),
            vb.as_ptr(),
            o.as_mut_ptr(),
            lse.as_mut_ptr(),
            p.batch as i32,
            l.heads,
            l.kv_heads,
            l.nq,
            l.nk,
            l.d,
            l.scale_log2,
            l.win_left,
            l.win_right,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    let msg: String = err
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as u8 as char)
        .collect();
    assert_eq!(rc, 0, "{}: emulator reported: {msg}", c.name);

    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    let (o64, l64) = attention_f64(&args);
    let naive = naive_same_precision(&args);
    let max_err = |x: &[f32]| {
        x.iter()
            .zip(&o64)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max)
    };
    assert!(
        o.iter().all(|x| x.is_finite()),
        "{}: O has unwritten or non-finite entries",
        c.name
    );
    let mut lse_err = 0.0f64;
    for (i, (a, b)) in lse.iter().zip(&l64).enumerate() {
        if b.is_infinite() {
            assert!(
                *a == f32::NEG_INFINITY,
                "{}: row {i} has an empty band, LSE {a}",
                c.name
            );
        } else {
            lse_err = lse_err.max((*a as f64 - b).abs());
        }
    }
    Measured {
        err: max_err(&o),
        naive_err: max_err(&naive),
        lse_err,
    }
}

#[test]
fn emulated_kernel_matches_reference() {
    let lib = require_emu!();
    let mut failures = Vec::new();
    for (i, c) in CASES.iter().enumerate() {
        let t = std::time::Instant::now();
        let m = run_case(lib, c, 1000 + i as u64);
        let tol = 2.0 * m.naive_err + 1e-4;
        eprintln!(
            "{:<30} max|O-ref| {:.3e}  naive {:.3e}  tol {:.3e}  max|LSE-ref| {:.3e}  ({:.1}s)",
            c.name,
            m.err,
            m.naive_err,
            tol,
            m.lse_err,
            t.elapsed().as_secs_f64()
        );
        if m.err > tol || m.lse_err > 1e-3 {
            failures.push(format!("{}: {m:?} (tol {tol:.3e})", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "outside tolerance:\n{}",
        failures.join("\n")
    );
}
