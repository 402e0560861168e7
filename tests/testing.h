// Shared test helpers: one tolerance rule, |got - ref| <= atol + rtol * |ref|, that prints the
// max abs/rel error, the worst index and the first pairs when it fails; and an f64
// central-difference gradient check for any function of tensors.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace mira::testing {

// Operands for the tensor-core primitives' test (cuda::mira_mma_selftest, on a GPU and in the
// CUDA emulator): A (16 x 16), its transpose and B (16 x 8) of small integers as f16 bits,
// A's entries not symmetric, and D = A B, exact in any order of addition.
struct MmaCase {
  std::vector<uint16_t> A, At, B;
  std::vector<float> D;
};
inline uint16_t small_int_f16(int v) {  // |v| <= 2048
  if (v == 0) return 0;
  const int a = v < 0 ? -v : v;
  int e = 0;
  while ((2 << e) <= a) ++e;
  return static_cast<uint16_t>((v < 0 ? 0x8000 : 0) | (e + 15) << 10 | ((a - (1 << e)) << (10 - e)));
}
inline MmaCase mma_case() {
  auto a = [](int i, int j) { return (i * 7 + j * 3) % 9 - 4; };
  auto b = [](int k, int n) { return (k * 5 + n * 2) % 7 - 3; };
  MmaCase c;
  c.A.resize(256), c.At.resize(256), c.B.resize(128), c.D.assign(128, 0.f);
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) c.A[i * 16 + j] = c.At[j * 16 + i] = small_int_f16(a(i, j));
  for (int k = 0; k < 16; ++k)
    for (int n = 0; n < 8; ++n) c.B[k * 8 + n] = small_int_f16(b(k, n));
  for (int i = 0; i < 16; ++i)
    for (int n = 0; n < 8; ++n)
      for (int k = 0; k < 16; ++k) c.D[i * 8 + n] += static_cast<float>(a(i, k) * b(k, n));
  return c;
}

struct Tol {
  double atol = 1e-5;
  double rtol = 1e-5;
};

// Returns true when every pair is within tolerance; otherwise prints a report naming `what`.
inline bool allclose(const std::vector<double>& got, const std::vector<double>& ref, Tol tol,
                     const std::string& what) {
  if (got.size() != ref.size()) {
    std::printf("[%s] size mismatch: got %zu, ref %zu\n", what.c_str(), got.size(), ref.size());
    return false;
  }
  double max_abs = 0, max_rel = 0;
  size_t worst = 0, bad = 0;
  double worst_excess = -1;
  for (size_t i = 0; i < got.size(); ++i) {
    const double a = std::fabs(got[i] - ref[i]);
    const double r = a / std::max(std::fabs(ref[i]), 1e-30);
    const double excess = a - (tol.atol + tol.rtol * std::fabs(ref[i]));
    const bool nan_mismatch = std::isnan(got[i]) != std::isnan(ref[i]);
    if (excess > 0 || nan_mismatch) ++bad;
    if (std::isnan(a) || excess > worst_excess) {
      worst_excess = std::isnan(a) ? INFINITY : excess;
      worst = i;
    }
    max_abs = std::max(max_abs, a);
    max_rel = std::max(max_rel, r);
  }
  if (bad == 0) return true;
  std::printf("[%s] %zu of %zu outside atol=%g rtol=%g; max abs %.3e, max rel %.3e, worst index %zu (got %.9g ref %.9g)\n",
              what.c_str(), bad, got.size(), tol.atol, tol.rtol, max_abs, max_rel, worst, got[worst], ref[worst]);
  for (size_t i = 0; i < std::min<size_t>(got.size(), 6); ++i)
    std::printf("    [%zu] got %.9g ref %.9g\n", i, got[i], ref[i]);
  return false;
}

inline bool allclose(const Tensor& got, const Tensor& ref, Tol tol, const std::string& what) {
  if (got.shape() != ref.shape()) {
    std::printf("[%s] shape mismatch: got %s, ref %s\n", what.c_str(), got.shape().str().c_str(),
                ref.shape().str().c_str());
    return false;
  }
  return allclose(got.to_vector(), ref.to_vector(), tol, what);
}

}  // namespace mira::testing

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/autograd.h"
#include "engine/rng.h"

namespace mira::testing {

// A file's whole text ("" when it cannot be read).
inline std::string slurp_text(const std::filesystem::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Writes train-{images-idx3,labels-idx1}-ubyte into dir: n 28x28 images of 4 classes, a bright
// quadrant per class over a varying background (enough structure to train on, no download).
inline void write_synthetic_idx(const std::string& dir, int n) {
  const int h = 28;
  auto be32 = [](std::ofstream& o, uint32_t v) {
    const char b[4] = {char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
    o.write(b, 4);
  };
  std::ofstream im(dir + "/train-images-idx3-ubyte", std::ios::binary);
  std::ofstream lb(dir + "/train-labels-idx1-ubyte", std::ios::binary);
  be32(im, 0x803);
  be32(im, uint32_t(n));
  be32(im, h);
  be32(im, h);
  be32(lb, 0x801);
  be32(lb, uint32_t(n));
  for (int i = 0; i < n; ++i) {
    const int cls = i % 4;
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < h; ++x) {
        const bool in = (y / 14 == cls / 2) && (x / 14 == cls % 2);
        im.put(char(in ? 200 + (i * 7 + x) % 50 : (i * 13 + y * 3 + x) % 40));
      }
    lb.put(char(cls));
  }
}

// A fresh, empty temporary folder, removed with its contents at the end. d / "name" is the path
// of a file in it.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    path = std::filesystem::temp_directory_path() /
           ("mira_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

// A temporary folder (removed at the end) whose data/ holds write_synthetic_idx's n images: the
// tests that run mira_pretrain as a process train on it. `tag` and the process id name it.
struct SyntheticRunDir {
  std::filesystem::path dir;
  SyntheticRunDir(const std::string& tag, int n) {
    dir = std::filesystem::temp_directory_path() / (tag + "_" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir / "data");
    write_synthetic_idx((dir / "data").string(), n);
  }
  ~SyntheticRunDir() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  SyntheticRunDir(const SyntheticRunDir&) = delete;
  SyntheticRunDir& operator=(const SyntheticRunDir&) = delete;
};

// f64 central-difference gradient check. `f` maps the inputs to an output of any shape; the
// scalar checked is sum(f(x) * r) for a fixed random r, so every output element contributes.
// Inputs must be f64 CPU tensors with requires_grad set. At most `max_elems` entries per
// input are probed (spread over the tensor). Returns true when every probed entry satisfies
// |analytic - numeric| <= atol + rtol * |numeric|.
inline bool gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs,
                      const std::string& what, double eps = 1e-6, Tol tol = {1e-7, 1e-5}, int max_elems = 64) {
  for (const Tensor& t : inputs) REQUIRE(t.dtype() == DType::F64);
  Tensor out = f(inputs);
  const int64_t n_out = out.numel();
  std::vector<double> r(static_cast<size_t>(n_out));
  for (int64_t i = 0; i < n_out; ++i) r[i] = philox_normal(4242, static_cast<uint64_t>(i));
  Tensor seed = Tensor::from_vector(r, out.shape(), DType::F64);
  for (Tensor& t : inputs) t.set_grad(Tensor());
  backward(out, seed);
  auto objective = [&]() {
    NoGradGuard ng;
    std::vector<double> o = f(inputs).to_vector();
    double s = 0;
    for (size_t i = 0; i < o.size(); ++i) s += o[i] * r[i];
    return s;
  };
  bool ok = true;
  for (size_t k = 0; k < inputs.size(); ++k) {
    Tensor& x = inputs[k];
    Tensor g = x.grad();
    std::vector<double> analytic = g.defined() ? g.to_vector() : std::vector<double>(x.numel(), 0.0);
    std::vector<double> numeric, probed;
    const int64_t n = x.numel();
    const int64_t step = std::max<int64_t>(1, n / max_elems);
    double* p = x.data<double>();
    for (int64_t i = 0; i < n; i += step) {
      const double orig = p[i];
      p[i] = orig + eps;
      const double plus = objective();
      p[i] = orig - eps;
      const double minus = objective();
      p[i] = orig;
      numeric.push_back((plus - minus) / (2 * eps));
      probed.push_back(analytic[i]);
    }
    ok = allclose(probed, numeric, tol, what + " d/input" + std::to_string(k)) && ok;
  }
  return ok;
}

}  // namespace mira::testing
