// labels: gpu
// The CUDA backend against the CPU one: every op in engine/ops.h forward and backward in f32
// on the same random inputs, bf16 forwards of the training ops against f32 references on the
// same bf16-rounded inputs, and the device plumbing (caching allocator, copies, casts, fills,
// determinism). Without a device the test main reports SKIPPED (tests/main_gpu.cpp).
//
// Tolerances are `atol = k * max|ref|, rtol = k`: the error of a sum scales with the size of
// its terms, not with the (possibly cancelled) result. k per comparison:
//  - 1e-5 for f32 kernels of ours and cuBLAS (f32 accumulation in a different order than the
//    CPU's double or OpenBLAS f32; cuBLAS runs without TF32);
//  - 1e-4 for cuDNN f32 convolutions: with FMA math (no TF32) cuDNN may still choose Winograd
//    or FFT algorithms whose transforms round differently from a direct sum;
//  - 1e-2 for bf16 outputs: one bf16 rounding of the result is up to 2^-8 relative.
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/cuda_backend.h"
#include "engine/cuda_ops.h"
#include "engine/ops.h"
#include "kernels/cpu/nn.h"
#include "testing.h"

using namespace mira;
using mira::testing::allclose;

namespace {

const Device kGpu = Device::cuda(0);

double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector()) m = std::max(m, std::fabs(v));
  return m;
}

bool close(const Tensor& got, const Tensor& ref, double k, const std::string& what) {
  return allclose(got, ref, {k * std::max(max_abs(ref), 1e-30), k}, what);
}

bool bitwise_equal(const Tensor& a, const Tensor& b) { return a.to_vector() == b.to_vector(); }

struct In {
  Shape shape;
  uint64_t seed;
  double scale = 1.0;
  bool grad = true;
  bool uniform = false;  // U(0, scale) instead of N(0, scale^2), e.g. soft targets
};

Tensor make_input(const In& in) {
  return in.uniform ? Tensor::uniform(in.shape, in.seed, 0.0, in.scale) : Tensor::randn(in.shape, in.seed, 0.0, in.scale);
}

using OpFn = std::function<Tensor(const std::vector<Tensor>&)>;

// One device's run: fresh leaves, forward, backward seeded with `seed`. The autograd tape is
// one per thread, so each device's forward and backward complete before the other's starts.
struct Run {
  std::vector<Tensor> in;
  Tensor out;
};

Run run_on(Device dev, const std::vector<In>& ins, const OpFn& f, const Tensor& seed_cpu) {
  Run r;
  for (const In& i : ins) {
    Tensor t = make_input(i).to(dev);
    if (i.grad) t.set_requires_grad();
    r.in.push_back(t);
  }
  r.out = f(r.in);
  if (r.out.requires_grad()) backward(r.out, seed_cpu.to(dev));
  return r;
}

// CPU f32 vs CUDA f32: the output, then the gradient of every input that requires one.
void compare_cpu_cuda(const std::string& name, const std::vector<In>& ins, const OpFn& f, double k_fwd,
                      double k_bwd) {
  CAPTURE(name);
  // The seed's shape is the output's: find it with a no-grad CPU forward.
  Shape out_shape;
  {
    NoGradGuard ng;
    std::vector<Tensor> probe;
    for (const In& i : ins) probe.push_back(make_input(i));
    out_shape = f(probe).shape();
  }
  const Tensor seed = Tensor::randn(out_shape, 777);
  const Run c = run_on(Device::cpu(), ins, f, seed);
  const Run g = run_on(kGpu, ins, f, seed);
  REQUIRE(g.out.is_cuda());
  CHECK(close(g.out, c.out, k_fwd, name + " forward"));
  for (size_t i = 0; i < ins.size(); ++i) {
    if (!ins[i].grad) continue;
    REQUIRE(c.in[i].grad().defined());
    REQUIRE(g.in[i].grad().defined());
    CHECK(g.in[i].grad().is_cuda());
    CHECK(close(g.in[i].grad(), c.in[i].grad(), k_bwd, name + " gradient of input " + std::to_string(i)));
  }
}

// CUDA bf16 forward vs CPU f32 forward on the same bf16-rounded inputs.
void compare_bf16_forward(const std::string& name, const std::vector<In>& ins, const OpFn& f, double k) {
  CAPTURE(name);
  NoGradGuard ng;
  std::vector<Tensor> c, g;
  for (const In& i : ins) {
    Tensor b = make_input(i).to(kGpu, DType::BF16);
    g.push_back(b);
    c.push_back(b.to(Device::cpu(), DType::F32));
  }
  const Tensor yg = f(g), yc = f(c);
  CHECK(yg.dtype() == DType::BF16);
  CHECK(close(yg, yc, k, name + " bf16 forward"));
}

struct ConvCase {
  int N, H, W, C, K, R, S, stride, pad;
};

const ConvCase kConvCases[] = {
    {2, 16, 16, 3, 8, 7, 7, 2, 3},   // ResNet stem: 7x7 / 2, pad 3
    {2, 9, 9, 8, 16, 3, 3, 1, 1},    // 3x3 / 1
    {2, 10, 10, 8, 8, 3, 3, 2, 1},   // 3x3 / 2 (downsampling block)
    {2, 8, 8, 16, 32, 1, 1, 1, 0},   // 1x1 / 1 (bottleneck)
    {2, 8, 8, 16, 32, 1, 1, 2, 0},   // 1x1 / 2 (projection shortcut)
    {3, 7, 5, 5, 6, 3, 3, 1, 2},     // odd sizes, pad larger than needed
    {2, 9, 9, 8, 16, 3, 3, 2, 0},    // 3x3 / 2 unpadded
    {2, 7, 5, 16, 8, 3, 3, 1, 2},    // pad larger than needed, C and K multiples of 8
};

}  // namespace

// The convolution tests run with cuDNN and with the im2col + cuBLAS path for small maps (taken
// by the cases with C and K multiples of 8 that are not 1x1 / 1: the 3x3 ones and 1x1 / 2);
// ConvGemm restores the previous setting.
struct ConvGemm {
  bool prev;
  explicit ConvGemm(bool on) : prev(cuda::conv_gemm()) { cuda::set_conv_gemm(on); }
  ~ConvGemm() { cuda::set_conv_gemm(prev); }
};

TEST_CASE("conv2d: CUDA f32 forward and gradients match the CPU") {
  for (bool gemm : {false, true}) {
    ConvGemm g(gemm);
    const uint64_t gemm_calls = cuda::conv_gemm_calls();
    for (const ConvCase& c : kConvCases) {
      CAPTURE(gemm);
      CAPTURE(c.R);
      CAPTURE(c.stride);
      CAPTURE(c.pad);
      compare_cpu_cuda("conv2d", {{{c.N, c.H, c.W, c.C}, 1}, {{c.K, c.R, c.S, c.C}, 2, 0.3}},
                       [&](const std::vector<Tensor>& in) { return ops::conv2d(in[0], in[1], c.stride, c.pad); },
                       1e-4, 1e-4);
    }
    // Five cases qualify (C and K multiples of 8, not 1x1 / 1), each forward, backward-data and
    // backward-filter.
    CHECK(cuda::conv_gemm_calls() - gemm_calls == (gemm ? 15u : 0u));
  }
}

TEST_CASE("conv2d: bf16 forward") {
  for (bool gemm : {false, true}) {
    ConvGemm g(gemm);
    for (const ConvCase& c : kConvCases) {
      CAPTURE(gemm);
      CAPTURE(c.R);
      CAPTURE(c.stride);
      compare_bf16_forward("conv2d", {{{c.N, c.H, c.W, c.C}, 3}, {{c.K, c.R, c.S, c.C}, 4, 0.3}},
                           [&](const std::vector<Tensor>& in) { return ops::conv2d(in[0], in[1], c.stride, c.pad); },
                           1e-2);
    }
  }
}

TEST_CASE("conv2d 3x3 on small maps: bf16 gradients match f32 ones on the same rounded values (both paths)") {
  auto rounded = [](const Tensor& t) { return t.to(kGpu, DType::BF16).to(Device::cpu(), DType::F32); };
  for (bool gemm : {false, true}) {
    for (int stride : {1, 2}) {
      ConvGemm g(gemm);
      CAPTURE(gemm);
      CAPTURE(stride);
      // A local crop's third stage: 6 x 6 maps, 64 -> 128 channels; x used twice (accumulation).
      const Tensor xr = rounded(Tensor::randn({4, 6, 6, 64}, 41));
      const Tensor wr = rounded(Tensor::randn({128, 3, 3, 64}, 42, 0.0, 0.05));
      const int P = (6 + 2 - 3) / stride + 1;
      const Tensor seed = rounded(Tensor::randn({4, P, P, 128}, 43));
      Tensor xc = xr.clone(), wc = wr.clone();
      Tensor xg = xr.to(kGpu, DType::BF16), wg = wr.to(kGpu, DType::BF16);
      for (Tensor* t : {&xc, &wc, &xg, &wg}) t->set_requires_grad();
      // One device's forward and backward at a time: the autograd tape is one per thread.
      const Tensor yc = ops::add(ops::conv2d(xc, wc, stride, 1), ops::conv2d(xc, wc, stride, 1));
      backward(yc, seed);
      const uint64_t gemm_calls = cuda::conv_gemm_calls();
      const Tensor yg = ops::add(ops::conv2d(xg, wg, stride, 1), ops::conv2d(xg, wg, stride, 1));
      backward(yg, seed.to(kGpu, DType::BF16));
      // 2 forwards, and per backward one input and one filter gradient: 6 calls on the GEMM path.
      CHECK(cuda::conv_gemm_calls() - gemm_calls == (gemm ? 6u : 0u));
      CHECK(close(yg, yc, 1e-2, "3x3 bf16 forward"));
      REQUIRE(xg.grad().defined());
      REQUIRE(wg.grad().defined());
      CHECK(close(xg.grad(), xc.grad(), 1e-2, "3x3 bf16 input gradient"));
      CHECK(close(wg.grad(), wc.grad(), 1e-2, "3x3 bf16 filter gradient"));
    }
  }
}

TEST_CASE("conv2d 1x1 / 1 (a cuBLAS product): bf16 gradients match f32 ones on the same rounded values") {
  // A bottleneck's shape, with a gradient flowing in twice (the second accumulates, beta = 1).
  // bf16 exists on CUDA only: round there, compare on the CPU in f32.
  auto rounded = [](const Tensor& t) { return t.to(kGpu, DType::BF16).to(Device::cpu(), DType::F32); };
  const Tensor xr = rounded(Tensor::randn({4, 12, 12, 64}, 21));
  const Tensor wr = rounded(Tensor::randn({256, 1, 1, 64}, 22, 0.0, 0.1));
  const Tensor seed = rounded(Tensor::randn({4, 12, 12, 256}, 23));
  Tensor xc = xr.clone(), wc = wr.clone();
  Tensor xg = xr.to(kGpu, DType::BF16), wg = wr.to(kGpu, DType::BF16);
  for (Tensor* t : {&xc, &wc, &xg, &wg}) t->set_requires_grad();
  // One device's forward and backward at a time: the autograd tape is one per thread.
  const Tensor yc = ops::add(ops::conv2d(xc, wc, 1, 0), ops::conv2d(xc, wc, 1, 0));
  backward(yc, seed);
  const Tensor yg = ops::add(ops::conv2d(xg, wg, 1, 0), ops::conv2d(xg, wg, 1, 0));
  backward(yg, seed.to(kGpu, DType::BF16));
  CHECK(close(yg, yc, 1e-2, "1x1 bf16 forward"));
  REQUIRE(xg.grad().defined());
  REQUIRE(wg.grad().defined());
  CHECK(xg.grad().dtype() == DType::BF16);
  CHECK(close(xg.grad(), xc.grad(), 1e-2, "1x1 bf16 input gradient"));
  CHECK(close(wg.grad(), wc.grad(), 1e-2, "1x1 bf16 filter gradient"));
}

TEST_CASE("conv2d: the second call of a shape reuses its plan and gives identical results") {
  const Tensor x = Tensor::randn({2, 9, 9, 8}, 5, 0.0, 1.0, DType::F32, kGpu);
  const Tensor w = Tensor::randn({16, 3, 3, 8}, 6, 0.0, 0.3, DType::F32, kGpu);
  NoGradGuard ng;
  const Tensor a = ops::conv2d(x, w, 1, 1), b = ops::conv2d(x, w, 1, 1);
  CHECK(bitwise_equal(a, b));
}

TEST_CASE("linear: CUDA f32 with and without bias, bf16 forward") {
  compare_cpu_cuda("linear+bias", {{{6, 20}, 1}, {{12, 20}, 2, 0.3}, {{12}, 3}},
                   [](const std::vector<Tensor>& in) { return ops::linear(in[0], in[1], in[2]); }, 1e-5, 1e-5);
  compare_cpu_cuda("linear", {{{6, 20}, 4}, {{12, 20}, 5, 0.3}},
                   [](const std::vector<Tensor>& in) { return ops::linear(in[0], in[1]); }, 1e-5, 1e-5);
  // Only the weight requires grad (the frozen-input case of the linear probe).
  compare_cpu_cuda("linear, weight grad only", {{{33, 17}, 6, 1.0, false}, {{9, 17}, 7}, {{9}, 8}},
                   [](const std::vector<Tensor>& in) { return ops::linear(in[0], in[1], in[2]); }, 1e-5, 1e-5);
  compare_bf16_forward("linear+bias", {{{6, 64}, 9}, {{24, 64}, 10, 0.2}, {{24}, 11}},
                       [](const std::vector<Tensor>& in) { return ops::linear(in[0], in[1], in[2]); }, 1e-2);
  compare_bf16_forward("linear", {{{40, 64}, 12}, {{24, 64}, 13, 0.2}},
                       [](const std::vector<Tensor>& in) { return ops::linear(in[0], in[1]); }, 1e-2);
}

namespace {

// Batch norm on one device: returns y; the state's running statistics are updated in place.
struct BnRun {
  Tensor x, gamma, beta, y;
  ops::BatchNormState st;
};

BnRun bn_run(Device dev, const Shape& xs, bool training, DType xt, const Tensor& seed_cpu) {
  const int64_t C = xs[xs.ndim() - 1];
  BnRun r;
  // Mean 0.5 and scale 2: a non-trivial shift for the statistics.
  Tensor x = Tensor::randn(xs, 21, 0.5, 2.0).to(dev);
  if (xt == DType::BF16) x = x.to(DType::BF16);
  r.x = x.set_requires_grad();
  r.gamma = Tensor::randn({C}, 22, 1.0, 0.2).to(dev).set_requires_grad();
  r.beta = Tensor::randn({C}, 23, 0.0, 0.2).to(dev).set_requires_grad();
  r.st.running_mean = Tensor::randn({C}, 24, 0.0, 0.5).to(dev);
  r.st.running_var = Tensor::uniform({C}, 25, 0.5, 2.0).to(dev);
  r.y = ops::batch_norm(r.x, r.gamma, r.beta, r.st, training);
  if (seed_cpu.defined()) backward(r.y, seed_cpu.to(dev, xt));
  return r;
}

}  // namespace

// The batch-norm tests run with the scalar and with the vectorised kernels (16-byte accesses:
// f32 when C % 4 == 0, bf16 when C % 8 == 0, and C / V dividing 256 or a multiple of 32, in
// tiles of 32 channel groups: here f32 C = 16, 64, 128, 2048 (16 tiles) and bf16 C = 32, 64,
// 1024 (4 tiles), 2048 (8 tiles) take them); BnVec restores the previous setting.
struct BnVec {
  bool prev;
  explicit BnVec(bool on) : prev(cuda::bn_vectorized()) { cuda::set_bn_vectorized(on); }
  ~BnVec() { cuda::set_bn_vectorized(prev); }
};

TEST_CASE("batch_norm: CUDA f32 training and eval, 4-D and 2-D, running statistics and gradients") {
  // {8, 16, 16, 256}: 2 channel tiles x 16 row blocks of the vectorised reductions; 384: 3 tiles.
  const Shape shapes[] = {{2, 5, 5, 16},   {16, 24},         {3, 64, 64, 40}, {256, 96},        {4, 9, 9, 64},
                          {3, 33, 33, 128}, {40, 2048},       {8, 16, 16, 256}, {2, 8, 8, 384}};
  for (bool vec : {false, true}) {
    for (const Shape& xs : shapes) {
      for (bool training : {true, false}) {
        BnVec v(vec);
        CAPTURE(vec);
        CAPTURE(xs.str());
        CAPTURE(training);
        const Tensor seed = Tensor::randn(xs, 26);
        const BnRun c = bn_run(Device::cpu(), xs, training, DType::F32, seed);
        const BnRun g = bn_run(kGpu, xs, training, DType::F32, seed);
        CHECK(close(g.y, c.y, 1e-5, "bn y"));
        CHECK(close(g.st.running_mean, c.st.running_mean, 1e-5, "bn running_mean"));
        CHECK(close(g.st.running_var, c.st.running_var, 1e-5, "bn running_var"));
        CHECK(close(g.x.grad(), c.x.grad(), 1e-5, "bn dx"));
        // dgamma and dbeta are sums over all rows of the batch.
        CHECK(close(g.gamma.grad(), c.gamma.grad(), 1e-5, "bn dgamma"));
        CHECK(close(g.beta.grad(), c.beta.grad(), 1e-5, "bn dbeta"));
        CHECK(g.st.num_batches_tracked == c.st.num_batches_tracked);
      }
    }
  }
}

TEST_CASE("batch_norm: bf16 activations with f32 parameters and statistics") {
  for (bool vec : {false, true}) {
    for (const Shape& xs :
         {Shape{4, 6, 6, 32}, Shape{64, 48}, Shape{5, 13, 13, 64}, Shape{24, 1024}, Shape{2, 7, 7, 2048},
          Shape{4, 12, 12, 512}}) {  // the last: 2 channel tiles x 5 row blocks
      BnVec v(vec);
      CAPTURE(vec);
      CAPTURE(xs.str());
      NoGradGuard ng;
      BnRun g = bn_run(kGpu, xs, true, DType::BF16, Tensor());
      // Reference: the CPU in f32 on the same bf16-rounded x.
      BnRun c;
      c.x = g.x.to(Device::cpu(), DType::F32);
      c.gamma = g.gamma.to(Device::cpu());
      c.beta = g.beta.to(Device::cpu());
      c.st.running_mean = Tensor::randn({xs[xs.ndim() - 1]}, 24, 0.0, 0.5);
      c.st.running_var = Tensor::uniform({xs[xs.ndim() - 1]}, 25, 0.5, 2.0);
      c.y = ops::batch_norm(c.x, c.gamma, c.beta, c.st, true);
      CHECK(g.y.dtype() == DType::BF16);
      CHECK(g.st.running_mean.dtype() == DType::F32);
      CHECK(close(g.y, c.y, 1e-2, "bn bf16 y"));
      // The statistics themselves are f32 sums of the same values.
      CHECK(close(g.st.running_mean, c.st.running_mean, 1e-5, "bn bf16 running_mean"));
      CHECK(close(g.st.running_var, c.st.running_var, 1e-5, "bn bf16 running_var"));
    }
  }
}

TEST_CASE("batch_norm: bf16 gradients match the f32 ones on the same rounded values") {
  auto rounded = [](const Tensor& t) { return t.to(kGpu, DType::BF16).to(Device::cpu(), DType::F32); };
  for (bool vec : {false, true})
    for (int64_t C : {64, 2048}) {
      BnVec v(vec);
      CAPTURE(vec);
      CAPTURE(C);
      const Shape xs = C == 64 ? Shape{3, 11, 11, C} : Shape{3, 5, 5, C};
      const Tensor xr = rounded(Tensor::randn(xs, 61, 0.5, 2.0)), dyr = rounded(Tensor::randn(xs, 62));
      const Tensor gr = Tensor::randn({C}, 63, 1.0, 0.2), br = Tensor::randn({C}, 64, 0.0, 0.2);
      Tensor xc = xr.clone(), gc = gr.clone(), bc = br.clone();
      Tensor xg = xr.to(kGpu, DType::BF16), gg = gr.to(kGpu), bg = br.to(kGpu);
      for (Tensor* t : {&xc, &gc, &bc, &xg, &gg, &bg}) t->set_requires_grad();
      ops::BatchNormState sc{Tensor::zeros({C}), Tensor::full({C}, 1.0)};
      ops::BatchNormState sg{Tensor::zeros({C}, DType::F32, kGpu), Tensor::full({C}, 1.0, DType::F32, kGpu)};
      backward(ops::batch_norm_relu(xc, gc, bc, sc, true), dyr);
      backward(ops::batch_norm_relu(xg, gg, bg, sg, true), dyr.to(kGpu, DType::BF16));
      CHECK(close(xg.grad(), xc.grad(), 1e-2, "bn bf16 dx"));
      // dgamma, dbeta: f32 sums of the same bf16 values, except where the ReLU mask differs (a
      // bf16 output rounded to 0).
      CHECK(close(gg.grad(), gc.grad(), 1e-2, "bn bf16 dgamma"));
      CHECK(close(bg.grad(), bc.grad(), 1e-2, "bn bf16 dbeta"));
    }
}

TEST_CASE("batch_norm: the vectorised kernels agree with the scalar ones end to end") {
  // The sums (statistics, dgamma, dbeta) are added in another order, so y and dx, which use
  // them, agree to rounding; the apply kernels alone are compared bit for bit below.
  for (DType t : {DType::F32, DType::BF16}) {
    for (int64_t C : {64, 2048}) {
      CAPTURE(dtype_name(t));
      CAPTURE(C);
      const Shape xs{3, 9, 9, C};
      const Tensor x0 = Tensor::randn(xs, 71, 0.5, 2.0).to(kGpu, t), dy = Tensor::randn(xs, 72).to(kGpu, t);
      const Tensor g0 = Tensor::randn({C}, 73, 1.0, 0.2).to(kGpu), b0 = Tensor::randn({C}, 74, 0.0, 0.2).to(kGpu);
      std::vector<double> y[2], dx[2], dg[2], rv[2];
      for (int vec = 0; vec < 2; ++vec) {
        BnVec v(vec == 1);
        Tensor x = x0.clone().set_requires_grad(), g = g0.clone().set_requires_grad(),
               b = b0.clone().set_requires_grad();
        ops::BatchNormState st{Tensor::zeros({C}, DType::F32, kGpu), Tensor::full({C}, 1.0, DType::F32, kGpu)};
        Tensor out = ops::batch_norm_relu(x, g, b, st, true);
        backward(out, dy);
        y[vec] = out.to_vector();
        dx[vec] = x.grad().to_vector();
        dg[vec] = g.grad().to_vector();
        rv[vec] = st.running_var.to_vector();
      }
      const double k = t == DType::F32 ? 1e-5 : 1e-2;  // bf16: one rounding of the output
      CHECK(allclose(rv[1], rv[0], {1e-6, 1e-6}, "running_var, vectorised vs scalar"));
      CHECK(allclose(dg[1], dg[0], {1e-4, 1e-5}, "dgamma, vectorised vs scalar"));
      CHECK(allclose(y[1], y[0], {k, k}, "y, vectorised vs scalar"));
      CHECK(allclose(dx[1], dx[0], {k, k}, "dx, vectorised vs scalar"));
    }
  }
}

#ifdef MIRA_HAS_CUDA  // calls the CUDA backend directly (not linked in CPU-only builds)
TEST_CASE("batch_norm apply kernels: vectorised == scalar bit for bit (forward, backward, ReLU, accumulate)") {
  for (DType t : {DType::F32, DType::BF16}) {
    for (int64_t C : {64, 1024}) {  // one channel tile; 8 (f32) or 4 (bf16) tiles
      CAPTURE(dtype_name(t));
      CAPTURE(C);
      const Shape xs{3, 9, 9, C};
      const Tensor x = Tensor::randn(xs, 91, 0.5, 2.0).to(kGpu, t), dy = Tensor::randn(xs, 92).to(kGpu, t);
      const Tensor relu_y = Tensor::randn(xs, 93).to(kGpu, t), dx0 = Tensor::randn(xs, 94).to(kGpu, t);
      const Tensor mean = Tensor::randn({C}, 95, 0.5, 0.1).to(kGpu), invstd = Tensor::uniform({C}, 96, 0.4, 0.6).to(kGpu);
      const Tensor gamma = Tensor::randn({C}, 97, 1.0, 0.2).to(kGpu), beta = Tensor::randn({C}, 98, 0.0, 0.2).to(kGpu);
      const Tensor sdy = Tensor::randn({C}, 99, 0.0, 30.0).to(kGpu), sdyx = Tensor::randn({C}, 100, 0.0, 30.0).to(kGpu);
      std::vector<double> out[2][4];
      for (int vec = 0; vec < 2; ++vec) {
        BnVec v(vec == 1);
        Tensor y = Tensor::empty(xs, t, kGpu), yr = Tensor::empty(xs, t, kGpu);
        cuda::bn_fwd_apply(x, mean, invstd, gamma, beta, y, false);
        cuda::bn_fwd_apply(x, mean, invstd, gamma, beta, yr, true);
        Tensor dx = Tensor::empty(xs, t, kGpu), dxa = dx0.clone();
        cuda::bn_bwd_apply(dy, x, mean, invstd, gamma, sdy, sdyx, 243.0, dx, false, relu_y);
        cuda::bn_bwd_apply(dy, x, mean, invstd, gamma, sdy, sdyx, 243.0, dxa, true, Tensor());
        out[vec][0] = y.to_vector();
        out[vec][1] = yr.to_vector();
        out[vec][2] = dx.to_vector();
        out[vec][3] = dxa.to_vector();
      }
      for (int i = 0; i < 4; ++i) {
        CAPTURE(i);
        CHECK(out[1][i] == out[0][i]);
      }
    }
  }
}
#endif

TEST_CASE("batch_norm: an input used twice accumulates its gradient (both kernels, against the CPU)") {
  for (bool vec : {false, true}) {
    BnVec v(vec);
    CAPTURE(vec);
    const Shape xs{2, 6, 6, 64};
    const Tensor seed = Tensor::randn(xs, 81);
    Tensor grads[2];
    for (int d = 0; d < 2; ++d) {
      const Device dev = d == 0 ? Device::cpu() : kGpu;
      Tensor x = Tensor::randn(xs, 82, 0.5, 2.0).to(dev).set_requires_grad();
      const Tensor g1 = Tensor::randn({64}, 83, 1.0, 0.2).to(dev), b1 = Tensor::randn({64}, 84, 0.0, 0.2).to(dev);
      const Tensor g2 = Tensor::randn({64}, 85, 1.0, 0.2).to(dev), b2 = Tensor::randn({64}, 86, 0.0, 0.2).to(dev);
      ops::BatchNormState s1{Tensor::zeros({64}, DType::F32, dev), Tensor::full({64}, 1.0, DType::F32, dev)};
      ops::BatchNormState s2{Tensor::zeros({64}, DType::F32, dev), Tensor::full({64}, 1.0, DType::F32, dev)};
      backward(ops::add(ops::batch_norm(x, g1, b1, s1, true), ops::batch_norm_relu(x, g2, b2, s2, true)), seed.to(dev));
      grads[d] = x.grad();
    }
    CHECK(close(grads[1], grads[0], 1e-5, "dx accumulated over two uses"));
  }
}

TEST_CASE("batch_norm: statistics of a large batch are bitwise reproducible") {
  for (bool vec : {false, true}) {
    BnVec v(vec);
    CAPTURE(vec);
    NoGradGuard ng;
    const Tensor x = Tensor::randn({8, 56, 56, 64}, 31, 3.0, 1.5, DType::F32, kGpu);
    const Tensor gamma = Tensor::full({64}, 1.0, DType::F32, kGpu), beta = Tensor::zeros({64}, DType::F32, kGpu);
    ops::BatchNormState s1{Tensor::zeros({64}, DType::F32, kGpu), Tensor::full({64}, 1.0, DType::F32, kGpu)};
    ops::BatchNormState s2{Tensor::zeros({64}, DType::F32, kGpu), Tensor::full({64}, 1.0, DType::F32, kGpu)};
    const Tensor y1 = ops::batch_norm(x, gamma, beta, s1, true), y2 = ops::batch_norm(x, gamma, beta, s2, true);
    CHECK(bitwise_equal(y1, y2));
    CHECK(bitwise_equal(s1.running_var, s2.running_var));
    // And right: mean 3 and variance 2.25 to sampling accuracy. 8 x 56 x 56 = 25,088 samples per
    // channel: the sample mean's standard error is 1.5 / sqrt(25088) = 0.0095, the variance's
    // sqrt(2) x 2.25 / sqrt(25088) = 0.020; bounds at 5 standard errors over 64 channels.
    for (double m : s1.running_mean.to_vector()) CHECK(std::fabs(m / 0.1 - 3.0) < 0.048);
    for (double v : s1.running_var.to_vector()) CHECK(std::fabs((v - 0.9) / 0.1 - 2.25) < 0.1);
  }
}

#ifdef MIRA_HAS_CUDA  // calls the CUDA backend directly (not linked in CPU-only builds)
TEST_CASE("SyncBN sums: CUDA pack / unpack equal the CPU twins") {
  const int C = 37;
  const Tensor mean = Tensor::randn({C}, 41, 2.0, 3.0), var = Tensor::uniform({C}, 42, 0.01, 5.0);
  std::vector<double> sums_cpu(2 * C);
  cpu::bn_pack_sums<float>(mean.data<float>(), var.data<float>(), 1234.0, C, sums_cpu.data());
  Tensor d_sums = Tensor::empty({2 * C * 8}, DType::U8, kGpu);
  cuda::bn_pack_sums(mean.to(kGpu), var.to(kGpu), 1234.0, d_sums.raw());
  std::vector<double> sums_gpu(2 * C);
  cuda::copy(sums_gpu.data(), Device::cpu(), d_sums.raw(), kGpu, sums_gpu.size() * sizeof(double), false);
  CHECK(allclose(sums_gpu, sums_cpu, {0, 1e-15}, "packed sums"));
  // Unpack as if three ranks had sent these sums (3702 rows).
  for (double& v : sums_cpu) v *= 3;
  cuda::copy(d_sums.raw(), kGpu, sums_cpu.data(), Device::cpu(), sums_cpu.size() * sizeof(double), false);
  Tensor m_gpu = Tensor::empty({C}, DType::F32, kGpu), v_gpu = Tensor::empty({C}, DType::F32, kGpu);
  cuda::bn_unpack_sums(d_sums.raw(), 3702.0, m_gpu, v_gpu);
  std::vector<float> m_cpu(C), v_cpu(C);
  cpu::bn_unpack_sums<float>(sums_cpu.data(), 3702.0, C, m_cpu.data(), v_cpu.data());
  CHECK(m_gpu.to_vector() == std::vector<double>(m_cpu.begin(), m_cpu.end()));
  CHECK(v_gpu.to_vector() == std::vector<double>(v_cpu.begin(), v_cpu.end()));
  CHECK(allclose(m_gpu, mean, {1e-6, 1e-6}, "mean back"));
}
#endif

TEST_CASE("batch_norm_relu on CUDA equals relu(batch_norm) bit for bit, f32 and bf16") {
  for (bool vec : {false, true}) {
    for (int C : {40, 64}) {
      for (DType t : {DType::F32, DType::BF16}) {
        BnVec v(vec);
        CAPTURE(vec);
        CAPTURE(C);
        CAPTURE(dtype_name(t));
        Tensor x = Tensor::randn({4, 7, 7, C}, 51, 0.3, 1.5).to(kGpu, t).set_requires_grad();
        Tensor g = Tensor::randn({C}, 52, 1.0, 0.3).to(kGpu).set_requires_grad();
        Tensor b = Tensor::randn({C}, 53, 0.0, 0.3).to(kGpu).set_requires_grad();
        const Tensor dy = Tensor::randn({4, 7, 7, C}, 54).to(kGpu, t);
        ops::BatchNormState s1{Tensor::zeros({C}, DType::F32, kGpu), Tensor::full({C}, 1.0, DType::F32, kGpu)};
        ops::BatchNormState s2{Tensor::zeros({C}, DType::F32, kGpu), Tensor::full({C}, 1.0, DType::F32, kGpu)};
        Tensor y1 = ops::relu(ops::batch_norm(x, g, b, s1, true));
        backward(y1, dy);
        const std::vector<double> gx = x.grad().to_vector(), gg = g.grad().to_vector();
        x.set_grad(Tensor());
        g.set_grad(Tensor());
        b.set_grad(Tensor());
        Tensor y2 = ops::batch_norm_relu(x, g, b, s2, true);
        backward(y2, dy);
        CHECK(y2.to_vector() == y1.to_vector());
        CHECK(x.grad().to_vector() == gx);
        CHECK(g.grad().to_vector() == gg);
        CHECK(s2.running_var.to_vector() == s1.running_var.to_vector());
      }
    }
  }
}

TEST_CASE("add_relu on CUDA equals relu(add) bit for bit, f32 and bf16") {
  for (DType t : {DType::F32, DType::BF16}) {
    CAPTURE(dtype_name(t));
    Tensor a = Tensor::randn({3, 9, 9, 16}, 61).to(kGpu, t).set_requires_grad();
    Tensor b = Tensor::randn({3, 9, 9, 16}, 62).to(kGpu, t).set_requires_grad();
    const Tensor dy = Tensor::randn({3, 9, 9, 16}, 63).to(kGpu, t);
    Tensor y1 = ops::relu(ops::add(a, b));
    backward(y1, dy);
    const std::vector<double> ga = a.grad().to_vector();
    a.set_grad(Tensor());
    b.set_grad(Tensor());
    Tensor y2 = ops::add_relu(a, b);
    backward(y2, dy);
    CHECK(y2.to_vector() == y1.to_vector());
    CHECK(a.grad().to_vector() == ga);
    CHECK(b.grad().to_vector() == ga);
  }
}

TEST_CASE("relu, add, scale: CUDA f32 and bf16") {
  compare_cpu_cuda("relu", {{{3, 50}, 1}}, [](const std::vector<Tensor>& in) { return ops::relu(in[0]); }, 0, 0);
  compare_cpu_cuda("add", {{{7, 13}, 2}, {{7, 13}, 3}},
                   [](const std::vector<Tensor>& in) { return ops::add(in[0], in[1]); }, 0, 0);
  compare_cpu_cuda("scale", {{{1001}, 4}}, [](const std::vector<Tensor>& in) { return ops::scale(in[0], -0.37); },
                   0, 0);
  // An input used twice: the second gradient contribution accumulates.
  compare_cpu_cuda("relu(x) + x", {{{4, 33}, 5}},
                   [](const std::vector<Tensor>& in) { return ops::add(ops::relu(in[0]), in[0]); }, 0, 0);
  compare_bf16_forward("relu", {{{5, 77}, 6}}, [](const std::vector<Tensor>& in) { return ops::relu(in[0]); }, 0);
  compare_bf16_forward("add", {{{5, 77}, 7}, {{5, 77}, 8}},
                       [](const std::vector<Tensor>& in) { return ops::add(in[0], in[1]); }, 1e-2);
}

TEST_CASE("elementwise kernels on views that are not 16-byte aligned") {
  // Rows of 3 f32 (12 bytes): a batch slice starting at row 1 takes the scalar path.
  const Tensor xc = Tensor::randn({9, 3}, 9);
  const Tensor xg = xc.to(kGpu);
  NoGradGuard ng;
  const Tensor yc = ops::relu(xc.slice_batch(1, 8)), yg = ops::relu(xg.slice_batch(1, 8));
  CHECK(close(yg, yc, 0, "relu on an unaligned view"));
  const Tensor ac = ops::add(xc.slice_batch(1, 4), xc.slice_batch(5, 8));
  const Tensor ag = ops::add(xg.slice_batch(1, 4), xg.slice_batch(5, 8));
  CHECK(close(ag, ac, 0, "add on unaligned views"));
}

TEST_CASE("max_pool2d: CUDA forward and gradient, including ties") {
  compare_cpu_cuda("max_pool2d 3/2/1", {{{2, 9, 9, 8}, 1}},
                   [](const std::vector<Tensor>& in) { return ops::max_pool2d(in[0], 3, 2, 1); }, 0, 0);
  compare_cpu_cuda("max_pool2d 3/1/1", {{{2, 6, 7, 5}, 2}},
                   [](const std::vector<Tensor>& in) { return ops::max_pool2d(in[0], 3, 1, 1); }, 0, 0);
  compare_cpu_cuda("max_pool2d 2/2/0", {{{1, 8, 8, 3}, 3}},
                   [](const std::vector<Tensor>& in) { return ops::max_pool2d(in[0], 2, 2, 0); }, 0, 0);
  // Values on a coarse grid make ties common: the gradient must go to the first maximum.
  std::vector<double> v(2 * 10 * 10 * 4);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>((i * 7919) % 5);
  const Tensor xc = Tensor::from_vector(v, {2, 10, 10, 4}).set_requires_grad();
  const Tensor xg = xc.detach().to(kGpu).set_requires_grad();
  const Tensor seed = Tensor::randn({2, 5, 5, 4}, 4);
  Tensor yc = ops::max_pool2d(xc, 3, 2, 1);
  backward(yc, seed);
  Tensor yg = ops::max_pool2d(xg, 3, 2, 1);
  backward(yg, seed.to(kGpu));
  CHECK(close(yg, yc, 0, "max_pool2d ties forward"));
  CHECK(close(xg.grad(), xc.grad(), 0, "max_pool2d ties gradient"));
  compare_bf16_forward("max_pool2d", {{{2, 9, 9, 8}, 5}},
                       [](const std::vector<Tensor>& in) { return ops::max_pool2d(in[0], 3, 2, 1); }, 0);
}

TEST_CASE("max_pool2d: an input pooled twice accumulates its gradient (vector and scalar paths)") {
  for (int64_t C : {8, 5}) {
    CAPTURE(C);
    compare_cpu_cuda(
        "max_pool2d twice", {{{2, 9, 9, C}, 9}},
        [](const std::vector<Tensor>& in) {
          return ops::add(ops::max_pool2d(in[0], 3, 2, 1), ops::max_pool2d(in[0], 3, 2, 1));
        },
        0, 0);
  }
}

TEST_CASE("max_pool2d: bf16 gradient == the f32 one rounded once (vector path at C = 64, scalar at C = 12)") {
  auto rounded = [](const Tensor& t) { return t.to(kGpu, DType::BF16).to(Device::cpu(), DType::F32); };
  for (int C : {64, 12}) {
    CAPTURE(C);
    // 17 x 17 -> 9 x 9 (3/2/1): overlapping windows, padding on every side.
    const Tensor xr = rounded(Tensor::randn({2, 17, 17, C}, 31));
    const Tensor seed = rounded(Tensor::randn({2, 9, 9, C}, 32));
    Tensor xc = xr.clone(), xg = xr.to(kGpu, DType::BF16);
    xc.set_requires_grad();
    xg.set_requires_grad();
    backward(ops::max_pool2d(xc, 3, 2, 1), seed);
    backward(ops::max_pool2d(xg, 3, 2, 1), seed.to(kGpu, DType::BF16));
    REQUIRE(xg.grad().dtype() == DType::BF16);
    // Same first-maximum rule, same f32 sums in the same order; the GPU rounds once to bf16.
    CHECK(close(xg.grad().to(Device::cpu(), DType::F32), rounded(xc.grad()), 0, "max_pool2d bf16 gradient"));
  }
}

TEST_CASE("global_avg_pool, l2_normalize, wn_linear: CUDA f32") {
  compare_cpu_cuda("global_avg_pool", {{{3, 7, 7, 40}, 1}},
                   [](const std::vector<Tensor>& in) { return ops::global_avg_pool(in[0]); }, 1e-6, 1e-6);
  compare_cpu_cuda("l2_normalize", {{{8, 32}, 2}},
                   [](const std::vector<Tensor>& in) { return ops::l2_normalize(in[0]); }, 1e-5, 1e-5);
  compare_cpu_cuda("l2_normalize D=2000", {{{3, 2000}, 3}},
                   [](const std::vector<Tensor>& in) { return ops::l2_normalize(in[0]); }, 1e-5, 1e-5);
  // Rows below eps: the denominator is clamped to eps on both devices.
  compare_cpu_cuda("l2_normalize clamped", {{{4, 16}, 4, 1e-14}},
                   [](const std::vector<Tensor>& in) { return ops::l2_normalize(in[0], 1e-12); }, 1e-5, 1e-5);
  compare_cpu_cuda("wn_linear", {{{6, 16}, 5}, {{10, 16}, 6}},
                   [](const std::vector<Tensor>& in) { return ops::wn_linear(ops::l2_normalize(in[0]), in[1]); },
                   1e-5, 1e-5);
  compare_cpu_cuda("wn_linear gain 2", {{{6, 16}, 7}, {{10, 16}, 8}},
                   [](const std::vector<Tensor>& in) { return ops::wn_linear(in[0], in[1], 2.0); }, 1e-5, 1e-5);
}

TEST_CASE("log_softmax and soft_cross_entropy: CUDA f32") {
  compare_cpu_cuda("log_softmax", {{{5, 37}, 1, 3.0}},
                   [](const std::vector<Tensor>& in) { return ops::log_softmax(in[0]); }, 1e-5, 1e-5);
  compare_cpu_cuda("log_softmax K=3000", {{{4, 3000}, 2, 5.0}},
                   [](const std::vector<Tensor>& in) { return ops::log_softmax(in[0]); }, 1e-5, 1e-5);
  compare_cpu_cuda("soft_cross_entropy", {{{6, 300}, 3, 4.0}, {{6, 300}, 4, 1.0, false, true}},
                   [](const std::vector<Tensor>& in) { return ops::soft_cross_entropy(in[0], in[1]); }, 1e-5, 1e-5);
  compare_cpu_cuda("soft_cross_entropy K=3000", {{{16, 3000}, 5, 10.0}, {{16, 3000}, 6, 0.01, false, true}},
                   [](const std::vector<Tensor>& in) { return ops::soft_cross_entropy(in[0], in[1]); }, 1e-5, 1e-5);
}

TEST_CASE("sum, mean, reshape: CUDA f32, and sums are bitwise reproducible") {
  // Both devices accumulate in double: the results agree to f32 rounding.
  compare_cpu_cuda("sum", {{{1031, 1017}, 1}}, [](const std::vector<Tensor>& in) { return ops::sum(in[0]); }, 1e-6,
                   0);
  compare_cpu_cuda("mean", {{{3, 5, 7, 11}, 2}}, [](const std::vector<Tensor>& in) { return ops::mean(in[0]); },
                   1e-6, 0);
  compare_cpu_cuda("reshape",
                   {{{2, 3, 4, 5}, 3}, {{7, 20}, 4}},
                   [](const std::vector<Tensor>& in) { return ops::linear(ops::reshape(in[0], {6, 20}), in[1]); },
                   1e-5, 1e-5);
  compare_cpu_cuda("mean(x * 3)", {{{40, 41}, 5}},
                   [](const std::vector<Tensor>& in) { return ops::mean(ops::scale(in[0], 3.0)); }, 1e-6, 0);
  NoGradGuard ng;
  const Tensor x = Tensor::randn({1 << 22}, 6, 0.0, 1.0, DType::F32, kGpu);
  CHECK(ops::sum(x).item() == ops::sum(x).item());
  const Tensor xb = x.to(DType::BF16);
  CHECK(close(ops::sum(xb), ops::sum(xb.to(DType::F32)), 1e-2, "bf16 sum"));
}

TEST_CASE("a small network end to end: CUDA f32 gradients match the CPU") {
  compare_cpu_cuda(
      "conv-bn-relu-pool-linear-ce",
      {{{2, 12, 12, 3}, 1}, {{8, 3, 3, 3}, 2, 0.3}, {{8}, 3, 0.1}, {{8}, 4, 0.1}, {{5, 8}, 5, 0.3}, {{2, 5}, 6, 1.0, false, true}},
      [](const std::vector<Tensor>& in) {
        ops::BatchNormState st{Tensor::zeros({8}, DType::F32, in[0].device()),
                               Tensor::full({8}, 1.0, DType::F32, in[0].device())};
        Tensor h = ops::conv2d(in[0], in[1], 2, 1);
        h = ops::relu(ops::batch_norm(h, ops::add(in[2], Tensor::full({8}, 1.0, DType::F32, in[0].device())), in[3], st,
                                      true));
        h = ops::global_avg_pool(ops::max_pool2d(h, 3, 2, 1));
        return ops::soft_cross_entropy(ops::linear(h, in[4]), in[5]);
      },
      1e-4, 1e-4);
}

TEST_CASE("tensor transfers and device casts round-trip exactly") {
  const std::vector<double> vals = {0.0, 1.0, -2.5, 3.14159, 255.0, 1e-3, -1e5, 65504.0, 0.333};
  SUBCASE("f32") {
    const Tensor h = Tensor::from_vector(vals, {9});
    CHECK(h.to(kGpu).to(Device::cpu()).to_vector() == h.to_vector());
  }
  SUBCASE("bf16: device rounding equals host rounding") {
    const Tensor h = Tensor::randn({1000}, 3);
    const Tensor b = h.to(kGpu).to(DType::BF16);  // rounded on the device
    const std::vector<double> got = b.to_vector();
    const std::vector<double> hv = h.to_vector();
    bool same = true;
    for (size_t i = 0; i < hv.size(); ++i)
      same = same && got[i] == bf16_bits_to_f32(f32_to_bf16_bits(static_cast<float>(hv[i])));
    CHECK(same);
    // The direct upload path (staged in f32, rounded on the device) gives the same bits.
    CHECK(h.to(kGpu, DType::BF16).to_vector() == got);
  }
  SUBCASE("u8 and i64") {
    const std::vector<double> small = {0, 1, 2, 17, 128, 254, 255};
    const Tensor u = Tensor::from_vector(small, {7}, DType::U8);
    CHECK(u.to(kGpu).to(Device::cpu()).to_vector() == small);
    CHECK(u.to(kGpu).to(DType::F32).to_vector() == small);  // u8 -> f32 on the device
    const std::vector<double> ints = {-3, 0, 5, 1000000, -123456789};
    const Tensor l = Tensor::from_vector(ints, {5}, DType::I64);
    CHECK(l.to(kGpu).to(Device::cpu()).to_vector() == ints);
    CHECK(l.to(kGpu).to(DType::F32).to(DType::I64).to_vector() == l.to(DType::F32).to(DType::I64).to_vector());
  }
  SUBCASE("device to device and pinned host") {
    const Tensor h = Tensor::randn({4, 33}, 4);
    const Tensor a = h.to(kGpu), b = a.clone();
    CHECK(b.to_vector() == h.to_vector());
    Tensor pinned = Tensor::view_of(allocate_pinned(h.nbytes()), 0, h.shape(), DType::F32);
    pinned.copy_(b);  // asynchronous into pinned memory
    cuda::synchronize();
    CHECK(pinned.to_vector() == h.to_vector());
  }
}

TEST_CASE("fill and zero on the device, every dtype") {
  for (DType t : {DType::F32, DType::BF16, DType::U8, DType::I64}) {
    CAPTURE(dtype_name(t));
    Tensor x = Tensor::full({3, 1001}, 7.0, t, kGpu);
    for (double v : x.to_vector()) REQUIRE(v == 7.0);
    x.zero_();
    for (double v : x.to_vector()) REQUIRE(v == 0.0);
    if (dtype_is_float(t)) {
      x.fill_(-1.25);
      for (double v : x.to_vector()) REQUIRE(v == -1.25);
    }
  }
}

TEST_CASE("caching allocator: reuse, statistics, no cudaMalloc in steady state, out of memory") {
  cuda::synchronize();
  cuda::empty_cache(0);
  const cuda::MemoryStats s0 = cuda::memory_stats(0);
  { const Tensor a = Tensor::empty({1000}, DType::F32, kGpu); }
  const cuda::MemoryStats s1 = cuda::memory_stats(0);
  CHECK(s1.device_mallocs == s0.device_mallocs + 1);
  CHECK(s1.allocated_bytes == s0.allocated_bytes);  // freed into the cache
  CHECK(s1.reserved_bytes >= s0.reserved_bytes + 4000);
  { const Tensor b = Tensor::empty({1000}, DType::F32, kGpu); }
  const cuda::MemoryStats s2 = cuda::memory_stats(0);
  CHECK(s2.cache_hits == s1.cache_hits + 1);
  CHECK(s2.device_mallocs == s1.device_mallocs);
  CHECK(s2.peak_allocated_bytes >= s0.allocated_bytes + 4000);

  // A training step repeats its sizes: after warm-up no step calls cudaMalloc.
  auto step = [] {
    Tensor x = Tensor::randn({4, 16, 16, 8}, 1, 0.0, 1.0, DType::F32, kGpu);
    Tensor w = Tensor::randn({16, 3, 3, 8}, 2, 0.0, 0.2, DType::F32, kGpu).set_requires_grad();
    Tensor g = Tensor::full({16}, 1.0, DType::F32, kGpu).set_requires_grad();
    Tensor b = Tensor::zeros({16}, DType::F32, kGpu).set_requires_grad();
    Tensor v = Tensor::randn({10, 16}, 3, 0.0, 0.2, DType::F32, kGpu).set_requires_grad();
    Tensor t = Tensor::uniform({4, 10}, 4, 0.0, 1.0, DType::F32, kGpu);
    ops::BatchNormState st{Tensor::zeros({16}, DType::F32, kGpu), Tensor::full({16}, 1.0, DType::F32, kGpu)};
    Tensor h = ops::relu(ops::batch_norm(ops::conv2d(x, w, 1, 1), g, b, st, true));
    Tensor loss = ops::soft_cross_entropy(ops::wn_linear(ops::l2_normalize(ops::global_avg_pool(h)), v), t);
    backward(loss);
    return loss.item();
  };
  step();
  step();
  const size_t warm = cuda::memory_stats(0).device_mallocs;
  for (int i = 0; i < 3; ++i) step();
  CHECK(cuda::memory_stats(0).device_mallocs == warm);

  // Far beyond any GPU: the error names the size; the allocator still works afterwards.
  bool threw = false;
  try {
    Tensor huge = Tensor::empty({int64_t(1) << 50}, DType::U8, kGpu);
  } catch (const Error& e) {
    threw = true;
    CHECK(std::string(e.what()).find("out of memory") != std::string::npos);
  }
  CHECK(threw);
  CHECK(Tensor::full({10}, 2.0, DType::F32, kGpu).to_vector()[9] == 2.0);
}
