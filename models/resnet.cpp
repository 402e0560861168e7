#include "models/resnet.h"

namespace mira::models {

ResNetConfig ResNetConfig::resnet18() {
  ResNetConfig c;
  c.arch = "resnet18";
  c.blocks = {2, 2, 2, 2};
  c.bottleneck = false;
  return c;
}

ResNetConfig ResNetConfig::resnet50() { return ResNetConfig(); }

ResNetConfig ResNetConfig::tiny() {
  ResNetConfig c;
  c.arch = "resnet_tiny";
  c.widths = {16, 32, 64, 128};
  c.blocks = {1, 1, 1, 1};
  c.bottleneck = false;
  c.stem_width = 16;
  c.cifar_stem = true;
  c.cifar_stem_padding = 1;
  return c;
}

ResNetConfig ResNetConfig::from_name(const std::string& arch) {
  if (arch == "resnet18") return resnet18();
  if (arch == "resnet50") return resnet50();
  if (arch == "resnet_tiny") return tiny();
  MIRA_FAIL("unknown architecture '", arch, "' (expected resnet18, resnet50 or resnet_tiny)");
}

ResNet::ResNet(ParamStore& ps, const ResNetConfig& cfg, const std::string& p) : cfg_(cfg) {
  MIRA_CHECK(cfg.widths.size() == cfg.blocks.size() && !cfg.widths.empty(), "ResNet: widths and blocks differ in length");
  if (cfg.cifar_stem) {
    conv1_ = Conv2d(ps, p + "conv1", 3, cfg.stem_width, 3, 1, cfg.cifar_stem_padding);
  } else {
    conv1_ = Conv2d(ps, p + "conv1", 3, cfg.stem_width, 7, 2, 3);
  }
  bn1_ = BatchNorm(ps, p + "bn1", cfg.stem_width);
  const int expansion = cfg.bottleneck ? 4 : 1;
  int in = cfg.stem_width;
  for (size_t s = 0; s < cfg.widths.size(); ++s) {
    const int width = cfg.widths[s];
    for (int i = 0; i < cfg.blocks[s]; ++i) {
      const int stride = (s > 0 && i == 0) ? 2 : 1;
      const std::string n = p + "layer" + std::to_string(s + 1) + "." + std::to_string(i) + ".";
      Block b;
      if (cfg.bottleneck) {
        b.conv1 = Conv2d(ps, n + "conv1", in, width, 1, 1, 0);
        b.bn1 = BatchNorm(ps, n + "bn1", width);
        b.conv2 = Conv2d(ps, n + "conv2", width, width, 3, stride, 1);
        b.bn2 = BatchNorm(ps, n + "bn2", width);
        b.conv3 = Conv2d(ps, n + "conv3", width, width * 4, 1, 1, 0);
        b.bn3 = BatchNorm(ps, n + "bn3", width * 4);
      } else {
        b.conv1 = Conv2d(ps, n + "conv1", in, width, 3, stride, 1);
        b.bn1 = BatchNorm(ps, n + "bn1", width);
        b.conv2 = Conv2d(ps, n + "conv2", width, width, 3, 1, 1);
        b.bn2 = BatchNorm(ps, n + "bn2", width);
      }
      if (stride != 1 || in != width * expansion) {
        b.has_down = true;
        b.down_conv = Conv2d(ps, n + "downsample.0", in, width * expansion, 1, stride, 0);
        b.down_bn = BatchNorm(ps, n + "downsample.1", width * expansion);
      }
      blocks_.push_back(std::move(b));
      in = width * expansion;
    }
  }
}

std::vector<BatchNorm*> ResNet::batch_norms() {
  std::vector<BatchNorm*> out{&bn1_};
  for (Block& b : blocks_) {
    out.push_back(&b.bn1);
    out.push_back(&b.bn2);
    if (cfg_.bottleneck) out.push_back(&b.bn3);
    if (b.has_down) out.push_back(&b.down_bn);
  }
  return out;
}

void ResNet::init(uint64_t seed) {
  int idx = 0;
  conv1_.init(init_seed(seed, idx++));
  bn1_.init(1.0);
  const double last_gamma = cfg_.zero_init_residual ? 0.0 : 1.0;
  for (Block& b : blocks_) {
    b.conv1.init(init_seed(seed, idx++));
    b.conv2.init(init_seed(seed, idx++));
    b.bn1.init(1.0);
    if (cfg_.bottleneck) {
      b.conv3.init(init_seed(seed, idx++));
      b.bn2.init(1.0);
      b.bn3.init(last_gamma);
    } else {
      b.bn2.init(last_gamma);
    }
    if (b.has_down) {
      b.down_conv.init(init_seed(seed, idx++));
      b.down_bn.init(1.0);
    }
  }
}

Tensor ResNet::forward(const Tensor& x, bool training) {
  MIRA_CHECK(x.ndim() == 4 && x.dim(3) == 3, "ResNet expects (N, H, W, 3) images, got ", x.str());
  Tensor h = bn1_.forward_relu(conv1_.forward(x), training);
  if (!cfg_.cifar_stem) h = ops::max_pool2d(h, 3, 2, 1);
  for (Block& b : blocks_) {
    Tensor identity = b.has_down ? b.down_bn.forward(b.down_conv.forward(h), training) : h;
    Tensor o = b.bn1.forward_relu(b.conv1.forward(h), training);
    if (cfg_.bottleneck) {
      o = b.bn2.forward_relu(b.conv2.forward(o), training);
      o = b.bn3.forward(b.conv3.forward(o), training);
    } else {
      o = b.bn2.forward(b.conv2.forward(o), training);
    }
    h = ops::add_relu(o, identity);
  }
  return ops::global_avg_pool(h);
}

}  // namespace mira::models
