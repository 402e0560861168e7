// CPU reference of the augmentations (see augment.h for the pipeline and the choices). The
// arithmetic follows torchvision 0.14 / PyTorch's CPU kernels closely enough that the golden
// tests hold at 1e-5: where PyTorch computes in f32 (blends, HSV, non-antialiased resampling
// coordinates) we do too; weights of the antialiased resampler are computed in double and
// stored as f32 (PyTorch's f32 version differs by ~1 ulp).
#include "data/augment.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "data/augment_ops.h"
#include "engine/error.h"
#include "engine/rng.h"

namespace mira::data {

// ---- resampling ----------------------------------------------------------------------------

namespace {

double aa_filter(double x, Interp interp) {
  if (x < 0) x = -x;
  if (interp == Interp::Bilinear) return x < 1.0 ? 1.0 - x : 0.0;
  const double a = -0.5;  // Keys / PIL, used by PyTorch's antialiased bicubic
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

float cubic1(float x, float A) {
  return ((A + 2) * x - (A + 3)) * x * x + 1;
}
float cubic2(float x, float A) {
  return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
}

}  // namespace

void resample_table(double x0, double len, int in_size, int out_size, Interp interp, bool antialias, ResampleTable& t) {
  MIRA_CHECK(out_size > 0 && in_size > 0 && len > 0, "resample: sizes must be positive (in ", in_size, ", out ",
             out_size, ", box ", len, ")");
  const int lo = std::max(0, static_cast<int>(std::floor(x0 + 1e-9)));
  const int hi = std::min(in_size, static_cast<int>(std::ceil(x0 + len - 1e-9)));
  MIRA_CHECK(hi > lo, "resample: box [", x0, ", ", x0 + len, ") lies outside an axis of ", in_size);
  const int L = hi - lo;  // pixels of the (virtually) cropped axis
  const double scale = len / out_size;
  t.out_size = out_size;
  t.start.assign(out_size, 0);
  t.count.assign(out_size, 0);
  if (antialias) {
    const double interp_size = interp == Interp::Bilinear ? 2.0 : 4.0;
    const double support = scale >= 1.0 ? interp_size * 0.5 * scale : interp_size * 0.5;
    const double invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
    t.max_taps = static_cast<int>(std::ceil(support)) * 2 + 1;
    t.weights.assign(static_cast<size_t>(out_size) * t.max_taps, 0.f);
    std::vector<double> w(t.max_taps);
    for (int i = 0; i < out_size; ++i) {
      const double center = scale * (i + 0.5);
      const int xmin = std::max(static_cast<int>(std::floor(x0 + center - support + 0.5)), lo);
      const int xmax = std::min(static_cast<int>(std::floor(x0 + center + support + 0.5)), hi);
      const int n = std::min(std::max(xmax - xmin, 0), t.max_taps);
      double total = 0;
      for (int j = 0; j < n; ++j) {
        w[j] = aa_filter(((xmin + j - x0) - center + 0.5) * invscale, interp);
        total += w[j];
      }
      t.start[i] = xmin;
      t.count[i] = n;
      for (int j = 0; j < n; ++j)
        t.weights[static_cast<size_t>(i) * t.max_taps + j] = static_cast<float>(total != 0 ? w[j] / total : 0.0);
    }
    return;
  }
  // Plain interpolation (align_corners=False), PyTorch's f32 coordinate arithmetic; source
  // indices clamped to the crop, merged into one contiguous run of taps.
  const float scale_f = static_cast<float>(len) / static_cast<float>(out_size);
  const float off = static_cast<float>(x0 - lo);  // 0 for an integer box
  t.max_taps = 4;
  t.weights.assign(static_cast<size_t>(out_size) * 4, 0.f);
  for (int i = 0; i < out_size; ++i) {
    float* wt = &t.weights[static_cast<size_t>(i) * 4];
    if (interp == Interp::Bilinear) {
      float src = static_cast<float>(static_cast<double>(scale_f) * (i + 0.5) - 0.5) + off;
      if (src < 0) src = 0;
      int i0 = static_cast<int>(src);
      i0 = std::min(i0, L - 1);
      const float l1 = std::min(std::max(src - static_cast<float>(i0), 0.f), 1.f);
      const float l0 = 1.f - l1;
      t.start[i] = lo + i0;
      if (i0 < L - 1) {
        t.count[i] = 2;
        wt[0] = l0;
        wt[1] = l1;
      } else {
        t.count[i] = 1;
        wt[0] = l0 + l1;
      }
    } else {
      const float src = static_cast<float>(static_cast<double>(scale_f) * (i + 0.5) - 0.5) + off;
      const int in = static_cast<int>(std::floor(src));
      const float x = src - static_cast<float>(in);
      const float A = -0.75f;
      const float c[4] = {cubic2(x + 1.0f, A), cubic1(x, A), cubic1(1.0f - x, A), cubic2(2.0f - x, A)};
      const int first = std::min(std::max(in - 1, 0), L - 1);
      const int last = std::min(std::max(in + 2, 0), L - 1);
      t.start[i] = lo + first;
      t.count[i] = last - first + 1;
      for (int k = 0; k < 4; ++k) wt[std::min(std::max(in - 1 + k, 0), L - 1) - first] += c[k];
    }
  }
}

namespace {

template <typename T>
void resized_crop_impl(const T* src, int H, int W, int C, double top, double left, double bh, double bw, float* dst,
                       int oh, int ow, Interp interp, bool antialias, bool flip, std::vector<float>& scratch) {
  ResampleTable ty, tx;
  resample_table(top, bh, H, oh, interp, antialias, ty);
  resample_table(left, bw, W, ow, interp, antialias, tx);
  int y0 = H, y1 = 0;
  for (int i = 0; i < oh; ++i) {
    y0 = std::min(y0, ty.start[i]);
    y1 = std::max(y1, ty.start[i] + ty.count[i]);
  }
  const float in_scale = std::is_same<T, uint8_t>::value ? 1.0f / 255.0f : 1.0f;
  // Pass 1: horizontal, over the rows the vertical taps need; output columns already flipped.
  scratch.resize(static_cast<size_t>(std::max(y1 - y0, 1)) * ow * C);
  for (int y = y0; y < y1; ++y) {
    const T* row = src + static_cast<size_t>(y) * W * C;
    float* out = scratch.data() + static_cast<size_t>(y - y0) * ow * C;
    for (int x = 0; x < ow; ++x) {
      const float* w = &tx.weights[static_cast<size_t>(x) * tx.max_taps];
      const T* p = row + static_cast<size_t>(tx.start[x]) * C;
      float* o = out + static_cast<size_t>(flip ? ow - 1 - x : x) * C;
      for (int c = 0; c < C; ++c) {
        float acc = 0.f;
        for (int k = 0; k < tx.count[x]; ++k) acc += w[k] * (static_cast<float>(p[k * C + c]) * in_scale);
        o[c] = acc;
      }
    }
  }
  // Pass 2: vertical.
  const size_t row_len = static_cast<size_t>(ow) * C;
  for (int y = 0; y < oh; ++y) {
    float* o = dst + static_cast<size_t>(y) * row_len;
    const float* w = &ty.weights[static_cast<size_t>(y) * ty.max_taps];
    const float* base = scratch.data() + static_cast<size_t>(ty.start[y] - y0) * row_len;
    for (size_t i = 0; i < row_len; ++i) o[i] = 0.f;
    for (int k = 0; k < ty.count[y]; ++k) {
      const float wk = w[k];
      const float* r = base + k * row_len;
      for (size_t i = 0; i < row_len; ++i) o[i] += wk * r[i];
    }
  }
}

}  // namespace

void resized_crop(const uint8_t* src, int H, int W, int C, double top, double left, double bh, double bw, float* dst,
                  int oh, int ow, Interp interp, bool antialias, bool flip, std::vector<float>& scratch) {
  resized_crop_impl(src, H, W, C, top, left, bh, bw, dst, oh, ow, interp, antialias, flip, scratch);
}
void resized_crop(const float* src, int H, int W, int C, double top, double left, double bh, double bw, float* dst,
                  int oh, int ow, Interp interp, bool antialias, bool flip, std::vector<float>& scratch) {
  resized_crop_impl(src, H, W, C, top, left, bh, bw, dst, oh, ow, interp, antialias, flip, scratch);
}

// ---- colour ops ----------------------------------------------------------------------------

void adjust_brightness(float* img, int64_t npix, double factor) {
  const BlendFactors f = blend_factors(factor);
  for (int64_t i = 0; i < npix * 3; ++i) img[i] = aug_blend(img[i], 0.f, f);
}

void adjust_contrast(float* img, int64_t npix, double factor) {
  double sum = 0;
  for (int64_t i = 0; i < npix; ++i) sum += aug_luma(img[3 * i], img[3 * i + 1], img[3 * i + 2]);
  const float mean = static_cast<float>(sum / static_cast<double>(npix));
  const BlendFactors f = blend_factors(factor);
  for (int64_t i = 0; i < npix * 3; ++i) img[i] = aug_blend(img[i], mean, f);
}

void adjust_saturation(float* img, int64_t npix, double factor) {
  const BlendFactors f = blend_factors(factor);
  for (int64_t i = 0; i < npix; ++i) {
    float* p = img + 3 * i;
    const float l = aug_luma(p[0], p[1], p[2]);
    for (int c = 0; c < 3; ++c) p[c] = aug_blend(p[c], l, f);
  }
}

void adjust_hue(float* img, int64_t npix, double factor) {
  MIRA_CHECK(factor >= -0.5 && factor <= 0.5, "hue factor ", factor, " outside [-0.5, 0.5]");
  const float h = static_cast<float>(factor);
  for (int64_t i = 0; i < npix; ++i) aug_hue_px(img[3 * i], img[3 * i + 1], img[3 * i + 2], h);
}

void rgb_to_grayscale(float* img, int64_t npix) {
  for (int64_t i = 0; i < npix; ++i) {
    float* p = img + 3 * i;
    p[0] = p[1] = p[2] = aug_luma(p[0], p[1], p[2]);
  }
}

void solarize(float* img, int64_t n, float threshold) {
  for (int64_t i = 0; i < n; ++i) img[i] = aug_solarize(img[i], threshold);
}

void hflip(float* img, int H, int W, int C) {
  for (int y = 0; y < H; ++y) {
    float* row = img + static_cast<size_t>(y) * W * C;
    for (int x = 0; x < W / 2; ++x)
      for (int c = 0; c < C; ++c) std::swap(row[x * C + c], row[(W - 1 - x) * C + c]);
  }
}

void normalize(float* img, int64_t npix, int C, const float* mean, const float* stddev) {
  for (int64_t i = 0; i < npix; ++i)
    for (int c = 0; c < C; ++c) img[i * C + c] = (img[i * C + c] - mean[c]) / stddev[c];
}

int blur_radius(float sigma) {
  return std::max(1, static_cast<int>(std::ceil(3.0f * sigma)));
}

std::vector<float> gaussian_kernel1d(int radius, float sigma) {
  const int n = 2 * radius + 1;
  std::vector<float> k(n);
  float total = 0;
  for (int i = 0; i < n; ++i) {
    const float x = static_cast<float>(i - radius) / sigma;
    k[i] = std::exp(-0.5f * x * x);
    total += k[i];
  }
  for (float& v : k) v /= total;
  return k;
}

namespace {
// Reflect without repeating the edge (torch's "reflect" padding), valid for any overshoot.
int reflect_index(int i, int n) {
  if (n == 1) return 0;
  const int period = 2 * (n - 1);
  i %= period;
  if (i < 0) i += period;
  return i < n ? i : period - i;
}
}  // namespace

void gaussian_blur(float* img, int H, int W, int C, float sigma, int radius, std::vector<float>& scratch) {
  const std::vector<float> k = gaussian_kernel1d(radius, sigma);
  const int n = 2 * radius + 1;
  scratch.resize(static_cast<size_t>(H) * W * C);
  // horizontal: img -> scratch
  for (int y = 0; y < H; ++y) {
    const float* row = img + static_cast<size_t>(y) * W * C;
    float* out = scratch.data() + static_cast<size_t>(y) * W * C;
    for (int x = 0; x < W; ++x)
      for (int c = 0; c < C; ++c) {
        float acc = 0;
        for (int t = 0; t < n; ++t) acc += k[t] * row[reflect_index(x + t - radius, W) * C + c];
        out[x * C + c] = acc;
      }
  }
  // vertical: scratch -> img
  const size_t row_len = static_cast<size_t>(W) * C;
  for (int y = 0; y < H; ++y) {
    float* out = img + y * row_len;
    for (size_t i = 0; i < row_len; ++i) out[i] = 0.f;
    for (int t = 0; t < n; ++t) {
      const float* r = scratch.data() + reflect_index(y + t - radius, H) * row_len;
      for (size_t i = 0; i < row_len; ++i) out[i] += k[t] * r[i];
    }
  }
}

// ---- recipes -------------------------------------------------------------------------------

MultiCropRecipe MultiCropRecipe::imagenet_2x224_6x96() {
  MultiCropRecipe r;
  r.name = "imagenet";
  ViewSpec g;
  g.size = 224;
  g.scale_min = 0.14f;
  g.scale_max = 1.0f;
  g.p_blur = 1.0f;
  r.views.push_back(g);
  g.p_blur = 0.1f;
  g.p_solarize = 0.2f;
  r.views.push_back(g);
  ViewSpec l;
  l.size = 96;
  l.scale_min = 0.05f;
  l.scale_max = 0.14f;
  l.p_blur = 0.5f;
  for (int i = 0; i < 6; ++i) r.views.push_back(l);
  return r;
}

MultiCropRecipe MultiCropRecipe::cifar() {
  MultiCropRecipe r;
  r.name = "cifar";
  ViewSpec v;
  v.size = 32;
  v.scale_min = 0.2f;
  v.scale_max = 1.0f;
  r.views.push_back(v);
  v.p_solarize = 0.2f;
  r.views.push_back(v);
  r.mean = {0.4914f, 0.4822f, 0.4465f};
  r.std = {0.247f, 0.243f, 0.261f};
  return r;
}

MultiCropRecipe MultiCropRecipe::fashion_mnist() {
  MultiCropRecipe r = cifar();
  r.name = "fashion_mnist";
  r.pad = 2;
  r.mean = {0.2860f, 0.2860f, 0.2860f};
  r.std = {0.3530f, 0.3530f, 0.3530f};
  return r;
}

MultiCropRecipe MultiCropRecipe::by_name(const std::string& name) {
  if (name == "imagenet") return imagenet_2x224_6x96();
  if (name == "cifar") return cifar();
  if (name == "fashion_mnist") return fashion_mnist();
  MIRA_FAIL("unknown multi-crop recipe '", name, "' (expected imagenet, cifar or fashion_mnist)");
}

int MultiCropRecipe::max_size() const {
  int m = 0;
  for (const ViewSpec& v : views) m = std::max(m, v.size);
  return m;
}

// ---- random decisions ----------------------------------------------------------------------

double aug_uniform(uint64_t seed, int64_t epoch, int64_t sample, int view, int slot) {
  // One Philox call serves four consecutive slots. Counter words: (slot / 4 | view << 16,
  // sample low, sample high ^ tag, epoch); the tag keeps these streams apart from tensor init
  // and the sampler, which use the same generator.
  const uint64_t s = static_cast<uint64_t>(sample);
  const Philox4 r =
      philox4x32(static_cast<uint32_t>(slot >> 2) | (static_cast<uint32_t>(view) << 16), static_cast<uint32_t>(s),
                 static_cast<uint32_t>(s >> 32) ^ 0x41554721u, static_cast<uint32_t>(epoch), seed);
  return static_cast<double>(r.v[slot & 3]) * (1.0 / 4294967296.0);
}

void sample_crop(const ViewSpec& v, int H, int W, uint64_t seed, int64_t epoch, int64_t sample, int view,
                 ViewParams& p) {
  MIRA_CHECK(H > 0 && W > 0, "random resized crop of an empty image");
  const double area = static_cast<double>(H) * W;
  const double log_r0 = std::log(static_cast<double>(v.ratio_min)), log_r1 = std::log(static_cast<double>(v.ratio_max));
  for (int t = 0; t < 10; ++t) {
    const double s = v.scale_min + (v.scale_max - v.scale_min) * aug_uniform(seed, epoch, sample, view, 4 * t);
    const double target_area = area * s;
    const double ar = std::exp(log_r0 + (log_r1 - log_r0) * aug_uniform(seed, epoch, sample, view, 4 * t + 1));
    // Python's round(): ties to even, which nearbyint does in the default rounding mode.
    const int w = static_cast<int>(std::nearbyint(std::sqrt(target_area * ar)));
    const int h = static_cast<int>(std::nearbyint(std::sqrt(target_area / ar)));
    if (w > 0 && w <= W && h > 0 && h <= H) {
      p.top = static_cast<int>(aug_uniform(seed, epoch, sample, view, 4 * t + 2) * (H - h + 1));
      p.left = static_cast<int>(aug_uniform(seed, epoch, sample, view, 4 * t + 3) * (W - w + 1));
      p.height = h;
      p.width = w;
      return;
    }
  }
  const double in_ratio = static_cast<double>(W) / H;
  int w = W, h = H;
  if (in_ratio < v.ratio_min) {
    h = static_cast<int>(std::nearbyint(w / static_cast<double>(v.ratio_min)));
  } else if (in_ratio > v.ratio_max) {
    w = static_cast<int>(std::nearbyint(h * static_cast<double>(v.ratio_max)));
  }
  p.top = (H - h) / 2;
  p.left = (W - w) / 2;
  p.height = h;
  p.width = w;
}

ViewParams sample_view_params(const ViewSpec& v, int H, int W, uint64_t seed, int64_t epoch, int64_t sample, int view) {
  ViewParams p;
  auto u = [&](int slot) { return aug_uniform(seed, epoch, sample, view, slot); };
  sample_crop(v, H, W, seed, epoch, sample, view, p);
  p.flip = u(40) < v.p_flip;
  p.jitter = u(41) < v.p_jitter;
  uint8_t perm[4] = {0, 1, 2, 3};
  for (int i = 3; i > 0; --i) {
    const int j = static_cast<int>(u(42 + (3 - i)) * (i + 1));
    std::swap(perm[i], perm[j]);
  }
  std::copy(perm, perm + 4, p.order);
  auto factor = [&](int slot, float amount) {  // torchvision: [max(0, 1 - a), 1 + a]
    const double lo = std::max(0.0, 1.0 - amount), hi = 1.0 + amount;
    return static_cast<float>(lo + (hi - lo) * u(slot));
  };
  p.brightness = v.brightness > 0 ? factor(45, v.brightness) : 1.f;
  p.contrast = v.contrast > 0 ? factor(46, v.contrast) : 1.f;
  p.saturation = v.saturation > 0 ? factor(47, v.saturation) : 1.f;
  p.hue = v.hue > 0 ? static_cast<float>(-v.hue + 2.0 * v.hue * u(48)) : 0.f;
  p.gray = u(49) < v.p_gray;
  p.blur = u(50) < v.p_blur;
  p.sigma = static_cast<float>(v.sigma_min + (v.sigma_max - v.sigma_min) * u(51));
  p.blur_radius = blur_radius(p.sigma);
  p.solarize = u(52) < v.p_solarize;
  return p;
}

// ---- one view ------------------------------------------------------------------------------

void to_rgb_padded(const uint8_t* src, int H, int W, int C, int pad, std::vector<uint8_t>& out) {
  MIRA_CHECK(C == 1 || C == 3, "images must have 1 or 3 channels, not ", C);
  const int OH = H + 2 * pad, OW = W + 2 * pad;
  out.assign(static_cast<size_t>(OH) * OW * 3, 0);
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x) {
      uint8_t* o = &out[(static_cast<size_t>(y + pad) * OW + (x + pad)) * 3];
      const uint8_t* s = src + (static_cast<size_t>(y) * W + x) * C;
      o[0] = s[0];
      o[1] = s[C == 3 ? 1 : 0];
      o[2] = s[C == 3 ? 2 : 0];
    }
}

void augment_view(const uint8_t* src, int H, int W, int orig_h, int orig_w, const ViewParams& p, const ViewSpec& v,
                  const MultiCropRecipe& recipe, float* out, AugScratch& scratch) {
  const double sy = static_cast<double>(H) / orig_h, sx = static_cast<double>(W) / orig_w;
  const int S = v.size;
  const int64_t npix = static_cast<int64_t>(S) * S;
  resized_crop(src, H, W, 3, p.top * sy, p.left * sx, p.height * sy, p.width * sx, out, S, S, v.interp,
               recipe.antialias, p.flip, scratch.resize);
  for (int64_t i = 0; i < npix * 3; ++i) out[i] = aug_clamp01(out[i]);
  if (p.jitter) {
    for (uint8_t op : p.order) {
      if (op == 0 && v.brightness > 0) adjust_brightness(out, npix, p.brightness);
      if (op == 1 && v.contrast > 0) adjust_contrast(out, npix, p.contrast);
      if (op == 2 && v.saturation > 0) adjust_saturation(out, npix, p.saturation);
      if (op == 3 && v.hue > 0) adjust_hue(out, npix, p.hue);
    }
  }
  if (p.gray) rgb_to_grayscale(out, npix);
  if (p.blur) gaussian_blur(out, S, S, 3, p.sigma, p.blur_radius, scratch.blur);
  if (p.solarize) solarize(out, npix * 3, static_cast<float>(128.0 / 255.0));
  normalize(out, npix, 3, recipe.mean.data(), recipe.std.data());
}

}  // namespace mira::data
