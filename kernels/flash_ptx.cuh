// flash_ptx.cuh — the GPU primitives of kernels/flash_fwd.cu and kernels/flash_combine.cu as
// inline PTX (cp.async, ldmatrix, mma.sync, f16/bf16 packing, ex2/lg2/rcp approximations).
// Prepended to their source by the host (src/cuda/mod.rs: FLASH_FWD_SRC); the CPU emulation
// (kernels/cuda_host_emu.hpp) supplies the same functions with their documented PTX semantics
// instead. No headers are included, so NVRTC needs no include path.

#define DEVI __device__ __forceinline__
#define DECLARE_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]

DEVI float neg_inf() { return __int_as_float(0xff800000); }

// x, through an asm the compiler cannot see into: a value recomputed from it is not merged with
// an earlier computation from x, so it need not stay live in between.
DEVI unsigned opaque(unsigned x) {
    asm volatile("" : "+r"(x));
    return x;
}

DEVI unsigned smem_addr(const void* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// Copies 16 bytes global → shared (sdst: shared-window byte address); only the first src_bytes
// are read, the rest are zero-filled.
DEVI void cp_async_16(unsigned sdst, const void* gmem_src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sdst), "l"(gmem_src),
                 "r"(src_bytes));
}
DEVI void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of this thread's committed cp.async groups are still in flight.
template <int N>
DEVI void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ldmatrix takes a 32-bit shared-window address, so constant tile offsets fold into the
// instruction's immediate instead of occupying one register per fragment address.
DEVI void ldmatrix_x4(unsigned (&r)[4], unsigned saddr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(saddr));
}
DEVI void ldmatrix_x4_trans(unsigned (&r)[4], unsigned saddr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(saddr));
}

// D = A·B + D for one m16n8k16 tile; A row-major 16×16, B column-major 16×8, fp32 accumulators.
template <bool BF16>
DEVI void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    if (BF16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

// Rounds (lo, hi) to nearest-even 16-bit floats; lo goes to the low half (lower column index).
template <bool BF16>
DEVI unsigned pack2(float lo, float hi) {
    unsigned r;
    if (BF16) {
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    } else {
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    }
    return r;
}

DEVI float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
DEVI float fast_log2(float x) {
    float y;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
DEVI float fast_rcp(float x) {
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// One f16 or bf16 value (its bits) widened to f32, exactly.
template <bool BF16>
DEVI float half_to_float(unsigned short h) {
    if (BF16) return __int_as_float((int)((unsigned)h << 16));
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
