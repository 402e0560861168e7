// The engine's CUDA kernels other than the assignment's (kernels/cuda/nn.cu, pointwise.cu,
// optim.cu, topk.cu; data/augment_kernels.cu) run on the CPU by the CUDA emulator (cuda_emu.h),
// against their CPU twins (kernels/cpu, data/augment.cpp): the layers of ResNet and the MIRA
// heads, the elementwise maps, casts, fills and sums, SGD / LARS and the EMA teacher, the k-NN
// top-k, the view augmentation.
//
// test_ops_gpu, test_models_gpu, test_knn_gpu and test_augment_gpu check the same kernels on a GPU through the
// engine; these checks run in CI, where no GPU is, on the kernels' own source: their indexing,
// tile edges, grid-stride loops, vector and scalar paths, barriers and shuffles. Each kernel
// also runs with its threads in reversed and shuffled order (emu::set_schedule) and must give
// the same bits: a read that a missing __syncthreads leaves unordered changes them.
// The grid barriers of kernels/cuda/grid_sync.cuh (not yet used by a kernel) are checked for
// the ordering they promise.
//
// Comparisons:
// - bit for bit where the kernels claim it: the elementwise maps against the f32 twin (and
//   bf16: the twin's f32 result on the same rounded inputs, rounded once), casts, fills, the
//   top-k, max-pool and its gradient, im2col, the vectorised batch-norm apply kernels against
//   the scalar ones;
// - else against the f64 twin with test_ops_gpu's tolerance for f32 kernels of ours
//   (`atol = 1e-5 max|ref|, rtol = 1e-5`), and 1e-2 for bf16 outputs.
// test_kernels_emu_gpumath runs the same with the GPU's math modelled (expf and logf off by
// their documented ulps, a * b + c contracted as nvcc does; cuda_emu.h): the bit-for-bit
// checks then also say that the kernels keep the twins' roundings where a GPU would fuse.
#include "tests/cuda_emu/cuda_emu.h"
//
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "data/augment.h"
#include "data/augment_kernels.cuh"
#include "engine/dtype.h"
#include "kernels/cpu/nn.h"
#include "kernels/cpu/optim.h"
#include "kernels/cpu/pointwise.h"
#include "kernels/cpu/topk.h"
#include "kernels/cuda/nn.cuh"
#include "kernels/cuda/optim.cuh"
#include "kernels/cuda/pointwise.cuh"
#include "kernels/cuda/sync_probe.cuh"
#include "kernels/cuda/topk.cuh"
#include "tests/augment_images.h"
#include "tests/cuda_emu/emu_testing.h"
#include "tests/testing.h"

using namespace mira;  // NOLINT(google-build-using-namespace)
using emu_testing::randn;
using emu_testing::same_bits;
using mira::testing::Images;
using mira::testing::make_images;

namespace {

using BF = __nv_bfloat16;
constexpr cudaStream_t kStream = nullptr;

std::vector<double> to_d(const std::vector<float>& v) {
  return {v.begin(), v.end()};
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

// test_ops_gpu's rule: the error of a sum scales with its terms, not its (cancelled) result;
// `terms`: their largest magnitude where it exceeds the result's.
bool close(const std::vector<float>& got, const std::vector<double>& ref, double k, const std::string& what,
           double terms = 0) {
  return testing::allclose(to_d(got), ref, {k * std::max({max_abs(ref), terms, 1e-30}), k}, what);
}

// bf16 storage on the host: the engine's rounding (round to nearest even).
std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) b[i] = f32_to_bf16_bits(v[i]);
  return b;
}
std::vector<float> from_bf16(const std::vector<uint16_t>& b) {
  std::vector<float> v(b.size());
  for (size_t i = 0; i < b.size(); ++i) v[i] = bf16_bits_to_f32(b[i]);
  return v;
}
std::vector<float> rounded(const std::vector<float>& v) {
  return from_bf16(to_bf16(v));
}
BF* bf(std::vector<uint16_t>& b) {
  return reinterpret_cast<BF*>(b.data());
}
const BF* bf(const std::vector<uint16_t>& b) {
  return reinterpret_cast<const BF*>(b.data());
}

// Runs `run` with the block's threads in index order, reversed, and shuffled anew at every
// barrier; the f32 words it returns must be the same bits each time. Returns the first.
std::vector<float> in_every_order(const std::function<std::vector<float>()>& run, const std::string& what) {
  emu::set_schedule(0);
  const std::vector<float> first = run();
  for (int order : {1, 3}) {
    emu::set_schedule(order);
    const std::vector<float> again = run();
    INFO(what, ": thread order ", order);
    CHECK(same_bits(again, first));
  }
  emu::set_schedule(0);
  return first;
}

// Appends the bits of any vector to a vector of f32 words (for in_every_order).
template <typename T>
void append_bits(std::vector<float>& out, const std::vector<T>& v) {
  const size_t bytes = v.size() * sizeof(T), at = out.size();
  out.resize(at + (bytes + 3) / 4);
  std::memcpy(out.data() + at, v.data(), bytes);
}

// Values with zeros, negative zeros and exact ties among them (relu masks, max-pool ties).
std::vector<float> with_ties(size_t n, uint32_t seed) {
  std::vector<float> v = randn(n, seed, 1.f);
  for (size_t i = 0; i < n; i += 7) v[i] = 0.f;
  for (size_t i = 3; i < n; i += 11) v[i] = -0.f;
  for (size_t i = 5; i < n; i += 13) v[i] = 0.5f;
  return v;
}

}  // namespace

// ---------------------------------------------------------------- elementwise

TEST_CASE("emulated elementwise maps equal their CPU twins bit for bit (f32, bf16; vector and scalar paths)") {
  // 1003 elements: vector packs plus a scalar tail; at offset 1 the pointers are not 16-byte
  // aligned and every element takes the scalar path.
  for (int off : {0, 1}) {
    const int64_t n = 1003;
    std::vector<float> a = with_ties(n + off, 1), b = with_ties(n + off, 2), d0 = randn(n + off, 3, 1.f);
    a[10 + off] = std::nanf("");  // relu and its mask keep NaN (f32 only: bf16 NaN bits are the device's)
    const float alpha = 0.37f;
    std::vector<float> scalar = {1.75f};
    for (bool acc : {false, true}) {
      INFO("offset ", off, " accumulate ", acc);
      auto f32 = [&](auto&& gpu_call, auto&& cpu_call) {
        std::vector<float> g = d0, c = d0;
        in_every_order(
            [&] {
              std::vector<float> y = d0;
              gpu_call(y.data() + off);
              g = y;
              return y;
            },
            "map");
        cpu_call(c.data() + off);
        return same_bits(g, c);
      };
      CHECK(f32([&](float* y) { gpu::relu_bwd(a.data() + off, b.data() + off, y, n, acc, kStream); },
                [&](float* y) { cpu::relu_bwd(a.data() + off, b.data() + off, y, n, acc); }));
      CHECK(f32([&](float* y) { gpu::axpy(alpha, a.data() + off, y, n, acc, kStream); },
                [&](float* y) { cpu::axpy(alpha, a.data() + off, y, n, acc); }));
      CHECK(f32([&](float* y) { gpu::broadcast_scalar_bwd(scalar.data(), alpha, y, n, acc, kStream); },
                [&](float* y) { cpu::broadcast_scalar_bwd(scalar.data(), alpha, y, n, acc); }));
      if (acc) continue;
      CHECK(f32([&](float* y) { gpu::relu_fwd(a.data() + off, y, n, kStream); },
                [&](float* y) { cpu::relu_fwd(a.data() + off, y, n); }));
      CHECK(f32([&](float* y) { gpu::add_fwd(a.data() + off, b.data() + off, y, n, kStream); },
                [&](float* y) { cpu::add_fwd(a.data() + off, b.data() + off, y, n); }));
      CHECK(f32([&](float* y) { gpu::add_relu_fwd(a.data() + off, b.data() + off, y, n, kStream); },
                [&](float* y) { cpu::add_relu_fwd(a.data() + off, b.data() + off, y, n); }));
    }
    // bf16: the f32 twin on the rounded inputs, its result rounded once.
    a[10 + off] = 1.f;
    const std::vector<uint16_t> ab = to_bf16(a), bb = to_bf16(b), db = to_bf16(d0), sb = to_bf16(scalar);
    const std::vector<float> ar = from_bf16(ab), br = from_bf16(bb), dr = from_bf16(db), sr = from_bf16(sb);
    for (bool acc : {false, true}) {
      INFO("bf16, offset ", off, " accumulate ", acc);
      auto b16 = [&](auto&& gpu_call, auto&& cpu_call) {
        std::vector<uint16_t> g = db;
        gpu_call(bf(g) + off);
        std::vector<float> c = dr;
        cpu_call(c.data() + off);
        return same_bits(from_bf16(g), rounded(c));
      };
      CHECK(b16([&](BF* y) { gpu::relu_bwd(bf(ab) + off, bf(bb) + off, y, n, acc, kStream); },
                [&](float* y) { cpu::relu_bwd(ar.data() + off, br.data() + off, y, n, acc); }));
      CHECK(b16([&](BF* y) { gpu::axpy(alpha, bf(ab) + off, y, n, acc, kStream); },
                [&](float* y) { cpu::axpy(alpha, ar.data() + off, y, n, acc); }));
      CHECK(b16([&](BF* y) { gpu::broadcast_scalar_bwd(bf(sb), alpha, y, n, acc, kStream); },
                [&](float* y) { cpu::broadcast_scalar_bwd(sr.data(), alpha, y, n, acc); }));
      if (acc) continue;
      CHECK(b16([&](BF* y) { gpu::relu_fwd(bf(ab) + off, y, n, kStream); },
                [&](float* y) { cpu::relu_fwd(ar.data() + off, y, n); }));
      CHECK(b16([&](BF* y) { gpu::add_fwd(bf(ab) + off, bf(bb) + off, y, n, kStream); },
                [&](float* y) { cpu::add_fwd(ar.data() + off, br.data() + off, y, n); }));
      CHECK(b16([&](BF* y) { gpu::add_relu_fwd(bf(ab) + off, bf(bb) + off, y, n, kStream); },
                [&](float* y) { cpu::add_relu_fwd(ar.data() + off, br.data() + off, y, n); }));
    }
  }
}

TEST_CASE("emulated casts and fills give the CPU's bits for every device dtype pair") {
  const int64_t n = 777;
  std::vector<float> src = randn(n, 4, 40.f);
  for (int64_t i = 0; i < n; i += 5) src[i] = std::fabs(src[i]);  // in u8's range now and then
  src[1] = 255.f;
  src[2] = 0.5f;
  src[3] = -0.f;
  const int codes[] = {0, 2, 3, 4};
  const size_t sizes[] = {4, 8, 2, 1, 8};  // by code
  for (int from : codes) {
    // The source in its own dtype, through the CPU's cast from f32 (u8 of values in range only).
    std::vector<float> in = src;
    if (from == 3)
      for (float& v : in) v = std::fmod(std::fabs(std::nearbyint(v)), 256.f);
    std::vector<unsigned char> s(n * sizes[from]);
    cpu::cast(in.data(), 0, s.data(), from, n);
    for (int to : codes) {
      if (to == 3 && from != 3) continue;  // out-of-range float -> u8 is undefined on both
      INFO("cast ", from, " -> ", to);
      std::vector<unsigned char> g(n * sizes[to], 0xab), c(n * sizes[to], 0xcd);
      gpu::cast(s.data(), from, g.data(), to, n, kStream);
      cpu::cast(s.data(), from, c.data(), to, n);
      CHECK(g == c);
    }
  }
  for (int code : codes)
    for (double value : {0.0, 3.0, -1.5e-3}) {
      if (code == 3 && value < 0) continue;
      INFO("fill ", code, " with ", value);
      std::vector<unsigned char> g(n * sizes[code], 0xab), c(n * sizes[code], 0xcd);
      gpu::fill(g.data(), code, n, value, kStream);
      cpu::fill(c.data(), code, n, value);
      CHECK(g == c);
    }
  CHECK_THROWS(gpu::cast(src.data(), 0, src.data(), 1, n, kStream));  // f64 has no device storage
}

TEST_CASE("emulated sum: the f64 total rounded once, the same bits in every thread order") {
  // 5e6: more than the 1024 blocks of 16 items per thread the first pass allows (its cap), so
  // threads stride the grid and the second pass's threads take several partials each.
  for (int64_t n : {int64_t(1), int64_t(300), int64_t(70001), int64_t(5000000)}) {
    INFO("n = ", n);
    const std::vector<float> x = randn(n, 5, 1.f);
    std::vector<double> partials(gpu::sum_partials(n));
    const double alpha = 1.0 / 3.0;
    const std::vector<float> y = in_every_order(
        [&] {
          std::vector<float> out(1, -1.f);
          gpu::sum(x.data(), n, alpha, out.data(), partials.data(), kStream);
          return out;
        },
        "sum");
    const double ref = alpha * cpu::sum(x.data(), n);
    // Sums of f32 terms in double, in two orders: they agree far below one f32 ulp.
    CHECK(std::fabs(y[0] - ref) <= 2e-7 * std::max(1.0, std::fabs(ref)));
    std::vector<uint16_t> xb = to_bf16(x), yb(1);
    gpu::sum(bf(xb), n, alpha, bf(yb), partials.data(), kStream);
    const std::vector<float> xr = from_bf16(xb);
    const double refb = alpha * cpu::sum(xr.data(), n);
    CHECK(std::fabs(from_bf16(yb)[0] - refb) <= 1e-2 * std::max(1.0, std::fabs(refb)));
  }
}

// ---------------------------------------------------------------- batch norm

namespace {

struct BnCase {
  int64_t M;
  int C;
};

// One batch-norm forward and backward of the kernels, f32, with every output appended in order.
struct BnOut {
  std::vector<float> mean, var, invstd, rmean, rvar, y, yrelu, sum_dy, sum_dyx, dx, dx_eval, dx_relu;
  std::vector<float> all() const {
    std::vector<float> a;
    for (const auto* v : {&mean, &var, &invstd, &rmean, &rvar, &y, &yrelu, &sum_dy, &sum_dyx, &dx, &dx_eval, &dx_relu})
      a.insert(a.end(), v->begin(), v->end());
    return a;
  }
};

BnOut bn_gpu(const BnCase& c, const std::vector<float>& x, const std::vector<float>& dy,
             const std::vector<float>& gamma, const std::vector<float>& beta, const std::vector<float>& dx0) {
  const size_t MC = static_cast<size_t>(c.M) * c.C;
  // Exactly the bytes bn_workspace_bytes asks for (operator new aligns to 16), so ASan sees a
  // kernel that writes past the size its launcher computed.
  std::vector<double> ws(gpu::bn_workspace_bytes(c.M, c.C) / sizeof(double));
  void* w = ws.data();
  BnOut o;
  o.mean.assign(c.C, 0.f);
  o.var.assign(c.C, 0.f);
  o.invstd.assign(c.C, 0.f);
  o.rmean.assign(c.C, 0.1f);
  o.rvar.assign(c.C, 0.9f);
  o.y.assign(MC, 0.f);
  o.yrelu.assign(MC, 0.f);
  o.sum_dy.assign(c.C, 0.f);
  o.sum_dyx.assign(c.C, 0.f);
  o.dx = dx0;
  o.dx_eval = dx0;
  o.dx_relu.assign(MC, 0.f);
  gpu::bn_stats(x.data(), c.M, c.C, o.mean.data(), o.var.data(), w, kStream);
  gpu::bn_finalize(o.mean.data(), o.var.data(), o.invstd.data(), o.rmean.data(), o.rvar.data(), c.C, 0.1, 1e-5,
                   static_cast<double>(c.M), kStream);
  gpu::bn_fwd_apply(x.data(), o.mean.data(), o.invstd.data(), gamma.data(), beta.data(), o.y.data(), c.M, c.C, kStream);
  gpu::bn_fwd_apply(x.data(), o.mean.data(), o.invstd.data(), gamma.data(), beta.data(), o.yrelu.data(), c.M, c.C,
                    kStream, true);
  gpu::bn_bwd_reduce(dy.data(), x.data(), o.mean.data(), o.invstd.data(), c.M, c.C, o.sum_dy.data(), o.sum_dyx.data(),
                     w, kStream);
  gpu::bn_bwd_apply(dy.data(), x.data(), o.mean.data(), o.invstd.data(), gamma.data(), o.sum_dy.data(),
                    o.sum_dyx.data(), static_cast<double>(c.M), o.dx.data(), c.M, c.C, true, kStream);
  gpu::bn_bwd_apply(dy.data(), x.data(), o.mean.data(), o.invstd.data(), gamma.data(), nullptr, nullptr,
                    static_cast<double>(c.M), o.dx_eval.data(), c.M, c.C, true, kStream);
  // The fused ReLU's backward: reduce and apply through its output's mask.
  std::vector<float> sdy(c.C), sdyx(c.C);
  gpu::bn_bwd_reduce(dy.data(), x.data(), o.mean.data(), o.invstd.data(), c.M, c.C, sdy.data(), sdyx.data(), w, kStream,
                     o.yrelu.data());
  gpu::bn_bwd_apply(dy.data(), x.data(), o.mean.data(), o.invstd.data(), gamma.data(), sdy.data(), sdyx.data(),
                    static_cast<double>(c.M), o.dx_relu.data(), c.M, c.C, false, kStream, o.yrelu.data());
  return o;
}

struct BnVecMode {
  bool prev;
  explicit BnVecMode(bool on) : prev(gpu::bn_vectorized()) { gpu::set_bn_vectorized(on); }
  ~BnVecMode() { gpu::set_bn_vectorized(prev); }
};

}  // namespace

TEST_CASE("emulated batch norm (statistics, running statistics, forward, ReLU, backward) against the f64 twin") {
  // C 70: tiles with idle channels; C 64 and 256: the vectorised kernels' layouts (f32 and bf16);
  // M 3 and 1: fewer rows than the row-threads of a block.
  for (BnCase c : {BnCase{333, 70}, BnCase{200, 64}, BnCase{96, 256}, BnCase{3, 70}, BnCase{2, 32}}) {
    for (bool vec : {false, true}) {
      BnVecMode mode(vec);
      INFO("M ", c.M, " C ", c.C, " vectorised ", vec);
      const size_t MC = static_cast<size_t>(c.M) * c.C;
      std::vector<float> x = randn(MC, 11, 2.f), dy = randn(MC, 12, 1.f), dx0 = randn(MC, 13, 0.5f);
      for (size_t i = 0; i < MC; ++i) x[i] += 3.f + static_cast<float>(i % c.C);  // means far from 0
      const std::vector<float> gamma = randn(c.C, 14, 1.f), beta = randn(c.C, 15, 1.f);
      const BnOut g = bn_gpu(c, x, dy, gamma, beta, dx0);
      in_every_order([&] { return bn_gpu(c, x, dy, gamma, beta, dx0).all(); }, "batch norm");

      // The f64 twin, step by step on the same inputs.
      const std::vector<double> xd = to_d(x), dyd = to_d(dy), gd = to_d(gamma), bd = to_d(beta);
      std::vector<double> mean(c.C), var(c.C), invstd(c.C), rmean(c.C, 0.1), rvar(c.C, 0.9), y(MC), yr(MC);
      cpu::bn_stats(xd.data(), c.M, c.C, mean.data(), var.data());
      cpu::bn_finalize(mean.data(), var.data(), invstd.data(), rmean.data(), rvar.data(), c.C, 0.1, 1e-5,
                       static_cast<double>(c.M));
      CHECK(close(g.mean, mean, 1e-5, "mean"));
      CHECK(close(g.var, var, 1e-5, "var"));
      CHECK(close(g.invstd, invstd, 1e-5, "invstd"));
      CHECK(close(g.rmean, rmean, 1e-5, "running mean"));
      CHECK(close(g.rvar, rvar, 1e-5, "running var"));
      // From here on the twin takes the kernels' statistics, so each step is checked alone.
      const std::vector<double> gm = to_d(g.mean), gi = to_d(g.invstd);
      cpu::bn_fwd_apply(xd.data(), gm.data(), gi.data(), gd.data(), bd.data(), y.data(), c.M, c.C);
      cpu::bn_fwd_apply(xd.data(), gm.data(), gi.data(), gd.data(), bd.data(), yr.data(), c.M, c.C, true);
      CHECK(close(g.y, y, 1e-5, "y"));
      CHECK(close(g.yrelu, yr, 1e-5, "relu(y)"));
      std::vector<double> sdy(c.C), sdyx(c.C);
      cpu::bn_bwd_reduce(dyd.data(), xd.data(), gm.data(), gi.data(), c.M, c.C, sdy.data(), sdyx.data());
      CHECK(close(g.sum_dy, sdy, 1e-5, "sum dy"));
      CHECK(close(g.sum_dyx, sdyx, 1e-5, "sum dy xhat"));
      const std::vector<double> gs = to_d(g.sum_dy), gsx = to_d(g.sum_dyx);
      std::vector<double> dx = to_d(dx0), dxe = to_d(dx0), dxr(MC);
      cpu::bn_bwd_apply(dyd.data(), xd.data(), gm.data(), gi.data(), gd.data(), gs.data(), gsx.data(),
                        static_cast<double>(c.M), dx.data(), c.M, c.C, true);
      cpu::bn_bwd_apply(dyd.data(), xd.data(), gm.data(), gi.data(), gd.data(), static_cast<const double*>(nullptr),
                        static_cast<const double*>(nullptr), static_cast<double>(c.M), dxe.data(), c.M, c.C, true);
      // dx is gamma invstd (dy - mean dy - xhat mean(dy xhat)): at M 2 and 3 it cancels to far
      // below its terms.
      double terms = 0;
      for (size_t i = 0; i < MC; ++i) terms = std::max(terms, std::fabs(gd[i % c.C] * gi[i % c.C] * dyd[i]));
      CHECK(close(g.dx, dx, 1e-5, "dx", terms));
      CHECK(close(g.dx_eval, dxe, 1e-5, "dx (eval)"));
      const std::vector<double> yrg = to_d(g.yrelu);
      std::vector<double> sdr(c.C), sdxr(c.C);
      cpu::bn_bwd_reduce(dyd.data(), xd.data(), gm.data(), gi.data(), c.M, c.C, sdr.data(), sdxr.data(), yrg.data());
      cpu::bn_bwd_apply(dyd.data(), xd.data(), gm.data(), gi.data(), gd.data(), sdr.data(), sdxr.data(),
                        static_cast<double>(c.M), dxr.data(), c.M, c.C, false, yrg.data());
      CHECK(close(g.dx_relu, dxr, 1e-5, "dx through the fused ReLU", terms));
    }
  }
}

TEST_CASE("emulated batch norm: the vectorised apply kernels give the scalar ones' bits (f32, bf16)") {
  for (int C : {64, 256}) {
    const int64_t M = 40;
    const size_t MC = static_cast<size_t>(M) * C;
    const std::vector<float> x = randn(MC, 21, 1.f), dy = randn(MC, 22, 1.f), dx0 = randn(MC, 23, 1.f);
    const std::vector<float> mean = randn(C, 24, 0.3f), gamma = randn(C, 26, 1.f), beta = randn(C, 27, 1.f);
    std::vector<float> invstd = randn(C, 25, 0.3f), s1 = randn(C, 28, 1.f), s2 = randn(C, 29, 1.f);
    for (float& v : invstd) v = 1.f + std::fabs(v);
    auto run = [&](bool vec) {
      BnVecMode mode(vec);
      std::vector<float> y(MC), yr(MC), dx = dx0, dxr(MC);
      gpu::bn_fwd_apply(x.data(), mean.data(), invstd.data(), gamma.data(), beta.data(), y.data(), M, C, kStream);
      gpu::bn_fwd_apply(x.data(), mean.data(), invstd.data(), gamma.data(), beta.data(), yr.data(), M, C, kStream,
                        true);
      gpu::bn_bwd_apply(dy.data(), x.data(), mean.data(), invstd.data(), gamma.data(), s1.data(), s2.data(), 40.0,
                        dx.data(), M, C, true, kStream);
      gpu::bn_bwd_apply(dy.data(), x.data(), mean.data(), invstd.data(), gamma.data(), s1.data(), s2.data(), 40.0,
                        dxr.data(), M, C, false, kStream, yr.data());
      std::vector<uint16_t> xb = to_bf16(x), dyb = to_bf16(dy), yb(MC), ybr(MC), dxb = to_bf16(dx0);
      gpu::bn_fwd_apply(bf(xb), mean.data(), invstd.data(), gamma.data(), beta.data(), bf(yb), M, C, kStream);
      gpu::bn_fwd_apply(bf(xb), mean.data(), invstd.data(), gamma.data(), beta.data(), bf(ybr), M, C, kStream, true);
      gpu::bn_bwd_apply(bf(dyb), bf(xb), mean.data(), invstd.data(), gamma.data(), s1.data(), s2.data(), 40.0, bf(dxb),
                        M, C, true, kStream, bf(ybr));
      std::vector<float> all = y;
      for (const auto* v : {&yr, &dx, &dxr}) all.insert(all.end(), v->begin(), v->end());
      append_bits(all, yb);
      append_bits(all, ybr);
      append_bits(all, dxb);
      return all;
    };
    INFO("C ", C);
    CHECK(same_bits(run(true), run(false)));
  }
}

TEST_CASE("emulated SyncBN sums, bias add and bias gradient against the twins") {
  const int C = 300;
  const std::vector<float> mean = randn(C, 31, 2.f);
  std::vector<float> var = randn(C, 32, 1.f);
  for (float& v : var) v = std::fabs(v);
  std::vector<double> gs(2 * C), cs(2 * C);
  gpu::bn_pack_sums(mean.data(), var.data(), 77.0, C, gs.data(), kStream);
  cpu::bn_pack_sums(mean.data(), var.data(), 77.0, C, cs.data());
  CHECK(gs == cs);
  std::vector<float> gm(C), gv(C), cm(C), cv(C);
  gpu::bn_unpack_sums(cs.data(), 154.0, C, gm.data(), gv.data(), kStream);
  cpu::bn_unpack_sums(cs.data(), 154.0, C, cm.data(), cv.data());
  CHECK(same_bits(gm, cm));
  CHECK(same_bits(gv, cv));

  for (int O : {5, 70, 1000}) {
    const int64_t N = 130;
    INFO("N ", N, " O ", O);
    const std::vector<float> y0 = randn(N * O, 33, 1.f), b = randn(O, 34, 1.f), dy = randn(N * O, 35, 1.f);
    std::vector<float> y = y0;
    gpu::bias_add(y.data(), b.data(), N, O, kStream);
    std::vector<float> ref = y0;
    for (int64_t i = 0; i < N; ++i)
      for (int o = 0; o < O; ++o) ref[i * O + o] += b[o];
    CHECK(same_bits(y, ref));
    std::vector<unsigned char> ws(gpu::col_sum_workspace_bytes(N, O));
    const std::vector<float> db0 = randn(O, 36, 1.f);
    for (bool acc : {false, true}) {
      const std::vector<float> db = in_every_order(
          [&] {
            std::vector<float> out = db0;
            gpu::col_sum(dy.data(), N, O, out.data(), acc, ws.data(), kStream);
            return out;
          },
          "col_sum");
      std::vector<double> dref(O, 0.0);
      for (int o = 0; o < O; ++o) {
        for (int64_t i = 0; i < N; ++i) dref[o] += dy[i * O + o];
        if (acc) dref[o] += db0[o];
      }
      CHECK(close(db, dref, 1e-5, acc ? "db (accumulated)" : "db"));
    }
  }
}

// ---------------------------------------------------------------- pooling, im2col

TEST_CASE("emulated max pool and its gradient give the f32 twin's bits (ties, padding, vector and scalar paths)") {
  struct Case {
    int N, H, W, C, k, s, p;
  };
  // C 64: the backward's vector path; C 12 and 3: scalar; the ResNet stem's 3 / 2 / 1 window.
  for (Case c : {Case{2, 9, 9, 64, 3, 2, 1}, Case{1, 7, 6, 12, 3, 2, 1}, Case{2, 5, 5, 3, 2, 2, 0}}) {
    INFO("N ", c.N, " H ", c.H, " W ", c.W, " C ", c.C, " k ", c.k, " s ", c.s, " p ", c.p);
    const int P = (c.H + 2 * c.p - c.k) / c.s + 1, Q = (c.W + 2 * c.p - c.k) / c.s + 1;
    const size_t in = static_cast<size_t>(c.N) * c.H * c.W * c.C, out = static_cast<size_t>(c.N) * P * Q * c.C;
    std::vector<float> x = with_ties(in, 41);
    for (float& v : x) v = std::nearbyint(v * 2.f) / 2.f;  // many ties inside windows
    const std::vector<float> dy = randn(out, 42, 1.f), dx0 = randn(in, 43, 1.f);
    std::vector<float> y(out), yc(out);
    gpu::maxpool_fwd(x.data(), y.data(), c.N, c.H, c.W, c.C, c.k, c.s, c.p, P, Q, kStream);
    cpu::maxpool_fwd(x.data(), yc.data(), c.N, c.H, c.W, c.C, c.k, c.s, c.p, P, Q);
    CHECK(same_bits(y, yc));
    for (bool acc : {false, true}) {
      const std::vector<float> dx = in_every_order(
          [&] {
            std::vector<float> d = dx0;
            gpu::maxpool_bwd(dy.data(), x.data(), d.data(), c.N, c.H, c.W, c.C, c.k, c.s, c.p, P, Q, acc, kStream);
            return d;
          },
          "maxpool_bwd");
      std::vector<float> dxc = dx0;
      cpu::maxpool_bwd(dy.data(), x.data(), dxc.data(), c.N, c.H, c.W, c.C, c.k, c.s, c.p, P, Q, acc);
      // Each input element adds its windows' gradients in window order on both (f32 sums).
      CHECK(same_bits(dx, dxc));
    }
  }
}

TEST_CASE("emulated average pool, L2 normalisation, log-softmax and soft cross-entropy against the f64 twin") {
  {  // global average pool
    const int N = 3, HW = 49, C = 70;
    const std::vector<float> x = randn(static_cast<size_t>(N) * HW * C, 51, 1.f), dy = randn(N * C, 52, 1.f);
    const std::vector<float> dx0 = randn(static_cast<size_t>(N) * HW * C, 53, 1.f);
    std::vector<float> y(N * C);
    gpu::avgpool_fwd(x.data(), y.data(), N, HW, C, kStream);
    std::vector<double> yd(N * C), xd = to_d(x), dyd = to_d(dy);
    cpu::avgpool_fwd(xd.data(), yd.data(), N, HW, C);
    CHECK(close(y, yd, 1e-5, "avgpool y"));
    for (bool acc : {false, true}) {
      std::vector<float> dx = dx0;
      gpu::avgpool_bwd(dy.data(), dx.data(), N, HW, C, acc, kStream);
      std::vector<double> dxd = to_d(dx0);
      cpu::avgpool_bwd(dyd.data(), dxd.data(), N, HW, C, acc);
      CHECK(close(dx, dxd, 1e-5, "avgpool dx"));
    }
  }
  // Rows of (N, K): row_threads picks 64, 128 and 256 threads at these widths; K 1 and 3000
  // (the prototypes) too.
  for (int K : {1, 40, 300, 3000}) {
    const int N = 5;
    INFO("K ", K);
    const size_t NK = static_cast<size_t>(N) * K;
    const std::vector<float> x = randn(NK, 61, 3.f), dy = randn(NK, 62, 1.f), dx0 = randn(NK, 63, 1.f);
    std::vector<float> t = randn(NK, 64, 1.f);
    for (float& v : t) v = std::fabs(v) / K;
    const std::vector<double> xd = to_d(x), dyd = to_d(dy), td = to_d(t);
    {  // L2 normalisation (eps 1e-12, as the heads)
      std::vector<float> y(NK), norm(N);
      gpu::l2norm_fwd(x.data(), y.data(), norm.data(), N, K, 1e-12, kStream);
      std::vector<double> yd(NK), nd(N);
      cpu::l2norm_fwd(xd.data(), yd.data(), nd.data(), N, K, 1e-12);
      CHECK(close(y, yd, 1e-5, "l2norm y"));
      CHECK(close(norm, nd, 1e-5, "l2norm norm"));
      for (bool acc : {false, true}) {
        const std::vector<float> dx = in_every_order(
            [&] {
              std::vector<float> d = dx0;
              gpu::l2norm_bwd(dy.data(), y.data(), norm.data(), d.data(), N, K, 1e-12, acc, kStream);
              return d;
            },
            "l2norm_bwd");
        const std::vector<double> ygd = to_d(y), ngd = to_d(norm);
        std::vector<double> dxd = to_d(dx0);
        cpu::l2norm_bwd(dyd.data(), ygd.data(), ngd.data(), dxd.data(), N, K, 1e-12, acc);
        CHECK(close(dx, dxd, 1e-5, "l2norm dx"));
      }
    }
    {  // log-softmax
      const std::vector<float> y = in_every_order(
          [&] {
            std::vector<float> o(NK);
            gpu::log_softmax_fwd(x.data(), o.data(), N, K, kStream);
            return o;
          },
          "log_softmax_fwd");
      std::vector<double> yd(NK);
      cpu::log_softmax_fwd(xd.data(), yd.data(), N, K);
      CHECK(close(y, yd, 1e-5, "log_softmax y"));
      for (bool acc : {false, true}) {
        std::vector<float> dx = dx0;
        gpu::log_softmax_bwd(dy.data(), y.data(), dx.data(), N, K, acc, kStream);
        const std::vector<double> ygd = to_d(y);
        std::vector<double> dxd = to_d(dx0);
        cpu::log_softmax_bwd(dyd.data(), ygd.data(), dxd.data(), N, K, acc);
        CHECK(close(dx, dxd, 1e-5, "log_softmax dx"));
      }
    }
    {  // soft-target cross-entropy (f32 targets and bf16 ones, as the MIRA loss takes both)
      std::vector<float> loss(N), lse(N);
      const std::vector<float> both = in_every_order(
          [&] {
            gpu::soft_ce_fwd(x.data(), t.data(), loss.data(), lse.data(), N, K, kStream);
            std::vector<float> o = loss;
            o.insert(o.end(), lse.begin(), lse.end());
            return o;
          },
          "soft_ce_fwd");
      std::vector<double> ld(N), lsed(N);
      cpu::soft_ce_fwd(xd.data(), td.data(), ld.data(), lsed.data(), N, K);
      CHECK(close(loss, ld, 1e-5, "soft ce loss"));
      CHECK(close(lse, lsed, 1e-5, "soft ce lse"));
      const std::vector<float> dloss = {0.7f};
      const std::vector<double> lseg = to_d(lse), dlossd = {0.7};
      for (bool acc : {false, true}) {
        std::vector<float> dz = dx0;
        gpu::soft_ce_bwd(x.data(), t.data(), lse.data(), dloss.data(), 0.2f, dz.data(), N, K, acc, kStream);
        std::vector<double> dzd = to_d(dx0);
        cpu::soft_ce_bwd(xd.data(), td.data(), lseg.data(), dlossd.data(), 0.2, dzd.data(), N, K, acc);
        CHECK(close(dz, dzd, 1e-5, "soft ce dz"));
      }
      // bf16 logits and targets: against the twin on the rounded values, to bf16's tolerance.
      std::vector<uint16_t> xb = to_bf16(x), tb = to_bf16(t);
      std::vector<float> lb(N), lseb(N);
      gpu::soft_ce_fwd(bf(xb), bf(tb), lb.data(), lseb.data(), N, K, kStream);
      const std::vector<double> xr = to_d(from_bf16(xb)), tr = to_d(from_bf16(tb));
      cpu::soft_ce_fwd(xr.data(), tr.data(), ld.data(), lsed.data(), N, K);
      CHECK(close(lb, ld, 1e-5, "soft ce loss (bf16 inputs)"));
    }
  }
}

TEST_CASE("emulated im2col and col2im against a direct loop over the windows") {
  struct Case {
    int N, H, W, C, R, S, stride, pad;
  };
  // C 64: im2col's vector path; C 3: scalar; 1 x 1 stride 2 (a downsampling shortcut).
  for (Case c : {Case{2, 6, 5, 64, 3, 3, 1, 1}, Case{1, 7, 7, 3, 3, 3, 2, 1}, Case{2, 6, 6, 8, 1, 1, 2, 0}}) {
    INFO("C ", c.C, " R ", c.R, " stride ", c.stride, " pad ", c.pad);
    const int P = (c.H + 2 * c.pad - c.R) / c.stride + 1, Q = (c.W + 2 * c.pad - c.S) / c.stride + 1;
    const size_t in = static_cast<size_t>(c.N) * c.H * c.W * c.C;
    const size_t rows = static_cast<size_t>(c.N) * P * Q, cols = static_cast<size_t>(c.R) * c.S * c.C;
    const std::vector<float> x = randn(in, 71, 1.f), dcols = randn(rows * cols, 72, 1.f), dx0 = randn(in, 73, 1.f);
    std::vector<float> got(rows * cols, std::nanf("")), ref(rows * cols, 0.f);
    gpu::im2col(x.data(), c.N, c.H, c.W, c.C, c.R, c.S, c.stride, c.pad, P, Q, got.data(), kStream);
    std::vector<double> dref = to_d(dx0), dref_set(in, 0.0);
    for (int n = 0; n < c.N; ++n)
      for (int p = 0; p < P; ++p)
        for (int q = 0; q < Q; ++q)
          for (int r = 0; r < c.R; ++r)
            for (int s = 0; s < c.S; ++s)
              for (int ch = 0; ch < c.C; ++ch) {
                const int h = p * c.stride - c.pad + r, w = q * c.stride - c.pad + s;
                const size_t row = (static_cast<size_t>(n) * P + p) * Q + q;
                const size_t col = (static_cast<size_t>(r) * c.S + s) * c.C + ch;
                if (h < 0 || h >= c.H || w < 0 || w >= c.W) continue;
                const size_t xi = ((static_cast<size_t>(n) * c.H + h) * c.W + w) * c.C + ch;
                ref[row * cols + col] = x[xi];
                dref[xi] += dcols[row * cols + col];
                dref_set[xi] += dcols[row * cols + col];
              }
    CHECK(same_bits(got, ref));
    for (bool acc : {false, true}) {
      std::vector<float> dx = dx0;
      gpu::col2im(dcols.data(), c.N, c.H, c.W, c.C, c.R, c.S, c.stride, c.pad, P, Q, dx.data(), acc, kStream);
      CHECK(close(dx, acc ? dref : dref_set, 1e-6, acc ? "col2im (accumulated)" : "col2im"));
    }
  }
}

// ---------------------------------------------------------------- optimisers

TEST_CASE("emulated SGD / LARS step and EMA update against the f32 twin") {
  // Segments: a weight of several optimiser chunks, a bias (no decay), a frozen weight, a
  // weight whose gradient is zero (LARS's ratio falls back to 1).
  std::vector<cpu::ParamSegment> segs = {{0, 70000, cpu::ParamSegment::kDecay},
                                         {70000, 7, 0},
                                         {70007, 300, cpu::ParamSegment::kDecay | cpu::ParamSegment::kFrozen},
                                         {70307, 50, cpu::ParamSegment::kDecay}};
  const int64_t n = 70357;
  const int nseg = static_cast<int>(segs.size());
  const int nchunks = gpu::optim_chunk_count(segs.data(), nseg);
  CHECK(nchunks == 3 + 1 + 1 + 1);
  std::vector<gpu::OptimChunk> chunks(nchunks);
  gpu::optim_make_chunks(segs.data(), nseg, chunks.data());
  for (bool lars : {false, true}) {
    INFO("lars ", lars);
    const std::vector<float> p0 = randn(n, 81, 1.f), mu0 = randn(n, 82, 0.1f);
    std::vector<float> grads = randn(n, 83, 0.01f);
    for (int64_t i = 70307; i < n; ++i) grads[i] = 0.f;
    std::vector<float> p = p0, mu = mu0, pc = p0, muc = mu0;
    std::vector<double> partial(2 * nchunks), norms(2 * nseg);
    for (int step = 0; step < 2; ++step) {
      gpu::sgd_step(p.data(), grads.data(), mu.data(), segs.data(), nseg, chunks.data(), nchunks, partial.data(),
                    norms.data(), 0.3, 0.9, 1e-4, lars, 0.001, kStream);
      cpu::sgd_step(pc.data(), grads.data(), muc.data(), segs.data(), nseg, 0.3, 0.9, 1e-4, lars, 0.001);
    }
    // test_models_gpu's tolerance: f32 updates on both, LARS norms in double on both.
    CHECK(testing::allclose(to_d(p), to_d(pc), {1e-6, 1e-5}, "params"));
    CHECK(testing::allclose(to_d(mu), to_d(muc), {1e-6, 1e-5}, "momentum"));
    CHECK(same_bits(std::vector<float>(p.begin() + 70007, p.begin() + 70307),
                    std::vector<float>(p0.begin() + 70007, p0.begin() + 70307)));  // frozen: untouched
  }
  const std::vector<float> online = randn(n, 84, 1.f), ema0 = randn(n, 85, 1.f);
  std::vector<float> ema = ema0, emac = ema0;
  gpu::ema_update(ema.data(), online.data(), n, 0.996, kStream);
  cpu::ema_update(emac.data(), online.data(), n, 0.996);
  CHECK(testing::allclose(to_d(ema), to_d(emac), {1e-6, 1e-5}, "ema"));
}

// ---------------------------------------------------------------- top-k

TEST_CASE("emulated top-k equals the CPU's bit for bit (ties, -0.0, merged chunks)") {
  struct Case {
    int64_t R, N, chunk;
    int k;
  };
  for (Case c : {Case{3, 500, 500, 20}, Case{2, 700, 256, 20}, Case{2, 300, 100, 100}, Case{1, 64, 64, 64}}) {
    INFO("R ", c.R, " N ", c.N, " chunk ", c.chunk, " k ", c.k);
    std::vector<float> x = with_ties(c.R * c.N, 91);
    for (float& v : x) v = std::nearbyint(v * 4.f) / 4.f;  // ties across the k-th place
    const std::vector<float> got = in_every_order(
        [&] {
          std::vector<float> val(c.R * c.k);
          std::vector<int64_t> idx(c.R * c.k);
          for (int64_t s = 0; s < c.N; s += c.chunk) {
            const int64_t w = std::min(c.chunk, c.N - s);
            gpu::topk_rows(x.data() + s, c.R, w, c.N, s, c.k, val.data(), idx.data(), s > 0, kStream);
          }
          append_bits(val, idx);
          return val;
        },
        "topk");
    std::vector<float> val(c.R * c.k);
    std::vector<int64_t> idx(c.R * c.k);
    cpu::topk_rows(x.data(), c.R, c.N, c.N, 0, c.k, val.data(), idx.data(), false);
    append_bits(val, idx);
    CHECK(same_bits(got, val));
  }
}

// ---------------------------------------------------------------- view augmentation

namespace {

// One view of every image through the kernels and through the CPU reference (augment_view) with
// the same ViewParams; forced: -1 drawn, 0 every op off, 1 every op on. test_augment_gpu's
// tolerances: 2e-4 in normalised units for f32 output, bf16's resolution for bf16.
void compare_view(const Images& im, const data::MultiCropRecipe& r, int view, int forced, bool bf16_out, int epoch,
                  bool fractional_box) {
  using namespace mira::data;  // NOLINT(google-build-using-namespace)
  const ViewSpec& v = r.views[view];
  const int n = static_cast<int>(im.h.size()), S = v.size;
  const size_t plane = static_cast<size_t>(n) * S * S * 3;
  std::vector<GpuViewJob> jobs(n);
  std::vector<float> ref(plane);
  AugScratch scratch;
  for (int i = 0; i < n; ++i) {
    // Drawn on an image twice the source's size: half-pixel boxes, as after a DCT-scaled decode.
    const int oh = fractional_box ? 2 * im.h[i] + 1 : im.h[i], ow = fractional_box ? 2 * im.w[i] + 1 : im.w[i];
    ViewParams p = sample_view_params(v, oh, ow, 17, epoch, i, view);
    if (forced >= 0) p.flip = p.jitter = p.gray = p.blur = p.solarize = forced == 1;
    augment_view(im.bytes.data() + im.offset[i], im.h[i], im.w[i], oh, ow, p, v, r, ref.data() + i * S * S * 3,
                 scratch);
    jobs[i] = make_gpu_job(p, v, im.offset[i], im.h[i], im.w[i], oh, ow);
  }
  const ViewConsts k = view_consts(v, r, bf16_out);
  const std::vector<float> out = in_every_order(
      [&] {
        std::vector<float> img(plane, std::nanf("")), tmp(plane, std::nanf("")), o(plane, std::nanf(""));
        std::vector<uint16_t> ob(plane, 0xffff);
        launch_augment(im.bytes.data(), jobs.data(), jobs.data(), n, k, img.data(), tmp.data(),
                       bf16_out ? static_cast<void*>(ob.data()) : o.data(), kStream);
        return bf16_out ? from_bf16(ob) : o;
      },
      "augment");
  const testing::Tol tol = bf16_out ? testing::Tol{2e-4, 1.0 / 128} : testing::Tol{2e-4, 0};
  CHECK(testing::allclose(to_d(out), to_d(ref), tol,
                          r.name + " view " + std::to_string(view) + " forced " + std::to_string(forced) +
                              (bf16_out ? " bf16" : " f32") + (fractional_box ? " fractional" : "")));
}

}  // namespace

TEST_CASE("emulated GPU augmentation matches the CPU reference (recipes, forced ops, bf16, fractional boxes)") {
  {
    const Images im = make_images(4, 3, 24, 40);
    for (const char* name : {"cifar", "fashion_mnist"}) {
      const data::MultiCropRecipe r = data::MultiCropRecipe::by_name(name);
      for (int forced : {-1, 0, 1}) compare_view(im, r, 0, forced, false, 0, false);
    }
  }
  // The ImageNet recipe's local view (96 px; 224 px global views only cost time here), both
  // interpolations, with and without antialiasing, bf16 output, fractional boxes.
  const Images im = make_images(3, 9, 60, 100);
  data::MultiCropRecipe r = data::MultiCropRecipe::imagenet_2x224_6x96();
  const int local = 2;
  CHECK(r.views[local].size == 96);
  compare_view(im, r, local, 1, false, 1, false);
  compare_view(im, r, local, -1, true, 2, true);
  for (data::ViewSpec& v : r.views) v.interp = data::Interp::Bilinear;
  compare_view(im, r, local, 1, false, 3, true);
  r.antialias = false;
  compare_view(im, r, local, 1, false, 4, false);
}

// ---------------------------------------------------------------- launch shapes of large inputs

TEST_CASE("emulated batch norm over hundreds of row blocks, and softmax rows past the 65535-block grid") {
  // M 48000, C 64: the scalar reduction's 512 row blocks (its cap) and the vectorised one's 187,
  // each combined by col_final_kernel's strided loop over the partials.
  const int64_t M = 48000;
  const int C = 64;
  const size_t MC = static_cast<size_t>(M) * C;
  std::vector<float> x = randn(MC, 101, 1.f);
  for (size_t i = 0; i < MC; ++i) x[i] += 5.f;
  const std::vector<float> dy = randn(MC, 102, 1.f);
  const std::vector<double> xd = to_d(x), dyd = to_d(dy);
  std::vector<double> mean(C), var(C);
  cpu::bn_stats(xd.data(), M, C, mean.data(), var.data());
  for (bool vec : {false, true}) {
    BnVecMode mode(vec);
    INFO("vectorised ", vec);
    std::vector<double> ws(gpu::bn_workspace_bytes(M, C) / sizeof(double));
    void* w = ws.data();
    std::vector<float> gm(C), gv(C), s1(C), s2(C);
    gpu::bn_stats(x.data(), M, C, gm.data(), gv.data(), w, kStream);
    CHECK(close(gm, mean, 1e-5, "mean"));
    CHECK(close(gv, var, 1e-5, "var"));
    std::vector<float> invstd(C);
    for (int c = 0; c < C; ++c) invstd[c] = static_cast<float>(1.0 / std::sqrt(var[c] + 1e-5));
    const std::vector<double> gmd = to_d(gm), gid = to_d(invstd);
    gpu::bn_bwd_reduce(dy.data(), x.data(), gm.data(), invstd.data(), M, C, s1.data(), s2.data(), w, kStream);
    std::vector<double> r1(C), r2(C);
    cpu::bn_bwd_reduce(dyd.data(), xd.data(), gmd.data(), gid.data(), M, C, r1.data(), r2.data());
    CHECK(close(s1, r1, 1e-5, "sum dy"));
    CHECK(close(s2, r2, 1e-5, "sum dy xhat"));
  }
  // 66000 rows: the row kernels' grid stops at 65535 blocks, so blocks 0..464 take a second row.
  const int N = 66000, K = 3;
  const std::vector<float> z = randn(static_cast<size_t>(N) * K, 103, 2.f);
  std::vector<float> y(z.size());
  gpu::log_softmax_fwd(z.data(), y.data(), N, K, kStream);
  std::vector<double> yd(z.size());
  const std::vector<double> zd = to_d(z);
  cpu::log_softmax_fwd(zd.data(), yd.data(), N, K);
  CHECK(close(y, yd, 1e-5, "log_softmax y, 66000 rows"));
}

TEST_CASE("emulated grid barriers: every block's writes before a barrier reach every block's reads after it") {
  // sync_probe_launch's checks: before barrier i every thread writes i + 1 into its word, after
  // it every thread reads a word of another block's thread. Every kind, with
  // blocks that each need their own OS thread to arrive; clusters of 1 to 8 (one arrival per
  // cluster); threads in index, reversed and shuffled order. The counter then holds exactly one
  // arrival per block or cluster and barrier.
  using GS = cuda::GridSync;
  struct Case {
    GS kind;
    int blocks, threads, cluster;
  };
  const Case cases[] = {{GS::Cooperative, 12, 64, 1},    {GS::Counter, 12, 64, 1},
                        {GS::Counter, 33, 32, 1},        {GS::ClusterCounter, 12, 64, 4},
                        {GS::ClusterCounter, 16, 32, 8}, {GS::ClusterCounter, 6, 96, 1}};
  constexpr int kChecks = 50, kIters = 3;
  for (const Case& c : cases) {
    CAPTURE(cuda::grid_sync_name(c.kind));
    CAPTURE(c.blocks);
    CAPTURE(c.cluster);
    for (int order : {0, 1, 5}) {
      CAPTURE(order);
      emu::set_schedule(order);
      emu_testing::Workspace ws(cuda::sync_probe_scratch_bytes(c.blocks, c.threads));
      cuda::sync_probe_launch(c.kind, c.blocks, c.threads, c.cluster, 0, kChecks, kIters, ws.base, kStream);
      CHECK(*cuda::sync_probe_errors(ws.base) == 0u);
      if (c.kind != GS::Cooperative) {
        const unsigned units = c.kind == GS::ClusterCounter ? c.blocks / c.cluster : c.blocks;
        CHECK(*reinterpret_cast<const unsigned*>(ws.base) == units * (kChecks + 1 + kIters));
      }
      const long long* cycles = cuda::sync_probe_cycles(ws.base, c.blocks, c.threads);
      for (int b = 0; b < c.blocks; ++b) CHECK(cycles[b] >= 0);  // every block wrote its time
      CHECK(ws.intact());
    }
  }
  emu::set_schedule(0);
}

TEST_CASE("emulated thread orders: a read no barrier orders after another thread's write changes with the order") {
  // What in_every_order relies on (cuda_emu.h, set_schedule): index and reversed order run any
  // two threads' stretches between barriers both ways round, for threads of two warps (either
  // first) and for two lanes of one warp (after a shuffle, where each resumes in its turn).
  // With a __syncthreads between the write and the read, every order reads the write.
  struct Pair {
    unsigned writer, reader;
    bool barrier;
  };
  const Pair pairs[] = {{0, 32, false}, {33, 2, false}, {0, 1, false}, {6, 5, false}, {33, 2, true}, {0, 1, true}};
  for (const Pair& p : pairs) {
    CAPTURE(p.writer);
    CAPTURE(p.reader);
    CAPTURE(p.barrier);
    std::vector<int> seen;
    for (int order : {0, 1, 4}) {
      emu::set_schedule(order);
      int got = -1;
      emu::LaunchConfig cfg;
      cfg.block = 64;
      cfg.smem = 16;
      emu::launch(cfg, [&] {
        int* word = reinterpret_cast<int*>(emu::dynamic_smem());
        if (threadIdx.x == 0) *word = 7;
        __syncthreads();
        const int partner = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
        if (threadIdx.x == p.writer) *word = partner >= 0 ? 1 : 2;
        if (p.barrier) __syncthreads();
        if (threadIdx.x == p.reader) got = *word;
        if (!p.barrier) __syncthreads();  // the same barriers for every thread either way
      });
      seen.push_back(got);
    }
    emu::set_schedule(0);
    if (p.barrier) {
      CHECK(seen == std::vector<int>{1, 1, 1});
    } else {
      CHECK(seen[0] != seen[1]);  // 7 (the reader first) one way, 1 the other
      CHECK(std::min(seen[0], seen[1]) == 1);
      CHECK(std::max(seen[0], seen[1]) == 7);
    }
  }
}

TEST_CASE("emulated cp.async: a copy lands when a wait completes its group, not before") {
  // What update_rows_staged relies on, and what makes a missing or short wait visible: the
  // source is read at the copy, the destination written at the wait_group that completes the
  // copy's group (an uncommitted copy at none); a thread that ends with a copy in flight, a
  // misaligned copy or one outside the dynamic shared memory is an error.
  std::vector<float> src = {1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f, 8.f};
  std::vector<float> seen(24 * 2, -1.f);
  emu::LaunchConfig cfg;
  cfg.block = 32;  // threads 0 and 1 copy; the rest of the warp idles
  cfg.smem = 64;
  emu::launch(cfg, [&] {
    if (threadIdx.x >= 2) return;
    float* sm = reinterpret_cast<float*>(emu::dynamic_smem()) + 4 * threadIdx.x;
    for (int i = 0; i < 4; ++i) sm[i] = 0.f;
    float* out = seen.data() + 24 * threadIdx.x;
    float* from = src.data() + 4 * threadIdx.x;
    emu::cp_async(sm, from, 8);  // group 0
    emu::cp_async_commit();
    emu::cp_async(sm + 2, from + 2, 8);  // group 1
    from[2] = -9.f;                      // after the copy read it
    emu::cp_async_commit();
    for (int i = 0; i < 4; ++i) out[i] = sm[i];  // nothing landed yet
    emu::cp_async_wait(1);
    for (int i = 0; i < 4; ++i) out[4 + i] = sm[i];  // group 0 only
    emu::cp_async_wait(0);
    for (int i = 0; i < 4; ++i) out[8 + i] = sm[i];
    emu::cp_async(sm, sm + 2, 8);  // uncommitted: no wait completes it
    emu::cp_async_wait(0);
    for (int i = 0; i < 4; ++i) out[12 + i] = sm[i];
    emu::cp_async_commit();
    emu::cp_async_wait(0);
    for (int i = 0; i < 4; ++i) out[16 + i] = sm[i];
  });
  for (int t = 0; t < 2; ++t) {
    CAPTURE(t);
    const float* o = seen.data() + 24 * t;
    const float a = 4.f * t + 1, b = a + 1, c = a + 2, d = a + 3;
    const std::vector<float> got(o, o + 20);
    CHECK(got == std::vector<float>{0, 0, 0, 0, a, b, 0, 0, a, b, c, d, a, b, c, d, c, d, c, d});
  }
  emu::LaunchConfig one;
  one.block = 32;
  one.smem = 64;
  alignas(16) float in[4] = {1.f, 2.f, 3.f, 4.f};
  CHECK_THROWS_WITH_AS(emu::launch(one,
                                   [&] {
                                     if (threadIdx.x == 0) emu::cp_async(emu::dynamic_smem(), in, 16);
                                   }),
                       doctest::Contains("never waited for"), emu::Error);
  CHECK_THROWS_WITH_AS(emu::launch(one,
                                   [&] {
                                     if (threadIdx.x == 0) emu::cp_async(emu::dynamic_smem() + 4, in, 8);
                                   }),
                       doctest::Contains("misaligned"), emu::Error);
  CHECK_THROWS_WITH_AS(emu::launch(one,
                                   [&] {
                                     if (threadIdx.x == 0) emu::cp_async(emu::dynamic_smem() + 64, in, 8);
                                   }),
                       doctest::Contains("outside"), emu::Error);
}
