/* The emulator tests' shared harness (emu_test.cpp and variants/emu/variant_test.cpp): buffers
 * (plain vectors on the emulator, managed memory on a GPU), check counting with the first 40
 * failures printed, and the splitmix64 generator of their inputs. Include after the kernels. */
#pragma once
#include <cstdint>
#include <cstdio>

#include <algorithm>
#include <cstdlib>
#include <vector>

#ifdef FS_EMULATE
template <typename T> using Vec = std::vector<T>;
static const char *g_where = "the CPU emulator";
#else
static void cuda_check(cudaError_t e, const char *what) {
    if (e != cudaSuccess) {
        std::fprintf(stderr, "CUDA error in %s: %s\n", what, cudaGetErrorString(e));
        std::exit(2);
    }
}
/* managed memory: the host fills and reads the same pointers the kernels use */
template <typename T> struct ManagedAlloc {
    using value_type = T;
    ManagedAlloc() = default;
    template <typename U> ManagedAlloc(const ManagedAlloc<U> &) {}
    T *allocate(size_t n) {
        void *p = nullptr;
        cuda_check(cudaMallocManaged(&p, std::max<size_t>(n, 1) * sizeof(T)), "cudaMallocManaged");
        return static_cast<T *>(p);
    }
    void deallocate(T *p, size_t) { cudaFree(p); }
    template <typename U> bool operator==(const ManagedAlloc<U> &) const { return true; }
    template <typename U> bool operator!=(const ManagedAlloc<U> &) const { return false; }
};
template <typename T> using Vec = std::vector<T, ManagedAlloc<T>>;
static const char *g_where = "the GPU";
#endif

static int g_failures = 0, g_checks = 0;
#define CHECK(cond, ...)                                                                                             \
    do {                                                                                                             \
        g_checks++;                                                                                                  \
        if (!(cond)) {                                                                                               \
            if (++g_failures <= 40) {                                                                                \
                std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                            \
                std::fprintf(stderr, __VA_ARGS__);                                                                   \
                std::fprintf(stderr, "\n");                                                                          \
            }                                                                                                        \
        }                                                                                                            \
    } while (0)

using bf16 = __nv_bfloat16;

struct Rng {
    uint64_t s;
    uint64_t next() {
        s += 0x9e3779b97f4a7c15ull;
        uint64_t z = s;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    float uniform(float lo, float hi) { return lo + (hi - lo) * static_cast<float>((next() >> 40) * 0x1p-24); }
};
