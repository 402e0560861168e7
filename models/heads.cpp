#include "models/heads.h"

#include <cmath>

namespace mira::models {

Projector::Projector(ParamStore& ps, int in, const HeadConfig& cfg, const std::string& p) {
  l0_ = Linear(ps, p + "0", in, cfg.hidden, false);
  bn1_ = BatchNorm(ps, p + "1", cfg.hidden);
  l3_ = Linear(ps, p + "3", cfg.hidden, cfg.hidden, false);
  bn2_ = BatchNorm(ps, p + "4", cfg.hidden);
  l6_ = Linear(ps, p + "6", cfg.hidden, cfg.out, true);
}

void Projector::init(uint64_t seed) {
  l0_.init(init_seed(seed, 1000));
  l3_.init(init_seed(seed, 1001));
  l6_.init(init_seed(seed, 1002));
  bn1_.init(1.0);
  bn2_.init(1.0);
}

Tensor Projector::forward(const Tensor& x, bool training) {
  Tensor h = bn1_.forward_relu(l0_.forward(x), training);
  h = bn2_.forward_relu(l3_.forward(h), training);
  return ops::l2_normalize(l6_.forward(h));
}

Prototypes::Prototypes(ParamStore& ps, const HeadConfig& cfg, const std::string& p)
    : ps_(&ps), K_(cfg.prototypes), D_(cfg.out) {
  v_ = ps.declare(p + "weight_v", {K_, D_});
  g_ = ps.declare(p + "weight_g", {K_, 1}, ParamStore::Kind::Buffer);
}

void Prototypes::init(uint64_t seed) {
  // nn.Linear's default init of v; the gain is fixed at 1 (official: weight_g.fill_(1), frozen).
  const double bound = 1.0 / std::sqrt(static_cast<double>(D_));
  const Tensor& v = ps_->get(v_);
  v.copy_(Tensor::uniform(v.shape(), init_seed(seed, 2000), -bound, bound, DType::F32));
  ps_->get(g_).fill_(1.0);
}

Tensor Prototypes::forward(const Tensor& z) const { return ops::wn_linear(z, ps_->get(v_), 1.0); }

}  // namespace mira::models
