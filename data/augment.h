// Augmentations, CPU reference: every op of the MIRA multi-crop recipe (spec §5) on f32 HWC
// images in [0, 1], each matching torchvision's tensor implementation (tests/test_augment.cpp
// compares against fixtures made by tools/gen_golden.py). The CUDA pipeline
// (data/augment_cuda.cu) takes the same ViewParams, so both make the same decisions.
//
// Randomness: every random decision of a view is drawn from Philox keyed by the seed and
// counted by (epoch, sample, view, slot), with a fixed slot per decision (table in
// sample_view_params), so the result does not depend on thread count, rank count, batch
// composition or on how many tries an earlier decision needed.
//
// Pipeline of one view (order of spec §5): RandomResizedCrop (crop box sampled as torchvision's
// get_params, then a separable resize of the box), clamp to [0, 1], ColorJitter (p_jitter; the
// four ops in a random order), grayscale (p_gray), Gaussian blur (p_blur), solarize
// (p_solarize), horizontal flip (p_flip), normalise. The flip is folded into the resize (it
// commutes with every later op: they are pointwise, or, for the blur, mirror-symmetric).
//
// Resize: `antialias = true` is torchvision's resize(antialias=True) (= PIL's resampling:
// a filter stretched by the downscale factor, Keys a = -0.5 for bicubic, weights renormalised
// at the edges); torchvision >= 0.17 uses it by default on tensors and DINO / SwAV used PIL, so
// the recipes use it, for up- and downscaling alike. `antialias = false` is plain
// F.interpolate(align_corners=False): a = -0.75 bicubic, edge pixels repeated. torchvision does
// not clamp a float bicubic result; the pipeline clamps after the resize, as PIL's u8 output
// would be (without PIL's rounding to 1/255).
//
// Gaussian blur: kernel radius r = ceil(3 sigma) (size 2r + 1, so at most 13 taps for
// sigma = 2), reflect padding, exactly torchvision's gaussian_blur(kernel_size = 2r + 1, sigma).
// Beyond 3 sigma the Gaussian holds 0.27 % of its mass; torchvision recipes with a fixed 23-tap
// kernel differ from this by less than that.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace mira::data {

enum class Interp : uint8_t { Bilinear, Bicubic };

// ---- single ops (the torchvision-matching reference; tests call them one by one) ----------

// Per-output-index taps of a 1-D resample: output i reads input [start[i], start[i] + count[i])
// with weights[i * max_taps + k].
struct ResampleTable {
  int out_size = 0, max_taps = 0;
  std::vector<int> start, count;
  std::vector<float> weights;
};
// The source region [x0, x0 + len) of an axis of in_size pixels, resampled to out_size pixels.
// Taps are limited to the integer pixels [floor(x0), ceil(x0 + len)) of the region, as if it
// had been cropped first (with an integer box this is exactly torchvision's crop-then-resize).
void resample_table(double x0, double len, int in_size, int out_size, Interp interp, bool antialias, ResampleTable& t);

// dst (oh, ow, C) = resize of the box (top, left, bh, bw) of src (H, W, C); src is u8 (scaled by
// 1/255) or f32. flip mirrors the output horizontally. No clamping. scratch is reused.
void resized_crop(const uint8_t* src, int H, int W, int C, double top, double left, double bh, double bw, float* dst,
                  int oh, int ow, Interp interp, bool antialias, bool flip, std::vector<float>& scratch);
void resized_crop(const float* src, int H, int W, int C, double top, double left, double bh, double bw, float* dst,
                  int oh, int ow, Interp interp, bool antialias, bool flip, std::vector<float>& scratch);

// Colour ops on HWC RGB f32 in place; npix = H * W.
void adjust_brightness(float* img, int64_t npix, double factor);
void adjust_contrast(float* img, int64_t npix, double factor);
void adjust_saturation(float* img, int64_t npix, double factor);
void adjust_hue(float* img, int64_t npix, double factor);  // factor in [-0.5, 0.5]
void rgb_to_grayscale(float* img, int64_t npix);           // three equal channels
void solarize(float* img, int64_t n, float threshold);     // n = numel
void hflip(float* img, int H, int W, int C);
void normalize(float* img, int64_t npix, int C, const float* mean, const float* stddev);
// torchvision's _get_gaussian_kernel1d(2r + 1, sigma).
std::vector<float> gaussian_kernel1d(int radius, float sigma);
int blur_radius(float sigma);  // ceil(3 sigma), at least 1
void gaussian_blur(float* img, int H, int W, int C, float sigma, int radius, std::vector<float>& scratch);

// ---- random decisions ----------------------------------------------------------------------

struct ViewSpec {
  int size = 224;  // square output side
  float scale_min = 0.14f, scale_max = 1.0f;
  float ratio_min = 3.0f / 4.0f, ratio_max = 4.0f / 3.0f;
  Interp interp = Interp::Bicubic;
  float p_flip = 0.5f;
  float p_jitter = 0.8f;
  float brightness = 0.4f, contrast = 0.4f, saturation = 0.2f, hue = 0.1f;  // 0 disables one
  float p_gray = 0.2f;
  float p_blur = 0.0f;
  float sigma_min = 0.1f, sigma_max = 2.0f;
  float p_solarize = 0.0f;
};

struct MultiCropRecipe {
  std::string name;
  std::vector<ViewSpec> views;
  std::array<float, 3> mean{0.485f, 0.456f, 0.406f};
  std::array<float, 3> std{0.229f, 0.224f, 0.225f};
  bool antialias = true;
  int pad = 0;  // zero border added around the source before cropping (Fashion-MNIST 28 -> 32)

  // Spec §5: 2 x 224 (bicubic, scale (0.14, 1); blur p 1.0 / 0.1, solarize p 0 / 0.2) + 6 x 96
  // (scale (0.05, 0.14), blur p 0.5).
  static MultiCropRecipe imagenet_2x224_6x96();
  // Spec §5 CIFAR: 2 x 32, scale (0.2, 1), no blur, solarize p 0.2 on view 2, CIFAR mean/std.
  // Bicubic, like the ImageNet views (the spec names no interpolation for CIFAR).
  static MultiCropRecipe cifar();
  // 28x28 gray: padded by 2 to 32x32, replicated to RGB, then the CIFAR views; Fashion-MNIST's
  // mean / std (0.2860 / 0.3530) on every channel.
  static MultiCropRecipe fashion_mnist();
  // "imagenet", "cifar", "fashion_mnist".
  static MultiCropRecipe by_name(const std::string& name);
  int max_size() const;
};

// Every random decision of one view. The crop box is in the coordinates of the (padded) image
// the params were sampled for; a DCT-downscaled decode maps it by its scale.
struct ViewParams {
  int top = 0, left = 0, height = 0, width = 0;
  bool flip = false;
  bool jitter = false;
  uint8_t order[4] = {0, 1, 2, 3};  // 0 brightness, 1 contrast, 2 saturation, 3 hue
  float brightness = 1.f, contrast = 1.f, saturation = 1.f, hue = 0.f;
  bool gray = false;
  bool blur = false;
  float sigma = 0.f;
  int blur_radius = 0;
  bool solarize = false;
};

// Uniform [0, 1) double for one decision slot (32 random bits).
double aug_uniform(uint64_t seed, int64_t epoch, int64_t sample, int view, int slot);

// torchvision's RandomResizedCrop.get_params with our draws: slots 4t..4t+3 for try t < 10
// (scale, log-ratio, top, left); falls back to the centre crop with the ratio clamped.
void sample_crop(const ViewSpec& v, int H, int W, uint64_t seed, int64_t epoch, int64_t sample, int view,
                 ViewParams& p);
// All decisions of a view on an H x W image (after padding). Slots: 0-39 crop, 40 flip, 41 jitter,
// 42-44 jitter order (Fisher-Yates as torch.randperm(4)), 45-48 brightness, contrast,
// saturation, hue factors, 49 gray, 50 blur, 51 sigma, 52 solarize. Decisions with
// probability 0 or 1 still use their slot (so a recipe change never shifts other draws).
ViewParams sample_view_params(const ViewSpec& v, int H, int W, uint64_t seed, int64_t epoch, int64_t sample, int view);

// ---- one view, end to end ------------------------------------------------------------------

struct AugScratch {
  std::vector<float> resize, blur;
};

// src: u8 HWC, C = 3, already padded; it may be a DCT-downscaled decode of the image the params
// were sampled on (orig_h x orig_w), whose box is then scaled to src coordinates. Writes the
// normalised view (v.size, v.size, 3) f32 to out.
void augment_view(const uint8_t* src, int H, int W, int orig_h, int orig_w, const ViewParams& p, const ViewSpec& v,
                  const MultiCropRecipe& recipe, float* out, AugScratch& scratch);

// Gray or padded sources become the RGB, padded image the views are cut from.
void to_rgb_padded(const uint8_t* src, int H, int W, int C, int pad, std::vector<uint8_t>& out);

}  // namespace mira::data
