/* The emulator tests' shared harness (emu_test.cpp and variants/emu/variant_test.cpp): check
 * counting with the first 40 failures printed, and the splitmix64 generator of their inputs. */
#pragma once
#include <cstdint>
#include <cstdio>

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
