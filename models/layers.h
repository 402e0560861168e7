// Layers as thin handles into a ParamStore: each declares its tensors under a torchvision-style
// name at construction, and reads its views at forward time (after ParamStore::finalize()).
// No layer owns memory; the flat buffers stay the single home of every parameter.
#pragma once

#include <string>

#include "engine/ops.h"
#include "engine/param_store.h"

namespace mira::models {

// Seed for the i-th initialised tensor of a model: mixes the user's seed and the index so each
// tensor gets its own Philox stream.
uint64_t init_seed(uint64_t seed, int index);

class Conv2d {
 public:
  Conv2d() = default;
  // weight (out, k, k, in) OHWI internally; OIHW in checkpoints.
  Conv2d(ParamStore& ps, const std::string& name, int in, int out, int k, int stride, int pad);
  Tensor forward(const Tensor& x) const;
  // kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / (out * k * k))
  void init(uint64_t seed) const;
  int in = 0, out = 0, k = 0, stride = 1, pad = 0;

 private:
  ParamStore* ps_ = nullptr;
  int w_ = -1;
};

class BatchNorm {
 public:
  BatchNorm() = default;
  // weight, bias (params); running_mean, running_var (buffers); num_batches_tracked on the host.
  BatchNorm(ParamStore& ps, const std::string& name, int C);
  Tensor forward(const Tensor& x, bool training);
  // relu(forward(x)) fused into one pass (ops::batch_norm_relu).
  Tensor forward_relu(const Tensor& x, bool training);
  // gamma = value (1, or 0 for zero_init_residual), beta = 0, running stats 0 / 1.
  void init(double gamma) const;
  const std::string& name() const { return name_; }
  int64_t num_batches_tracked = 0;
  int C = 0;
  // Set for synchronised BatchNorm across the ranks of a multi-process run (null: local);
  // equal_rows: every rank passes batches of the same size (ops::BatchNormState).
  Communicator* comm = nullptr;
  bool equal_rows = false;
  // Training mode: x holds this many equal batches normalised separately (ops::BatchNormState).
  int groups = 1;

 private:
  ParamStore* ps_ = nullptr;
  std::string name_;
  int g_ = -1, b_ = -1, rm_ = -1, rv_ = -1;
};

class Linear {
 public:
  Linear() = default;
  Linear(ParamStore& ps, const std::string& name, int in, int out, bool bias);
  Tensor forward(const Tensor& x) const;
  // nn.Linear's default: weight and bias ~ U(-1/sqrt(in), 1/sqrt(in)).
  void init(uint64_t seed) const;
  int in = 0, out = 0;

 private:
  ParamStore* ps_ = nullptr;
  int w_ = -1, b_ = -1;
};

}  // namespace mira::models
