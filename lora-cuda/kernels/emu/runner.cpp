// The emulation harness: reads one kernel launch from stdin, runs it with cuda_emu.h, writes every
// buffer argument back to stdout. Protocol (little-endian):
//   u32 name_len, name; u32 grid[3]; u32 block[3]; u32 nargs;
//   per argument: u8 tag 'p' (device buffer): u64 len, bytes | 's' (by-value scalar/struct): u32 len, bytes.
//   Output: for each 'p' argument in order, u64 len, bytes.
// Built by the Rust tests (tests/common/emu.rs): g++ -std=c++20 -include emu/cuda_emu.h runner.cpp.
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../elementwise.cu"
#include "../reduce.cu"
#include "../sgemm.cu"
#include "../hgemm.cu"
#include "../conv.cu"
#include "../softmax.cu"
#include "../norm.cu"
#include "../attention.cu"
#include "../layout.cu"

using Launcher = std::function<void(dim3, dim3, void**)>;

template <typename... A, std::size_t... I>
static void call_with(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*reinterpret_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

template <typename... A>
static Launcher make_launcher(void (*f)(A...)) {
    return [f](dim3 g, dim3 b, void** args) {
        emu_launch(g, b, [&] { call_with(f, args, std::index_sequence_for<A...>{}); });
    };
}

#define K(name) {#name, make_launcher(name)}

static const std::map<std::string, Launcher>& registry() {
    static const std::map<std::string, Launcher> r = {
        K(act_fwd), K(act_bwd), K(binary_same), K(binary_bcast), K(axpby), K(fill_f32), K(geglu_fwd), K(geglu_bwd),
        K(f32_to_bf16), K(bf16_to_f32), K(f32_to_f16), K(f16_to_f32), K(adamw_f32),
        K(sum_f32), K(sumsq_f32), K(col_sum), K(row_mean),
        K(sgemm), K(hgemm_bf16), K(hgemm_f16),
        K(im2col_f32), K(col2im_f32), K(add_channel_bias),
        K(softmax_fwd), K(softmax_bwd),
        K(group_norm_fwd), K(group_norm_bwd_dx), K(group_norm_bwd_param), K(layer_norm_fwd), K(layer_norm_bwd_dx),
        K(layer_norm_bwd_param),
        K(attn_fwd), K(attn_bwd_dot), K(attn_bwd),
        K(upsample2x_fwd), K(upsample2x_bwd), K(permute_f32), K(copy_block),
    };
    return r;
}

static void read_exact(void* p, size_t n) {
    if (n && std::fread(p, 1, n, stdin) != n) {
        std::fprintf(stderr, "emu runner: short read\n");
        std::exit(2);
    }
}

int main() {
    uint32_t nlen;
    read_exact(&nlen, 4);
    std::string name(nlen, '\0');
    read_exact(name.data(), nlen);
    uint32_t g[3], b[3], nargs;
    read_exact(g, 12);
    read_exact(b, 12);
    read_exact(&nargs, 4);
    std::vector<void*> bufs(nargs, nullptr);
    std::vector<uint64_t> lens(nargs, 0);
    std::vector<char> is_buf(nargs, 0);
    std::vector<void*> args(nargs, nullptr);
    for (uint32_t i = 0; i < nargs; ++i) {
        uint8_t tag;
        read_exact(&tag, 1);
        if (tag == 'p') {
            uint64_t len;
            read_exact(&len, 8);
            void* mem = std::aligned_alloc(64, ((len + 63) / 64) * 64 + 64);
            read_exact(mem, len);
            bufs[i] = mem;
            lens[i] = len;
            is_buf[i] = 1;
            args[i] = &bufs[i];
        } else if (tag == 's') {
            uint32_t len;
            read_exact(&len, 4);
            void* mem = std::aligned_alloc(64, ((len + 63) / 64) * 64 + 64);
            read_exact(mem, len);
            args[i] = mem;
        } else {
            std::fprintf(stderr, "emu runner: bad tag %d\n", tag);
            return 2;
        }
    }
    auto it = registry().find(name);
    if (it == registry().end()) {
        std::fprintf(stderr, "emu runner: unknown kernel %s\n", name.c_str());
        return 3;
    }
    it->second(dim3(g[0], g[1], g[2]), dim3(b[0], b[1], b[2]), args.data());
    for (uint32_t i = 0; i < nargs; ++i)
        if (is_buf[i]) {
            std::fwrite(&lens[i], 8, 1, stdout);
            std::fwrite(bufs[i], 1, lens[i], stdout);
        }
    return 0;
}
