//! Accuracy against the mean-of-V baseline per input family, speed against `flash-cpu`, and the
//! accuracy–speed frontier, for the approximate backends.
//!
//! ```text
//! cargo run --release --example approx_frontier -- [errors|sharpness|speed|slope|crossover|all]
//!     [--n N] [--heads H] [--reps R] [--big-n N]
//! ```
//!
//! B = 1, D = 64, f32, H = 8 and N = 4096 unless given. "Exact" is `flash-cpu`'s output (its own
//! relative error against the f64 oracle is ~1e-6, far below every figure here; the f64 oracle
//! itself would take minutes at this size). Errors are relative Frobenius errors
//! ‖O − O_exact‖/‖O_exact‖ over all heads, one seed; "gain" is the mean-of-V baseline's error
//! divided by the backend's (> 1: better than the baseline; marked `!` when not).
//! Times: every backend called once to warm up, then all timed in alternation for R rounds
//! (default 5), median reported, so load from other processes hits all of them alike; ratios
//! come from the same run. Times do not depend on the input values, so one timing (on the
//! structured family) serves every family's frontier.

use attnkit::approx_eval::{FrontierPoint, crossover_n, mean_of_v, pareto, rel_fro};
use attnkit::backends::linformer::Linformer;
use attnkit::backends::nystrom::Nystrom;
use attnkit::backends::performer::Performer;
use attnkit::bench::median;
use attnkit::inputs::{DEFAULT_SHARPNESS, InputFamily, generate};
use attnkit::options::Kernel;
use attnkit::{Attention, AttnArgs, Problem, Tensor, Window};
use std::time::Instant;

/// One configuration in the tables: a label, the backend, and whether it runs on the windowed
/// problem (`local`) instead of full attention.
struct Entry {
    label: String,
    backend: Box<dyn Attention>,
    window: Option<Window>,
}

fn entries() -> Vec<Entry> {
    let e = |label: &str, backend: Box<dyn Attention>| Entry { label: label.into(), backend, window: None };
    vec![
        e("flash-cpu (exact, the reference)", attnkit::backend("flash-cpu").unwrap()),
        e("nystrom (m=32)", Box::new(Nystrom::new(32).unwrap())),
        e("nystrom (m=64)", Box::new(Nystrom::new(64).unwrap())),
        e("nystrom (m=128)", Box::new(Nystrom::new(128).unwrap())),
        e("linformer pooled (k=64)", Box::new(Linformer::pooled(64).unwrap())),
        e("linformer pooled (k=256)", Box::new(Linformer::pooled(256).unwrap())),
        e("linformer gaussian (k=256)", Box::new(Linformer::new(256, 0).unwrap())),
        e("performer softmax (m=256)", Box::new(Performer::new(256, 0).unwrap())),
        e("performer relu (m=256)", Box::new(Performer::new(256, 0).unwrap().with_kernel(Kernel::Relu))),
        Entry {
            label: "local (window 128,128)".into(),
            backend: attnkit::backend("local").unwrap(),
            window: Some(Window::new(128, 128)),
        },
    ]
}

struct Opts {
    n: usize,
    heads: usize,
    reps: usize,
    big_n: usize,
}

fn structured() -> InputFamily {
    InputFamily::Structured { sharpness: DEFAULT_SHARPNESS }
}

/// Relative errors of every entry and of the baseline on `family`; the exact entry gives the
/// reference. Returns (baseline error, per-entry errors).
fn errors(p: &Problem, family: InputFamily, list: &[Entry]) -> (f64, Vec<f64>) {
    let (q, k, v) = generate(family, p, 1);
    let args = AttnArgs::new(p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    let exact: Vec<f64> = list[0].backend.forward(&args, false).unwrap().out.iter().map(|&x| x as f64).collect();
    let base = rel_fro(&mean_of_v(&args), &exact);
    let errs = list
        .iter()
        .map(|e| {
            let pw = p.clone().with_window(e.window.unwrap_or_default());
            let a = AttnArgs::new(&pw, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
            rel_fro(&e.backend.forward(&a, false).unwrap().out, &exact)
        })
        .collect();
    (base, errs)
}

fn print_errors(o: &Opts) {
    let p = Problem::new(1, o.heads, o.n, 64);
    let list = entries();
    println!("## relative error per input family (B=1 H={} N={} D=64 f32, seed 1)\n", o.heads, o.n);
    let fams = InputFamily::ALL;
    let results: Vec<(f64, Vec<f64>)> = fams.iter().map(|&f| errors(&p, f, &list)).collect();
    println!("| backend | {} |", fams.map(|f| format!("{f} (gain)")).join(" | "));
    println!("|---|{}", "---|".repeat(fams.len()));
    println!(
        "| mean-of-v (baseline) | {} |",
        results.iter().map(|r| format!("{:.3e}", r.0)).collect::<Vec<_>>().join(" | ")
    );
    for (i, e) in list.iter().enumerate().skip(1) {
        let cells: Vec<String> = results
            .iter()
            .map(|(base, errs)| {
                let mark = if errs[i] < *base { "" } else { " !" };
                format!("{:.3e} ({:.1}×){mark}", errs[i], base / errs[i])
            })
            .collect();
        println!("| {} | {} |", e.label, cells.join(" | "));
    }
}

fn print_sharpness(o: &Opts) {
    let p = Problem::new(1, o.heads, o.n, 64);
    let list: Vec<Entry> = entries().into_iter().filter(|e| !e.label.contains("gaussian")).collect();
    println!("\n## structured family: relative error vs sharpness (peak logit), N={} H={}\n", o.n, o.heads);
    let sharps = [1.0f32, 2.0, 4.0, 8.0, 16.0];
    println!("| backend | {} |", sharps.map(|s| format!("s={s}")).join(" | "));
    println!("|---|{}", "---|".repeat(sharps.len()));
    let res: Vec<(f64, Vec<f64>)> =
        sharps.iter().map(|&s| errors(&p, InputFamily::Structured { sharpness: s }, &list)).collect();
    println!(
        "| mean-of-v (baseline) | {} |",
        res.iter().map(|r| format!("{:.3e}", r.0)).collect::<Vec<_>>().join(" | ")
    );
    for (i, e) in list.iter().enumerate().skip(1) {
        let cells: Vec<String> =
            res.iter().map(|(b, errs)| format!("{:.2e}{}", errs[i], if errs[i] < *b { "" } else { " !" })).collect();
        println!("| {} | {} |", e.label, cells.join(" | "));
    }
}

/// Median seconds per entry at `p` (alternating rounds) on the inputs `qkv`.
fn times(p: &Problem, qkv: &(Tensor, Tensor, Tensor), list: &[Entry], reps: usize) -> Vec<f64> {
    let (q, k, v) = qkv;
    let mut out = vec![0.0f32; p.out_len()];
    let mut t = vec![Vec::new(); list.len()];
    for round in 0..=reps {
        for (i, e) in list.iter().enumerate() {
            let pw = p.clone().with_window(e.window.unwrap_or_default());
            let a = AttnArgs::new(&pw, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
            let start = Instant::now();
            e.backend.forward_into(&a, &mut out, None).unwrap();
            if round > 0 {
                t[i].push(start.elapsed().as_secs_f64());
            }
        }
    }
    t.iter().map(|x| median(x)).collect()
}

fn print_speed(o: &Opts) {
    let p = Problem::new(1, o.heads, o.n, 64);
    let list = entries();
    let qkv = generate(structured(), &p, 1);
    let secs = times(&p, &qkv, &list, o.reps);
    let (q, k, v) = &qkv;
    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    let mut tb = Vec::new();
    for _ in 0..o.reps {
        let start = Instant::now();
        std::hint::black_box(mean_of_v(&args));
        tb.push(start.elapsed().as_secs_f64());
    }
    let t_base = median(&tb);
    println!(
        "\n## speed (B=1 H={} N={} D=64 f32, {} threads, median of {} alternating rounds)\n",
        o.heads,
        o.n,
        rayon::current_num_threads(),
        o.reps
    );
    println!("| backend | median time | speed-up over flash-cpu |");
    println!("|---|---|---|");
    for (e, s) in list.iter().zip(&secs) {
        println!("| {} | {:.2} ms | {:.1}× |", e.label, s * 1e3, secs[0] / s);
    }
    println!("| mean-of-v (f64, one thread) | {:.2} ms | {:.1}× |", t_base * 1e3, secs[0] / t_base);

    // The frontier per family: these times with each family's errors.
    println!(
        "\n## accuracy–speed frontier at N={} (✓ = on the frontier: nothing both faster and more accurate)\n",
        o.n
    );
    let mut points = Vec::new();
    for f in InputFamily::ALL {
        let (base, errs) = errors(&p, f, &list);
        points.push(FrontierPoint { label: "mean-of-v".into(), family: f, seq: o.n, rel_err: base, seconds: t_base });
        for (i, e) in list.iter().enumerate() {
            points.push(FrontierPoint {
                label: e.label.clone(),
                family: f,
                seq: o.n,
                rel_err: errs[i],
                seconds: secs[i],
            });
        }
    }
    let on = pareto(&points);
    println!("| family | backend | rel. error | time | frontier |");
    println!("|---|---|---|---|---|");
    for (pt, on) in points.iter().zip(on) {
        println!(
            "| {} | {} | {:.3e} | {:.2} ms | {} |",
            pt.family,
            pt.label,
            pt.rel_err,
            pt.seconds * 1e3,
            if on { "✓" } else { "" }
        );
    }
}

fn print_slope(o: &Opts) {
    let list: Vec<Entry> = entries().into_iter().skip(1).collect();
    let (n0, n1) = (o.n, o.big_n);
    println!("\n## time slope {n0} → {n1} (H={}, median of {} alternating rounds per N)\n", o.heads, o.reps);
    // Interleave the two sizes round by round so a load change hits both.
    let (p0, p1) = (Problem::new(1, o.heads, n0, 64), Problem::new(1, o.heads, n1, 64));
    let (mut t0, mut t1) = (vec![Vec::new(); list.len()], vec![Vec::new(); list.len()]);
    let (qkv0, qkv1) = (generate(structured(), &p0, 1), generate(structured(), &p1, 1));
    for _ in 0..o.reps {
        let a = times(&p0, &qkv0, &list, 1);
        let b = times(&p1, &qkv1, &list, 1);
        for i in 0..list.len() {
            t0[i].push(a[i]);
            t1[i].push(b[i]);
        }
    }
    println!("| backend | time N={n0} | time N={n1} | slope (medians) | slope (median of same-round ratios) |");
    println!("|---|---|---|---|---|");
    let l = (n1 as f64 / n0 as f64).ln();
    for (i, e) in list.iter().enumerate() {
        let (m0, m1) = (median(&t0[i]), median(&t1[i]));
        let paired: Vec<f64> = t1[i].iter().zip(&t0[i]).map(|(b, a)| b / a).collect();
        println!(
            "| {} | {:.2} ms | {:.2} ms | {:.3} | {:.3} |",
            e.label,
            m0 * 1e3,
            m1 * 1e3,
            (m1 / m0).ln() / l,
            median(&paired).ln() / l
        );
    }
}

/// Time and structured-family error against N for the exact reference and the two target
/// configurations, and the first N at which each is faster than flash-cpu.
fn print_crossover(o: &Opts) {
    let all = entries();
    let pick = |label: &str| all.iter().position(|e| e.label == label).expect("a listed entry");
    let idx = [0, pick("nystrom (m=64)"), pick("linformer pooled (k=256)")];
    let list: Vec<Entry> = all.into_iter().enumerate().filter(|(i, _)| idx.contains(i)).map(|(_, e)| e).collect();
    let ns = [256usize, 512, 1024, 2048, 4096];
    println!("\n## crossover against flash-cpu (H={}, structured inputs, median of {} rounds)\n", o.heads, o.reps);
    println!(
        "| N | {} |",
        list.iter().map(|e| format!("{} time (rel. error)", e.label)).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|{}", "---|".repeat(list.len()));
    let mut series = vec![Vec::new(); list.len()];
    for &n in &ns {
        let p = Problem::new(1, o.heads, n, 64);
        let qkv = generate(structured(), &p, 1);
        let secs = times(&p, &qkv, &list, o.reps);
        let (_, errs) = errors(&p, structured(), &list);
        let cells: Vec<String> =
            secs.iter().zip(&errs).map(|(t, e)| format!("{:.2} ms ({:.1e})", t * 1e3, e)).collect();
        println!("| {n} | {} |", cells.join(" | "));
        secs.iter().enumerate().for_each(|(i, &t)| series[i].push((n, t)));
    }
    for (e, s) in list.iter().zip(&series).skip(1) {
        match crossover_n(s, &series[0]) {
            Some(n) => println!("- {} is faster than flash-cpu from N = {n} on (measured {:?})", e.label, ns),
            None => println!("- {} is never faster than flash-cpu over N = {:?}", e.label, ns),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut o = Opts { n: 4096, heads: 8, reps: 5, big_n: 32768 };
    let mut mode = "all".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = || it.next().and_then(|s| s.parse::<usize>().ok()).expect("a number after the flag");
        match a.as_str() {
            "--n" => o.n = num(),
            "--heads" => o.heads = num(),
            "--reps" => o.reps = num(),
            "--big-n" => o.big_n = num(),
            m => mode = m.to_string(),
        }
    }
    if matches!(mode.as_str(), "errors" | "all") {
        print_errors(&o);
    }
    if matches!(mode.as_str(), "sharpness" | "all") {
        print_sharpness(&o);
    }
    if matches!(mode.as_str(), "speed" | "all") {
        print_speed(&o);
    }
    if matches!(mode.as_str(), "slope" | "all") {
        print_slope(&o);
    }
    if matches!(mode.as_str(), "crossover" | "all") {
        print_crossover(&o);
    }
}
