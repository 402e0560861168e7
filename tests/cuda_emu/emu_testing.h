// Helpers of the emulated kernel tests (tests/cuda_emu/test_*.cpp).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

namespace mira::emu_testing {

inline std::vector<float> randn(size_t n, uint32_t seed, float stddev) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.f, stddev);
  std::vector<float> x(n);
  for (float& v : x) v = d(g);
  return x;
}

// A 256-byte aligned workspace that starts as NaN (0xff bytes): what a kernel reads before
// anything wrote it shows in its results.
struct Workspace {
  std::vector<uint64_t> mem;
  char* base;
  explicit Workspace(size_t bytes) : mem((bytes + 7) / 8 + 32) {
    base = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(mem.data()) + 255) / 256 * 256);
    std::memset(base, 0xff, bytes);
  }
};

// Bit for bit, NaN included; prints the first differences.
inline bool same_bits(const std::vector<float>& got, const std::vector<float>& ref) {
  if (got.size() != ref.size()) return false;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &ref[i], sizeof(float)) == 0) continue;
    if (bad++ < 5) std::printf("    [%zu] got %.9g expected %.9g\n", i, got[i], ref[i]);
  }
  if (bad) std::printf("    %zu of %zu differ\n", bad, got.size());
  return bad == 0;
}
inline bool same_bits(const std::vector<std::vector<float>>& got, const std::vector<std::vector<float>>& ref) {
  if (got.size() != ref.size()) return false;
  bool same = true;
  for (size_t v = 0; v < got.size(); ++v) same = same_bits(got[v], ref[v]) && same;
  return same;
}

}  // namespace mira::emu_testing
