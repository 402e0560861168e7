#include "apps/common/eval_transform.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <thread>

#include "data/jpeg.h"
#include "engine/error.h"

namespace mira::apps {

EvalTransform EvalTransform::imagenet() {
  EvalTransform t;
  t.resize = 256;
  t.crop = 224;
  t.mean = {0.485f, 0.456f, 0.406f};
  t.std = {0.229f, 0.224f, 0.225f};
  return t;
}

EvalTransform EvalTransform::cifar() {
  return EvalTransform();
}

EvalTransform EvalTransform::gray28_to_32() {
  EvalTransform t;
  t.pad = 2;
  return t;
}

EvalTransform EvalTransform::for_dataset(const data::Dataset& ds) {
  if (!ds.in_memory()) return imagenet();
  if (ds.height() == 28 && ds.width() == 28) return gray28_to_32();
  return cifar();
}

EvalTransform EvalTransform::from_recipe(const data::MultiCropRecipe& recipe, const data::Dataset& ds) {
  EvalTransform t = for_dataset(ds);
  t.mean = recipe.mean;
  t.std = recipe.std;
  t.pad = recipe.pad;
  t.antialias = recipe.antialias;
  return t;
}

EvalTransform EvalTransform::by_name(const std::string& name, const data::Dataset& ds) {
  if (name == "auto") return for_dataset(ds);
  if (name == "imagenet") return imagenet();
  if (name == "cifar") return cifar();
  if (name == "gray28") return gray28_to_32();
  MIRA_FAIL("unknown eval transform '", name, "' (expected auto, imagenet, cifar or gray28)");
}

void EvalTransform::out_size(int H, int W, int& oh, int& ow) const {
  int h = H + 2 * pad, w = W + 2 * pad;
  if (resize > 0) {
    // torchvision Resize(int): the shorter side becomes `resize`, the longer int(resize * long / short).
    if (h <= w) {
      w = static_cast<int>(static_cast<int64_t>(resize) * w / h);
      h = resize;
    } else {
      h = static_cast<int>(static_cast<int64_t>(resize) * h / w);
      w = resize;
    }
  }
  if (crop > 0) {
    MIRA_CHECK(crop <= h && crop <= w, "eval transform: centre crop ", crop, " larger than the ", h, "x", w, " image");
    h = w = crop;
  }
  oh = h;
  ow = w;
}

std::string EvalTransform::str() const {
  std::ostringstream os;
  os << "pad " << pad << ", resize " << resize << ", centre crop " << crop;
  if (normalize)
    os << ", mean (" << mean[0] << ", " << mean[1] << ", " << mean[2] << "), std (" << std[0] << ", " << std[1] << ", "
       << std[2] << ")";
  else
    os << ", no normalisation";
  return os.str();
}

void eval_transform_image(const uint8_t* src, int H, int W, int C, const EvalTransform& t, float* out,
                          std::vector<float>& scratch) {
  MIRA_CHECK(C == 1 || C == 3, "eval transform: images must have 1 or 3 channels, got ", C);
  // RGB u8 with the zero border: the image every later step sees.
  std::vector<uint8_t> rgb;
  data::to_rgb_padded(src, H, W, C, t.pad, rgb);
  const int h = H + 2 * t.pad, w = W + 2 * t.pad;
  int oh, ow;
  t.out_size(H, W, oh, ow);
  // Resized size before the crop (equal to h, w without a resize).
  int rh = h, rw = w;
  if (t.resize > 0) {
    EvalTransform no_crop = t;
    no_crop.crop = 0;
    no_crop.pad = 0;
    no_crop.out_size(h, w, rh, rw);
  }
  std::vector<float> resized(static_cast<size_t>(rh) * rw * 3);
  if (t.resize > 0) {
    data::resized_crop(rgb.data(), h, w, 3, 0.0, 0.0, h, w, resized.data(), rh, rw, t.interp, t.antialias, false,
                       scratch);
    for (float& v : resized) v = std::min(1.0f, std::max(0.0f, v));
  } else {
    for (size_t i = 0; i < resized.size(); ++i) resized[i] = rgb[i] * (1.0f / 255.0f);
  }
  // torchvision CenterCrop: top = int(round((h - th) / 2)), Python's round: halves to even.
  const int top = static_cast<int>(std::nearbyint((rh - oh) / 2.0));
  const int left = static_cast<int>(std::nearbyint((rw - ow) / 2.0));
  for (int y = 0; y < oh; ++y)
    for (int x = 0; x < ow; ++x)
      for (int c = 0; c < 3; ++c) {
        float v = resized[(static_cast<size_t>(top + y) * rw + left + x) * 3 + c];
        if (t.normalize) v = (v - t.mean[c]) / t.std[c];
        out[(static_cast<size_t>(y) * ow + x) * 3 + c] = v;
      }
}

Tensor eval_transform_batch(const data::Dataset& ds, const EvalTransform& t, const std::vector<int64_t>& indices,
                            int threads) {
  const int64_t n = static_cast<int64_t>(indices.size());
  int oh, ow;
  if (ds.in_memory()) {
    t.out_size(ds.height(), ds.width(), oh, ow);
  } else {
    MIRA_CHECK(t.crop > 0, "eval transform: an ImageFolder dataset needs a centre crop (images differ in size)");
    oh = ow = t.crop;
  }
  Tensor out = Tensor::empty({n, oh, ow, 3});
  float* dst = out.data<float>();
  const size_t per = static_cast<size_t>(oh) * ow * 3;
  auto one = [&](int64_t i, std::vector<float>& scratch) {
    const int64_t s = indices[i];
    MIRA_CHECK(s >= 0 && s < ds.size(), "eval transform: index ", s, " outside the dataset of ", ds.size());
    if (ds.in_memory()) {
      const size_t img = static_cast<size_t>(ds.height()) * ds.width() * ds.channels();
      eval_transform_image(ds.pixels() + s * img, ds.height(), ds.width(), ds.channels(), t, dst + i * per, scratch);
    } else {
      const auto& folder = dynamic_cast<const data::ImageFolderDataset&>(ds);
      data::Decoded d = data::decode_image_file(folder.file(s));
      eval_transform_image(d.image.pixels.data(), d.image.h, d.image.w, d.image.c, t, dst + i * per, scratch);
    }
  };
  if (threads <= 0) threads = ds.in_memory() ? 1 : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  threads = static_cast<int>(std::min<int64_t>(threads, std::max<int64_t>(n, 1)));
  if (threads <= 1) {
    std::vector<float> scratch;
    for (int64_t i = 0; i < n; ++i) one(i, scratch);
    return out;
  }
  std::vector<std::thread> pool;
  std::vector<std::string> errors(threads);
  for (int w = 0; w < threads; ++w) {
    pool.emplace_back([&, w] {
      std::vector<float> scratch;
      try {
        for (int64_t i = w; i < n; i += threads) one(i, scratch);
      } catch (const std::exception& e) {
        errors[w] = e.what();
      }
    });
  }
  for (auto& th : pool) th.join();
  for (const auto& e : errors) MIRA_CHECK(e.empty(), e);
  return out;
}

}  // namespace mira::apps
