// Optimiser-side passes over flat parameter buffers (one kernel launch each, thanks to the
// ParamStore layout): the EMA teacher update, and SGD with momentum / LARS exactly as the
// official MIRA code (weight decay and LARS scaling only for tensors with ndim > 1; frozen
// tensors skipped entirely, as PyTorch skips parameters whose grad is None).
#pragma once

#include <string>
#include <vector>

#include "engine/param_store.h"
#include "kernels/cpu/optim.h"

namespace mira {

// ema = m * ema + (1 - m) * online[0 : ema.numel()], elementwise on flat buffers. The online
// buffer may be longer (the student's store ends with the prototypes, which the teacher lacks).
void ema_update(const Tensor& ema, const Tensor& online, double m);

struct OptimConfig {
  std::string name = "sgd";  // sgd | lars
  double momentum = 0.9;
  double weight_decay = 0.0;
  double eta = 0.001;  // LARS trust coefficient
};

class Optimizer {
 public:
  Optimizer(ParamStore& ps, const OptimConfig& cfg);
  // Freezes (or thaws) every parameter whose name starts with prefix, e.g. "prototypes." in
  // the first epoch: no update, no momentum, no decay.
  void set_frozen(const std::string& prefix, bool frozen);
  // One update with learning rate lr from the gradients in the store's flat gradient buffer.
  void step(double lr);
  // Momentum buffer, same layout as the parameters (saved in checkpoints).
  const Tensor& momentum_buffer() const { return mu_; }
  const OptimConfig& config() const { return cfg_; }

 private:
  void upload_tables();
  ParamStore& ps_;
  OptimConfig cfg_;
  std::vector<cpu::ParamSegment> segs_;
  Tensor mu_;
  // CUDA only: segment and chunk tables and reduction scratch, as raw device bytes.
  bool tables_dirty_ = true;
  int nchunks_ = 0;
  Tensor d_segs_, d_chunks_, d_partial_, d_norms_;
};

}  // namespace mira
