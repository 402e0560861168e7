// labels: gpu
// CUDA augmentation against the CPU reference with the same seed: the same ViewParams go to
// both (so crop boxes and decisions are identical by construction), and the pixels must agree
// to 2e-4 in normalised units for f32 output (f32 weights computed on the fly vs tabulated from
// double, FMA contraction, a different summation order of contrast's mean) and to bf16's
// resolution (2^-8 relative) for bf16 output. Covers every recipe, forced decisions (all ops
// on, all off), both interpolations, antialias on / off, and DCT-style fractional boxes.
#include <cstring>

#include "augment_images.h"
#include "data/augment.h"
#include "data/augment_cuda.h"
#include "engine/cuda_backend.h"
#include "testing.h"

using namespace mira;
using namespace mira::data;
using mira::testing::Images;
using mira::testing::make_images;

namespace {

// Runs one view over all images on both backends; forced: -1 = drawn, 0 = all off, 1 = all on.
void compare_view(const Images& im, const MultiCropRecipe& r, int view, int forced, DType out_type, int epoch,
                  bool fractional_box) {
  const ViewSpec& v = r.views[view];
  const int n = static_cast<int>(im.h.size()), S = v.size;
  std::vector<ViewParams> params(n);
  std::vector<GpuViewJob> jobs(n);
  std::vector<float> ref(static_cast<size_t>(n) * S * S * 3);
  AugScratch scratch;
  for (int i = 0; i < n; ++i) {
    // params drawn on a "full-size" image twice as large as the source when fractional_box: the
    // box then maps to half-pixel coordinates, as after a 4/8 DCT-scaled decode
    const int oh = fractional_box ? 2 * im.h[i] + 1 : im.h[i], ow = fractional_box ? 2 * im.w[i] + 1 : im.w[i];
    ViewParams p = sample_view_params(v, oh, ow, 17, epoch, i, view);
    if (forced >= 0) {
      p.flip = p.jitter = p.gray = p.blur = p.solarize = forced == 1;
    }
    params[i] = p;
    augment_view(im.bytes.data() + im.offset[i], im.h[i], im.w[i], oh, ow, p, v, r,
                 ref.data() + static_cast<size_t>(i) * S * S * 3, scratch);
    jobs[i] = make_gpu_job(p, v, im.offset[i], im.h[i], im.w[i], oh, ow);
  }
  Tensor src = Tensor::empty({static_cast<int64_t>(im.bytes.size())}, DType::U8);
  std::memcpy(src.data<uint8_t>(), im.bytes.data(), im.bytes.size());
  Tensor d_src = src.to(Device::cuda());
  Tensor d_out = Tensor::empty({n, S, S, 3}, out_type, Device::cuda());
  GpuAugmenter aug;
  aug.run(static_cast<const uint8_t*>(d_src.raw()), jobs, v, r, d_out.raw(), out_type);
  cuda::synchronize();
  const std::vector<double> got = d_out.to(Device::cpu(), DType::F32).to_vector();
  std::vector<double> want(ref.begin(), ref.end());
  const testing::Tol tol = out_type == DType::BF16 ? testing::Tol{2e-4, 1.0 / 128} : testing::Tol{2e-4, 0};
  CHECK(testing::allclose(got, want, tol,
                          r.name + " view " + std::to_string(view) + " forced " + std::to_string(forced) + " " +
                              dtype_name(out_type) + (fractional_box ? " fractional" : "")));
}

}  // namespace

TEST_CASE("GPU augmentation matches the CPU reference, every recipe") {
  const Images im = make_images(12, 3);
  for (const char* name : {"imagenet", "cifar", "fashion_mnist"}) {
    MultiCropRecipe r = MultiCropRecipe::by_name(name);
    for (int view = 0; view < static_cast<int>(r.views.size()); view += (r.views.size() > 3 ? 3 : 1))
      for (int forced : {-1, 0, 1}) compare_view(im, r, view, forced, DType::F32, 0, false);
  }
}

TEST_CASE("GPU augmentation: bf16 output, fractional boxes, bilinear, no antialias") {
  const Images im = make_images(8, 9);
  MultiCropRecipe r = MultiCropRecipe::imagenet_2x224_6x96();
  compare_view(im, r, 0, -1, DType::BF16, 1, false);
  compare_view(im, r, 2, 1, DType::F32, 2, true);
  for (ViewSpec& v : r.views) v.interp = Interp::Bilinear;
  compare_view(im, r, 1, -1, DType::F32, 3, false);
  r.antialias = false;
  compare_view(im, r, 2, 1, DType::F32, 4, false);
  for (ViewSpec& v : r.views) v.interp = Interp::Bicubic;
  compare_view(im, r, 0, 1, DType::F32, 5, true);
}
