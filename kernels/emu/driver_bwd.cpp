// driver_bwd.cpp — C ABI around the emulated backward kernels (kernels/flash_bwd.cu under
// ../cuda_host_emu.hpp). Built by tests/cuda_emulated_bwd.rs into a shared library with
// g++ -std=c++20 -pthread. The kernel argument is the kernel source's own FlashBwdParams.
#define ATTNKIT_EMU 1
#include "../cuda_host_emu.hpp"
#include "../flash_common.cuh"
#include "../flash_bwd.cu"

#include <cstddef>

namespace {
using Entry = void (*)(const FlashBwdParams);

struct Variant {
    int bf16, dp, bc, br, smem;
    Entry fn;
};

#define EMU_BWD_VARIANT(DT, IS_BF16, DP)                                                                   \
    Variant{IS_BF16, DP, FlashBwdGeom<DP>::BC, FlashBwdGeom<DP>::BR, FlashBwdGeom<DP>::SMEM_BYTES, \
            flash_bwd_##DT##_d##DP},
const Variant kVariants[] = {FLASH_BWD_ALL_VARIANTS(EMU_BWD_VARIANT)};

const Variant* find(int bf16, int dp) {
    for (const Variant& v : kVariants)
        if (v.bf16 == bf16 && v.dp == dp) return &v;
    return nullptr;
}

using emu::copy_msg;
}  // namespace

// Writes the tiles of a main variant; returns 0, or −1 when there is no such variant.
extern "C" int attnkit_emu_bwd_config(int bf16, int dp, int* bc, int* br, int* smem_bytes) {
    const Variant* v = find(bf16, dp);
    if (v == nullptr) return -1;
    *bc = v->bc;
    *br = v->br;
    *smem_bytes = v->smem;
    return 0;
}

// FlashBwdParams' layout as the C compiler sees it, "name=offset,…,size=S,align=A" (the format
// of FlashBwdParams::layout_string in src/cuda/bwd.rs); returns the length written.
extern "C" int attnkit_emu_bwd_params_layout(char* out, size_t len) {
    std::string s;
#define EMU_FIELD(F) s += std::string(#F "=") + std::to_string(offsetof(FlashBwdParams, F)) + ",";
    EMU_FIELD(q) EMU_FIELD(k) EMU_FIELD(v) EMU_FIELD(o) EMU_FIELD(dout) EMU_FIELD(lse) EMU_FIELD(delta)
    EMU_FIELD(dq_accum) EMU_FIELD(dq) EMU_FIELD(dk) EMU_FIELD(dv) EMU_FIELD(dsinks) EMU_FIELD(batch)
    EMU_FIELD(heads) EMU_FIELD(kv_heads) EMU_FIELD(nq) EMU_FIELD(nk) EMU_FIELD(d) EMU_FIELD(scale)
    EMU_FIELD(win_left) EMU_FIELD(win_right) EMU_FIELD(num_splits) EMU_FIELD(softcap) EMU_FIELD(alibi_seq_stride)
    EMU_FIELD(alibi_slopes) EMU_FIELD(sinks) EMU_FIELD(cu_seqlens_q) EMU_FIELD(cu_seqlens_k) EMU_FIELD(seqused_k)
#undef EMU_FIELD
    s += "size=" + std::to_string(sizeof(FlashBwdParams)) + ",align=" + std::to_string(alignof(FlashBwdParams));
    copy_msg(s, out, len);
    return static_cast<int>(s.size());
}

// Runs the whole backward as the GPU launch does, in stream order: preprocess, the main variant
// over (grid_x, grid_y, grid_z), convert, and dsink when p.sinks is set. Block counts of the
// helpers come from the host's plan too. Returns 0, −1 for an unknown variant, −2 on a fault.
extern "C" int attnkit_emu_flash_bwd(int bf16, int dp, unsigned grid_x, unsigned grid_y, unsigned grid_z,
                                     unsigned pre_blocks, unsigned convert_blocks, const FlashBwdParams p, char* err,
                                     size_t err_len) {
    const Variant* var = find(bf16, dp);
    if (var == nullptr) {
        copy_msg("no such variant", err, err_len);
        return -1;
    }
    return emu::run_checked(err, err_len, [&] {
        emu::launch(emu::Dim3{pre_blocks, 1, 1}, emu::Dim3{32 * BWD_ROWS_PER_BLOCK, 1, 1}, 0,
                    [&] { flash_bwd_preprocess(p); });
        emu::launch(emu::Dim3{grid_x, grid_y, grid_z}, emu::Dim3{BWD_THREADS, 1, 1},
                    static_cast<size_t>(var->smem), [&] { var->fn(p); });
        emu::launch(emu::Dim3{convert_blocks, 1, 1}, emu::Dim3{BWD_THREADS, 1, 1}, 0, [&] { flash_bwd_convert(p); });
        if (p.sinks != nullptr)
            emu::launch(emu::Dim3{static_cast<unsigned>(p.heads), 1, 1}, emu::Dim3{BWD_THREADS, 1, 1},
                        BWD_THREADS * sizeof(float), [&] { flash_bwd_dsink(p); });
    });
}
