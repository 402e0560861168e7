// Backbones for evaluation and feature extraction. A backbone comes from a checkpoint (ours:
// the EMA teacher under "ema.backbone.", the online network under "backbone."; or a plain
// torchvision ResNet state dict saved as safetensors, whose fc.* is ignored), with its
// architecture read from the tensors themselves (stem, block type, blocks and widths), or at
// the seeded initialisation pre-training starts from (zero-init residual included). Features
// are the pooled backbone output in eval mode (BN running statistics), no gradient.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "apps/common/eval_transform.h"
#include "data/dataset.h"
#include "engine/safetensors.h"
#include "models/resnet.h"

namespace mira::apps {

// "ema" -> "ema.backbone.", "online" -> "backbone."; a plain torchvision file (conv1.weight at
// the top level and no backbone prefix) -> "". Error when the file holds no such backbone.
std::string backbone_prefix(const SafetensorsFile& f, const std::string& which, const std::string& path = "");

// The ResNet whose tensors sit under `prefix` in f: CIFAR stem when conv1 is 3x3, Bottleneck
// when conv3 exists, blocks and widths counted and read from the shapes. `arch` is set to
// resnet18 / resnet50 / resnet_tiny when the shapes are one of those, else "custom".
// cifar_stem_padding cannot be read from shapes: it is left at `cifar_stem_padding`.
models::ResNetConfig infer_resnet_config(const SafetensorsFile& f, const std::string& prefix,
                                         int cifar_stem_padding = 1);
// "resnet18 (CIFAR stem, BasicBlock [2,2,2,2], widths [64,128,256,512], 512-d)".
std::string describe(const models::ResNetConfig& cfg);
// True when a and b have the same tensors (names and shapes).
bool same_architecture(const models::ResNetConfig& a, const models::ResNetConfig& b);

class Backbone {
 public:
  Backbone(const models::ResNetConfig& cfg, Device device);
  void init(uint64_t seed);
  // Strict load of the backbone under prefix: any missing (except BN num_batches_tracked),
  // unexpected (except fc.* for prefix "") or mis-shaped tensor is an error naming it.
  void load(const SafetensorsFile& f, const std::string& prefix, const std::string& path = "");
  // x (N, H, W, 3) f32 on any device -> (N, feature_dim) f32 on the backbone's device.
  Tensor features(const Tensor& x);
  int feature_dim() const { return cfg_.feature_dim(); }
  const models::ResNetConfig& config() const { return cfg_; }
  Device device() const { return device_; }
  ParamStore& params() { return *ps_; }
  models::ResNet& net() { return *net_; }

 private:
  models::ResNetConfig cfg_;
  Device device_;
  std::unique_ptr<ParamStore> ps_;
  std::unique_ptr<models::ResNet> net_;
};

struct BackboneOptions {
  std::string checkpoint;     // empty: random init of `arch`
  std::string which = "ema";  // ema | online
  std::string arch;           // checked against the checkpoint when both are given
  bool random_init = false;   // the checkpoint's (or arch's) architecture, freshly initialised
  uint64_t seed = 0;
  int cifar_stem = -1;  // random init without checkpoint: -1 auto (images <= 64 px), 0, 1
  int cifar_stem_padding = 1;
  Device device;
};
// Builds the backbone the options ask for; image_size decides the automatic stem. Prints one
// line to stderr saying what was loaded.
std::unique_ptr<Backbone> open_backbone(const BackboneOptions& opt, int image_size);

// Features of every image of ds (eval transform, batches of `batch`), progress to stderr under
// the label `what` (nothing when empty). -> (N, feature_dim) f32 CPU.
Tensor extract_features(Backbone& net, const data::Dataset& ds, const EvalTransform& t, int64_t batch,
                        const std::string& what);
// Same with any feature function (e.g. mira_pretrain's end-of-run k-NN on its EMA teacher:
// [&](const Tensor& x) { return model.features(x.to(dev), true); }): fn maps a (B, H, W, 3) f32
// CPU batch to (B, feature_dim) features on any device.
Tensor extract_features(const std::function<Tensor(const Tensor&)>& fn, int feature_dim, const data::Dataset& ds,
                        const EvalTransform& t, int64_t batch, const std::string& what);
// Same for already transformed images (N, H, W, 3) f32 on the CPU.
Tensor extract_features(Backbone& net, const Tensor& images, int64_t batch, const std::string& what);

// Raw pixels of an in-memory dataset as features: (N, H * W * C), no padding, each value
// (u8 / 255 - mean[c]) / std[c] (empty mean/std: u8 / 255). F64 for the f64 reference path.
Tensor pixel_features(const data::Dataset& ds, const std::vector<double>& mean, const std::vector<double>& std,
                      DType dtype = DType::F32);
// Per-channel mean and standard deviation of the pixels (u8 / 255) of an in-memory dataset,
// rounded to 4 decimals: the customary constants (Fashion-MNIST 0.2860 / 0.3530, MNIST
// 0.1307 / 0.3081, CIFAR-10 means 0.4914, 0.4822, 0.4465).
void pixel_mean_std(const data::Dataset& ds, std::vector<double>& mean, std::vector<double>& std);

std::vector<int64_t> dataset_labels(const data::Dataset& ds);

// Progress on stderr: a line every ~10 % (or a rewritten line on a terminal).
class Progress {
 public:
  Progress(std::string what, int64_t total);
  void update(int64_t done);
  void finish();

 private:
  std::string what_;
  int64_t total_, last_pct_ = -1;
  double start_;
  bool tty_, active_;
};

}  // namespace mira::apps
