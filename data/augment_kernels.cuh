// The view augmentation's kernels (data/augment_kernels.cu) and their launch, apart from the
// host classes of augment_cuda.h (streams, events, device buffers), so that tests/cuda_emu can
// run them on the CPU. Read augment_cuda.h for the kernel plan.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "data/augment.h"
#include "data/augment_cuda.h"

namespace mira::data {

// What every sample of a view shares, passed to the kernels by value.
struct ViewConsts {
  int S;
  int interp;  // 0 bilinear, 1 bicubic
  int antialias;
  int use_b, use_c, use_s, use_h;  // the spec's jitter ops that exist (amount > 0)
  float mean[3], inv_std[3], stddev[3];
  float solarize_threshold;
  int bf16;
};

ViewConsts view_consts(const ViewSpec& v, const MultiCropRecipe& recipe, bool bf16_out);

// The view's kernels on `stream`: d_src the u8 source images, d_jobs the N jobs on the device
// (h_jobs: the same on the host, read for which samples blur), img and tmp two scratch planes of
// N * S * S * 3 floats, d_out (N, S, S, 3) f32 or bf16 (k.bf16).
void launch_augment(const uint8_t* d_src, const GpuViewJob* d_jobs, const GpuViewJob* h_jobs, int N,
                    const ViewConsts& k, float* img, float* tmp, void* d_out, cudaStream_t stream);

}  // namespace mira::data
