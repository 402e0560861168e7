// Linear evaluation (spec §6): a Linear(F -> classes) on frozen backbone features, weight
// ~ N(0, 0.01^2), bias 0, cross-entropy, SGD momentum 0.9 (or LARS), no weight decay, lr =
// base_lr * batch / 256 with a per-step cosine to 0, batch 1024, 100 epochs. Two inputs:
// - cached features (a fast probe: features computed once, no augmentation);
// - images: every step takes a RandomResizedCrop(scale 0.08-1, bilinear) + flip view of each
//   train image through the backbone in eval mode; with backbone_base_lr > 0 the backbone is
//   fine-tuned too (train-mode BN, its own lr), the semi-supervised protocol.
// The test set is always seen through the eval transform. Top-1 / top-5 rank classes by logit
// (ties: lower class first).
#pragma once

#include <string>
#include <vector>

#include "apps/common/eval_transform.h"
#include "apps/common/features.h"
#include "data/dataset.h"
#include "engine/tensor.h"

namespace mira::apps {

struct LinearProbeConfig {
  int epochs = 100;
  int64_t batch = 1024;
  double base_lr = 0.075;         // per 256 images: lr = base_lr * batch / 256 (0.3 at 1024)
  double backbone_base_lr = 0.0;  // > 0: fine-tune the backbone with this lr (per 256)
  std::string optimizer = "sgd";  // sgd | lars
  double momentum = 0.9;
  double weight_decay = 0.0;
  double lars_eta = 0.001;  // LARS trust coefficient
  uint64_t seed = 0;        // classifier init and shuffling
  int num_classes = 0;      // 0: 1 + largest label
  int eval_every = 1;       // epochs between test evaluations (the last epoch always)
  bool verbose = true;      // one line per epoch on stdout
};

// Throws mira::Error for settings the probe refuses whatever the data (epochs, batch, lr,
// eval_every, optimizer): apps call it before extracting features.
void check_linear_probe_config(const LinearProbeConfig& cfg);

struct EpochLog {
  int epoch = 0;
  double loss = 0, lr = 0;
  double top1 = -1, top5 = -1;  // -1: not evaluated this epoch
};

struct LinearProbeResult {
  std::vector<EpochLog> epochs;
  double top1 = 0, top5 = 0;  // after the last epoch, percent
  Tensor weight, bias;        // (C, F), (C) on the CPU
};

// Top-1 / top-5 (percent) of logits (N, C) against labels.
void topk_accuracy(const Tensor& logits, const std::vector<int64_t>& labels, double& top1, double& top5);

// Cached features (N, F) f32 on the CPU; training runs on `device`.
LinearProbeResult linear_probe_features(const Tensor& train_x, const std::vector<int64_t>& train_y,
                                        const Tensor& test_x, const std::vector<int64_t>& test_y,
                                        const LinearProbeConfig& cfg, Device device);

// Augmented images through `net` (on its device). train_idx: the (labelled subset of) train
// samples. The eval transform `t` decides the crop size, padding and normalisation.
LinearProbeResult linear_probe_images(Backbone& net, const data::Dataset& train, const std::vector<int64_t>& train_idx,
                                      const data::Dataset& test, const EvalTransform& t, const LinearProbeConfig& cfg);

// Transfer protocol (spec §6, Ericsson et al.): L2-regularised multinomial logistic regression
// on cached features. For each coefficient in `l2_grid` (the weight decay of the classifier
// matrix, i.e. the penalty l2/2 * ||W||^2; the bias is not penalised) the classifier is
// trained on a class-balanced `1 - val_fraction` of the train set and scored on the held-out
// rest; the best coefficient (ties: the larger, i.e. simpler model) is refit on the whole
// train set and scored on the test set. The solver is the probe's minibatch SGD with a cosine
// schedule to 0, which for this convex objective ends near its optimum.
struct TransferResult {
  std::vector<std::pair<double, double>> val_top1;  // (coefficient, held-out top-1)
  double best_l2 = 0;
  LinearProbeResult final_fit;
};
TransferResult transfer_logreg(const Tensor& train_x, const std::vector<int64_t>& train_y, const Tensor& test_x,
                               const std::vector<int64_t>& test_y, const std::vector<double>& l2_grid,
                               double val_fraction, const LinearProbeConfig& cfg, Device device);

}  // namespace mira::apps
