// CUDA kernels of the view augmentation (see augment_cuda.h for the kernel plan). The colour
// math is data/augment_ops.h, shared with the CPU reference; the resampling weights follow
// data/augment.cpp's resample_table, evaluated in f32 on the fly instead of tabulated.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "data/augment_cuda.h"
#include "data/augment_ops.h"
#include "engine/cuda/context.h"
#include "engine/cuda/device_guard.h"
#include "engine/cuda_backend.h"
#include "kernels/cuda/check.h"

namespace mira::data {

namespace {

struct ViewConsts {
  int S;
  int interp;  // 0 bilinear, 1 bicubic
  int antialias;
  int use_b, use_c, use_s, use_h;  // the spec's jitter ops that exist (amount > 0)
  float mean[3], inv_std[3], stddev[3];
  float solarize_threshold;
  int bf16;
};

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

GpuAugmenter::~GpuAugmenter() {
  if (d_jobs_) cuda::device_free(d_jobs_, device_);
  if (d_scratch_) cuda::device_free(d_scratch_, device_);
}

GpuStaging::GpuStaging(int device) : device_(device) {
  cuda::DeviceGuard guard(device_);
  cudaStream_t s = nullptr;
  MIRA_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  stream_ = s;
}

// A destructor must not throw: the results of these calls are deliberately not checked (an
// error here means the device is already lost, and the next checked call reports it).
GpuStaging::~GpuStaging() {
  cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));  // nothing in flight reads freed memory
  for (void* e : events_)
    if (e) cudaEventDestroy(static_cast<cudaEvent_t>(e));
  cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

void* GpuStaging::event(int id) {
  MIRA_CHECK(id >= 0, "GpuStaging: negative event id");
  if (static_cast<size_t>(id) >= events_.size()) {
    events_.resize(id + 1, nullptr);
    recorded_.resize(id + 1, false);
  }
  if (!events_[id]) {
    cudaEvent_t e = nullptr;
    MIRA_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    events_[id] = e;
  }
  return events_[id];
}

void GpuStaging::record_on_data(int id) {
  cuda::DeviceGuard guard(device_);
  MIRA_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event(id)), static_cast<cudaStream_t>(stream_)));
  recorded_[id] = true;
}

void GpuStaging::record_on_compute(int id) {
  cuda::DeviceGuard guard(device_);
  MIRA_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event(id)), cuda::CudaContext::get().stream()));
  recorded_[id] = true;
}

void GpuStaging::data_waits(int id) {
  if (static_cast<size_t>(id) >= recorded_.size() || !recorded_[id]) return;
  MIRA_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream_), static_cast<cudaEvent_t>(events_[id]), 0));
}

void GpuStaging::compute_waits(int id) {
  if (static_cast<size_t>(id) >= recorded_.size() || !recorded_[id]) return;
  cuda::DeviceGuard guard(device_);
  MIRA_CUDA_CHECK(
      cudaStreamWaitEvent(cuda::CudaContext::get().stream(), static_cast<cudaEvent_t>(events_[id]), 0));
}

void GpuStaging::host_waits(int id) {
  if (static_cast<size_t>(id) >= recorded_.size() || !recorded_[id]) return;
  MIRA_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(events_[id])));
}

void GpuStaging::host_waits_data() { MIRA_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_))); }

void GpuStaging::copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  cuda::DeviceGuard guard(device_);
  MIRA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream_)));
}

void GpuAugmenter::reserve(size_t jobs, size_t scratch_floats, void* stream) {
  MIRA_CUDA_CHECK(cudaGetDevice(&device_));
  // Growing frees the old buffers: let the kernels that use them finish first (the caching
  // allocator may hand the memory to work on another stream at once).
  if ((jobs > jobs_cap_ && d_jobs_) || (scratch_floats > scratch_cap_ && d_scratch_))
    MIRA_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
  bool grew = false;
  if (jobs > jobs_cap_) {
    grew = true;
    if (d_jobs_) cuda::device_free(d_jobs_, device_);
    d_jobs_ = cuda::device_alloc(jobs * sizeof(GpuViewJob), device_);
    jobs_cap_ = jobs;
  }
  if (scratch_floats > scratch_cap_) {
    if (d_scratch_) cuda::device_free(d_scratch_, device_);
    d_scratch_ = static_cast<float*>(cuda::device_alloc(scratch_floats * sizeof(float), device_));
    scratch_cap_ = scratch_floats;
    grew = true;
  }
  // The caching allocator knows no streams: a block just handed out may have been freed on the
  // host while kernels queued on the engine's stream still use it. Before another stream writes
  // it, that stream waits for everything queued on the engine's stream so far.
  cudaStream_t compute = cuda::CudaContext::get().stream();
  if (grew && static_cast<cudaStream_t>(stream) != compute) {
    cudaEvent_t e = nullptr;
    MIRA_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    MIRA_CUDA_CHECK(cudaEventRecord(e, compute));
    MIRA_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), e, 0));
    MIRA_CUDA_CHECK(cudaEventDestroy(e));
  }
}

void GpuAugmenter::run(const uint8_t* d_src, const std::vector<GpuViewJob>& jobs, const ViewSpec& v,
                       const MultiCropRecipe& recipe, void* d_out, DType out_type, void* stream_ptr) {
  // From pageable memory the driver stages the copy, and may make the host wait for the stream
  // to reach it: fine for tests and benchmarks, the loader passes pinned jobs instead.
  run(d_src, jobs.data(), static_cast<int>(jobs.size()), v, recipe, d_out, out_type, stream_ptr);
}

void GpuAugmenter::run(const uint8_t* d_src, const GpuViewJob* jobs, int N, const ViewSpec& v,
                       const MultiCropRecipe& recipe, void* d_out, DType out_type, void* stream_ptr) {
  MIRA_CHECK(out_type == DType::F32 || out_type == DType::BF16, "GPU augmentation writes f32 or bf16, not ",
             dtype_name(out_type));
  if (N <= 0) return;
  for (int i = 0; i < N; ++i)
    MIRA_CHECK(!jobs[i].blur || (jobs[i].radius >= 1 && jobs[i].radius <= 15), "GPU blur radius ", jobs[i].radius,
               " outside 1..15");
  const int S = v.size;
  const size_t plane = static_cast<size_t>(N) * S * S * 3;
  cudaStream_t stream = stream_ptr ? static_cast<cudaStream_t>(stream_ptr) : cuda::CudaContext::get().stream();
  reserve(static_cast<size_t>(N), 2 * plane, stream);
  MIRA_CUDA_CHECK(cudaMemcpyAsync(d_jobs_, jobs, static_cast<size_t>(N) * sizeof(GpuViewJob), cudaMemcpyHostToDevice,
                                  stream));
  ViewConsts k{};
  k.S = S;
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
  k.bf16 = out_type == DType::BF16;
  const GpuViewJob* dj = static_cast<const GpuViewJob*>(d_jobs_);
  float* img = d_scratch_;
  float* tmp = d_scratch_ + plane;
  const int threads = 256;
  const dim3 grid((S * S + threads - 1) / threads, N);
  resize_crop_kernel<<<grid, threads, 0, stream>>>(d_src, dj, k, img);
  MIRA_CUDA_LAUNCH_CHECK(stream);
  colour_kernel<<<N, 1024, 0, stream>>>(dj, k, img, d_out);
  MIRA_CUDA_LAUNCH_CHECK(stream);
  bool any_blur = false;
  for (int i = 0; i < N; ++i) any_blur |= jobs[i].blur != 0;
  if (any_blur) {
    blur_h_kernel<<<grid, threads, 0, stream>>>(dj, k, img, tmp);
    MIRA_CUDA_LAUNCH_CHECK(stream);
    blur_v_kernel<<<grid, threads, 0, stream>>>(dj, k, tmp, d_out);
    MIRA_CUDA_LAUNCH_CHECK(stream);
  }
}

}  // namespace mira::data
