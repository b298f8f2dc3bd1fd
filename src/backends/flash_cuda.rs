//! `flash-cuda`: FlashAttention-2-style forward kernel on NVIDIA GPUs (sm_80+), via cudarc.
//!
//! Algorithm: `kernels/flash_fwd.cu` — one thread block per (query tile, head, batch), K/V tiles
//! staged in shared memory with cp.async, S = QKᵀ and PV on tensor cores (mma.sync m16n8k16, f16
//! or bf16 in, fp32 accumulate), online softmax in the exp2 domain, O normalized once and LSE
//! written alongside; causal/window masks skip whole KV tiles and mask only boundary tiles; GQA
//! and MQA by head-index mapping; decode (few blocks) splits the keys over blocks and merges the
//! partials with a second kernel (flash-decoding), packing GQA heads when N_q = 1; any head_dim that is a multiple of 8 up to 256 (padded to the
//! next compiled variant: 32, 48, 64, 80, 96, 128, 160, 192, 256). See `kernels/README.md`.
//! Softcap, ALiBi, sinks, packed varlen and seqused_k run on the `_mods` entry points (their
//! buffers uploaded with Q/K/V); additive bias and boolean mask are refused with the reason.
//! Backward: `kernels/flash_bwd.cu` (deterministic, FP32 on CUDA cores), launched by
//! `flash_cuda_bwd.rs` with every modifier the forward runs; checked under emulation only.
//!
//! Host side: the source is embedded with `include_str!`, compiled by NVRTC on first use for the
//! device's arch (CUBIN, so an older driver need not JIT newer PTX), one module per (dtype, head
//! dim) variant, cached for the life of the backend. The driver (`libcuda.so.1`, never a toolkit
//! stub) and NVRTC (12 or 13, or `ATTNKIT_NVRTC`) are found by `crate::cuda` before any cudarc
//! call, since cudarc panics when a library is missing; the cudarc calls run under `catch_unwind`
//! (a driver lacking a symbol also panics). The kernel's one argument is
//! [`FlashFwdParams`](crate::cuda::FlashFwdParams), passed by value.
//!
//! Complexity: O(B·H·N_q·N_k·D) FLOPs on tensor cores, O((N_q + N_k)·D) device memory per call
//! (Q, K, V, O, LSE — no N×N buffer). f32 inputs are rounded to f16 (unit roundoff 2⁻¹¹) when
//! every value fits f16's range (|x| ≤ 65504), else to bf16 (2⁻⁸); the kernel then has that
//! dtype's accuracy, not f32's. f16/bf16 inputs are passed through bit-exactly.
//!
//! Caveats: sm_80 or newer only (cp.async, bf16 mma); split-KV adds a partial-result buffer of
//! splits·B·H·N_q·(D+1) floats, counted in the working set. The modifier paths are checked under
//! CPU emulation and NVRTC/ptxas only. Not yet run on a GPU (none was available), so
//! `auto` picks it only with `ATTNKIT_AUTO_CUDA=1`; correctness and speed on a GPU are checked by
//! `scripts/gpu-check/` and recorded in `kernels/README.md`.

use crate::attention::{Attention, AttnArgs, Device, Exactness};
use crate::budget::check_budget;
use crate::cuda::{self, FlashLaunch, Variant};
use crate::error::{AttnError, Result};
use crate::grad::{GradsMut, Saved};
use crate::problem::{DType, Problem};
use crate::tensor::TensorRef;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
    sys,
};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use std::borrow::Cow;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, OnceLock};

#[path = "flash_cuda_bwd.rs"]
mod bwd;

const NAME: &str = "flash-cuda";

/// Shared memory a block may use without the opt-in attribute.
const DEFAULT_SMEM_LIMIT: usize = 48 * 1024;

/// The GPU, once initialized.
struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: String,
    max_smem_optin: usize,
    /// Multiprocessors, for the split-KV choice.
    sms: usize,
    /// Per variant: its forward kernel and the module's `flash_combine`.
    functions: Mutex<HashMap<Variant, (CudaFunction, CudaFunction)>>,
    /// Per backward variant: its main, preprocess, convert and dsink kernels.
    bwd_functions: Mutex<HashMap<cuda::BwdVariant, bwd::BwdFunctions>>,
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

// SAFETY: FlashFwdParams is #[repr(C)], Copy, holds only integers and floats (device addresses
// as u64) and matches the kernel's `struct FlashFwdParams` (tests/cuda_emulated.rs compares the
// layouts), so its bytes are a valid kernel argument.
unsafe impl DeviceRepr for cuda::FlashFwdParams {}

fn init_gpu() -> std::result::Result<Gpu, String> {
    // The driver and NVRTC are found (and checked: no stub, a version that fits) before cudarc
    // touches either, because cudarc panics on a missing library and loads stubs it finds first.
    cuda::driver_info()?.ready()?;
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
        let sms = ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1) as usize;
        let stream = ctx.default_stream();
        Ok(Gpu {
            ctx,
            stream,
            arch: format!("sm_{major}{minor}"),
            max_smem_optin,
            sms,
            functions: Mutex::new(HashMap::new()),
            bwd_functions: Mutex::new(HashMap::new()),
        })
    })
    .map_err(|e| e.to_string())
}

impl Gpu {
    /// The variant's kernel and the combine kernel, compiled and loaded on first use.
    fn function(&self, v: Variant) -> Result<(CudaFunction, CudaFunction)> {
        let mut map = self.functions.lock().map_err(|_| AttnError::Cuda("kernel cache poisoned".into()))?;
        if let Some(f) = map.get(&v) {
            return Ok(f.clone());
        }
        let (module, f) = self.load_main(cuda::FLASH_FWD_SRC, &v.kernel_name(), v.smem_bytes(), &v.only_defines())?;
        let combine = module.load_function(cuda::COMBINE_KERNEL)?;
        map.insert(v, (f.clone(), combine.clone()));
        Ok((f, combine))
    }

    /// Compiles `src` with `defines` for this device, loads the module and its entry point `name`
    /// (which takes `smem` bytes of dynamic shared memory, enabled when above 48 KB); refuses
    /// with the reason when the device cannot give a block that much.
    fn load_main(
        &self,
        src: &str,
        name: &str,
        smem: usize,
        defines: &[String],
    ) -> Result<(Arc<cudarc::driver::CudaModule>, CudaFunction)> {
        if smem > self.max_smem_optin.max(DEFAULT_SMEM_LIMIT) {
            return Err(AttnError::Unsupported {
                backend: NAME.into(),
                reasons: vec![format!(
                    "{name} needs {smem} bytes of shared memory per block; this {} device allows {}",
                    self.arch, self.max_smem_optin
                )],
            });
        }
        let compiled = cuda::compile(src, &self.arch, defines)?;
        let image = match compiled.cubin {
            Some(c) => cudarc::nvrtc::Ptx::from_binary(c),
            None => cudarc::nvrtc::Ptx::from_src(compiled.ptx),
        };
        let module = self.ctx.load_module(image)?;
        let f = module.load_function(name)?;
        if smem > DEFAULT_SMEM_LIMIT {
            f.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)?;
        }
        Ok((module, f))
    }

    /// Refuses allocations over the memory budget or the device's free memory.
    fn check_memory(&self, bytes: u64) -> Result<()> {
        check_budget(NAME, "device buffers (Q, K, V, O, LSE, split-KV partials)", Some(bytes))?;
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
    /// Split-KV partial O and LSE (only when the launch splits the keys).
    accum: Option<(CudaSlice<f32>, CudaSlice<f32>)>,
    /// Modifier buffers (ALiBi slopes, sinks; cu_seqlens_q/k, seqused_k), when set.
    mods_f32: [Option<CudaSlice<f32>>; 2],
    mods_i32: [Option<CudaSlice<i32>>; 3],
}

impl DeviceBuffers {
    /// The launch these buffers are shaped for.
    pub fn launch(&self) -> &FlashLaunch {
        &self.launch
    }
}

/// Device bytes for one call: 16-bit Q, K, V, f32 O, LSE and the split-KV partials of `launch`.
fn device_bytes(p: &Problem, launch: Option<&FlashLaunch>) -> Option<u64> {
    let halves = (p.q_len() as u64).checked_add((p.kv_len() as u64).checked_mul(2)?)?.checked_mul(2)?;
    let (ao, al) = launch.map_or((0, 0), FlashLaunch::accum_elems);
    let floats = (p.out_len() as u64).checked_add(p.lse_len() as u64)?.checked_add(ao as u64 + al as u64)?;
    halves.checked_add(floats.checked_mul(4)?)
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

    fn plan(p: &Problem, kernel_dtype: DType, sms: usize) -> Result<FlashLaunch> {
        FlashLaunch::plan_for(p, kernel_dtype, sms)
            .map_err(|reasons| AttnError::Unsupported { backend: NAME.into(), reasons })
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
        let launch = Self::plan(p, kernel_dtype, gpu.sms)?;
        gpu.check_memory(device_bytes(p, Some(&launch)).unwrap_or(u64::MAX))?;
        let (q, k, v) =
            (to_bits(args.q(), kernel_dtype), to_bits(args.k(), kernel_dtype), to_bits(args.v(), kernel_dtype));
        let md = cuda::ModData::of(p);
        guarded("upload", || {
            let s = &gpu.stream;
            let f32s = |x: &Option<Vec<f32>>| x.as_ref().map(|x| s.clone_htod(x)).transpose();
            let i32s = |x: &Option<Vec<i32>>| x.as_ref().map(|x| s.clone_htod(x)).transpose();
            Ok(DeviceBuffers {
                mods_f32: [f32s(&md.alibi_slopes)?, f32s(&md.sinks)?],
                mods_i32: [i32s(&md.cu_seqlens_q)?, i32s(&md.cu_seqlens_k)?, i32s(&md.seqused_k)?],
                launch,
                q: s.clone_htod(q.as_ref())?,
                k: s.clone_htod(k.as_ref())?,
                v: s.clone_htod(v.as_ref())?,
                o: s.alloc_zeros::<f32>(p.out_len())?,
                lse: s.alloc_zeros::<f32>(p.lse_len())?,
                accum: match launch.accum_elems() {
                    (0, _) => None,
                    (ao, al) => Some((s.alloc_zeros::<f32>(ao)?, s.alloc_zeros::<f32>(al)?)),
                },
            })
        })
    }

    /// Enqueues one forward pass on device-resident buffers (asynchronous on the stream).
    pub fn run_device(&self, bufs: &mut DeviceBuffers) -> Result<()> {
        self.launch_between(bufs, || Ok(()))
    }

    /// Prepares the launch, calls `just_before` (e.g. records a start event), then launches.
    fn launch_between(&self, bufs: &mut DeviceBuffers, just_before: impl FnOnce() -> Result<()>) -> Result<()> {
        let gpu = self.gpu()?;
        let (f, combine) = gpu.function(bufs.launch.variant)?;
        let l = bufs.launch;
        let cfg = LaunchConfig { grid_dim: l.grid, block_dim: (cuda::THREADS, 1, 1), shared_mem_bytes: l.smem_bytes };
        let combine_cfg = l.combine_blocks.map(|blocks| LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (32 * cuda::COMBINE_ROWS_PER_BLOCK as u32, 1, 1),
            shared_mem_bytes: 0,
        });
        guarded("kernel launch", || {
            let s = &gpu.stream;
            // The guards record the buffers' use on the stream when dropped, after the launch.
            let (q, _gq) = bufs.q.device_ptr(s);
            let (k, _gk) = bufs.k.device_ptr(s);
            let (v, _gv) = bufs.v.device_ptr(s);
            let (o, _go) = bufs.o.device_ptr_mut(s);
            let (lse, _gl) = bufs.lse.device_ptr_mut(s);
            let (accum, _ga) = match bufs.accum.as_mut() {
                Some((ao, al)) => {
                    let (ao, g1) = ao.device_ptr_mut(s);
                    let (al, g2) = al.device_ptr_mut(s);
                    ((ao, al), Some((g1, g2)))
                }
                None => ((0, 0), None),
            };
            // The guards of the modifier buffers live until after both launches too.
            let f_ptrs: Vec<_> = bufs.mods_f32.iter().map(|b| b.as_ref().map(|b| b.device_ptr(s))).collect();
            let i_ptrs: Vec<_> = bufs.mods_i32.iter().map(|b| b.as_ref().map(|b| b.device_ptr(s))).collect();
            let addr = |x: &Option<(u64, _)>| x.as_ref().map_or(0, |x| x.0);
            let mods = [addr(&f_ptrs[0]), addr(&f_ptrs[1]), addr(&i_ptrs[0]), addr(&i_ptrs[1]), addr(&i_ptrs[2])];
            let params = l.params.with_buffers(q, k, v, o, lse).with_accum(accum.0, accum.1).with_mods(mods);
            let mut b = s.launch_builder(&f);
            b.arg(&params);
            just_before()?;
            // SAFETY: the kernel takes one FlashFwdParams by value (see the DeviceRepr impl).
            // q/k/v/o/lse were allocated for exactly this launch's problem (B·H·N_q·D,
            // B·H_kv·N_k·D, B·H·N_q elements) and stay alive until after the launch; the kernel
            // reads and writes only inside those extents (rows < N_q / N_k, columns < d, heads <
            // H and H_kv via h / (H/H_kv)), and the dynamic smem size is what the variant
            // declares and was enabled on the function when above 48 KB. The modifier buffers
            // hold what ModData::of gives for this validated problem (slopes H or S·H, sinks H,
            // offsets S+1, used lengths S, all within the problem's extents).
            unsafe { b.launch(cfg) }?;
            if let Some(cc) = combine_cfg {
                let mut c = s.launch_builder(&combine);
                c.arg(&params);
                // SAFETY: flash_combine takes the same FlashFwdParams; with a split launch o_accum
                // and lse_accum hold num_splits·B·H·N_q·d and num_splits·B·H·N_q floats
                // (accum_elems), written by the launch above on the same stream, and it writes
                // only rows < B·H·N_q, columns < d of o and lse.
                unsafe { c.launch(cc) }?;
            }
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
    /// seconds per pass. Inputs: the crate's seeded normal generator, in `problem.dtype`
    /// (f32 → f16). Each rep's start event is recorded after the host has prepared the launch
    /// (kernel looked up, arguments built), right before the launch itself.
    pub fn bench_device(&self, problem: &Problem, reps: usize) -> Result<Vec<f64>> {
        let gpu = self.gpu()?;
        let mut p = problem.clone();
        if p.dtype == DType::F32 {
            p.dtype = DType::F16;
        }
        p.validate()?;
        let launch = Self::plan(&p, p.dtype, gpu.sms)?;
        gpu.check_memory(device_bytes(&p, Some(&launch)).unwrap_or(u64::MAX))?;
        let (q, k, v) = crate::seeded::normal_qkv(&p, 0x5eed);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref())?;
        let mut bufs = self.upload(&args)?;
        self.run_device(&mut bufs)?; // warm-up: compiles and loads the module
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            let (start, stop) =
                guarded("event creation", || Ok((gpu.ctx.new_event(flags)?, gpu.ctx.new_event(flags)?)))?;
            self.launch_between(&mut bufs, || guarded("event record", || Ok(start.record(&gpu.stream)?)))?;
            guarded("benchmark", || {
                stop.record(&gpu.stream)?;
                stop.synchronize()?;
                times.push(start.elapsed_ms(&stop)? as f64 / 1e3);
                Ok(())
            })?;
        }
        Ok(times)
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
        cuda::unsupported_reasons(problem)
    }

    /// Device memory: 16-bit Q, K, V, f32 O, LSE and split-KV partials (planned for
    /// [`cuda::DEFAULT_SMS`] SMs: no GPU is touched here).
    fn working_bytes(&self, problem: &Problem) -> Option<u64> {
        device_bytes(problem, FlashLaunch::plan(problem, DType::F16).ok().as_ref())
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

    /// `kernels/flash_bwd.cu` (src/backends/flash_cuda_bwd.rs): every modifier the forward runs;
    /// bias and mask are refused by the forward's reasons already.
    fn backward_not_supported_reasons(&self, _problem: &Problem) -> Vec<String> {
        Vec::new()
    }

    /// Device memory of the backward (planned for [`cuda::DEFAULT_SMS`]: no GPU touched here).
    fn backward_working_bytes(&self, problem: &Problem) -> Option<u64> {
        cuda::FlashBwdLaunch::plan_for(problem, DType::F16, cuda::DEFAULT_SMS)
            .ok()
            .map_or(Some(0), |l| bwd::backward_device_bytes(problem, &l))
    }

    fn compute_backward(&self, args: &AttnArgs<'_>, saved: &Saved<'_>, grads: &mut GradsMut<'_>) -> Result<()> {
        self.backward_on_device(args, saved, grads)
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
        assert_eq!(device_bytes(&p, None), Some(512 + 720));
        // With 600 keys the 10-row problem splits them: the partials are counted too.
        let long = p.clone().with_seq_k(600);
        let l = FlashLaunch::plan(&long, DType::F16).unwrap();
        let (ao, al) = l.accum_elems();
        assert_eq!((ao, al), (l.splits() * 20 * 8, l.splits() * 20));
        assert!(l.splits() > 1, "{l:?}");
        assert_eq!(device_bytes(&long, Some(&l)), Some(device_bytes(&long, None).unwrap() + 4 * (ao + al) as u64));
    }
}
