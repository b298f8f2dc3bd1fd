// driver.cpp — C ABI around the emulated flash_fwd kernels (see ../cuda_host_emu.hpp).
// Built by tests/cuda_emulated.rs into a shared library with g++ -std=c++20 -pthread.
#define ATTNKIT_EMU 1
#include "../cuda_host_emu.hpp"
#include "../flash_fwd.cu"

#include <cstddef>

namespace {
using Entry = void (*)(const unsigned short*, const unsigned short*, const unsigned short*, float*, float*, int,
                       int, int, int, int, float, int, int);

struct Variant {
    int bf16, dp, br, bc, smem;
    Entry fn;
};

#define EMU_VARIANT(DT, IS_BF16, DP) \
    Variant{IS_BF16, DP, FlashGeom<DP>::BR, FlashGeom<DP>::BC, FlashGeom<DP>::SMEM_BYTES, flash_fwd_##DT##_d##DP},
const Variant kVariants[] = {FLASH_ALL_VARIANTS(EMU_VARIANT)};

const Variant* find(int bf16, int dp) {
    for (const Variant& v : kVariants)
        if (v.bf16 == bf16 && v.dp == dp) return &v;
    return nullptr;
}

void copy_msg(const std::string& m, char* err, size_t len) {
    if (err == nullptr || len == 0) return;
    const size_t n = std::min(len - 1, m.size());
    std::memcpy(err, m.data(), n);
    err[n] = 0;
}
}  // namespace

// Writes the launch geometry of a variant; returns 0, or −1 when there is no such variant.
extern "C" int attnkit_emu_config(int bf16, int dp, int* br, int* bc, int* smem_bytes) {
    const Variant* v = find(bf16, dp);
    if (v == nullptr) return -1;
    *br = v->br;
    *bc = v->bc;
    *smem_bytes = v->smem;
    return 0;
}

// Runs the emulated kernel. q: B·H·nq·d, k/v: B·H_kv·nk·d 16-bit values; o: B·H·nq·d, lse: B·H·nq.
// Returns 0 on success, −1 for an unknown variant, −2 when the emulator caught a fault (message in err).
extern "C" int attnkit_emu_flash_fwd(int bf16, int dp, const unsigned short* q, const unsigned short* k,
                                     const unsigned short* v, float* o, float* lse, int batch, int heads,
                                     int kv_heads, int nq, int nk, int d, float scale_log2, int win_left,
                                     int win_right, char* err, size_t err_len) {
    const Variant* var = find(bf16, dp);
    if (var == nullptr) {
        copy_msg("no such variant", err, err_len);
        return -1;
    }
    {
        std::lock_guard<std::mutex> l(emu::global().mu);
        emu::global().buffers.clear();
        emu::global().first_error.clear();
    }
    const size_t q_elems = static_cast<size_t>(batch) * heads * nq * d;
    const size_t kv_elems = static_cast<size_t>(batch) * kv_heads * nk * d;
    emu::register_buffer(q, q_elems * 2);
    emu::register_buffer(k, kv_elems * 2);
    emu::register_buffer(v, kv_elems * 2);
    const emu::Dim3 grid{static_cast<unsigned>((nq + var->br - 1) / var->br), static_cast<unsigned>(heads),
                         static_cast<unsigned>(batch)};
    emu::launch(grid, emu::Dim3{FLASH_THREADS, 1, 1}, static_cast<size_t>(var->smem), [&] {
        var->fn(q, k, v, o, lse, heads, kv_heads, nq, nk, d, scale_log2, win_left, win_right);
    });
    std::lock_guard<std::mutex> l(emu::global().mu);
    if (!emu::global().first_error.empty()) {
        copy_msg(emu::global().first_error, err, err_len);
        return -2;
    }
    return 0;
}
