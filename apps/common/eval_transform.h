// The evaluation transform (spec §6): what every evaluation app, and mira_pretrain's
// end-of-run k-NN, applies to an image before the backbone sees it.
// - ImageNet-like data (ImageFolder): resize the shorter side to 256 (bicubic, antialiased as
//   PIL / torchvision), centre crop 224 (torchvision's CenterCrop rounding), ImageNet mean/std.
// - 32 px data (CIFAR): no geometric change, CIFAR mean/std.
// - 28 px gray data (Fashion-MNIST): replicated to RGB, zero-padded by 2 to 32x32 (the project's
//   pre-training preset), CIFAR mean/std.
// Output: f32 NHWC with 3 channels.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "data/augment.h"
#include "data/dataset.h"
#include "engine/tensor.h"

namespace mira::apps {

struct EvalTransform {
  int resize = 0;  // shorter side resized to this first (0: no resize)
  int crop = 0;    // centre crop side after the resize (0: keep the whole image)
  int pad = 0;     // zero border added around the (RGB) image first
  data::Interp interp = data::Interp::Bicubic;
  bool antialias = true;
  bool normalize = true;  // false: values stay in [0, 1]
  std::array<float, 3> mean{0.4914f, 0.4822f, 0.4465f};
  std::array<float, 3> std{0.247f, 0.243f, 0.261f};

  static EvalTransform imagenet();      // 256 / 224, ImageNet mean/std
  static EvalTransform cifar();         // CIFAR mean/std only
  static EvalTransform gray28_to_32();  // pad 2, CIFAR mean/std
  // imagenet() for ImageFolder trees, gray28_to_32() for 28x28 in-memory data, cifar() otherwise.
  static EvalTransform for_dataset(const data::Dataset& ds);
  // The normalisation and padding of a pre-training recipe (so the features are taken on
  // images normalised as in training), geometry as for_dataset would choose it.
  static EvalTransform from_recipe(const data::MultiCropRecipe& recipe, const data::Dataset& ds);
  // "auto" (for_dataset), "imagenet", "cifar", "gray28": the apps' --transform option.
  static EvalTransform by_name(const std::string& name, const data::Dataset& ds);

  // Output size for an H x W input (after pad, resize, crop).
  void out_size(int H, int W, int& oh, int& ow) const;
  std::string str() const;
};

// One u8 HWC image (C = 1 or 3) -> out (oh, ow, 3) f32 (oh, ow from out_size).
void eval_transform_image(const uint8_t* src, int H, int W, int C, const EvalTransform& t, float* out,
                          std::vector<float>& scratch);

// Images `indices` of ds -> (n, oh, ow, 3) f32 CPU tensor. ImageFolder images are decoded here
// (several threads); an ImageFolder needs a crop so that every image has the same size.
Tensor eval_transform_batch(const data::Dataset& ds, const EvalTransform& t, const std::vector<int64_t>& indices,
                            int threads = 0);

}  // namespace mira::apps
