// labels: cpu
#include <cmath>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/param_store.h"
#include "engine/rng.h"
#include "testing.h"

using namespace mira;

TEST_CASE("shape and views") {
  Tensor t = Tensor::from_vector({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {3, 2, 2});
  CHECK(t.numel() == 12);
  CHECK(t.shape().str() == "[3, 2, 2]");
  Tensor s = t.slice_batch(1, 3);
  CHECK(s.shape() == Shape{2, 2, 2});
  CHECK(s.to_vector()[0] == 4);
  s.data<float>()[0] = 40;  // a view shares storage
  CHECK(t.to_vector()[4] == 40);
  Tensor r = t.reshape({4, 3});
  CHECK(r.to_vector()[4] == 40);
  CHECK_THROWS_AS(t.reshape({5, 3}), Error);
  CHECK_THROWS_AS(t.slice_batch(2, 4), Error);
  CHECK_THROWS_AS(Tensor::empty({1, 2, 3, 4, 5}), Error);
}

TEST_CASE("empty tensors: zeros, fill and copies are no-ops, not null-pointer calls") {
  Tensor e = Tensor::zeros({0, 3});
  CHECK(e.numel() == 0);
  e.fill_(2.0);
  e.zero_();
  CHECK(e.clone().numel() == 0);
  CHECK(e.to_vector().empty());
  ParamStore no_buffers;
  no_buffers.declare("w", {2});
  no_buffers.finalize();  // an empty buffer store: this is what the sanitizer build caught
  CHECK(no_buffers.flat_buffers().numel() == 0);
}

TEST_CASE("dtype conversion and fill") {
  Tensor t = Tensor::from_vector({1.5, -2.25, 3.0}, {3}, DType::F64);
  CHECK(t.to(DType::F32).to_vector() == std::vector<double>{1.5, -2.25, 3.0});
  CHECK(t.to(DType::I64).to_vector() == std::vector<double>{1, -2, 3});
  Tensor u = Tensor::full({4}, 7, DType::U8);
  CHECK(u.to_vector() == std::vector<double>{7, 7, 7, 7});
  CHECK(t.clone().to_vector() == t.to_vector());
  CHECK_THROWS_AS(Tensor::empty({2}, DType::BF16), Error);  // bf16 is CUDA-only
  CHECK_THROWS_AS(t.data<float>(), Error);                  // wrong element type
}

TEST_CASE("bf16 host conversion rounds to nearest even") {
  CHECK(bf16_bits_to_f32(f32_to_bf16_bits(1.0f)) == 1.0f);
  // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
  CHECK(bf16_bits_to_f32(f32_to_bf16_bits(1.0f + 0x1p-8f)) == 1.0f);
  CHECK(bf16_bits_to_f32(f32_to_bf16_bits(1.0f + 0x1p-8f + 0x1p-12f)) == 1.0f + 0x1p-7f);
  CHECK(std::isnan(bf16_bits_to_f32(f32_to_bf16_bits(NAN))));
}

TEST_CASE("seeded random init is deterministic and has the right moments") {
  Tensor a = Tensor::randn({10000}, 7), b = Tensor::randn({10000}, 7), c = Tensor::randn({10000}, 8);
  CHECK(a.to_vector() == b.to_vector());
  CHECK(a.to_vector() != c.to_vector());
  double m = 0, v = 0;
  for (double x : a.to_vector()) m += x;
  m /= 10000;
  for (double x : a.to_vector()) v += (x - m) * (x - m);
  v /= 10000;
  CHECK(std::fabs(m) < 0.05);
  CHECK(std::fabs(v - 1) < 0.05);
  Tensor u = Tensor::uniform({10000}, 3, -1, 1);
  for (double x : u.to_vector()) {
    CHECK(x >= -1);
    CHECK(x < 1);
  }
}

TEST_CASE("philox matches the published known-answer vector") {
  // Random123 kat_vectors: philox4x32_10, counter and key all 0xffffffff.
  Philox4 r = philox4x32(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffffffffffull);
  CHECK(r.v[0] == 0x408f276du);
  CHECK(r.v[1] == 0x41c83b0eu);
  CHECK(r.v[2] == 0xa20bc7c6u);
  CHECK(r.v[3] == 0x6d5451fdu);
}

TEST_CASE("device strings") {
  CHECK(Device::parse("cpu") == Device::cpu());
  CHECK(Device::parse("cuda:1") == Device::cuda(1));
  CHECK_THROWS_AS(Device::parse("gpu"), Error);
  CHECK_THROWS_AS(Device::parse("cuda:x"), Error);
}

TEST_CASE("param store: flat buffers with named views") {
  ParamStore ps;
  int w = ps.declare("conv.weight", {4, 3, 3, 2});
  int b = ps.declare("bn.bias", {3});
  int rm = ps.declare("bn.running_mean", {3}, ParamStore::Kind::Buffer);
  CHECK_THROWS_AS(ps.declare("bn.bias", {3}), Error);
  ps.finalize();
  CHECK_THROWS_AS(ps.declare("late", {1}), Error);
  CHECK(ps.num_params() == 72 + 3);
  CHECK(ps.get(w).requires_grad());
  CHECK(!ps.get(rm).requires_grad());
  // Views are 64-byte aligned and live inside the flat buffer.
  CHECK(reinterpret_cast<uintptr_t>(ps.get(b).raw()) % 64 == 0);
  ps.get(b).fill_(2.0);
  std::vector<double> flat = ps.flat_params().to_vector();
  CHECK(flat[ps.entries()[b].offset] == 2.0);
  // Gradients land in the flat gradient buffer and accumulate until zero_grad().
  Tensor x = Tensor::from_vector({1, 1, 1}, {3});
  for (int rep = 0; rep < 2; ++rep) backward(ops::sum(ops::add(x, ps.get(b))));
  CHECK(ps.flat_grads().to_vector()[ps.entries()[b].offset] == 2.0);
  ps.zero_grad();
  CHECK(ps.get("bn.bias").grad().to_vector() == std::vector<double>{0, 0, 0});
  CHECK_THROWS_AS(ps.get("nope"), Error);
}

TEST_CASE("autograd: accumulation rule, no-grad, freed intermediates") {
  Tensor x = Tensor::from_vector({1, -2, 3}, {3}).set_requires_grad();
  // y = relu(x) + x uses x twice: the two contributions add up.
  Tensor y = ops::add(ops::relu(x), x);
  backward(ops::sum(y));
  CHECK(x.grad().to_vector() == std::vector<double>{2, 1, 2});
  // A second backward accumulates into the leaf.
  backward(ops::sum(ops::scale(x, 3.0)));
  CHECK(x.grad().to_vector() == std::vector<double>{5, 4, 5});
  CHECK(tape_size() == 0);
  {
    NoGradGuard ng;
    Tensor z = ops::relu(x);
    CHECK(!z.requires_grad());
    CHECK(tape_size() == 0);
  }
  // Intermediate gradients are freed unless retained.
  x.set_grad(Tensor());
  Tensor h = ops::relu(x), k = ops::relu(x);
  k.retain_grad();
  backward(ops::add(ops::sum(h), ops::sum(k)));
  CHECK(!h.grad().defined());
  CHECK(k.grad().defined());
  CHECK_THROWS_AS(backward(ops::sum(Tensor::from_vector({1}, {1}))), Error);
}
