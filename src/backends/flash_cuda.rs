//! `flash-cuda`: FlashAttention-2-style forward kernel on NVIDIA GPUs (sm_80+), via cudarc.
//!
//! Algorithm: `kernels/flash_fwd.cu` — one thread block per (query tile, head, batch), K/V tiles
//! staged in shared memory with cp.async, S = QKᵀ and PV on tensor cores (mma.sync m16n8k16, f16
//! or bf16 in, fp32 accumulate), online softmax in the exp2 domain, O normalized once and LSE
//! written alongside; causal/window masks skip whole KV tiles and mask only boundary tiles; GQA
//! and MQA by head-index mapping; any head_dim that is a multiple of 8 up to 256 (padded to the
//! next compiled variant: 32, 48, 64, 80, 96, 128, 160, 192, 256). See `kernels/README.md`.
//!
//! Host side: the source is embedded with `include_str!`, compiled by NVRTC on first use for the
//! device's arch (CUBIN, so an older driver need not JIT newer PTX), one module per (dtype, head
//! dim) variant, cached for the life of the backend. cudarc panics when libcuda or libnvrtc is
//! missing, so both are probed with `is_culib_present` before any other cudarc call, and the
//! remaining cudarc calls run under `catch_unwind` (a driver lacking a symbol also panics).
//!
//! Complexity: O(B·H·N_q·N_k·D) FLOPs on tensor cores, O((N_q + N_k)·D) device memory per call
//! (Q, K, V, O, LSE — no N×N buffer). f32 inputs are rounded to f16 (unit roundoff 2⁻¹¹) when
//! every value fits f16's range (|x| ≤ 65504), else to bf16 (2⁻⁸); the kernel then has that
//! dtype's accuracy, not f32's. f16/bf16 inputs are passed through bit-exactly.
//!
//! Caveats: sm_80 or newer only (cp.async, bf16 mma); no split-KV, so problems with very few
//! (batch·head·q-tile) blocks under-fill the GPU. Speed: designed for ≥ 50% of FlashAttention-2's
//! forward throughput at D = 64/128; not yet measured on a GPU (none was available).

use crate::attention::{Attention, AttnArgs, Device, Exactness};
use crate::budget::check_budget;
use crate::cuda::{self, FlashLaunch, Variant};
use crate::error::{AttnError, Result};
use crate::problem::{DType, Problem};
use crate::tensor::TensorRef;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg, sys};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use std::borrow::Cow;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, OnceLock};

const NAME: &str = "flash-cuda";

/// Shared memory a block may use without the opt-in attribute.
const DEFAULT_SMEM_LIMIT: usize = 48 * 1024;

/// The GPU, once initialized.
struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: String,
    max_smem_optin: usize,
    functions: Mutex<HashMap<Variant, CudaFunction>>,
}

/// The `flash-cuda` backend. Cheap to construct; the GPU is initialized on first use.
#[derive(Default)]
pub struct FlashCuda {
    gpu: OnceLock<std::result::Result<Gpu, String>>,
}

impl std::fmt::Debug for FlashCuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlashCuda")
    }
}

/// Runs cudarc code, turning a panic inside cudarc (missing library symbol) into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| Err(AttnError::Cuda(format!("cudarc panicked during {what}"))))
}

fn init_gpu() -> std::result::Result<Gpu, String> {
    // SAFETY: is_culib_present only tries to dlopen candidate names of libcuda.
    if !unsafe { sys::is_culib_present() } {
        return Err("no CUDA driver found".to_string());
    }
    cuda::nvrtc_available()?;
    guarded("CUDA initialization", || {
        let count = CudaContext::device_count()?;
        if count < 1 {
            return Err(AttnError::Cuda("no CUDA device found".into()));
        }
        let ctx = CudaContext::new(0)?;
        let (major, minor) = ctx.compute_capability()?;
        if major < 8 {
            return Err(AttnError::Cuda(format!(
                "device 0 has compute capability {major}.{minor}; flash-cuda needs 8.0+ (cp.async, bf16 mma)"
            )));
        }
        let max_smem_optin = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?
            .max(0) as usize;
        let stream = ctx.default_stream();
        Ok(Gpu {
            ctx,
            stream,
            arch: format!("sm_{major}{minor}"),
            max_smem_optin,
            functions: Mutex::new(HashMap::new()),
        })
    })
    .map_err(|e| e.to_string())
}

impl Gpu {
    /// The variant's kernel, compiled and loaded on first use.
    fn function(&self, v: Variant) -> Result<CudaFunction> {
        let mut map = self.functions.lock().map_err(|_| AttnError::Cuda("kernel cache poisoned".into()))?;
        if let Some(f) = map.get(&v) {
            return Ok(f.clone());
        }
        if v.smem_bytes() > self.max_smem_optin.max(DEFAULT_SMEM_LIMIT) {
            return Err(AttnError::Unsupported {
                backend: NAME.into(),
                reasons: vec![format!(
                    "{} needs {} bytes of shared memory per block; this {} device allows {}",
                    v.kernel_name(),
                    v.smem_bytes(),
                    self.arch,
                    self.max_smem_optin
                )],
            });
        }
        let compiled = cuda::compile(cuda::FLASH_FWD_SRC, &self.arch, &v.only_defines())?;
        let image = match compiled.cubin {
            Some(c) => cudarc::nvrtc::Ptx::from_binary(c),
            None => cudarc::nvrtc::Ptx::from_src(compiled.ptx),
        };
        let module = self.ctx.load_module(image)?;
        let f = module.load_function(&v.kernel_name())?;
        if v.smem_bytes() > DEFAULT_SMEM_LIMIT {
            f.set_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                v.smem_bytes() as i32,
            )?;
        }
        map.insert(v, f.clone());
        Ok(f)
    }

    /// Refuses allocations over the memory budget or the device's free memory.
    fn check_memory(&self, bytes: u64) -> Result<()> {
        check_budget(NAME, "device buffers (Q, K, V, O, LSE)", Some(bytes))?;
        let (free, _) = self.ctx.mem_get_info()?;
        if bytes > free as u64 {
            return Err(AttnError::MemoryBudget {
                backend: NAME.into(),
                what: "device buffers (free device memory)".into(),
                needed_bytes: bytes,
                budget_bytes: free as u64,
            });
        }
        Ok(())
    }
}

/// Q, K, V, O and LSE resident on the GPU, so a benchmark can time the kernel alone.
pub struct DeviceBuffers {
    launch: FlashLaunch,
    q: CudaSlice<u16>,
    k: CudaSlice<u16>,
    v: CudaSlice<u16>,
    o: CudaSlice<f32>,
    lse: CudaSlice<f32>,
}

impl DeviceBuffers {
    /// The launch these buffers are shaped for.
    pub fn launch(&self) -> &FlashLaunch {
        &self.launch
    }
}

/// Device bytes for one call: 16-bit Q, K, V and f32 O, LSE.
fn device_bytes(p: &Problem) -> Option<u64> {
    let halves = (p.q_len() as u64).checked_add((p.kv_len() as u64).checked_mul(2)?)?.checked_mul(2)?;
    let floats = (p.out_len() as u64).checked_add(p.lse_len() as u64)?.checked_mul(4)?;
    halves.checked_add(floats)
}

/// The 16-bit dtype f32 data is rounded to: f16 when every finite value fits its range.
pub fn f32_kernel_dtype(tensors: &[&[f32]]) -> DType {
    let fits = tensors.iter().all(|t| t.iter().all(|x| !x.is_finite() || x.abs() <= 65504.0));
    if fits { DType::F16 } else { DType::BF16 }
}

/// The bits the kernel reads, plus their dtype.
fn to_bits<'a>(t: TensorRef<'a>, f32_as: DType) -> Cow<'a, [u16]> {
    match t {
        TensorRef::F16(s) => Cow::Borrowed(s.reinterpret_cast()),
        TensorRef::BF16(s) => Cow::Borrowed(s.reinterpret_cast()),
        TensorRef::F32(s) => Cow::Owned(match f32_as {
            DType::BF16 => s.iter().map(|&x| bf16::from_f32(x).to_bits()).collect(),
            _ => s.iter().map(|&x| f16::from_f32(x).to_bits()).collect(),
        }),
    }
}

impl FlashCuda {
    pub fn new() -> Self {
        Self::default()
    }

    fn gpu(&self) -> Result<&Gpu> {
        self.gpu
            .get_or_init(init_gpu)
            .as_ref()
            .map_err(|reason| AttnError::Unavailable { backend: NAME.into(), reason: reason.clone() })
    }

    fn plan(p: &Problem, kernel_dtype: DType) -> Result<FlashLaunch> {
        FlashLaunch::plan(p, kernel_dtype).map_err(|reasons| AttnError::Unsupported { backend: NAME.into(), reasons })
    }

    /// Copies validated inputs to the device (f32 rounded per [`f32_kernel_dtype`]) and allocates
    /// O and LSE there.
    pub fn upload(&self, args: &AttnArgs<'_>) -> Result<DeviceBuffers> {
        let gpu = self.gpu()?;
        let p = args.problem();
        let kernel_dtype = match p.dtype {
            DType::F32 => {
                let (q, k, v) = (args.q().to_f32_cow(), args.k().to_f32_cow(), args.v().to_f32_cow());
                f32_kernel_dtype(&[&q, &k, &v])
            }
            d => d,
        };
        let launch = Self::plan(p, kernel_dtype)?;
        gpu.check_memory(device_bytes(p).unwrap_or(u64::MAX))?;
        let (q, k, v) =
            (to_bits(args.q(), kernel_dtype), to_bits(args.k(), kernel_dtype), to_bits(args.v(), kernel_dtype));
        guarded("upload", || {
            let s = &gpu.stream;
            Ok(DeviceBuffers {
                launch,
                q: s.clone_htod(q.as_ref())?,
                k: s.clone_htod(k.as_ref())?,
                v: s.clone_htod(v.as_ref())?,
                o: s.alloc_zeros::<f32>(p.out_len())?,
                lse: s.alloc_zeros::<f32>(p.lse_len())?,
            })
        })
    }

    /// Enqueues one forward pass on device-resident buffers (asynchronous on the stream).
    pub fn run_device(&self, bufs: &mut DeviceBuffers) -> Result<()> {
        let gpu = self.gpu()?;
        let f = gpu.function(bufs.launch.variant)?;
        let l = bufs.launch;
        let cfg = LaunchConfig { grid_dim: l.grid, block_dim: (cuda::THREADS, 1, 1), shared_mem_bytes: l.smem_bytes };
        guarded("kernel launch", || {
            let mut b = gpu.stream.launch_builder(&f);
            b.arg(&bufs.q).arg(&bufs.k).arg(&bufs.v).arg(&mut bufs.o).arg(&mut bufs.lse);
            b.arg(&l.heads).arg(&l.kv_heads).arg(&l.nq).arg(&l.nk).arg(&l.d);
            b.arg(&l.scale_log2).arg(&l.win_left).arg(&l.win_right);
            // SAFETY: the arguments match flash_fwd_*'s signature in order and type (3 × const
            // u16*, 2 × float*, 5 × int, float, 2 × int). q/k/v/o/lse were allocated for exactly
            // this launch's problem (B·H·N_q·D, B·H_kv·N_k·D, B·H·N_q elements); the kernel reads
            // and writes only inside those extents (rows < N_q / N_k, columns < d, heads < H and
            // H_kv via h / (H/H_kv)), and the dynamic smem size is what the variant declares and
            // was enabled on the function when above 48 KB.
            unsafe { b.launch(cfg) }?;
            Ok(())
        })
    }

    /// Copies O (and LSE) back; waits for the stream.
    pub fn download(&self, bufs: &DeviceBuffers, out: &mut [f32], lse: Option<&mut [f32]>) -> Result<()> {
        let gpu = self.gpu()?;
        if out.len() != bufs.o.len() || lse.as_ref().is_some_and(|l| l.len() != bufs.lse.len()) {
            return Err(AttnError::shape("download buffers do not match the uploaded problem"));
        }
        guarded("download", || {
            gpu.stream.memcpy_dtoh(&bufs.o, out)?;
            if let Some(l) = lse {
                gpu.stream.memcpy_dtoh(&bufs.lse, l)?;
            }
            Ok(())
        })
    }

    /// Times `reps` forward passes on inputs already on the device with CUDA events; returns
    /// seconds per pass. Inputs are uniform in [−1, 1) (seeded), in `problem.dtype` (f32 → f16).
    pub fn bench_device(&self, problem: &Problem, reps: usize) -> Result<Vec<f64>> {
        use rand::{RngExt, SeedableRng};
        let gpu = self.gpu()?;
        let mut p = problem.clone();
        if p.dtype == DType::F32 {
            p.dtype = DType::F16;
        }
        p.validate()?;
        Self::plan(&p, p.dtype)?;
        gpu.check_memory(device_bytes(&p).unwrap_or(u64::MAX))?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let mut gen_t = |n: usize| -> crate::tensor::Tensor {
            let data: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            crate::tensor::Tensor::from_f32(&data, p.dtype)
        };
        let (q, k, v) = (gen_t(p.q_len()), gen_t(p.kv_len()), gen_t(p.kv_len()));
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref())?;
        let mut bufs = self.upload(&args)?;
        self.run_device(&mut bufs)?; // warm-up: compiles and loads the module
        guarded("benchmark", || {
            let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
            let mut times = Vec::with_capacity(reps);
            for _ in 0..reps {
                let start = gpu.ctx.new_event(flags)?;
                let stop = gpu.ctx.new_event(flags)?;
                start.record(&gpu.stream)?;
                self.run_device(&mut bufs)?;
                stop.record(&gpu.stream)?;
                stop.synchronize()?;
                times.push(start.elapsed_ms(&stop)? as f64 / 1e3);
            }
            Ok(times)
        })
    }
}

impl Attention for FlashCuda {
    fn name(&self) -> &str {
        NAME
    }

    fn time_on_device(&self, problem: &Problem, reps: usize) -> Option<Result<Vec<f64>>> {
        Some(self.bench_device(problem, reps))
    }

    fn exactness(&self) -> Exactness {
        Exactness::Exact
    }

    fn device(&self) -> Device {
        Device::Cuda
    }

    fn availability(&self) -> std::result::Result<(), String> {
        match self.gpu() {
            Ok(_) => Ok(()),
            Err(AttnError::Unavailable { reason, .. }) => Err(reason),
            Err(e) => Err(e.to_string()),
        }
    }

    fn not_supported_reasons(&self, problem: &Problem) -> Vec<String> {
        let mut r = cuda::unsupported_reasons(problem);
        r.extend(problem.mods.refusals("flash-cuda", "the CUDA kernel has no score modifiers yet; use flash-cpu"));
        r
    }

    /// Device memory: 16-bit Q, K, V and f32 O, LSE.
    fn working_bytes(&self, problem: &Problem) -> Option<u64> {
        device_bytes(problem)
    }

    /// f32 inputs are rounded to f16, or to bf16 when a value is out of f16's range.
    fn compute_precision(&self, args: &AttnArgs<'_>) -> DType {
        match (args.q(), args.k(), args.v()) {
            (TensorRef::F32(q), TensorRef::F32(k), TensorRef::F32(v)) => f32_kernel_dtype(&[q, k, v]),
            _ => args.problem().dtype,
        }
    }

    /// First for half-precision inputs, but only when opted in with `ATTNKIT_AUTO_CUDA=1`:
    /// the kernel has not yet passed the device check on a real GPU. Never for f32 inputs,
    /// which it would round to 16 bits.
    fn auto_rank(&self, problem: &Problem) -> Option<u32> {
        let opted_in = std::env::var("ATTNKIT_AUTO_CUDA").is_ok_and(|v| v == "1");
        (opted_in && problem.dtype != DType::F32).then_some(0)
    }

    fn compute(&self, args: &AttnArgs<'_>, out: &mut [f32], lse: Option<&mut [f32]>) -> Result<()> {
        let mut bufs = self.upload(args)?;
        self.run_device(&mut bufs)?;
        self.download(&bufs, out, lse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_rounds_to_f16_unless_out_of_range() {
        assert_eq!(f32_kernel_dtype(&[&[1.0, -65504.0, f32::INFINITY]]), DType::F16);
        assert_eq!(f32_kernel_dtype(&[&[1.0], &[70000.0]]), DType::BF16);
    }

    #[test]
    fn device_bytes_counts_every_buffer() {
        let p = Problem::new(1, 2, 10, 8).with_kv_heads(1).with_seq_k(6);
        // Q 160 + K,V 2·48 halves → 512 bytes; O 160 + LSE 20 floats → 720 bytes.
        assert_eq!(device_bytes(&p), Some(512 + 720));
    }
}
