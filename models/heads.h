// The MIRA heads (official code): projector Linear(F, H, no bias) - BN1d - ReLU - Linear(H, H,
// no bias) - BN1d - ReLU - Linear(H, D, bias), named like the nn.Sequential it mirrors
// (projector.0, .1, .3, .4, .6); then row L2-normalisation; then weight-normalised prototypes
// (K, D) with the gain fixed at 1 and no bias, so logits are cosine similarities.
#pragma once

#include "models/layers.h"

namespace mira::models {

struct HeadConfig {
  int hidden = 2048;
  int out = 256;        // d
  int prototypes = 3000;  // K
};

class Projector {
 public:
  Projector() = default;
  Projector(ParamStore& ps, int in, const HeadConfig& cfg, const std::string& prefix = "projector.");
  void init(uint64_t seed);
  // (N, in) -> (N, out), L2-normalised rows
  Tensor forward(const Tensor& x, bool training);
  std::vector<BatchNorm*> batch_norms() { return {&bn1_, &bn2_}; }

 private:
  Linear l0_, l3_, l6_;
  BatchNorm bn1_, bn2_;
};

class Prototypes {
 public:
  Prototypes() = default;
  // Declares prototypes.weight_v (K, D) as a parameter and prototypes.weight_g (K, 1) = 1 as a
  // buffer (kept only so the state dict matches torch's weight_norm module).
  Prototypes(ParamStore& ps, const HeadConfig& cfg, const std::string& prefix = "prototypes.");
  void init(uint64_t seed);
  // (N, D) unit rows -> (N, K) cosine logits
  Tensor forward(const Tensor& z) const;
  const Tensor& weight_v() const { return ps_->get(v_); }

 private:
  ParamStore* ps_ = nullptr;
  int v_ = -1, g_ = -1;
  int K_ = 0, D_ = 0;
};

}  // namespace mira::models
