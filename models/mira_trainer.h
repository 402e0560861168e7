// One MIRA training step (official train.py order): EMA update of the teacher, teacher logits
// of the two global crops (no gradient, train-mode BN), one MIRA target per global view,
// student logits of every crop (each crop batch with its own BN statistics), the swapped-
// prediction loss, backward with the gradient average over ranks overlapped, optimiser step (prototypes frozen
// while asked, as the official code drops their gradients in the first epoch).
#pragma once

#include <memory>
#include <vector>

#include "engine/comm.h"
#include "engine/grad_sync.h"
#include "engine/mira_assign.h"
#include "engine/optim.h"
#include "models/mira_model.h"

namespace mira::models {

struct MiraStepConfig {
  double tau_s = 0.1;
  double tau_t = 0.225;
  int iters = 30;
  // Data parallel: gradient buckets reduced while the backward pass runs (engine/grad_sync.h).
  size_t bucket_bytes = size_t(25) << 20;
  size_t first_bucket_bytes = size_t(1) << 20;
  // Consecutive crops of one size (the two global crops, the local crops) through one forward
  // each, BN statistics still per crop (BatchNormState::groups): the same values as one
  // forward per crop, with larger GPU problems and fewer launches.
  bool group_crops = true;  // measured 1.28x on the ResNet-50 multi-crop step (H200, bench/RESULTS.md)
  // The assignment's working copy of E (engine/mira_assign.h): f32 by default.
  AssignOptions assign = {};
};

struct MiraStepSchedule {  // this step's values of the schedules
  double lr = 0.0;
  double beta = 0.7;
  double ema_momentum = 0.99;
  bool freeze_prototypes = false;
};

struct MiraStepStats {
  double loss = 0;              // global mean
  // Computed only when asked for (full_stats), else left at these values:
  double target_entropy = 0;    // mean over the two views, nats
  double marginal_entropy = 0;  // mean over the two views, nats (log K at equipartition)
  double kkt_residual = 0;      // max over the two views
  int clusters_in_use = -1;     // prototypes that are the argmax of some target row (view 0,
                                // global batch)
};

// Throws naming the first tensor of the store whose gradients (grads = true) or values are not
// finite. One reduction over the flat buffer; the element scan runs only when it fails. The
// trainer calls it on the gradients before every update and on the parameters after it.
void check_finite(const ParamStore& ps, bool grads);

class MiraTrainer {
 public:
  MiraTrainer(MiraModel& model, const OptimConfig& optim, const MiraStepConfig& cfg, Communicator& comm);
  // views: the crops of this rank's batch, global crops first, on the model's device.
  // Throws mira::Error when the loss is not finite (before any parameter changes).
  MiraStepStats step(const std::vector<Tensor>& views, const MiraStepSchedule& s, bool full_stats);
  Optimizer& optimizer() { return optimizer_; }
  // Multi-rank runs: the gradient reducer (null with one rank).
  const GradSync* grad_sync() const { return grad_sync_.get(); }

 private:
  MiraModel& model_;
  Optimizer optimizer_;
  MiraStepConfig cfg_;
  Communicator& comm_;
  std::unique_ptr<GradSync> grad_sync_;
  bool frozen_ = false;
};

}  // namespace mira::models
