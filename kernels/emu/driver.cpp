// driver.cpp — C ABI around the emulated flash_fwd kernels (see ../cuda_host_emu.hpp).
// Built by tests/cuda_emulated.rs into a shared library with g++ -std=c++20 -pthread.
// The kernel argument is the kernel source's own FlashFwdParams, passed through by value.
#define ATTNKIT_EMU 1
#include "../cuda_host_emu.hpp"
#include "../flash_common.cuh"
#include "../flash_fwd.cu"
#include "../flash_combine.cu"

#include <cstddef>

namespace {
using Entry = void (*)(const FlashFwdParams);

struct Variant {
    int bf16, dp, mods, br, bc, smem, stages, ovl;
    Entry fn;
};

#define EMU_GEOM(DP, M) FlashGeom<DP, M>::BR, FlashGeom<DP, M>::BC, FlashGeom<DP, M>::SMEM_BYTES, \
                        FlashGeom<DP, M>::STAGES, FlashGeom<DP, M>::OVL
#define EMU_VARIANT(DT, IS_BF16, DP)                                                          \
    Variant{IS_BF16, DP, 0, EMU_GEOM(DP, false), flash_fwd_##DT##_d##DP},                     \
        Variant{IS_BF16, DP, 1, EMU_GEOM(DP, true), flash_fwd_##DT##_d##DP##_mods},
const Variant kVariants[] = {FLASH_ALL_VARIANTS(EMU_VARIANT)};

const Variant* find(int bf16, int dp, int mods) {
    for (const Variant& v : kVariants)
        if (v.bf16 == bf16 && v.dp == dp && v.mods == (mods != 0)) return &v;
    return nullptr;
}

using emu::copy_msg;
}  // namespace

// Writes the launch geometry and schedule of a variant (K/V stages, overlapped softmax); returns
// 0, or −1 when there is no such variant.
extern "C" int attnkit_emu_config(int bf16, int dp, int mods, int* br, int* bc, int* smem_bytes, int* stages,
                                  int* ovl) {
    const Variant* v = find(bf16, dp, mods);
    if (v == nullptr) return -1;
    *br = v->br;
    *bc = v->bc;
    *smem_bytes = v->smem;
    *stages = v->stages;
    *ovl = v->ovl;
    return 0;
}

// Writes FlashFwdParams' layout as the C compiler sees it, "name=offset,…,size=S,align=A" (the
// format of FlashFwdParams::layout_string in src/cuda/params.rs); returns the length written.
extern "C" int attnkit_emu_params_layout(char* out, size_t len) {
    std::string s;
#define EMU_FIELD(F) s += std::string(#F "=") + std::to_string(offsetof(FlashFwdParams, F)) + ",";
    EMU_FIELD(q) EMU_FIELD(k) EMU_FIELD(v) EMU_FIELD(o) EMU_FIELD(lse) EMU_FIELD(o_accum) EMU_FIELD(lse_accum)
    EMU_FIELD(batch) EMU_FIELD(heads) EMU_FIELD(kv_heads) EMU_FIELD(nq) EMU_FIELD(nk) EMU_FIELD(d)
    EMU_FIELD(scale_log2) EMU_FIELD(win_left) EMU_FIELD(win_right) EMU_FIELD(num_splits) EMU_FIELD(keys_per_split)
    EMU_FIELD(pack) EMU_FIELD(softcap) EMU_FIELD(alibi_seq_stride) EMU_FIELD(alibi_slopes) EMU_FIELD(sinks)
    EMU_FIELD(cu_seqlens_q) EMU_FIELD(cu_seqlens_k) EMU_FIELD(seqused_k)
#undef EMU_FIELD
    s += "size=" + std::to_string(sizeof(FlashFwdParams)) + ",align=" + std::to_string(alignof(FlashFwdParams));
    copy_msg(s, out, len);
    return static_cast<int>(s.size());
}

// Chooses the cp.async schedule of later launches: 0 = eager (copies land when issued), 1 = lazy
// (copies land at the wait_group that retires them). See ../cuda_host_emu.hpp.
extern "C" void attnkit_emu_set_lazy_copies(int lazy) { emu::set_lazy_copies(lazy != 0); }

namespace {
// Registers the inputs the kernel may cp.async from (after run_checked has cleared the registry).
void register_inputs(const FlashFwdParams& p) {
    const size_t q_elems = static_cast<size_t>(p.batch) * p.heads * p.nq * p.d;
    const size_t kv_elems = static_cast<size_t>(p.batch) * p.kv_heads * p.nk * p.d;
    emu::register_buffer(p.q, q_elems * 2);
    emu::register_buffer(p.k, kv_elems * 2);
    emu::register_buffer(p.v, kv_elems * 2);
}
}  // namespace

// Runs the emulated kernel (the _mods entry point when mods ≠ 0) over `grid` (the host's launch
// plan) with `p` exactly as the GPU launch passes it. Returns 0 on success, −1 for an unknown variant, −2 when the emulator caught
// a fault (message in err).
extern "C" int attnkit_emu_flash_fwd(int bf16, int dp, int mods, unsigned grid_x, unsigned grid_y, unsigned grid_z,
                                     const FlashFwdParams p, char* err, size_t err_len) {
    const Variant* var = find(bf16, dp, mods);
    if (var == nullptr) {
        copy_msg("no such variant", err, err_len);
        return -1;
    }
    return emu::run_checked(err, err_len, [&] {
        register_inputs(p);
        emu::launch(emu::Dim3{grid_x, grid_y, grid_z}, emu::Dim3{FLASH_THREADS, 1, 1},
                    static_cast<size_t>(var->smem), [&] { var->fn(p); });
    });
}

// Runs the emulated flash_combine over `grid_x` blocks of COMBINE_ROWS_PER_BLOCK warps.
extern "C" int attnkit_emu_flash_combine(unsigned grid_x, const FlashFwdParams p, char* err, size_t err_len) {
    return emu::run_checked(err, err_len, [&] {
        register_inputs(p);
        emu::launch(emu::Dim3{grid_x, 1, 1}, emu::Dim3{32 * COMBINE_ROWS_PER_BLOCK, 1, 1}, 0,
                    [&] { flash_combine(p); });
    });
}
