// Philox-4x32-10 (Salmon et al., SC'11), counter-based: a value depends only on (key, counter),
// so any number of threads, ranks or devices draw the same numbers for the same logical
// position. Augmentations key it by (seed) and count by (epoch, sample, view, draw); tensor
// init counts by element index. Header-only and usable from CUDA device code.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MIRA_HD __host__ __device__ __forceinline__
#else
#define MIRA_HD inline
#endif

namespace mira {

struct Philox4 {
  uint32_t v[4];
};

MIRA_HD uint32_t philox_mulhi(uint32_t a, uint32_t b, uint32_t* lo) {
  uint64_t p = static_cast<uint64_t>(a) * b;
  *lo = static_cast<uint32_t>(p);
  return static_cast<uint32_t>(p >> 32);
}

// ctr: 128-bit counter as four words; key: 64-bit key.
MIRA_HD Philox4 philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint64_t key) {
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int r = 0; r < 10; ++r) {
    uint32_t lo0, lo1;
    uint32_t hi0 = philox_mulhi(0xD2511F53u, c0, &lo0);
    uint32_t hi1 = philox_mulhi(0xCD9E8D57u, c2, &lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Uniform in [0, 1) with 24 bits (exactly representable in f32, same on host and device).
MIRA_HD float philox_u01(uint32_t x) { return static_cast<float>(x >> 8) * (1.0f / 16777216.0f); }
// Uniform in (0, 1] with 53 bits from two words (for Box-Muller on the host).
MIRA_HD double philox_u01_open_double(uint32_t a, uint32_t b) {
  uint64_t m = (static_cast<uint64_t>(a) << 21) ^ static_cast<uint64_t>(b >> 11);
  m &= (1ull << 53) - 1;
  return (static_cast<double>(m) + 1.0) * (1.0 / 9007199254740992.0);
}

// Standard normal for element i of a stream keyed by seed (Box-Muller on one Philox call).
inline double philox_normal(uint64_t seed, uint64_t i) {
  Philox4 r = philox4x32(static_cast<uint32_t>(i >> 1), static_cast<uint32_t>(i >> 33), 0x6e6f726du, 0, seed);
  double u1 = philox_u01_open_double(r.v[0], r.v[1]);
  double u2 = philox_u01_open_double(r.v[2], r.v[3]);
  double rad = std::sqrt(-2.0 * std::log(u1));
  const double two_pi = 6.283185307179586476925286766559;
  return (i & 1) ? rad * std::sin(two_pi * u2) : rad * std::cos(two_pi * u2);
}

inline double philox_uniform(uint64_t seed, uint64_t i) {
  Philox4 r = philox4x32(static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32), 0x756e6966u, 0, seed);
  return philox_u01_open_double(r.v[0], r.v[1]) - 0x1p-53;  // [0, 1)
}

}  // namespace mira
