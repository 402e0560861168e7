// CUDA augmentation of one view for a batch of samples, from u8 RGB images already on the
// device (decoded on the CPU, or a GPU-resident IDX / CIFAR array) to normalised NHWC f32 or
// bf16. It takes the ViewParams the CPU drew (data/augment.h), so both backends make the same
// decisions; tests/test_augment_gpu.cpp compares it with augment_view.
//
// Kernels (per view, all samples at once):
//   1. crop + resize (2-D evaluation of the separable filter, weights computed on the fly) +
//      flip + clamp, one thread per output pixel;
//   2. colour: one block per sample, ColorJitter in the sample's order (contrast's mean is a
//      block reduction), grayscale, then, for samples without blur, solarize + normalise +
//      the cast to the output type;
//   3. blur, separable: horizontal pass, then vertical pass + solarize + normalise + cast
//      (samples without blur return at once).
// This header has no CUDA types so C++ code can include it; stream is a cudaStream_t.
#pragma once

#include <cstdint>
#include <vector>

#include "data/augment.h"
#include "engine/dtype.h"

namespace mira::data {

// One sample's source image and the box / decisions of one view, in the source's coordinates.
struct GpuViewJob {
  int64_t src_offset = 0;  // bytes from the start of the source buffer: u8 RGB HWC
  int src_h = 0, src_w = 0;
  float top = 0, left = 0, height = 0, width = 0;  // crop box (fractional after DCT scaling)
  int flip = 0, jitter = 0, gray = 0, blur = 0, solarize = 0;
  int order[4] = {0, 1, 2, 3};
  float brightness = 1, contrast = 1, saturation = 1, hue = 0;  // 1 / 0: op off
  float sigma = 0;
  int radius = 0;
};

// Job of view `p` for a source image of src_h x src_w that the params were drawn on at
// orig_h x orig_w (differs after a DCT-downscaled decode).
GpuViewJob make_gpu_job(const ViewParams& p, const ViewSpec& v, int64_t src_offset, int src_h, int src_w, int orig_h,
                        int orig_w);

bool augment_cuda_available();  // built with CUDA and a device present

// The GPU loader's stream and events (data/loader.h, "GPU augmentation"), without CUDA types.
// The data stream carries the host-to-device copies and the augmentation kernels; events order
// it against the engine's compute stream both ways. Event ids are small integers, created on
// first use; waiting on or synchronising with an event never recorded does nothing.
class GpuStaging {
 public:
  explicit GpuStaging(int device);
  ~GpuStaging();
  GpuStaging(const GpuStaging&) = delete;
  GpuStaging& operator=(const GpuStaging&) = delete;

  void* stream() const { return stream_; }  // cudaStream_t
  void record_on_data(int event);
  void record_on_compute(int event);
  void data_waits(int event);     // the data stream waits for the event (no host wait)
  void compute_waits(int event);  // the engine's stream waits for the event (no host wait)
  void host_waits(int event);     // the host waits for the event
  void host_waits_data();         // the host waits for everything queued on the data stream
  // Asynchronous on the data stream; src must be pinned host memory.
  void copy_to_device(void* dst, const void* src, size_t bytes);

 private:
  void* event(int id);
  int device_ = 0;
  void* stream_ = nullptr;
  std::vector<void*> events_;
  std::vector<bool> recorded_;
};

// Owns the device scratch and the job array; reuse one per view size across batches.
class GpuAugmenter {
 public:
  GpuAugmenter() = default;
  ~GpuAugmenter();
  GpuAugmenter(const GpuAugmenter&) = delete;
  GpuAugmenter& operator=(const GpuAugmenter&) = delete;

  // d_src: device u8 buffer holding every job's image; d_out: device [n, S, S, 3] of out_type
  // (F32 or BF16). Asynchronous on `stream` (nullptr: the engine's stream).
  void run(const uint8_t* d_src, const std::vector<GpuViewJob>& jobs, const ViewSpec& v, const MultiCropRecipe& recipe,
           void* d_out, DType out_type, void* stream = nullptr);
  // The same from n jobs in pinned host memory, which must stay untouched until the stream has
  // passed this call (the copy is then truly asynchronous).
  void run(const uint8_t* d_src, const GpuViewJob* jobs, int n, const ViewSpec& v, const MultiCropRecipe& recipe,
           void* d_out, DType out_type, void* stream = nullptr);

 private:
  void reserve(size_t jobs, size_t scratch_floats, void* stream);
  void* d_jobs_ = nullptr;
  size_t jobs_cap_ = 0;
  float* d_scratch_ = nullptr;  // two [n, S, S, 3] f32 planes
  size_t scratch_cap_ = 0;
  int device_ = 0;
};

}  // namespace mira::data
