//! Measures the approximate backends: time and peak extra heap against N, speed-up over
//! `sdpa`, and accuracy (Linformer vs exact, Performer vs input norm and vs m).
//!
//! ```text
//! cargo run --release --example approx_scaling -- [speed|errors|norms|features|all]
//!     [--reps R] [--max-n N] [--sdpa-max-n N]
//! ```
//!
//! Speed: B = 1, H = 8, D = 64, f32, k = m = 256. For each N every backend is called once to warm
//! up (first-call time and heap reported: Linformer generates its projections then), then the
//! backends are timed in alternation, R rounds, and the median is reported, so load from other
//! processes hits all of them alike. "Peak heap" is the peak of live heap bytes during one warm
//! call above what was live before it (inputs and output excluded), from the counting global
//! allocator below; resident caches (Linformer's projections) are reported separately.

use attnkit::backends::linformer::Linformer;
use attnkit::backends::performer::Performer;
use attnkit::backends::reference::attention_f64;
use attnkit::{Attention, AttnArgs, Problem, seeded};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Counts live heap bytes and their peak.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; the counters are only
// statistics and never influence what is allocated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as our caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as our caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as our caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            let now = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f`, returning (seconds, peak extra heap bytes, live bytes left behind).
fn measure(f: impl FnOnce()) -> (f64, usize, isize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let t = Instant::now();
    f();
    let secs = t.elapsed().as_secs_f64();
    let after = LIVE.load(Ordering::Relaxed);
    (secs, PEAK.load(Ordering::Relaxed) - before, after as isize - before as isize)
}

fn randn(seed: u64, n: usize, std: f64) -> Vec<f32> {
    seeded::gaussian(seed, n, std)
}

fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y).powi(2)).sum();
    (num / b.iter().map(|y| y * y).sum::<f64>()).sqrt()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mib(b: usize) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

struct Opts {
    reps: usize,
    min_n: usize,
    max_n: usize,
    sdpa_max_n: usize,
}

fn speed(o: &Opts) {
    let (h, d) = (8, 64);
    println!(
        "## speed: B=1 H={h} D={d} f32, k=m=256, {} rayon threads, median of {} alternating rounds",
        rayon::current_num_threads(),
        o.reps
    );
    let names = ["sdpa", "linformer", "performer", "performer-causal"];
    let make = |name: &str| -> Box<dyn Attention> {
        match name {
            "sdpa" => attnkit::backend("sdpa").unwrap(),
            "linformer" => Box::new(Linformer::new(256, 0).unwrap()),
            _ => Box::new(Performer::new(256, 0).unwrap()),
        }
    };
    // Every (N, backend) pair is timed once per round, all in one interleaved loop, so a change
    // in machine load between rounds hits every N and backend alike.
    struct Case {
        n: usize,
        p: Problem,
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        out: Vec<f32>,
        backends: Vec<(&'static str, Box<dyn Attention>)>,
        times: Vec<Vec<f64>>,
    }
    let mut cases = Vec::new();
    let mut n = o.min_n;
    while n <= o.max_n {
        let p = Problem::new(1, h, n, d);
        let backends: Vec<(&str, Box<dyn Attention>)> =
            names.iter().filter(|nm| **nm != "sdpa" || n <= o.sdpa_max_n).map(|nm| (*nm, make(nm))).collect();
        let times = vec![Vec::new(); backends.len()];
        let (q, k, v) = (randn(1, p.q_len(), 1.0), randn(2, p.kv_len(), 1.0), randn(3, p.kv_len(), 1.0));
        let out = vec![0.0f32; p.out_len()];
        cases.push(Case { n, p, q, k, v, out, backends, times });
        n *= 2;
    }
    for round in 0..=o.reps {
        for c in cases.iter_mut() {
            let pc = c.p.clone().with_causal(true);
            for (bi, (name, b)) in c.backends.iter().enumerate() {
                let prob = if name.ends_with("causal") { &pc } else { &c.p };
                let args = AttnArgs::new(prob, &c.q, &c.k, &c.v).unwrap();
                let out = &mut c.out;
                let (secs, peak, kept) = measure(|| b.forward_into(&args, out, None).unwrap());
                let n = c.n;
                if round == 0 {
                    println!(
                        "N={n:6} {name:17} first call {secs:8.4} s, peak extra heap {:8.2} MiB, resident after {:8.2} MiB",
                        mib(peak),
                        kept as f64 / (1u64 << 20) as f64
                    );
                } else {
                    c.times[bi].push(secs);
                    if round == 1 {
                        println!("N={n:6} {name:17} warm call peak extra heap {:8.2} MiB", mib(peak));
                    }
                }
            }
        }
    }
    let mut medians: Vec<(usize, Vec<Option<f64>>)> = Vec::new();
    for c in &cases {
        let row: Vec<Option<f64>> = names
            .iter()
            .map(|nm| c.backends.iter().position(|(b, _)| b == nm).map(|i| median(c.times[i].clone())))
            .collect();
        let cells: Vec<String> = names
            .iter()
            .zip(&row)
            .map(|(nm, t)| format!("{nm} {}", t.map_or("-".into(), |t| format!("{t:.4} s"))))
            .collect();
        println!("N={:6} median: {}", c.n, cells.join(", "));
        medians.push((c.n, row));
    }
    // Two estimates each: from the medians, and the median over rounds of the same-round ratio
    // (both N, or both backends, timed seconds apart, so a load change mostly cancels).
    let at = |n: usize, i: usize| medians.iter().find(|(m, _)| *m == n).and_then(|(_, r)| r[i]);
    let times_of = |n: usize, nm: &str| {
        cases.iter().find(|c| c.n == n).and_then(|c| c.backends.iter().position(|(b, _)| *b == nm).map(|i| &c.times[i]))
    };
    let paired = |a: &Vec<f64>, b: &Vec<f64>| median(a.iter().zip(b).map(|(x, y)| x / y).collect());
    for (i, nm) in names.iter().enumerate().skip(1) {
        if let (Some(a), Some(b), Some(ta), Some(tb)) =
            (at(4096, i), at(32768, i), times_of(4096, nm), times_of(32768, nm))
        {
            println!(
                "{nm}: log-log slope of time, N=4096→32768: {:.3} (medians), {:.3} (median of same-round ratios)",
                (b / a).ln() / 8f64.ln(),
                paired(tb, ta).ln() / 8f64.ln()
            );
        }
        if let (Some(s), Some(t), Some(ts), Some(tt)) =
            (at(4096, 0), at(4096, i), times_of(4096, "sdpa"), times_of(4096, nm))
        {
            println!(
                "{nm}: speed-up over sdpa at N=4096: {:.1}× (medians), {:.1}× (median of same-round ratios)",
                s / t,
                paired(ts, tt)
            );
        }
    }
}

fn linformer_errors() {
    println!("## linformer relative error vs exact (Q,K,V ~ N(0,1), D=64, H=1, mean of 3 seeds)");
    for n in [512usize, 1024, 4096] {
        let p = Problem::new(1, 1, n, 64);
        let mut cells = Vec::new();
        let mut exacts = Vec::new();
        for seed in 0..3u64 {
            let (q, k, v) = (
                randn(seed * 3, p.q_len(), 1.0),
                randn(seed * 3 + 1, p.kv_len(), 1.0),
                randn(seed * 3 + 2, p.kv_len(), 1.0),
            );
            let exact = attention_f64(&AttnArgs::new(&p, &q, &k, &v).unwrap()).0;
            exacts.push((q, k, v, exact));
        }
        for kk in [32usize, 64, 256] {
            let mut total = 0.0;
            for (seed, (q, k, v, exact)) in exacts.iter().enumerate() {
                let lin = Linformer::new(kk, seed as u64).unwrap();
                let out = lin.forward(&AttnArgs::new(&p, q, k, v).unwrap(), false).unwrap().out;
                total += rel_err(&out, exact);
            }
            cells.push(format!("k={kk}: {:.2}", total / 3.0));
        }
        println!("N={n:5}  {}", cells.join("  "));
    }
}

fn performer_norms() {
    let (n, d, h, m) = (256usize, 64usize, 4usize, 256usize);
    println!("## performer relative error vs input scale (N={n}, D={d}, H={h}, m={m}, mean of 4 seeds)");
    println!("| σ | mean ‖q‖ | mean ‖q‖·D^(-1/4) | rel. error of O | mean abs. LSE error (nats) |");
    println!("|---|---|---|---|---|");
    let p = Problem::new(1, h, n, d);
    for sigma in [0.25f64, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0] {
        let mut total = 0.0;
        let mut norm = 0.0;
        let mut lse_err = 0.0;
        for seed in 0..4u64 {
            let (q, k, v) = (
                randn(seed * 3, p.q_len(), sigma),
                randn(seed * 3 + 1, p.kv_len(), sigma),
                randn(seed * 3 + 2, p.kv_len(), 1.0),
            );
            norm +=
                q.chunks(d).map(|r| r.iter().map(|x| x * x).sum::<f32>().sqrt() as f64).sum::<f64>() / (h * n) as f64;
            let args = AttnArgs::new(&p, &q, &k, &v).unwrap();
            let (exact, exact_lse) = attention_f64(&args);
            let got = Performer::new(m, seed).unwrap().forward(&args, true).unwrap();
            total += rel_err(&got.out, &exact);
            let lse = got.lse.unwrap();
            lse_err += lse.iter().zip(&exact_lse).map(|(&a, b)| (a as f64 - b).abs()).sum::<f64>() / lse.len() as f64;
        }
        let norm = norm / 4.0;
        println!(
            "| {sigma} | {norm:.2} | {:.2} | {:.3} | {:.3} |",
            norm / (d as f64).powf(0.25),
            total / 4.0,
            lse_err / 4.0
        );
    }
}

fn performer_features() {
    let (n, d) = (256usize, 64usize);
    println!("## performer relative error vs m (N={n}, D={d}, H=2, σ=0.5, mean of 4 seeds)");
    let p = Problem::new(1, 2, n, d);
    let mut pts = Vec::new();
    for m in [16usize, 64, 256, 1024] {
        let mut total = 0.0;
        for seed in 0..4u64 {
            let (q, k, v) = (
                randn(seed * 3, p.q_len(), 0.5),
                randn(seed * 3 + 1, p.kv_len(), 0.5),
                randn(seed * 3 + 2, p.kv_len(), 1.0),
            );
            let args = AttnArgs::new(&p, &q, &k, &v).unwrap();
            let exact = attention_f64(&args).0;
            total += rel_err(&Performer::new(m, seed).unwrap().forward(&args, false).unwrap().out, &exact);
        }
        println!("m={m:5}: {:.4}", total / 4.0);
        pts.push(((m as f64).ln(), (total / 4.0).ln()));
    }
    let k = pts.len() as f64;
    let (mx, my) = pts.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x / k, b + y / k));
    let slope = pts.iter().map(|(x, y)| (x - mx) * (y - my)).sum::<f64>()
        / pts.iter().map(|(x, _)| (x - mx).powi(2)).sum::<f64>();
    println!("fitted log-log slope: {slope:.3}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let o = Opts {
        reps: flag("--reps", 5),
        min_n: flag("--min-n", 1024),
        max_n: flag("--max-n", 65536),
        sdpa_max_n: flag("--sdpa-max-n", 4096),
    };
    let what = args.first().filter(|a| !a.starts_with("--")).map(String::as_str).unwrap_or("all");
    if matches!(what, "errors" | "all") {
        linformer_errors();
    }
    if matches!(what, "norms" | "all") {
        performer_norms();
    }
    if matches!(what, "features" | "all") {
        performer_features();
    }
    if matches!(what, "speed" | "all") {
        speed(&o);
    }
}
