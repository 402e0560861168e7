// Helpers of the emulated kernel tests (tests/cuda_emu/test_*.cpp).
#pragma once

#include <cmath>
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

// The logits of the extreme cases (as test_mira_assign's extreme_logits), N(0, 1) at first:
// kind 0: +-100 at random; 1: left N(0, 1); 2: column 3 at -100 against 90-100 elsewhere (an
// empty column); 3: one-hot +100 rows.
inline std::vector<float> extreme(int N, int K, int kind) {
  std::vector<float> L = randn(static_cast<size_t>(N) * K, 9, 1.f);
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < K; ++j) {
      float& x = L[static_cast<size_t>(i) * K + j];
      if (kind == 0) x = x < 0 ? -100.f : 100.f;
      if (kind == 2) x = j == 3 ? -100.f : (x < 0 ? 90.f : 100.f);
      if (kind == 3) x = j == (i * 7) % K ? 100.f : -100.f;
    }
  return L;
}

// Every target in [0, 1] and every row summing to 1 within tol.
inline bool on_simplex(const std::vector<float>& t, int N, int K, double tol) {
  for (int i = 0; i < N; ++i) {
    double s = 0;
    for (int j = 0; j < K; ++j) {
      const float x = t[static_cast<size_t>(i) * K + j];
      if (!(x >= 0.f && x <= 1.f)) return false;
      s += x;
    }
    if (!(std::fabs(s - 1.0) <= tol)) return false;
  }
  return true;
}

// A 256-byte aligned workspace that starts as NaN (0xff bytes): what a kernel reads before
// anything wrote it shows in its results. The 256 bytes after it hold a guard pattern:
// intact() is false once a kernel has written past the size its plan asked for.
struct Workspace {
  static constexpr unsigned char kGuard = 0xa5;
  static constexpr size_t kGuardBytes = 256;
  std::vector<uint64_t> mem;
  char* base;
  size_t bytes;
  explicit Workspace(size_t n) : mem((n + kGuardBytes + 7) / 8 + 32), bytes(n) {
    base = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(mem.data()) + 255) / 256 * 256);
    std::memset(base, 0xff, bytes);
    std::memset(base + bytes, kGuard, kGuardBytes);
  }
  bool intact() const {
    for (size_t i = 0; i < kGuardBytes; ++i)
      if (static_cast<unsigned char>(base[bytes + i]) != kGuard) {
        std::printf("    a write %zu bytes past the %zu-byte workspace\n", i, bytes);
        return false;
      }
    return true;
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

// A kernel's targets against its CPU twin's. The twin runs the kernel's f32 operations in its
// order, so in the emulator, whose exp2f and log2f are the twin's, they agree bit for bit.
// With the GPU's math modelled (MIRA_EMU_GPU_MATH, cuda_emu.h) they agree to the tolerance
// test_mira_assign_gpu holds a GPU to (|got - ref| <= atol + rtol |ref|); the share of it the
// worst element uses is printed, the margin a GPU has.
inline bool matches_twin(const std::vector<float>& got, const std::vector<float>& ref, double atol, double rtol,
                         const char* what) {
#ifdef MIRA_EMU_GPU_MATH
  if (got.size() != ref.size()) return false;
  double worst = 0, max_abs = 0;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - ref[i]);
    const double used = d / (atol + rtol * std::fabs(static_cast<double>(ref[i])));
    if (!(used <= 1)) ++bad;
    if (!(used <= worst)) worst = used;
    if (!(d <= max_abs)) max_abs = d;
  }
  std::printf("    gpu math: %s: max abs %.3g, %.3g of the tolerance (atol %g, rtol %g)%s\n", what, max_abs, worst,
              atol, rtol, bad ? " OUTSIDE" : "");
  return bad == 0;
#else
  (void)atol, (void)rtol, (void)what;
  return same_bits(got, ref);
#endif
}

}  // namespace mira::emu_testing
