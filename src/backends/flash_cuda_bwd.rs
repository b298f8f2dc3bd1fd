//! `flash-cuda`'s backward on the GPU: uploads Q, K, V (16-bit, f32 rounded as the forward
//! rounds them), O, dO and LSE, then launches `kernels/flash_bwd.cu` on one stream: preprocess
//! (D, zeroed dQ partials), the main kernel (grid splits × H_kv × sequences), convert (dQ =
//! Σ partials in split order) and, with sinks, dsink; and downloads dQ, dK, dV (and dσ).
//!
//! Deterministic (FlashAttention's `deterministic=True` scheme, no atomics); the plan is
//! [`crate::cuda::FlashBwdLaunch`]. Complexity: 2.5× the forward's FLOPs on CUDA cores (FP32
//! FMAs, not tensor cores yet); device memory Q, K, V, O, dO, LSE, D, the gradients and
//! `splits` dQ-sized partial buffers.
//!
//! Caveat: never run on a GPU (none was available when it was written); the kernels are checked
//! by NVRTC/ptxas and host emulation, and `scripts/gpu-check/run.sh` has the device step.

use super::{FlashCuda, NAME, guarded, to_bits};
use crate::attention::AttnArgs;
use crate::cuda::{self, BwdVariant, FlashBwdLaunch};
use crate::error::{AttnError, Result};
use crate::grad::{GradsMut, Saved};
use crate::problem::{DType, Problem};
use cudarc::driver::{CudaFunction, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg};

// SAFETY: FlashBwdParams is #[repr(C)], Copy, holds only integers and floats (device addresses as
// u64) and matches the kernels' `struct FlashBwdParams` (tests/cuda_emulated_bwd.rs compares the
// layouts), so its bytes are a valid kernel argument.
unsafe impl DeviceRepr for cuda::FlashBwdParams {}

/// The four entry points of one backward module: main, preprocess, convert, dsink.
pub(super) type BwdFunctions = [CudaFunction; 4];

/// Device bytes of one backward call (inputs, saved tensors, scratch, gradients).
pub(super) fn backward_device_bytes(p: &Problem, l: &FlashBwdLaunch) -> Option<u64> {
    let halves = (p.q_len() as u64).checked_add((p.kv_len() as u64).checked_mul(2)?)?.checked_mul(2)?;
    let (nd, na) = l.scratch_elems();
    // O, dO, dQ (out_len each), LSE, dK, dV, dσ, D, partials.
    let floats = (p.out_len() as u64)
        .checked_mul(3)?
        .checked_add(p.lse_len() as u64)?
        .checked_add((p.kv_len() as u64).checked_mul(2)?)?
        .checked_add(p.heads as u64 + nd as u64 + na as u64)?;
    halves.checked_add(floats.checked_mul(4)?)
}

impl FlashCuda {
    /// The backward module of `v`, compiled and loaded on first use.
    fn bwd_functions(&self, v: BwdVariant) -> Result<BwdFunctions> {
        let gpu = self.gpu()?;
        let mut map = gpu.bwd_functions.lock().map_err(|_| AttnError::Cuda("kernel cache poisoned".into()))?;
        if let Some(f) = map.get(&v) {
            return Ok(f.clone());
        }
        let f = guarded("module load", || {
            let (module, main) =
                gpu.load_main(cuda::FLASH_BWD_SRC, &v.kernel_name(), v.smem_bytes(), &v.only_defines())?;
            Ok([
                main,
                module.load_function(cuda::BWD_PREPROCESS_KERNEL)?,
                module.load_function(cuda::BWD_CONVERT_KERNEL)?,
                module.load_function(cuda::BWD_DSINK_KERNEL)?,
            ])
        })?;
        map.insert(v, f.clone());
        Ok(f)
    }

    /// The plan of `args`' backward on this GPU (f32 inputs rounded as the forward rounds them).
    pub fn backward_plan(&self, args: &AttnArgs<'_>) -> Result<FlashBwdLaunch> {
        let gpu = self.gpu()?;
        let p = args.problem();
        let kd = match p.dtype {
            DType::F32 => {
                let (q, k, v) = (args.q().to_f32_cow(), args.k().to_f32_cow(), args.v().to_f32_cow());
                super::f32_kernel_dtype(&[&q, &k, &v])
            }
            d => d,
        };
        FlashBwdLaunch::plan_for(p, kd, gpu.sms)
            .map_err(|reasons| AttnError::Unsupported { backend: NAME.into(), reasons })
    }

    /// The whole backward on the GPU into `grads` (validated by `backward_into`).
    pub(super) fn backward_on_device(
        &self,
        args: &AttnArgs<'_>,
        saved: &Saved<'_>,
        grads: &mut GradsMut<'_>,
    ) -> Result<()> {
        let gpu = self.gpu()?;
        let p = args.problem();
        let l = self.backward_plan(args)?;
        gpu.check_memory(backward_device_bytes(p, &l).unwrap_or(u64::MAX))?;
        let [main, pre, convert, dsink] = self.bwd_functions(l.variant)?;
        let kd = if l.variant.bf16 { DType::BF16 } else { DType::F16 };
        let (q, k, v) = (to_bits(args.q(), kd), to_bits(args.k(), kd), to_bits(args.v(), kd));
        let md = cuda::ModData::of(p);
        let (nd, na) = l.scratch_elems();
        guarded("backward", || {
            let s = &gpu.stream;
            let f32s = |x: &Option<Vec<f32>>| x.as_ref().map(|x| s.clone_htod(x)).transpose();
            let i32s = |x: &Option<Vec<i32>>| x.as_ref().map(|x| s.clone_htod(x)).transpose();
            let (mf, mi) = (
                [f32s(&md.alibi_slopes)?, f32s(&md.sinks)?],
                [i32s(&md.cu_seqlens_q)?, i32s(&md.cu_seqlens_k)?, i32s(&md.seqused_k)?],
            );
            let (qd, kd, vd) = (s.clone_htod(q.as_ref())?, s.clone_htod(k.as_ref())?, s.clone_htod(v.as_ref())?);
            let (od, dod, lsed) = (s.clone_htod(saved.out)?, s.clone_htod(saved.d_out)?, s.clone_htod(saved.lse)?);
            let mut dqd = s.alloc_zeros::<f32>(p.out_len())?;
            let mut dkd = s.alloc_zeros::<f32>(p.kv_len())?;
            let mut dvd = s.alloc_zeros::<f32>(p.kv_len())?;
            let mut dsd = s.alloc_zeros::<f32>(p.heads)?;
            let mut deltad = s.alloc_zeros::<f32>(nd)?;
            let mut accd = s.alloc_zeros::<f32>(na.max(1))?;
            // The guards record each buffer's use on the stream when dropped, after the launches.
            let ins = [qd.device_ptr(s), kd.device_ptr(s), vd.device_ptr(s), od.device_ptr(s), dod.device_ptr(s)];
            let lse_g = lsed.device_ptr(s);
            let outs = [
                dqd.device_ptr_mut(s),
                dkd.device_ptr_mut(s),
                dvd.device_ptr_mut(s),
                dsd.device_ptr_mut(s),
                deltad.device_ptr_mut(s),
                accd.device_ptr_mut(s),
            ];
            let mf_g: Vec<_> = mf.iter().map(|b| b.as_ref().map(|b| b.device_ptr(s))).collect();
            let mi_g: Vec<_> = mi.iter().map(|b| b.as_ref().map(|b| b.device_ptr(s))).collect();
            let addr = |x: &Option<(u64, _)>| x.as_ref().map_or(0, |x| x.0);
            let params = l
                .params
                .with_inputs([ins[0].0, ins[1].0, ins[2].0, ins[3].0, ins[4].0, lse_g.0])
                .with_outputs([
                    outs[0].0,
                    outs[1].0,
                    outs[2].0,
                    if p.mods.sinks.is_some() { outs[3].0 } else { 0 },
                    outs[4].0,
                    outs[5].0,
                ])
                .with_mods([addr(&mf_g[0]), addr(&mf_g[1]), addr(&mi_g[0]), addr(&mi_g[1]), addr(&mi_g[2])]);
            let cfg = |grid: (u32, u32, u32), threads: u32, smem: u32| LaunchConfig {
                grid_dim: grid,
                block_dim: (threads, 1, 1),
                shared_mem_bytes: smem,
            };
            let mut launches = vec![
                (&pre, cfg((l.preprocess_blocks, 1, 1), 32 * cuda::BWD_ROWS_PER_BLOCK as u32, 0)),
                (&main, cfg(l.grid, cuda::BWD_THREADS, l.smem_bytes)),
                (&convert, cfg((l.convert_blocks, 1, 1), cuda::BWD_THREADS, 0)),
            ];
            if let Some(h) = l.dsink_blocks {
                launches.push((&dsink, cfg((h, 1, 1), cuda::BWD_THREADS, 4 * cuda::BWD_THREADS)));
            }
            for (f, c) in launches {
                let mut b = s.launch_builder(f);
                b.arg(&params);
                // SAFETY: each kernel takes one FlashBwdParams by value (DeviceRepr above). Every
                // address in it is a buffer allocated above for exactly this problem and plan
                // (Q/O/dO/dQ B·H·N_q·D, K/V/dK/dV B·H_kv·N_k·D, LSE/D B·H·N_q, partials
                // splits·B·H·N_q·D, dσ H, modifier buffers from ModData::of), alive until after
                // the stream is synchronized below; the kernels index only inside those extents;
                // the main kernel's dynamic smem was enabled when above 48 KB. Launches run in
                // stream order, so each reads what the previous one wrote.
                unsafe { b.launch(c) }?;
            }
            drop((ins, lse_g, outs, mf_g, mi_g));
            s.memcpy_dtoh(&dqd, grads.dq)?;
            s.memcpy_dtoh(&dkd, grads.dk)?;
            s.memcpy_dtoh(&dvd, grads.dv)?;
            if let Some(ds) = grads.dsinks.as_deref_mut() {
                s.memcpy_dtoh(&dsd, ds)?;
            }
            s.synchronize()?;
            Ok(())
        })
    }
}
