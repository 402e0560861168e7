#include "models/layers.h"

#include <cmath>

namespace mira::models {

uint64_t init_seed(uint64_t seed, int index) {
  // splitmix64 of (seed, index): decorrelated streams for neighbouring indices.
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (static_cast<uint64_t>(index) + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

Conv2d::Conv2d(ParamStore& ps, const std::string& name, int in_, int out_, int k_, int stride_, int pad_)
    : in(in_), out(out_), k(k_), stride(stride_), pad(pad_), ps_(&ps) {
  w_ = ps.declare(name + ".weight", {out, k, k, in});
}

// Weights follow the activations' dtype (f32 parameters, bf16 compute: ParamStore::get_as).
Tensor Conv2d::forward(const Tensor& x) const { return ops::conv2d(x, ps_->get_as(w_, x.dtype()), stride, pad); }

void Conv2d::init(uint64_t seed) const {
  const Tensor& w = ps_->get(w_);
  const double std = std::sqrt(2.0 / (static_cast<double>(out) * k * k));
  w.copy_(Tensor::randn(w.shape(), seed, 0.0, std, DType::F32));
}

BatchNorm::BatchNorm(ParamStore& ps, const std::string& name, int C_) : C(C_), ps_(&ps), name_(name) {
  g_ = ps.declare(name + ".weight", {C});
  b_ = ps.declare(name + ".bias", {C});
  rm_ = ps.declare(name + ".running_mean", {C}, ParamStore::Kind::Buffer);
  rv_ = ps.declare(name + ".running_var", {C}, ParamStore::Kind::Buffer);
}

Tensor BatchNorm::forward(const Tensor& x, bool training) {
  ops::BatchNormState st{ps_->get(rm_), ps_->get(rv_), num_batches_tracked, comm, equal_rows, groups};
  Tensor y = ops::batch_norm(x, ps_->get(g_), ps_->get(b_), st, training);
  num_batches_tracked = st.num_batches_tracked;
  return y;
}

Tensor BatchNorm::forward_relu(const Tensor& x, bool training) {
  ops::BatchNormState st{ps_->get(rm_), ps_->get(rv_), num_batches_tracked, comm, equal_rows, groups};
  Tensor y = ops::batch_norm_relu(x, ps_->get(g_), ps_->get(b_), st, training);
  num_batches_tracked = st.num_batches_tracked;
  return y;
}

void BatchNorm::init(double gamma) const {
  ps_->get(g_).fill_(gamma);
  ps_->get(b_).fill_(0.0);
  ps_->get(rm_).fill_(0.0);
  ps_->get(rv_).fill_(1.0);
}

Linear::Linear(ParamStore& ps, const std::string& name, int in_, int out_, bool bias) : in(in_), out(out_), ps_(&ps) {
  w_ = ps.declare(name + ".weight", {out, in});
  if (bias) b_ = ps.declare(name + ".bias", {out});
}

Tensor Linear::forward(const Tensor& x) const {
  return ops::linear(x, ps_->get_as(w_, x.dtype()), b_ >= 0 ? ps_->get_as(b_, x.dtype()) : Tensor());
}

void Linear::init(uint64_t seed) const {
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  const Tensor& w = ps_->get(w_);
  w.copy_(Tensor::uniform(w.shape(), seed, -bound, bound, DType::F32));
  if (b_ >= 0) {
    const Tensor& b = ps_->get(b_);
    b.copy_(Tensor::uniform(b.shape(), seed ^ 0xb1a5ull, -bound, bound, DType::F32));
  }
}

}  // namespace mira::models
