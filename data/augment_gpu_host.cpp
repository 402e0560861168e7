// Host side of the GPU augmentation that every build has: the job builder, the availability
// check, and (CPU-only builds) a GpuAugmenter that says there is no CUDA.
#include "data/augment_cuda.h"
#include "engine/cuda_backend.h"
#include "engine/error.h"

namespace mira::data {

GpuViewJob make_gpu_job(const ViewParams& p, const ViewSpec& v, int64_t src_offset, int src_h, int src_w, int orig_h,
                        int orig_w) {
  GpuViewJob j;
  const double sy = static_cast<double>(src_h) / orig_h, sx = static_cast<double>(src_w) / orig_w;
  j.src_offset = src_offset;
  j.src_h = src_h;
  j.src_w = src_w;
  j.top = static_cast<float>(p.top * sy);
  j.left = static_cast<float>(p.left * sx);
  j.height = static_cast<float>(p.height * sy);
  j.width = static_cast<float>(p.width * sx);
  j.flip = p.flip;
  j.jitter = p.jitter;
  for (int k = 0; k < 4; ++k) j.order[k] = p.order[k];
  j.brightness = p.brightness;
  j.contrast = p.contrast;
  j.saturation = p.saturation;
  j.hue = p.hue;
  j.gray = p.gray;
  j.blur = p.blur;
  j.sigma = p.sigma;
  j.radius = p.blur_radius;
  j.solarize = p.solarize;
  (void)v;
  return j;
}

bool augment_cuda_available() {
#ifdef MIRA_DATA_HAS_CUDA
  return cuda::device_count() > 0;
#else
  return false;
#endif
}

#ifndef MIRA_DATA_HAS_CUDA
GpuStaging::GpuStaging(int) { MIRA_FAIL("GPU augmentation: this build has no CUDA"); }
GpuStaging::~GpuStaging() = default;
void* GpuStaging::event(int) { MIRA_FAIL("GPU augmentation: this build has no CUDA"); }
void GpuStaging::record_on_data(int) { MIRA_FAIL("GPU augmentation: this build has no CUDA"); }
void GpuStaging::record_on_compute(int) { MIRA_FAIL("GPU augmentation: this build has no CUDA"); }
void GpuStaging::data_waits(int) { MIRA_FAIL("GPU augmentation: this build has no CUDA"); }
void GpuStaging::compute_waits(int) { MIRA_FAIL("GPU augmentation: this build has no CUDA"); }
void GpuStaging::host_waits(int) { MIRA_FAIL("GPU augmentation: this build has no CUDA"); }
void GpuStaging::host_waits_data() { MIRA_FAIL("GPU augmentation: this build has no CUDA"); }
void GpuStaging::copy_to_device(void*, const void*, size_t) { MIRA_FAIL("GPU augmentation: this build has no CUDA"); }

GpuAugmenter::~GpuAugmenter() = default;
void GpuAugmenter::reserve(size_t, size_t, void*) {
  MIRA_FAIL("GPU augmentation: this build has no CUDA");
}
void GpuAugmenter::run(const uint8_t*, const std::vector<GpuViewJob>&, const ViewSpec&, const MultiCropRecipe&, void*,
                       DType, void*) {
  MIRA_FAIL("GPU augmentation: this build has no CUDA");
}
void GpuAugmenter::run(const uint8_t*, const GpuViewJob*, int, const ViewSpec&, const MultiCropRecipe&, void*, DType,
                       void*) {
  MIRA_FAIL("GPU augmentation: this build has no CUDA");
}
#endif

}  // namespace mira::data
