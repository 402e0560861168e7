// Per-pixel colour operations shared by the CPU reference (data/augment.cpp) and the CUDA
// kernels (data/augment_cuda.cu), so both compute the same f32 expressions in the same order.
// Each follows torchvision's tensor implementation (transforms/functional_tensor.py) on float
// images in [0, 1], including where it rounds: python scalars are cast to f32 before they meet a
// pixel, blends are `r * a + (1 - r) * b` then clamped to [0, 1].
#pragma once

#include <cmath>
#include <cstdint>

#include "engine/rng.h"  // MIRA_HD

namespace mira::data {

// torchvision's rgb_to_grayscale weights (TF's; PIL uses 0.299).
constexpr float kLumaR = 0.2989f, kLumaG = 0.587f, kLumaB = 0.114f;

MIRA_HD float aug_clamp01(float x) {
  return x < 0.f ? 0.f : (x > 1.f ? 1.f : x);
}
MIRA_HD float aug_luma(float r, float g, float b) {
  return kLumaR * r + kLumaG * g + kLumaB * b;
}

// _blend(img1, img2, ratio): ratio and 1 - ratio (computed in double, like python) cast to f32.
struct BlendFactors {
  float a, b;
};
inline BlendFactors blend_factors(double ratio) {
  return {static_cast<float>(ratio), static_cast<float>(1.0 - ratio)};
}
MIRA_HD float aug_blend(float x, float y, BlendFactors f) {
  return aug_clamp01(f.a * x + f.b * y);
}

// adjust_hue on one pixel: _rgb2hsv, h = (h + factor) mod 1, _hsv2rgb, term by term.
MIRA_HD void aug_hue_px(float& r, float& g, float& b, float hue) {
  const float maxc = fmaxf(r, fmaxf(g, b));
  const float minc = fminf(r, fminf(g, b));
  const bool eqc = maxc == minc;
  const float cr = maxc - minc;
  const float s = cr / (eqc ? 1.f : maxc);
  const float crd = eqc ? 1.f : cr;
  const float rc = (maxc - r) / crd, gc = (maxc - g) / crd, bc = (maxc - b) / crd;
  const float hr = (maxc == r) ? (bc - gc) : 0.f;
  const float hg = (maxc == g && maxc != r) ? (2.0f + rc - bc) : 0.f;
  const float hb = (maxc != g && maxc != r) ? (4.0f + gc - rc) : 0.f;
  float h = (hr + hg) + hb;
  h = fmodf(h / 6.0f + 1.0f, 1.0f);
  // torch.remainder(x, 1.0) = x - floor(x)
  h = h + hue;
  h = h - floorf(h);
  const float v = maxc;
  const float h6 = h * 6.0f;
  const float fi = floorf(h6);
  const float f = h6 - fi;
  int i = static_cast<int>(fi);
  const float p = aug_clamp01(v * (1.0f - s));
  const float q = aug_clamp01(v * (1.0f - s * f));
  const float t = aug_clamp01(v * (1.0f - s * (1.0f - f)));
  i = ((i % 6) + 6) % 6;
  switch (i) {
    case 0:
      r = v;
      g = t;
      b = p;
      break;
    case 1:
      r = q;
      g = v;
      b = p;
      break;
    case 2:
      r = p;
      g = v;
      b = t;
      break;
    case 3:
      r = p;
      g = q;
      b = v;
      break;
    case 4:
      r = t;
      g = p;
      b = v;
      break;
    default:
      r = v;
      g = p;
      b = q;
      break;
  }
}

// solarize(img, threshold): pixels >= threshold are inverted (PIL's rule on u8: 128 -> 128/255).
MIRA_HD float aug_solarize(float x, float threshold) {
  return x >= threshold ? 1.0f - x : x;
}

}  // namespace mira::data
