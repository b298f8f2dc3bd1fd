//! Argument parsing (clap derive) and dispatch for the `attnkit` binary.

/// `println!` that returns the write error instead of panicking, so a reader that has gone
/// away (`attnkit bench | head -2`) ends the command quietly (see [`main`]).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_line(format_args!($($arg)*))
    };
}

mod bench;
mod bench_backward;
mod check;
mod check_backward;
mod kernels;
mod kvcache;
mod list;
mod modifiers;
mod report;
#[cfg(feature = "mpi")]
mod ring;
#[cfg(feature = "mpi")]
mod ring_model;
mod run;

pub use attnkit::bench::fmt_secs;
use attnkit::{AttnError, BackendOptions, DType, Problem, Window};
use clap::{Args, Parser, Subcommand};
use std::io::Write as _;
use std::process::ExitCode;

/// Exit code when a backend named explicitly on the command line was skipped (`check`), or
/// measured at no N (`bench`): scripts must notice it was not checked or timed.
pub const EXIT_NAMED_SKIPPED: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "attnkit",
    version,
    about = "Efficient long-sequence attention: exact, tiled and approximate backends"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List every registered backend: name, exact|approx, device, backward|fwd-only (whether it
    /// has a backward pass), availability.
    List,
    /// Run seeded random inputs through backends and compare with `reference` (f64 oracle).
    ///
    /// Exact backends must stay within FlashAttention's tolerance rule
    /// (2 × the naive same-precision error + a small floor; flash-cuda with f32 input is judged
    /// at f16 because it rounds to f16 internally). Approximate backends print their error beside
    /// the mean-of-V baseline's (uniform attention over the allowed keys; `(!)` marks an
    /// approximation that does not beat it) and fail only on non-finite output. `--inputs`
    /// picks the input family (normal, structured[:SHARPNESS], local-global). A backend that is unavailable or does not support the
    /// problem is reported as SKIP: with `--backends all` that is never a failure; when the
    /// backend was named explicitly, the command exits with status 3 so scripts notice it was
    /// not checked. Exit status: 0 all good, 1 a backend failed or errored, 3 a named backend
    /// was skipped. `--backward` checks the backward pass instead: dQ, dK, dV (dσ with sinks, dB
    /// with `--bias` data) against the f64 oracle's gradients for a seeded random dO, one
    /// verdict per gradient; backends without a backward are SKIPs.
    Check(check::CheckArgs),
    /// Time backends over a sweep of sequence lengths.
    ///
    /// Reports the median time, GFLOP/s and peak extra heap bytes. GFLOP/s is the FLOP count
    /// of exact attention over the allowed (unmasked) query–key pairs, 4·D per pair times B·H
    /// (Problem::flops), divided by the median time — for every backend, approximations
    /// included, so the numbers are comparable effective throughputs. The f32 GEMM ceiling
    /// (a 2048³ sgemm, median of 5, same thread count) is measured in the same run, when the
    /// first CPU cell is about to run, and each CPU backend's fraction of it is printed (GPU rows
    /// show "–"). Peak bytes: heap allocated above what was live before the first call (inputs
    /// and output excluded), counted by the binary's allocator. Cells a backend cannot run
    /// (unsupported, over the memory budget, predicted over --max-time) are skipped before any
    /// input is generated. Exit status: 0 all good, 1 a run failed (an error or a NaN/Inf
    /// output), 3 a backend named with --backends was measured at no N. `--backward` times
    /// forward, backward alone and forward + backward instead (backward FLOPs = 2.5× the
    /// forward's, FlashAttention's convention), with the backward's fraction of the ceiling.
    Bench(bench::BenchArgs),
    /// Run one backend on .npy inputs (B,H,N,D) and write the output as float32 .npy.
    Run(run::RunArgs),
    /// Compile every CUDA kernel variant through NVRTC (no GPU needed) and, when `ptxas` is on
    /// PATH, report registers, spill bytes and shared memory per variant and arch.
    ///
    /// NVRTC comes from libnvrtc on the library path (the PyPI wheel nvidia-cuda-nvrtc-cu12
    /// works); extra include dirs from ATTNKIT_CUDA_INCLUDE (colon-separated). Exit status 1 if
    /// any variant fails to compile or spills.
    Kernels(kernels::KernelsArgs),
    /// Sweep every available backend over N and write reports/ (README.md, results, SVG plots).
    Report(report::ReportArgs),
    /// Ring attention (context parallelism) across the ranks `mpirun` started (feature `mpi`).
    ///
    /// `mpirun -n P attnkit ring --seq N --dim D --heads H [--kv-heads H_kv] [--causal]
    /// [--window L,R] [--alibi] [--layout zigzag|contiguous|allgather] [--backward] [--check]
    /// [--baseline]`: each rank holds a shard of the sequence and passes K/V around a ring
    /// (windows and ALiBi at each chunk's global position); rank 0 prints per-rank
    /// compute and communication times, the fraction hidden, the efficiency against one process
    /// (`--baseline`) and the cost model's prediction; `--check` judges the gathered result
    /// against the f64 oracle (tolerance rule). `--model` prints the "Beyond one machine" table.
    /// Any rank's error aborts every rank with a message naming it.
    #[cfg(feature = "mpi")]
    Ring(ring::RingArgs),
}

/// Problem flags shared by `check` and `bench` (sequence lengths are per command).
#[derive(Args, Debug, Clone)]
pub struct ShapeArgs {
    /// Head dimension D.
    #[arg(long, default_value_t = 64)]
    pub dim: usize,
    /// Query heads H.
    #[arg(long)]
    pub heads: Option<usize>,
    /// Key/value heads H_kv (GQA/MQA); default H.
    #[arg(long)]
    pub kv_heads: Option<usize>,
    /// Batch size B.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Bottom-right aligned causal mask.
    #[arg(long)]
    pub causal: bool,
    /// Sliding window `L,R` (inclusive, -1 = unbounded), FlashAttention semantics.
    #[arg(long, value_parser = parse_window, allow_hyphen_values = true)]
    pub window: Option<Window>,
    /// Input dtype.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub dtype: DType,
    /// Seed for inputs and for random projections/features.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Linformer's projected length k.
    #[arg(long)]
    pub proj_dim: Option<usize>,
    /// Performer's random-feature count m.
    #[arg(long)]
    pub features: Option<usize>,
    /// local-block's block size.
    #[arg(long)]
    pub block_size: Option<usize>,
    /// Linformer's projection: pooled (segment means, default) or gaussian.
    #[arg(long, value_parser = parse_named::<attnkit::options::Projection>)]
    pub projection: Option<attnkit::options::Projection>,
    /// Nyströmformer's landmark count m.
    #[arg(long)]
    pub landmarks: Option<usize>,
    /// Performer's kernel: softmax (FAVOR+, default) or relu.
    #[arg(long, value_parser = parse_named::<attnkit::options::Kernel>)]
    pub kernel: Option<attnkit::options::Kernel>,
}

impl ShapeArgs {
    pub fn problem(&self, default_heads: usize, seq: usize, seq_kv: usize) -> Result<Problem, AttnError> {
        let heads = self.heads.unwrap_or(default_heads);
        let p = Problem::new(self.batch, heads, seq, self.dim)
            .with_seq_k(seq_kv)
            .with_kv_heads(self.kv_heads.unwrap_or(heads))
            .with_causal(self.causal)
            .with_window(self.window.unwrap_or_default())
            .with_dtype(self.dtype);
        p.validate()?;
        Ok(p)
    }

    pub fn options(&self) -> BackendOptions {
        BackendOptions {
            proj_dim: self.proj_dim,
            features: self.features,
            seed: self.seed,
            block_size: self.block_size,
            projection: self.projection,
            landmarks: self.landmarks,
            kernel: self.kernel,
        }
    }
}

pub fn parse_window(s: &str) -> Result<Window, String> {
    s.parse::<Window>().map_err(|e| e.to_string())
}

/// Any `FromStr` option whose error is an [`AttnError`] (it names the value and the choices).
pub fn parse_named<T: std::str::FromStr<Err = AttnError>>(s: &str) -> Result<T, String> {
    s.parse::<T>().map_err(|e| e.to_string())
}

pub fn parse_dtype(s: &str) -> Result<DType, String> {
    s.parse::<DType>().map_err(|e| e.to_string())
}

/// `--backends` resolution: `all` (or nothing) means every registered backend except those in
/// `exclude_from_all`; explicit names are checked against the registry (typo → error).
/// Returns the names and whether they were named explicitly.
pub fn resolve_backends(requested: &[String], exclude_from_all: &[&str]) -> Result<(Vec<String>, bool), AttnError> {
    let known = attnkit::backend_names();
    if requested.is_empty() || requested.iter().any(|s| s == "all") {
        let names = known.iter().filter(|n| !exclude_from_all.contains(n)).map(|s| s.to_string()).collect();
        return Ok((names, false));
    }
    let mut out = Vec::new();
    for name in requested {
        let name = name.trim();
        if !known.contains(&name) {
            return Err(AttnError::UnknownBackend {
                name: name.to_string(),
                known: known.iter().map(|s| s.to_string()).collect(),
            });
        }
        if !out.iter().any(|n: &String| n == name) {
            out.push(name.to_string());
        }
    }
    Ok((out, true))
}

/// One line to stdout (what [`outln!`] calls); the error is the caller's to pass up.
pub fn write_line(args: std::fmt::Arguments<'_>) -> Result<(), AttnError> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args).and_then(|()| out.write_all(b"\n"))?;
    Ok(())
}

/// A fraction as a percentage with one decimal, or "–" when there is none (a GPU row has no
/// CPU-GEMM fraction).
pub fn fmt_percent(f: Option<f64>) -> String {
    f.map(|f| format!("{:.1}%", 100.0 * f)).unwrap_or_else(|| "–".into())
}

/// Bytes → MiB string, or "n/a".
pub fn fmt_mib(b: Option<u64>) -> String {
    match b {
        Some(b) => format!("{:.2}", b as f64 / (1u64 << 20) as f64),
        None => "n/a".to_string(),
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::List => list::run(),
        Command::Check(a) => check::run(&a),
        Command::Bench(a) => bench::run(&a),
        Command::Run(a) => run::run(&a),
        Command::Report(a) => report::run(&a),
        Command::Kernels(a) => kernels::run(&a),
        #[cfg(feature = "mpi")]
        Command::Ring(a) => ring::run(&a),
    };
    match result {
        Ok(code) => code,
        // The reader of our stdout has gone (`| head`): stop quietly, as ripgrep and coreutils do.
        Err(AttnError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let msg = e.to_string().replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_fraction_reads_as_a_dash() {
        assert_eq!(super::fmt_percent(Some(0.4567)), "45.7%");
        assert_eq!(super::fmt_percent(None), "–");
    }
}
