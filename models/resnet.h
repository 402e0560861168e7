// torchvision's ResNet (v1.5: the stride of a bottleneck sits on its 3x3 conv) without the fc
// layer, NHWC. ResNet-18 (BasicBlock, [2,2,2,2]), ResNet-50 (Bottleneck, [3,4,6,3]), a CIFAR
// stem (3x3 stride-1 conv, padding 1 or 2, no max-pool) and a tiny variant for tests and CPU
// runs. Tensor names follow torchvision's state dict so checkpoints load into PyTorch.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "models/layers.h"

namespace mira::models {

struct ResNetConfig {
  std::string arch = "resnet50";       // resnet18 | resnet50 | resnet_tiny
  std::vector<int> widths{64, 128, 256, 512};
  std::vector<int> blocks{3, 4, 6, 3};
  bool bottleneck = true;
  int stem_width = 64;
  bool cifar_stem = false;
  int cifar_stem_padding = 1;          // official MIRA CIFAR code: 2; most CIFAR code: 1
  bool zero_init_residual = true;

  static ResNetConfig resnet18();
  static ResNetConfig resnet50();
  // widths 16/32/64/128, one BasicBlock per stage, CIFAR stem with padding 1.
  static ResNetConfig tiny();
  static ResNetConfig from_name(const std::string& arch);
  int feature_dim() const { return widths.back() * (bottleneck ? 4 : 1); }
};

class ResNet {
 public:
  // Declares every tensor under `prefix` (e.g. "backbone.") in ps; call init() after finalize().
  ResNet(ParamStore& ps, const ResNetConfig& cfg, const std::string& prefix = "");
  // Kaiming-normal fan_out convs, BN gamma 1 / beta 0, last BN of each block 0 when
  // zero_init_residual (as torchvision).
  void init(uint64_t seed);
  // x (N, H, W, 3) -> pooled features (N, feature_dim)
  Tensor forward(const Tensor& x, bool training);
  const ResNetConfig& config() const { return cfg_; }
  std::vector<BatchNorm*> batch_norms();

 private:
  struct Block {
    Conv2d conv1, conv2, conv3;
    BatchNorm bn1, bn2, bn3;
    bool has_down = false;
    Conv2d down_conv;
    BatchNorm down_bn;
  };
  ResNetConfig cfg_;
  Conv2d conv1_;
  BatchNorm bn1_;
  std::vector<Block> blocks_;
};

}  // namespace mira::models
