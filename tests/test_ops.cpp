// labels: cpu
// Every op: an f64 central-difference gradient check, and forward values against direct
// definitions (naive loops) so the fast paths (im2col + GEMM) are checked too.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "engine/autograd.h"
#include "engine/comm.h"
#include "engine/ops.h"
#include "engine/profile.h"
#include "kernels/cpu/conv.h"
#include "kernels/cpu/nn.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/pointwise.h"
#include "testing.h"

using namespace mira;
using mira::testing::allclose;
using mira::testing::gradcheck;

namespace {

Tensor rnd(const Shape& s, uint64_t seed, DType t = DType::F64, double stddev = 1.0) {
  return Tensor::randn(s, seed, 0.0, stddev, t).set_requires_grad();
}

// Direct convolution, NHWC x OHWI, in double.
std::vector<double> conv_naive(const Tensor& x, const Tensor& w, int stride, int pad) {
  const int N = x.dim(0), H = x.dim(1), W = x.dim(2), C = x.dim(3), K = w.dim(0), R = w.dim(1), S = w.dim(2);
  const int P = (H + 2 * pad - R) / stride + 1, Q = (W + 2 * pad - S) / stride + 1;
  std::vector<double> xv = x.to_vector(), wv = w.to_vector(), y(size_t(N) * P * Q * K, 0.0);
  for (int n = 0; n < N; ++n)
    for (int p = 0; p < P; ++p)
      for (int q = 0; q < Q; ++q)
        for (int k = 0; k < K; ++k) {
          double s = 0;
          for (int r = 0; r < R; ++r)
            for (int t = 0; t < S; ++t)
              for (int c = 0; c < C; ++c) {
                const int h = p * stride - pad + r, ww = q * stride - pad + t;
                if (h < 0 || h >= H || ww < 0 || ww >= W) continue;
                s += xv[((size_t(n) * H + h) * W + ww) * C + c] * wv[((size_t(k) * R + r) * S + t) * C + c];
              }
          y[((size_t(n) * P + p) * Q + q) * K + k] = s;
        }
  return y;
}

struct ConvCase {
  int N, H, W, C, K, R, S, stride, pad;
};

}  // namespace

TEST_CASE("conv2d: forward against direct convolution, f64 gradients") {
  const ConvCase cases[] = {{2, 7, 6, 3, 4, 3, 3, 1, 1}, {2, 9, 9, 2, 3, 7, 7, 2, 3}, {2, 5, 5, 4, 3, 1, 1, 1, 0},
                            {2, 6, 6, 4, 5, 1, 1, 2, 0}, {1, 8, 7, 3, 2, 3, 3, 2, 1}, {2, 4, 4, 3, 2, 3, 3, 1, 2}};
  for (const ConvCase& c : cases) {
    CAPTURE(c.R);
    CAPTURE(c.stride);
    CAPTURE(c.pad);
    for (DType t : {DType::F32, DType::F64}) {
      Tensor x = rnd({c.N, c.H, c.W, c.C}, 1, t), w = rnd({c.K, c.R, c.S, c.C}, 2, t);
      Tensor y = ops::conv2d(x, w, c.stride, c.pad);
      // f32: sums of up to 147 products of N(0,1) values; error well under 1e-5 relative.
      CHECK(allclose(y.to_vector(), conv_naive(x, w, c.stride, c.pad), {1e-5, 1e-5}, "conv2d fwd"));
    }
    Tensor x = rnd({c.N, c.H, c.W, c.C}, 3), w = rnd({c.K, c.R, c.S, c.C}, 4);
    CHECK(gradcheck([&](const std::vector<Tensor>& in) { return ops::conv2d(in[0], in[1], c.stride, c.pad); }, {x, w},
                    "conv2d"));
  }
  {
    // Large images go through im2col in groups (here 2 + 1 images): same results.
    const ConvCase c{3, 16, 16, 40, 2, 3, 3, 1, 1};
    REQUIRE(cpu::conv2d_group(ConvShape::make(c.N, c.H, c.W, c.C, c.K, c.R, c.S, c.stride, c.pad)) == 2);
    Tensor x = rnd({c.N, c.H, c.W, c.C}, 5), w = rnd({c.K, c.R, c.S, c.C}, 6);
    CHECK(allclose(ops::conv2d(x, w, 1, 1).to_vector(), conv_naive(x, w, 1, 1), {1e-12, 1e-12}, "grouped conv2d"));
    // conv2d is linear in each input, so central differences are exact at any step: a large
    // step keeps the rounding noise of the summed objective below the tolerance.
    CHECK(gradcheck([&](const std::vector<Tensor>& in) { return ops::conv2d(in[0], in[1], 1, 1); }, {x, w},
                    "grouped conv2d", 1e-2, {1e-7, 1e-5}, 16));
  }
  Tensor x = rnd({1, 4, 4, 3}, 1), w = rnd({2, 3, 3, 2}, 2);
  CHECK_THROWS_AS(ops::conv2d(x, w, 1, 1), Error);  // channel mismatch
  CHECK_THROWS_AS(ops::conv2d(x, rnd({2, 7, 7, 3}, 2), 1, 0), Error);  // image smaller than filter
}

TEST_CASE("conv2d on the CPU thread pool: the same bits for 1, 2 and 3 threads; filter slots checked") {
  // 19 images of 16 x 16 x 40 in groups of 2: 10 tasks, so the filter gradient's 8 partial
  // sums take 2 tasks each in slots 0 and 1; a 1x1 convolution whose 5,120 rows make 3 chunks.
  const ConvCase cases[] = {{19, 16, 16, 40, 6, 3, 3, 1, 1}, {20, 16, 16, 64, 64, 1, 1, 1, 0}};
  for (const ConvCase& c : cases) {
    CAPTURE(c.R);
    auto run = [&](int threads) {
      cpu::set_parallel_workers(threads);
      Tensor x = rnd({c.N, c.H, c.W, c.C}, 7, DType::F32), w = rnd({c.K, c.R, c.S, c.C}, 8, DType::F32);
      // x and w each feed two convolutions directly: their second data and filter gradients
      // accumulate onto the first (the accumulate paths).
      Tensor y =
          ops::add(ops::add(ops::conv2d(x, w, c.stride, c.pad), ops::conv2d(ops::scale(x, 0.5), w, c.stride, c.pad)),
                   ops::conv2d(x, ops::scale(w, 0.25), c.stride, c.pad));
      backward(ops::sum(ops::scale(y, 1.0)));
      std::vector<std::vector<double>> out = {y.to_vector(), x.grad().to_vector(), w.grad().to_vector()};
      return out;
    };
    const auto one = run(1);
    CHECK(run(2) == one);
    CHECK(run(3) == one);
  }
  cpu::set_parallel_workers(3);
  const ConvCase c{19, 16, 16, 40, 2, 3, 3, 1, 1};
  Tensor x = rnd({c.N, c.H, c.W, c.C}, 9), w = rnd({c.K, c.R, c.S, c.C}, 10);
  CHECK(gradcheck([&](const std::vector<Tensor>& in) { return ops::conv2d(in[0], in[1], 1, 1); }, {x, w},
                  "conv2d, 10 tasks", 1e-2, {1e-7, 1e-5}, 16));
  cpu::set_parallel_workers(1);
  CHECK(gradcheck([&](const std::vector<Tensor>& in) { return ops::conv2d(in[0], in[1], 1, 1); }, {x, w},
                  "conv2d, 10 tasks, 1 thread", 1e-2, {1e-7, 1e-5}, 16));
  cpu::set_parallel_workers(0);
}

TEST_CASE("linear on the CPU thread pool: the same bits for 1 and 3 threads, blocks against direct sums") {
  // (N, I, O): 3 column blocks forward and 31 row blocks of the weight gradient; 2 column
  // blocks of the data gradient and 5 of the weight gradient.
  struct Shape3 {
    int64_t N, I, O;
  };
  for (const Shape3 sh : {Shape3{8, 100, 20000}, Shape3{8, 10000, 300}}) {
    CAPTURE(sh.I);
    auto run = [&](int threads, DType t) {
      cpu::set_parallel_workers(threads);
      Tensor x = rnd({sh.N, sh.I}, 11, t), w = rnd({sh.O, sh.I}, 12, t), b = rnd({sh.O}, 13, t);
      Tensor y = ops::linear(x, w, b);
      backward(ops::sum(ops::scale(y, 1.0)));
      std::vector<std::vector<double>> out = {y.to_vector(), x.grad().to_vector(), w.grad().to_vector(),
                                              b.grad().to_vector()};
      return out;
    };
    const auto one = run(1, DType::F32);
    CHECK(run(3, DType::F32) == one);
    // f64 through the blocks against direct sums: y = x W^T + b; dL/dx = 1 W; dL/dW = 1^T x.
    const auto r = run(3, DType::F64);
    Tensor x = rnd({sh.N, sh.I}, 11), w = rnd({sh.O, sh.I}, 12), b = rnd({sh.O}, 13);
    const std::vector<double> xv = x.to_vector(), wv = w.to_vector(), bv = b.to_vector();
    double err = 0;
    for (int64_t n = 0; n < sh.N; n += 3)
      for (int64_t o = 0; o < sh.O; o += 97) {
        double s = bv[o];
        for (int64_t i = 0; i < sh.I; ++i) s += xv[n * sh.I + i] * wv[o * sh.I + i];
        err = std::max(err, std::fabs(r[0][n * sh.O + o] - s));
      }
    for (int64_t i = 0; i < sh.I; i += 7) {
      double s = 0, t = 0;
      for (int64_t o = 0; o < sh.O; ++o) s += wv[o * sh.I + i];
      for (int64_t n = 0; n < sh.N; ++n) t += xv[n * sh.I + i];
      err = std::max({err, std::fabs(r[1][i] - s), std::fabs(r[2][(sh.O - 1) * sh.I + i] - t)});
    }
    CHECK(err < 1e-9);
    for (double g : r[3]) CHECK(g == static_cast<double>(sh.N));
  }
  cpu::set_parallel_workers(0);
}

TEST_CASE("linear: forward and gradients, with and without bias") {
  Tensor x = rnd({5, 7}, 1), w = rnd({3, 7}, 2), b = rnd({3}, 3);
  Tensor y = ops::linear(x, w, b);
  std::vector<double> xv = x.to_vector(), wv = w.to_vector(), bv = b.to_vector(), ref(15);
  for (int n = 0; n < 5; ++n)
    for (int o = 0; o < 3; ++o) {
      double s = bv[o];
      for (int i = 0; i < 7; ++i) s += xv[n * 7 + i] * wv[o * 7 + i];
      ref[n * 3 + o] = s;
    }
  CHECK(allclose(y.to_vector(), ref, {1e-12, 1e-12}, "linear fwd"));
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::linear(in[0], in[1], in[2]); }, {x, w, b}, "linear"));
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::linear(in[0], in[1]); }, {x, w}, "linear no bias"));
  CHECK_THROWS_AS(ops::linear(x, rnd({3, 6}, 2)), Error);
}

TEST_CASE("batch_norm: training statistics, PyTorch running update, eval mode, gradients") {
  for (bool image : {true, false}) {
    Shape s = image ? Shape{3, 4, 5, 6} : Shape{10, 6};
    Tensor x = rnd(s, 1, DType::F64, 2.0), g = rnd({6}, 2), b = rnd({6}, 3);
    ops::BatchNormState st{Tensor::zeros({6}, DType::F64), Tensor::full({6}, 1.0, DType::F64)};
    Tensor y = ops::batch_norm(x, g, b, st, true);
    // Reference: per-channel biased statistics.
    const int64_t M = x.numel() / 6;
    std::vector<double> xv = x.to_vector(), gv = g.to_vector(), bv = b.to_vector(), ref(xv.size());
    std::vector<double> rm(6), rv(6);
    for (int c = 0; c < 6; ++c) {
      double m = 0, v = 0;
      for (int64_t i = 0; i < M; ++i) m += xv[i * 6 + c];
      m /= M;
      for (int64_t i = 0; i < M; ++i) v += (xv[i * 6 + c] - m) * (xv[i * 6 + c] - m);
      v /= M;
      for (int64_t i = 0; i < M; ++i) ref[i * 6 + c] = (xv[i * 6 + c] - m) / std::sqrt(v + 1e-5) * gv[c] + bv[c];
      rm[c] = 0.1 * m;
      rv[c] = 0.9 + 0.1 * v * M / (M - 1);  // PyTorch: unbiased variance in the running estimate
    }
    CHECK(allclose(y.to_vector(), ref, {1e-12, 1e-10}, "bn train fwd"));
    CHECK(allclose(st.running_mean.to_vector(), rm, {1e-14, 1e-12}, "running_mean"));
    CHECK(allclose(st.running_var.to_vector(), rv, {1e-14, 1e-12}, "running_var"));
    CHECK(st.num_batches_tracked == 1);
    // Eval mode uses the running statistics.
    Tensor ye = ops::batch_norm(x, g, b, st, false);
    std::vector<double> ref_e(xv.size());
    for (int64_t i = 0; i < M; ++i)
      for (int c = 0; c < 6; ++c) ref_e[i * 6 + c] = (xv[i * 6 + c] - rm[c]) / std::sqrt(rv[c] + 1e-5) * gv[c] + bv[c];
    CHECK(allclose(ye.to_vector(), ref_e, {1e-12, 1e-10}, "bn eval fwd"));
    CHECK(st.num_batches_tracked == 1);
    for (bool training : {true, false}) {
      CHECK(gradcheck([&](const std::vector<Tensor>& in) { return ops::batch_norm(in[0], in[1], in[2], st, training); },
                      {x, g, b}, training ? "bn train" : "bn eval"));
    }
  }
}

TEST_CASE("batch_norm with groups: the same as one call per group, f64 gradient check") {
  for (bool image : {true, false}) {
    for (bool relu : {false, true}) {
      CAPTURE(image);
      CAPTURE(relu);
      const int G = 3;
      const Shape s = image ? Shape{6, 4, 5, 7} : Shape{12, 7};
      const int64_t n = s[0] / G;
      Tensor x = rnd(s, 11, DType::F64, 2.0), g = rnd({7}, 12), b = rnd({7}, 13), dy = rnd(s, 14);
      auto bn = [relu](const Tensor& xi, const Tensor& gi, const Tensor& bi, ops::BatchNormState& st) {
        return relu ? ops::batch_norm_relu(xi, gi, bi, st, true) : ops::batch_norm(xi, gi, bi, st, true);
      };
      // One call per group, in order, each on a fresh leaf copy of its samples.
      ops::BatchNormState s1{Tensor::zeros({7}, DType::F64), Tensor::full({7}, 1.0, DType::F64)};
      std::vector<double> y1, dx1;
      Tensor g1 = g.clone().set_requires_grad(), b1 = b.clone().set_requires_grad();
      for (int i = 0; i < G; ++i) {
        Tensor xi = x.slice_batch(i * n, (i + 1) * n).clone().set_requires_grad();
        Tensor yi = bn(xi, g1, b1, s1);
        backward(yi, dy.slice_batch(i * n, (i + 1) * n).clone());
        const std::vector<double> yv = yi.to_vector(), dv = xi.grad().to_vector();
        y1.insert(y1.end(), yv.begin(), yv.end());
        dx1.insert(dx1.end(), dv.begin(), dv.end());
      }
      // One grouped call.
      ops::BatchNormState s2{Tensor::zeros({7}, DType::F64), Tensor::full({7}, 1.0, DType::F64)};
      s2.groups = G;
      Tensor x2 = x.clone().set_requires_grad(), g2 = g.clone().set_requires_grad(), b2 = b.clone().set_requires_grad();
      Tensor y2 = bn(x2, g2, b2, s2);
      backward(y2, dy);
      CHECK(y2.to_vector() == y1);
      CHECK(x2.grad().to_vector() == dx1);
      CHECK(s2.running_mean.to_vector() == s1.running_mean.to_vector());
      CHECK(s2.running_var.to_vector() == s1.running_var.to_vector());
      CHECK(s2.num_batches_tracked == G);
      // Parameter gradients: the groups' sums, added in another order than the separate calls'.
      CHECK(allclose(g2.grad().to_vector(), g1.grad().to_vector(), {1e-13, 1e-12}, "dgamma"));
      CHECK(allclose(b2.grad().to_vector(), b1.grad().to_vector(), {1e-13, 1e-12}, "dbeta"));
      if (!relu) {
        CHECK(gradcheck([&](const std::vector<Tensor>& in) { return ops::batch_norm(in[0], in[1], in[2], s2, true); },
                        {x, g, b}, "grouped bn"));
      }
    }
  }
  // Samples that do not split into the groups: a clear error.
  ops::BatchNormState st{Tensor::zeros({7}, DType::F64), Tensor::full({7}, 1.0, DType::F64)};
  st.groups = 4;
  CHECK_THROWS_WITH(ops::batch_norm(rnd({6, 7}, 15), rnd({7}, 16), rnd({7}, 17), st, true),
                    doctest::Contains("do not split into 4 equal groups"));
}

namespace {
// Two ranks holding the same batch: every sum doubles. Counts the collectives.
class MirrorComm final : public Communicator {
 public:
  using Communicator::allreduce_max;
  using Communicator::allreduce_sum;
  int calls = 0;
  int rank() const override { return 0; }
  int world_size() const override { return 2; }
  void allreduce_sum(float* d, int64_t n) override { twice(d, n); }
  void allreduce_sum(double* d, int64_t n) override { twice(d, n); }
  void allreduce_max(float*, int64_t) override { ++calls; }
  void allreduce_max(double*, int64_t) override { ++calls; }
  void allreduce_sum(void* d, int64_t n, DType t, Device dev) override {
    REQUIRE(dev.is_cpu());
    if (t == DType::F64) {
      twice(static_cast<double*>(d), n);
    } else {
      REQUIRE(t == DType::F32);
      twice(static_cast<float*>(d), n);
    }
  }
  void allreduce_max(void*, int64_t, DType, Device) override { ++calls; }
  void barrier() override {}

 private:
  template <typename T>
  void twice(T* d, int64_t n) {
    ++calls;
    for (int64_t i = 0; i < n; ++i) d[i] *= 2;
  }
};
}  // namespace

TEST_CASE("SyncBN with groups: one collective forward and one backward for all groups") {
  const int G = 3;
  const Shape s{6, 4, 5, 7};
  const Tensor x = rnd(s, 51, DType::F64, 2.0), g = rnd({7}, 52), b = rnd({7}, 53), dy = rnd(s, 54);
  auto run = [&](Communicator* comm, std::vector<double>& y, std::vector<double>& dx) {
    ops::BatchNormState st{Tensor::zeros({7}, DType::F64), Tensor::full({7}, 1.0, DType::F64)};
    st.groups = G;
    st.comm = comm;
    st.equal_rows = true;
    Tensor xi = x.clone().set_requires_grad(), gi = g.clone().set_requires_grad(), bi = b.clone().set_requires_grad();
    Tensor out = ops::batch_norm_relu(xi, gi, bi, st, true);
    y = out.to_vector();
    backward(out, dy);
    dx = xi.grad().to_vector();
  };
  MirrorComm comm;
  std::vector<double> y_sync, dx_sync, y_local, dx_local;
  run(&comm, y_sync, dx_sync);
  CHECK(comm.calls == 2);  // the statistics of the 3 groups, then their 2 backward sums
  run(nullptr, y_local, dx_local);
  // A second rank with the same samples changes neither the statistics nor the input gradient.
  CHECK(allclose(y_sync, y_local, {1e-13, 1e-12}, "y"));
  CHECK(allclose(dx_sync, dx_local, {1e-13, 1e-12}, "dx"));
}

TEST_CASE("slice_batch: the samples, a view; gradient to those samples only; f64 gradient check") {
  Tensor x = rnd({5, 3, 2}, 21);
  Tensor y = ops::slice_batch(x, 1, 4);
  CHECK(y.shape() == Shape({3, 3, 2}));
  CHECK(y.to_vector() == x.slice_batch(1, 4).to_vector());
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::slice_batch(in[0], 1, 4); }, {x}, "slice_batch"));
  // Two slices of one tensor add their gradients into their own samples.
  Tensor x2 = rnd({4, 3}, 22);
  backward(ops::add(ops::scale(ops::slice_batch(x2, 0, 2), 2.0), ops::slice_batch(x2, 2, 4)),
           Tensor::full({2, 3}, 1.0, DType::F64));
  CHECK(x2.grad().to_vector() == std::vector<double>{2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1});
  CHECK_THROWS_WITH(ops::slice_batch(x2, 3, 5), doctest::Contains("slice_batch: [3, 5)"));
}

TEST_CASE("relu, add, scale: gradients") {
  // Keep inputs away from the kink at 0 so central differences are exact.
  Tensor x = rnd({4, 5}, 1);
  std::vector<double> v = x.to_vector();
  for (double& e : v) e += e >= 0 ? 0.1 : -0.1;
  x = Tensor::from_vector(v, {4, 5}, DType::F64).set_requires_grad();
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::relu(in[0]); }, {x}, "relu"));
  Tensor a = rnd({2, 3, 3, 2}, 2), b = rnd({2, 3, 3, 2}, 3);
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::add(in[0], in[1]); }, {a, b}, "add"));
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::scale(in[0], -2.5); }, {a}, "scale"));
  CHECK(ops::relu(Tensor::from_vector({-1, 0, 2}, {3})).to_vector() == std::vector<double>{0, 0, 2});
  // As PyTorch: a NaN passes through relu (forward and backward) instead of becoming 0.
  Tensor nan_in = Tensor::from_vector({-1, NAN, 2}, {3}).set_requires_grad();
  Tensor nan_out = ops::relu(nan_in);
  CHECK(std::isnan(nan_out.to_vector()[1]));
  backward(ops::sum(nan_out));
  CHECK(nan_in.grad().to_vector()[0] == 0);
  CHECK(std::isnan(nan_in.grad().to_vector()[1]) == false);
  CHECK(nan_in.grad().to_vector()[1] == 1);
  CHECK_THROWS_AS(ops::add(a, rnd({2, 3, 3, 1}, 3)), Error);
}

TEST_CASE("max_pool2d 3x3/2 pad 1: forward, first-max ties, gradients") {
  Tensor x = rnd({2, 7, 6, 3}, 1);
  Tensor y = ops::max_pool2d(x, 3, 2, 1);
  CHECK(y.shape() == Shape{2, 4, 3, 3});
  std::vector<double> xv = x.to_vector(), yv = y.to_vector();
  for (int n = 0; n < 2; ++n)
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 3; ++j)
        for (int c = 0; c < 3; ++c) {
          double m = -INFINITY;
          for (int r = 0; r < 3; ++r)
            for (int t = 0; t < 3; ++t) {
              int h = 2 * i - 1 + r, w = 2 * j - 1 + t;
              if (h >= 0 && h < 7 && w >= 0 && w < 6) m = std::max(m, xv[((n * 7 + h) * 6 + w) * 3 + c]);
            }
          CHECK(yv[((n * 4 + i) * 3 + j) * 3 + c] == m);
        }
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::max_pool2d(in[0], 3, 2, 1); }, {x}, "max_pool2d"));
  // Ties: the whole gradient goes to the first maximum of the window, as in PyTorch.
  Tensor ones = Tensor::full({1, 2, 2, 1}, 1.0, DType::F64).set_requires_grad();
  backward(ops::sum(ops::max_pool2d(ones, 3, 2, 1)));
  CHECK(ones.grad().to_vector() == std::vector<double>{1, 0, 0, 0});
}

TEST_CASE("global_avg_pool, l2_normalize, wn_linear: gradients") {
  Tensor x = rnd({2, 3, 4, 5}, 1);
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::global_avg_pool(in[0]); }, {x}, "global_avg_pool"));
  Tensor f = rnd({4, 6}, 2);
  Tensor y = ops::l2_normalize(f);
  std::vector<double> yv = y.to_vector();
  for (int n = 0; n < 4; ++n) {
    double s = 0;
    for (int d = 0; d < 6; ++d) s += yv[n * 6 + d] * yv[n * 6 + d];
    CHECK(std::fabs(s - 1) < 1e-14);
  }
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::l2_normalize(in[0]); }, {f}, "l2_normalize"));
  // A zero row stays zero (norm clamped at eps) and its gradient is finite.
  Tensor z = Tensor::zeros({1, 3}, DType::F64).set_requires_grad();
  Tensor zy = ops::l2_normalize(z);
  CHECK(zy.to_vector() == std::vector<double>{0, 0, 0});
  backward(ops::sum(zy));
  for (double g : z.grad().to_vector()) CHECK(std::isfinite(g));
  Tensor v = rnd({7, 6}, 3);
  // With unit-norm inputs and gain 1 the logits are cosine similarities in [-1, 1].
  Tensor cos = ops::wn_linear(y.detach(), v);
  for (double c : cos.to_vector()) CHECK(std::fabs(c) <= 1 + 1e-12);
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::wn_linear(in[0], in[1]); }, {f, v}, "wn_linear"));
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::wn_linear(in[0], in[1], 2.0); }, {f, v},
                  "wn_linear gain 2"));
}

TEST_CASE("log_softmax and soft-target cross-entropy") {
  Tensor z = rnd({5, 7}, 1, DType::F64, 3.0);
  Tensor ls = ops::log_softmax(z);
  std::vector<double> lv = ls.to_vector();
  for (int n = 0; n < 5; ++n) {
    double s = 0;
    for (int k = 0; k < 7; ++k) s += std::exp(lv[n * 7 + k]);
    CHECK(std::fabs(s - 1) < 1e-14);
  }
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::log_softmax(in[0]); }, {z}, "log_softmax"));
  // Soft targets on the simplex (softmax of random values).
  Tensor t = ops::log_softmax(Tensor::randn({5, 7}, 9, 0, 1, DType::F64));
  std::vector<double> tv = t.to_vector();
  for (double& e : tv) e = std::exp(e);
  Tensor targets = Tensor::from_vector(tv, {5, 7}, DType::F64);
  Tensor loss = ops::soft_cross_entropy(z, targets);
  double ref = 0;
  for (int i = 0; i < 35; ++i) ref -= tv[i] * lv[i];
  CHECK(std::fabs(loss.item() - ref / 5) < 1e-12);
  CHECK(gradcheck([&](const std::vector<Tensor>& in) { return ops::soft_cross_entropy(in[0], targets); }, {z},
                  "soft_cross_entropy"));
  // Same loss as the composition mean(-sum(t * log_softmax(z / tau))) used by the MIRA loss.
  Tensor z2 = ops::scale(z, 1 / 0.1);
  CHECK(gradcheck([&](const std::vector<Tensor>& in) { return ops::soft_cross_entropy(ops::scale(in[0], 10.0), targets); },
                  {z}, "soft_cross_entropy / tau"));
  // Extreme logits stay finite.
  Tensor big = Tensor::from_vector({1000, -1000, 0, 0, 1000, -1000}, {2, 3});
  Tensor tt = Tensor::from_vector({0.5, 0.5, 0, 0, 0, 1}, {2, 3});
  CHECK(std::isfinite(ops::soft_cross_entropy(big, tt).item()));
}

TEST_CASE("sum, mean, reshape: gradients") {
  Tensor x = rnd({3, 4}, 1);
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::sum(in[0]); }, {x}, "sum"));
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::mean(in[0]); }, {x}, "mean"));
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::relu(ops::reshape(in[0], {2, 6})); }, {x}, "reshape"));
  CHECK(std::fabs(ops::mean(x).item() - ops::sum(x).item() / 12) < 1e-14);
}

TEST_CASE("a small network end to end: conv-bn-relu-pool-linear-ce gradients") {
  Tensor x = rnd({3, 8, 8, 2}, 1), w1 = rnd({4, 3, 3, 2}, 2, DType::F64, 0.5), g = rnd({4}, 3), b = rnd({4}, 4);
  Tensor w2 = rnd({5, 4}, 5), v = rnd({6, 5}, 6);
  ops::BatchNormState st{Tensor::zeros({4}, DType::F64), Tensor::full({4}, 1.0, DType::F64)};
  std::vector<double> tv(18);
  for (int i = 0; i < 18; ++i) tv[i] = (i % 6 == i / 6) ? 1.0 : 0.0;
  Tensor targets = Tensor::from_vector(tv, {3, 6}, DType::F64);
  auto net = [&](const std::vector<Tensor>& in) {
    Tensor h = ops::max_pool2d(ops::relu(ops::batch_norm(ops::conv2d(in[0], in[1], 1, 1), in[2], in[3], st, true)));
    Tensor f = ops::l2_normalize(ops::linear(ops::global_avg_pool(h), in[4]));
    return ops::soft_cross_entropy(ops::scale(ops::wn_linear(f, in[5]), 10.0), targets);
  };
  CHECK(gradcheck(net, {x, w1, g, b, w2, v}, "small net", 1e-6, {1e-7, 1e-4}));
}

TEST_CASE("cast: values rounded to the target dtype, gradient cast back and accumulated") {
  Tensor x = rnd({4, 3}, 7);
  Tensor y = ops::cast(x, DType::F32);
  CHECK(y.dtype() == DType::F32);
  const std::vector<double> xv = x.to_vector(), yv = y.to_vector();
  for (size_t i = 0; i < xv.size(); ++i) CHECK(yv[i] == double(float(xv[i])));
  CHECK(ops::cast(x, DType::F64).meta() == x.meta());  // same dtype: x itself, no node
  // x feeds the loss twice, once through an f32 round trip: d/dx = 2 + 3 (the f32 gradient of
  // a scale by 3 is exact).
  Tensor loss = ops::add(ops::sum(ops::scale(x, 2.0)), ops::sum(ops::cast(ops::scale(y, 3.0), DType::F64)));
  backward(loss);
  REQUIRE(x.grad().dtype() == DType::F64);
  for (double g : x.grad().to_vector()) CHECK(g == 5.0);
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::relu(ops::cast(in[0], DType::F64)); }, {x},
                  "cast f64 -> f64"));
}

TEST_CASE("batch_norm_relu: relu(batch_norm) bit for bit, same gradients, f64 gradient check") {
  for (bool training : {true, false}) {
    for (DType t : {DType::F64, DType::F32}) {
      Tensor x = rnd({3, 4, 5, 6}, 11, t, 2.0), g = rnd({6}, 12, t), b = rnd({6}, 13, t);
      ops::BatchNormState s1{Tensor::zeros({6}, t), Tensor::full({6}, 1.0, t)};
      ops::BatchNormState s2{Tensor::zeros({6}, t), Tensor::full({6}, 1.0, t)};
      Tensor dy = Tensor::randn({3, 4, 5, 6}, 14, 0, 1, t);
      Tensor y1 = ops::relu(ops::batch_norm(x, g, b, s1, training));
      backward(y1, dy);
      const std::vector<double> gx = x.grad().to_vector(), gg = g.grad().to_vector(), gb = b.grad().to_vector();
      for (Tensor* p : {&x, &g, &b}) p->set_grad(Tensor());
      Tensor y2 = ops::batch_norm_relu(x, g, b, s2, training);
      backward(y2, dy);
      CHECK(y2.to_vector() == y1.to_vector());
      CHECK(s2.running_mean.to_vector() == s1.running_mean.to_vector());
      CHECK(s2.running_var.to_vector() == s1.running_var.to_vector());
      CHECK(x.grad().to_vector() == gx);
      CHECK(g.grad().to_vector() == gg);
      CHECK(b.grad().to_vector() == gb);
      int zeros = 0;
      for (double v : y2.to_vector()) zeros += v == 0.0;
      CHECK(zeros > 0);  // the ReLU did cut something
      for (Tensor* p : {&x, &g, &b}) p->set_grad(Tensor());
    }
    Tensor x = rnd({2, 3, 3, 4}, 21, DType::F64, 2.0), g = rnd({4}, 22), b = rnd({4}, 23);
    ops::BatchNormState st{Tensor::zeros({4}, DType::F64), Tensor::full({4}, 1.0, DType::F64)};
    CHECK(gradcheck(
        [&](const std::vector<Tensor>& in) { return ops::batch_norm_relu(in[0], in[1], in[2], st, training); },
        {x, g, b}, training ? "bn+relu train" : "bn+relu eval"));
  }
  // NaN propagates as through relu(batch_norm): a NaN input makes its channel NaN.
  Tensor xn = Tensor::randn({4, 3}, 5, 0, 1, DType::F64);
  std::vector<double> v = xn.to_vector();
  v[4] = std::nan("");
  xn = Tensor::from_vector(v, {4, 3}, DType::F64);
  ops::BatchNormState st{Tensor::zeros({3}, DType::F64), Tensor::full({3}, 1.0, DType::F64)};
  const std::vector<double> yn =
      ops::batch_norm_relu(xn, Tensor::full({3}, 1.0, DType::F64), Tensor::zeros({3}, DType::F64), st, true).to_vector();
  CHECK(std::isnan(yn[1]));  // channel 1 of row 0
}

TEST_CASE("add_relu: relu(add) bit for bit, same gradients, f64 gradient check") {
  for (DType t : {DType::F64, DType::F32}) {
    Tensor a = rnd({4, 5, 6}, 31, t), b = rnd({4, 5, 6}, 32, t);
    const Tensor dy = Tensor::randn({4, 5, 6}, 33, 0, 1, t);
    Tensor y1 = ops::relu(ops::add(a, b));
    backward(y1, dy);
    const std::vector<double> ga = a.grad().to_vector(), gb = b.grad().to_vector();
    a.set_grad(Tensor());
    b.set_grad(Tensor());
    Tensor y2 = ops::add_relu(a, b);
    backward(y2, dy);
    CHECK(y2.to_vector() == y1.to_vector());
    CHECK(a.grad().to_vector() == ga);
    CHECK(b.grad().to_vector() == gb);
  }
  Tensor a = rnd({3, 4}, 41), b = rnd({3, 4}, 42);
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::add_relu(in[0], in[1]); }, {a, b}, "add_relu"));
  // the same tensor on both sides accumulates twice
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::add_relu(in[0], in[0]); }, {a}, "add_relu(x, x)"));
}

TEST_CASE("BN backward kernels with the ReLU mask equal masking first (the CUDA path's CPU twin)") {
  const int64_t M = 50;
  const int C = 7;
  Tensor x = Tensor::randn({M, C}, 71), dy = Tensor::randn({M, C}, 72), y = Tensor::randn({M, C}, 73);
  Tensor mean = Tensor::randn({C}, 74), invstd = Tensor::uniform({C}, 75, 0.5, 2.0), gamma = Tensor::randn({C}, 76);
  std::vector<float> yv(y.data<float>(), y.data<float>() + M * C);
  yv[3] = std::nanf("");  // a NaN output lets the gradient through, as relu_bwd does
  std::memcpy(y.data<float>(), yv.data(), yv.size() * sizeof(float));
  std::vector<float> masked(M * C);
  cpu::relu_bwd<float>(dy.data<float>(), y.data<float>(), masked.data(), M * C, false);
  std::vector<float> s1(C), sx1(C), s2(C), sx2(C);
  cpu::bn_bwd_reduce<float>(masked.data(), x.data<float>(), mean.data<float>(), invstd.data<float>(), M, C, s1.data(),
                            sx1.data());
  cpu::bn_bwd_reduce<float>(dy.data<float>(), x.data<float>(), mean.data<float>(), invstd.data<float>(), M, C,
                            s2.data(), sx2.data(), y.data<float>());
  CHECK(s1 == s2);
  CHECK(sx1 == sx2);
  std::vector<float> d1(M * C), d2(M * C);
  cpu::bn_bwd_apply<float>(masked.data(), x.data<float>(), mean.data<float>(), invstd.data<float>(),
                           gamma.data<float>(), s1.data(), sx1.data(), double(M), d1.data(), M, C, false);
  cpu::bn_bwd_apply<float>(dy.data<float>(), x.data<float>(), mean.data<float>(), invstd.data<float>(),
                           gamma.data<float>(), s1.data(), sx1.data(), double(M), d2.data(), M, C, false,
                           y.data<float>());
  CHECK(d1 == d2);
}

TEST_CASE("the op profiler counts forward ops, backward nodes and named scopes (MIRA_PROFILE)") {
  prof::set_enabled(true);
  prof::reset();
  {
    Tensor x = Tensor::randn({2, 6, 6, 3}, 1), w = Tensor::randn({4, 3, 3, 3}, 2);
    w.set_requires_grad();
    prof::Scope phase("step/test phase", Device::cpu());
    Tensor y = ops::relu(ops::conv2d(x, w, 1, 1));
    backward(ops::sum(y));
  }
  const std::string path = "profile_test_report.txt";
  std::FILE* f = std::fopen(path.c_str(), "w");
  REQUIRE(f);
  prof::report(f, 1);
  std::fclose(f);
  prof::set_enabled(false);
  std::ifstream in(path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::remove(path.c_str());
  for (const char* name : {"step/test phase", "conv2d fwd 3x3/1 3>4 6px N2 f32", "relu", "bwd relu", "bwd conv2d",
                           "conv2d bwd-filter 3x3/1 3>4 6px N2 f32"}) {
    CAPTURE(name);
    CHECK(text.find(name) != std::string::npos);
  }
  // x needs no gradient: no backward-data row.
  CHECK(text.find("conv2d bwd-data") == std::string::npos);
  // Off again: nothing more is recorded.
  { prof::Scope s("after", Device::cpu()); }
  std::FILE* g = std::tmpfile();
  prof::report(g, 1);
  CHECK(std::ftell(g) == 0);
  std::fclose(g);
}
