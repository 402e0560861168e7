// CUDA kernels of the view augmentation (see augment_cuda.h for the kernel plan). The colour
// math is data/augment_ops.h, shared with the CPU reference; the resampling weights follow
// data/augment.cpp's resample_table, evaluated in f32 on the fly instead of tabulated.
#include "data/augment_kernels.cuh"

#include <cuda_bf16.h>

#include "data/augment_ops.h"
#include "kernels/cuda/check.h"

namespace mira::data {

namespace {

__device__ float aa_filter_dev(float x, int interp) {
  x = fabsf(x);
  if (interp == 0) return x < 1.f ? 1.f - x : 0.f;
  const float a = -0.5f;
  if (x < 1.f) return ((a + 2.f) * x - (a + 3.f)) * x * x + 1.f;
  if (x < 2.f) return (((x - 5.f) * x + 8.f) * x - 4.f) * a;
  return 0.f;
}
__device__ float cubic1_dev(float x, float A) {
  return ((A + 2) * x - (A + 3)) * x * x + 1;
}
__device__ float cubic2_dev(float x, float A) {
  return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
}

// Taps of output index i on one axis: source indices idx[k], weights w[k], k < n. Mirrors
// resample_table; kMaxTaps bounds the antialiased support (downscale <= 7.5x bicubic, 15x
// bilinear), which the loader's DCT downscaling keeps us well inside; wider filters are
// truncated to their central taps and renormalised.
constexpr int kMaxTaps = 32;
struct Taps {
  int n;
  int idx[kMaxTaps];
  float w[kMaxTaps];
};

__device__ void axis_taps(int i, float x0, float len, int in_size, int out_size, int interp, int aa, Taps& t) {
  const int lo = max(0, static_cast<int>(floorf(x0 + 1e-6f)));
  const int hi = min(in_size, static_cast<int>(ceilf(x0 + len - 1e-6f)));
  const int L = hi - lo;
  const float scale = len / out_size;
  if (aa) {
    const float isz = interp == 0 ? 2.f : 4.f;
    const float support = scale >= 1.f ? isz * 0.5f * scale : isz * 0.5f;
    const float invscale = scale >= 1.f ? 1.f / scale : 1.f;
    const float center = scale * (i + 0.5f);
    int xmin = max(static_cast<int>(floorf(x0 + center - support + 0.5f)), lo);
    int xmax = min(static_cast<int>(floorf(x0 + center + support + 0.5f)), hi);
    if (xmax - xmin > kMaxTaps) {
      const int mid = (xmin + xmax) / 2;
      xmin = mid - kMaxTaps / 2;
      xmax = xmin + kMaxTaps;
    }
    float total = 0.f;
    t.n = max(xmax - xmin, 0);
    for (int k = 0; k < t.n; ++k) {
      t.idx[k] = xmin + k;
      t.w[k] = aa_filter_dev(((xmin + k - x0) - center + 0.5f) * invscale, interp);
      total += t.w[k];
    }
    const float inv = total != 0.f ? 1.f / total : 0.f;
    for (int k = 0; k < t.n; ++k) t.w[k] *= inv;
    return;
  }
  const float off = x0 - lo;
  const float src = scale * (i + 0.5f) - 0.5f + off;
  if (interp == 0) {
    const float s = fmaxf(src, 0.f);
    const int i0 = min(static_cast<int>(s), L - 1);
    const float l1 = fminf(fmaxf(s - i0, 0.f), 1.f);
    t.n = 2;
    t.idx[0] = lo + i0;
    t.w[0] = 1.f - l1;
    t.idx[1] = lo + min(i0 + 1, L - 1);
    t.w[1] = l1;
    return;
  }
  const int in = static_cast<int>(floorf(src));
  const float x = src - in;
  const float A = -0.75f;
  const float c[4] = {cubic2_dev(x + 1.f, A), cubic1_dev(x, A), cubic1_dev(1.f - x, A), cubic2_dev(2.f - x, A)};
  t.n = 4;
  for (int k = 0; k < 4; ++k) {
    t.idx[k] = lo + min(max(in - 1 + k, 0), L - 1);
    t.w[k] = c[k];
  }
}

// One thread per output pixel (x fastest), blockIdx.y = sample. Writes clamped f32 RGB.
__global__ void resize_crop_kernel(const uint8_t* __restrict__ src,      // u8 images, see jobs
                                   const GpuViewJob* __restrict__ jobs,  // (N)
                                   ViewConsts k,
                                   float* __restrict__ out) {  // (N, S, S, 3)
  const int n = blockIdx.y;
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  const int S = k.S;
  if (p >= S * S) return;
  const GpuViewJob j = jobs[n];
  const int oy = p / S, ox_store = p % S;
  const int ox = j.flip ? S - 1 - ox_store : ox_store;
  Taps ty, tx;
  axis_taps(oy, j.top, j.height, j.src_h, S, k.interp, k.antialias, ty);
  axis_taps(ox, j.left, j.width, j.src_w, S, k.interp, k.antialias, tx);
  const uint8_t* img = src + j.src_offset;
  float acc[3] = {0.f, 0.f, 0.f};
  for (int a = 0; a < ty.n; ++a) {
    const uint8_t* row = img + static_cast<size_t>(ty.idx[a]) * j.src_w * 3;
    float r[3] = {0.f, 0.f, 0.f};
    for (int b = 0; b < tx.n; ++b) {
      const uint8_t* px = row + tx.idx[b] * 3;
      for (int c = 0; c < 3; ++c) r[c] += tx.w[b] * (static_cast<float>(px[c]) * (1.0f / 255.0f));
    }
    for (int c = 0; c < 3; ++c) acc[c] += ty.w[a] * r[c];
  }
  float* o = out + (static_cast<size_t>(n) * S * S + p) * 3;
  for (int c = 0; c < 3; ++c) o[c] = aug_clamp01(acc[c]);
}

__device__ void store_px(void* out, size_t i, const float* v, const ViewConsts& k) {
  for (int c = 0; c < 3; ++c) {
    const float y = (v[c] - k.mean[c]) / k.stddev[c];
    if (k.bf16)
      static_cast<__nv_bfloat16*>(out)[i * 3 + c] = __float2bfloat16_rn(y);
    else
      static_cast<float*>(out)[i * 3 + c] = y;
  }
}

// Sum over the block of one value per thread; every thread gets the result. blockDim.x <= 1024.
__device__ float block_sum(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float s = 0.f;
  if (threadIdx.x < 32) {
    s = threadIdx.x < blockDim.x / 32 ? shared[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x == 0) shared[32] = s;
  }
  __syncthreads();
  return shared[32];
}

// One block per sample (blockIdx.x); threads stride over its pixels. Jitter, gray; for samples
// without blur also solarize + normalise + store.
__global__ void colour_kernel(const GpuViewJob* __restrict__ jobs,  // (N)
                              ViewConsts k,
                              float* __restrict__ img,   // (N, S, S, 3) in place
                              void* __restrict__ out) {  // (N, S, S, 3) f32 / bf16
  __shared__ float shared[33];
  const int n = blockIdx.x;
  const GpuViewJob j = jobs[n];
  const int npix = k.S * k.S;
  float* im = img + static_cast<size_t>(n) * npix * 3;
  if (j.jitter) {
    for (int q = 0; q < 4; ++q) {
      const int op = j.order[q];
      if (op == 1 && k.use_c) {
        float part = 0.f;
        for (int p = threadIdx.x; p < npix; p += blockDim.x) part += aug_luma(im[3 * p], im[3 * p + 1], im[3 * p + 2]);
        const float mean = block_sum(part, shared) / npix;
        const BlendFactors f{j.contrast, static_cast<float>(1.0 - static_cast<double>(j.contrast))};
        for (int p = threadIdx.x; p < npix * 3; p += blockDim.x) im[p] = aug_blend(im[p], mean, f);
      } else if (op == 0 && k.use_b) {
        const BlendFactors f{j.brightness, static_cast<float>(1.0 - static_cast<double>(j.brightness))};
        for (int p = threadIdx.x; p < npix * 3; p += blockDim.x) im[p] = aug_blend(im[p], 0.f, f);
      } else if (op == 2 && k.use_s) {
        const BlendFactors f{j.saturation, static_cast<float>(1.0 - static_cast<double>(j.saturation))};
        for (int p = threadIdx.x; p < npix; p += blockDim.x) {
          float* px = im + 3 * p;
          const float l = aug_luma(px[0], px[1], px[2]);
          for (int c = 0; c < 3; ++c) px[c] = aug_blend(px[c], l, f);
        }
      } else if (op == 3 && k.use_h) {
        for (int p = threadIdx.x; p < npix; p += blockDim.x) aug_hue_px(im[3 * p], im[3 * p + 1], im[3 * p + 2], j.hue);
      }
      __syncthreads();
    }
  }
  for (int p = threadIdx.x; p < npix; p += blockDim.x) {
    float v[3] = {im[3 * p], im[3 * p + 1], im[3 * p + 2]};
    if (j.gray) v[0] = v[1] = v[2] = aug_luma(v[0], v[1], v[2]);
    if (j.blur) {
      for (int c = 0; c < 3; ++c) im[3 * p + c] = v[c];
    } else {
      if (j.solarize)
        for (int c = 0; c < 3; ++c) v[c] = aug_solarize(v[c], k.solarize_threshold);
      store_px(out, static_cast<size_t>(n) * npix + p, v, k);
    }
  }
}

__device__ int reflect_dev(int i, int n) {
  if (n == 1) return 0;
  const int period = 2 * (n - 1);
  i %= period;
  if (i < 0) i += period;
  return i < n ? i : period - i;
}

// Gaussian weights of torchvision's _get_gaussian_kernel1d for (radius, sigma); r <= 15.
__device__ void gauss_weights(int radius, float sigma, float* w) {
  float total = 0.f;
  for (int t = 0; t <= 2 * radius; ++t) {
    const float x = static_cast<float>(t - radius) / sigma;
    w[t] = expf(-0.5f * x * x);
    total += w[t];
  }
  for (int t = 0; t <= 2 * radius; ++t) w[t] /= total;
}

// One thread per pixel, blockIdx.y = sample. Horizontal blur pass: img -> tmp.
__global__ void blur_h_kernel(const GpuViewJob* __restrict__ jobs, ViewConsts k,
                              const float* __restrict__ img,  // (N, S, S, 3)
                              float* __restrict__ tmp) {      // (N, S, S, 3)
  const int n = blockIdx.y;
  const GpuViewJob j = jobs[n];
  const int S = k.S, p = blockIdx.x * blockDim.x + threadIdx.x;
  if (!j.blur || p >= S * S) return;
  float w[31];
  gauss_weights(j.radius, j.sigma, w);
  const int y = p / S, x = p % S;
  const float* row = img + (static_cast<size_t>(n) * S + y) * S * 3;
  float acc[3] = {0.f, 0.f, 0.f};
  for (int t = 0; t <= 2 * j.radius; ++t) {
    const float* px = row + reflect_dev(x + t - j.radius, S) * 3;
    for (int c = 0; c < 3; ++c) acc[c] += w[t] * px[c];
  }
  float* o = tmp + (static_cast<size_t>(n) * S * S + p) * 3;
  for (int c = 0; c < 3; ++c) o[c] = acc[c];
}

// Vertical pass + solarize + normalise + store.
__global__ void blur_v_kernel(const GpuViewJob* __restrict__ jobs, ViewConsts k,
                              const float* __restrict__ tmp,  // (N, S, S, 3)
                              void* __restrict__ out) {       // (N, S, S, 3)
  const int n = blockIdx.y;
  const GpuViewJob j = jobs[n];
  const int S = k.S, p = blockIdx.x * blockDim.x + threadIdx.x;
  if (!j.blur || p >= S * S) return;
  float w[31];
  gauss_weights(j.radius, j.sigma, w);
  const int y = p / S, x = p % S;
  const float* plane = tmp + static_cast<size_t>(n) * S * S * 3;
  float v[3] = {0.f, 0.f, 0.f};
  for (int t = 0; t <= 2 * j.radius; ++t) {
    const float* px = plane + (static_cast<size_t>(reflect_dev(y + t - j.radius, S)) * S + x) * 3;
    for (int c = 0; c < 3; ++c) v[c] += w[t] * px[c];
  }
  if (j.solarize)
    for (int c = 0; c < 3; ++c) v[c] = aug_solarize(v[c], k.solarize_threshold);
  store_px(out, static_cast<size_t>(n) * S * S + p, v, k);
}

}  // namespace

ViewConsts view_consts(const ViewSpec& v, const MultiCropRecipe& recipe, bool bf16_out) {
  ViewConsts k{};
  k.S = v.size;
  k.interp = v.interp == Interp::Bilinear ? 0 : 1;
  k.antialias = recipe.antialias ? 1 : 0;
  k.use_b = v.brightness > 0;
  k.use_c = v.contrast > 0;
  k.use_s = v.saturation > 0;
  k.use_h = v.hue > 0;
  for (int c = 0; c < 3; ++c) {
    k.mean[c] = recipe.mean[c];
    k.stddev[c] = recipe.std[c];
    k.inv_std[c] = 1.f / recipe.std[c];
  }
  k.solarize_threshold = static_cast<float>(128.0 / 255.0);
  k.bf16 = bf16_out ? 1 : 0;
  return k;
}

void launch_augment(const uint8_t* d_src, const GpuViewJob* d_jobs, const GpuViewJob* h_jobs, int N,
                    const ViewConsts& k, float* img, float* tmp, void* d_out, cudaStream_t stream) {
  if (N <= 0) return;
  const int S = k.S;
  const int threads = 256;
  const dim3 grid((S * S + threads - 1) / threads, N);
  MIRA_LAUNCH(grid, threads, 0, stream, resize_crop_kernel)(d_src, d_jobs, k, img);
  MIRA_CUDA_LAUNCH_CHECK(stream);
  MIRA_LAUNCH(N, 1024, 0, stream, colour_kernel)(d_jobs, k, img, d_out);
  MIRA_CUDA_LAUNCH_CHECK(stream);
  bool any_blur = false;
  for (int i = 0; i < N; ++i) any_blur |= h_jobs[i].blur != 0;
  if (any_blur) {
    MIRA_LAUNCH(grid, threads, 0, stream, blur_h_kernel)(d_jobs, k, img, tmp);
    MIRA_CUDA_LAUNCH_CHECK(stream);
    MIRA_LAUNCH(grid, threads, 0, stream, blur_v_kernel)(d_jobs, k, tmp, d_out);
    MIRA_CUDA_LAUNCH_CHECK(stream);
  }
}

}  // namespace mira::data
